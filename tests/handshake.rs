//! DESIGN §4 rules 1-5 over a real unix socket against the real daemon.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use vhost::vhost_user::message::FrontendReq;
use vhost_kit::error::Error;

fn header(code: u32, flags: u32, size: u32) -> Vec<u8> {
    [code, flags, size]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

/// After a refused connection the port accepts a new front-end that negotiates normally.
fn port_accepts_again(d: &Daemon) {
    let mut fe = d.connect("p0");
    assert_ne!(fe.get_features().unwrap(), 0);
}

// ---- R1: framing ----

#[test]
fn r1_bad_version_closes_connection() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.conn_mut().send_raw(&header(1, 2, 0), &[]).unwrap();
    assert_closed(&mut fe);
    d.wait_log("header version 2");
    port_accepts_again(&d);
}

#[test]
fn r1_reply_flag_on_request_closes_connection() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.conn_mut().send_raw(&header(1, 1 | 4, 0), &[]).unwrap();
    assert_closed(&mut fe);
    d.wait_log("reply flag set on a request");
    port_accepts_again(&d);
}

#[test]
fn r1_oversized_payload_closes_connection() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.conn_mut().send_raw(&header(2, 1, 0x10000), &[]).unwrap();
    assert_closed(&mut fe);
    d.wait_log("exceeds the maximum");
    port_accepts_again(&d);
}

#[test]
fn r1_unknown_request_closes_connection_and_port_accepts_again() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.conn_mut().send_raw(&header(200, 1, 0), &[]).unwrap();
    assert_closed(&mut fe);
    d.wait_log("unknown request code 200");
    port_accepts_again(&d);
}

#[test]
fn r1_wrong_payload_size_is_nacked_with_reply_ack() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    // SET_VRING_NUM carries 8 bytes; send 4 with NEED_REPLY.
    assert_nack(fe.request(FrontendReq::SET_VRING_NUM, true, &[0; 4], &[]));
    // The session goes on.
    assert_ne!(fe.get_features().unwrap(), 0);
    assert!(d
        .wait_log("payload is 4 bytes, the request needs 8")
        .contains("R1 message framing"));
}

#[test]
fn r1_wrong_payload_size_without_reply_ack_closes() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.request(FrontendReq::SET_OWNER, false, &[0; 8], &[])
        .unwrap();
    assert_closed(&mut fe);
    d.wait_log("payload is 8 bytes, the request needs 0");
}

#[test]
fn r1_stray_fds_are_refused_and_closed() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    let before = d.fd_count();
    let files: Vec<_> = (0..3)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    assert_nack(fe.request(
        FrontendReq::SET_FEATURES,
        true,
        &(VERSION_1 | BIT30).to_ne_bytes(),
        &fds,
    ));
    d.wait_fds(before);
    d.wait_log("3 file descriptors attached, the request carries 0");
}

#[test]
fn r11_forty_fds_on_one_message_close_the_connection_and_leak_nothing() {
    let d = Daemon::start(&["p0"], &[]);
    let base = d.fd_count();
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    let files: Vec<_> = (0..40)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    // More than a message may carry (8): the stream is not trusted any further.
    let _ = fe.request(FrontendReq::SET_VRING_CALL, true, &0u64.to_ne_bytes(), &fds);
    assert_closed(&mut fe);
    drop(fe);
    d.wait_fds(base);
    d.wait_log("file descriptors attached to one message; the limit is 8");
}

#[test]
fn r1_half_message_stall_blocks_no_other_port() {
    let d = Daemon::start(&["p0", "p1"], &[]);
    let mut staller = d.connect("p0");
    staller
        .conn_mut()
        .send_raw(&header(2, 1, 8)[..7], &[])
        .unwrap();
    // p1 is served while p0's front-end stalls mid-header ...
    let mut other = d.connect("p1");
    negotiate(&mut other, REPLY_ACK, VERSION_1 | BIT30);
    // ... and p0 can still finish its message.
    let mut rest = header(2, 1, 8)[7..].to_vec();
    rest.extend_from_slice(&0u64.to_ne_bytes());
    staller.conn_mut().send_raw(&rest, &[]).unwrap();
    // SET_FEATURES before SET_OWNER without REPLY_ACK: refused by closing.
    assert_closed(&mut staller);
    d.wait_log("sent before SET_OWNER");
}

