//! The driver side of one split virtqueue (virtio 1.2 §2.7): descriptor allocation, the
//! available ring, the used ring, notification suppression.
//!
//! Memory ordering, per burst:
//! - descriptors and avail entries are written with `Relaxed` stores, then `avail.idx` once
//!   with `Release` ([`DriverQueue::publish`]); it pairs with the device's `Acquire` load of
//!   `avail.idx` (or its read barrier after it);
//! - `used.idx` is loaded once with `Acquire` ([`DriverQueue::used_pending`]); it pairs
//!   with the device's `Release` store after it wrote used entries and buffer data;
//! - the kick decision ([`Kick::IfNeeded`]) puts a `SeqCst` fence between the `avail.idx`
//!   store and the load of `used.flags` / `avail_event`, pairing with the device's full
//!   barrier between re-enabling notifications and re-reading `avail.idx`.
//!
//! Everything the device writes (used entries, `used.idx`) is validated before use; a
//! structural violation marks the queue broken (sticky, like Linux's `BAD_RING`) and is
//! reported as [`Error::Device`].

use std::fmt;
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};

use vmm_sys_util::eventfd::EventFd;

use super::queue::{need_event, validate_chain, write_kick};
pub use super::queue::{Kick, Seg, UsedElem};
use super::shm::atomics;
use crate::error::{DeviceError, Error, Result};
use crate::memory::SharedMemory;
use crate::vring::Vring;

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// avail.flags: the driver does not want interrupts (without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// used.flags: the device does not want kicks (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// One split-ring descriptor as it lies in memory (little endian, 16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor of the chain (with [`VIRTQ_DESC_F_NEXT`]).
    pub next: u16,
}

impl Desc {
    /// Size of a descriptor in memory.
    pub const SIZE: usize = 16;

    /// The descriptor's bytes (for writing tables by hand).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..].copy_from_slice(&self.word1().to_le_bytes());
        b
    }

    /// A descriptor from its bytes.
    pub fn from_bytes(b: [u8; 16]) -> Desc {
        let mut w0 = [0u8; 8];
        let mut w1 = [0u8; 8];
        w0.copy_from_slice(&b[..8]);
        w1.copy_from_slice(&b[8..]);
        Desc::from_words(u64::from_le_bytes(w0), u64::from_le_bytes(w1))
    }

    /// len | flags << 32 | next << 48: the second 8 bytes as a little-endian u64.
    fn word1(&self) -> u64 {
        u64::from(self.len) | u64::from(self.flags) << 32 | u64::from(self.next) << 48
    }

    fn from_words(addr: u64, w1: u64) -> Desc {
        Desc {
            addr,
            len: w1 as u32,
            flags: (w1 >> 32) as u16,
            next: (w1 >> 48) as u16,
        }
    }
}

/// Stores descriptor `i` of a table viewed as u64 words (two per descriptor).
#[inline]
fn store_desc(table: &[AtomicU64], i: usize, d: Desc) {
    // Relaxed: published by the Release store of avail.idx.
    table[2 * i].store(d.addr.to_le(), Ordering::Relaxed);
    table[2 * i + 1].store(d.word1().to_le(), Ordering::Relaxed);
}

/// Loads descriptor `i` of a table viewed as u64 words.
#[inline]
fn load_desc(table: &[AtomicU64], i: usize) -> Desc {
    Desc::from_words(
        u64::from_le(table[2 * i].load(Ordering::Relaxed)),
        u64::from_le(table[2 * i + 1].load(Ordering::Relaxed)),
    )
}

/// Atomic views of the fields of a split ring (driver and, in tests, device side).
pub(crate) struct SplitRing<'m> {
    pub(crate) size: u16,
    /// Descriptor table as u64 words, two per descriptor.
    pub(crate) desc: &'m [AtomicU64],
    pub(crate) avail_flags: &'m AtomicU16,
    pub(crate) avail_idx: &'m AtomicU16,
    pub(crate) avail_ring: &'m [AtomicU16],
    pub(crate) used_event: &'m AtomicU16,
    pub(crate) used_flags: &'m AtomicU16,
    pub(crate) used_idx: &'m AtomicU16,
    /// Used ring as u32 words: id, len per entry.
    pub(crate) used_ring: &'m [AtomicU32],
    pub(crate) avail_event: &'m AtomicU16,
}

