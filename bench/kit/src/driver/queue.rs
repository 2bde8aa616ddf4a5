//! What the two virtqueue layouts share on the driver side, and [`Queue`], one queue of
//! either layout.
//!
//! The net drivers ([`NetDriver`](super::NetDriver), [`ZcNet`](super::ZcNet)) and
//! `vhost-pktgen` post buffers, publish, kick and take used buffers back the same way over a
//! split ring ([`DriverQueue`]) or a packed one ([`PackedQueue`]); they hold a [`Queue`] and
//! never look at the layout. Layout-specific access (raw writes for hostile tests, ring
//! indexes) goes through [`Queue::as_split`] / [`Queue::as_packed`].

use std::io;

use vmm_sys_util::eventfd::EventFd;

use super::packed::PackedQueue;
use super::split::DriverQueue;
use crate::error::{DeviceError, Error, Result};
use crate::memory::SharedMemory;
use crate::vring::{RingLayout, Vring};

/// One buffer of a chain to add: guest physical address, length, direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (the device fills it) rather than device-readable.
    pub writable: bool,
}

impl Seg {
    /// A device-readable buffer.
    pub const fn readable(gpa: u64, len: u32) -> Seg {
        Seg {
            gpa,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub const fn writable(gpa: u64, len: u32) -> Seg {
        Seg {
            gpa,
            len,
            writable: true,
        }
    }
}

/// A validated used buffer: the chain's id (split: its head descriptor; packed: its buffer
/// id) and the bytes the device wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsedElem {
    /// The chain: head descriptor (split) or buffer id (packed).
    pub id: u16,
    /// Bytes written into the chain's writable buffers.
    pub len: u32,
}

/// When the driver writes the kick eventfd after publishing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kick {
    /// Never (the device polls).
    #[default]
    Never,
    /// When the device asks for it: split: `used.flags` lacks `VRING_USED_F_NO_NOTIFY`, or
    /// with EVENT_IDX `avail_event` lies in the newly published range; packed: the device
    /// event suppression flags are ENABLE, or DESC with the event offset in that range.
    IfNeeded,
    /// After every publication, ignoring suppression (a misbehaving driver).
    Always,
}

/// Bytes of an indirect area for a queue of `queue_size` with tables of `max_entries`
/// (descriptors are 16 bytes in both layouts).
pub fn indirect_area_size(queue_size: u16, max_entries: u16) -> u64 {
    u64::from(queue_size) * u64::from(max_entries) * 16
}

/// Validates a chain: 1..=limit segments, readable before writable, writable total within
/// u32. Returns the writable total.
pub(crate) fn validate_chain(segs: &[Seg], limit: u16) -> Result<u32> {
    if segs.is_empty() || segs.len() > usize::from(limit) {
        return Err(Error::InvalidArgument(format!(
            "chain of {} buffers (1..={limit} allowed)",
            segs.len()
        )));
    }
    let mut writable = 0u32;
    let mut seen_writable = false;
    for s in segs {
        if s.writable {
            seen_writable = true;
            writable = writable.checked_add(s.len).ok_or_else(|| {
                Error::InvalidArgument("writable bytes of the chain overflow u32".into())
            })?;
        } else if seen_writable {
            return Err(Error::InvalidArgument(
                "readable buffer after a writable one".into(),
            ));
        }
    }
    Ok(writable)
}

/// `vring_need_event` (virtio 1.2 §2.7.10): whether `event` lies in `(old, new]` (free-running
/// u16 arithmetic; both layouts use it).
#[inline]
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Writes 1 to `kick`. A full eventfd counter (EAGAIN) counts as kicked: the device has a
/// kick pending.
#[inline]
pub(crate) fn write_kick(kick: &EventFd) -> Result<()> {
    match kick.write(1) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(Error::Io(e)),
    }
}

