//! Walking a descriptor chain (virtio 1.2 §2.7.5, §2.7.5.3) against a hostile driver.
//!
//! Each descriptor is copied once and validated from the copy. A chain is bounded by the
//! queue size (so a loop ends as `TooLong`), an indirect table by its own length, indirect
//! tables may not nest, device-readable buffers come before device-writable ones, and
//! every buffer range must lie in guest memory. Buffers that cross a region boundary are
//! split into one segment per region. A chain may not hold more than 2^32 bytes in all
//! (virtio 1.2 §2.7.5.2).
#![forbid(unsafe_code)]

use thiserror::Error;

use super::raw::{Descriptor, SplitRing, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::memory::{GuestMemoryMap, GuestRange};

/// The most bytes a descriptor chain may hold (virtio 1.2 §2.7.5.2: 2^32).
pub const MAX_CHAIN_BYTES: u64 = 1 << 32;

/// Why a chain was refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    /// A `next` field or head points past the table.
    #[error("descriptor index {0} is out of range")]
    IndexOutOfRange(u16),
    /// More descriptors than the queue size: a loop or an oversized chain.
    #[error("chain longer than the queue size (loop?)")]
    TooLong,
    /// An indirect descriptor inside an indirect table.
    #[error("nested indirect table")]
    NestedIndirect,
    /// INDIRECT together with NEXT, or in the middle of a chain.
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// Indirect table length not a non-zero multiple of 16, or beyond the queue size.
    #[error("indirect table of {0} bytes")]
    BadIndirectLength(u32),
    /// A buffer or table that is not (wholly) in guest memory.
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A readable buffer after a writable one, or the wrong kind for the queue.
    #[error("descriptor direction not allowed here")]
    WrongDirection,
    /// More segments than the scratch buffer holds.
    #[error("chain has too many segments")]
    TooManySegments,
    /// The driver set the INDIRECT feature bit it did not negotiate.
    #[error("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// The buffers add up to more than 2^32 bytes.
    #[error("chain holds more than 2^32 bytes")]
    TooManyBytes,
}

/// Preallocated space for chains' segments (no allocation per packet): ranges of the
/// memory map the chains were walked in. One chain, or many back to back (a burst): each
/// chain starts with [`Segments::begin_chain`], which bounds its segment count and bytes.
#[derive(Debug)]
pub struct Segments {
    segs: Vec<GuestRange>,
    /// Index where the current chain's segments start.
    chain_start: usize,
    /// Bytes of the current chain.
    chain_bytes: u64,
    /// No segment is pushed at or past this index.
    limit: usize,
}

impl Segments {
    /// Room for `capacity` segments.
    pub fn with_capacity(capacity: usize) -> Self {
        Segments {
            segs: Vec::with_capacity(capacity),
            chain_start: 0,
            chain_bytes: 0,
            limit: capacity,
        }
    }

    /// Forgets every chain.
    pub fn clear(&mut self) {
        self.segs.clear();
        self.begin_chain(usize::MAX);
    }

    /// Starts a new chain after the segments held, of at most `max_segments` segments
    /// (and whatever room is left).
    pub fn begin_chain(&mut self, max_segments: usize) {
        self.chain_start = self.segs.len();
        self.chain_bytes = 0;
        self.limit = self
            .segs
            .len()
            .saturating_add(max_segments)
            .min(self.segs.capacity());
    }

    /// Drops the segments from index `len` on (a chain that was refused).
    pub fn truncate(&mut self, len: usize) {
        self.segs.truncate(len);
    }

    /// Segments that still fit.
    pub fn room(&self) -> usize {
        self.segs.capacity() - self.segs.len()
    }

    /// Segments held.
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// True when no segment is held.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// The segments, in chain order.
    pub fn as_slice(&self) -> &[GuestRange] {
        &self.segs
    }

    /// Bytes of the current chain (since [`Segments::begin_chain`]).
    pub fn total_len(&self) -> u64 {
        self.chain_bytes
    }

    fn push(&mut self, seg: GuestRange) -> Result<(), ChainError> {
        if self.segs.len() >= self.limit {
            return Err(ChainError::TooManySegments);
        }
        self.chain_bytes += u64::from(seg.len());
        if self.chain_bytes > MAX_CHAIN_BYTES {
            return Err(ChainError::TooManyBytes);
        }
        self.segs.push(seg);
        Ok(())
    }
}

/// Which buffers the device expects in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Guest TX: only device-readable buffers.
    Readable,
    /// Guest RX: only device-writable buffers.
    Writable,
}

/// Appends the segments of `addr..addr+len`, split at region boundaries.
fn push_range(
    mem: &GuestMemoryMap,
    addr: u64,
    len: u32,
    out: &mut Segments,
) -> Result<(), ChainError> {
    let mut at = addr;
    let mut left = u64::from(len);
    let outside = ChainError::OutsideMemory { addr, len };
    while left > 0 {
        let prefix = mem.translate_gpa_prefix(at).ok_or(outside)?;
        let take = left.min(u64::from(prefix.len()));
        out.push(prefix.sub(0, take as u32))?;
        at = at.checked_add(take).ok_or(outside)?;
        left -= take;
    }
    Ok(())
}

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
    let len = table.len;
    if len == 0 || !len.is_multiple_of(16) || len / 16 > u32::from(size) {
        return Err(ChainError::BadIndirectLength(len));
    }
    let count = len / 16;
    if !mem.covers_gpa(table.addr, u64::from(len)) {
        return Err(ChainError::OutsideMemory {
            addr: table.addr,
            len,
        });
    }
    // Usually the table lies in one region and is read through one view; a table across
    // adjacent regions (legal but rare) is read piecewise.
    let whole = mem.translate_gpa(table.addr, u64::from(len));
    let view = whole.as_ref().and_then(|r| mem.slice(r));
    let read = |i: u16| -> Option<Descriptor> {
        if u32::from(i) >= count {
            return None;
        }
        let offset = 16 * usize::from(i);
        match &view {
            Some(v) => {
                let (lo, hi) = v.read_volatile_le_u64_pair(offset)?;
                Some(Descriptor::from_words(lo, hi))
            }
            None => {
                let mut bytes = [0u8; 16];
                mem.read_gpa(table.addr + offset as u64, &mut bytes)?;
                Some(Descriptor::from_le_bytes(bytes))
            }
        }
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
        if seen > count {
            return Err(ChainError::TooLong);
        }
        desc = read(desc.next).ok_or(ChainError::IndexOutOfRange(desc.next))?;
    }
}

fn visit(
    mem: &GuestMemoryMap,
    desc: Descriptor,
    dir: Direction,
    out: &mut Segments,
) -> Result<(), ChainError> {
    let writable = desc.flags & DESC_F_WRITE != 0;
    if writable != (dir == Direction::Writable) {
        return Err(ChainError::WrongDirection);
    }
    push_range(mem, desc.addr, desc.len, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_map;
    use crate::vring::{translate, RingAddrs};

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
        let t = translate(&mem, 512, addrs, false).unwrap();
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
