//! `vhost-pktgen` on packed virtqueues (VIRTIO_F_RING_PACKED, optionally IN_ORDER) against
//! packed-ring back-ends: DPDK 22.11 testpmd with two `net_vhost` ports in io forwarding
//! (the reference), and the switch. Every frame is accounted for on both sides: what the
//! generator sent is what the back-end took, what the back-end transmitted is what the
//! generator received, and the only frames lost are the ones the back-end itself counts as
//! dropped; none is corrupted, duplicated or reordered.
//!
//! The DPDK tests are skipped (with a printed reason) when `dpdk-testpmd` is not installed,
//! unless `VHOST_SWITCH_REQUIRE_PEERS=1` (set by `.ci/run`) turns the skip into a failure.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::pktgen::{self, Config, Mode, PortSpec, Progress, Report};
use common::guest::assert_conservation;
use common::{temp_dir, Daemon};

/// testpmd polls: one of these tests at a time.
static PEER: std::sync::Mutex<()> = std::sync::Mutex::new(());

const RING_PACKED: u64 = 1 << 34;
const IN_ORDER: u64 = 1 << 35;

fn testpmd_available() -> bool {
    let found = Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("VHOST_SWITCH_REQUIRE_PEERS").is_none(),
            "dpdk-testpmd is required (VHOST_SWITCH_REQUIRE_PEERS is set) but not installed"
        );
        eprintln!("SKIPPED: dpdk-testpmd not installed (apt-get install dpdk-dev)");
    }
    found
}