/// One virtqueue, driver side, of either layout (see the module docs).
///
/// Every method does what the same-named method of [`DriverQueue`] and [`PackedQueue`]
/// does; the ids it hands out and takes back are the layout's (split: head descriptor
/// index; packed: buffer id), both below the queue size.
#[derive(Debug)]
pub enum Queue<'m> {
    /// A split ring.
    Split(DriverQueue<'m>),
    /// A packed ring.
    Packed(PackedQueue<'m>),
}

/// Runs `$body` with `$q` bound to the queue of whichever layout `$self` holds. The body
/// is compiled once per layout: a loop over buffers inside it dispatches once, not once per
/// buffer (the net drivers' per-burst loops use it).
macro_rules! each {
    ($self:expr, $q:ident => $body:expr) => {
        match $self {
            $crate::driver::queue::Queue::Split($q) => $body,
            $crate::driver::queue::Queue::Packed($q) => $body,
        }
    };
}
pub(crate) use each;

impl<'m> Queue<'m> {
    /// A driver queue over `vring` in `mem`, of the ring's layout; the ring memory is zeroed.
    pub fn new(mem: &'m SharedMemory, vring: Vring) -> Result<Self> {
        Ok(match vring.layout() {
            RingLayout::Split => Queue::Split(DriverQueue::new(mem, vring)?),
            RingLayout::Packed => Queue::Packed(PackedQueue::new(mem, vring)?),
        })
    }

    /// The split queue, if this is one.
    pub fn as_split(&self) -> Option<&DriverQueue<'m>> {
        match self {
            Queue::Split(q) => Some(q),
            Queue::Packed(_) => None,
        }
    }

    /// The split queue, if this is one (hostile tests: raw writes).
    pub fn as_split_mut(&mut self) -> Option<&mut DriverQueue<'m>> {
        match self {
            Queue::Split(q) => Some(q),
            Queue::Packed(_) => None,
        }
    }

    /// The packed queue, if this is one.
    pub fn as_packed(&self) -> Option<&PackedQueue<'m>> {
        match self {
            Queue::Packed(q) => Some(q),
            Queue::Split(_) => None,
        }
    }

    /// The packed queue, if this is one (hostile tests: raw writes).
    pub fn as_packed_mut(&mut self) -> Option<&mut PackedQueue<'m>> {
        match self {
            Queue::Packed(q) => Some(q),
            Queue::Split(_) => None,
        }
    }

    /// The ring's layout.
    pub fn layout(&self) -> RingLayout {
        self.vring().layout()
    }

    /// Zeroes the ring memory and resets the driver state (the device must not be running).
    pub fn init(&mut self) -> Result<()> {
        each!(self, q => q.init())
    }

    /// The ring's place in memory.
    pub fn vring(&self) -> &Vring {
        each!(self, q => q.vring())
    }

    /// The queue size.
    #[inline]
    pub fn queue_size(&self) -> u16 {
        each!(self, q => q.queue_size())
    }

    /// Free descriptors.
    #[inline]
    pub fn num_free(&self) -> u16 {
        each!(self, q => q.num_free())
    }

    /// Chains added and not yet returned by the device.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        each!(self, q => q.in_flight())
    }

    /// Kicks written so far.
    pub fn kicks(&self) -> u64 {
        each!(self, q => q.kicks())
    }

    /// The device error that broke the queue, if any.
    #[inline]
    pub fn broken(&self) -> Option<&DeviceError> {
        each!(self, q => q.broken())
    }

    /// Marks the queue broken (sticky until [`Queue::init`]).
    pub fn mark_broken(&mut self, e: DeviceError) {
        each!(self, q => q.mark_broken(e))
    }

    /// Uses VIRTIO_RING_F_EVENT_IDX semantics or not.
    pub fn set_event_idx(&mut self, on: bool) {
        each!(self, q => q.set_event_idx(on))
    }

    /// Accepts VIRTIO_F_IN_ORDER batches (one used entry for several buffers) or not.
    pub fn set_in_order(&mut self, on: bool) {
        each!(self, q => q.set_in_order(on))
    }

    /// Sets when to kick.
    pub fn set_kick(&mut self, kick: Kick) {
        each!(self, q => q.set_kick(kick))
    }

    /// Whether a used len is checked on chains without writable buffers.
    pub fn set_strict_len(&mut self, strict: bool) {
        each!(self, q => q.set_strict_len(strict))
    }

    /// Asks the device for no interrupts (`true`) or for interrupts (`false`).
    pub fn set_no_interrupt(&mut self, on: bool) {
        each!(self, q => q.set_no_interrupt(on))
    }

    /// Places the indirect tables at `offset` ([`indirect_area_size`] bytes).
    pub fn set_indirect_area(&mut self, offset: u64, max_entries: u16) -> Result<()> {
        each!(self, q => q.set_indirect_area(offset, max_entries))
    }

    /// Adds a chain of direct descriptors (visible after [`Queue::publish`]); returns its id.
    pub fn add_chain(&mut self, segs: &[Seg]) -> Result<u16> {
        each!(self, q => q.add_chain(segs))
    }

    /// Adds one buffer as a one-descriptor chain; returns its id.
    #[inline]
    pub fn add_buf(&mut self, gpa: u64, len: u32, writable: bool) -> Result<u16> {
        each!(self, q => q.add_buf(gpa, len, writable))
    }

    /// Adds a chain as one descriptor pointing to an indirect table; returns its id.
    pub fn add_chain_indirect(&mut self, segs: &[Seg]) -> Result<u16> {
        each!(self, q => q.add_chain_indirect(segs))
    }

    /// Makes every chain added so far visible to the device (one `Release` store).
    #[inline]
    pub fn publish(&mut self) {
        each!(self, q => q.publish())
    }

    /// Whether the device wants a kick for what was published since the last decision.
    #[inline]
    pub fn needs_kick(&mut self) -> bool {
        each!(self, q => q.needs_kick())
    }

    /// Writes 1 to `kick` when [`Queue::needs_kick`] says so; returns whether it did.
    #[inline]
    pub fn kick_if_needed(&mut self, kick: &EventFd) -> Result<bool> {
        each!(self, q => q.kick_if_needed(kick))
    }

    /// Reads what the device returned (once) and returns how many used buffers are ready.
    #[inline]
    pub fn used_pending(&mut self) -> Result<u16> {
        each!(self, q => q.used_pending())
    }

    /// Consumes the next used buffer counted by the last [`Queue::used_pending`].
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>> {
        each!(self, q => q.pop_used())
    }

    /// Reads what the device returned once and consumes up to `out.len()` used buffers.
    #[inline]
    pub fn poll_used(&mut self, out: &mut [UsedElem]) -> Result<usize> {
        each!(self, q => q.poll_used(out))
    }

    /// Memory offset of the indirect table of chain `id` (if an indirect area is set).
    pub fn indirect_table_offset(&self, id: u16) -> Option<u64> {
        each!(self, q => q.indirect_table_offset(id))
    }
}