#[test]
fn r1_truncated_message_then_port_accepts_again() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let mut msg = header(2, 1, 8);
    msg.extend_from_slice(&[1, 2, 3]);
    fe.conn_mut().send_raw(&msg, &[]).unwrap();
    drop(fe);
    d.wait_log("connection closed after 15 bytes of a message");
    port_accepts_again(&d);
}

#[test]
fn r1_second_front_end_is_refused_while_one_is_connected() {
    let d = Daemon::start(&["p0"], &[]);
    let mut first = d.connect("p0");
    first.get_features().unwrap();
    let mut second = d.connect("p0");
    assert_closed(&mut second);
    d.wait_log("refused a second front-end");
    assert_ne!(first.get_features().unwrap(), 0);
}

#[test]
fn r1_state_changes_before_set_owner_are_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK, false).unwrap();
    assert_nack(fe.set_features(VERSION_1, true));
    assert_nack(fe.set_vring_num(0, 256, true));
    fe.set_owner(true).unwrap();
    assert_nack(fe.set_owner(true));
    fe.set_features(VERSION_1 | BIT30, true).unwrap();
}

#[test]
fn r1_unsupported_requests_are_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.reset_owner(true));
    assert_nack(fe.send_rarp([2, 0, 0, 0, 0, 1], true));
    assert_nack(fe.net_set_mtu(1500, true));
    let null = std::fs::File::open("/dev/null").unwrap();
    assert_nack(fe.set_backend_req_fd(null.as_raw_fd(), true));
    assert_nack(fe.request(
        FrontendReq::SET_LOG_BASE,
        true,
        &[0; 16],
        &[null.as_raw_fd()],
    ));
    assert_eq!(d.rejections().len(), 5);
}

// ---- R12: net device requests (NET_SET_MTU, SEND_RARP) ----

#[test]
fn r12_mtu_setting_offers_virtio_net_f_mtu_and_get_config_serves_it() {
    let plain = Daemon::start(&["p0"], &[]);
    assert_eq!(
        plain.connect("p0").get_features().unwrap() & F_MTU,
        0,
        "no mtu setting"
    );
    drop(plain);
    let d = Daemon::start(&["p0"], &["--mtu", "9000"]);
    let mut fe = d.connect("p0");
    assert_ne!(fe.get_features().unwrap() & F_MTU, 0);
    assert_ne!(fe.get_protocol_features().unwrap() & NET_MTU, 0);
    fe.set_protocol_features(REPLY_ACK | CONFIG, false).unwrap();
    // `mtu` is at offset 10 of struct virtio_net_config, little-endian (VERSION_1).
    assert_eq!(fe.get_config(10, 2, 0).unwrap(), 9000u16.to_le_bytes());
    fe.set_owner(true).unwrap();
    fe.set_features(VERSION_1 | BIT30 | F_MTU, true).unwrap();
    assert_eq!(
        fe.get_config(0, 12, 0).unwrap()[10..],
        9000u16.to_le_bytes()
    );
    assert!(d.rejections().is_empty(), "{:?}", d.rejections());
}

#[test]
fn r12_net_set_mtu_needs_the_net_mtu_protocol_feature() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.net_set_mtu(1500, true));
    d.wait_log("protocol feature MTU was not negotiated");
}

