//! Test harness: the real `vhost-switch` binary on real unix sockets, driven by the
//! `vhost-kit` front-end library.
#![allow(dead_code)]

pub mod guest;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vhost_kit::frontend::Frontend;
use vhost_kit::memory::{HugePages, SharedMemory};
use vhost_kit::vring::Vring;
use vmm_sys_util::eventfd::EventFd;

/// Features a Linux guest would ack from what we offer.
pub const VERSION_1: u64 = 1 << 32;
pub const BIT30: u64 = 1 << 30;
pub const MRG_RXBUF: u64 = 1 << 15;
pub const EVENT_IDX: u64 = 1 << 29;
pub const RING_PACKED: u64 = 1 << 34;
pub const IN_ORDER: u64 = 1 << 35;
pub const MQ: u64 = 1;
pub const RARP: u64 = 1 << 2;
pub const REPLY_ACK: u64 = 1 << 3;
pub const NET_MTU: u64 = 1 << 4;
/// VIRTIO_NET_F_MTU (a virtio feature bit).
pub const F_MTU: u64 = 1 << 3;
/// Offload feature bits (virtio 1.2 §5.1.3).
pub const CSUM: u64 = 1;
pub const GUEST_CSUM: u64 = 1 << 1;
pub const GUEST_TSO4: u64 = 1 << 7;
pub const GUEST_TSO6: u64 = 1 << 8;
pub const GUEST_ECN: u64 = 1 << 9;
pub const HOST_TSO4: u64 = 1 << 11;
pub const HOST_TSO6: u64 = 1 << 12;
pub const HOST_ECN: u64 = 1 << 13;
/// Every offload the switch offers.
pub const OFFLOADS: u64 =
    CSUM | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | HOST_TSO4 | HOST_TSO6 | HOST_ECN;
pub const CONFIG: u64 = 1 << 9;
pub const MEM_SLOTS: u64 = 1 << 15;
pub const STATUS: u64 = 1 << 16;
pub const FEATURES_OK: u8 = 8;
pub const ACK_DRIVER: u8 = 1 | 2;

/// How long a reply or an event may take. Generous: on a 2-core machine two test daemons'
/// pollers share one core.
pub const TIMEOUT: Duration = Duration::from_secs(15);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running daemon in its own temporary directory.
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    log: PathBuf,
    out: PathBuf,
    keep_dir: bool,
}

/// A fresh, unique temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vs-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The complete lines of a guest's serial log that carry `tag`, each from the tag on
/// (firmware escape codes may precede it). A line still being written has no newline
/// yet and is left out: QEMU writes the console in pieces, so a read can end mid-line.
pub fn tagged_serial_lines(serial: &Path, tag: &str) -> Vec<String> {
    let bytes = std::fs::read(serial).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.find(tag).map(|i| l[i..].trim_end().to_string()))
        .collect()
}

