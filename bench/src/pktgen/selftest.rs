//! The generator against the in-process [`NullBackend`]: its own ceiling, with no backend
//! process and no cross-core traffic (one thread), or with the null device on a thread of
//! its own (two threads).
//!
//! Two ports `a` and `b` are cross-connected by the null device; the generator runs `pair`
//! mode over them. With one thread the device runs between generator rounds and its time is
//! measured and subtracted: what remains is the generator's cost per frame (TX + reclaim +
//! RX of one frame).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use super::clock::{now_ns, thread_cpu_ns};
use super::engine::{topology, Engine};
use super::port::{Plan, PortInfo, PortRt};
use super::report::{Report, SelftestReport};
use super::{alloc, pin, Config, Mode, PortSpec};
use vhost_kit::driver::split::Kick;
use vhost_kit::null_backend::NullBackend;
use vhost_kit::sequences::bits::{F_IN_ORDER, F_RING_PACKED, F_VERSION_1, NET_F_MRG_RXBUF};

/// Longest plausible null-device call (a burst per port); longer ones were preempted.
const PREEMPTED_NS: u64 = 30_000;

/// Runs `cfg` (its mode is forced to `pair` unless it is `latency` or `rfc2544`, its ports
/// to two in-process ones) against the null device, with `threads` = 1 (same thread) or 2
/// (device on core `cfg.core + 1`, or unpinned). The report's `selftest` section holds the
/// cost figures. Like [`super::run`], it runs on threads of its own.
pub fn selftest(cfg: &Config, threads: u32) -> anyhow::Result<Report> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("pktgen-selftest".into())
            .spawn_scoped(s, || selftest_here(cfg, threads))?
            .join()
            .map_err(|_| anyhow::anyhow!("the self-test thread panicked"))?
    })
}

