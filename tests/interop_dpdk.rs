//! DPDK 22.11 testpmd with `net_virtio_user` against the switch: the handshake completes
//! with no error on either side, in both socket roles.
//!
//! Skipped (with a printed reason) when `dpdk-testpmd` is not installed, unless
//! `VHOST_SWITCH_REQUIRE_PEERS=1` (set by `.ci/run`) turns the skip into a failure.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// testpmd runs pollers of its own: one test with it at a time on 2 cores.
static PEER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    PEER.lock().unwrap_or_else(|e| e.into_inner())
}

fn testpmd_available() -> bool {
    let found = Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var_os("VHOST_SWITCH_REQUIRE_PEERS").is_some() {
            panic!(
                "dpdk-testpmd is required (VHOST_SWITCH_REQUIRE_PEERS is set) but not installed"
            );
        }
        eprintln!("SKIPPED: dpdk-testpmd not installed (apt-get install dpdk-dev)");
    }
    found
}

/// testpmd with one virtio_user port on `sock`, io forwarding, no hugepages.
fn testpmd(dir: &Path, prefix: &str, vdev_args: &str) -> Child {
    let out = std::fs::File::create(dir.join(format!("{prefix}.out"))).unwrap();
    Command::new("dpdk-testpmd")
        .args([
            "-l",
            "0-1",
            "--no-pci",
            "--no-huge",
            "-m",
            "512",
            "--no-shconf",
            "--file-prefix",
            prefix,
        ])
        .arg("--vdev")
        .arg(format!("net_virtio_user0,{vdev_args},queues=1"))
        .args([
            "--",
            "--no-mlockall",
            "--stats-period",
            "1",
            "--total-num-mbufs",
            "2048",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start dpdk-testpmd")
}

fn stop(mut child: Child) -> Option<i32> {
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_rings(d: &Daemon, port: &str) {
    for ring in 0..2 {
        wait_log_long(
            d,
            &format!("ring enable port={port} ring={ring} enabled=true started=true"),
        );
    }
}

/// Waits until testpmd (started by [`testpmd`], `--stats-period 1`) prints its periodic
/// statistics: it does so only once its port has started, i.e. after the whole handshake,
/// DRIVER_OK and its reply included. The rings being enabled is not enough: DPDK sends
/// SET_STATUS after SET_VRING_ENABLE, and a SIGINT while it waits for that reply-ack
/// interrupts its read ("Failed to set backend status").
fn wait_forwarding(dir: &Path, prefix: &str) {
    let path = dir.join(format!("{prefix}.out"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::fs::read_to_string(&path).unwrap_or_default();
        if out.contains("Port statistics") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "testpmd never started forwarding:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// testpmd takes a few seconds to start under load; give it more than the default.
fn wait_log_long(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "log never contained {needle:?}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_testpmd_output(dir: &Path, prefix: &str) {
    let out = std::fs::read_to_string(dir.join(format!("{prefix}.out"))).unwrap();
    assert!(
        out.contains("Port 0: "),
        "testpmd never configured its port:\n{out}"
    );
    assert!(!out.contains("EAL: Error"), "testpmd failed:\n{out}");
    assert!(
        !out.contains("Failed to"),
        "testpmd reported a failure:\n{out}"
    );
    assert!(
        out.contains("Bye..."),
        "testpmd did not exit cleanly:\n{out}"
    );
}

fn assert_no_rejection(d: &Daemon) {
    let rejected = d.rejections();
    assert!(rejected.is_empty(), "rejected:\n{}", rejected.join("\n"));
}

#[test]
fn dpdk_virtio_user_client_against_server_port() {
    let _serial = serial();
    if !testpmd_available() {
        return;
    }
    let d = Daemon::start(&["p0"], &[]);
    let tp = testpmd(
        &d.dir,
        "tp-client",
        &format!("path={}", d.sock("p0").display()),
    );
    wait_rings(&d, "p0");
    wait_forwarding(&d.dir, "tp-client");
    assert_eq!(stop(tp), Some(0));
    wait_log_long(&d, "ring stopped port=p0 ring=1");
    check_testpmd_output(&d.dir, "tp-client");
    d.wait_log("front-end disconnected port=p0");
    assert_no_rejection(&d);
}

#[test]
fn dpdk_virtio_user_server_against_client_port() {
    let _serial = serial();
    if !testpmd_available() {
        return;
    }
    let dir = temp_dir("dpdk-server");
    let sock = dir.join("c0.sock");
    let d = Daemon::spawn(
        dir.clone(),
        &[
            "run".into(),
            "--client".into(),
            format!("c0={}", sock.display()),
        ],
    );
    let tp = testpmd(
        &dir,
        "tp-server",
        &format!("path={},server=1", sock.display()),
    );
    wait_rings(&d, "c0");
    wait_forwarding(&dir, "tp-server");
    assert_eq!(stop(tp), Some(0));
    wait_log_long(&d, "ring stopped port=c0 ring=1");
    check_testpmd_output(&dir, "tp-server");
    assert_no_rejection(&d);
    drop(d);
    let _ = std::fs::remove_dir_all(dir);
}

/// Counts testpmd printed for all ports.
#[derive(Debug, Default)]
struct TestpmdTotals {
    rx: u64,
    tx: u64,
}

fn parse_accumulated(out: &str) -> TestpmdTotals {
    let block = out
        .split("Accumulated forward statistics for all ports")
        .nth(1)
        .unwrap_or("");
    let num = |key: &str| -> u64 {
        block
            .split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    TestpmdTotals {
        rx: num("RX-packets:"),
        tx: num("TX-packets:"),
    }
}

/// One testpmd with two virtio_user ports in io forwarding as a closed loop
/// (`start tx_first 64`), its lcores on CPU 0 so that the switch's PMD has CPU 1.
/// Readiness is read from the switch's log (both ports' rings enabled); testpmd's stdout
/// is a file made line-buffered (`stdbuf -oL`) so that the statistics `stop` prints can be
/// read before `quit` (see [`wait_stop_statistics`]).
fn testpmd_loop(d: &Daemon, vdev_extra: &str, seconds: u64) -> String {
    testpmd_loop_with(d, NO_HUGE, vdev_extra, seconds, "tp-loop")
}

/// EAL memory options: 4 KiB pages, one preallocated region.
const NO_HUGE: &[&str] = &["--no-huge", "-m", "1024"];
/// EAL memory options: hugepages in one file that grows (SET_MEM_TABLE re-sent at run time).
const HUGE_GROWING: &[&str] = &["--in-memory", "--single-file-segments"];

fn testpmd_loop_with(
    d: &Daemon,
    eal_mem: &[&str],
    vdev_extra: &str,
    seconds: u64,
    tag: &str,
) -> String {
    use std::io::Write as _;
    let out_path = d.dir.join(format!("{tag}.out"));
    let out = std::fs::File::create(&out_path).unwrap();
    // What the switch took before this testpmd (a previous one may have sent some).
    let taken_before = switch_taken(d);
    let mut child = Command::new("stdbuf")
        .args(["-oL", "dpdk-testpmd"])
        .args(["--lcores", "0@0,1@0", "--no-pci"])
        .args(eal_mem)
        .args(["--no-shconf", "--file-prefix"])
        .arg(format!("{tag}-{}", std::process::id()))
        .arg("--vdev")
        .arg(format!(
            "net_virtio_user0,path={},queues=1{vdev_extra}",
            d.sock("p0").display()
        ))
        .arg("--vdev")
        .arg(format!(
            "net_virtio_user1,path={},queues=1{vdev_extra}",
            d.sock("p1").display()
        ))
        .args(["--", "-i", "--no-mlockall", "--total-num-mbufs", "4096"])
        .current_dir(&d.dir)
        .stdin(Stdio::piped())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start dpdk-testpmd under stdbuf (coreutils)");
    let mut stdin = child.stdin.take().unwrap();
    wait_rings(d, "p0");
    wait_rings(d, "p1");
    writeln!(stdin, "start tx_first 64").unwrap();
    std::thread::sleep(Duration::from_secs(seconds));
    writeln!(stdin, "stop").unwrap();
    // testpmd counts a packet as sent once it is in a virtio TX ring; the switch takes it
    // when its PMD next polls that ring. `quit` stops the rings (GET_VRING_BASE), and
    // whatever is still in them then is rightly left untaken (the index the switch
    // returns says so). So before `quit`, wait until the switch has taken everything
    // `stop` says was sent: the conservation check stays exact.
    let sent = parse_accumulated(&wait_stop_statistics(&mut child, &out_path)).tx;
    if let Err(taken) = wait_switch_took(d, taken_before + sent) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "testpmd sent {sent} but the switch took {} and no more while its rings ran",
            taken - taken_before
        );
    }
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "testpmd did not quit:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        text.contains("Accumulated forward statistics"),
        "no statistics from testpmd:\n{text}"
    );
    text
}

/// Packets the switch has taken from guest TX rings, all ports.
fn switch_taken(d: &Daemon) -> u64 {
    d.ctl("stats")["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rx_packets"].as_u64().unwrap())
        .sum()
}

/// Waits until testpmd has printed the statistics of `stop` (its forwarding lcores have
/// finished: nothing more is sent) and returns its output so far.
fn wait_stop_statistics(child: &mut Child, out_path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(out_path).unwrap_or_default();
        let done = text
            .split("Accumulated forward statistics")
            .nth(1)
            .is_some_and(|rest| rest.contains("Done."));
        if done {
            return text;
        }
        let exited = child.try_wait().unwrap().is_some();
        if exited || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("testpmd printed no statistics after stop:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the switch has taken `total` packets in all; `Err(taken)` if it
/// stays short. The PMD polls without end, so short means lost, not late.
fn wait_switch_took(d: &Daemon, total: u64) -> Result<(), u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let taken = switch_taken(d);
        if taken >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(taken);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks conservation between testpmd's counts and the switch's, returns packets moved.
/// testpmd must have quit only once the switch had taken all it sent (`testpmd_loop_with`).
fn check_conservation(d: &Daemon, tp: &TestpmdTotals) -> u64 {
    let stats = d.ctl("stats");
    let ports = stats["ports"].as_array().unwrap();
    let get = |p: &serde_json::Value, k: &str| p[k].as_u64().unwrap();
    let mut taken = 0;
    let mut forwarded = 0;
    let mut delivered = 0;
    let mut dest_drops = 0;
    for p in ports {
        // Every packet taken from a guest TX ring is forwarded or dropped with a reason.
        assert_eq!(
            get(p, "rx_packets"),
            get(p, "rx_forwarded") + get(p, "rx_dropped"),
            "{p}"
        );
        taken += get(p, "rx_packets");
        forwarded += get(p, "rx_forwarded");
        delivered += get(p, "tx_packets");
        dest_drops += get(p, "tx_dropped");
    }
    // Two ports: every forwarded packet has exactly one destination.
    assert_eq!(forwarded, delivered + dest_drops, "{stats}");
    // What testpmd sent is what the switch took.
    assert_eq!(
        tp.tx, taken,
        "testpmd sent {} but the switch took {taken}",
        tp.tx
    );
    // What the switch delivered testpmd received, but for what was still in its RX rings
    // when forwarding stopped (at most a ring of 256 per port).
    assert!(
        tp.rx <= delivered && delivered <= tp.rx + 2 * 256,
        "testpmd received {} of {delivered} delivered",
        tp.rx
    );
    // The 2048 frames `start tx_first 64` injects went round the loop more than twice (a
    // rate would depend on how busy the machine is).
    assert!(tp.rx > 2 * 2048, "hardly any traffic: {tp:?}");
    tp.rx
}

fn traffic_case(mode: &str, vdev_extra: &str) {
    let _serial = serial();
    if !testpmd_available() {
        return;
    }
    let d = Daemon::start(&["p0", "p1"], &["--mode", mode]);
    let out = testpmd_loop(&d, vdev_extra, 3);
    let tp = parse_accumulated(&out);
    let moved = check_conservation(&d, &tp);
    eprintln!("{mode}{vdev_extra}: testpmd received {moved} packets in 3 s; {tp:?}");
    assert_no_rejection(&d);
}

#[test]
fn dpdk_io_forwarding_through_xconnect_conserves_packets() {
    traffic_case("xconnect", "");
}

#[test]
fn dpdk_io_forwarding_through_learning_bridge_conserves_packets() {
    traffic_case("learning", "");
}

#[test]
fn dpdk_io_forwarding_without_mrg_rxbuf() {
    traffic_case("xconnect", ",mrg_rxbuf=0");
}

/// The feature sets the switch logged as acked, one per port.
fn acked_features(d: &Daemon) -> Vec<u64> {
    d.log()
        .lines()
        .filter(|l| l.contains("features acked"))
        .filter_map(|l| l.split("features=0x").nth(1))
        .filter_map(|v| u64::from_str_radix(v.split_whitespace().next().unwrap_or(""), 16).ok())
        .collect()
}

/// io forwarding through the switch with the ring layout and options `vdev_extra` asks
/// for; checks conservation and that both ports negotiated `layout_bits` exactly.
fn negotiated_case(vdev_extra: &str, layout_bits: u64) {
    let _serial = serial();
    if !testpmd_available() {
        return;
    }
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let out = testpmd_loop(&d, vdev_extra, 3);
    let tp = parse_accumulated(&out);
    let moved = check_conservation(&d, &tp);
    eprintln!("xconnect{vdev_extra}: testpmd received {moved} packets in 3 s; {tp:?}");
    let acked = acked_features(&d);
    assert_eq!(acked.len(), 2, "{}", d.log());
    let mask = (1 << 34) | (1 << 35);
    for f in acked {
        assert_eq!(f & mask, layout_bits, "{vdev_extra}: acked {f:#x}");
        assert_ne!(f & (1 << 32), 0, "VERSION_1 missing: {f:#x}");
    }
    assert_no_rejection(&d);
}

#[test]
fn dpdk_split_ring_in_order() {
    negotiated_case(",in_order=1", 1 << 35);
}

#[test]
fn dpdk_packed_ring() {
    negotiated_case(",packed_vq=1,in_order=0", 1 << 34);
}

#[test]
fn dpdk_packed_ring_without_mrg_rxbuf() {
    negotiated_case(",packed_vq=1,in_order=0,mrg_rxbuf=0", 1 << 34);
}

#[test]
fn dpdk_packed_ring_in_order() {
    negotiated_case(",packed_vq=1,in_order=1", (1 << 34) | (1 << 35));
}

#[test]
fn dpdk_packed_ring_in_order_without_mrg_rxbuf() {
    negotiated_case(",packed_vq=1,in_order=1,mrg_rxbuf=0", (1 << 34) | (1 << 35));
}

fn hugepages_available() -> bool {
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if free < 256 {
        if std::env::var_os("VHOST_SWITCH_REQUIRE_HUGEPAGES").is_some() {
            panic!("hugepages required (VHOST_SWITCH_REQUIRE_HUGEPAGES) but only {free} free");
        }
        eprintln!("SKIPPED: only {free} free hugepages (scripts/setup-hugepages.sh)");
        return false;
    }
    true
}

#[test]
fn dpdk_hugepage_memory_growing_under_traffic() {
    let _serial = serial();
    if !testpmd_available() || !hugepages_available() {
        return;
    }
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let out = testpmd_loop_with(&d, HUGE_GROWING, "", 3, "tp-huge");
    check_conservation(&d, &parse_accumulated(&out));
    let log = d.log();
    let maps = log
        .lines()
        .filter(|l| l.contains("memory table mapped port=p0") && l.contains("hugetlb=1"))
        .count();
    assert!(maps >= 1, "no hugetlbfs memory table on p0:\n{log}");
    eprintln!("p0 memory tables mapped: {maps}");
    assert_no_rejection(&d);
}

#[test]
fn dpdk_restarted_mid_traffic_reconnects_and_forwards() {
    use std::io::Write as _;
    let _serial = serial();
    if !testpmd_available() {
        return;
    }
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    // First testpmd: traffic running, then killed without warning.
    let out_path = d.dir.join("tp-killed.out");
    let mut first = Command::new("dpdk-testpmd")
        .args([
            "--lcores",
            "0@0,1@0",
            "--no-pci",
            "--no-huge",
            "-m",
            "1024",
            "--no-shconf",
            "--file-prefix",
        ])
        .arg(format!("tp-killed-{}", std::process::id()))
        .arg("--vdev")
        .arg(format!(
            "net_virtio_user0,path={},queues=1",
            d.sock("p0").display()
        ))
        .arg("--vdev")
        .arg(format!(
            "net_virtio_user1,path={},queues=1",
            d.sock("p1").display()
        ))
        .args(["--", "-i", "--no-mlockall", "--total-num-mbufs", "4096"])
        .current_dir(&d.dir)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_rings(&d, "p0");
    wait_rings(&d, "p1");
    let mut stdin = first.stdin.take().unwrap();
    writeln!(stdin, "start tx_first 64").unwrap();
    let moved_before = || d.ctl("stats")["ports"][0]["rx_packets"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while moved_before() < 100_000 {
        assert!(Instant::now() < deadline, "no traffic before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    d.wait_log("front-end disconnected port=p0");
    d.wait_log("front-end disconnected port=p1");
    let after_kill = switch_taken(&d);
    // A second testpmd on the same sockets: the ports accept it and forward again.
    let out = testpmd_loop_with(&d, NO_HUGE, "", 2, "tp-second");
    let tp = parse_accumulated(&out);
    // `start tx_first 64` injects 2048 frames: more than twice that received means they
    // went round the loop through the switch again (a rate would depend on the machine).
    assert!(tp.rx > 2 * 2048, "second testpmd moved too little: {tp:?}");
    for p in d.ctl("stats")["ports"].as_array().unwrap() {
        let g = |k: &str| p[k].as_u64().unwrap();
        assert_eq!(g("rx_packets"), g("rx_forwarded") + g("rx_dropped"), "{p}");
    }
    let taken_second = switch_taken(&d) - after_kill;
    assert_eq!(
        taken_second, tp.tx,
        "the second testpmd's TX must equal what the switch took after the restart"
    );
    assert_eq!(d.ctl("stats")["ports"][0]["control"]["connections"], 2);
    assert_no_rejection(&d);
}
