//! QEMU 11.1 (`vfio-user-pci`) with a Linux guest on a vfio-user port, pinging a guest on
//! a vhost-user port through the switch.
//!
//! QEMU 11.1 comes from Debian trixie-backports, unpacked into a private root by
//! `scripts/qemu-vfio-user.sh` (root, network to the Debian registry) and run there by
//! chroot; both guests use it, so this case needs nothing of the machine's own QEMU. The
//! guest image is `scripts/interop/build-guest.sh`'s (virtio_pci and virtio_net load as
//! modules). Guests run under TCG pinned to CPU 0; the switch's PMD keeps CPU 1.
//!
//! Skipped (with a printed reason) when the QEMU root or the guest cannot be prepared,
//! unless `VHOST_SWITCH_REQUIRE_PEERS=1` (set by `scripts/test.sh`) turns the skip into a
//! failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long a guest may take to boot and ping under TCG (about 15 s seen here).
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);

struct Peers {
    script: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn prepare() -> Result<Peers, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/qemu-vfio-user.sh");
    let fetch = Command::new(&script)
        .arg("fetch")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !fetch.status.success() {
        return Err(format!(
            "QEMU 11.1 could not be prepared ({}):\n{}",
            fetch.status,
            String::from_utf8_lossy(&fetch.stderr)
        ));
    }
    let build = root.join("scripts/interop/build-guest.sh");
    let out = Command::new(&build)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", build.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "building the guest failed ({}):\n{stdout}",
            out.status
        ));
    }
    let path = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|p| PathBuf::from(p.trim()))
            .ok_or_else(|| format!("build-guest.sh printed no {key:?} line:\n{stdout}"))
    };
    Ok(Peers {
        script,
        kernel: path("kernel:")?,
        initrd: path("initrd:")?,
    })
}

fn peers() -> Option<Peers> {
    match prepare() {
        Ok(p) => Some(p),
        Err(reason) => {
            if std::env::var_os("VHOST_SWITCH_REQUIRE_PEERS").is_some() {
                panic!(
                    "vfio-user interop is required (VHOST_SWITCH_REQUIRE_PEERS is set): {reason}"
                );
            }
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

/// One guest: QEMU 11.1 in its root, the serial console in `log`.
fn boot(peers: &Peers, dir: &Path, nic: &[String], append: &str, log: &Path) -> Child {
    let guest_dir = peers.kernel.parent().unwrap();
    let mut args: Vec<String> = vec![
        "-c".into(),
        "0".into(),
        peers.script.display().to_string(),
        "run".into(),
        "--bind".into(),
        dir.display().to_string(),
        "--bind".into(),
        guest_dir.display().to_string(),
        "--".into(),
    ];
    let kernel_args = format!("console=ttyS0 panic=-1 quiet {append}");
    for a in [
        "-M",
        "q35,accel=tcg",
        "-m",
        "256M",
        "-smp",
        "1",
        "-nodefaults",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
        "-object",
        "memory-backend-memfd,id=mem,size=256M,share=on",
        "-machine",
        "memory-backend=mem",
    ] {
        args.push(a.into());
    }
    args.extend([
        "-kernel".into(),
        peers.kernel.display().to_string(),
        "-initrd".into(),
        peers.initrd.display().to_string(),
        "-append".into(),
        kernel_args,
        "-serial".into(),
        format!("file:{}", log.display()),
    ]);
    args.extend(nic.iter().cloned());
    Command::new("taskset")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log.with_extension("stderr")).unwrap())
        .spawn()
        .expect("start QEMU 11.1")
}

fn results(log: &Path) -> Vec<String> {
    tagged_serial_lines(log, "VS-RESULT")
}

fn wait_result(child: &mut Child, log: &Path) -> Option<String> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(r) = results(log).into_iter().next() {
            return Some(r);
        }
        if child.try_wait().ok().flatten().is_some() {
            return results(log).into_iter().next();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_vfio_user_guest_pings_a_vhost_user_guest() {
    let Some(peers) = peers() else { return };
    let dir = temp_dir("vfu");
    let vfu = dir.join("vm0.sock");
    let vhu = dir.join("vm1.sock");
    let daemon = Daemon::spawn(
        dir.clone(),
        &[
            "run".into(),
            "--vfio-user-port".into(),
            format!("vm0={}", vfu.display()),
            "--port".into(),
            format!("vm1={}", vhu.display()),
        ],
    );
    daemon.wait_for_socket(&vfu);
    daemon.wait_for_socket(&vhu);

    let vhost_nic = vec![
        "-chardev".into(),
        format!("socket,id=c0,path={}", vhu.display()),
        "-netdev".into(),
        "vhost-user,id=n0,chardev=c0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,romfile=".into(),
    ];
    let vfio_nic = vec![
        "-device".into(),
        format!(
            r#"{{"driver":"vfio-user-pci","socket":{{"path":"{}","type":"unix"}}}}"#,
            vfu.display()
        ),
    ];
    let (log0, log1) = (dir.join("vm0.log"), dir.join("vm1.log"));
    let mut vm1 = boot(
        &peers,
        &dir,
        &vhost_nic,
        "vs.mode=ping vs.ip=10.0.0.2/24 vs.peer=10.0.0.1",
        &log1,
    );
    let mut vm0 = boot(
        &peers,
        &dir,
        &vfio_nic,
        "vs.mode=ping vs.ip=10.0.0.1/24 vs.peer=10.0.0.2",
        &log0,
    );
    let r0 = wait_result(&mut vm0, &log0);
    let r1 = wait_result(&mut vm1, &log1);
    let stats = daemon.ctl("stats");
    stop(&mut vm0);
    stop(&mut vm1);
    let report = || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "vm0 (vfio-user): {r0:?}\n{}\n{}\nvm1 (vhost-user): {r1:?}\n{}\n{}\nswitch log:\n{}",
            read(&log0),
            read(&log0.with_extension("stderr")),
            read(&log1),
            read(&log1.with_extension("stderr")),
            daemon.log()
        )
    };
    for r in [&r0, &r1] {
        assert!(
            r.as_deref()
                .is_some_and(|r| r.contains(" ok=1 ") && r.contains("received=3/3")),
            "{}",
            report()
        );
    }
    let log = daemon.log();
    assert!(
        !log.contains("refused:") && !log.contains("rejected:"),
        "{}",
        report()
    );
    assert!(
        log.contains("port=vm0") && log.contains("features acked"),
        "{}",
        report()
    );
    // Each guest pinged the other 3 times: at least 6 frames each way on vm0 (plus ARP).
    let vm0 = stats["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "vm0"))
        .cloned()
        .unwrap_or_default();
    let (taken, delivered) = (vm0["rx_packets"].as_u64(), vm0["tx_packets"].as_u64());
    assert!(
        taken.is_some_and(|n| n >= 6) && delivered.is_some_and(|n| n >= 6),
        "vm0 through the switch: taken {taken:?}, delivered {delivered:?}\n{stats}"
    );
}