#[test]
fn r12_net_set_mtu_in_range_is_acked_outside_nacked() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    // QEMU's order: NET_SET_MTU at DRIVER_OK, before SET_FEATURES, with VIRTIO_NET_F_MTU
    // never offered (no mtu setting here): accepted all the same (R10).
    fe.get_features().unwrap();
    fe.set_protocol_features(REPLY_ACK | NET_MTU, false)
        .unwrap();
    fe.set_owner(true).unwrap();
    fe.net_set_mtu(9000, true).unwrap();
    for mtu in [68, 1500, 65_535] {
        fe.net_set_mtu(mtu, true).unwrap();
    }
    for mtu in [0, 67, 65_536, u64::MAX] {
        assert_nack(fe.net_set_mtu(mtu, true));
    }
    let log = d.wait_log("MTU 67 is outside 68..=65535 (virtio 1.2 §5.1.4.1)");
    assert!(log.contains("R12 net device requests"), "{log}");
    assert_eq!(d.rejections().len(), 4);
    // The session goes on.
    fe.set_features(VERSION_1 | BIT30, true).unwrap();
    d.wait_log("guest MTU set by NET_SET_MTU port=p0 mtu=9000");
}

#[test]
fn r12_net_set_mtu_above_the_port_setting_is_nacked() {
    let d = Daemon::start(&["p0"], &["--mtu", "1500"]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK | NET_MTU, VERSION_1 | BIT30 | F_MTU);
    assert_nack(fe.net_set_mtu(9000, true));
    d.wait_log("MTU 9000 is larger than this port's mtu setting 1500");
    fe.net_set_mtu(1500, true).unwrap();
    fe.net_set_mtu(1280, true).unwrap();
    assert_eq!(d.rejections().len(), 1);
}

#[test]
fn r12_net_set_mtu_without_reply_ack_is_silent_and_a_bad_one_closes() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(NET_MTU, false).unwrap();
    fe.set_owner(false).unwrap();
    fe.net_set_mtu(1500, false).unwrap();
    // No reply came: the next request's reply is the next thing on the socket.
    assert_ne!(fe.get_features().unwrap(), 0);
    fe.net_set_mtu(40, false).unwrap();
    assert_closed(&mut fe);
    d.wait_log("MTU 40 is outside 68..=65535");
}

#[test]
fn r12_send_rarp_needs_the_rarp_protocol_feature_and_a_unicast_mac() {
    let d = Daemon::start(&["p0", "p1"], &[]);
    let mut fe = d.connect("p0");
    assert_ne!(fe.get_protocol_features().unwrap() & RARP, 0);
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.send_rarp([2, 0, 0, 0, 0, 9], true));
    d.wait_log("protocol feature RARP was not negotiated");
    fe.set_protocol_features(REPLY_ACK | RARP, false).unwrap();
    assert_nack(fe.send_rarp([1, 0, 0x5e, 0, 0, 1], true));
    assert_nack(fe.send_rarp([0; 6], true));
    d.wait_log("SEND_RARP refused: 01:00:5e:00:00:01 cannot be a source MAC");
    fe.send_rarp([2, 0, 0, 0, 0, 9], true).unwrap();
    d.wait_log("RARP announcement sent port=p0 mac=02:00:00:00:00:09 ports=1");
    assert_eq!(d.rejections().len(), 3);
}

#[test]
fn r12_send_rarp_of_a_mac_the_port_may_not_send_from_is_nacked() {
    let dir = temp_dir("rarp-security");
    let config = dir.join("switch.toml");
    std::fs::write(
        &config,
        "[[port]]\nname = \"p0\"\nsocket = \"/unused\"\nallowed_macs = [\"02:00:00:00:00:01\"]\n",
    )
    .unwrap();
    let d = Daemon::start(&["p0", "p1"], &["--config", config.to_str().unwrap()]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK | RARP, VERSION_1 | BIT30);
    assert_nack(fe.send_rarp([2, 0, 0, 0, 0, 2], true));
    d.wait_log("02:00:00:00:00:02 is not among the port's allowed source MACs");
    assert!(d.ctl("fdb")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["mac"] != "02:00:00:00:00:02"));
    fe.send_rarp([2, 0, 0, 0, 0, 1], true).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---- R2: protocol features ----

