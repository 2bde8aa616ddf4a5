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
    assert_eq!(stop(tp), Some(0));
    wait_log_long(&d, "ring stopped port=p0 ring=1");
    check_testpmd_output(&d.dir, "tp-client");
    d.wait_log("front-end disconnected port=p0");
    assert_no_rejection(&d);
}

#[test]
fn dpdk_virtio_user_server_against_client_port() {
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
    assert_eq!(stop(tp), Some(0));
    wait_log_long(&d, "ring stopped port=c0 ring=1");
    check_testpmd_output(&dir, "tp-server");
    assert_no_rejection(&d);
    drop(d);
    let _ = std::fs::remove_dir_all(dir);
}
