//! The frames `vhost-pktgen` sends: Ethernet + IPv4 + UDP with a 22-byte stamp, then a
//! static body and its checksum. Built once per size into a [`Template`]; per packet only
//! the first 64 bytes are rewritten ([`Template::stamp`]).
//!
//! ```text
//! 0    dst MAC  02:50:47:<dst port>:<flow>     (flow = 16 bits, big endian)
//! 6    src MAC  02:50:47:<src port>:<flow>
//! 12   0x0800
//! 14   IPv4: 45 00 <len-14> 0000 4000 40 11 <csum> 10.<src port>.<flow> 10.<dst port>.<flow>
//! 34   UDP:  <0xC000 + stream> <0x5047 "PG"> <len-34> 0000
//! 42   seq    u64 LE   per-flow sequence number
//! 50   ts     u64 LE   CLOCK_MONOTONIC nanoseconds at transmission
//! 58   flow   u16 LE
//! 60   check  u32 LE   hash of (stream, flow, seq, ts, len): catches header corruption
//! 64   body: byte i = (i * 29) ^ 0xa5 ...         (static per size)
//! len-8 body checksum u64 LE of bytes 64..len-8 and len   (frames of 72 bytes or more)
//! ```
//!
//! Sizes count the frame as it lies in the virtio buffer: no FCS, no net header.

/// Smallest frame.
pub const MIN_FRAME: usize = 64;
/// Largest frame.
pub const MAX_FRAME: usize = 9000;
/// Bytes rewritten per packet (and read per received packet).
pub const HEAD_LEN: usize = 64;
/// UDP destination port marking pktgen frames ("PG").
pub const UDP_DST_PORT: u16 = 0x5047;
/// UDP source port of stream 0 (stream `s` uses `UDP_SRC_BASE + s`).
pub const UDP_SRC_BASE: u16 = 0xC000;
/// Where the per-packet stamp starts in the frame.
pub const STAMP_OFFSET: usize = 42;
/// Length of the stamp (sequence number, time, flow, check).
pub const STAMP_LEN: usize = HEAD_LEN - STAMP_OFFSET;
/// Bytes of preamble, start delimiter and inter-frame gap counted per frame for line-rate
/// Gbps.
pub const WIRE_OVERHEAD: u64 = 20;

const OFF_ETHERTYPE: usize = 12;
const OFF_IP: usize = 14;
const OFF_IP_CSUM: usize = 24;
const OFF_SRC_IP: usize = 26;
const OFF_DST_IP: usize = 30;
const OFF_UDP: usize = 34;
const OFF_SEQ: usize = 42;
const OFF_TS: usize = 50;
const OFF_FLOW: usize = 58;
const OFF_CHECK: usize = 60;
const BODY_SUM_MIN: usize = HEAD_LEN + 8;

/// The MAC address of `flow` on `port`.
#[inline]
pub fn mac(port: u8, flow: u16) -> [u8; 6] {
    let f = flow.to_be_bytes();
    [0x02, 0x50, 0x47, port, f[0], f[1]]
}

/// The IPv4 address of `flow` on `port`.
#[inline]
pub fn ip(port: u8, flow: u16) -> [u8; 4] {
    let f = flow.to_be_bytes();
    [10, port, f[0], f[1]]
}

fn fill_byte(i: usize) -> u8 {
    (i as u8).wrapping_mul(29) ^ 0xa5
}

/// The header check word: a hash of the fields that change per packet and the length.
#[inline]
pub fn check(stream: u8, flow: u16, seq: u64, ts: u64, len: usize) -> u32 {
    let mut h = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ts.rotate_left(23)
        ^ (u64::from(flow) << 40 | u64::from(stream) << 32 | len as u64)
        ^ 0x5047_5047_0000;
    h = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    (h >> 32) as u32 ^ h as u32
}

