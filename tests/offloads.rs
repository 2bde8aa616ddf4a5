//! Checksum and TSO offloads end to end (issue 12 item 2): `vhost-kit` guests on the real
//! daemon send frames with virtio-net offload headers; the switch passes the header
//! through to a guest that negotiated the offload, completes the checksum or segments the
//! TSO frame for one that did not, and drops (and counts) claims the source never
//! negotiated. Checksums are verified here independently of the switch's code.

mod common;

use std::time::{Duration, Instant};

use common::guest::*;
use common::*;
use vhost_kit::driver::frame::local_mac;
use vhost_kit::driver::split::Seg;
use vhost_kit::memory::SharedMemory;

const WAIT: Duration = Duration::from_secs(5);
const NEEDS_CSUM: u8 = 1;
const DATA_VALID: u8 = 2;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// A virtio-net header (12-byte form, num_buffers 0).
fn vnet(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

/// RFC 1071 the plain way: big-endian words, an odd last byte padded, folded.
fn sum(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for c in data.chunks(2) {
        s += u64::from(c[0]) << 8 | c.get(1).map_or(0, |&b| u64::from(b));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header (RFC 793 / RFC 8200 §8.1) of an L4 segment of `len` bytes.
fn pseudo(frame: &[u8], l3: usize, v6: bool, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&frame[l3 + 8..l3 + 40]);
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&frame[l3 + 12..l3 + 20]);
        p.extend_from_slice(&[0, proto, (len >> 8) as u8, len as u8]);
    }
    p
}

/// True when the L4 checksum of `frame` (from `l4` to the end) verifies.
fn l4_verifies(frame: &[u8], l3: usize, l4: usize, v6: bool, proto: u8) -> bool {
    let mut all = pseudo(frame, l3, v6, proto, frame.len() - l4);
    all.extend_from_slice(&frame[l4..]);
    sum(&all) == 0xffff
}

/// Ethernet + IPv4 (id 0x1234, header checksum set) + TCP (seq, PSH|FIN|CWR|ACK) +
/// `payload` bytes, the TCP checksum field seeded with the pseudo-header sum as a guest
/// with NEEDS_CSUM leaves it.
fn tcp4(src: [u8; 6], dst: [u8; 6], payload: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 54 + payload];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((40 + payload).min(0xffff) as u16).to_be_bytes());
    f[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    let ip = !sum(&f[14..34]);
    f[24..26].copy_from_slice(&ip.to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f[42..46].copy_from_slice(&7u32.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = TCP_PSH | TCP_FIN | TCP_CWR | TCP_ACK;
    f[48..50].copy_from_slice(&64240u16.to_be_bytes());
    for (i, x) in f[54..].iter_mut().enumerate() {
        *x = (i * 31 + 7) as u8;
    }
    let seed = sum(&pseudo(&f, 14, false, 6, 20 + payload));
    f[50..52].copy_from_slice(&seed.to_be_bytes());
    f
}

/// Ethernet + IPv6 + `l4` header of `l4_len` bytes (UDP: 8, TCP: 20) + `payload` bytes,
/// the L4 checksum seeded with the pseudo-header sum.
fn ip6(src: [u8; 6], dst: [u8; 6], proto: u8, payload: usize) -> Vec<u8> {
    let l4_len = if proto == 17 { 8 } else { 20 };
    let mut f = vec![0u8; 54 + l4_len + payload];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&((l4_len + payload) as u16).to_be_bytes());
    f[20] = proto;
    f[21] = 64;
    for i in 0..32 {
        f[22 + i] = if i < 16 { 0xfd } else { 0xfe } ^ i as u8;
    }
    f[54..56].copy_from_slice(&1234u16.to_be_bytes());
    f[56..58].copy_from_slice(&4321u16.to_be_bytes());
    let csum_at = if proto == 17 {
        f[58..60].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        60
    } else {
        f[58..62].copy_from_slice(&0xfffff000u32.to_be_bytes());
        f[66] = 5 << 4;
        f[67] = TCP_ACK | TCP_PSH;
        70
    };
    for (i, x) in f[54 + l4_len..].iter_mut().enumerate() {
        *x = (i % 253) as u8;
    }
    let seed = sum(&pseudo(&f, 14, true, proto, l4_len + payload));
    f[csum_at..csum_at + 2].copy_from_slice(&seed.to_be_bytes());
    f
}

/// Queues frames with their own net headers on `vm`'s TX ring, each in one descriptor in
/// guest memory above the driver's pool, and waits until the switch took them.
fn send_raw(vm: &mut Vm<'_>, mem: &SharedMemory, frames: &[([u8; 12], Vec<u8>)]) {
    let hdr = vm.drv.hdr_len();
    let mut at = 8u64 << 20;
    {
        let q = vm.drv.tx_queue_mut().as_split_mut().unwrap();
        for (h, f) in frames {
            mem.write(at, &h[..hdr]).unwrap();
            mem.write(at + hdr as u64, f).unwrap();
            q.add_chain(&[Seg::readable(at, (hdr + f.len()) as u32)])
                .unwrap();
            at += (hdr + f.len()).next_multiple_of(4096) as u64;
            assert!(at < 16 << 20, "raw frames do not fit the guest memory");
        }
        q.publish();
    }
    vm.wait_tx_done();
}

/// Receives `n` frames with their net headers (or what arrived within `wait`).
fn recv_with_headers(vm: &mut Vm<'_>, n: usize, wait: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    while got.len() < n && Instant::now() < deadline {
        let k = vm
            .drv
            .recv_with_header(|h, f| got.push((h.to_vec(), f.to_vec())))
            .unwrap();
        if k == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
        let _ = vm.drv.fill_rx();
    }
    got
}

