//! `vhost-pktgen` (the `bench::pktgen` engine) against the real switch: every mode, short
//! runs, counts checked against the switch's own counters; no timing asserted.

mod common;

use std::time::Duration;

use bench::pktgen::{self, Config, FrameSize, Mode, PortSpec, Progress, Report, Rfc2544Options};
use common::guest::assert_conservation;
use common::*;

fn config(d: &Daemon, ports: &[&str], mode: Mode) -> Config {
    Config {
        ports: ports
            .iter()
            .map(|p| PortSpec::client(p, d.sock(p)))
            .collect(),
        mode,
        duration: Duration::from_millis(800),
        progress: Progress::Off,
        queue_size: 256,
        ..Config::default()
    }
}

fn switch_port(d: &Daemon, name: &str) -> serde_json::Value {
    d.ctl("stats")["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap()
}

fn port<'r>(r: &'r Report, name: &str) -> &'r bench::pktgen::PortReport {
    r.ports.iter().find(|p| p.name == name).unwrap()
}

/// What pktgen says each port sent and received equals what the switch took and delivered.
fn assert_counts_agree(d: &Daemon, r: &Report, names: &[&str]) {
    for n in names {
        let (pg, sw) = (port(r, n), switch_port(d, n));
        assert_eq!(
            pg.tx_packets,
            sw["rx_packets"].as_u64().unwrap(),
            "{n}: sent vs taken\n{}",
            r.render_table()
        );
        assert_eq!(
            pg.rx_packets,
            sw["tx_packets"].as_u64().unwrap(),
            "{n}: received vs delivered\n{}",
            r.render_table()
        );
    }
    assert_conservation(d);
}

#[test]
fn pair_mode_64_1500_and_imix_with_flows() {
    for (size, flows) in [
        (FrameSize::Fixed(64), 1),
        (FrameSize::Fixed(1500), 4),
        (FrameSize::Imix, 64),
    ] {
        let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
        let cfg = Config {
            size,
            flows,
            ..config(&d, &["p0", "p1"], Mode::Pair)
        };
        let r = pktgen::run(&cfg).unwrap();
        assert_eq!(r.directions.len(), 2, "{}", r.render_table());
        for dir in &r.directions {
            assert!(dir.received > 0, "{}", r.render_table());
            assert_eq!(
                (dir.corrupted, dir.duplicated),
                (0, 0),
                "{}",
                r.render_table()
            );
            assert_eq!(
                dir.received + dir.lost,
                dir.sent.unwrap(),
                "{}",
                r.render_table()
            );
        }
        assert_counts_agree(&d, &r, &["p0", "p1"]);
    }
}

#[test]
fn txonly_into_rxonly_and_loopback() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    // txonly on p0 and rxonly on p1, two generator threads at once.
    let (tx_cfg, rx_cfg) = (
        config(&d, &["p0"], Mode::TxOnly),
        Config {
            duration: Duration::from_millis(1500),
            ..config(&d, &["p1"], Mode::RxOnly)
        },
    );
    let (tx, rx) = std::thread::scope(|s| {
        let rx = s.spawn(|| pktgen::run(&rx_cfg));
        std::thread::sleep(Duration::from_millis(200));
        let tx = s.spawn(|| pktgen::run(&tx_cfg));
        (tx.join().unwrap().unwrap(), rx.join().unwrap().unwrap())
    });
    assert!(port(&tx, "p0").tx_packets > 0);
    assert_eq!(port(&rx, "p1").rx_corrupted, 0);
    assert_counts_agree(&d, &tx, &["p0"]);
    assert_counts_agree(&d, &rx, &["p1"]);
    drop(d);

    // loopback on p1 echoes what txonly on p0 sends; p0 receives the echoes.
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (tx_cfg, lb_cfg) = (
        config(&d, &["p0"], Mode::TxOnly),
        Config {
            duration: Duration::from_millis(1500),
            ..config(&d, &["p1"], Mode::Loopback)
        },
    );
    let (tx, lb) = std::thread::scope(|s| {
        let lb = s.spawn(|| pktgen::run(&lb_cfg));
        std::thread::sleep(Duration::from_millis(200));
        let tx = s.spawn(|| pktgen::run(&tx_cfg));
        (tx.join().unwrap().unwrap(), lb.join().unwrap().unwrap())
    });
    let echoed = port(&lb, "p1").echoed;
    assert!(echoed > 0, "{}", lb.render_table());
    assert_eq!(
        echoed + port(&lb, "p1").echo_dropped,
        port(&lb, "p1").rx_packets
    );
    assert_counts_agree(&d, &tx, &["p0"]);
    assert_counts_agree(&d, &lb, &["p1"]);
}

