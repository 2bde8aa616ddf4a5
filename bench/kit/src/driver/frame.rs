//! Test frames: Ethernet frames that carry a sequence number and a checksum, so that a
//! receiver can check each frame arrived whole and in which order.
//!
//! Layout (no FCS, as in virtio buffers):
//!
//! ```text
//! 0      6      12     14        22                  len-8     len
//! | dst  | src  | 88b5 | seq (BE) | filler            | checksum |
//! ```
//!
//! The filler byte at frame offset `i` is `i as u8 ^ seq as u8`; the checksum (little
//! endian) is [`checksum`] of everything before it. Building writes into a caller buffer
//! and never allocates.

/// A MAC address.
pub type Mac = [u8; 6];

/// Length of the Ethernet header.
pub const ETH_HLEN: usize = 14;
/// The EtherType of test frames: IEEE local experimental 1.
pub const ETHERTYPE: u16 = 0x88B5;
/// Offset of the sequence number.
pub const SEQ_OFFSET: usize = ETH_HLEN;
/// Length of the trailing checksum.
pub const CHECKSUM_LEN: usize = 8;
/// Shortest test frame: header, sequence number, checksum.
pub const MIN_LEN: usize = ETH_HLEN + 8 + CHECKSUM_LEN;
/// The broadcast address.
pub const BROADCAST: Mac = [0xff; 6];

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Why a frame is not a valid test frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than [`MIN_LEN`].
    #[error("frame of {len} bytes is shorter than {MIN_LEN}")]
    TooShort {
        /// The frame's length.
        len: usize,
    },
    /// Not [`ETHERTYPE`].
    #[error("ethertype {found:#06x}, expected {ETHERTYPE:#06x}")]
    EtherType {
        /// The EtherType found.
        found: u16,
    },
    /// The checksum does not match the contents.
    #[error("checksum {found:#018x} but contents give {computed:#018x}")]
    Checksum {
        /// The checksum in the frame.
        found: u64,
        /// The checksum of the contents.
        computed: u64,
    },
}

/// FNV-1a (64-bit) over little-endian 8-byte words (the tail zero-padded), seeded with the
/// length. Word-wise for speed; any single changed word changes the result (each step is
/// a bijection of the state).
pub fn checksum(data: &[u8]) -> u64 {
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(FNV_PRIME);
    let mut h = step(FNV_OFFSET, data.len() as u64);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = step(h, u64::from_le_bytes(b));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(b));
    }
    h
}

