//! Tenant isolation: each thing a hostile front-end or guest on port p0 can do to take
//! more than its share, one test per attack. Each test checks, after the attack: the
//! attack was refused or contained as documented (docs/reliability.md), the other ports
//! (p1 <-> p2) kept forwarding, p0 serves a well-behaved front-end again, and the daemon's
//! descriptors, mappings and resident memory are back to their baseline.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use common::guest::*;
use common::*;
use vhost::vhost_user::message::{FrontendReq, VhostUserMemoryRegion};
use vhost_kit::driver::frame::local_mac;

/// Resident memory of a process, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The daemon's state before an attack, and the two bystander guests on p1 and p2.
struct Baseline {
    fds: usize,
    maps: usize,
    resident_kib: u64,
}

impl Baseline {
    fn take(d: &Daemon) -> Baseline {
        Baseline {
            fds: d.fd_count(),
            maps: d.map_count(),
            resident_kib: resident_kib(d.pid()),
        }
    }

    /// Descriptors and mappings exactly as before, resident memory within 16 MiB of it
    /// (allocator noise; any leaked guest mapping of these tests is larger).
    fn check(&self, d: &mut Daemon) {
        assert!(d.alive(), "the daemon died:\n{}", d.log());
        d.wait_fds(self.fds);
        d.wait_maps(self.maps);
        let now = resident_kib(d.pid());
        assert!(
            now < self.resident_kib + 16 * 1024,
            "resident memory {now} KiB, baseline {} KiB",
            self.resident_kib
        );
    }
}

/// Receives and discards what a guest was sent so far (frames flooded to it while MACs
/// were unknown), until nothing has come for 200 ms.
fn drain(vm: &mut Vm<'_>) {
    while !vm.recv_n(usize::MAX, Duration::from_millis(200)).is_empty() {}
}

/// p1 and p2 still exchange intact frames both ways.
fn bystanders_forward(b: &mut Vm<'_>, c: &mut Vm<'_>, seq: &mut u64) {
    drain(b);
    drain(c);
    exchange(b, c, 64, 256, *seq);
    exchange(c, b, 64, 256, *seq + 64);
    *seq += 128;
}

/// p0 takes a well-behaved guest again, which exchanges traffic with p1; it then leaves.
fn p0_recovers(d: &Daemon, b: &mut Vm<'_>, seq: &mut u64) {
    let mem = memory();
    let mut a = attach(d, "p0", &mem, GUEST_FEATURES, 2048, local_mac(1));
    drain(b);
    exchange(&mut a, b, 64, 256, *seq);
    exchange(b, &mut a, 64, 256, *seq + 64);
    *seq += 128;
}

