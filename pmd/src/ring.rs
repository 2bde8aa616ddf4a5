//! What the staged fast path needs from a ring layout, whatever the layout is.
//!
//! The fast path ([`crate::forward`]) works in stages over a burst and only through this
//! trait: which chains the driver made available, walking one, returning used chains, and
//! publishing them with the notification decision. [`crate::split`] implements it for
//! split rings; packed rings implement the same operations over their single descriptor
//! ring (with wrap counters in the cursor), and the stages stay as they are.
#![forbid(unsafe_code)]

use crate::memory::GuestMemoryMap;
use crate::queue::Cursor;
use crate::split::chain::{ChainError, Direction, Segments};

/// A chain the driver made available, as the ring layout identifies it: what the device
/// needs to walk it and to return it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainHead {
    /// The descriptor index the chain starts at (split rings); the buffer id written back
    /// in the used entry.
    pub id: u16,
}

/// Why a ring can no longer be used (a [`crate::queue::broken`] bit).
pub type Broken = u8;

/// A ring as the device side of the fast path drives it.
pub trait DeviceRing {
    /// Chains the driver made available beyond `cur` and not yet taken (TX), read from
    /// the ring now; `Err` when the driver broke the ring.
    fn available(&self, cur: &Cursor) -> Result<u16, Broken>;

    /// The head of the `k`-th available chain after `cur` (`k` below [`Self::available`]),
    /// its descriptor prefetched; `Err` when it is not a valid head.
    fn head(&self, cur: &Cursor, k: u16) -> Result<ChainHead, Broken>;

    /// Walks the chain at `head`, appending its buffers to `out` (bounded by the segment
    /// limit `out` was given).
    fn walk(
        &self,
        memory: &GuestMemoryMap,
        head: ChainHead,
        dir: Direction,
        indirect_ok: bool,
        out: &mut Segments,
    ) -> Result<(), ChainError>;

    /// Marks `n` chains after `cur` taken.
    fn consume(&self, cur: &mut Cursor, n: u16);

    /// The next available chain for receiving (RX), taken: `Ok(None)` when the driver has
    /// posted none. The ring's available index is read only when the cached one is used up,
    /// and the descriptors of newly seen chains are prefetched together.
    fn take_next(&self, cur: &mut Cursor) -> Result<Option<ChainHead>, Broken>;

    /// Returns the chain at `head` to the driver with `len` bytes written; visible with the
    /// next [`Self::publish_used`].
    fn push_used(&self, cur: &mut Cursor, head: ChainHead, len: u32);

    /// Publishes the used chains pushed since the last call (one release store) and
    /// returns whether the driver asked to be interrupted for them.
    fn publish_used(&self, cur: &mut Cursor, event_idx: bool) -> bool;

    /// After a TX burst: keeps the driver from kicking a poller (EVENT_IDX).
    fn suppress_kicks_after(&self, cur: &Cursor, event_idx: bool);
}