/// Writes a test frame filling all of `buf` (its length is the frame size, at least
/// [`MIN_LEN`]): `dst`, `src`, [`ETHERTYPE`], `seq`, filler, checksum.
pub fn build(buf: &mut [u8], dst: Mac, src: Mac, seq: u64) -> Result<(), FrameError> {
    let len = buf.len();
    if len < MIN_LEN {
        return Err(FrameError::TooShort { len });
    }
    buf[..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&seq.to_be_bytes());
    let body = len - CHECKSUM_LEN;
    let key = seq as u8;
    for (i, b) in buf[SEQ_OFFSET + 8..body].iter_mut().enumerate() {
        *b = (i + SEQ_OFFSET + 8) as u8 ^ key;
    }
    let sum = checksum(&buf[..body]);
    buf[body..].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// Checks a test frame (length, EtherType, checksum) and returns its sequence number.
pub fn verify(frame: &[u8]) -> Result<u64, FrameError> {
    let len = frame.len();
    if len < MIN_LEN {
        return Err(FrameError::TooShort { len });
    }
    let found = u16::from_be_bytes([frame[12], frame[13]]);
    if found != ETHERTYPE {
        return Err(FrameError::EtherType { found });
    }
    let body = len - CHECKSUM_LEN;
    let mut b = [0u8; 8];
    b.copy_from_slice(&frame[body..]);
    let found = u64::from_le_bytes(b);
    let computed = checksum(&frame[..body]);
    if found != computed {
        return Err(FrameError::Checksum { found, computed });
    }
    b.copy_from_slice(&frame[SEQ_OFFSET..SEQ_OFFSET + 8]);
    Ok(u64::from_be_bytes(b))
}

/// Destination and source MAC of a frame (`None` if shorter than an Ethernet header).
pub fn macs(frame: &[u8]) -> Option<(Mac, Mac)> {
    let dst = frame.get(..6)?.try_into().ok()?;
    let src = frame.get(6..12)?.try_into().ok()?;
    Some((dst, src))
}

/// A locally administered unicast MAC: `02:00` followed by `id` (big endian).
pub fn local_mac(id: u32) -> Mac {
    let b = id.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

/// The IPv4 multicast MAC of `group`: `01:00:5e` and the group's low 23 bits.
pub fn multicast_mac(group: u32) -> Mac {
    let b = (group & 0x7f_ffff).to_be_bytes();
    [0x01, 0x00, 0x5e, b[1], b[2], b[3]]
}

/// Whether `mac` is a group address (multicast or broadcast: I/G bit set).
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}

/// Whether `mac` is the broadcast address.
pub fn is_broadcast(mac: &Mac) -> bool {
    *mac == BROADCAST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_verify_round_trip() {
        let mut buf = vec![0u8; 9000];
        for (size, seq) in [
            (MIN_LEN, 0u64),
            (60, 1),
            (64, 2),
            (1514, 0xdead_beef),
            (9000, u64::MAX),
        ] {
            let f = &mut buf[..size];
            build(f, BROADCAST, local_mac(7), seq).unwrap();
            assert_eq!(verify(f), Ok(seq), "size {size}");
            assert_eq!(macs(f), Some((BROADCAST, local_mac(7))));
            assert_eq!(&f[12..14], &[0x88, 0xb5]);
            assert_eq!(&f[14..22], &seq.to_be_bytes());
        }
    }

    #[test]
    fn any_corrupted_byte_is_detected() {
        let mut f = [0u8; 200];
        build(&mut f, local_mac(1), local_mac(2), 42).unwrap();
        for i in 0..f.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut g = f;
                g[i] ^= flip;
                assert!(verify(&g).is_err(), "byte {i} ^ {flip:#x} undetected");
            }
        }
        // Truncation and extension are detected (the length seeds the checksum).
        assert!(verify(&f[..199]).is_err());
        let mut longer = f.to_vec();
        longer.insert(100, 0);
        assert!(verify(&longer).is_err());
    }

    #[test]
    fn frames_with_different_sequence_numbers_differ() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        build(&mut a, BROADCAST, local_mac(1), 1).unwrap();
        build(&mut b, BROADCAST, local_mac(1), 2).unwrap();
        assert_ne!(a[22..], b[22..], "filler and checksum depend on seq");
        // Splicing the payload of one into the header of the other is caught.
        let mut c = a;
        c[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&b[SEQ_OFFSET..SEQ_OFFSET + 8]);
        assert!(matches!(verify(&c), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut short = [0u8; MIN_LEN - 1];
        assert_eq!(
            build(&mut short, BROADCAST, BROADCAST, 0),
            Err(FrameError::TooShort { len: MIN_LEN - 1 })
        );
        assert_eq!(
            verify(&short),
            Err(FrameError::TooShort { len: MIN_LEN - 1 })
        );
        let mut f = [0u8; 64];
        build(&mut f, BROADCAST, local_mac(1), 5).unwrap();
        f[13] = 0x00;
        assert_eq!(verify(&f), Err(FrameError::EtherType { found: 0x8800 }));
        assert_eq!(macs(&f[..11]), None);
    }

    #[test]
    fn mac_helpers() {
        assert!(is_broadcast(&BROADCAST) && is_multicast(&BROADCAST));
        let m = multicast_mac(0xe000_00fb); // 224.0.0.251
        assert_eq!(m, [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        assert!(is_multicast(&m) && !is_broadcast(&m));
        assert_eq!(
            multicast_mac(0xefff_ffff),
            [0x01, 0x00, 0x5e, 0x7f, 0xff, 0xff]
        );
        let u = local_mac(0x0102_0304);
        assert_eq!(u, [0x02, 0x00, 1, 2, 3, 4]);
        assert!(!is_multicast(&u));
        assert_ne!(local_mac(1), local_mac(2));
    }

    #[test]
    fn checksum_is_fnv1a_word_wise() {
        // Empty input: one step with the length 0.
        assert_eq!(checksum(&[]), FNV_OFFSET.wrapping_mul(FNV_PRIME));
        // A tail is zero-padded, but the length still tells it apart.
        assert_ne!(checksum(&[1]), checksum(&[1, 0]));
        assert_ne!(checksum(&[0; 8]), checksum(&[0; 16]));
    }
}
