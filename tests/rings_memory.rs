//! DESIGN §4 rules 6-9 over a real unix socket against the real daemon.

mod common;

use std::os::fd::AsRawFd;

use common::*;
use vhost::vhost_user::message::{FrontendReq, VhostUserMemoryRegion, VhostUserVringAddr};
use vhost_kit::error::Error;
use vhost_kit::memory::{HugePages, SharedMemory};

fn ready(d: &Daemon, proto: u64, features: u64) -> (vhost_kit::Frontend, Guest) {
    let mut fe = d.connect("p0");
    negotiate(&mut fe, proto, features);
    let guest = Guest::new();
    fe.set_mem_table(&[guest.region()], true).unwrap();
    (fe, guest)
}

// ---- R6: ring state ----

#[test]
fn r6_rings_start_disabled_when_bit30_acked() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    fe.setup_vring(1, &guest.rings[1], 0, 0, None, None, true)
        .unwrap();
    d.wait_log("ring started port=p0 ring=1 size=256 base=0 enabled=false");
    fe.set_vring_enable(1, true, true).unwrap();
    d.wait_log("ring enable port=p0 ring=1 enabled=true");
}

#[test]
fn r6_rings_start_enabled_without_bit30() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, guest) = ready(&d, REPLY_ACK, VERSION_1);
    fe.setup_vring(0, &guest.rings[0], 0, 0, None, None, true)
        .unwrap();
    d.wait_log("ring started port=p0 ring=0 size=256 base=0 enabled=true");
    // SET_VRING_ENABLE is illegal once SET_FEATURES left bit 30 out.
    assert_nack(fe.set_vring_enable(0, false, true));
    d.wait_log("bit 30 was not acked by SET_FEATURES");
}

#[test]
fn r6_enable_value_must_be_0_or_1() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, _guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    let body = vhost_kit::payload::vring_state(0, 2);
    assert_nack(fe.request(FrontendReq::SET_VRING_ENABLE, true, &body, &[]));
}

#[test]
fn r6_get_vring_base_stops_the_ring_and_returns_the_base() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    fe.setup_vring(
        0,
        &guest.rings[0],
        42,
        0,
        Some(guest.kicks[0].as_raw_fd()),
        None,
        true,
    )
    .unwrap();
    // Running: its configuration is frozen.
    assert_nack(fe.set_vring_num(0, 128, true));
    assert_nack(fe.set_vring_base(0, 7, true));
    assert_eq!(fe.get_vring_base(0).unwrap(), 42);
    d.wait_log("ring stopped port=p0 ring=0 base=42");
    // Stopped: it may be reconfigured and restarted at a new base (QEMU reconnect).
    fe.set_vring_num(0, 128, true).unwrap();
    fe.setup_vring(0, &guest.rings[0], 1000, 0, None, None, true)
        .unwrap();
    assert_eq!(fe.get_vring_base(0).unwrap(), 1000);
}

#[test]
fn r6_kick_without_fd_means_polling() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    fe.setup_vring(0, &guest.rings[0], 0, 0, None, None, true)
        .unwrap();
    d.wait_log("polling=true");
    // The invalid-fd bit with a descriptor attached anyway is refused.
    let null = std::fs::File::open("/dev/null").unwrap();
    let value = vhost_kit::payload::vring_file(1, false);
    assert_nack(fe.request(
        FrontendReq::SET_VRING_CALL,
        true,
        &value.to_ne_bytes(),
        &[null.as_raw_fd()],
    ));
    // And a descriptor missing without the bit.
    let value = vhost_kit::payload::vring_file(1, true);
    assert_nack(fe.request(FrontendReq::SET_VRING_CALL, true, &value.to_ne_bytes(), &[]));
}

#[test]
fn r6_ring_cannot_start_incomplete() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, _guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.set_vring_kick(0, None, true));
    d.wait_log("ring 0 cannot start: SET_VRING_NUM not set");
    fe.set_vring_num(0, 256, true).unwrap();
    assert_nack(fe.set_vring_kick(0, None, true));
    d.wait_log("ring 0 cannot start: SET_VRING_ADDR not set");
}

#[test]
fn r6_get_vring_base_on_a_never_started_ring_answers_without_hanging() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, _guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    fe.set_vring_base(0, 9, true).unwrap();
    assert_eq!(fe.get_vring_base(0).unwrap(), 9);
}

