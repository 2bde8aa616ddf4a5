//! The data plane end to end: the real daemon forwards frames between `vhost-kit` driver
//! guests over real vhost-user sockets (DESIGN §5, §6).

mod common;

use std::time::Duration;

use common::guest::*;
use common::*;
use vhost_kit::driver::frame::{self, local_mac, BROADCAST};
use vhost_kit::driver::net::{NetOptions, TxLayout};
use vhost_kit::driver::split::{Desc, Seg, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn frames_of_64_and_1500_bytes_cross_intact_both_ways() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    for len in [64, 1500] {
        exchange(&mut a, &mut b, 1000, len, 0);
        exchange(&mut b, &mut a, 1000, len, 5000);
    }
    a.wait_tx_done();
    b.wait_tx_done();
    assert_conservation(&d);
    let p1 = port_stats(&d, "p1");
    assert_eq!(p1["tx_packets"], 2000);
    assert_eq!(p1["tx_bytes"], 1000 * 64 + 1000 * 1500);
}

/// The PMD's naps so far, from `ctl stats`.
fn naps(d: &Daemon) -> u64 {
    d.ctl("stats")["pmds"][0]["naps"].as_u64().unwrap()
}

#[test]
fn an_idle_pmd_naps_and_traffic_after_a_lull_loses_nothing() {
    let d = Daemon::start(
        &["p0", "p1"],
        &["--mode", "xconnect", "--pmd-sleep-max-us", "500"],
    );
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    for round in 0..3u32 {
        // A lull: the PMD must start napping (bounded wait, no time asserted).
        let before = naps(&d);
        let deadline = std::time::Instant::now() + WAIT;
        while naps(&d) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the idle PMD never napped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        exchange(&mut a, &mut b, 500, 64, u64::from(round) * 2000);
        exchange(&mut b, &mut a, 500, 1500, u64::from(round) * 2000 + 1000);
    }
    a.wait_tx_done();
    b.wait_tx_done();
    assert_conservation(&d);
    assert_eq!(port_stats(&d, "p1")["tx_packets"], 1500);
}

#[test]
fn without_the_setting_a_pmd_never_naps() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    exchange(&mut a, &mut b, 100, 64, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(naps(&d), 0);
}

#[test]
fn jumbo_frames_span_several_rx_buffers_with_mrg_rxbuf() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 9216, local_mac(1));
    // 9000 + 12 bytes into 2 KiB buffers: 5 buffers per frame.
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    exchange(&mut a, &mut b, 40, 9000, 0);
    assert_conservation(&d);
}

#[test]
fn jumbo_frames_without_mrg_rxbuf_are_dropped_as_too_big() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 9216, local_mac(1));
    let mut b = attach(&d, "p1", &m1, VERSION_1 | BIT30, 2048, local_mac(2));
    a.send_all(&frames(5, 9000, b.mac, a.mac, 0));
    a.wait_tx_done();
    assert!(b.recv_n(1, Duration::from_millis(300)).is_empty());
    assert_eq!(drops(&d, "p1", 0, "too_big"), 5);
    // Frames that fit still pass.
    exchange(&mut a, &mut b, 10, 1500, 100);
    assert_conservation(&d);
}

