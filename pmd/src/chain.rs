//! What every ring layout's chain walker shares (virtio 1.2 §2.7.5, §2.8.6): the bounded
//! segment space a chain is walked into, the errors a chain is refused for, and the checks
//! on one buffer (direction, guest memory, region boundaries) and on an indirect table.
//!
//! Buffers that cross a region boundary are split into one segment per region. A chain may
//! not hold more than 2^32 bytes in all (virtio 1.2 §2.7.5.2).
#![forbid(unsafe_code)]

use thiserror::Error;

use crate::memory::{GuestMemoryMap, GuestRange, GuestSlice};

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
pub(crate) fn push_range(
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

/// Appends a descriptor's buffer, which must be of the kind `dir` expects.
#[inline]
pub(crate) fn push_buffer(
    mem: &GuestMemoryMap,
    addr: u64,
    len: u32,
    writable: bool,
    dir: Direction,
    out: &mut Segments,
) -> Result<(), ChainError> {
    if writable != (dir == Direction::Writable) {
        return Err(ChainError::WrongDirection);
    }
    push_range(mem, addr, len, out)
}

/// An indirect descriptor table, checked against guest memory and the queue size: its
/// entries are read as two little-endian words each (the layouts place fields differently
/// within them).
pub(crate) struct IndirectTable<'m> {
    mem: &'m GuestMemoryMap,
    addr: u64,
    count: u32,
    /// The whole table when it lies in one region (the usual case).
    view: Option<GuestSlice<'m>>,
}

impl<'m> IndirectTable<'m> {
    /// The table at `addr` of `len` bytes: a non-zero multiple of 16, at most `queue_size`
    /// entries, wholly in guest memory.
    pub(crate) fn new(
        mem: &'m GuestMemoryMap,
        addr: u64,
        len: u32,
        queue_size: u16,
    ) -> Result<Self, ChainError> {
        if len == 0 || !len.is_multiple_of(16) || len / 16 > u32::from(queue_size) {
            return Err(ChainError::BadIndirectLength(len));
        }
        if !mem.covers_gpa(addr, u64::from(len)) {
            return Err(ChainError::OutsideMemory { addr, len });
        }
        // A table across adjacent regions (legal but rare) is read piecewise.
        let view = mem
            .translate_gpa(addr, u64::from(len))
            .and_then(|r| mem.slice(&r));
        Ok(IndirectTable {
            mem,
            addr,
            count: len / 16,
            view,
        })
    }

    /// Entries in the table.
    pub(crate) fn len(&self) -> u32 {
        self.count
    }

    /// Entry `i` as its two words (read once, volatile); `None` past the end.
    pub(crate) fn entry(&self, i: u32) -> Option<(u64, u64)> {
        if i >= self.count {
            return None;
        }
        let offset = 16 * i as usize;
        match &self.view {
            Some(v) => v.read_volatile_le_u64_pair(offset),
            None => {
                let mut bytes = [0u8; 16];
                self.mem.read_gpa(self.addr + offset as u64, &mut bytes)?;
                let (lo, hi) = bytes.split_at(8);
                Some((
                    u64::from_le_bytes(lo.try_into().ok()?),
                    u64::from_le_bytes(hi.try_into().ok()?),
                ))
            }
        }
    }
}