#[test]
fn r2_bit30_and_protocol_features_always_offered() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    assert_ne!(fe.get_features().unwrap() & BIT30, 0);
    let proto = fe.get_protocol_features().unwrap();
    for bit in [MQ, REPLY_ACK, CONFIG, MEM_SLOTS, STATUS] {
        assert_ne!(proto & bit, 0, "protocol feature {bit:#x} not offered");
    }
    // LOG_SHMFD (bit 1) is not handled, so it is not offered.
    assert_eq!(proto & 2, 0);
}

#[test]
fn r2_protocol_features_legal_before_set_features_and_without_get_features() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    // A front-end that cached GET_FEATURES/GET_PROTOCOL_FEATURES across a reconnect.
    fe.set_protocol_features(REPLY_ACK | MQ, false).unwrap();
    assert_eq!(fe.get_protocol_features().unwrap() & REPLY_ACK, REPLY_ACK);
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    assert!(d.rejections().is_empty(), "{:?}", d.rejections());
}

#[test]
fn r2_unoffered_protocol_features_are_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK, false).unwrap();
    // LOG_SHMFD (bit 1) and PAGEFAULT (bit 8) are never offered.
    assert_nack(fe.set_protocol_features(REPLY_ACK | 2 | (1 << 8), true));
    d.wait_log("protocol features 0x102 were not offered");
}

#[test]
fn r2_requests_of_unnegotiated_protocol_features_are_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.set_status(1, true));
    // GET_QUEUE_NUM without MQ solicits a reply: refused by closing.
    assert!(matches!(fe.get_queue_num(), Err(Error::Closed)));
    d.wait_log("protocol feature MQ was not negotiated");
}

// ---- R3: REPLY_ACK ----

#[test]
fn r3_reply_ack_works_before_set_features_acks_bit30() {
    // The rust-vmm/vhost PR 24 bug: REPLY_ACK gated on SET_FEATURES having acked bit 30.
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.get_features().unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(REPLY_ACK, false).unwrap();
    fe.set_owner(true).unwrap();
    let region_guest = Guest::new();
    fe.set_mem_table(&[region_guest.region()], true).unwrap();
}

#[test]
fn r3_reply_ack_works_without_get_protocol_features_on_this_connection() {
    // The rust-vmm/vhost PR 290 bug: REPLY_ACK gated on GET_PROTOCOL_FEATURES.
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK, false).unwrap();
    fe.set_owner(true).unwrap();
    fe.set_features(VERSION_1 | BIT30, true).unwrap();
}

#[test]
fn r3_set_protocol_features_that_negotiates_reply_ack_answers_need_reply() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK, true).unwrap();
}

#[test]
fn r3_exactly_one_reply_per_need_reply_request() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let guest = Guest::new();
    start_device(&mut fe, &guest);
    fe.set_vring_enable(0, true, true).unwrap();
    fe.set_vring_enable(1, true, true).unwrap();
    // Nothing more is waiting on the socket: a GET now gets its own reply, not a stray ack.
    assert!(matches!(
        fe.conn_mut().recv_reply(Duration::from_millis(200)),
        Err(Error::Timeout)
    ));
    assert_eq!(fe.get_status().unwrap() as u8 & FEATURES_OK, FEATURES_OK);
}

#[test]
fn r3_no_reply_without_reply_ack() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(MQ, false).unwrap();
    // NEED_REPLY set, REPLY_ACK not negotiated: the flag means nothing.
    fe.conn_mut()
        .send(FrontendReq::SET_OWNER, 1 << 3, &[], &[])
        .unwrap();
    assert!(matches!(
        fe.conn_mut().recv_reply(Duration::from_millis(200)),
        Err(Error::Timeout)
    ));
    assert_ne!(fe.get_features().unwrap(), 0);
}

#[test]
fn r3_rejected_request_still_gets_its_nack() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.set_vring_num(0, 3, true));
    assert_nack(fe.set_vring_num(255, 256, true));
    fe.set_vring_num(0, 256, true).unwrap();
}

// ---- R4: SET_FEATURES ----

#[test]
fn r4_unoffered_features_are_refused() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    // GUEST_UFO (10) is never offered; bit 63 is unknown.
    assert_nack(fe.set_features(VERSION_1 | BIT30 | GUEST_CSUM | (1 << 10), true));
    assert_nack(fe.set_features(VERSION_1 | (1 << 63), true));
    d.wait_log("features 0x400 were not offered");
}