fn ring_counter(d: &Daemon, port: &str, ring: usize, name: &str) -> u64 {
    port_stats(d, port)["rings"][ring][name]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn offload_headers_pass_through_between_guests_that_negotiated_them() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES | OFFLOADS, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES | OFFLOADS, 2048, local_mac(2));
    let csum = tcp4(a.mac, b.mac, 1000, 1);
    let tso = tcp4(a.mac, b.mac, 65_000, 100);
    let tso6 = ip6(a.mac, b.mac, 6, 20_000);
    let sent = [
        // DATA_VALID is a device-to-driver flag: it is not passed on.
        (vnet(NEEDS_CSUM | DATA_VALID, 0, 0, 0, 34, 16), csum),
        (vnet(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 54, 1448, 34, 16), tso),
        (vnet(NEEDS_CSUM, GSO_TCPV6, 74, 1428, 54, 16), tso6),
    ];
    send_raw(&mut a, &m0, &sent);
    let got = recv_with_headers(&mut b, 3, WAIT);
    assert_eq!(got.len(), 3);
    for ((h, f), (sh, sf)) in got.iter().zip(&sent) {
        assert_eq!(f, sf, "the frame moves unchanged");
        let mut want = *sh;
        want[0] &= NEEDS_CSUM;
        assert_eq!(
            h[..10],
            want[..10],
            "the header moves unchanged but DATA_VALID"
        );
        // 64 KiB into 2 KiB buffers: num_buffers says how many.
        let bufs = u16::from_le_bytes([h[10], h[11]]) as usize;
        assert_eq!(bufs, (12 + f.len()).div_ceil(2048));
    }
    assert_eq!(ring_counter(&d, "p1", 0, "segmented"), 0);
    assert_eq!(ring_counter(&d, "p1", 0, "csum_completed"), 0);
    assert_eq!(ring_counter(&d, "p1", 0, "packets"), 3);
    assert_conservation(&d);
}

#[test]
fn partial_checksums_are_completed_for_a_guest_without_guest_csum() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES | CSUM, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let sent = [
        (
            vnet(NEEDS_CSUM, 0, 0, 0, 34, 16),
            tcp4(a.mac, b.mac, 1400, 9),
        ),
        // Odd length, across two RX buffers.
        (
            vnet(NEEDS_CSUM, 0, 0, 0, 34, 16),
            tcp4(a.mac, b.mac, 3001, 10),
        ),
        (vnet(NEEDS_CSUM, 0, 0, 0, 54, 6), ip6(a.mac, b.mac, 17, 999)),
        (vnet(NEEDS_CSUM, 0, 0, 0, 54, 16), ip6(a.mac, b.mac, 6, 100)),
    ];
    send_raw(&mut a, &m0, &sent);
    let got = recv_with_headers(&mut b, 4, WAIT);
    assert_eq!(got.len(), 4);
    for (i, ((h, f), (_, sf))) in got.iter().zip(&sent).enumerate() {
        assert_eq!(h[..10], [0; 10], "a plain header");
        assert_eq!(f.len(), sf.len());
        let (v6, proto) = [(false, 6), (false, 6), (true, 17), (true, 6)][i];
        let l4 = if v6 { 54 } else { 34 };
        assert!(l4_verifies(f, 14, l4, v6, proto), "frame {i} checksum");
        // Nothing but the checksum changed.
        let at = l4 + if proto == 17 { 6 } else { 16 };
        assert_eq!(f[..at], sf[..at]);
        assert_eq!(f[at + 2..], sf[at + 2..]);
    }
    assert_eq!(ring_counter(&d, "p1", 0, "csum_completed"), 4);
    assert_conservation(&d);
}