#[test]
fn frames_longer_than_the_destination_mtu_are_dropped_as_over_mtu() {
    // Both ports may carry 9000 bytes (their setting); p1's front-end then tells the
    // switch its guest has MTU 1500 (QEMU host_mtu=1500), while its rings run.
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect", "--mtu", "9000"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 9216, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 9216, local_mac(2));
    b.fe.set_protocol_features(REPLY_ACK | MQ | STATUS | NET_MTU, false)
        .unwrap();
    b.fe.net_set_mtu(1500, true).unwrap();
    assert_eq!(d.ctl("ports")["ports"][1]["guest_mtu"], 1500);
    // 1500 bytes of payload behind an Ethernet header and one VLAN tag: 1518 bytes pass,
    // one more is over the MTU.
    a.send_all(&frames(3, 1519, b.mac, a.mac, 0));
    a.wait_tx_done();
    assert!(b.recv_n(1, Duration::from_millis(300)).is_empty());
    assert_eq!(drops(&d, "p1", 0, "over_mtu"), 3);
    exchange(&mut a, &mut b, 5, 1518, 10);
    exchange(&mut a, &mut b, 5, 64, 20);
    // p0 has only its setting: 9000 + 18 bytes pass, 9019 do not.
    b.send_all(&frames(2, 9019, a.mac, b.mac, 30));
    b.wait_tx_done();
    assert!(a.recv_n(1, Duration::from_millis(300)).is_empty());
    assert_eq!(drops(&d, "p0", 0, "over_mtu"), 2);
    exchange(&mut b, &mut a, 5, 9018, 40);
    // Dropped at the destination, so the source counts them forwarded: conservation holds
    // on both sides (RX: delivered + dropped = offered).
    assert_conservation(&d);
    let p1 = port_stats(&d, "p1");
    assert_eq!(p1["tx_packets"], 10);
    assert_eq!(p1["tx_dropped"], 3);
}

/// The RARP announcement of `mac` as RFC 903 and QEMU's announce_self lay it out.
fn rarp_of(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x80, 0x35]); // EtherType RARP
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 3]); // Ethernet, IPv4, 6, 4, reverse request
    f.extend_from_slice(&mac); // sender hardware address
    f.extend_from_slice(&[0; 4]); // sender protocol address
    f.extend_from_slice(&mac); // target hardware address
    f.extend_from_slice(&[0; 4]); // target protocol address
    f.resize(60, 0);
    f
}

#[test]
fn send_rarp_announces_the_mac_to_the_other_ports_and_moves_it_in_the_fdb() {
    let d = Daemon::start(&["p0", "p1", "p2"], &[]);
    let (m0, m1, m2) = (memory(), memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    // p2: a legacy driver (10-byte net header), so both header forms get the frame.
    let mut c = attach(&d, "p2", &m2, BIT30 | EVENT_IDX, 2048, local_mac(3));
    assert_eq!(c.drv.hdr_len(), 10);
    // A guest with MAC `vm` lived behind p1: the switch learned it there.
    let vm = local_mac(9);
    b.send_all(&frames(1, 64, BROADCAST, vm, 0));
    assert_eq!(a.recv_n(1, WAIT).len(), 1);
    assert_eq!(c.recv_n(1, WAIT).len(), 1);
    let port_of = |d: &Daemon, mac: &str| {
        d.ctl("fdb")["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == mac)
            .map(|e| e["port"].as_str().unwrap().to_string())
    };
    assert_eq!(port_of(&d, "02:00:00:00:00:09").as_deref(), Some("p1"));
    // It moved to p0 (a migration): p0's front-end asks the switch to announce it.
    a.fe.set_protocol_features(REPLY_ACK | MQ | STATUS | RARP, false)
        .unwrap();
    a.fe.send_rarp(vm, true).unwrap();
    // Acked once sent: the frames are already in the other guests' rings.
    for (name, g) in [("p1", &mut b), ("p2", &mut c)] {
        let got = g.recv_n(1, WAIT);
        assert_eq!(got, vec![rarp_of(vm)], "{name}");
    }
    assert!(
        a.recv_n(1, Duration::from_millis(200)).is_empty(),
        "announced back to its own port"
    );
    assert_eq!(port_of(&d, "02:00:00:00:00:09").as_deref(), Some("p0"));
    // Unicast to the guest now reaches p0 only.
    c.send_all(&frames(1, 64, vm, c.mac, 1));
    assert_eq!(a.recv_n(1, WAIT).len(), 1);
    assert!(b.recv_n(1, Duration::from_millis(200)).is_empty());
    // Each announcement copy is counted at its destination like a delivered frame (p2
    // also got p1's broadcast).
    assert_eq!(port_stats(&d, "p1")["rings"][0]["packets"], 1);
    assert_eq!(port_stats(&d, "p2")["rings"][0]["packets"], 2);
    assert_conservation(&d);
}

#[test]
fn both_net_header_sizes_interwork() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    // p0: legacy driver, 10-byte header (no VERSION_1, no MRG_RXBUF).
    let mut a = attach(&d, "p0", &m0, BIT30 | EVENT_IDX, 2048, local_mac(1));
    // p1: 12-byte header.
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    assert_eq!(a.drv.hdr_len(), 10);
    assert_eq!(b.drv.hdr_len(), 12);
    exchange(&mut a, &mut b, 200, 64, 0);
    exchange(&mut b, &mut a, 200, 1500, 1000);
}

#[test]
fn tx_layouts_header_separate_and_indirect() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    for (i, layout) in [TxLayout::HeaderSeparate, TxLayout::Indirect]
        .into_iter()
        .enumerate()
    {
        let opts = NetOptions {
            features: GUEST_FEATURES,
            tx_layout: layout,
            ..NetOptions::default()
        };
        let mut a = attach_with(&d, "p0", &m0, opts, 2048, local_mac(1), true);
        let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
        exchange(&mut a, &mut b, 300, 1000, (i * 1000) as u64);
        drop(a);
        drop(b);
        d.wait_log_count("front-end disconnected port=p1", i + 1);
        d.wait_log_count("front-end disconnected port=p0", i + 1);
    }
}