// ---- R7: ring setup ----

#[test]
fn r7_queue_size_must_be_a_power_of_two_up_to_32768() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, _guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    for bad in [0, 3, 100, 65536, 32769] {
        assert_nack(fe.set_vring_num(0, bad, true));
    }
    for good in [1, 2, 256, 32768] {
        fe.set_vring_num(0, good, true).unwrap();
    }
}

#[test]
fn r7_ring_index_out_of_range_is_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.set_vring_num(2, 256, true));
    assert_nack(fe.set_vring_num(255, 256, true));
    assert_nack(fe.set_vring_call(255, Some(guest.calls[0].as_raw_fd()), true));
    assert!(matches!(fe.get_vring_base(255), Err(Error::Closed)));
    d.wait_log("ring index 255 is out of range (port has 2 rings)");
}

#[test]
fn r7_ring_addresses_are_translated_checked_and_aligned() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    fe.set_vring_num(0, 256, true).unwrap();
    let good = guest.rings[0].addr(0, 0);
    let with = |f: &dyn Fn(&mut VhostUserVringAddr)| {
        let mut a = good;
        f(&mut a);
        a
    };
    let end = guest.mem.user_addr() + guest.mem.size() as u64;
    let cases = [
        with(&|a| a.descriptor = 0x1000),      // outside memory
        with(&|a| a.used = end - 16),          // straddles the end
        with(&|a| a.descriptor += 8),          // misaligned
        with(&|a| a.used = good.descriptor),   // used ring over the descriptor table
        with(&|a| a.flags = 1),                // dirty logging not offered
        with(&|a| a.available = u64::MAX - 1), // wraps
    ];
    for bad in &cases {
        assert_nack(fe.set_vring_addr(bad, true));
    }
    fe.set_vring_addr(&good, true).unwrap();
    let log = d.log();
    assert!(log.contains("is not inside one memory region"), "{log}");
    assert!(log.contains("is not 16-byte aligned"), "{log}");
    assert!(log.contains("Desc and Used overlap"), "{log}");
}

#[test]
fn r7_ring_address_before_memory_table_is_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    let guest = Guest::new();
    fe.set_vring_num(0, 256, true).unwrap();
    assert_nack(fe.set_vring_addr(&guest.rings[0].addr(0, 0), true));
    d.wait_log("no memory table has been set");
}

#[test]
fn r7_vring_base_must_fit_a_split_ring_index() {
    let d = Daemon::start(&["p0"], &[]);
    let (mut fe, _guest) = ready(&d, REPLY_ACK, VERSION_1 | BIT30);
    fe.set_vring_base(0, 65535, true).unwrap();
    assert_nack(fe.set_vring_base(0, 65536, true));
}

// ---- R8: memory table ----

fn region(gpa: u64, size: u64, user: u64, offset: u64) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion::new(gpa, size, user, offset)
}

#[test]
fn r8_bad_memory_tables_are_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
    let fd = mem.fd();
    let ua = mem.user_addr();
    let cases: Vec<Vec<(VhostUserMemoryRegion, i32)>> = vec![
        vec![(region(0, 0, ua, 0), fd)],                     // zero size
        vec![(region(u64::MAX - 0xfff, 0x2000, ua, 0), fd)], // wraps
        vec![
            (region(0, 0x80000, ua, 0), fd),
            (region(0x40000, 0x40000, ua + 0x80000, 0x80000), fd),
        ], // gpa overlap
        vec![
            (region(0, 0x80000, ua, 0), fd),
            (region(0x80000, 0x40000, ua + 0x40000, 0x80000), fd),
        ], // user overlap
        vec![(region(0, 2 << 20, ua, 0), fd)],               // larger than the file
    ];
    for table in &cases {
        assert_nack(fe.set_mem_table(table, true));
    }
    // Wrong fd count: two regions, one fd.
    let body = vhost_kit::payload::mem_table(
        [
            region(0, 0x1000, ua, 0),
            region(0x1000, 0x1000, ua + 0x1000, 0x1000),
        ]
        .iter(),
    );
    assert_nack(fe.request(FrontendReq::SET_MEM_TABLE, true, &body, &[fd]));
    // num_regions 0.
    assert_nack(fe.request(FrontendReq::SET_MEM_TABLE, true, &[0; 8], &[]));
    // A regular table is fine after all that.
    fe.set_mem_table(&[(region(0, 1 << 20, ua, 0), fd)], true)
        .unwrap();
    let log = d.log();
    for needle in [
        "has size 0",
        "wraps around",
        "overlap",
        "region needs",
        "1..=8 allowed",
        "carries one per memory region",
    ] {
        assert!(log.contains(needle), "no {needle:?} in log:\n{log}");
    }
    // Nine regions: refused by count (with 8 descriptors) ...
    let nine: Vec<VhostUserMemoryRegion> = (0..9)
        .map(|i| region(i * 0x1000, 0x1000, ua + i * 0x1000, i * 0x1000))
        .collect();
    let body = vhost_kit::payload::mem_table(nine.iter());
    assert_nack(fe.request(FrontendReq::SET_MEM_TABLE, true, &body, &[fd; 8]));
    d.wait_log("9 memory regions; 1..=8 allowed");
    // ... and with nine descriptors the message carries more than any message may: closed.
    let _ = fe.request(FrontendReq::SET_MEM_TABLE, true, &body, &[fd; 9]);
    assert_closed(&mut fe);
    d.wait_log("9 file descriptors attached to one message; the limit is 8");
}

