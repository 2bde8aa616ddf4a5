//! What the staged fast path needs from a ring layout, whatever the layout is.
//!
//! The fast path ([`crate::forward`]) works in stages over a burst and only through this
//! trait: how many chains the driver made available, taking (and walking) one, returning
//! used chains, and publishing them with the notification decision. [`crate::split`] and
//! [`crate::packed`] implement it; the stages are the same for both.
#![forbid(unsafe_code)]

use crate::chain::{ChainError, Direction, Segments};
use crate::memory::GuestMemoryMap;
use crate::queue::Cursor;

/// A chain the driver made available, as the device returns it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainHead {
    /// What the used entry names: the head descriptor index (split) or the buffer id
    /// (packed).
    pub id: u16,
    /// Ring descriptors the chain occupies (packed: how far a used descriptor advances the
    /// device; split: 1).
    pub descriptors: u16,
}

/// A chain taken from a ring: how to return it, and whether its buffers passed the checks
/// (a refused chain is still returned, with nothing written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TakenChain {
    /// How the chain is returned.
    pub head: ChainHead,
    /// `Err` when a buffer broke a rule; its segments are then incomplete.
    pub walked: Result<(), ChainError>,
}

/// Why a ring can no longer be used (a [`crate::queue::broken`] bit).
pub type Broken = u8;

/// A ring as the device side of the fast path drives it.
pub trait DeviceRing {
    /// How many chains, up to `max`, may be taken now: 0 when the driver made none
    /// available. Starts loading their descriptors. `Err` when the driver broke the ring.
    fn poll(&self, cur: &mut Cursor, max: u16) -> Result<u16, Broken>;

    /// Takes the next available chain, walking its buffers into `out` (bounded by the
    /// segment limit `out` was given): `Ok(None)` when none is available, `Err` when the
    /// driver broke the ring (nothing is taken then).
    fn take(
        &self,
        cur: &mut Cursor,
        memory: &GuestMemoryMap,
        dir: Direction,
        indirect_ok: bool,
        out: &mut Segments,
    ) -> Result<Option<TakenChain>, Broken>;

    /// Starts fetching, for writing, where the next `count` used entries go, so that the
    /// lines the driver last read arrive together instead of one store miss after another.
    fn prefetch_used(&self, cur: &Cursor, count: u16);

    /// Returns the chain at `head` to the driver with `len` bytes written; visible with the
    /// next [`Self::publish_used`].
    fn push_used(&self, cur: &mut Cursor, head: ChainHead, len: u32);

    /// Returns `chains` chains taken in a row, ending with `last` and occupying
    /// `descriptors` ring descriptors, none written to, as one used entry (IN_ORDER: the
    /// "in-order use of descriptors" sections of virtio 1.2 §2.7 and §2.8).
    fn push_used_in_order(&self, cur: &mut Cursor, last: ChainHead, chains: u16, descriptors: u16);

    /// Publishes the used chains pushed since the last call (one release store) and
    /// returns whether the driver asked to be interrupted for them.
    fn publish_used(&self, cur: &mut Cursor, event_idx: bool) -> bool;

    /// After a TX burst: keeps the driver from kicking a poller.
    fn suppress_kicks_after(&self, cur: &Cursor, event_idx: bool);
}