impl fmt::Debug for SplitRing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitRing")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'m> SplitRing<'m> {
    /// Views the ring `vring` describes in `mem` (bounds and alignment checked).
    pub(crate) fn new(mem: &'m SharedMemory, vring: &Vring) -> Result<Self> {
        let n = usize::from(vring.queue_size());
        let (a, u) = (vring.avail_offset(), vring.used_offset());
        let one = |off: u64| atomics::<AtomicU16>(mem, off, 1).map(|s| &s[0]);
        Ok(SplitRing {
            size: vring.queue_size(),
            desc: atomics(mem, vring.desc_offset(), 2 * n)?,
            avail_flags: one(a)?,
            avail_idx: one(a + 2)?,
            avail_ring: atomics(mem, a + 4, n)?,
            used_event: one(a + 4 + 2 * n as u64)?,
            used_flags: one(u)?,
            used_idx: one(u + 2)?,
            used_ring: atomics(mem, u + 4, 2 * n)?,
            avail_event: one(u + 4 + 8 * n as u64)?,
        })
    }

    /// Descriptor `i` (`i < size`).
    #[inline]
    pub(crate) fn read_desc(&self, i: u16) -> Desc {
        load_desc(self.desc, usize::from(i))
    }

    /// Writes descriptor `i` (`i < size`).
    #[inline]
    pub(crate) fn write_desc(&self, i: u16, d: Desc) {
        store_desc(self.desc, usize::from(i), d)
    }
}

/// Driver bookkeeping of one descriptor index (meaningful for chain heads).
#[derive(Debug, Clone, Copy, Default)]
struct HeadState {
    /// The chain is outstanding (added, not yet returned).
    in_flight: bool,
    /// Ring descriptors the chain occupies (1 for an indirect chain).
    ndesc: u16,
    /// Last ring descriptor of the chain.
    last: u16,
    /// Total device-writable bytes.
    writable: u32,
    /// Free-running avail index the head was placed at.
    avail_pos: u16,
}

/// Preallocated indirect tables: one of `max` entries per ring descriptor (indexed by head).
struct IndirectArea<'m> {
    words: &'m [AtomicU64],
    offset: u64,
    max: u16,
}

/// The driver side of a split virtqueue living in a [`SharedMemory`].
///
/// The driver keeps its own copy of chain links and lengths (it never trusts the ring
/// memory it shares with the device). Indexes are free-running `u16` as in the spec, so
/// the queue size must be a power of two.
pub struct DriverQueue<'m> {
    mem: &'m SharedMemory,
    vring: Vring,
    ring: SplitRing<'m>,
    mask: u16,
    /// Next avail index to fill (free-running).
    next_avail: u16,
    /// avail.idx last stored.
    published: u16,
    /// avail.idx at the last kick decision.
    kick_old: u16,
    /// Next used index to consume (free-running).
    last_used: u16,
    /// used.idx as read by the last `used_pending`.
    shadow_used: u16,
    free_head: u16,
    num_free: u16,
    /// Chains added and not yet returned.
    in_flight: u16,
    /// Private chain / free-list links (the ring's `next` fields are only written).
    next: Vec<u16>,
    heads: Vec<HeadState>,
    indirect: Option<IndirectArea<'m>>,
    event_idx: bool,
    /// VIRTIO_F_IN_ORDER: a used entry may stand for every chain up to it.
    in_order: bool,
    /// With `in_order`: the head placed at each avail slot (private: the ring is shared).
    order: Vec<u16>,
    /// With `in_order`: the in-order batch being consumed: the avail index of its last
    /// chain and that chain's used entry (the one the device wrote).
    batch: Option<(u16, UsedElem)>,
    no_interrupt: bool,
    kick: Kick,
    strict_len: bool,
    broken: Option<DeviceError>,
    kicks: u64,
}