#[test]
fn r8_memory_table_replaced_while_rings_run() {
    // DPDK virtio_user with --in-memory: the region grows, SET_MEM_TABLE is sent again
    // after DRIVER_OK, bracketed by SET_VRING_ENABLE 0/1.
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let guest = Guest::new();
    start_device(&mut fe, &guest);
    let maps_running = d.map_count();
    fe.set_vring_enable(0, false, true).unwrap();
    fe.set_vring_enable(1, false, true).unwrap();
    fe.set_mem_table(&[guest.region()], true).unwrap();
    fe.set_vring_enable(0, true, true).unwrap();
    fe.set_vring_enable(1, true, true).unwrap();
    // The old mapping is gone, the new one in place: same count.
    assert_eq!(d.map_count(), maps_running);
    assert!(d.rejections().is_empty(), "{:?}", d.rejections());
}

#[test]
fn r8_memory_change_that_strands_a_running_ring_is_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let guest = Guest::new();
    start_device(&mut fe, &guest);
    let other = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
    assert_nack(fe.set_mem_table(&[(other.region(), other.fd())], true));
    d.wait_log("is running and would be left outside memory");
    // The old table still serves the ring: stopping it reports its base.
    assert_eq!(fe.get_vring_base(0).unwrap(), 0);
}

#[test]
fn r8_add_and_remove_regions_with_configure_mem_slots() {
    let d = Daemon::start(&["p0"], &["--max-mem-slots", "2"]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK | MEM_SLOTS, VERSION_1 | BIT30);
    assert_eq!(fe.get_max_mem_slots().unwrap(), 2);
    let a = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
    let b = SharedMemory::new(1 << 20, HugePages::Never)
        .unwrap()
        .with_guest_phys_addr(1 << 20);
    let c = SharedMemory::new(1 << 20, HugePages::Never)
        .unwrap()
        .with_guest_phys_addr(2 << 20);
    let maps = d.map_count();
    fe.add_mem_reg(&a.region(), a.fd(), true).unwrap();
    let with_a = d.map_count();
    assert!(with_a > maps);
    fe.add_mem_reg(&b.region(), b.fd(), true).unwrap();
    let with_ab = d.map_count();
    assert!(with_ab > with_a);
    // Over the limit, and overlapping: nothing more is mapped.
    assert_nack(fe.add_mem_reg(&c.region(), c.fd(), true));
    assert_eq!(d.map_count(), with_ab);
    fe.rem_mem_reg(&b.region(), true).unwrap();
    assert_nack(fe.add_mem_reg(&a.region(), a.fd(), true));
    // Unknown region.
    assert_nack(fe.rem_mem_reg(&b.region(), true));
    fe.rem_mem_reg(&a.region(), true).unwrap();
    assert_eq!(d.map_count(), maps);
    d.wait_log("no mapped region matches");
}

#[test]
fn r8_mem_slot_requests_need_configure_mem_slots() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    let a = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
    assert_nack(fe.add_mem_reg(&a.region(), a.fd(), true));
}