/// Checksum of a frame body: four interleaved FNV-style lanes over little-endian words (so
/// that the multiplications overlap), seeded with the frame length.
pub fn body_checksum(body: &[u8], len: usize) -> u64 {
    const P: u64 = 0x0000_0100_0000_01b3;
    let mut l = [
        0xcbf2_9ce4_8422_2325 ^ len as u64,
        0x84222325_cbf29ce4,
        0x9E37_79B9_7F4A_7C15,
        0xD6E8_FEB8_6659_FD93,
    ];
    let word = |c: &[u8]| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    };
    let mut chunks = body.chunks_exact(32);
    for c in &mut chunks {
        for (j, lane) in l.iter_mut().enumerate() {
            *lane = (*lane ^ word(&c[8 * j..8 * j + 8])).wrapping_mul(P);
        }
    }
    for (j, w) in chunks.remainder().chunks(8).enumerate() {
        l[j] = (l[j] ^ word(w)).wrapping_mul(P);
    }
    let mut h = l[0];
    for lane in &l[1..] {
        h = (h.rotate_left(31) ^ lane).wrapping_mul(P);
    }
    h ^ (h >> 32)
}

#[inline]
fn ones_sum(words: &[u8], mut sum: u32) -> u32 {
    for w in words.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    sum
}

#[inline]
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 header checksum of `hdr` (20 bytes, checksum field ignored).
pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let sum = ones_sum(&hdr[..10], 0);
    fold(ones_sum(&hdr[12..20], sum))
}

/// Why a frame size is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame size {0} not in {MIN_FRAME}..={MAX_FRAME}")]
pub struct BadSize(pub usize);

/// A frame of one size from one stream: the 64 head bytes for flow 0 and what is needed to
/// restamp them quickly.
#[derive(Debug, Clone)]
pub struct Template {
    len: usize,
    stream: u8,
    src_port: u8,
    dst_port: u8,
    head: [u8; HEAD_LEN],
    /// Ones' complement sum of the IPv4 header without checksum and addresses.
    ip_static_sum: u32,
}

impl Template {
    /// A template of `len` bytes for `stream`, from `src_port` to `dst_port`.
    pub fn new(len: usize, stream: u8, src_port: u8, dst_port: u8) -> Result<Self, BadSize> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(BadSize(len));
        }
        let mut h = [0u8; HEAD_LEN];
        h[OFF_ETHERTYPE..OFF_IP].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_hdr: [u8; 12] = {
            let tl = ((len - OFF_IP) as u16).to_be_bytes();
            [0x45, 0, tl[0], tl[1], 0, 0, 0x40, 0, 64, 17, 0, 0]
        };
        h[OFF_IP..OFF_IP + 12].copy_from_slice(&ip_hdr);
        let sport = (UDP_SRC_BASE + u16::from(stream)).to_be_bytes();
        let dport = UDP_DST_PORT.to_be_bytes();
        let ulen = ((len - OFF_UDP) as u16).to_be_bytes();
        h[OFF_UDP..OFF_SEQ].copy_from_slice(&[
            sport[0], sport[1], dport[0], dport[1], ulen[0], ulen[1], 0, 0,
        ]);
        let mut t = Template {
            len,
            stream,
            src_port,
            dst_port,
            head: h,
            ip_static_sum: ones_sum(&ip_hdr[..10], 0),
        };
        let mut head = [0u8; HEAD_LEN];
        t.stamp(&mut head, 0, 0, 0, true);
        t.head = head;
        Ok(t)
    }

    /// The frame length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty (never: at least [`MIN_FRAME`]).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The stream id.
    pub fn stream(&self) -> u8 {
        self.stream
    }

    /// Writes the whole frame (flow 0, seq 0, ts 0) into `out` (at least `len` bytes).
    pub fn fill(&self, out: &mut [u8]) {
        let len = self.len;
        out[..HEAD_LEN].copy_from_slice(&self.head);
        for (i, b) in out[HEAD_LEN..len].iter_mut().enumerate() {
            *b = fill_byte(HEAD_LEN + i);
        }
        if len >= BODY_SUM_MIN {
            let sum = body_checksum(&out[HEAD_LEN..len - 8], len);
            out[len - 8..len].copy_from_slice(&sum.to_le_bytes());
        }
    }

    /// Writes the 64 head bytes of packet `seq` of `flow` sent at `ts` into `out`; with
    /// `addresses` the MAC and IP addresses (and IP checksum) of `flow` too, else those of
    /// the template (flow 0).
    #[inline]
    pub fn stamp(&self, out: &mut [u8; HEAD_LEN], flow: u16, seq: u64, ts: u64, addresses: bool) {
        *out = self.head;
        if addresses {
            out[0..6].copy_from_slice(&mac(self.dst_port, flow));
            out[6..12].copy_from_slice(&mac(self.src_port, flow));
            let (s, d) = (ip(self.src_port, flow), ip(self.dst_port, flow));
            out[OFF_SRC_IP..OFF_DST_IP].copy_from_slice(&s);
            out[OFF_DST_IP..OFF_UDP].copy_from_slice(&d);
            let csum = fold(ones_sum(&out[OFF_SRC_IP..OFF_UDP], self.ip_static_sum));
            out[OFF_IP_CSUM..OFF_SRC_IP].copy_from_slice(&csum.to_be_bytes());
        }
        let mut fields = [0u8; STAMP_LEN];
        self.stamp_fields(&mut fields, flow, seq, ts);
        out[STAMP_OFFSET..].copy_from_slice(&fields);
    }

    /// Writes only the per-packet stamp (bytes [`STAMP_OFFSET`].. of the frame: sequence
    /// number, time, flow, check) into `out`: all that changes per packet when the
    /// addresses do not (one flow).
    #[inline]
    pub fn stamp_fields(&self, out: &mut [u8; STAMP_LEN], flow: u16, seq: u64, ts: u64) {
        let o = OFF_SEQ;
        out[OFF_SEQ - o..OFF_TS - o].copy_from_slice(&seq.to_le_bytes());
        out[OFF_TS - o..OFF_FLOW - o].copy_from_slice(&ts.to_le_bytes());
        out[OFF_FLOW - o..OFF_CHECK - o].copy_from_slice(&flow.to_le_bytes());
        let c = check(self.stream, flow, seq, ts, self.len);
        out[OFF_CHECK - o..].copy_from_slice(&c.to_le_bytes());
    }
}