/// Checks the segments of a TCP/IPv4 TSO frame `sent` (payload from byte 54) cut at `mss`.
fn check_tcp4_segments(segs: &[(Vec<u8>, Vec<u8>)], sent: &[u8], mss: usize) {
    let payload = sent.len() - 54;
    assert_eq!(segs.len(), payload.div_ceil(mss));
    let mut joined = Vec::new();
    for (i, (h, s)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        assert_eq!(h[..10], [0; 10], "segment {i}: a plain header");
        let len = if last { payload - i * mss } else { mss };
        assert_eq!(s.len(), 54 + len, "segment {i} length");
        assert_eq!(s[..14], sent[..14]);
        assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, 40 + len);
        assert_eq!(
            u16::from_be_bytes([s[18], s[19]]),
            0x1234 + i as u16,
            "IP id"
        );
        assert_eq!(sum(&s[14..34]), 0xffff, "segment {i}: IP header checksum");
        let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(seq, 100 + (i * mss) as u32, "segment {i}: sequence");
        let flags = s[47];
        assert_eq!(
            flags & (TCP_FIN | TCP_PSH) != 0,
            last,
            "segment {i}: FIN/PSH"
        );
        assert_eq!(flags & TCP_CWR != 0, i == 0, "segment {i}: CWR");
        assert_ne!(flags & TCP_ACK, 0);
        assert!(
            l4_verifies(s, 14, 34, false, 6),
            "segment {i}: TCP checksum"
        );
        joined.extend_from_slice(&s[54..]);
    }
    assert_eq!(joined, sent[54..], "the payload, in order");
}

