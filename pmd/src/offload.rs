//! Checksum and TCP segmentation offloads (virtio 1.2 §5.1.6.2, §5.1.6.4): what a port
//! negotiated, what a TX header may claim, what a destination gets, and the software
//! fallback for a destination that cannot take the offload (the checksum completed, a TSO
//! frame cut into MSS-sized segments).
//!
//! Everything here works on bytes the caller copied out of guest memory (headers) or
//! streams through [`Checksum`] (payloads), so it is pure and unit-testable; the fast path
//! ([`crate::forward`]) moves the bytes. Header values come from a guest: every length and
//! offset is checked before it is used, and a header that cannot be honoured is refused
//! with a [`DropReason`], never a panic.
#![forbid(unsafe_code)]

use crate::net::VirtioNetHdr;
use crate::stats::DropReason;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` is left to the device.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: device to driver only, "checksum already checked".
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: the TSO frame has CWR set (RFC 3168).
pub const GSO_ECN: u8 = 0x80;

/// The offload features of one port (a compact form of its negotiated virtio features,
/// read from the ring snapshot on the fast path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads(u8);

impl Offloads {
    /// VIRTIO_NET_F_CSUM: the guest sends partial checksums.
    pub const CSUM: Offloads = Offloads(1);
    /// VIRTIO_NET_F_HOST_TSO4: the guest sends TSO frames over IPv4.
    pub const HOST_TSO4: Offloads = Offloads(2);
    /// VIRTIO_NET_F_HOST_TSO6: the guest sends TSO frames over IPv6.
    pub const HOST_TSO6: Offloads = Offloads(4);
    /// VIRTIO_NET_F_HOST_ECN: the guest sends TSO frames with ECN (CWR).
    pub const HOST_ECN: Offloads = Offloads(8);
    /// VIRTIO_NET_F_GUEST_CSUM: the guest takes partial checksums.
    pub const GUEST_CSUM: Offloads = Offloads(16);
    /// VIRTIO_NET_F_GUEST_TSO4: the guest takes TSO frames over IPv4.
    pub const GUEST_TSO4: Offloads = Offloads(32);
    /// VIRTIO_NET_F_GUEST_TSO6: the guest takes TSO frames over IPv6.
    pub const GUEST_TSO6: Offloads = Offloads(64);
    /// VIRTIO_NET_F_GUEST_ECN: the guest takes TSO frames with ECN.
    pub const GUEST_ECN: Offloads = Offloads(128);

    /// No offload.
    pub const NONE: Offloads = Offloads(0);

    /// The offloads in a negotiated virtio feature set (bits 0, 1, 7-9, 11-13).
    pub fn from_features(f: u64) -> Self {
        const MAP: [(u32, Offloads); 8] = [
            (0, Offloads::CSUM),
            (1, Offloads::GUEST_CSUM),
            (7, Offloads::GUEST_TSO4),
            (8, Offloads::GUEST_TSO6),
            (9, Offloads::GUEST_ECN),
            (11, Offloads::HOST_TSO4),
            (12, Offloads::HOST_TSO6),
            (13, Offloads::HOST_ECN),
        ];
        let mut o = Offloads::NONE;
        for (bit, flag) in MAP {
            if f & (1u64 << bit) != 0 {
                o.0 |= flag.0;
            }
        }
        o
    }

    /// True if every offload of `other` is in `self`.
    #[inline]
    pub fn has(self, other: Offloads) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub const fn with(self, other: Offloads) -> Offloads {
        Offloads(self.0 | other.0)
    }
}

/// Checks what a TX header claims against what its source negotiated and returns the
/// header to carry on (DATA_VALID and the reserved flag bits cleared: they mean nothing
/// from a driver), or why the frame is dropped: `offload_not_negotiated` for a claim the
/// source never negotiated (NEEDS_CSUM without CSUM, a GSO type without its HOST_TSO*,
/// ECN without HOST_ECN, UDP or an unknown GSO type, which are never offered), or
/// `bad_offload` for a claim that cannot be honoured (GSO without a segment size or
/// without NEEDS_CSUM, a checksum position outside the frame).
pub fn check_claim(
    h: &VirtioNetHdr,
    src: Offloads,
    frame_len: u64,
) -> Result<VirtioNetHdr, DropReason> {
    let mut out = *h;
    out.flags &= F_NEEDS_CSUM;
    out.num_buffers = 0;
    if out.flags & F_NEEDS_CSUM != 0 {
        if !src.has(Offloads::CSUM) {
            return Err(DropReason::OffloadNotNegotiated);
        }
        // The 16-bit checksum must lie inside the frame.
        let end = u64::from(h.csum_start) + u64::from(h.csum_offset) + 2;
        if end > frame_len {
            return Err(DropReason::BadOffload);
        }
    }
    let needed = match h.gso_type & !GSO_ECN {
        GSO_NONE if h.gso_type & GSO_ECN != 0 => return Err(DropReason::BadOffload),
        // Nothing asked: the other fields mean nothing either.
        GSO_NONE if out.flags == 0 => return Ok(VirtioNetHdr::default()),
        GSO_NONE => return Ok(out),
        GSO_TCPV4 => Offloads::HOST_TSO4,
        GSO_TCPV6 => Offloads::HOST_TSO6,
        _ => return Err(DropReason::OffloadNotNegotiated),
    };
    let needed = if h.gso_type & GSO_ECN != 0 {
        needed.with(Offloads::HOST_ECN)
    } else {
        needed
    };
    if !src.has(needed) {
        return Err(DropReason::OffloadNotNegotiated);
    }
    if h.gso_size == 0 || out.flags & F_NEEDS_CSUM == 0 {
        return Err(DropReason::BadOffload);
    }
    Ok(out)
}

/// What a destination gets of a frame with a (checked) offload header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do: the header is plain.
    Plain,
    /// The destination negotiated the offload: the header passes unchanged.
    PassThrough,
    /// The destination cannot take a partial checksum: complete it, plain header.
    CompleteChecksum,
    /// The destination cannot take the TSO frame: cut it into segments.
    Segment,
}

/// The action for checked header `h` at a destination with offloads `dst`.
#[inline]
pub fn action(h: &VirtioNetHdr, dst: Offloads) -> Action {
    if h.gso_type != GSO_NONE {
        let mut needed = match h.gso_type & !GSO_ECN {
            GSO_TCPV4 => Offloads::GUEST_TSO4,
            _ => Offloads::GUEST_TSO6,
        };
        if h.gso_type & GSO_ECN != 0 {
            needed = needed.with(Offloads::GUEST_ECN);
        }
        // GUEST_TSO* requires GUEST_CSUM (§5.1.3.1), so the partial checksum goes too.
        if dst.has(needed.with(Offloads::GUEST_CSUM)) {
            Action::PassThrough
        } else {
            Action::Segment
        }
    } else if h.flags & F_NEEDS_CSUM != 0 {
        if dst.has(Offloads::GUEST_CSUM) {
            Action::PassThrough
        } else {
            Action::CompleteChecksum
        }
    } else {
        Action::Plain
    }
}

/// An Internet checksum (RFC 1071) being summed over pieces of any length: a piece that
/// ends on an odd byte leaves the next piece starting in the low half of a word.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checksum {
    sum: u64,
    odd: bool,
}

impl Checksum {
    /// Adds the bytes of `data`, continuing where the previous piece ended.
    pub fn add(&mut self, mut data: &[u8]) {
        if self.odd {
            if let Some((&b, rest)) = data.split_first() {
                self.sum += u64::from(b);
                self.odd = false;
                data = rest;
            }
        }
        let mut words = data.chunks_exact(2);
        for w in &mut words {
            self.sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [b] = words.remainder() {
            self.sum += u64::from(*b) << 8;
            self.odd = true;
        }
    }

    /// Adds a 16-bit word (big-endian value), word-aligned.
    pub fn add_u16(&mut self, v: u16) {
        self.sum += u64::from(v);
    }

    /// The folded ones' complement sum (not complemented).
    pub fn fold(&self) -> u16 {
        let mut s = self.sum;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The checksum to store: the complement of the sum, 0 sent as 0xffff (the same value
    /// in ones' complement, and UDP's "no checksum" is 0).
    pub fn finish(&self) -> u16 {
        match !self.fold() {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Longest L2-L4 header block a TSO frame may have: Ethernet, one 802.1Q tag, IPv4 with
/// options (60) or IPv6 (40), TCP with options (60).
pub const MAX_HEADERS: usize = 14 + 4 + 60 + 60;
/// Most segments one TSO frame may be cut into: a guest asking for tiny segments would
/// otherwise make the PMD write 64 Ki frames for one.
pub const MAX_SEGMENTS: u32 = 1024;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// How a TSO frame is cut: parsed from its headers (copied out of guest memory once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    /// Bytes of headers (Ethernet to the end of TCP) repeated in every segment.
    pub headers: usize,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// TCP payload bytes of the whole frame.
    pub payload: u32,
    /// Payload bytes per segment (gso_size).
    pub mss: u32,
}

impl SegmentPlan {
    /// Parses the headers of a TSO frame of `frame_len` bytes whose first bytes are
    /// `head` (at least the headers, at most [`MAX_HEADERS`]), for checked header `h`.
    /// Refuses (`bad_offload`) what cannot be segmented: a network protocol other than
    /// the GSO type's, a next header other than TCP (IPv6 extension headers included),
    /// bad header lengths, headers longer than the frame, or more than [`MAX_SEGMENTS`].
    pub fn parse(h: &VirtioNetHdr, head: &[u8], frame_len: u64) -> Result<Self, DropReason> {
        let bad = Err(DropReason::BadOffload);
        let be16 = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*head.get(at)?, *head.get(at + 1)?]))
        };
        let Some(mut ethertype) = be16(12) else {
            return bad;
        };
        let mut l3 = 14;
        if ethertype == ETHERTYPE_VLAN {
            let Some(inner) = be16(16) else { return bad };
            ethertype = inner;
            l3 = 18;
        }
        let v6 = h.gso_type & !GSO_ECN == GSO_TCPV6;
        let (l4, protocol) = match (ethertype, v6) {
            (ETHERTYPE_IPV4, false) => {
                let Some(&vihl) = head.get(l3) else {
                    return bad;
                };
                let ihl = usize::from(vihl & 0x0f) * 4;
                if vihl >> 4 != 4 || ihl < 20 {
                    return bad;
                }
                // Fragments cannot be segmented (and TSO never makes them).
                let Some(frag) = be16(l3 + 6) else { return bad };
                if frag & 0x3fff != 0 {
                    return bad;
                }
                (l3 + ihl, head.get(l3 + 9).copied())
            }
            (ETHERTYPE_IPV6, true) => {
                if head.get(l3).is_none_or(|&b| b >> 4 != 6) {
                    return bad;
                }
                (l3 + 40, head.get(l3 + 6).copied())
            }
            _ => return bad,
        };
        if protocol != Some(IPPROTO_TCP) {
            return bad;
        }
        let Some(&off) = head.get(l4 + 12) else {
            return bad;
        };
        let tcp_len = usize::from(off >> 4) * 4;
        let headers = l4 + tcp_len;
        if tcp_len < 20 || headers > head.len() || headers as u64 > frame_len {
            return bad;
        }
        let payload = frame_len - headers as u64;
        let mss = u32::from(h.gso_size);
        // IP lengths are 16 bits: one segment must fit, and the frame must be one a
        // guest can send (the source's maximum frame length already bounds it).
        let seg_ip_len = (headers - l3) as u64 + u64::from(mss);
        if mss == 0 || payload > u64::from(u32::MAX) || seg_ip_len > 0xffff {
            return bad;
        }
        let payload = payload as u32;
        let plan = SegmentPlan {
            l3,
            l4,
            headers,
            ipv6: v6,
            payload,
            mss,
        };
        if plan.segments() > MAX_SEGMENTS {
            return bad;
        }
        Ok(plan)
    }

    /// Number of segments (at least one: a TSO frame without payload is sent as is).
    pub fn segments(&self) -> u32 {
        self.payload.div_ceil(self.mss).max(1)
    }

    /// Payload bytes of segment `i`.
    pub fn segment_payload(&self, i: u32) -> u32 {
        let start = i * self.mss;
        self.mss.min(self.payload.saturating_sub(start))
    }

    /// Longest segment (bytes after the virtio-net header).
    pub fn max_segment_len(&self) -> u64 {
        self.headers as u64 + u64::from(self.mss.min(self.payload))
    }

    /// Writes the headers of segment `i` into `out[..self.headers]` from the frame's
    /// headers `head`: IP length, IPv4 id (+i) and header checksum, TCP sequence (+i·mss),
    /// FIN and PSH on the last segment only, CWR on the first only, and the TCP checksum
    /// field set to the pseudo-header sum with the TCP header summed in. Returns that
    /// partial sum: add the segment's payload and [`Checksum::finish`] it into the TCP
    /// checksum at `self.l4 + 16`.
    pub fn segment_headers(&self, head: &[u8], i: u32, out: &mut [u8]) -> Checksum {
        let (l3, l4, hl) = (self.l3, self.l4, self.headers);
        out[..hl].copy_from_slice(&head[..hl]);
        let seg_payload = self.segment_payload(i);
        let tcp_len = (hl - l4) as u32 + seg_payload;
        let last = i + 1 == self.segments();
        let mut pseudo = Checksum::default();
        if self.ipv6 {
            // Payload length: extension headers are refused, so TCP is all of it.
            out[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            pseudo.add(&out[l3 + 8..l3 + 40]);
        } else {
            let total = (l4 - l3) as u32 + tcp_len;
            out[l3 + 2..l3 + 4].copy_from_slice(&(total as u16).to_be_bytes());
            let id = u16::from_be_bytes([head[l3 + 4], head[l3 + 5]]).wrapping_add(i as u16);
            out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
            out[l3 + 10..l3 + 12].fill(0);
            let mut ip = Checksum::default();
            ip.add(&out[l3..l4]);
            out[l3 + 10..l3 + 12].copy_from_slice(&(!ip.fold()).to_be_bytes());
            pseudo.add(&out[l3 + 12..l3 + 20]);
        }
        pseudo.add_u16(u16::from(IPPROTO_TCP));
        pseudo.add_u16(tcp_len as u16);
        let seq = u32::from_be_bytes([head[l4 + 4], head[l4 + 5], head[l4 + 6], head[l4 + 7]])
            .wrapping_add(i.wrapping_mul(self.mss));
        out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = head[l4 + 13];
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            flags &= !TCP_CWR;
        }
        out[l4 + 13] = flags;
        out[l4 + 16..l4 + 18].fill(0);
        pseudo.add(&out[l4..hl]);
        pseudo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 the plain way, for reference: sum of big-endian words, odd byte padded.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for i in (0..data.len()).step_by(2) {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
            s += hi | lo;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn checksum_of_the_rfc_1071_example_and_across_odd_pieces() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let mut c = Checksum::default();
        c.add(&data);
        assert_eq!(c.fold(), 0xddf2);
        assert_eq!(c.finish(), !0xddf2);
        let long: Vec<u8> = (0..1001u32).map(|i| (i * 37 + 11) as u8).collect();
        for cut in [0, 1, 2, 3, 500, 999, 1000, 1001] {
            for cut2 in [cut, (cut + 7).min(1001)] {
                let mut c = Checksum::default();
                c.add(&long[..cut]);
                c.add(&long[cut..cut2]);
                c.add(&long[cut2..]);
                assert_eq!(c.fold(), reference_sum(&long), "cuts {cut} {cut2}");
            }
        }
    }

    #[test]
    fn offloads_follow_the_feature_bits() {
        let o = Offloads::from_features(1 | 1 << 11 | 1 << 13 | 1 << 32);
        assert!(o.has(
            Offloads::CSUM
                .with(Offloads::HOST_TSO4)
                .with(Offloads::HOST_ECN)
        ));
        assert!(!o.has(Offloads::HOST_TSO6));
        assert!(!o.has(Offloads::GUEST_CSUM));
        let g = Offloads::from_features(1 << 1 | 1 << 7 | 1 << 8 | 1 << 9);
        assert_eq!(
            g,
            Offloads::GUEST_CSUM
                .with(Offloads::GUEST_TSO4)
                .with(Offloads::GUEST_TSO6)
                .with(Offloads::GUEST_ECN)
        );
        assert_eq!(Offloads::from_features(1 << 32 | 1 << 15), Offloads::NONE);
    }

    fn hdr(
        flags: u8,
        gso_type: u8,
        gso_size: u16,
        csum_start: u16,
        csum_offset: u16,
    ) -> VirtioNetHdr {
        VirtioNetHdr {
            flags,
            gso_type,
            hdr_len: 54,
            gso_size,
            csum_start,
            csum_offset,
            num_buffers: 0,
        }
    }

    #[test]
    fn claims_are_checked_against_the_source_features() {
        let all_host = Offloads::CSUM
            .with(Offloads::HOST_TSO4)
            .with(Offloads::HOST_TSO6)
            .with(Offloads::HOST_ECN);
        let csum = hdr(F_NEEDS_CSUM, 0, 0, 34, 16);
        assert_eq!(
            check_claim(&csum, all_host, 100).unwrap().flags,
            F_NEEDS_CSUM
        );
        assert_eq!(
            check_claim(&csum, Offloads::NONE, 100),
            Err(DropReason::OffloadNotNegotiated)
        );
        // The checksum field must be inside the frame: 34 + 16 + 2 = 52.
        assert!(check_claim(&csum, all_host, 52).is_ok());
        assert_eq!(
            check_claim(&csum, all_host, 51),
            Err(DropReason::BadOffload)
        );
        let big = hdr(F_NEEDS_CSUM, 0, 0, u16::MAX, u16::MAX);
        assert_eq!(
            check_claim(&big, all_host, 70_000),
            Err(DropReason::BadOffload)
        );
        // DATA_VALID from a driver is dropped from the header, not passed on.
        let dv = hdr(F_DATA_VALID, 0, 0, 0, 0);
        assert_eq!(
            check_claim(&dv, Offloads::NONE, 60),
            Ok(VirtioNetHdr::default())
        );
        let tso4 = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16);
        assert!(check_claim(&tso4, all_host, 9000).is_ok());
        assert_eq!(
            check_claim(&tso4, Offloads::CSUM.with(Offloads::HOST_TSO6), 9000),
            Err(DropReason::OffloadNotNegotiated)
        );
        let tso6_ecn = hdr(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 1428, 54, 16);
        assert!(check_claim(&tso6_ecn, all_host, 9000).is_ok());
        assert_eq!(
            check_claim(&tso6_ecn, Offloads::CSUM.with(Offloads::HOST_TSO6), 9000),
            Err(DropReason::OffloadNotNegotiated)
        );
        let udp = hdr(F_NEEDS_CSUM, 3, 1400, 34, 6);
        assert_eq!(
            check_claim(&udp, all_host, 9000),
            Err(DropReason::OffloadNotNegotiated)
        );
        let no_size = hdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16);
        assert_eq!(
            check_claim(&no_size, all_host, 9000),
            Err(DropReason::BadOffload)
        );
        let no_csum = hdr(0, GSO_TCPV4, 1448, 0, 0);
        assert_eq!(
            check_claim(&no_csum, all_host, 9000),
            Err(DropReason::BadOffload)
        );
        let ecn_alone = hdr(0, GSO_ECN, 0, 0, 0);
        assert_eq!(
            check_claim(&ecn_alone, all_host, 9000),
            Err(DropReason::BadOffload)
        );
    }

    #[test]
    fn actions_by_destination_features() {
        let csum = hdr(F_NEEDS_CSUM, 0, 0, 34, 16);
        let tso4 = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16);
        let tso6e = hdr(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 1448, 54, 16);
        let gc = Offloads::GUEST_CSUM;
        let g4 = gc.with(Offloads::GUEST_TSO4);
        let g6 = gc.with(Offloads::GUEST_TSO6);
        assert_eq!(
            action(&VirtioNetHdr::default(), Offloads::NONE),
            Action::Plain
        );
        assert_eq!(action(&csum, Offloads::NONE), Action::CompleteChecksum);
        assert_eq!(action(&csum, gc), Action::PassThrough);
        assert_eq!(action(&tso4, gc), Action::Segment);
        assert_eq!(action(&tso4, g4), Action::PassThrough);
        assert_eq!(action(&tso4, g6), Action::Segment);
        assert_eq!(action(&tso6e, g6), Action::Segment);
        assert_eq!(
            action(&tso6e, g6.with(Offloads::GUEST_ECN)),
            Action::PassThrough
        );
    }

    /// A TCP/IPv4 TSO frame: Ethernet, IPv4 (id 0x1234), TCP (seq 1000, PSH|FIN|CWR|ACK),
    /// `payload` bytes of a pattern.
    fn tso4_frame(payload: usize, ip_options: usize) -> Vec<u8> {
        let ihl = 20 + ip_options;
        let mut f = vec![0u8; 14 + ihl + 20 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x40 | (ihl / 4) as u8;
        f[14 + 4..14 + 6].copy_from_slice(&0x1234u16.to_be_bytes());
        f[14 + 6] = 0x40; // DF
        f[14 + 8] = 64;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        let t = 14 + ihl;
        f[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&1000u32.to_be_bytes());
        f[t + 12] = 5 << 4;
        f[t + 13] = TCP_FIN | TCP_PSH | TCP_CWR | 0x10;
        for (i, b) in f[t + 20..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        f
    }

    /// Cuts `frame` per `plan` the way the fast path does.
    fn cut(plan: &SegmentPlan, frame: &[u8]) -> Vec<Vec<u8>> {
        (0..plan.segments())
            .map(|i| {
                let mut out = vec![0u8; plan.headers];
                let mut sum = plan.segment_headers(frame, i, &mut out);
                let start = plan.headers + (i * plan.mss) as usize;
                let payload = &frame[start..start + plan.segment_payload(i) as usize];
                sum.add(payload);
                out[plan.l4 + 16..plan.l4 + 18].copy_from_slice(&sum.finish().to_be_bytes());
                out.extend_from_slice(payload);
                out
            })
            .collect()
    }

    /// The TCP checksum of `seg` verified independently: pseudo-header plus segment sums
    /// to 0xffff.
    fn tcp_verifies(seg: &[u8], l3: usize, l4: usize, v6: bool) -> bool {
        let tcp = &seg[l4..];
        let mut pseudo = Vec::new();
        if v6 {
            pseudo.extend_from_slice(&seg[l3 + 8..l3 + 40]);
            pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        } else {
            pseudo.extend_from_slice(&seg[l3 + 12..l3 + 20]);
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        }
        pseudo.extend_from_slice(tcp);
        reference_sum(&pseudo) == 0xffff
    }

    #[test]
    fn tso4_frame_is_cut_into_mss_segments_with_correct_headers() {
        let frame = tso4_frame(4000, 0);
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16);
        let plan = SegmentPlan::parse(
            &h,
            &frame[..MAX_HEADERS.min(frame.len())],
            frame.len() as u64,
        )
        .unwrap();
        assert_eq!(
            (plan.l3, plan.l4, plan.headers, plan.payload),
            (14, 34, 54, 4000)
        );
        assert_eq!(plan.segments(), 3);
        let segs = cut(&plan, &frame);
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let want = [1448, 1448, 1104][i];
            assert_eq!(s.len(), 54 + want);
            assert_eq!(
                u16::from_be_bytes([s[16], s[17]]) as usize,
                40 + want,
                "total length"
            );
            assert_eq!(
                u16::from_be_bytes([s[18], s[19]]),
                0x1234 + i as u16,
                "ip id"
            );
            assert_eq!(reference_sum(&s[14..34]), 0xffff, "ip checksum of {i}");
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 1000 + 1448 * i as u32);
            let flags = s[47];
            assert_eq!(flags & TCP_FIN != 0, i == 2, "FIN on the last only");
            assert_eq!(flags & TCP_PSH != 0, i == 2, "PSH on the last only");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert_ne!(flags & 0x10, 0, "ACK everywhere");
            assert!(tcp_verifies(s, 14, 34, false), "tcp checksum of {i}");
            payload.extend_from_slice(&s[54..]);
        }
        assert_eq!(payload, frame[54..]);
    }

    #[test]
    fn tso4_with_ip_options_and_a_vlan_tag() {
        let mut frame = tso4_frame(3000, 8);
        // Insert an 802.1Q tag after the MAC addresses.
        frame.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1000, 0, 16);
        let plan = SegmentPlan::parse(&h, &frame[..MAX_HEADERS], frame.len() as u64).unwrap();
        assert_eq!((plan.l3, plan.l4, plan.headers), (18, 46, 66));
        for (i, s) in cut(&plan, &frame).iter().enumerate() {
            assert_eq!(reference_sum(&s[18..46]), 0xffff, "ip checksum of {i}");
            assert!(tcp_verifies(s, 18, 46, false), "tcp checksum of {i}");
        }
    }

    #[test]
    fn tso6_frame_is_cut_with_payload_lengths_and_checksums() {
        let payload = 5000;
        let mut f = vec![0u8; 14 + 40 + 32 + payload];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[14 + 6] = 6;
        f[14 + 7] = 64;
        for i in 0..32 {
            f[14 + 8 + i] = 0xfe ^ i as u8;
        }
        f[54 + 4..54 + 8].copy_from_slice(&u32::MAX.to_be_bytes()); // seq wraps
        f[54 + 12] = 8 << 4; // 12 bytes of TCP options
        f[54 + 13] = TCP_PSH | 0x10;
        for (i, b) in f[86..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV6, 1400, 54, 16);
        let plan = SegmentPlan::parse(&h, &f[..MAX_HEADERS], f.len() as u64).unwrap();
        assert_eq!(plan.segments(), 4);
        for (i, s) in cut(&plan, &f).iter().enumerate() {
            let len = u16::from_be_bytes([s[18], s[19]]) as usize;
            assert_eq!(len, s.len() - 54, "payload length of {i}");
            assert!(tcp_verifies(s, 14, 54, true), "tcp checksum of {i}");
            let seq = u32::from_be_bytes([s[58], s[59], s[60], s[61]]);
            assert_eq!(seq, u32::MAX.wrapping_add(1400 * i as u32));
            assert_eq!(s[67] & TCP_PSH != 0, i == 3);
        }
    }

    #[test]
    fn hostile_tso_headers_are_refused() {
        let frame = tso4_frame(3000, 0);
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16);
        let parse = |f: &[u8], h: &VirtioNetHdr| {
            SegmentPlan::parse(h, &f[..MAX_HEADERS.min(f.len())], f.len() as u64)
        };
        let bad = Err(DropReason::BadOffload);
        // IPv6 GSO type on an IPv4 frame.
        assert_eq!(
            parse(&frame, &hdr(F_NEEDS_CSUM, GSO_TCPV6, 1448, 34, 16)),
            bad
        );
        // UDP payload.
        let mut udp = frame.clone();
        udp[23] = 17;
        assert_eq!(parse(&udp, &h), bad);
        // IHL below 5, version not 4.
        let mut ihl = frame.clone();
        ihl[14] = 0x44;
        assert_eq!(parse(&ihl, &h), bad);
        let mut ver = frame.clone();
        ver[14] = 0x65;
        assert_eq!(parse(&ver, &h), bad);
        // TCP data offset below 5 and beyond the frame.
        let mut doff = frame.clone();
        doff[46] = 4 << 4;
        assert_eq!(parse(&doff, &h), bad);
        let mut long_tcp = frame.clone();
        long_tcp[46] = 15 << 4;
        assert_eq!(parse(&long_tcp[..80], &h), bad);
        assert!(parse(&frame[..60], &h).is_ok());
        // Truncated headers.
        assert_eq!(parse(&frame[..40], &h), bad);
        assert_eq!(parse(&frame[..13], &h), bad);
        // A fragment.
        let mut frag = frame.clone();
        frag[20] = 0x20;
        assert_eq!(parse(&frag, &h), bad);
        // Segments of one byte: more than MAX_SEGMENTS.
        assert_eq!(parse(&frame, &hdr(F_NEEDS_CSUM, GSO_TCPV4, 1, 34, 16)), bad);
        // A segment whose IP length would not fit 16 bits.
        assert_eq!(
            parse(&frame, &hdr(F_NEEDS_CSUM, GSO_TCPV4, 65535, 34, 16)),
            bad
        );
        // Not IP at all.
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse(&arp, &h), bad);
        // No payload: one segment, the frame itself.
        let empty = tso4_frame(0, 0);
        let p = parse(&empty, &h).unwrap();
        assert_eq!((p.segments(), p.segment_payload(0)), (1, 0));
    }
}