#[test]
fn r8_disconnect_unmaps_memory_and_closes_fds() {
    let d = Daemon::start(&["p0"], &[]);
    let (fds, maps) = (d.fd_count(), d.map_count());
    for _ in 0..3 {
        let mut fe = d.connect("p0");
        let guest = Guest::new();
        start_device(&mut fe, &guest);
        assert!(d.map_count() > maps);
        drop(fe);
        d.wait_fds(fds);
        d.wait_maps(maps);
    }
}

#[test]
fn r8_hugetlbfs_backed_memory_maps() {
    let mem = match SharedMemory::new(4 << 20, HugePages::Require) {
        Ok(m) => m,
        Err(e) if std::env::var_os("VHOST_SWITCH_REQUIRE_HUGEPAGES").is_none() => {
            eprintln!("SKIPPED r8_hugetlbfs_backed_memory_maps: no hugepages ({e}); set VHOST_SWITCH_REQUIRE_HUGEPAGES=1 to make this a failure");
            return;
        }
        Err(e) => panic!("hugepages required but unavailable: {e}"),
    };
    assert!(mem.is_hugetlb());
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let guest = Guest::with_memory(mem);
    start_device(&mut fe, &guest);
    d.wait_log("memory table mapped port=p0 regions=1 hugetlb=1");
}

// ---- R9: config space ----

#[test]
fn r9_get_config_serves_mac_and_link_in_little_endian() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(CONFIG, false).unwrap();
    // Before SET_FEATURES: the offered VERSION_1 format.
    let space = fe.get_config(0, 10, 0).unwrap();
    assert_eq!(&space[0..6], &[0x02, 0, 0, 0, 0, 1]);
    assert_eq!(&space[6..8], &1u16.to_le_bytes());
    assert_eq!(&space[8..10], &1u16.to_le_bytes());
    // Part of it.
    assert_eq!(fe.get_config(6, 2, 0).unwrap(), 1u16.to_le_bytes());
}

#[test]
fn r9_get_config_outside_the_space_closes() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(CONFIG, false).unwrap();
    assert!(matches!(fe.get_config(20, 100, 0), Err(Error::Closed)));
    d.wait_log("outside the 24-byte config space");
}

#[test]
fn r9_config_needs_the_config_protocol_feature_and_is_read_only() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK | CONFIG, false).unwrap();
    assert_nack(fe.set_config(0, 0, &[2, 0, 0, 0, 0, 9], true));
    let mut fe2 = {
        drop(fe);
        d.connect("p0")
    };
    fe2.set_protocol_features(REPLY_ACK, false).unwrap();
    assert!(matches!(fe2.get_config(0, 6, 0), Err(Error::Closed)));
    d.wait_log("protocol feature CONFIG was not negotiated");
}

#[test]
fn r8_memory_beyond_the_port_limit_is_refused_before_mapping() {
    let d = Daemon::start(&["p0"], &["--max-guest-memory-mb", "16"]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK | MEM_SLOTS, VERSION_1 | BIT30);
    let maps = d.map_count();
    // A sparse 1 TiB memfd: populating it would exhaust the host; it is never mapped.
    // SAFETY: memfd_create returns a new descriptor or -1 (checked); File owns it.
    let huge = unsafe {
        let fd = libc::memfd_create(c"huge".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    huge.set_len(1 << 40).unwrap();
    use std::os::fd::AsRawFd;
    assert_nack(fe.set_mem_table(
        &[(region(0, 1 << 40, 0x1000_0000, 0), huge.as_raw_fd())],
        true,
    ));
    // Two regions under the limit each but over it together.
    let a = SharedMemory::new(12 << 20, HugePages::Never).unwrap();
    let b = SharedMemory::new(12 << 20, HugePages::Never)
        .unwrap()
        .with_guest_phys_addr(1 << 30);
    assert_eq!(d.map_count(), maps, "the refused table was mapped");
    fe.add_mem_reg(&a.region(), a.fd(), true).unwrap();
    let with_a = d.map_count();
    assert_nack(fe.add_mem_reg(&b.region(), b.fd(), true));
    assert_eq!(d.map_count(), with_a, "the refused region was mapped");
    d.wait_log("exceed this port's limit of 16777216");
}