/// Runs `attack` on p0 while guests on p1 and p2 (the bystanders) forward, then checks what
/// every attack must leave intact: the bystanders still exchange verified frames both ways,
/// the daemon's descriptors, mappings and resident memory are back to their baseline, p0
/// serves a well-behaved guest again, and every port conserves its packets.
fn attack_p0(
    d: &mut Daemon,
    attack: impl FnOnce(&mut Daemon, &mut Vm<'_>, &mut Vm<'_>, &mut u64, &Baseline),
) {
    let (m1, m2) = (memory(), memory());
    let mut b = attach(d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut c = attach(d, "p2", &m2, GUEST_FEATURES, 2048, local_mac(3));
    let mut seq = 0;
    bystanders_forward(&mut b, &mut c, &mut seq);
    let base = Baseline::take(d);
    attack(d, &mut b, &mut c, &mut seq, &base);
    bystanders_forward(&mut b, &mut c, &mut seq);
    base.check(d);
    p0_recovers(d, &mut b, &mut seq);
    base.check(d);
    assert_conservation(d);
}

/// A memfd of `len` bytes (sparse: nothing is allocated until written).
fn sparse_memfd(len: u64) -> OwnedFd {
    // SAFETY: memfd_create takes a NUL-terminated name and returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"tenant-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our own memfd.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
    fd
}

fn start() -> Daemon {
    Daemon::start(&["p0", "p1", "p2"], &["--mode", "learning"])
}

#[test]
fn a_small_region_at_a_large_offset_maps_only_that_region() {
    let mut d = start();
    attack_p0(&mut d, |d, _b, _c, _seq, base| {
        // 4 MiB of guest memory at 4 GiB + 1 page into a sparse 8 GiB memfd. Mapping the
        // file from offset 0 with MAP_POPULATE would make the switch allocate 4 GiB.
        let file = sparse_memfd(8 << 30);
        let mut fe = d.connect("p0");
        negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
        let region = VhostUserMemoryRegion::new(0, 4 << 20, 0x7f00_0000_0000, (4 << 30) + 4096);
        fe.set_mem_table(&[(region, file.as_raw_fd())], true)
            .unwrap();
        let during = resident_kib(d.pid());
        assert!(
            during < base.resident_kib + 32 * 1024,
            "resident memory {during} KiB with a 4 MiB region (baseline {} KiB)",
            base.resident_kib
        );
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", d.pid())).unwrap();
        let memfd_kib: u64 = maps
            .lines()
            .filter(|l| l.contains("memfd:tenant-test"))
            .map(|l| {
                let (lo, hi) = l.split_once(' ').unwrap().0.split_once('-').unwrap();
                (u64::from_str_radix(hi, 16).unwrap() - u64::from_str_radix(lo, 16).unwrap()) / 1024
            })
            .sum();
        assert_eq!(memfd_kib, 4 << 10, "mapped {memfd_kib} KiB of the memfd");
    });
}

#[test]
fn memory_shrunk_under_the_switch_fails_only_that_port() {
    let mut d = start();
    attack_p0(&mut d, |d, b, _c, seq, _base| {
        let victim_mem = memory();
        let mut a = attach(d, "p0", &victim_mem, GUEST_FEATURES, 2048, local_mac(1));
        exchange(&mut a, b, 32, 256, *seq);
        exchange(b, &mut a, 32, 256, *seq + 32);
        *seq += 64;
        // The front-end shrinks its memfd under the switch's mapping. From here on this
        // process must not touch that memory either: the driver is forgotten, not used.
        // SAFETY: ftruncate on the memfd our SharedMemory owns; we never access its
        // mapping again (the driver is leaked below, the mapping only unmapped).
        assert_eq!(unsafe { libc::ftruncate(victim_mem.fd(), 0) }, 0);
        // Traffic towards p0 makes a PMD write into the vanished RX buffers; its TX ring
        // is gone too. Both fault; the fence repairs them and the port is failed.
        let frames: Vec<Vec<u8>> = (0..32)
            .map(|i| make_frame(256, local_mac(1), b.mac, *seq + i))
            .collect();
        b.send_all(&frames);
        b.wait_tx_done();
        *seq += 32;
        d.wait_log("guest memory shrank under its mapping");
        assert!(d.alive(), "SIGBUS killed the switch:\n{}", d.log());
        let p0 = port_stats(d, "p0");
        assert_eq!(p0["control"]["memory_faults"], 1, "{p0}");
        assert_eq!(p0["connected"], false, "{p0}");
        let Vm { fe, drv, .. } = a;
        std::mem::forget(drv);
        let mut fe = fe;
        assert!(
            fe.conn_mut().is_closed(TIMEOUT),
            "p0's front-end was not disconnected"
        );
    });
}

fn eventfd(flags: i32) -> OwnedFd {
    // SAFETY: eventfd returns a new descriptor or -1 (checked).
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0 }
}