impl fmt::Debug for DriverQueue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverQueue")
            .field("vring", &self.vring)
            .field("next_avail", &self.next_avail)
            .field("published", &self.published)
            .field("last_used", &self.last_used)
            .field("num_free", &self.num_free)
            .field("in_flight", &self.in_flight)
            .field("event_idx", &self.event_idx)
            .field("in_order", &self.in_order)
            .field("kick", &self.kick)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<'m> DriverQueue<'m> {
    /// A driver queue over the ring `vring` lays out in `mem`; the ring memory is zeroed
    /// ([`DriverQueue::init`]). The queue size must be a power of two.
    pub fn new(mem: &'m SharedMemory, vring: Vring) -> Result<Self> {
        let size = vring.queue_size();
        if !size.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "driver queue size {size} is not a power of two"
            )));
        }
        let ring = SplitRing::new(mem, &vring)?;
        let mut q = DriverQueue {
            mem,
            vring,
            ring,
            mask: size - 1,
            next_avail: 0,
            published: 0,
            kick_old: 0,
            last_used: 0,
            shadow_used: 0,
            free_head: 0,
            num_free: 0,
            in_flight: 0,
            next: vec![0; usize::from(size)],
            heads: vec![HeadState::default(); usize::from(size)],
            indirect: None,
            event_idx: false,
            in_order: false,
            order: vec![0; usize::from(size)],
            batch: None,
            no_interrupt: false,
            kick: Kick::Never,
            strict_len: true,
            broken: None,
            kicks: 0,
        };
        q.init()?;
        Ok(q)
    }

    /// Zeroes the ring memory (descriptors, avail and used rings) and resets the driver
    /// state: all descriptors free, indexes 0, not broken. The device must not be running
    /// on the ring. Interrupt suppression is re-applied.
    pub fn init(&mut self) -> Result<()> {
        let start = self.vring.desc_offset();
        self.mem.fill(start, self.vring.end_offset() - start, 0)?;
        let size = self.ring.size;
        for (i, n) in self.next.iter_mut().enumerate() {
            // i + 1 <= 32768 fits a u16; the last link is never followed.
            *n = (i + 1) as u16;
        }
        self.heads.fill(HeadState::default());
        self.free_head = 0;
        self.num_free = size;
        self.in_flight = 0;
        self.next_avail = 0;
        self.published = 0;
        self.kick_old = 0;
        self.last_used = 0;
        self.shadow_used = 0;
        self.batch = None;
        self.broken = None;
        self.set_no_interrupt(self.no_interrupt);
        Ok(())
    }

    /// The ring layout.
    pub fn vring(&self) -> &Vring {
        &self.vring
    }

    /// The queue size.
    pub fn queue_size(&self) -> u16 {
        self.ring.size
    }

    /// Free descriptors.
    #[inline]
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains added and not yet returned by the device.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// The next avail index (free-running; published or not).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used index to consume (free-running).
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Kicks written so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// The device error that broke the queue, if any.
    #[inline]
    pub fn broken(&self) -> Option<&DeviceError> {
        self.broken.as_ref()
    }

    /// Marks the queue broken: later [`DriverQueue::used_pending`] / `add_chain` calls fail
    /// with `e` until [`DriverQueue::init`].
    pub fn mark_broken(&mut self, e: DeviceError) {
        tracing::warn!("virtqueue broken: {e}");
        self.broken = Some(e);
    }

    #[inline]
    fn check_broken(&self) -> Result<()> {
        match &self.broken {
            Some(e) => Err(Error::Device(e.clone())),
            None => Ok(()),
        }
    }

    /// Uses VIRTIO_RING_F_EVENT_IDX semantics (used_event / avail_event) or not.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
        self.set_no_interrupt(self.no_interrupt);
    }

    /// Accepts VIRTIO_F_IN_ORDER batches or not (off by default): with it, a used entry
    /// whose id is not the oldest outstanding chain stands for every chain from the oldest
    /// up to it (the device skipped the entries of the others and moved used.idx past them,
    /// virtio 1.2 §2.7.9). Those others come back with their whole writable length as used
    /// len (the device does not say; Linux assumes the same).
    pub fn set_in_order(&mut self, on: bool) {
        if on && !self.in_order {
            // Chains added before: their heads by avail slot.
            for (head, h) in self.heads.iter().enumerate().filter(|(_, h)| h.in_flight) {
                // head < queue size <= 32768.
                self.order[usize::from(h.avail_pos & self.mask)] = head as u16;
            }
        }
        self.in_order = on;
        self.batch = None;
    }

    /// Sets when to kick ([`Kick::Never`] by default).
    pub fn set_kick(&mut self, kick: Kick) {
        self.kick = kick;
    }

    /// With `strict` (the default) a used len larger than the chain's writable bytes is an
    /// error even for chains without writable buffers (TX: the device must write len 0);
    /// without it such chains accept any len.
    pub fn set_strict_len(&mut self, strict: bool) {
        self.strict_len = strict;
    }

    /// Bytes of an indirect area for a queue of `queue_size` with tables of `max_entries`.
    pub fn indirect_area_size(queue_size: u16, max_entries: u16) -> u64 {
        super::queue::indirect_area_size(queue_size, max_entries)
    }

    /// Places the indirect tables at `offset` in the memory (8-aligned,
    /// [`DriverQueue::indirect_area_size`] bytes): one table of up to `max_entries`
    /// (1..=queue size) per head.
    pub fn set_indirect_area(&mut self, offset: u64, max_entries: u16) -> Result<()> {
        if max_entries == 0 || max_entries > self.ring.size {
            return Err(Error::InvalidArgument(format!(
                "indirect table of {max_entries} entries for queue size {}",
                self.ring.size
            )));
        }
        let words = usize::from(self.ring.size) * usize::from(max_entries) * 2;
        self.indirect = Some(IndirectArea {
            words: atomics(self.mem, offset, words)?,
            offset,
            max: max_entries,
        });
        Ok(())
    }

    fn seg_desc(s: &Seg, next: Option<u16>) -> Desc {
        let mut flags = if s.writable { VIRTQ_DESC_F_WRITE } else { 0 };
        if next.is_some() {
            flags |= VIRTQ_DESC_F_NEXT;
        }
        Desc {
            addr: s.gpa,
            len: s.len,
            flags,
            next: next.unwrap_or(0),
        }
    }

    /// Takes the free descriptor `head` as a one-descriptor chain (a single buffer, or an
    /// indirect table) and records it in flight; `writable` is its device-writable length.
    #[inline]
    fn claim_single(&mut self, head: u16, writable: u32) {
        self.free_head = self.next[usize::from(head)];
        self.num_free -= 1;
        self.push_head(
            head,
            HeadState {
                in_flight: true,
                ndesc: 1,
                last: head,
                writable,
                avail_pos: 0,
            },
        );
    }

    /// Puts `head` in the next avail slot (not yet published) and records it.
    #[inline]
    fn push_head(&mut self, head: u16, state: HeadState) {
        self.heads[usize::from(head)] = HeadState {
            avail_pos: self.next_avail,
            ..state
        };
        let slot = usize::from(self.next_avail & self.mask);
        if self.in_order {
            self.order[slot] = head;
        }
        // Relaxed: published by the Release store of avail.idx in `publish`.
        self.ring.avail_ring[slot].store(head.to_le(), Ordering::Relaxed);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.in_flight += 1;
    }

    /// Adds a chain of direct descriptors (NEXT-linked) and puts its head in the avail ring;
    /// visible to the device after [`DriverQueue::publish`]. Returns the head.
    ///
    /// Readable buffers must precede writable ones. [`Error::QueueFull`] when fewer than
    /// `segs.len()` descriptors are free.
    pub fn add_chain(&mut self, segs: &[Seg]) -> Result<u16> {
        self.check_broken()?;
        let writable = validate_chain(segs, self.ring.size)?;
        let n = segs.len() as u16; // <= size (validated)
        if n > self.num_free {
            return Err(Error::QueueFull {
                needed: n,
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let mut i = head;
        let mut last = head;
        for (k, s) in segs.iter().enumerate() {
            let next = self.next[usize::from(i)];
            let link = (k + 1 < segs.len()).then_some(next);
            self.ring.write_desc(i, Self::seg_desc(s, link));
            last = i;
            i = next;
        }
        self.free_head = i;
        self.num_free -= n;
        self.push_head(
            head,
            HeadState {
                in_flight: true,
                ndesc: n,
                last,
                writable,
                avail_pos: 0,
            },
        );
        Ok(head)
    }

    /// Adds one buffer as a one-descriptor chain and puts it in the avail ring (visible after
    /// [`DriverQueue::publish`]); returns the head. The zero-copy fast path of
    /// [`DriverQueue::add_chain`]: no segment list to validate, nothing allocated, and the
    /// descriptor is only stored when it differs from what the table already holds.
    /// [`Error::QueueFull`] when no descriptor is free.
    #[inline]
    pub fn add_buf(&mut self, gpa: u64, len: u32, writable: bool) -> Result<u16> {
        self.check_broken()?;
        if self.num_free == 0 {
            return Err(Error::QueueFull { needed: 1, free: 0 });
        }
        let head = self.free_head;
        let flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
        let d = Desc {
            addr: gpa,
            len,
            flags,
            next: 0,
        };
        // A buffer reposted on the head it had keeps its descriptor: reading it is a cache
        // hit, and not rewriting it spares the device a miss on its next read.
        if self.ring.read_desc(head) != d {
            self.ring.write_desc(head, d);
        }
        self.claim_single(head, if writable { len } else { 0 });
        Ok(head)
    }

    /// Adds a chain as one ring descriptor pointing to an indirect table (in the area set by
    /// [`DriverQueue::set_indirect_area`]). Returns the head.
    pub fn add_chain_indirect(&mut self, segs: &[Seg]) -> Result<u16> {
        self.check_broken()?;
        let Some(area) = &self.indirect else {
            return Err(Error::InvalidArgument("no indirect area set".into()));
        };
        let (words, offset, max): (&'m [AtomicU64], u64, u16) = (area.words, area.offset, area.max);
        let writable = validate_chain(segs, max)?;
        if self.num_free == 0 {
            return Err(Error::QueueFull { needed: 1, free: 0 });
        }
        let head = self.free_head;
        let base = usize::from(head) * usize::from(max);
        let table = &words[2 * base..2 * (base + usize::from(max))];
        for (k, s) in segs.iter().enumerate() {
            let link = (k + 1 < segs.len()).then_some(k as u16 + 1);
            store_desc(table, k, Self::seg_desc(s, link));
        }
        let gpa = self.mem.guest_phys_addr() + offset + (base * Desc::SIZE) as u64;
        self.ring.write_desc(
            head,
            Desc {
                addr: gpa,
                len: (segs.len() * Desc::SIZE) as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        );
        self.claim_single(head, writable);
        Ok(head)
    }

    /// Makes every chain added so far visible to the device: one `Release` store of
    /// avail.idx (pairs with the device's `Acquire` load of it).
    #[inline]
    pub fn publish(&mut self) {
        if self.published != self.next_avail {
            self.ring
                .avail_idx
                .store(self.next_avail.to_le(), Ordering::Release);
            self.published = self.next_avail;
        }
    }

    /// Whether the device wants a kick for what was published since the last decision
    /// (per the [`Kick`] mode). Resets the "published since" window.
    #[inline]
    pub fn needs_kick(&mut self) -> bool {
        let new = self.published;
        let old = std::mem::replace(&mut self.kick_old, new);
        match self.kick {
            Kick::Never => false,
            Kick::Always => true,
            Kick::IfNeeded => {
                if new == old {
                    return false;
                }
                // Orders the avail.idx store before the loads below; pairs with the device's
                // full barrier between writing used.flags/avail_event and re-reading
                // avail.idx (virtio 1.2 §2.7.10).
                fence(Ordering::SeqCst);
                if self.event_idx {
                    let event = u16::from_le(self.ring.avail_event.load(Ordering::Relaxed));
                    need_event(event, new, old)
                } else {
                    let flags = u16::from_le(self.ring.used_flags.load(Ordering::Relaxed));
                    flags & VRING_USED_F_NO_NOTIFY == 0
                }
            }
        }
    }

    /// Writes 1 to `kick` when [`DriverQueue::needs_kick`] says so; returns whether it did.
    /// A full eventfd counter (EAGAIN) counts as kicked: the device has a kick pending.
    #[inline]
    pub fn kick_if_needed(&mut self, kick: &EventFd) -> Result<bool> {
        if !self.needs_kick() {
            return Ok(false);
        }
        write_kick(kick)?;
        self.kicks += 1;
        Ok(true)
    }

    /// Asks the device for no interrupts (`true`) or for interrupts (`false`): avail.flags
    /// `VRING_AVAIL_F_NO_INTERRUPT` without EVENT_IDX; with it, avail.flags 0 and used_event
    /// set behind `last_used` (never reached) or at `last_used` (next entry), refreshed
    /// after each drained poll.
    pub fn set_no_interrupt(&mut self, on: bool) {
        self.no_interrupt = on;
        // Relaxed: a hint the device reads at its own pace; a driver sleeping on interrupts
        // would need a full fence and a used.idx re-check after this (we poll).
        if self.event_idx {
            self.ring.avail_flags.store(0, Ordering::Relaxed);
            self.write_used_event();
        } else {
            let flags = if on { VRING_AVAIL_F_NO_INTERRUPT } else { 0 };
            self.ring
                .avail_flags
                .store(flags.to_le(), Ordering::Relaxed);
        }
    }

    #[inline]
    fn write_used_event(&self) {
        let event = if self.no_interrupt {
            self.last_used.wrapping_sub(1)
        } else {
            self.last_used
        };
        // Relaxed: see `set_no_interrupt`.
        self.ring.used_event.store(event.to_le(), Ordering::Relaxed);
    }

    /// Reads used.idx (`Acquire`, once) and returns how many used entries are ready.
    /// used.idx further than the published chains in flight breaks the queue.
    #[inline]
    pub fn used_pending(&mut self) -> Result<u16> {
        self.check_broken()?;
        // Acquire: pairs with the device's Release store of used.idx; the entries and the
        // buffer data it wrote before are visible after this load.
        let idx = u16::from_le(self.ring.used_idx.load(Ordering::Acquire));
        let ahead = idx.wrapping_sub(self.last_used);
        let unpublished = self.next_avail.wrapping_sub(self.published);
        let limit = self.in_flight.saturating_sub(unpublished);
        if ahead > limit {
            let e = DeviceError::UsedIdxAhead {
                used_idx: idx,
                last_used: self.last_used,
                ahead,
                in_flight: limit,
            };
            self.mark_broken(e.clone());
            return Err(e.into());
        }
        self.shadow_used = idx;
        Ok(ahead)
    }

    /// Reads and validates the next used entry counted by the last `used_pending`, without
    /// consuming it. `IN_ORDER` is `self.in_order` (a parameter so that the checks for
    /// batches compile away without it): an in-order batch is noted in `batch` and handed
    /// out chain by chain.
    #[inline]
    fn peek_used<const IN_ORDER: bool>(
        &mut self,
    ) -> std::result::Result<Option<UsedElem>, DeviceError> {
        if self.last_used == self.shadow_used {
            return Ok(None);
        }
        if IN_ORDER {
            if let Some(batch) = self.batch {
                return self.batch_next(batch);
            }
        }
        let slot = usize::from(self.last_used & self.mask);
        // Relaxed: ordered after the Acquire load of used.idx in `used_pending`. Each field
        // is read once, then validated.
        let id = u32::from_le(self.ring.used_ring[2 * slot].load(Ordering::Relaxed));
        let len = u32::from_le(self.ring.used_ring[2 * slot + 1].load(Ordering::Relaxed));
        let Some((id, h)) = u16::try_from(id)
            .ok()
            .and_then(|i| self.heads.get(usize::from(i)).map(|h| (i, *h)))
        else {
            return Err(DeviceError::IdOutOfRange {
                id,
                queue_size: self.ring.size,
            });
        };
        let unpublished = self.next_avail.wrapping_sub(self.published);
        let published = self.next_avail.wrapping_sub(h.avail_pos) > unpublished;
        if !h.in_flight || !published {
            return Err(DeviceError::NotOutstanding { id });
        }
        let elem = UsedElem { id, len };
        if IN_ORDER && h.avail_pos != self.last_used {
            return self.start_batch(elem, h.avail_pos);
        }
        self.check_len(elem, h.writable)
    }

    /// IN_ORDER: `elem` (its chain placed at avail index `end`) stands for the chains from
    /// `last_used` up to it; used.idx must count them all. (Chains before `last_used` are
    /// not in flight any more.)
    fn start_batch(
        &mut self,
        elem: UsedElem,
        end: u16,
    ) -> std::result::Result<Option<UsedElem>, DeviceError> {
        let batch = end.wrapping_sub(self.last_used).wrapping_add(1);
        let returned = self.shadow_used.wrapping_sub(self.last_used);
        if batch > returned {
            return Err(DeviceError::InOrderBatchTooLong {
                id: elem.id,
                batch,
                returned,
            });
        }
        self.batch = Some((end, elem));
        self.batch_next((end, elem))
    }

    /// The next chain of the in-order batch `(end, last)`: the oldest one, used whole (see
    /// `set_in_order`), or at `end` the one the device named.
    fn batch_next(
        &self,
        (end, last): (u16, UsedElem),
    ) -> std::result::Result<Option<UsedElem>, DeviceError> {
        if self.last_used == end {
            let h = self.heads[usize::from(last.id)];
            return self.check_len(last, h.writable);
        }
        let id = self.order[usize::from(self.last_used & self.mask)];
        let len = self.heads[usize::from(id)].writable;
        Ok(Some(UsedElem { id, len }))
    }

    /// `elem` if its len fits the chain's `writable` bytes (see `set_strict_len`).
    #[inline]
    fn check_len(
        &self,
        elem: UsedElem,
        writable: u32,
    ) -> std::result::Result<Option<UsedElem>, DeviceError> {
        if elem.len > writable && (self.strict_len || writable > 0) {
            return Err(DeviceError::LenTooLarge {
                id: elem.id,
                len: elem.len,
                max: writable,
            });
        }
        Ok(Some(elem))
    }

    /// Returns chain `id` to the free list and advances `last_used` (`IN_ORDER` as for
    /// `peek_used`).
    #[inline]
    fn consume<const IN_ORDER: bool>(&mut self, id: u16) {
        let h = &mut self.heads[usize::from(id)];
        h.in_flight = false;
        let (ndesc, last) = (h.ndesc, h.last);
        self.next[usize::from(last)] = self.free_head;
        self.free_head = id;
        self.num_free += ndesc;
        self.in_flight -= 1;
        if IN_ORDER && matches!(self.batch, Some((end, _)) if end == self.last_used) {
            self.batch = None;
        }
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.last_used == self.shadow_used {
            self.write_used_event();
        }
    }

    /// Applies a device error found by `peek_used`: a bad len returns the chain (so that
    /// the caller can recycle `id`'s buffers); anything else breaks the queue.
    fn fail<const IN_ORDER: bool>(&mut self, e: DeviceError) -> Error {
        match e {
            DeviceError::LenTooLarge { id, .. } => self.consume::<IN_ORDER>(id),
            _ => self.mark_broken(e.clone()),
        }
        Error::Device(e)
    }

    /// Consumes the next used entry counted by the last [`DriverQueue::used_pending`]
    /// (`None` when they are all consumed; used.idx is not re-read).
    ///
    /// A used len larger than the chain's writable bytes returns the chain and fails with
    /// [`DeviceError::LenTooLarge`] (naming the head); other violations break the queue.
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>> {
        if self.in_order {
            self.pop_used_as::<true>()
        } else {
            self.pop_used_as::<false>()
        }
    }

    #[inline]
    fn pop_used_as<const IN_ORDER: bool>(&mut self) -> Result<Option<UsedElem>> {
        self.check_broken()?;
        match self.peek_used::<IN_ORDER>() {
            Ok(Some(u)) => {
                self.consume::<IN_ORDER>(u.id);
                Ok(Some(u))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail::<IN_ORDER>(e)),
        }
    }

    /// Reads used.idx once and consumes up to `out.len()` used entries into `out`; returns
    /// how many. Entries before an invalid one are returned first; the invalid one fails
    /// the next call (see [`DriverQueue::pop_used`]).
    #[inline]
    pub fn poll_used(&mut self, out: &mut [UsedElem]) -> Result<usize> {
        self.used_pending()?;
        if self.in_order {
            self.poll_used_as::<true>(out)
        } else {
            self.poll_used_as::<false>(out)
        }
    }

    #[inline]
    fn poll_used_as<const IN_ORDER: bool>(&mut self, out: &mut [UsedElem]) -> Result<usize> {
        let mut n = 0;
        while n < out.len() {
            match self.peek_used::<IN_ORDER>() {
                Ok(Some(u)) => {
                    self.consume::<IN_ORDER>(u.id);
                    out[n] = u;
                    n += 1;
                }
                Ok(None) => break,
                Err(_) if n > 0 => break,
                Err(e) => return Err(self.fail::<IN_ORDER>(e)),
            }
        }
        Ok(n)
    }

    /// The ring descriptors of outstanding chain `head`, in chain order (empty if `head` is
    /// not outstanding). From the driver's private links, not from ring memory.
    pub fn chain(&self, head: u16) -> impl Iterator<Item = u16> + '_ {
        let h = self
            .heads
            .get(usize::from(head))
            .copied()
            .unwrap_or_default();
        let n = if h.in_flight { h.ndesc } else { 0 };
        std::iter::successors(Some(head), |&i| self.next.get(usize::from(i)).copied())
            .take(usize::from(n))
    }

    /// Memory offset of the indirect table of `head` (if an indirect area is set).
    pub fn indirect_table_offset(&self, head: u16) -> Option<u64> {
        let area = self.indirect.as_ref()?;
        (head < self.ring.size)
            .then(|| area.offset + u64::from(head) * u64::from(area.max) * Desc::SIZE as u64)
    }

    fn check_index(&self, i: u16, what: &str) -> Result<()> {
        if i < self.ring.size {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "{what} {i} out of range for queue size {}",
                self.ring.size
            )))
        }
    }

    /// Hostile tests: overwrites ring descriptor `i` with anything (loops, bad addresses,
    /// huge lengths, nested INDIRECT...). The driver's bookkeeping is unchanged.
    pub fn raw_write_desc(&self, i: u16, d: Desc) -> Result<()> {
        self.check_index(i, "descriptor")?;
        self.ring.write_desc(i, d);
        Ok(())
    }

    /// Reads ring descriptor `i` as it is in memory.
    pub fn raw_read_desc(&self, i: u16) -> Result<Desc> {
        self.check_index(i, "descriptor")?;
        Ok(self.ring.read_desc(i))
    }

    /// Hostile tests: overwrites entry `k` of `head`'s indirect table.
    pub fn raw_write_indirect(&self, head: u16, k: u16, d: Desc) -> Result<()> {
        self.check_index(head, "descriptor")?;
        let Some(area) = &self.indirect else {
            return Err(Error::InvalidArgument("no indirect area set".into()));
        };
        if k >= area.max {
            return Err(Error::InvalidArgument(format!(
                "indirect entry {k} beyond {} entries",
                area.max
            )));
        }
        let i = usize::from(head) * usize::from(area.max) + usize::from(k);
        store_desc(area.words, i, d);
        Ok(())
    }

    /// Hostile tests: writes `head` (any value) into avail ring slot `slot`.
    pub fn raw_write_avail(&self, slot: u16, head: u16) -> Result<()> {
        self.check_index(slot, "avail slot")?;
        self.ring.avail_ring[usize::from(slot)].store(head.to_le(), Ordering::Relaxed);
        Ok(())
    }

    /// Hostile tests: puts `head` (any value) in the next avail slot and advances the
    /// avail index without bookkeeping (published by the next [`DriverQueue::publish`]).
    /// A head that is not outstanding is reported as a device error when it comes back.
    pub fn raw_push_avail(&mut self, head: u16) {
        self.ring.avail_ring[usize::from(self.next_avail & self.mask)]
            .store(head.to_le(), Ordering::Relaxed);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Hostile tests: stores avail.idx = `idx` (`Release`), e.g. jumping by more than the
    /// queue size. The driver's own indexes are unchanged.
    pub fn raw_set_avail_idx(&self, idx: u16) {
        self.ring.avail_idx.store(idx.to_le(), Ordering::Release);
    }

    /// Hostile tests: stores avail.flags = `flags`.
    pub fn raw_set_avail_flags(&self, flags: u16) {
        self.ring
            .avail_flags
            .store(flags.to_le(), Ordering::Relaxed);
    }

    /// used.flags as the device last wrote it.
    pub fn used_flags(&self) -> u16 {
        u16::from_le(self.ring.used_flags.load(Ordering::Relaxed))
    }

    /// avail_event (EVENT_IDX) as the device last wrote it.
    pub fn avail_event(&self) -> u16 {
        u16::from_le(self.ring.avail_event.load(Ordering::Relaxed))
    }
}