impl Daemon {
    /// Starts `vhost-switch run` with server ports `names` (sockets in a temp dir) and
    /// `extra` arguments; waits until every socket exists.
    pub fn start(names: &[&str], extra: &[&str]) -> Daemon {
        let dir = temp_dir("d");
        let mut args: Vec<String> = vec!["run".into()];
        for n in names {
            args.push("--port".into());
            args.push(format!("{n}={}", dir.join(format!("{n}.sock")).display()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let d = Daemon::spawn(dir, &args);
        for n in names {
            d.wait_for_socket(&d.sock(n));
        }
        d
    }

    /// Starts the binary with `args` (plus a control socket in `dir` for `run`), logging
    /// into `dir`.
    pub fn spawn(dir: PathBuf, args: &[String]) -> Daemon {
        let log = dir.join("daemon.log");
        let out = dir.join("daemon.out");
        let mut args = args.to_vec();
        if args.first().map(String::as_str) == Some("run")
            && !args.iter().any(|a| a == "--control-socket")
        {
            args.push("--control-socket".into());
            args.push(dir.join("ctl.sock").display().to_string());
        }
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-switch"))
            .args(&args)
            .env("RUST_LOG", "vhost_switch=debug,pmd=info")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start vhost-switch");
        Daemon {
            child: Some(child),
            dir,
            log,
            out,
            keep_dir: false,
        }
    }

    /// `vhost-switch ctl COMMAND --json` against this daemon, parsed.
    pub fn ctl(&self, command: &str) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-switch"))
            .args(["ctl", "--json", "--control-socket"])
            .arg(self.dir.join("ctl.sock"))
            .arg(command)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    pub fn wait_for_socket(&self, path: &Path) {
        let deadline = Instant::now() + TIMEOUT;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "socket {} never appeared; log:\n{}",
                path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects a front-end to port `name`.
    pub fn connect(&self, name: &str) -> Frontend {
        let mut fe = Frontend::connect(self.sock(name)).expect("connect");
        fe.set_timeout(TIMEOUT);
        fe
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The daemon's stderr so far, up to its last complete line (a line still being
    /// written would otherwise be parsed as if it were whole).
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.truncate(log.rfind('\n').map_or(0, |end| end + 1));
        log
    }

    /// Waits until the log contains `needle` (the daemon logs asynchronously to us).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `needle` occurs at least `n` times in the log.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?} {n} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lines of the log with "rejected".
    pub fn rejections(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("rejected:"))
            .map(String::from)
            .collect()
    }

    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    pub fn map_count(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid()))
            .unwrap()
            .lines()
            .count()
    }

    /// Waits until the daemon's fd count is `n` (it closes asynchronously to us).
    pub fn wait_fds(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.fd_count() != n {
            assert!(
                Instant::now() < deadline,
                "daemon holds {} fds, expected {n}:\n{}",
                self.fd_count(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_maps(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.map_count() != n {
            assert!(
                Instant::now() < deadline,
                "daemon has {} mappings, expected {n}",
                self.map_count()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM, wait; returns (exit code, stdout, stderr).
    pub fn stop(mut self) -> (Option<i32>, String, String) {
        let mut child = self.child.take().unwrap();
        // The caller inspects the directory afterwards and removes it.
        self.keep_dir = true;
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        (status.code(), out, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("daemon log kept in {}:\n{}", self.dir.display(), self.log());
        } else if std::env::var_os("VHOST_SWITCH_KEEP_LOGS").is_some() {
            eprintln!("daemon log kept in {}", self.dir.display());
        } else if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A front-end's guest: memory and two rings (RX 0, TX 1) with eventfds.
pub struct Guest {
    pub mem: SharedMemory,
    pub rings: Vec<Vring>,
    pub kicks: Vec<EventFd>,
    pub calls: Vec<EventFd>,
}

pub const QUEUE_SIZE: u16 = 256;

impl Guest {
    pub fn new() -> Guest {
        Guest::with_memory(SharedMemory::new(4 << 20, HugePages::Never).unwrap())
    }

    pub fn with_memory(mem: SharedMemory) -> Guest {
        let rings = (0..2)
            .map(|i| Vring::new(&mem, 0x10000 * (i + 1), QUEUE_SIZE).unwrap())
            .collect();
        let kicks = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        let calls = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        Guest {
            mem,
            rings,
            kicks,
            calls,
        }
    }

    pub fn region(&self) -> (vhost::vhost_user::message::VhostUserMemoryRegion, i32) {
        (self.mem.region(), self.mem.fd())
    }
}

/// Owner, protocol features `proto`, features `features`, no ring yet.
pub fn negotiate(fe: &mut Frontend, proto: u64, features: u64) {
    assert_ne!(fe.get_features().unwrap() & BIT30, 0);
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(proto, false).unwrap();
    fe.set_owner(proto & REPLY_ACK != 0).unwrap();
    fe.set_features(features, proto & REPLY_ACK != 0).unwrap();
}

/// Negotiates (REPLY_ACK, MQ, STATUS, CONFIG, MEM_SLOTS; VERSION_1 + bit 30), maps the
/// guest memory and starts both rings.
pub fn start_device(fe: &mut Frontend, guest: &Guest) {
    negotiate(
        fe,
        MQ | REPLY_ACK | STATUS | CONFIG | MEM_SLOTS,
        VERSION_1 | BIT30 | MRG_RXBUF | EVENT_IDX,
    );
    fe.set_status(ACK_DRIVER | FEATURES_OK, true).unwrap();
    fe.set_mem_table(&[guest.region()], true).unwrap();
    for i in 0..2 {
        fe.setup_vring(
            i,
            &guest.rings[i as usize],
            0,
            0,
            Some(guest.kicks[i as usize].as_raw_fd()),
            Some(guest.calls[i as usize].as_raw_fd()),
            true,
        )
        .unwrap();
    }
}

/// Asserts the request was NACKed.
pub fn assert_nack<T: std::fmt::Debug>(r: vhost_kit::error::Result<T>) {
    match r {
        Err(vhost_kit::error::Error::Nack(v)) => assert_ne!(v, 0),
        other => panic!("expected a NACK, got {other:?}"),
    }
}

/// Asserts the daemon closed the connection.
pub fn assert_closed(fe: &mut Frontend) {
    assert!(
        fe.conn_mut().is_closed(TIMEOUT),
        "the daemon kept the connection open"
    );
}