#[test]
fn ring_descriptors_must_be_eventfds_and_a_full_one_blocks_nothing() {
    let mut d = start();
    attack_p0(&mut d, |d, b, _c, seq, _base| {
        let mem = memory();
        let mut a = attach(d, "p0", &mem, GUEST_FEATURES, 2048, local_mac(1));
        // A pipe as the interrupt descriptor: a PMD writing into it could block.
        let (rd, wr) = {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills two fresh descriptors (checked).
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: both are fresh descriptors nobody else owns.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        assert_nack(a.fe.set_vring_call(0, Some(wr.as_raw_fd()), true));
        assert_nack(a.fe.set_vring_kick(1, Some(rd.as_raw_fd()), true));
        assert_nack(a.fe.set_vring_err(0, Some(wr.as_raw_fd()), true));
        let log = d.wait_log("the call descriptor is pipe:");
        assert!(log.contains("R11 tenant bounds"), "{log}");
        // A blocking eventfd whose counter is full: a blocking write would wait forever.
        let full = eventfd(0);
        let max = (u64::MAX - 1).to_ne_bytes();
        // SAFETY: writing 8 bytes from a live buffer to our own eventfd.
        let written = unsafe { libc::write(full.as_raw_fd(), max.as_ptr().cast(), 8) };
        assert_eq!(written, 8);
        assert!(!is_nonblocking(full.as_raw_fd()));
        a.fe.set_vring_call(0, Some(full.as_raw_fd()), true)
            .unwrap();
        assert!(
            is_nonblocking(full.as_raw_fd()),
            "the switch must make it non-blocking"
        );
        // p0 asks for interrupts (the driver's default): every burst into it tries one.
        drain(b);
        exchange(&mut a, b, 1, 256, *seq);
        exchange(b, &mut a, 256, 256, *seq + 1);
        *seq += 257;
        // Control requests are answered: no PMD is stuck in write(2).
        assert!(a.fe.get_vring_base(0).is_ok());
    });
}

fn header(code: u32, flags: u32, size: u32) -> Vec<u8> {
    [code, flags, size]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

#[test]
fn descriptors_sent_piecewise_on_one_message_close_the_connection() {
    let mut d = start();
    attack_p0(&mut d, |d, _b, _c, _seq, _base| {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let fds = vec![devnull.as_raw_fd(); 200];
        let mut fe = d.connect("p0");
        // SET_VRING_CALL's header one byte at a time, each byte carrying 200 descriptors:
        // the switch used to add every batch to the message.
        let message = header(FrontendReq::SET_VRING_CALL as u32, 1, 8);
        for byte in message.chunks(1) {
            if fe.conn_mut().send_raw(byte, &fds).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(fe.conn_mut().is_closed(TIMEOUT));
        d.wait_log("file descriptors attached to one message; the limit is 8");
    });
}

#[test]
fn a_connection_holds_no_more_descriptors_than_its_limit() {
    let dir = temp_dir("fdlimit");
    let config = dir.join("switch.toml");
    std::fs::write(
        &config,
        "max_fds_per_message = 4\nmax_fds_per_connection = 5\n[[port]]\nname = \"p0\"\nsocket = \"/nonexistent/p0\"\nqueues = 2\n",
    )
    .unwrap();
    let mut d = Daemon::start(
        &["p0", "p1", "p2"],
        &["--mode", "learning", "--config", config.to_str().unwrap()],
    );
    attack_p0(&mut d, |d, _b, _c, _seq, _base| {
        let mut fe = d.connect("p0");
        negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
        let efds: Vec<OwnedFd> = (0..6).map(|_| eventfd(libc::EFD_NONBLOCK)).collect();
        // Four rings, kick/call/err each: the sixth descriptor passes the limit of 5.
        for (i, fd) in efds.iter().enumerate().take(5) {
            let ring = (i % 4) as u32;
            if i < 4 {
                fe.set_vring_call(ring, Some(fd.as_raw_fd()), true).unwrap();
            } else {
                fe.set_vring_err(ring, Some(fd.as_raw_fd()), true).unwrap();
            }
        }
        assert_nack(fe.set_vring_err(1, Some(efds[5].as_raw_fd()), true));
        d.wait_log("5 descriptors held and 1 more sent exceed this port's limit of 5");
    });
}

#[test]
fn frames_longer_than_the_limit_are_dropped_as_too_long() {
    let d = Daemon::start(
        &["p0", "p1", "p2"],
        &["--mode", "learning", "--max-frame-len", "1000"],
    );
    let (m0, m1, m2) = (memory(), memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut c = attach(&d, "p2", &m2, GUEST_FEATURES, 2048, local_mac(3));
    let mut seq = 0;
    // Learn p0's MAC first.
    exchange(&mut a, &mut b, 8, 1000, seq);
    seq += 8;
    drain(&mut b);
    exchange(&mut b, &mut a, 8, 1000, seq);
    seq += 8;
    let long: Vec<Vec<u8>> = (0..16)
        .map(|i| make_frame(1001, b.mac, a.mac, seq + i))
        .collect();
    a.send_all(&long);
    a.wait_tx_done();
    assert!(b.recv_n(1, Duration::from_millis(300)).is_empty());
    assert_eq!(drops(&d, "p0", 1, "too_long"), 16);
    exchange(&mut a, &mut b, 8, 1000, seq + 16);
    seq += 24;
    bystanders_forward(&mut b, &mut c, &mut seq);
    assert_conservation(&d);
}

#[test]
fn require_sealed_memory_refuses_memory_the_front_end_could_shrink() {
    let dir = temp_dir("sealed");
    let config = dir.join("switch.toml");
    std::fs::write(&config, "require_sealed_memory = true\n").unwrap();
    let mut d = Daemon::start(&["p0"], &["--config", config.to_str().unwrap()]);
    let base = Baseline::take(&d);
    let region = VhostUserMemoryRegion::new(0, 1 << 20, 0x7f00_0000_0000, 0);
    {
        let unsealed = sparse_memfd(1 << 20);
        let mut fe = d.connect("p0");
        negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
        assert_nack(fe.set_mem_table(&[(region, unsealed.as_raw_fd())], true));
        d.wait_log("is not a memfd sealed against shrinking");
        // The same memory sealed the way QEMU's memory-backend-memfd seals it.
        // SAFETY: F_ADD_SEALS on our own memfd, created with MFD_ALLOW_SEALING.
        let rc = unsafe {
            libc::fcntl(
                unsealed.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        assert_eq!(rc, 0);
        fe.set_mem_table(&[(region, unsealed.as_raw_fd())], true)
            .unwrap();
    }
    base.check(&mut d);
}

/// The FDB entries of `port`, as `ctl fdb` lists them: (mac, static).
fn fdb_of(d: &Daemon, port: &str) -> Vec<(String, bool)> {
    d.ctl("fdb")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["port"] == port)
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_string(),
                e["static"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn one_port_cannot_fill_the_fdb() {
    let mut d = Daemon::start(
        &["p0", "p1", "p2"],
        &["--mode", "learning", "--max-learned-macs", "16"],
    );
    let (m0, m1, m2) = (memory(), memory(), memory());
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut c = attach(&d, "p2", &m2, GUEST_FEATURES, 2048, local_mac(3));
    let mut seq = 0;
    bystanders_forward(&mut b, &mut c, &mut seq);
    let base = Baseline::take(&d);
    {
        let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
        // 1000 frames, each from a different source MAC, to p1.
        let frames: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| make_frame(128, b.mac, local_mac(1000 + i), seq + u64::from(i)))
            .collect();
        a.send_all(&frames);
        a.wait_tx_done();
        seq += 1000;
        assert_eq!(fdb_of(&d, "p0").len(), 16, "p0 holds its share only");
        let p0 = port_stats(&d, "p0");
        assert_eq!(p0["fdb"]["learned"], 16, "{p0}");
        assert_eq!(p0["fdb"]["learn_refused"], 1000 - 16, "{p0}");
        // The other ports still learn and get unicast, not floods.
        bystanders_forward(&mut b, &mut c, &mut seq);
        assert_eq!(fdb_of(&d, "p1").len(), 1);
        assert_eq!(fdb_of(&d, "p2").len(), 1);
    }
    base.check(&mut d);
    p0_recovers(&d, &mut b, &mut seq);
    assert_conservation(&d);
}

/// A config file for p0..p2 with extra per-port lines.
fn config_with(tag: &str, p0: &str, p1: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let path = dir.join("switch.toml");
    std::fs::write(
        &path,
        format!(
            "mode = \"learning\"\n[[port]]\nname = \"p0\"\nsocket = \"/unused/p0\"\n{p0}\n[[port]]\nname = \"p1\"\nsocket = \"/unused/p1\"\n{p1}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_configured_mac_belongs_to_its_port() {
    let victim = local_mac(2);
    let config = config_with("ownmac", "", &format!("mac = \"{}\"", mac_text(victim)));
    let mut d = Daemon::start(&["p0", "p1", "p2"], &["--config", config.to_str().unwrap()]);
    let (m0, m1, m2) = (memory(), memory(), memory());
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, victim);
    let mut c = attach(&d, "p2", &m2, GUEST_FEATURES, 2048, local_mac(3));
    let mut seq = 0;
    let base = Baseline::take(&d);
    {
        let mut thief = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
        // p0 sends with p1's configured MAC as its source ...
        let stolen: Vec<Vec<u8>> = (0..32)
            .map(|i| make_frame(128, c.mac, victim, seq + i))
            .collect();
        thief.send_all(&stolen);
        thief.wait_tx_done();
        seq += 32;
        assert_eq!(fdb_of(&d, "p1"), vec![(mac_text(victim), true)]);
        // ... and traffic to that MAC still goes to p1, never to p0.
        drain(&mut b);
        drain(&mut c);
        exchange(&mut c, &mut b, 64, 256, seq);
        seq += 64;
        assert!(thief.recv_n(1, Duration::from_millis(200)).is_empty());
        bystanders_forward(&mut b, &mut c, &mut seq);
    }
    base.check(&mut d);
    p0_recovers(&d, &mut b, &mut seq);
}

#[test]
fn port_security_drops_spoofed_sources() {
    let own = local_mac(1);
    let config = config_with(
        "spoof",
        &format!("allowed_macs = [\"{}\"]", mac_text(own)),
        "",
    );
    let mut d = Daemon::start(&["p0", "p1", "p2"], &["--config", config.to_str().unwrap()]);
    let (m0, m1, m2) = (memory(), memory(), memory());
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut c = attach(&d, "p2", &m2, GUEST_FEATURES, 2048, local_mac(3));
    let mut seq = 0;
    let base = Baseline::take(&d);
    {
        let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, own);
        let spoofed: Vec<Vec<u8>> = (0..40)
            .map(|i| make_frame(128, b.mac, local_mac(77), seq + i))
            .collect();
        a.send_all(&spoofed);
        a.wait_tx_done();
        seq += 40;
        assert_eq!(drops(&d, "p0", 1, "spoofed"), 40);
        assert!(
            fdb_of(&d, "p0").is_empty(),
            "nothing learned from spoofed frames"
        );
        drain(&mut b);
        assert!(b.recv_n(1, Duration::from_millis(200)).is_empty());
        // Its own MAC passes.
        exchange(&mut a, &mut b, 32, 128, seq);
        seq += 32;
        bystanders_forward(&mut b, &mut c, &mut seq);
    }
    base.check(&mut d);
    p0_recovers(&d, &mut b, &mut seq);
    assert_conservation(&d);
}