#[test]
fn learning_bridge_floods_unknown_then_unicasts_and_fdb_shows_both() {
    let d = Daemon::start(&["p0", "p1", "p2"], &[]);
    let (m0, m1, m2) = (memory(), memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut c = attach(&d, "p2", &m2, GUEST_FEATURES, 2048, local_mac(3));
    // Unknown destination: flooded to p1 and p2, never back to p0.
    a.send_all(&frames(1, 64, b.mac, a.mac, 1));
    assert_eq!(b.recv_n(1, WAIT).len(), 1);
    assert_eq!(
        c.recv_n(1, WAIT).len(),
        1,
        "flood missed p2: {}",
        d.ctl("stats")
    );
    assert!(
        a.recv_n(1, Duration::from_millis(200)).is_empty(),
        "hairpin"
    );
    // b answers a: a was learned on p0, so only p0 gets it.
    b.send_all(&frames(1, 64, a.mac, b.mac, 2));
    assert_eq!(a.recv_n(1, WAIT).len(), 1);
    let leaked = c.recv_n(1, Duration::from_millis(200));
    assert!(
        leaked.is_empty(),
        "unicast leaked to p2: {:?} / fdb {}",
        leaked
            .iter()
            .map(|f| (&f[..12], frame::verify(f)))
            .collect::<Vec<_>>(),
        d.ctl("fdb")
    );
    // Now a to b is unicast too.
    a.send_all(&frames(5, 64, b.mac, a.mac, 3));
    assert_eq!(b.recv_n(5, WAIT).len(), 5);
    assert!(
        c.recv_n(1, Duration::from_millis(200)).is_empty(),
        "unicast leaked to p2"
    );
    // Broadcast floods to everyone else.
    c.send_all(&frames(1, 64, BROADCAST, c.mac, 9));
    assert_eq!(a.recv_n(1, WAIT).len(), 1);
    assert_eq!(b.recv_n(1, WAIT).len(), 1);
    let fdb = d.ctl("fdb");
    let entries = fdb["entries"].as_array().unwrap();
    let port_of = |mac: [u8; 6]| {
        let m = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        entries
            .iter()
            .find(|e| e["mac"] == m.as_str())
            .map(|e| e["port"].as_str().unwrap().to_string())
    };
    assert_eq!(port_of(a.mac).as_deref(), Some("p0"));
    assert_eq!(port_of(b.mac).as_deref(), Some("p1"));
    assert_eq!(port_of(c.mac).as_deref(), Some("p2"));
    assert_conservation(&d);
}

#[test]
fn fdb_entries_age_out_and_disconnect_forgets_the_port() {
    let d = Daemon::start(&["p0", "p1"], &["--fdb-aging", "1"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    a.send_all(&frames(1, 64, b.mac, a.mac, 0));
    assert_eq!(b.recv_n(1, WAIT).len(), 1);
    assert_eq!(d.ctl("fdb")["entries"].as_array().unwrap().len(), 1);
    // Not seen for longer than the ageing time: gone (the sweep runs every second).
    let deadline = std::time::Instant::now() + WAIT;
    while !d.ctl("fdb")["entries"].as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "entry never aged out");
        std::thread::sleep(Duration::from_millis(100));
    }
    b.send_all(&frames(1, 64, a.mac, b.mac, 1));
    assert_eq!(a.recv_n(1, WAIT).len(), 1);
    assert_eq!(d.ctl("fdb")["entries"].as_array().unwrap().len(), 1);
    drop(b);
    d.wait_log("front-end disconnected port=p1");
    assert!(
        d.ctl("fdb")["entries"].as_array().unwrap().is_empty(),
        "p1's MAC outlived its front-end"
    );
}

#[test]
fn xconnect_pairs_ports_in_order() {
    let d = Daemon::start(&["p0", "p1", "p2", "p3"], &["--mode", "xconnect"]);
    let mems: Vec<_> = (0..4).map(|_| memory()).collect();
    let mut g = attach_ports(&d, &mems);
    // Whatever the MACs say, p0 goes to p1 and p2 to p3.
    g[0].send_all(&frames(10, 64, BROADCAST, local_mac(1), 0));
    g[2].send_all(&frames(10, 64, local_mac(1), local_mac(3), 0));
    assert_eq!(g[1].recv_n(10, WAIT).len(), 10);
    assert_eq!(g[3].recv_n(10, WAIT).len(), 10);
    assert!(g[0].recv_n(1, Duration::from_millis(200)).is_empty());
    assert!(g[2].recv_n(1, Duration::from_millis(200)).is_empty());
    let stats = d.ctl("stats");
    let queues: Vec<String> = stats["pmds"][0]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q.as_str().unwrap().to_string())
        .collect();
    assert_eq!(queues, ["p0/ring1", "p1/ring1", "p2/ring1", "p3/ring1"]);
}

