//! The copy engine: moves bytes between descriptor chains (lists of [`GuestRange`]s, each
//! in its own guest's memory map) and between a chain and memory of ours.
//!
//! Every range is checked against its map again as it is used (a [`GuestRange`] is only a
//! number), so a chain walked in one snapshot and used with another cannot reach memory
//! that is not that guest's.
#![forbid(unsafe_code)]

use crate::memory::{GuestMemoryMap, GuestRange};

/// Skips `offset` bytes of `segs`: the index of the segment holding byte `offset`, and the
/// offset inside it.
#[inline]
fn seek(segs: &[GuestRange], mut offset: u64) -> (usize, u64) {
    let mut i = 0;
    while i < segs.len() && offset >= u64::from(segs[i].len()) {
        offset -= u64::from(segs[i].len());
        i += 1;
    }
    (i, offset)
}

/// Copies `len` bytes from chain `src` (in `src_mem`, starting `src_off` bytes in) to chain
/// `dst` (in `dst_mem`, starting `dst_off` bytes in). Returns the bytes copied: fewer than
/// `len` only when a chain ends first or a range is not in its map.
#[inline]
pub fn chain_to_chain(
    src_mem: &GuestMemoryMap,
    src: &[GuestRange],
    src_off: u64,
    dst_mem: &GuestMemoryMap,
    dst: &[GuestRange],
    dst_off: u64,
    len: u64,
) -> u64 {
    let (mut si, mut so) = seek(src, src_off);
    let (mut di, mut d_off) = seek(dst, dst_off);
    let mut done = 0u64;
    while done < len && si < src.len() && di < dst.len() {
        let (s, d) = (&src[si], &dst[di]);
        let n = (len - done)
            .min(u64::from(s.len()) - so)
            .min(u64::from(d.len()) - d_off);
        let copied = match (src_mem.slice(s), dst_mem.slice(d)) {
            (Some(sv), Some(dv)) => sv.copy_to(so as usize, &dv, d_off as usize, n as usize),
            _ => None,
        };
        if copied.is_none() {
            break;
        }
        done += n;
        so += n;
        d_off += n;
        if so == u64::from(s.len()) {
            si += 1;
            so = 0;
        }
        if d_off == u64::from(d.len()) {
            di += 1;
            d_off = 0;
        }
    }
    done
}

/// Reads `out.len()` bytes of chain `segs` from `offset`. False if the chain is shorter.
#[inline]
pub fn read(mem: &GuestMemoryMap, segs: &[GuestRange], offset: u64, out: &mut [u8]) -> bool {
    let (mut i, mut at) = seek(segs, offset);
    let mut done = 0;
    while done < out.len() && i < segs.len() {
        let seg = &segs[i];
        let n = (out.len() - done).min((u64::from(seg.len()) - at) as usize);
        let Some(view) = mem.slice(seg) else {
            return false;
        };
        if view.read(at as usize, &mut out[done..done + n]).is_none() {
            return false;
        }
        done += n;
        i += 1;
        at = 0;
    }
    done == out.len()
}

/// Reads `N` bytes of chain `segs` from `offset`: one fixed-size copy when the first
/// segment holds them (headers, nearly always), else piecewise. `None` if the chain is
/// shorter.
#[inline]
pub fn read_array<const N: usize>(
    mem: &GuestMemoryMap,
    segs: &[GuestRange],
    offset: u64,
) -> Option<[u8; N]> {
    if let Some(first) = segs.first() {
        if offset + N as u64 <= u64::from(first.len()) {
            return mem.slice(first)?.read_array::<N>(offset as usize);
        }
    }
    let mut out = [0u8; N];
    read(mem, segs, offset, &mut out).then_some(out)
}

/// Writes `data` at the start of chain `segs`: one fixed-size copy when the first segment
/// holds it, else piecewise. False if the chain is shorter.
#[inline]
pub fn write_array<const N: usize>(
    mem: &GuestMemoryMap,
    segs: &[GuestRange],
    data: &[u8; N],
) -> bool {
    if let Some(first) = segs.first() {
        if N as u64 <= u64::from(first.len()) {
            return mem.slice(first).and_then(|v| v.write(0, data)).is_some();
        }
    }
    write(mem, segs, 0, data)
}

