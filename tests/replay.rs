//! Replays of the message sequences QEMU 7.2 and DPDK 22.11 really send (DESIGN §4 rule 10;
//! recorded in docs/protocol-compliance.md): every one must pass without a single
//! rejected message.

mod common;

use common::*;
use vhost::vhost_user::VhostUserProtocolFeatures as Proto;
use vhost_kit::memory::{HugePages, SharedMemory};
use vhost_kit::sequences::{self, DpdkOptions, QemuOptions};
use vhost_kit::vring::Ring;

fn rings(mem: &SharedMemory, base: u32) -> Vec<Ring> {
    let mut rings = Ring::layout(mem, 0x10000, QUEUE_SIZE, 2).unwrap();
    for r in &mut rings {
        r.base = base;
    }
    rings
}

fn assert_no_rejection(d: &Daemon) {
    let rejected = d.rejections();
    assert!(
        rejected.is_empty(),
        "rejected messages:\n{}",
        rejected.join("\n")
    );
    assert!(!d.log().contains("FEATURES_OK refused"), "{}", d.log());
}

#[test]
fn replay_qemu_7_2_start_and_stop() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let mem = SharedMemory::new(4 << 20, HugePages::Never).unwrap();
    let rings = rings(&mem, 0);
    let n = sequences::qemu_7_2(&mut fe, &[&mem], &rings, &QemuOptions::default()).unwrap();
    // QEMU acks CONFIGURE_MEM_SLOTS when offered and then maps memory with ADD_MEM_REG.
    assert!(n.has_protocol(Proto::CONFIGURE_MEM_SLOTS));
    assert!(n.reply_ack());
    assert_eq!(n.queue_num, Some(1));
    d.wait_log("ring started port=p0 ring=1");
    assert_eq!(sequences::qemu_7_2_stop(&mut fe, &n).unwrap(), vec![0, 0]);
    d.wait_log("ring stopped port=p0 ring=1");
    assert_no_rejection(&d);
}

#[test]
fn replay_qemu_7_2_with_set_mem_table_and_probing_enables() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let mem = SharedMemory::new(4 << 20, HugePages::Never).unwrap();
    let rings = rings(&mem, 0);
    let opts = QemuOptions {
        protocol_features: sequences::QEMU_PROTOCOL_FEATURES & !Proto::CONFIGURE_MEM_SLOTS.bits(),
        early_enable_rounds: 3,
        ..QemuOptions::default()
    };
    let n = sequences::qemu_7_2(&mut fe, &[&mem], &rings, &opts).unwrap();
    d.wait_log("memory table mapped port=p0 regions=1");
    // Rings enabled before SET_FEATURES stay enabled when they start.
    d.wait_log("ring started port=p0 ring=0 size=256 base=0 enabled=true");
    sequences::qemu_7_2_stop(&mut fe, &n).unwrap();
    assert_no_rejection(&d);
}

/// QEMU 7.2 with `host_mtu=9000` on a port with `mtu = 9000`, as recorded in
/// docs/interop.md: NET_SET_MTU (NEED_REPLY) before SET_FEATURES, F_MTU acked; then
/// `announce_self`: SEND_RARP per round without NEED_REPLY.
#[test]
fn replay_qemu_7_2_with_host_mtu_and_announce_self() {
    let d = Daemon::start(&["p0", "p1"], &["--mtu", "9000"]);
    let mut fe = d.connect("p0");
    let mem = SharedMemory::new(4 << 20, HugePages::Never).unwrap();
    let rings = rings(&mem, 0);
    let opts = QemuOptions {
        early_enable_rounds: 4,
        host_mtu: Some(9000),
        ..QemuOptions::default()
    };
    let n = sequences::qemu_7_2(&mut fe, &[&mem], &rings, &opts).unwrap();
    assert!(n.has_protocol(Proto::MTU) && n.has_protocol(Proto::RARP));
    assert_ne!(n.acked_features & sequences::bits::NET_F_MTU, 0);
    d.wait_log("guest MTU set by NET_SET_MTU port=p0 mtu=9000");
    let mac = [0x52, 0x54, 0, 0, 0, 1];
    assert_eq!(
        sequences::qemu_7_2_announce(&mut fe, &n, mac, 5).unwrap(),
        5
    );
    d.wait_log_count(
        "RARP announcement sent port=p0 mac=52:54:00:00:00:01 ports=1",
        5,
    );
    sequences::qemu_7_2_stop(&mut fe, &n).unwrap();
    assert_no_rejection(&d);
}

#[test]
fn replay_qemu_reconnect_resumes_at_the_used_index() {
    // QEMU with reconnect=1 replays the handshake with a non-zero SET_VRING_BASE.
    let d = Daemon::start(&["p0"], &[]);
    let mem = SharedMemory::new(4 << 20, HugePages::Never).unwrap();
    {
        let mut fe = d.connect("p0");
        let rings = rings(&mem, 0);
        sequences::qemu_7_2(&mut fe, &[&mem], &rings, &QemuOptions::default()).unwrap();
    }
    let mut fe = d.connect("p0");
    let rings = rings(&mem, 4660);
    let n = sequences::qemu_7_2(&mut fe, &[&mem], &rings, &QemuOptions::default()).unwrap();
    d.wait_log("ring started port=p0 ring=0 size=256 base=4660");
    assert_eq!(
        sequences::qemu_7_2_stop(&mut fe, &n).unwrap(),
        vec![4660, 4660]
    );
    assert_no_rejection(&d);
}

#[test]
fn replay_dpdk_22_11_start_growth_and_stop() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let mem = SharedMemory::new(4 << 20, HugePages::Never).unwrap();
    let rings = rings(&mem, 0);
    let n = sequences::dpdk_22_11(&mut fe, &[&mem], &rings, &DpdkOptions::default()).unwrap();
    assert!(n.has_protocol(Proto::STATUS));
    assert!(
        n.status_seen
            .iter()
            .all(|s| s & u64::from(FEATURES_OK) != 0),
        "{:?}",
        n.status_seen
    );
    // The --in-memory heap grows 3-5 times after DRIVER_OK.
    for _ in 0..4 {
        sequences::dpdk_memory_growth(&mut fe, &n, &[&mem]).unwrap();
    }
    assert_eq!(sequences::dpdk_22_11_stop(&mut fe, &n).unwrap(), vec![0, 0]);
    assert_no_rejection(&d);
}

#[test]
fn replay_qemu_and_dpdk_on_two_ports_at_once() {
    let d = Daemon::start(&["vm", "dpdk"], &[]);
    let mut qemu = d.connect("vm");
    let mut dpdk = d.connect("dpdk");
    let (m0, m1) = (
        SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
        SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
    );
    let (r0, r1) = (rings(&m0, 0), rings(&m1, 0));
    let nq = sequences::qemu_7_2(&mut qemu, &[&m0], &r0, &QemuOptions::default()).unwrap();
    let nd = sequences::dpdk_22_11(&mut dpdk, &[&m1], &r1, &DpdkOptions::default()).unwrap();
    sequences::qemu_7_2_stop(&mut qemu, &nq).unwrap();
    sequences::dpdk_22_11_stop(&mut dpdk, &nd).unwrap();
    assert_no_rejection(&d);
}