#[test]
fn disabled_rings_drop_tx_and_get_no_rx_until_enabled() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let opts = NetOptions {
        features: GUEST_FEATURES,
        ..NetOptions::default()
    };
    // Bit 30 acked and no SET_VRING_ENABLE: both rings of p0 start disabled.
    let mut a = attach_with(&d, "p0", &m0, opts, 2048, local_mac(1), false);
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    // A disabled TX ring is consumed and its packets dropped (vhost-user "Ring states").
    a.send_all(&frames(4, 64, b.mac, a.mac, 0));
    a.wait_tx_done();
    assert!(b.recv_n(1, Duration::from_millis(200)).is_empty());
    assert_eq!(drops(&d, "p0", 1, "ring_disabled"), 4);
    // A disabled RX ring gets nothing.
    b.send_all(&frames(3, 64, a.mac, b.mac, 0));
    b.wait_tx_done();
    assert!(a.recv_n(1, Duration::from_millis(200)).is_empty());
    assert_eq!(drops(&d, "p0", 0, "rx_ring_unavailable"), 3);
    a.fe.set_vring_enable(0, true, true).unwrap();
    a.fe.set_vring_enable(1, true, true).unwrap();
    exchange(&mut a, &mut b, 10, 64, 100);
    exchange(&mut b, &mut a, 10, 64, 200);
    assert_conservation(&d);
}

#[test]
fn get_vring_base_then_reconnect_resumes_at_the_right_index() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    exchange(&mut a, &mut b, 300, 64, 0);
    a.wait_tx_done();
    // Stop p0's rings as QEMU does at stop: the TX base is where the switch stopped.
    let tx_base = a.fe.get_vring_base(1).unwrap();
    let rx_base = a.fe.get_vring_base(0).unwrap();
    assert_eq!(tx_base, 300);
    assert_eq!(
        u32::from(a.drv.tx_queue().as_split().unwrap().next_avail()),
        tx_base
    );
    // Reconnect with the same guest memory and rings (QEMU reconnect=1): rings start at
    // the bases, and the driver's state carries on.
    a.fe.conn().shutdown_write().unwrap();
    d.wait_log("front-end disconnected port=p0");
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK | MQ | STATUS, GUEST_FEATURES);
    fe.set_mem_table(&[(m0.region(), m0.fd())], true).unwrap();
    start_rings(&mut fe, &a.layout, &a.kicks, &a.calls, rx_base, tx_base);
    d.wait_log(&format!(
        "ring started port=p0 ring=1 size=256 base={tx_base}"
    ));
    a.fe = fe;
    exchange(&mut a, &mut b, 300, 64, 1000);
    exchange(&mut b, &mut a, 300, 64, 2000);
}