#[test]
fn r4_offloads_are_offered_and_their_dependencies_enforced() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    assert_eq!(fe.get_features().unwrap() & OFFLOADS, OFFLOADS);
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    let base = VERSION_1 | BIT30;
    // virtio 1.2 §5.1.3.1, each answered with a NACK and the rule in the log.
    for (acked, rule) in [
        (GUEST_TSO4, "feature bit 7 requires one of bits [1]"),
        (GUEST_TSO6, "feature bit 8 requires one of bits [1]"),
        (
            GUEST_CSUM | GUEST_ECN,
            "feature bit 9 requires one of bits [7, 8]",
        ),
        (HOST_TSO4, "feature bit 11 requires one of bits [0]"),
        (HOST_TSO6, "feature bit 12 requires one of bits [0]"),
        (
            CSUM | HOST_ECN,
            "feature bit 13 requires one of bits [11, 12]",
        ),
    ] {
        assert_nack(fe.set_features(base | acked, true));
        d.wait_log(rule);
    }
    // Every offload, and each half alone, is a valid set.
    fe.set_features(base | CSUM | HOST_TSO6 | HOST_ECN, true)
        .unwrap();
    fe.set_features(base | GUEST_CSUM | GUEST_TSO4, true)
        .unwrap();
    fe.set_features(base | OFFLOADS, true).unwrap();
}

#[test]
fn r5_offload_dependency_broken_with_status_refuses_features_ok() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.get_features().unwrap();
    fe.set_protocol_features(STATUS, false).unwrap();
    fe.set_owner(false).unwrap();
    // Without REPLY_ACK the STATUS way to refuse applies: FEATURES_OK does not stick.
    fe.set_features(VERSION_1 | BIT30 | GUEST_TSO4, false)
        .unwrap();
    fe.set_status(ACK_DRIVER | FEATURES_OK, false).unwrap();
    assert_eq!(fe.get_status().unwrap() as u8 & FEATURES_OK, 0);
    d.wait_log("FEATURES_OK refused: acked features");
    fe.set_features(VERSION_1 | BIT30 | GUEST_CSUM | GUEST_TSO4, false)
        .unwrap();
    fe.set_status(ACK_DRIVER | FEATURES_OK, false).unwrap();
    assert_ne!(fe.get_status().unwrap() as u8 & FEATURES_OK, 0);
}

#[test]
fn r4_no_offloads_setting_offers_none_and_refuses_an_ack() {
    let d = Daemon::start(&["p0"], &["--no-offloads"]);
    let mut fe = d.connect("p0");
    assert_eq!(fe.get_features().unwrap() & OFFLOADS, 0);
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.set_features(VERSION_1 | BIT30 | CSUM, true));
    d.wait_log("features 0x1 were not offered");
}

#[test]
fn r4_a_packed_ring_needs_version_1() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
    assert_nack(fe.set_features(BIT30 | RING_PACKED, true));
    d.wait_log("feature bit 34 requires one of bits [32]");
    fe.set_features(VERSION_1 | BIT30 | RING_PACKED | IN_ORDER, true)
        .unwrap();
}

#[test]
fn r4_features_cannot_change_while_rings_run_but_may_be_resent() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    let guest = Guest::new();
    start_device(&mut fe, &guest);
    let acked = VERSION_1 | BIT30 | MRG_RXBUF | EVENT_IDX;
    fe.set_features(acked, true).unwrap();
    assert_nack(fe.set_features(VERSION_1 | BIT30, true));
    d.wait_log("features are final (rings are running)");
}

#[test]
fn r4_set_features_never_disables_rings() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK, false).unwrap();
    fe.set_owner(true).unwrap();
    fe.set_vring_enable(0, true, true).unwrap();
    fe.set_features(VERSION_1 | BIT30, true).unwrap();
    let guest = Guest::new();
    fe.set_mem_table(&[guest.region()], true).unwrap();
    fe.setup_vring(0, &guest.rings[0], 0, 0, None, None, true)
        .unwrap();
    d.wait_log("ring started port=p0 ring=0 size=256 base=0 enabled=true");
}