fn selftest_here(cfg: &Config, threads: u32) -> anyhow::Result<Report> {
    let mut cfg = cfg.clone();
    if !matches!(cfg.mode, Mode::Latency | Mode::Rfc2544) {
        cfg.mode = Mode::Pair;
    }
    cfg.ports = vec![PortSpec::client("a", ""), PortSpec::client("b", "")];
    cfg.validate()?;
    let mut warnings = Vec::new();
    pin(cfg.core, &mut warnings);
    // The null device offers what a backend would: packed rings and IN_ORDER when asked.
    let features =
        F_VERSION_1 | NET_F_MRG_RXBUF | (cfg.extra_features() & (F_RING_PACKED | F_IN_ORDER));
    let (roles, dirs) = topology(&cfg, 2);
    let plans: Vec<Plan> = roles.iter().map(|r| Plan::new(&cfg, features, r)).collect();
    let mems = plans
        .iter()
        .zip(&cfg.ports)
        .map(|(p, s)| alloc(p.mem_size(), cfg.hugepages, &s.name, &mut warnings))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut backend = NullBackend::new(usize::from(cfg.burst));
    let mut ports = Vec::new();
    for (i, spec) in cfg.ports.iter().enumerate() {
        let (mut p, rx, tx) = PortRt::build(
            &mems[i],
            &plans[i],
            &cfg,
            i as u8,
            &spec.name,
            roles[i],
            features,
            Kick::Never,
        )
        .context("setting up an in-process port")?;
        p.info = PortInfo {
            socket: String::new(),
            role: "in-process".into(),
            protocol_features: 0,
            hugepages: mems[i].is_hugetlb(),
            memory_bytes: mems[i].size(),
        };
        backend.add_port(&mems[i], &rx, &tx, features)?;
        ports.push(p);
    }
    backend.connect(0, 1)?;
    let mut engine = Engine::new(&cfg, ports, dirs);
    let mut backend_ns = 0u64;
    let mut rfc = None;
    let (wall0, cpu0) = (now_ns(), thread_cpu_ns());
    if threads <= 1 {
        let mut hook = || {
            let t0 = now_ns();
            backend.poll();
            // A call this long was preempted by another process: count a typical one.
            backend_ns += (now_ns() - t0).min(PREEMPTED_NS);
        };
        rfc = rfc.or(engine.run(&mut hook));
    } else {
        let done = AtomicBool::new(false);
        let other = cfg.core.map(|c| c + 1);
        std::thread::scope(|s| {
            let done = &done;
            let backend = &mut backend;
            s.spawn(move || {
                if let Some(id) = other {
                    let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                while !done.load(Ordering::Relaxed) {
                    if backend.poll() == 0 {
                        std::hint::spin_loop();
                    }
                }
            });
            rfc = engine.run(&mut || {});
            done.store(true, Ordering::Relaxed);
        });
    }
    let (wall, cpu) = ((now_ns() - wall0) as f64, (thread_cpu_ns() - cpu0) as f64);
    let mut report = engine.report();
    report.generator_cpu_pct = if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 };
    report.rfc2544 = rfc;
    report.warnings.extend(warnings);
    let received: u64 = report.directions.iter().map(|d| d.unique).sum();
    let per = |ns: f64| {
        if received == 0 {
            0.0
        } else {
            ns / received as f64
        }
    };
    // The thread's CPU time (preemption by other processes excluded) minus the null
    // device's time (each call capped, so that preemptions inside it are not counted) and
    // minus idle rounds.
    let backend = (backend_ns as f64).min(cpu);
    // Rounds that found nothing to do (waiting for the device on the other thread) are
    // not the generator's cost.
    let idle = engine.idle_ns as f64 * if wall > 0.0 { cpu / wall } else { 0.0 };
    let generator = per((cpu - backend - idle).max(0.0));
    report.selftest = Some(SelftestReport {
        threads: threads.clamp(1, 2),
        packets_per_s: received as f64 / (engine.traffic_ns as f64 / 1e9).max(1e-9),
        total_ns_per_packet: per(wall),
        cpu_share: if wall > 0.0 { cpu / wall } else { 0.0 },
        backend_ns_per_packet: per(backend),
        generator_ns_per_packet: generator,
        generator_mpps_ceiling: if generator > 0.0 {
            1e3 / generator
        } else {
            0.0
        },
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pktgen::{FrameSize, Progress, Verify};
    use vhost_kit::memory::HugePages;

    /// The self-tests spin on every core they get: one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn cfg(size: FrameSize, flows: u32) -> Config {
        Config {
            size,
            flows,
            duration: Duration::from_millis(300),
            core: None,
            progress: Progress::Off,
            hugepages: HugePages::Never,
            verify: Verify::All,
            queue_size: 256,
            ..Config::default()
        }
    }

    fn check_clean(r: &Report) {
        assert!(r.errors.is_empty(), "{r:#?}");
        assert_eq!(r.directions.len(), 2, "{r:#?}");
        for d in &r.directions {
            let sent = d.sent.unwrap();
            assert!(sent > 500, "{d:#?}");
            assert_eq!(
                (d.lost, d.corrupted, d.reordered, d.duplicated),
                (0, 0, 0, 0),
                "{d:#?}"
            );
            assert_eq!(d.unique, sent, "{d:#?}");
        }
        for p in &r.ports {
            assert_eq!(
                (p.rx_foreign, p.rx_corrupted, p.rx_errors, p.tx_in_flight),
                (0, 0, 0, 0),
                "{p:#?}"
            );
            assert_eq!(p.verified, p.rx_packets, "--verify all checks every frame");
        }
        let t = r.selftest.as_ref().unwrap();
        assert!(
            t.generator_ns_per_packet > 0.0 && t.packets_per_s > 0.0,
            "{t:#?}"
        );
    }

    #[test]
    fn every_packet_passes_64_bytes_many_flows() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let r = selftest(&cfg(FrameSize::Fixed(64), 1000), 1).unwrap();
        check_clean(&r);
        assert!(r.render_table().contains("a->b"));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(v["mpps_per_direction"].as_f64().unwrap() > 0.0);
        assert_eq!(v["directions"][0]["name"], "a->b");
    }

    #[test]
    fn every_packet_passes_imix_and_jumbo() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        check_clean(&selftest(&cfg(FrameSize::Imix, 7), 1).unwrap());
        // 9000-byte frames span five 2048-byte RX buffers (MRG_RXBUF).
        check_clean(&selftest(&cfg(FrameSize::Fixed(9000), 1), 1).unwrap());
    }

    #[test]
    fn every_packet_passes_on_packed_rings_in_and_out_of_order() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for (size, in_order, threads) in [
            (FrameSize::Fixed(64), false, 1),
            (FrameSize::Imix, true, 1),
            (FrameSize::Fixed(9000), true, 1),
            (FrameSize::Fixed(128), true, 2),
        ] {
            let mut c = cfg(size, 5);
            c.packed = true;
            c.in_order = in_order;
            if threads == 2 {
                // As in `two_threads_and_rate_limit`: the two threads may share a core.
                c.rate_pps = Some(20_000.0);
            }
            let r = selftest(&c, threads).unwrap();
            check_clean(&r);
            for p in &r.ports {
                assert_eq!(
                    (p.ring.as_str(), p.in_order),
                    ("packed", in_order),
                    "{p:#?}"
                );
            }
            assert!(r.render_table().contains("packed"));
        }
        let r = selftest(&cfg(FrameSize::Fixed(64), 1), 1).unwrap();
        assert!(r.ports.iter().all(|p| p.ring == "split" && !p.in_order));
    }

    #[test]
    fn two_threads_and_rate_limit() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = cfg(FrameSize::Fixed(128), 3);
        c.rate_pps = Some(20_000.0);
        let r = selftest(&c, 2).unwrap();
        check_clean(&r);
        for d in &r.directions {
            let sent = d.sent.unwrap() as f64;
            // At most 20 kpps for ~0.3 s (less if the two threads share a busy core; the
            // limiter's accuracy is tested in `rate`).
            assert!(sent <= 20_000.0 * r.duration_s + 50.0, "{d:#?}");
            assert!(d.latency.is_some());
        }
    }

    #[test]
    fn unidirectional_and_rfc2544_against_a_lossless_device() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = cfg(FrameSize::Fixed(64), 1);
        c.bidirectional = false;
        c.verify = Verify::Sample(16);
        let r = selftest(&c, 1).unwrap();
        assert_eq!(r.directions.len(), 1);
        assert_eq!(r.directions[0].lost, 0);
        // RFC 2544: the null device never drops, so the first (unlimited) trial passes.
        let mut c = cfg(FrameSize::Fixed(64), 1);
        c.mode = Mode::Rfc2544;
        c.rfc2544.step_duration = Duration::from_millis(200);
        let mut r = selftest(&c, 1).unwrap();
        let rfc = r.rfc2544.take().unwrap();
        assert!(rfc.ndr_pps > 0.0 && rfc.ndr_pps == rfc.max_pps, "{rfc:#?}");
    }

    #[test]
    fn loopback_echoes_in_place_and_macswap_swaps() {
        use crate::pktgen::engine::Direction;
        use crate::pktgen::port::PortRole;
        use vhost_kit::SharedMemory;
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut cfg = cfg(FrameSize::Imix, 5);
        cfg.macswap = true;
        cfg.verify = Verify::Sample(8);
        let features = F_VERSION_1 | NET_F_MRG_RXBUF;
        // Port a generates towards b; b reflects; the null device connects them.
        let roles = [
            PortRole {
                tx_to: Some(1),
                rx: true,
                echo: false,
                closed_loop: false,
            },
            PortRole {
                tx_to: None,
                rx: true,
                echo: true,
                closed_loop: false,
            },
        ];
        let plans: Vec<Plan> = roles.iter().map(|r| Plan::new(&cfg, features, r)).collect();
        let mems: Vec<SharedMemory> = plans
            .iter()
            .map(|p| SharedMemory::new(p.mem_size(), HugePages::Never).unwrap())
            .collect();
        let mut dev = NullBackend::new(32);
        let mut ports = Vec::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let (p, rx, tx) = PortRt::build(
                &mems[i],
                &plans[i],
                &cfg,
                i as u8,
                name,
                roles[i],
                features,
                Kick::Never,
            )
            .unwrap();
            dev.add_port(&mems[i], &rx, &tx, features).unwrap();
            ports.push(p);
        }
        dev.connect(0, 1).unwrap();
        let dirs = vec![Direction {
            stream: 0,
            tx: Some(0),
            rx: Some(0),
        }];
        let mut engine = Engine::new(&cfg, ports, dirs);
        engine.run(&mut || {
            dev.poll();
        });
        let r = engine.report();
        assert!(r.errors.is_empty(), "{r:#?}");
        let d = &r.directions[0];
        assert_eq!(d.name, "a->a");
        let sent = d.sent.unwrap();
        assert!(
            sent > 500 && d.unique == sent && d.lost == 0 && d.corrupted == 0,
            "{d:#?}"
        );
        // b saw the stream too (a discovered direction) and echoed every frame.
        let b = &r.ports[1];
        assert_eq!(
            (b.rx_packets, b.echoed, b.echo_dropped, b.tx_packets),
            (sent, sent, 0, sent)
        );
        assert!(r
            .directions
            .iter()
            .any(|d| d.name == "s0->b" && d.unique == sent));
        // a got its frames back with the MACs swapped: the full checks accept that.
        assert!(r.ports[0].verified > 0);
    }
}