/// testpmd with net_vhost ports on `socks` (io forwarding between them, both lcores on CPU
/// 1 so that the generator has CPU 0), its output in `dir/testpmd.out`.
fn net_vhost(dir: &Path, socks: &[std::path::PathBuf; 2]) -> Child {
    let out = std::fs::File::create(dir.join("testpmd.out")).unwrap();
    let child = Command::new("dpdk-testpmd")
        .args([
            "--lcores",
            "0@1,1@1",
            "--no-pci",
            "--no-huge",
            "-m",
            "512",
            "--no-shconf",
            "--file-prefix",
        ])
        .arg(format!("pk-{}", std::process::id()))
        .arg("--vdev")
        .arg(format!("net_vhost0,iface={},queues=1", socks[0].display()))
        .arg("--vdev")
        .arg(format!("net_vhost1,iface={},queues=1", socks[1].display()))
        .args([
            "--",
            "--forward-mode=io",
            "--no-mlockall",
            "--disable-link-check",
            "--total-num-mbufs",
            "8192",
            "--stats-period",
            "3600",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start dpdk-testpmd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socks.iter().all(|s| s.exists()) {
        assert!(Instant::now() < deadline, "testpmd created no sockets");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Stops testpmd with SIGINT (it prints its final statistics) and returns its output.
fn stop(mut child: Child, dir: &Path) -> String {
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(dir.join("testpmd.out")).unwrap_or_default()
}

/// testpmd's accumulated counts over both ports.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    rx: u64,
    tx: u64,
    tx_dropped: u64,
}

fn totals(out: &str) -> Totals {
    let block = out
        .split("Accumulated forward statistics for all ports")
        .nth(1)
        .unwrap_or_else(|| panic!("no final statistics from testpmd:\n{out}"));
    let num = |key: &str| -> u64 {
        block
            .split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in:\n{block}"))
    };
    Totals {
        rx: num("RX-packets:"),
        tx: num("TX-packets:"),
        tx_dropped: num("TX-dropped:"),
    }
}

fn features(r: &Report, port: usize) -> u64 {
    let f = &r.ports[port].features;
    u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap()
}

/// A 2-second pair run on packed rings (and IN_ORDER if `in_order`) against net_vhost;
/// returns the report and testpmd's counts (`None`: skipped).
fn run_against_net_vhost(tag: &str, in_order: bool) -> Option<(Report, Totals)> {
    let _serial = PEER.lock().unwrap_or_else(|e| e.into_inner());
    if !testpmd_available() {
        return None;
    }
    let dir = temp_dir(tag);
    let socks = [dir.join("a.sock"), dir.join("b.sock")];
    let backend = net_vhost(&dir, &socks);
    let cfg = Config {
        ports: socks
            .iter()
            .zip(["a", "b"])
            .map(|(s, n)| PortSpec::client(n, s))
            .collect(),
        mode: Mode::Pair,
        duration: Duration::from_secs(2),
        progress: Progress::Off,
        packed: true,
        in_order,
        connect_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let result = pktgen::run(&cfg);
    let out = stop(backend, &dir);
    let r = result.unwrap_or_else(|e| panic!("{e:#}\ntestpmd:\n{out}"));
    let t = totals(&out);
    let _ = std::fs::remove_dir_all(&dir);
    Some((r, t))
}

fn check(r: &Report, t: &Totals, in_order: bool) {
    let table = r.render_table();
    for (i, p) in r.ports.iter().enumerate() {
        assert_eq!(p.ring, "packed", "{table}");
        assert_eq!(p.in_order, in_order, "{table}");
        let f = features(r, i);
        assert_ne!(f & RING_PACKED, 0, "{table}");
        assert_eq!(f & IN_ORDER != 0, in_order, "{table}");
        assert_eq!(
            (p.rx_errors, p.rx_corrupted, p.rx_foreign),
            (0, 0, 0),
            "{table}"
        );
        assert!(p.verified > 0, "no frame fully verified:\n{table}");
        assert_eq!(p.error, None, "{table}");
    }
    for d in &r.directions {
        // Several times round the 1024-entry rings, both wrap counters flipped (a rate
        // would depend on how busy the machine is).
        assert!(d.received > 4 * 1024, "hardly any traffic:\n{table}");
        assert_eq!(
            (d.corrupted, d.duplicated, d.reordered),
            (0, 0, 0),
            "{table}"
        );
        assert_eq!(d.not_taken, 0, "{table}");
    }
    assert!(r.errors.is_empty(), "{:?}\n{table}", r.errors);
    // Conservation across the two processes.
    let sent: u64 = r.ports.iter().map(|p| p.tx_packets).sum();
    let received: u64 = r.ports.iter().map(|p| p.rx_packets).sum();
    let lost: u64 = r.directions.iter().map(|d| d.lost).sum();
    assert_eq!(
        sent, t.rx,
        "pktgen sent vs testpmd received: {t:?}\n{table}"
    );
    assert_eq!(
        received, t.tx,
        "testpmd sent vs pktgen received: {t:?}\n{table}"
    );
    assert_eq!(
        lost, t.tx_dropped,
        "frames lost are testpmd's own drops: {t:?}\n{table}"
    );
    // testpmd drops a frame when the receiving ring has no buffer, which the generator's
    // closed-loop window keeps rare (a stall of the generator thread can still cause it);
    // a port still attaching when traffic starts would drop many (the generator waits
    // for that with a round trip after DRIVER_OK).
    assert!(t.tx_dropped * 20 < t.rx, "{t:?}\n{table}");
}

#[test]
fn packed_rings_against_dpdk_net_vhost_conserve_and_verify_frames() {
    if let Some((r, t)) = run_against_net_vhost("packed", false) {
        check(&r, &t, false);
        eprintln!(
            "packed: {:.3} Mpps per direction, testpmd {t:?}",
            r.mpps_per_direction
        );
    }
}

#[test]
fn packed_rings_with_in_order_against_dpdk_net_vhost() {
    // DPDK returns TX buffers in order, one used descriptor per batch: the driver must
    // take every buffer up to the one it names.
    if let Some((r, t)) = run_against_net_vhost("packed-in-order", true) {
        check(&r, &t, true);
        eprintln!(
            "packed, in order: {:.3} Mpps per direction, testpmd {t:?}",
            r.mpps_per_direction
        );
    }
}

#[test]
fn packed_rings_through_the_switch_agree_with_its_counters() {
    for in_order in [false, true] {
        let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
        let cfg = Config {
            ports: ["p0", "p1"]
                .iter()
                .map(|p| PortSpec::client(p, d.sock(p)))
                .collect(),
            mode: Mode::Pair,
            duration: Duration::from_millis(800),
            progress: Progress::Off,
            queue_size: 256,
            packed: true,
            in_order,
            ..Config::default()
        };
        let r = pktgen::run(&cfg).unwrap();
        let table = r.render_table();
        let stats = d.ctl("stats");
        for (i, p) in r.ports.iter().enumerate() {
            assert_eq!(
                (p.ring.as_str(), p.in_order),
                ("packed", in_order),
                "{table}"
            );
            let want = RING_PACKED | if in_order { IN_ORDER } else { 0 };
            assert_eq!(features(&r, i) & (RING_PACKED | IN_ORDER), want, "{table}");
            let sw = stats["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == p.name.as_str())
                .unwrap();
            assert_eq!(
                p.tx_packets,
                sw["rx_packets"].as_u64().unwrap(),
                "{table}\n{sw}"
            );
            assert_eq!(
                p.rx_packets,
                sw["tx_packets"].as_u64().unwrap(),
                "{table}\n{sw}"
            );
            assert_eq!((p.rx_errors, p.rx_corrupted), (0, 0), "{table}");
        }
        for dir in &r.directions {
            assert!(dir.received > 1000, "{table}");
            assert_eq!(
                (dir.corrupted, dir.duplicated, dir.reordered),
                (0, 0, 0),
                "{table}"
            );
            assert_eq!(dir.received + dir.lost, dir.sent.unwrap(), "{table}");
        }
        // A frame lost is one the switch counted as dropped.
        let dropped: u64 = stats["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["rx_dropped"].as_u64().unwrap() + p["tx_dropped"].as_u64().unwrap())
            .sum();
        let lost: u64 = r.directions.iter().map(|d| d.lost).sum();
        assert_eq!(lost, dropped, "{table}\n{stats}");
        assert_conservation(&d);
    }
}