#[test]
fn a_64k_tso_frame_is_segmented_for_a_guest_without_tso() {
    let d = Daemon::start(&["p0", "p1", "p2"], &[]);
    let (m0, m1, m2) = (memory(), memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES | OFFLOADS, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    // p2 takes partial checksums but not TSO: segments, checksums complete.
    let mut c = attach(
        &d,
        "p2",
        &m2,
        GUEST_FEATURES | GUEST_CSUM,
        2048,
        local_mac(3),
    );
    // The switch learns where b and c are.
    for g in [&mut b, &mut c] {
        g.send_all(&frames(1, 64, a.mac, g.mac, 0));
    }
    assert_eq!(a.recv_n(2, WAIT).len(), 2);
    // a's MAC was unknown: each of those was flooded to the other guest too.
    assert_eq!(b.recv_n(1, WAIT).len(), 1);
    assert_eq!(c.recv_n(1, WAIT).len(), 1);
    for (dst, port) in [(&mut b, "p1"), (&mut c, "p2")] {
        let tso = tcp4(a.mac, dst.mac, 65_000, 100);
        let sent = [(
            vnet(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 54, 1448, 34, 16),
            tso.clone(),
        )];
        send_raw(&mut a, &m0, &sent);
        let segs = recv_with_headers(dst, 45, WAIT);
        check_tcp4_segments(&segs, &tso, 1448);
        assert_eq!(ring_counter(&d, port, 0, "segmented"), 1);
        // The TSO frame counts once, delivered (after the flooded 64-byte one).
        assert_eq!(ring_counter(&d, port, 0, "packets"), 2);
    }
    // TSO over IPv6 with a segment size that does not divide the payload.
    let tso6 = ip6(a.mac, b.mac, 6, 9_001);
    send_raw(
        &mut a,
        &m0,
        &[(vnet(NEEDS_CSUM, GSO_TCPV6, 74, 1000, 54, 16), tso6.clone())],
    );
    let segs = recv_with_headers(&mut b, 10, WAIT);
    assert_eq!(segs.len(), 10);
    let mut joined = Vec::new();
    for (i, (_, s)) in segs.iter().enumerate() {
        let len = s.len() - 74;
        assert_eq!(len, if i < 9 { 1000 } else { 1 });
        assert_eq!(u16::from_be_bytes([s[18], s[19]]) as usize, 20 + len);
        let seq = u32::from_be_bytes([s[58], s[59], s[60], s[61]]);
        assert_eq!(seq, 0xfffff000u32.wrapping_add(1000 * i as u32));
        assert!(l4_verifies(s, 14, 54, true, 6), "segment {i}: TCP checksum");
        joined.extend_from_slice(&s[74..]);
    }
    assert_eq!(joined, tso6[74..]);
    assert_eq!(ring_counter(&d, "p1", 0, "segmented"), 2);
    assert_conservation(&d);
}

#[test]
fn offload_claims_the_source_never_negotiated_or_cannot_honour_are_dropped_and_counted() {
    let mut d = Daemon::start(&["p0", "p1", "p2", "p3"], &["--mode", "xconnect"]);
    let mems: Vec<_> = (0..4).map(|_| memory()).collect();
    // p0 -> p1: no offload negotiated; p2 -> p3: CSUM only, then everything.
    let mut a = attach(&d, "p0", &mems[0], GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(
        &d,
        "p1",
        &mems[1],
        GUEST_FEATURES | OFFLOADS,
        2048,
        local_mac(2),
    );
    let mut c = attach(
        &d,
        "p2",
        &mems[2],
        GUEST_FEATURES | CSUM,
        2048,
        local_mac(3),
    );
    let mut e = attach(&d, "p3", &mems[3], GUEST_FEATURES, 2048, local_mac(4));
    let (am, bm, cm, em) = (a.mac, b.mac, c.mac, e.mac);
    let csum = vnet(NEEDS_CSUM, 0, 0, 0, 34, 16);
    let tso4 = vnet(NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16);
    send_raw(
        &mut a,
        &mems[0],
        &[(csum, tcp4(am, bm, 100, 1)), (tso4, tcp4(am, bm, 5000, 1))],
    );
    send_raw(
        &mut c,
        &mems[2],
        &[
            (tso4, tcp4(cm, em, 5000, 1)),
            (
                vnet(NEEDS_CSUM, GSO_TCPV6, 74, 1448, 54, 16),
                ip6(cm, em, 6, 5000),
            ),
            (vnet(NEEDS_CSUM, 3, 42, 1400, 34, 6), tcp4(cm, em, 5000, 1)),
            // Checksum field beyond the frame: bad, whatever was negotiated.
            (vnet(NEEDS_CSUM, 0, 0, 0, 150, 16), tcp4(cm, em, 100, 1)),
        ],
    );
    assert_eq!(drops(&d, "p0", 1, "offload_not_negotiated"), 2);
    assert_eq!(drops(&d, "p2", 1, "offload_not_negotiated"), 3);
    assert_eq!(drops(&d, "p2", 1, "bad_offload"), 1);
    assert!(recv_with_headers(&mut b, 1, Duration::from_millis(300)).is_empty());
    assert!(recv_with_headers(&mut e, 1, Duration::from_millis(300)).is_empty());
    // A source with every offload: headers that cannot be segmented for p0 (no TSO).
    drop(c);
    let m4 = memory();
    let mut c = attach(&d, "p2", &m4, GUEST_FEATURES | OFFLOADS, 2048, local_mac(3));
    let bad_before = drops(&d, "p2", 1, "bad_offload");
    let mut udp = tcp4(cm, em, 3000, 1);
    udp[23] = 17;
    let mut ihl = tcp4(cm, em, 3000, 1);
    ihl[14] = 0x44;
    let truncated = tcp4(cm, em, 0, 1)[..40].to_vec();
    send_raw(
        &mut c,
        &m4,
        &[
            (
                vnet(NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16),
                tcp4(cm, em, 3000, 1),
            ),
            (tso4, udp),
            (tso4, ihl),
            (vnet(NEEDS_CSUM, GSO_TCPV4, 54, 1448, 14, 16), truncated),
            (
                vnet(NEEDS_CSUM, GSO_TCPV4, 54, 1, 34, 16),
                tcp4(cm, em, 3000, 1),
            ),
            (vnet(0, GSO_TCPV4, 54, 1448, 0, 0), tcp4(cm, em, 3000, 1)),
        ],
    );
    assert_eq!(drops(&d, "p2", 1, "bad_offload") - bad_before, 6);
    assert!(recv_with_headers(&mut e, 1, Duration::from_millis(300)).is_empty());
    // Plain frames still cross both ways, and the daemon is fine.
    exchange(&mut a, &mut b, 10, 64, 0);
    exchange(&mut c, &mut e, 10, 1500, 0);
    assert!(d.alive());
    assert_conservation(&d);
}

#[test]
fn a_destination_mtu_applies_to_the_segments_of_a_tso_frame() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect", "--mtu", "1500"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES | OFFLOADS, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES | OFFLOADS, 2048, local_mac(2));
    // 54 bytes of headers + 1464 = 1518, the longest frame MTU 1500 allows (with a tag);
    // one byte more per segment is over the MTU, however long the TSO frame.
    let fits = tcp4(a.mac, b.mac, 20_000, 1);
    let over = tcp4(a.mac, b.mac, 20_000, 1);
    send_raw(
        &mut a,
        &m0,
        &[
            (vnet(NEEDS_CSUM, GSO_TCPV4, 54, 1464, 34, 16), fits.clone()),
            (vnet(NEEDS_CSUM, GSO_TCPV4, 54, 1465, 34, 16), over),
        ],
    );
    let got = recv_with_headers(&mut b, 2, Duration::from_millis(500));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1, fits,
        "passed through whole: the guest segments it"
    );
    assert_eq!(drops(&d, "p1", 0, "over_mtu"), 1);
    assert_conservation(&d);
}