#[test]
fn set_mem_table_during_traffic_loses_nothing() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut seq = 0;
    for round in 0..20 {
        let batch = frames(100, 128, b.mac, a.mac, seq);
        a.send_all(&batch);
        // DPDK's memory growth: the table is re-sent while rings run.
        if round % 2 == 0 {
            a.fe.set_mem_table(&[(m0.region(), m0.fd())], true).unwrap();
            b.fe.set_mem_table(&[(m1.region(), m1.fd())], true).unwrap();
        }
        let got = b.recv_n(100, WAIT);
        assert_eq!(got.len(), 100, "round {round}");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(frame::verify(f).unwrap(), seq + i as u64);
        }
        seq += 100;
    }
    assert_conservation(&d);
    assert!(d.rejections().is_empty(), "{:?}", d.rejections());
}

#[test]
fn guest_is_interrupted_only_when_it_asks_and_never_asked_to_kick() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    // Without EVENT_IDX: flags.
    let mut a = attach(
        &d,
        "p0",
        &m0,
        VERSION_1 | BIT30 | MRG_RXBUF,
        2048,
        local_mac(1),
    );
    let mut b = attach(
        &d,
        "p1",
        &m1,
        VERSION_1 | BIT30 | MRG_RXBUF,
        2048,
        local_mac(2),
    );
    // The switch polls: it asks the driver not to kick.
    assert_eq!(
        a.drv.tx_queue().as_split().unwrap().used_flags() & 1,
        1,
        "VRING_USED_F_NO_NOTIFY not set"
    );
    b.drv.rx_queue_mut().set_no_interrupt(true);
    exchange(&mut a, &mut b, 50, 64, 0);
    assert!(
        b.calls[0].read().is_err(),
        "interrupted a guest that set NO_INTERRUPT"
    );
    b.drv.rx_queue_mut().set_no_interrupt(false);
    exchange(&mut a, &mut b, 50, 64, 100);
    let n = b.calls[0]
        .read()
        .expect("no interrupt though the guest asked");
    assert!((1..=50).contains(&n), "{n} interrupts for 50 frames");
}

