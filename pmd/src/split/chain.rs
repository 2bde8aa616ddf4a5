//! Walking a split-ring descriptor chain (virtio 1.2 §2.7.5, §2.7.5.3) against a hostile
//! driver.
//!
//! Each descriptor is copied once and validated from the copy. A chain is bounded by the
//! queue size (so a loop ends as `TooLong`), an indirect table by its own length, indirect
//! tables may not nest, and every buffer must be of the kind the queue expects and lie in
//! guest memory (the shared checks of [`crate::chain`]).
#![forbid(unsafe_code)]

use super::raw::{Descriptor, SplitRing, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::chain::{push_buffer, ChainError, Direction, IndirectTable, Segments};
use crate::memory::GuestMemoryMap;

/// Walks the chain starting at `head` into `out` (cleared first: the chain may use all of
/// its room).
///
/// `indirect_ok`: VIRTIO_RING_F_INDIRECT_DESC was negotiated.
pub fn walk(
    ring: &SplitRing<'_>,
    mem: &GuestMemoryMap,
    head: u16,
    dir: Direction,
    indirect_ok: bool,
    out: &mut Segments,
) -> Result<(), ChainError> {
    out.clear();
    walk_append(ring, mem, head, dir, indirect_ok, out)
}

/// Walks the chain starting at `head`, appending its buffers to `out`.
pub fn walk_append(
    ring: &SplitRing<'_>,
    mem: &GuestMemoryMap,
    head: u16,
    dir: Direction,
    indirect_ok: bool,
    out: &mut Segments,
) -> Result<(), ChainError> {
    let size = ring.size();
    let mut desc = ring
        .descriptor(head)
        .ok_or(ChainError::IndexOutOfRange(head))?;
    let mut seen: u32 = 1;
    loop {
        if desc.flags & DESC_F_INDIRECT != 0 {
            if !indirect_ok {
                return Err(ChainError::IndirectNotNegotiated);
            }
            if desc.flags & DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            return walk_indirect(mem, desc, size, dir, out);
        }
        visit(mem, desc, dir, out)?;
        if desc.flags & DESC_F_NEXT == 0 {
            return Ok(());
        }
        seen += 1;
        if seen > u32::from(size) {
            return Err(ChainError::TooLong);
        }
        desc = ring
            .descriptor(desc.next)
            .ok_or(ChainError::IndexOutOfRange(desc.next))?;
    }
}

fn walk_indirect(
    mem: &GuestMemoryMap,
    table: Descriptor,
    size: u16,
    dir: Direction,
    out: &mut Segments,
) -> Result<(), ChainError> {
    let table = IndirectTable::new(mem, table.addr, table.len, size)?;
    let read = |i: u16| {
        table
            .entry(u32::from(i))
            .map(|(lo, hi)| Descriptor::from_words(lo, hi))
    };
    let mut desc = read(0).ok_or(ChainError::IndexOutOfRange(0))?;
    let mut seen = 1;
    loop {
        if desc.flags & DESC_F_INDIRECT != 0 {
            return Err(ChainError::NestedIndirect);
        }
        visit(mem, desc, dir, out)?;
        if desc.flags & DESC_F_NEXT == 0 {
            return Ok(());
        }
        seen += 1;
        if seen > table.len() {
            return Err(ChainError::TooLong);
        }
        desc = read(desc.next).ok_or(ChainError::IndexOutOfRange(desc.next))?;
    }
}

#[inline]
fn visit(
    mem: &GuestMemoryMap,
    desc: Descriptor,
    dir: Direction,
    out: &mut Segments,
) -> Result<(), ChainError> {
    push_buffer(
        mem,
        desc.addr,
        desc.len,
        desc.flags & DESC_F_WRITE != 0,
        dir,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::MAX_CHAIN_BYTES;
    use crate::memory::test_map;
    use crate::vring::{translate, Layout, RingAddrs};

    /// A chain of `count` descriptors, each covering `buf_len` bytes at `buf_gpa`.
    fn chain_of(count: u16, buf_gpa: u64, buf_len: u32) -> (GuestMemoryMap, RingAddrs) {
        let mem = test_map(buf_gpa + u64::from(buf_len), 0);
        let desc = mem
            .slice(&mem.translate_gpa(0, 16 * u64::from(count)).unwrap())
            .unwrap();
        for i in 0..count {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&buf_gpa.to_le_bytes());
            d[8..12].copy_from_slice(&buf_len.to_le_bytes());
            let flags = if i + 1 < count { DESC_F_NEXT } else { 0 };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(i + 1).to_le_bytes());
            desc.write(16 * usize::from(i), &d).unwrap();
        }
        let addrs = RingAddrs {
            desc: 0,
            avail: 16 * u64::from(count),
            used: 16 * u64::from(count) + 4096,
        };
        (mem, addrs)
    }

    #[test]
    fn a_chain_of_more_than_4_gib_is_refused() {
        // 257 descriptors of 16 MiB each, all over the same buffer: 4 GiB + 16 MiB.
        let (mem, addrs) = chain_of(512, 1 << 20, 16 << 20);
        let t = translate(&mem, 512, addrs, Layout::Split { event_idx: false }).unwrap();
        let ring = SplitRing::new(&mem, &t).unwrap();
        let mut out = Segments::with_capacity(1024);
        assert_eq!(
            walk(&ring, &mem, 0, Direction::Readable, false, &mut out),
            Err(ChainError::TooManyBytes)
        );
        // 256 of them (exactly 4 GiB) are within the spec's limit.
        let mut out = Segments::with_capacity(256);
        assert_eq!(
            walk(&ring, &mem, 256, Direction::Readable, false, &mut out),
            Ok(())
        );
        assert_eq!(out.total_len(), MAX_CHAIN_BYTES);
    }
}