#[test]
fn offloads_reach_packed_rings_and_legacy_headers() {
    let d = Daemon::start(&["p0", "p1", "p2", "p3"], &["--mode", "xconnect"]);
    let mems: Vec<_> = (0..4).map(|_| memory()).collect();
    let mut a = attach(
        &d,
        "p0",
        &mems[0],
        GUEST_FEATURES | OFFLOADS,
        2048,
        local_mac(1),
    );
    // p1: a packed ring without offloads: the TSO frame is segmented into it.
    let packed = GUEST_FEATURES | RING_PACKED | IN_ORDER;
    let mut b = attach(&d, "p1", &mems[1], packed, 2048, local_mac(2));
    let mut c = attach(
        &d,
        "p2",
        &mems[2],
        GUEST_FEATURES | OFFLOADS,
        2048,
        local_mac(3),
    );
    // p3: a legacy driver (10-byte header) that takes partial checksums.
    let legacy = BIT30 | EVENT_IDX | GUEST_CSUM;
    let mut e = attach(&d, "p3", &mems[3], legacy, 2048, local_mac(4));
    assert_eq!(e.drv.hdr_len(), 10);
    let tso = tcp4(a.mac, b.mac, 10_000, 100);
    let sent = [(vnet(NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16), tso.clone())];
    send_raw(&mut a, &mems[0], &sent);
    check_tcp4_segments(&recv_with_headers(&mut b, 7, WAIT), &tso, 1448);
    let csum = tcp4(c.mac, e.mac, 1000, 5);
    let h = vnet(NEEDS_CSUM, 0, 0, 0, 34, 16);
    send_raw(&mut c, &mems[2], &[(h, csum.clone())]);
    let got = recv_with_headers(&mut e, 1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0,
        h[..10],
        "the legacy header: passed through, 10 bytes"
    );
    assert_eq!(got[0].1, csum);
    assert_eq!(ring_counter(&d, "p1", 0, "segmented"), 1);
    assert_conservation(&d);
}

#[test]
fn a_frame_dropped_for_its_offload_claim_teaches_the_fdb_nothing() {
    let d = Daemon::start(&["p0", "p1"], &[]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    // p0 never negotiated CSUM: dropped before the switch sees the source MAC.
    let claim = tcp4(a.mac, b.mac, 100, 1);
    send_raw(&mut a, &m0, &[(vnet(NEEDS_CSUM, 0, 0, 0, 34, 16), claim)]);
    assert_eq!(drops(&d, "p0", 1, "offload_not_negotiated"), 1);
    let learned = d.ctl("fdb")["entries"].as_array().map_or(0, Vec::len);
    assert_eq!(learned, 0, "{}", d.ctl("fdb"));
    assert_conservation(&d);
}