/// A packed ring's SET_VRING_BASE is a position below the ring size with the wrap
/// counter in bit 15; GET_VRING_BASE gives back the avail position and wrap counter, and
/// the used ones in bits 16-31 (what QEMU reads).
#[test]
fn r7_packed_ring_base_is_a_position_and_a_wrap_counter() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30 | RING_PACKED);
    let guest = Guest::new();
    fe.set_mem_table(&[guest.region()], true).unwrap();
    let beyond = 0x8000 | u32::from(QUEUE_SIZE);
    assert_nack(fe.setup_vring(0, &guest.rings[0], beyond, 0, None, None, true));
    d.wait_log("a packed ring's position must be below its size");
    // A device stopped at position 5 of the first round used descriptors 0-4: their
    // flags say so (the switch checks a packed base against the ring's USED bits).
    let used = (1u16 << 7 | 1 << 15).to_le_bytes();
    for pos in 0..5u64 {
        let at = guest.rings[1].desc_offset() + 16 * pos + 14;
        guest.mem.write(at, &used).unwrap();
    }
    fe.setup_vring(1, &guest.rings[1], 0x8005, 0, None, None, true)
        .unwrap();
    assert_eq!(fe.get_vring_base(1).unwrap(), 0x8005_8005);
    // Stopped, it reports the same again and restarts where it stopped.
    assert_eq!(fe.get_vring_base(1).unwrap(), 0x8005_8005);
    fe.setup_vring(1, &guest.rings[1], 0x8005_8005, 0, None, None, true)
        .unwrap();
    d.wait_log("ring started port=p0 ring=1 size=256 base=2147844101");
}

// ---- R5: FEATURES_OK ----

#[test]
fn r5_features_ok_refused_without_set_features() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK | STATUS, false).unwrap();
    fe.set_owner(true).unwrap();
    fe.set_status(ACK_DRIVER | FEATURES_OK, true).unwrap();
    let status = fe.get_status().unwrap() as u8;
    assert_eq!(status & FEATURES_OK, 0, "FEATURES_OK must be refused");
    assert_eq!(status, ACK_DRIVER);
    d.wait_log("FEATURES_OK refused: no SET_FEATURES before FEATURES_OK");
}

#[test]
fn r5_features_ok_kept_for_valid_features_and_features_final_after_it() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK | STATUS, VERSION_1 | BIT30 | MRG_RXBUF);
    fe.set_status(ACK_DRIVER | FEATURES_OK, true).unwrap();
    assert_eq!(fe.get_status().unwrap() as u8, ACK_DRIVER | FEATURES_OK);
    assert_nack(fe.set_features(VERSION_1 | BIT30, true));
    d.wait_log("features are final (FEATURES_OK is set)");
    // A device reset (status 0) reopens negotiation.
    fe.set_status(0, true).unwrap();
    fe.set_features(VERSION_1 | BIT30, true).unwrap();
}

#[test]
fn r5_ring_cannot_start_before_set_features() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    fe.set_protocol_features(REPLY_ACK, false).unwrap();
    fe.set_owner(true).unwrap();
    let guest = Guest::new();
    fe.set_mem_table(&[guest.region()], true).unwrap();
    fe.set_vring_num(0, 256, true).unwrap();
    fe.set_vring_addr(&guest.rings[0].addr(0, 0), true).unwrap();
    assert_nack(fe.set_vring_kick(0, None, true));
    d.wait_log("SET_FEATURES has not been sent");
}

#[test]
fn r5_status_must_be_a_byte() {
    let d = Daemon::start(&["p0"], &[]);
    let mut fe = d.connect("p0");
    negotiate(&mut fe, REPLY_ACK | STATUS, VERSION_1 | BIT30);
    assert_nack(fe.request(FrontendReq::SET_STATUS, true, &0x100u64.to_ne_bytes(), &[]));
}