/// The stamp of a received pktgen frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Stream (sending port) id.
    pub stream: u8,
    /// Flow id.
    pub flow: u16,
    /// Per-flow sequence number.
    pub seq: u64,
    /// Transmission time (CLOCK_MONOTONIC ns).
    pub ts: u64,
}

/// What a received frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A pktgen frame whose head is intact.
    Ok(Stamp),
    /// A pktgen frame (by its UDP port) whose head is damaged; the stream if plausible.
    Corrupt(Option<u8>),
    /// Not a pktgen frame.
    Foreign,
}

#[inline]
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Classifies a received frame of `len` bytes from its first bytes `head` (at least
/// `min(len, HEAD_LEN)` of them).
#[inline]
pub fn parse(head: &[u8], len: usize) -> Parsed {
    if head.len() < HEAD_LEN || len < MIN_FRAME {
        return Parsed::Foreign;
    }
    let be16 = |at: usize| u16::from_be_bytes([head[at], head[at + 1]]);
    if be16(OFF_ETHERTYPE) != 0x0800 || head[OFF_IP + 9] != 17 || be16(OFF_UDP + 2) != UDP_DST_PORT
    {
        return Parsed::Foreign;
    }
    let sport = be16(OFF_UDP);
    let stream = match sport.checked_sub(UDP_SRC_BASE) {
        Some(s) if s <= 255 => s as u8,
        _ => return Parsed::Corrupt(None),
    };
    let seq = u64_at(head, OFF_SEQ);
    let ts = u64_at(head, OFF_TS);
    let flow = u16::from_le_bytes([head[OFF_FLOW], head[OFF_FLOW + 1]]);
    let found = u32::from_le_bytes([head[60], head[61], head[62], head[63]]);
    if found != check(stream, flow, seq, ts, len) {
        return Parsed::Corrupt(Some(stream));
    }
    Parsed::Ok(Stamp {
        stream,
        flow,
        seq,
        ts,
    })
}

/// Full check of a whole frame whose head [`parse`]d: IPv4 header checksum and lengths,
/// addresses consistent with the flow (MACs possibly swapped by a reflector), body
/// checksum.
pub fn verify_full(frame: &[u8], stamp: &Stamp) -> bool {
    let len = frame.len();
    if len < MIN_FRAME {
        return false;
    }
    let ip_hdr = &frame[OFF_IP..OFF_UDP];
    let csum = u16::from_be_bytes([frame[OFF_IP_CSUM], frame[OFF_IP_CSUM + 1]]);
    let tl = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let ulen = u16::from_be_bytes([frame[OFF_UDP + 4], frame[OFF_UDP + 5]]) as usize;
    if ipv4_checksum(ip_hdr) != csum
        || tl != len - OFF_IP
        || ip_hdr[0] != 0x45
        || ulen != len - OFF_UDP
    {
        return false;
    }
    // Addresses: the IPs name the two ports (10.<port>.<flow>), the MACs are those of the
    // same ports and flow, in either order (a reflector may have swapped them).
    let (s, d) = (frame[OFF_SRC_IP + 1], frame[OFF_DST_IP + 1]);
    let (f, ms, md) = (stamp.flow, &frame[6..12], &frame[0..6]);
    let macs = (ms == mac(s, f) && md == mac(d, f)) || (ms == mac(d, f) && md == mac(s, f));
    if !macs || frame[OFF_SRC_IP..OFF_DST_IP] != ip(s, f) || frame[OFF_DST_IP..OFF_UDP] != ip(d, f)
    {
        return false;
    }
    if len >= BODY_SUM_MIN {
        let found = u64_at(frame, len - 8);
        if body_checksum(&frame[HEAD_LEN..len - 8], len) != found {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(t: &Template, flow: u16, seq: u64, ts: u64, addresses: bool) -> Vec<u8> {
        let mut f = vec![0u8; t.len()];
        t.fill(&mut f);
        let mut h = [0u8; HEAD_LEN];
        t.stamp(&mut h, flow, seq, ts, addresses);
        f[..HEAD_LEN].copy_from_slice(&h);
        f
    }

    #[test]
    fn stamped_frames_parse_and_verify() {
        for len in [64, 71, 72, 100, 576, 1500, 9000] {
            let t = Template::new(len, 3, 3, 7).unwrap();
            for (flow, seq, addresses) in
                [(0u16, 0u64, false), (5, 99, true), (65535, u64::MAX, true)]
            {
                let f = frame(&t, flow, seq, 12345, addresses);
                let st = Stamp {
                    stream: 3,
                    flow,
                    seq,
                    ts: 12345,
                };
                assert_eq!(parse(&f[..HEAD_LEN], len), Parsed::Ok(st), "len {len}");
                assert!(verify_full(&f, &st), "len {len} flow {flow}");
                let mut swapped = f.clone();
                swapped[..6].copy_from_slice(&f[6..12]);
                swapped[6..12].copy_from_slice(&f[..6]);
                assert!(verify_full(&swapped, &st), "MAC swap is tolerated");
                if addresses {
                    assert_eq!(&f[0..6], &mac(7, flow));
                    assert_eq!(&f[30..34], &ip(7, flow));
                }
                // The IP checksum is right whatever the flow.
                assert_eq!(
                    ipv4_checksum(&f[14..34]),
                    u16::from_be_bytes([f[24], f[25]])
                );
            }
        }
    }

    #[test]
    fn damage_is_detected() {
        let t = Template::new(200, 1, 1, 2).unwrap();
        let f = frame(&t, 9, 42, 7, true);
        let st = match parse(&f[..HEAD_LEN], 200) {
            Parsed::Ok(s) => s,
            p => panic!("{p:?}"),
        };
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            let ok = match parse(&g[..HEAD_LEN], g.len()) {
                Parsed::Ok(s) => verify_full(&g, &s),
                _ => false,
            };
            // Only the UDP checksum (0: none) is not covered by the full check.
            let uncovered = matches!(i, 40 | 41);
            assert_eq!(ok, uncovered, "byte {i}");
        }
        // Truncation: the length is part of the check.
        assert!(matches!(
            parse(&f[..HEAD_LEN], 199),
            Parsed::Corrupt(Some(1))
        ));
        // Not ours.
        let mut g = f.clone();
        g[36] = 0;
        assert_eq!(parse(&g[..HEAD_LEN], 200), Parsed::Foreign);
        assert_eq!(parse(&f[..40], 40), Parsed::Foreign);
        assert!(verify_full(&f, &st));
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(Template::new(63, 0, 0, 1).unwrap_err(), BadSize(63));
        assert!(Template::new(9001, 0, 0, 1).is_err());
    }

    #[test]
    fn body_checksum_sees_every_word_and_the_length() {
        let body: Vec<u8> = (0..100u8).collect();
        let base = body_checksum(&body, 164);
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] ^= 1;
            assert_ne!(body_checksum(&b, 164), base, "byte {i}");
        }
        assert_ne!(body_checksum(&body, 165), base);
    }
}