#[test]
fn latency_mode_reports_a_histogram() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let cfg = Config {
        rate_pps: Some(2000.0),
        ..config(&d, &["p0", "p1"], Mode::Latency)
    };
    let r = pktgen::run(&cfg).unwrap();
    for dir in &r.directions {
        let lat = dir.latency.as_ref().expect("latency percentiles");
        assert!(
            lat.samples > 0
                && lat.min_ns <= lat.p50_ns
                && lat.p50_ns <= lat.p99_ns
                && lat.p99_ns <= lat.p999_ns,
            "{}",
            r.render_table()
        );
        assert_eq!(dir.lost, 0, "{}", r.render_table());
    }
    assert_counts_agree(&d, &r, &["p0", "p1"]);
}

#[test]
fn rfc2544_search_reports_ndr_and_pdr() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let cfg = Config {
        rfc2544: Rfc2544Options {
            step_duration: Duration::from_millis(300),
            max_steps: 4,
            ..Rfc2544Options::default()
        },
        ..config(&d, &["p0", "p1"], Mode::Rfc2544)
    };
    let r = pktgen::run(&cfg).unwrap();
    let rfc = r.rfc2544.as_ref().expect("rfc2544 report");
    assert!(
        !rfc.steps.is_empty() && rfc.steps.len() <= 4,
        "{}",
        r.render_table()
    );
    assert!(rfc.pdr_pps >= rfc.ndr_pps, "{}", r.render_table());
    assert_conservation(&d);
}

#[test]
fn pktgen_against_dpdk_net_vhost_backend() {
    // Our front-end against DPDK's back-end (testpmd net_vhost, io forwarding).
    use std::process::{Command, Stdio};
    if Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var_os("VHOST_SWITCH_REQUIRE_PEERS").is_none(),
            "dpdk-testpmd required"
        );
        eprintln!("SKIPPED: dpdk-testpmd not installed");
        return;
    }
    let dir = temp_dir("net-vhost");
    let socks = [dir.join("v0.sock"), dir.join("v1.sock")];
    let mut backend = Command::new("dpdk-testpmd")
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
        .arg(format!("nv-{}", std::process::id()))
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
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cfg = Config {
        ports: socks
            .iter()
            .zip(["a", "b"])
            .map(|(s, n)| PortSpec::client(n, s))
            .collect(),
        mode: Mode::Pair,
        duration: Duration::from_secs(1),
        progress: Progress::Off,
        ..Config::default()
    };
    let result = pktgen::run(&cfg);
    let _ = backend.kill();
    let _ = backend.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let r = result.unwrap();
    for dir in &r.directions {
        assert!(dir.received > 1000, "{}", r.render_table());
        assert_eq!(
            (dir.corrupted, dir.duplicated),
            (0, 0),
            "{}",
            r.render_table()
        );
    }
}

// A build without the `demo` feature refuses `demo`: tests/daemon.rs.
#[cfg(feature = "demo")]
#[test]
fn the_demo_runs_as_written() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhost-switch"))
        .args(["demo", "--seconds", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("a->b") && text.contains("b->a") && text.contains("switch counters"),
        "{text}"
    );
}