/// Hostile guests on the p2<->p3 pair; p0<->p1 must keep forwarding and the daemon live.
fn hostile(damage: impl FnOnce(&mut Vm<'_>), expect_drop: Option<&str>) {
    let mut d = Daemon::start(&["p0", "p1", "p2", "p3"], &["--mode", "xconnect"]);
    let mems: Vec<_> = (0..4).map(|_| memory()).collect();
    let mut g = attach_ports(&d, &mems);
    let [a, b, bad, _] = g.as_mut_slice() else {
        unreachable!("four guests")
    };
    exchange(a, b, 50, 64, 0);
    damage(bad);
    // The good pair keeps forwarding while the bad ring is refused.
    for round in 0..5 {
        exchange(a, b, 50, 256, 100 * (round + 1));
    }
    assert!(d.alive());
    if let Some(reason) = expect_drop {
        let deadline = std::time::Instant::now() + WAIT;
        while drops(&d, "p2", 1, reason) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no {reason} drop on p2: {}",
                port_stats(&d, "p2")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_conservation(&d);
    // The daemon still answers on every port.
    assert_ne!(d.connect("p2").get_features().unwrap_or(0), u64::MAX);
}

/// Queues one frame, then rewrites its descriptors with `f(head, chain)` before publishing.
fn corrupt_tx(
    guest: &mut Vm<'_>,
    f: impl FnOnce(&mut vhost_kit::driver::split::DriverQueue<'_>, u16),
) {
    let frame = make_frame(64, local_mac(4), guest.mac, 0);
    let q = guest.drv.tx_queue_mut().as_split_mut().unwrap();
    let gpa = guest.layout.pool_offset;
    let head = q
        .add_chain(&[Seg::readable(gpa, 12 + frame.len() as u32)])
        .unwrap();
    f(q, head);
    q.publish();
}

#[test]
fn hostile_descriptor_loop() {
    hostile(
        |g| {
            corrupt_tx(g, |q, head| {
                let mut d = q.raw_read_desc(head).unwrap();
                d.flags |= VIRTQ_DESC_F_NEXT;
                d.next = head;
                q.raw_write_desc(head, d).unwrap();
            })
        },
        Some("bad_descriptor"),
    );
}

#[test]
fn hostile_address_outside_memory() {
    hostile(
        |g| {
            corrupt_tx(g, |q, head| {
                let mut d = q.raw_read_desc(head).unwrap();
                d.addr = 1 << 40;
                q.raw_write_desc(head, d).unwrap();
            })
        },
        Some("bad_descriptor"),
    );
}

#[test]
fn hostile_length_0xffffffff() {
    hostile(
        |g| {
            corrupt_tx(g, |q, head| {
                let mut d = q.raw_read_desc(head).unwrap();
                d.len = u32::MAX;
                q.raw_write_desc(head, d).unwrap();
            })
        },
        Some("bad_descriptor"),
    );
}

#[test]
fn hostile_chain_longer_than_the_ring() {
    hostile(
        |g| {
            corrupt_tx(g, |q, head| {
                // Every descriptor points to the next, around the whole table and beyond.
                let size = q.queue_size();
                for i in 0..size {
                    let d = Desc {
                        addr: 0x10000,
                        len: 16,
                        flags: VIRTQ_DESC_F_NEXT,
                        next: (i + 1) % size,
                    };
                    q.raw_write_desc(i, d).unwrap();
                }
                let _ = head;
            })
        },
        Some("bad_descriptor"),
    );
}

#[test]
fn hostile_bogus_indirect_table() {
    hostile(
        |g| {
            corrupt_tx(g, |q, head| {
                // Length not a multiple of 16.
                let d = Desc {
                    addr: 0x10000,
                    len: 17,
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                };
                q.raw_write_desc(head, d).unwrap();
            })
        },
        Some("bad_descriptor"),
    );
}

#[test]
fn hostile_avail_index_jump() {
    hostile(
        |g| {
            let q = g.drv.tx_queue_mut().as_split_mut().unwrap();
            let jump = q.next_avail().wrapping_add(q.queue_size() + 7);
            q.raw_set_avail_idx(jump);
        },
        None,
    );
}

#[test]
fn add_and_remove_mem_reg_during_traffic() {
    // CONFIGURE_MEM_SLOTS front-ends (QEMU) grow memory with ADD_MEM_REG: regions come and
    // go while the rings in the first region keep running.
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let opts = NetOptions {
        features: GUEST_FEATURES,
        ..NetOptions::default()
    };
    let mut a = attach_with(&d, "p0", &m0, opts, 2048, local_mac(1), true);
    // attach negotiated without CONFIGURE_MEM_SLOTS; a later SET_PROTOCOL_FEATURES adds it.
    a.fe.set_protocol_features(REPLY_ACK | MQ | STATUS | MEM_SLOTS, true)
        .unwrap();
    let extra: Vec<vhost_kit::memory::SharedMemory> = (0..3)
        .map(|i| {
            vhost_kit::memory::SharedMemory::new(1 << 20, vhost_kit::memory::HugePages::Never)
                .unwrap()
                .with_guest_phys_addr((1 << 30) + (i << 21))
        })
        .collect();
    let mut seq = 0;
    for round in 0..12 {
        let e = &extra[round % 3];
        if round % 2 == 0 {
            a.fe.add_mem_reg(&e.region(), e.fd(), true).unwrap();
        } else {
            a.fe.rem_mem_reg(&extra[(round - 1) % 3].region(), true)
                .unwrap();
        }
        exchange(&mut a, &mut b, 64, 200, seq);
        seq += 64;
    }
    assert!(d.rejections().is_empty(), "{:?}", d.rejections());
    assert_conservation(&d);
}