/// Writes `data` into chain `segs` from `offset`. False if the chain is shorter.
#[inline]
pub fn write(mem: &GuestMemoryMap, segs: &[GuestRange], offset: u64, data: &[u8]) -> bool {
    let (mut i, mut at) = seek(segs, offset);
    let mut done = 0;
    while done < data.len() && i < segs.len() {
        let seg = &segs[i];
        let n = (data.len() - done).min((u64::from(seg.len()) - at) as usize);
        let Some(view) = mem.slice(seg) else {
            return false;
        };
        if view.write(at as usize, &data[done..done + n]).is_none() {
            return false;
        }
        done += n;
        i += 1;
        at = 0;
    }
    done == data.len()
}

/// Adds `len` bytes of chain `segs` from `offset` to checksum `sum`, through a small
/// stack buffer (guest memory is only reached by copies). False if the chain is shorter.
pub fn checksum(
    mem: &GuestMemoryMap,
    segs: &[GuestRange],
    offset: u64,
    len: u64,
    sum: &mut crate::offload::Checksum,
) -> bool {
    let mut buf = [0u8; 512];
    let (mut i, mut at) = seek(segs, offset);
    let mut left = len;
    while left > 0 && i < segs.len() {
        let seg = &segs[i];
        let Some(view) = mem.slice(seg) else {
            return false;
        };
        let in_seg = (u64::from(seg.len()) - at).min(left);
        let mut done = 0u64;
        while done < in_seg {
            let n = (in_seg - done).min(buf.len() as u64) as usize;
            if view.read((at + done) as usize, &mut buf[..n]).is_none() {
                return false;
            }
            sum.add(&buf[..n]);
            done += n as u64;
        }
        left -= in_seg;
        i += 1;
        at = 0;
    }
    left == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_map;

    fn map(size: u64) -> GuestMemoryMap {
        test_map(size, 0)
    }

    #[test]
    fn copies_across_uneven_segments_between_two_guests() {
        let (a, b) = (map(4096), map(4096));
        let src = [
            a.translate_gpa(0, 3).unwrap(),
            a.translate_gpa(100, 7).unwrap(),
        ];
        assert!(write(&a, &src, 0, b"0123456789"));
        let dst = [
            b.translate_gpa(50, 4).unwrap(),
            b.translate_gpa(200, 8).unwrap(),
        ];
        assert_eq!(chain_to_chain(&a, &src, 2, &b, &dst, 1, 7), 7);
        let mut got = [0u8; 4];
        assert!(read(&b, &dst, 0, &mut got));
        assert_eq!(&got, b"\x00234");
        let mut rest = [0u8; 4];
        assert!(read(&b, &dst, 4, &mut rest));
        assert_eq!(&rest, b"5678");
    }

    #[test]
    fn stops_at_the_end_of_either_chain_and_at_foreign_ranges() {
        let (a, b) = (map(4096), map(4096));
        let src = [a.translate_gpa(0, 8).unwrap()];
        let dst = [b.translate_gpa(0, 4).unwrap()];
        assert_eq!(chain_to_chain(&a, &src, 0, &b, &dst, 0, 8), 4);
        assert!(!read(&a, &src, 4, &mut [0u8; 5]));
        assert!(!write(&a, &src, 6, b"abc"));
        let far = map(8192);
        let foreign = [far.translate_gpa(6000, 8).unwrap()];
        assert_eq!(chain_to_chain(&a, &foreign, 0, &b, &dst, 0, 4), 0);
    }

    #[test]
    fn checksum_over_a_chain_matches_one_over_the_bytes() {
        let a = map(8192);
        let data: Vec<u8> = (0..3001u32).map(|i| (i * 13 + 5) as u8).collect();
        // Odd-length segments, so words straddle segment ends.
        let segs = [
            a.translate_gpa(0, 1001).unwrap(),
            a.translate_gpa(2000, 3).unwrap(),
            a.translate_gpa(4000, 1997).unwrap(),
        ];
        assert!(write(&a, &segs, 0, &data));
        for (off, len) in [(0u64, 3001u64), (1, 3000), (1000, 5), (999, 2002)] {
            let mut want = crate::offload::Checksum::default();
            want.add(&data[off as usize..(off + len) as usize]);
            let mut got = crate::offload::Checksum::default();
            assert!(checksum(&a, &segs, off, len, &mut got));
            assert_eq!(got.fold(), want.fold(), "{off}+{len}");
        }
        let mut c = crate::offload::Checksum::default();
        assert!(!checksum(&a, &segs, 10, 3000, &mut c));
    }
}
