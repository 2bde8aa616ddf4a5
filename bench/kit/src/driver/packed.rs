//! The driver side of one packed virtqueue (virtio 1.2 §2.8): one descriptor ring that both
//! sides write, avail/used flag bits against wrap counters, buffer ids, event suppression.
//!
//! The driver makes a chain available by writing its descriptors in consecutive ring slots
//! (NEXT on all but the last; every descriptor carries the buffer id, as Linux writes it,
//! the device reads it from the last) with AVAIL = its wrap counter and USED = the inverse.
//! The device returns a chain by writing one used descriptor (id, len, AVAIL = USED = its
//! wrap counter) at its own used position, then skipping as many slots as the chain had
//! descriptors; the driver detects it by those two bits equal to the wrap counter it
//! expects there, and knows the skip from the id.
//!
//! Memory ordering, per burst:
//! - every descriptor of the burst is written with `Relaxed` stores except the second
//!   word (len, id, flags) of the burst's first descriptor, which [`PackedQueue::publish`]
//!   stores last with `Release`: the device cannot see any descriptor of the burst before
//!   that one (it reads the ring in order), and its `Acquire` load of those flags (or its
//!   read barrier after them) makes all the others visible;
//! - a used descriptor's second word is loaded with `Acquire` (flags, id and len in one
//!   load), pairing with the device's `Release` store of its flags (or its write barrier
//!   before them), after which the buffer data it wrote is visible;
//! - the kick decision puts a `SeqCst` fence between the head store and the load of the
//!   device event suppression area, pairing with the device's full barrier between
//!   enabling notifications there and re-reading the ring (virtio 1.2 §2.8.21.3).
//!
//! VIRTIO_F_IN_ORDER ([`PackedQueue::set_in_order`]): the device may write one used
//! descriptor for a batch, with the id of the batch's last buffer, at the batch's first
//! slot; every buffer made available before it is used too (virtio 1.2 §2.8.23).
//!
//! What the device writes is validated before use, as on split rings: a used id out of
//! range, not outstanding or not yet published breaks the queue (sticky); a len beyond the
//! chain's writable bytes returns the chain with an error.

use std::fmt;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use vmm_sys_util::eventfd::EventFd;

use super::queue::{need_event, validate_chain, write_kick, Kick, Seg, UsedElem};
use super::shm::atomics;
use crate::error::{DeviceError, Error, Result};
use crate::memory::SharedMemory;
use crate::vring::{packed_base, Vring};

/// Descriptor flag: the chain continues in the next slot.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Descriptor flag: available (equal to the driver's wrap counter when made available).
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// Descriptor flag: used (equal to AVAIL once the device used the descriptor).
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;
/// Event suppression flags: notify on every event.
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression flags: do not notify.
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression flags: notify when the descriptor at `off_wrap` is reached (needs
/// VIRTIO_RING_F_EVENT_IDX).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;

/// One packed descriptor as it lies in memory (little endian, 16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedDesc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer (used descriptor: bytes written).
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// `VIRTQ_DESC_F_*` flags, AVAIL and USED included.
    pub flags: u16,
}

impl PackedDesc {
    /// Size of a descriptor in memory.
    pub const SIZE: usize = 16;

    /// The descriptor's bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..].copy_from_slice(&self.word1().to_le_bytes());
        b
    }

    /// A descriptor from its bytes.
    pub fn from_bytes(b: [u8; 16]) -> PackedDesc {
        let mut w0 = [0u8; 8];
        let mut w1 = [0u8; 8];
        w0.copy_from_slice(&b[..8]);
        w1.copy_from_slice(&b[8..]);
        PackedDesc::from_words(u64::from_le_bytes(w0), u64::from_le_bytes(w1))
    }

    /// len | id << 32 | flags << 48: the second 8 bytes as a little-endian u64.
    pub(crate) fn word1(&self) -> u64 {
        u64::from(self.len) | u64::from(self.id) << 32 | u64::from(self.flags) << 48
    }

    pub(crate) fn from_words(addr: u64, w1: u64) -> PackedDesc {
        PackedDesc {
            addr,
            len: w1 as u32,
            id: (w1 >> 32) as u16,
            flags: (w1 >> 48) as u16,
        }
    }
}

/// AVAIL and USED bits that make a descriptor available in the lap of wrap counter `wrap`
/// (AVAIL = wrap, USED = !wrap; computed without a branch: it is per descriptor).
#[inline]
pub(crate) const fn avail_bits(wrap: bool) -> u16 {
    (wrap as u16) << 7 | (!wrap as u16) << 15
}

/// AVAIL and USED bits of a used descriptor written in the lap of wrap counter `wrap`
/// (both = wrap).
#[inline]
pub(crate) const fn used_bits(wrap: bool) -> u16 {
    (wrap as u16) * (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)
}

/// Whether `flags` mark a descriptor available for a device at wrap counter `wrap`.
#[inline]
pub(crate) const fn is_avail(flags: u16, wrap: bool) -> bool {
    flags & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) == avail_bits(wrap)
}

/// Whether `flags` mark a descriptor used for a driver expecting wrap counter `wrap`.
#[inline]
pub(crate) const fn is_used(flags: u16, wrap: bool) -> bool {
    flags & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) == used_bits(wrap)
}

/// An event suppression area's two fields as one little-endian u32.
#[inline]
pub(crate) fn event_word(off_wrap: u16, flags: u16) -> u32 {
    (u32::from(off_wrap) | u32::from(flags) << 16).to_le()
}

/// (off_wrap, flags) of an event suppression area's u32.
#[inline]
pub(crate) fn event_fields(word: u32) -> (u16, u16) {
    let w = u32::from_le(word);
    (w as u16, (w >> 16) as u16)
}

/// Atomic views of a packed ring (driver and, in tests and the null device, device side).
pub(crate) struct PackedRing<'m> {
    pub(crate) size: u16,
    /// Descriptor ring as u64 words, two per descriptor.
    pub(crate) desc: &'m [AtomicU64],
    /// Driver event suppression area (off_wrap | flags << 16): the driver writes it.
    pub(crate) driver_event: &'m AtomicU32,
    /// Device event suppression area: the device writes it.
    pub(crate) device_event: &'m AtomicU32,
}

impl fmt::Debug for PackedRing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedRing")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'m> PackedRing<'m> {
    /// Views the packed ring `vring` describes in `mem` (bounds and alignment checked).
    pub(crate) fn new(mem: &'m SharedMemory, vring: &Vring) -> Result<Self> {
        if !vring.is_packed() {
            return Err(Error::InvalidArgument(
                "a packed queue needs a packed ring layout (Vring::new_packed)".into(),
            ));
        }
        let n = usize::from(vring.queue_size());
        let one = |off: u64| atomics::<AtomicU32>(mem, off, 1).map(|s| &s[0]);
        Ok(PackedRing {
            size: vring.queue_size(),
            desc: atomics(mem, vring.desc_offset(), 2 * n)?,
            driver_event: one(vring.avail_offset())?,
            device_event: one(vring.used_offset())?,
        })
    }

    /// Descriptor `i` (`i < size`), both words `Relaxed`.
    #[inline]
    pub(crate) fn read_desc(&self, i: u16) -> PackedDesc {
        let i = usize::from(i);
        PackedDesc::from_words(
            u64::from_le(self.desc[2 * i].load(Ordering::Relaxed)),
            u64::from_le(self.desc[2 * i + 1].load(Ordering::Relaxed)),
        )
    }

    /// The second word (len, id, flags) of descriptor `i`, `Acquire`: what the other side
    /// wrote before releasing these flags is visible after it.
    #[inline]
    pub(crate) fn load_word1(&self, i: u16) -> u64 {
        u64::from_le(self.desc[2 * usize::from(i) + 1].load(Ordering::Acquire))
    }

    /// Writes descriptor `i`: the address `Relaxed`, then len, id and flags in one
    /// `Release` store (the whole descriptor is visible to whoever sees the flags).
    #[inline]
    pub(crate) fn write_desc(&self, i: u16, d: PackedDesc) {
        let i = usize::from(i);
        self.desc[2 * i].store(d.addr.to_le(), Ordering::Relaxed);
        self.desc[2 * i + 1].store(d.word1().to_le(), Ordering::Release);
    }
}

/// Driver bookkeeping of one buffer id.
#[derive(Debug, Clone, Copy, Default)]
struct IdState {
    state: IdPhase,
    /// Ring descriptors the chain occupies (1 for an indirect chain).
    ndesc: u16,
    /// Total device-writable bytes.
    writable: u32,
    /// Free-running count of chains added before this one (tells published from not).
    seq: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum IdPhase {
    #[default]
    Free,
    /// Added, not yet seen used.
    Outstanding,
    /// Seen used by `used_pending`, not yet consumed.
    Used,
}

/// Preallocated indirect tables: one of `max` entries per buffer id.
struct IndirectArea<'m> {
    words: &'m [AtomicU64],
    offset: u64,
    max: u16,
}

/// A ring of `u16`s or `UsedElem`s of fixed capacity (FIFO), preallocated.
#[derive(Debug)]
struct Fifo<T> {
    items: Vec<T>,
    head: usize,
    len: usize,
}

impl<T: Copy + Default> Fifo<T> {
    fn new(capacity: usize) -> Self {
        Fifo {
            items: vec![T::default(); capacity],
            head: 0,
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Appends (the caller keeps `len` within the capacity).
    #[inline]
    fn push(&mut self, v: T) {
        let cap = self.items.len();
        let mut at = self.head + self.len;
        if at >= cap {
            at -= cap;
        }
        self.items[at] = v;
        self.len += 1;
    }

    #[inline]
    fn front(&self) -> Option<T> {
        (self.len > 0).then(|| self.items[self.head])
    }

    #[inline]
    fn pop(&mut self) -> Option<T> {
        let v = self.front()?;
        self.head += 1;
        if self.head == self.items.len() {
            self.head = 0;
        }
        self.len -= 1;
        Some(v)
    }
}

/// The driver side of a packed virtqueue living in a [`SharedMemory`] (see the module docs).
///
/// Buffer ids are the queue's own (0..queue size), handed out per chain and taken back
/// when the device returns it; the driver keeps each chain's length and writable bytes
/// privately and never trusts the ring memory it shares with the device.
pub struct PackedQueue<'m> {
    mem: &'m SharedMemory,
    vring: Vring,
    ring: PackedRing<'m>,
    /// Next slot to make available, and the wrap counter of that lap.
    next_avail: u16,
    avail_wrap: bool,
    /// Slot and wrap counter after the last publication.
    published_pos: (u16, bool),
    /// The burst's first descriptor: index of its second word and the value held back.
    head: Option<(usize, u64)>,
    num_free: u16,
    /// Chains added so far (free-running) and as of the last publication.
    add_seq: u16,
    published_seq: u16,
    /// Descriptors added since the last publication, and published since the last kick
    /// decision.
    unpublished_descs: u32,
    kick_added: u32,
    /// Next slot where a used descriptor is expected, and the wrap counter there.
    used_pos: u16,
    used_wrap: bool,
    ids: Vec<IdState>,
    free_ids: Vec<u16>,
    /// Chains added and not yet consumed.
    in_flight: u16,
    /// With `in_order`: outstanding ids in the order they were added.
    order: Fifo<u16>,
    /// Used buffers seen by `used_pending`, not yet consumed.
    used: Fifo<UsedElem>,
    /// A device error found after the entries in `used`: reported once they are consumed.
    pending_err: Option<DeviceError>,
    indirect: Option<IndirectArea<'m>>,
    event_idx: bool,
    in_order: bool,
    no_interrupt: bool,
    kick: Kick,
    strict_len: bool,
    broken: Option<DeviceError>,
    kicks: u64,
}

impl fmt::Debug for PackedQueue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedQueue")
            .field("vring", &self.vring)
            .field("next_avail", &(self.next_avail, self.avail_wrap))
            .field("used_pos", &(self.used_pos, self.used_wrap))
            .field("num_free", &self.num_free)
            .field("in_flight", &self.in_flight)
            .field("event_idx", &self.event_idx)
            .field("in_order", &self.in_order)
            .field("kick", &self.kick)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<'m> PackedQueue<'m> {
    /// A driver queue over the packed ring `vring` lays out in `mem` ([`Vring::new_packed`]);
    /// the ring memory is zeroed ([`PackedQueue::init`]).
    pub fn new(mem: &'m SharedMemory, vring: Vring) -> Result<Self> {
        let ring = PackedRing::new(mem, &vring)?;
        let n = usize::from(vring.queue_size());
        let mut q = PackedQueue {
            mem,
            vring,
            ring,
            next_avail: 0,
            avail_wrap: true,
            published_pos: (0, true),
            head: None,
            num_free: 0,
            add_seq: 0,
            published_seq: 0,
            unpublished_descs: 0,
            kick_added: 0,
            used_pos: 0,
            used_wrap: true,
            ids: vec![IdState::default(); n],
            free_ids: Vec::with_capacity(n),
            in_flight: 0,
            order: Fifo::new(n),
            used: Fifo::new(n),
            pending_err: None,
            indirect: None,
            event_idx: false,
            in_order: false,
            no_interrupt: false,
            kick: Kick::Never,
            strict_len: true,
            broken: None,
            kicks: 0,
        };
        q.init()?;
        Ok(q)
    }

    /// Zeroes the ring memory (descriptors and both event areas) and resets the driver
    /// state: every descriptor and id free, both positions at slot 0 with wrap counter 1,
    /// not broken. The device must not be running on the ring. Interrupt suppression is
    /// re-applied.
    pub fn init(&mut self) -> Result<()> {
        let start = self.vring.desc_offset();
        self.mem.fill(start, self.vring.end_offset() - start, 0)?;
        let size = self.ring.size;
        self.next_avail = 0;
        self.avail_wrap = true;
        self.published_pos = (0, true);
        self.head = None;
        self.num_free = size;
        self.add_seq = 0;
        self.published_seq = 0;
        self.unpublished_descs = 0;
        self.kick_added = 0;
        self.used_pos = 0;
        self.used_wrap = true;
        self.ids.fill(IdState::default());
        self.free_ids.clear();
        // Popped from the end: ids are handed out 0, 1, 2... on a fresh queue.
        self.free_ids.extend((0..size).rev());
        self.in_flight = 0;
        self.order.clear();
        self.used.clear();
        self.pending_err = None;
        self.broken = None;
        self.write_driver_event();
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

    /// The next slot to make available and its wrap counter.
    pub fn next_avail(&self) -> (u16, bool) {
        (self.next_avail, self.avail_wrap)
    }

    /// The slot where the next used descriptor is expected and its wrap counter.
    pub fn next_used(&self) -> (u16, bool) {
        (self.used_pos, self.used_wrap)
    }

    /// The SET_VRING_BASE value that resumes the ring where the driver is (index and wrap
    /// counter of the next slot to make available; meaningful once nothing is in flight).
    pub fn base(&self) -> u32 {
        packed_base(self.next_avail, self.avail_wrap)
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

    /// Marks the queue broken: later `used_pending` / `add_*` calls fail with `e` until
    /// [`PackedQueue::init`].
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

    /// Uses VIRTIO_RING_F_EVENT_IDX semantics (event offsets in both suppression areas) or
    /// not.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
        self.write_driver_event();
    }

    /// Accepts VIRTIO_F_IN_ORDER batches or not (off by default): with it, a used
    /// descriptor stands for every outstanding buffer made available up to the one it
    /// names. Those before it come back with their whole writable length as used len (the
    /// device does not say; Linux assumes the same).
    pub fn set_in_order(&mut self, on: bool) {
        if on && !self.in_order {
            self.order.clear();
            // Outstanding chains go in, oldest first, if any were added before.
            let mut outstanding: Vec<(u16, u16)> = (0..self.ring.size)
                .filter(|&i| self.ids[usize::from(i)].state == IdPhase::Outstanding)
                .map(|i| (self.add_seq.wrapping_sub(self.ids[usize::from(i)].seq), i))
                .collect();
            outstanding.sort_unstable_by_key(|&(age, _)| std::cmp::Reverse(age));
            for (_, id) in outstanding {
                self.order.push(id);
            }
        }
        self.in_order = on;
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

    /// Places the indirect tables at `offset` in the memory (8-aligned,
    /// [`super::queue::indirect_area_size`] bytes): one table of up to `max_entries`
    /// (1..=queue size) per buffer id.
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

    /// Memory offset of the indirect table of buffer `id` (if an indirect area is set).
    pub fn indirect_table_offset(&self, id: u16) -> Option<u64> {
        let area = self.indirect.as_ref()?;
        (id < self.ring.size)
            .then(|| area.offset + u64::from(id) * u64::from(area.max) * PackedDesc::SIZE as u64)
    }

    /// Writes a descriptor at the next slot and moves on (wrapping flips the counter). The
    /// burst's first descriptor keeps its second word back for `publish`.
    #[inline]
    fn put(&mut self, addr: u64, word1: u64) {
        let i = 2 * usize::from(self.next_avail);
        // Relaxed: published by the Release store of the burst's head flags in `publish`.
        self.ring.desc[i].store(addr.to_le(), Ordering::Relaxed);
        if self.head.is_none() {
            self.head = Some((i + 1, word1));
        } else {
            self.ring.desc[i + 1].store(word1.to_le(), Ordering::Relaxed);
        }
        self.next_avail += 1;
        if self.next_avail == self.ring.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
    }

    /// The second word of a descriptor made available at the next slot.
    #[inline]
    fn word1(&self, len: u32, id: u16, flags: u16) -> u64 {
        PackedDesc {
            addr: 0,
            len,
            id,
            flags: flags | avail_bits(self.avail_wrap),
        }
        .word1()
    }

    /// Takes a free buffer id (there is one whenever a descriptor is free: every
    /// outstanding chain holds at least one).
    #[inline]
    fn take_id(&mut self, needed: u16) -> Result<u16> {
        if needed > self.num_free {
            return Err(Error::QueueFull {
                needed,
                free: self.num_free,
            });
        }
        self.free_ids
            .pop()
            .ok_or(Error::QueueFull { needed, free: 0 })
    }

    /// Records chain `id` of `ndesc` descriptors as outstanding.
    #[inline]
    fn claim(&mut self, id: u16, ndesc: u16, writable: u32) {
        self.ids[usize::from(id)] = IdState {
            state: IdPhase::Outstanding,
            ndesc,
            writable,
            seq: self.add_seq,
        };
        self.add_seq = self.add_seq.wrapping_add(1);
        self.num_free -= ndesc;
        self.in_flight += 1;
        self.unpublished_descs += u32::from(ndesc);
        if self.in_order {
            self.order.push(id);
        }
    }

    /// Adds a chain of direct descriptors in consecutive slots (visible to the device after
    /// [`PackedQueue::publish`]); returns its buffer id.
    ///
    /// Readable buffers must precede writable ones. [`Error::QueueFull`] when fewer than
    /// `segs.len()` descriptors are free.
    pub fn add_chain(&mut self, segs: &[Seg]) -> Result<u16> {
        self.check_broken()?;
        let writable = validate_chain(segs, self.ring.size)?;
        let n = segs.len() as u16; // <= size (validated)
        let id = self.take_id(n)?;
        for (k, s) in segs.iter().enumerate() {
            let mut flags = if s.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if k + 1 < segs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let w1 = self.word1(s.len, id, flags);
            self.put(s.gpa, w1);
        }
        self.claim(id, n, writable);
        Ok(id)
    }

    /// Adds one buffer as a one-descriptor chain (visible after [`PackedQueue::publish`]);
    /// returns its buffer id. [`Error::QueueFull`] when no descriptor is free.
    #[inline]
    pub fn add_buf(&mut self, gpa: u64, len: u32, writable: bool) -> Result<u16> {
        self.check_broken()?;
        let id = self.take_id(1)?;
        let w1 = self.word1(len, id, if writable { VIRTQ_DESC_F_WRITE } else { 0 });
        self.put(gpa, w1);
        self.claim(id, 1, if writable { len } else { 0 });
        Ok(id)
    }

    /// Adds a chain as one ring descriptor pointing to an indirect table (in the area set by
    /// [`PackedQueue::set_indirect_area`]): the table's entries in order, no NEXT flags (a
    /// packed indirect table is read by its length). Returns the buffer id.
    pub fn add_chain_indirect(&mut self, segs: &[Seg]) -> Result<u16> {
        self.check_broken()?;
        let Some(area) = &self.indirect else {
            return Err(Error::InvalidArgument("no indirect area set".into()));
        };
        let (words, offset, max): (&'m [AtomicU64], u64, u16) = (area.words, area.offset, area.max);
        let writable = validate_chain(segs, max)?;
        let id = self.take_id(1)?;
        let base = usize::from(id) * usize::from(max);
        for (k, s) in segs.iter().enumerate() {
            let d = PackedDesc {
                addr: s.gpa,
                len: s.len,
                id: 0,
                flags: if s.writable { VIRTQ_DESC_F_WRITE } else { 0 },
            };
            let w = 2 * (base + k);
            // Relaxed: published with the ring descriptor (Release store in `publish`).
            words[w].store(d.addr.to_le(), Ordering::Relaxed);
            words[w + 1].store(d.word1().to_le(), Ordering::Relaxed);
        }
        let gpa = self.mem.guest_phys_addr() + offset + (base * PackedDesc::SIZE) as u64;
        let w1 = self.word1(
            (segs.len() * PackedDesc::SIZE) as u32,
            id,
            VIRTQ_DESC_F_INDIRECT,
        );
        self.put(gpa, w1);
        self.claim(id, 1, writable);
        Ok(id)
    }

    /// Makes every chain added so far visible to the device: one `Release` store of the
    /// burst's first descriptor's flags (pairs with the device's `Acquire` load of them).
    #[inline]
    pub fn publish(&mut self) {
        if let Some((w, word1)) = self.head.take() {
            self.ring.desc[w].store(word1.to_le(), Ordering::Release);
        }
        self.kick_added += std::mem::take(&mut self.unpublished_descs);
        self.published_seq = self.add_seq;
        self.published_pos = (self.next_avail, self.avail_wrap);
    }

    /// Whether the device wants a kick for what was published since the last decision (per
    /// the [`Kick`] mode, from the device event suppression area). Resets the "published
    /// since" window.
    #[inline]
    pub fn needs_kick(&mut self) -> bool {
        let added = std::mem::take(&mut self.kick_added);
        match self.kick {
            Kick::Never => false,
            Kick::Always => true,
            Kick::IfNeeded => {
                if added == 0 {
                    return false;
                }
                // Orders the head flags store before the load below; pairs with the
                // device's full barrier between writing its event suppression area and
                // re-reading the ring (virtio 1.2 §2.8.21.3).
                fence(Ordering::SeqCst);
                let (off_wrap, flags) =
                    event_fields(self.ring.device_event.load(Ordering::Relaxed));
                match flags & 3 {
                    RING_EVENT_FLAGS_DISABLE => false,
                    RING_EVENT_FLAGS_DESC if self.event_idx => {
                        if added >= u32::from(self.ring.size) {
                            // A whole lap published: the event slot was passed.
                            return true;
                        }
                        let (new, wrap) = self.published_pos;
                        let old = new.wrapping_sub(added as u16);
                        let mut event = off_wrap & 0x7fff;
                        if (off_wrap & 0x8000 != 0) != wrap {
                            // The event is in the previous lap: count it from there.
                            event = event.wrapping_sub(self.ring.size);
                        }
                        need_event(event, new, old)
                    }
                    // ENABLE, or a value the device should not write: a kick is harmless.
                    _ => true,
                }
            }
        }
    }

    /// Writes 1 to `kick` when [`PackedQueue::needs_kick`] says so; returns whether it did.
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

    /// Asks the device for no interrupts (`true`: flags DISABLE) or for interrupts
    /// (`false`: ENABLE, or with EVENT_IDX flags DESC at the next used slot, refreshed after
    /// each drained poll).
    pub fn set_no_interrupt(&mut self, on: bool) {
        self.no_interrupt = on;
        self.write_driver_event();
    }

    fn write_driver_event(&self) {
        let flags = if self.no_interrupt {
            RING_EVENT_FLAGS_DISABLE
        } else if self.event_idx {
            RING_EVENT_FLAGS_DESC
        } else {
            RING_EVENT_FLAGS_ENABLE
        };
        let off_wrap = self.used_pos | if self.used_wrap { 0x8000 } else { 0 };
        // Relaxed: a hint the device reads at its own pace; a driver sleeping on interrupts
        // would need a full fence and a ring re-check after this (we poll).
        self.ring
            .driver_event
            .store(event_word(off_wrap, flags), Ordering::Relaxed);
    }

    /// Chains published, outstanding and not yet seen used.
    #[inline]
    fn unseen_published(&self) -> usize {
        let unpublished = self.add_seq.wrapping_sub(self.published_seq);
        usize::from(self.in_flight) - self.used.len - usize::from(unpublished)
    }

    /// Reads the ring from the next used slot while used descriptors are there (each
    /// second word loaded once, `Acquire`), validates them and queues their buffers in
    /// `used`; stops at the first bad one (kept in `pending_err`).
    #[inline]
    fn scan(&mut self) {
        if self.pending_err.is_some() {
            return;
        }
        while self.unseen_published() > 0 {
            let d = PackedDesc::from_words(0, self.ring.load_word1(self.used_pos));
            if !is_used(d.flags, self.used_wrap) {
                break;
            }
            match self.take_used(d.id, d.len) {
                Ok(skip) => {
                    // skip <= size: the chains it counts were all outstanding.
                    let pos = u32::from(self.used_pos) + u32::from(skip);
                    if pos >= u32::from(self.ring.size) {
                        self.used_pos = (pos - u32::from(self.ring.size)) as u16;
                        self.used_wrap = !self.used_wrap;
                    } else {
                        self.used_pos = pos as u16;
                    }
                }
                Err(e) => {
                    self.pending_err = Some(e);
                    return;
                }
            }
        }
    }

    /// Queues the buffer(s) a used descriptor (`id`, `len`) returns; returns the slots the
    /// device skipped (the chains' descriptors).
    #[inline]
    fn take_used(&mut self, id: u16, len: u32) -> std::result::Result<u16, DeviceError> {
        let Some(st) = self.ids.get(usize::from(id)).copied() else {
            return Err(DeviceError::IdOutOfRange {
                id: u32::from(id),
                queue_size: self.ring.size,
            });
        };
        let unpublished = self.add_seq.wrapping_sub(self.published_seq);
        let published = self.add_seq.wrapping_sub(st.seq) > unpublished;
        if st.state != IdPhase::Outstanding || !published {
            return Err(DeviceError::NotOutstanding { id });
        }
        if !self.in_order {
            self.mark_used(id, len);
            return Ok(st.ndesc);
        }
        // In order: the order FIFO holds the outstanding ids oldest first, consecutive in
        // seq; everything up to `id` is used.
        let mut skip = 0u16;
        while let Some(older) = self.order.pop() {
            let o = self.ids[usize::from(older)];
            skip += o.ndesc;
            if older == id {
                self.mark_used(id, len);
                return Ok(skip);
            }
            self.mark_used(older, o.writable);
        }
        // Unreachable while `order` mirrors the outstanding ids; a device cannot cause it.
        Err(DeviceError::NotOutstanding { id })
    }

    #[inline]
    fn mark_used(&mut self, id: u16, len: u32) {
        self.ids[usize::from(id)].state = IdPhase::Used;
        self.used.push(UsedElem { id, len });
    }

    /// Reads the ring from the next used slot (used descriptors validated as they are
    /// found) and returns how many used buffers are ready. A bad used descriptor is
    /// reported once the buffers before it are consumed: then this fails and the queue
    /// breaks (a bad len only fails its own buffer, see [`PackedQueue::pop_used`]).
    #[inline]
    pub fn used_pending(&mut self) -> Result<u16> {
        self.check_broken()?;
        self.scan();
        if self.used.len == 0 {
            if let Some(e) = self.pending_err.take() {
                self.mark_broken(e.clone());
                return Err(e.into());
            }
        }
        // <= in_flight <= queue size.
        Ok(self.used.len as u16)
    }

    /// The next used buffer counted by the last `used_pending`, its len checked, not
    /// consumed.
    #[inline]
    fn peek_used(&self) -> std::result::Result<Option<UsedElem>, DeviceError> {
        let Some(u) = self.used.front() else {
            return match &self.pending_err {
                Some(e) => Err(e.clone()),
                None => Ok(None),
            };
        };
        let writable = self.ids[usize::from(u.id)].writable;
        if u.len > writable && (self.strict_len || writable > 0) {
            return Err(DeviceError::LenTooLarge {
                id: u.id,
                len: u.len,
                max: writable,
            });
        }
        Ok(Some(u))
    }

    /// Returns the next used buffer's id and descriptors to the free pools.
    #[inline]
    fn consume(&mut self) {
        let Some(u) = self.used.pop() else { return };
        let st = &mut self.ids[usize::from(u.id)];
        st.state = IdPhase::Free;
        self.num_free += st.ndesc;
        self.free_ids.push(u.id);
        self.in_flight -= 1;
        if self.event_idx && !self.no_interrupt && self.used.len == 0 {
            self.write_driver_event();
        }
    }

    /// Applies a device error found by `peek_used`: a bad len returns the buffer (so that
    /// the caller can recycle `id`'s memory); anything else breaks the queue.
    fn fail(&mut self, e: DeviceError) -> Error {
        match e {
            DeviceError::LenTooLarge { .. } => self.consume(),
            _ => {
                self.pending_err = None;
                self.mark_broken(e.clone());
            }
        }
        Error::Device(e)
    }

    /// Consumes the next used buffer counted by the last [`PackedQueue::used_pending`]
    /// (`None` when they are all consumed; the ring is not re-read).
    ///
    /// A used len larger than the chain's writable bytes returns the chain and fails with
    /// [`DeviceError::LenTooLarge`] (naming the id); other violations break the queue.
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>> {
        self.check_broken()?;
        match self.peek_used() {
            Ok(Some(u)) => {
                self.consume();
                Ok(Some(u))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Reads the ring once and consumes up to `out.len()` used buffers into `out`; returns
    /// how many. Buffers before an invalid one are returned first; the invalid one fails
    /// the next call (see [`PackedQueue::pop_used`]).
    #[inline]
    pub fn poll_used(&mut self, out: &mut [UsedElem]) -> Result<usize> {
        self.used_pending()?;
        let mut n = 0;
        while n < out.len() {
            match self.peek_used() {
                Ok(Some(u)) => {
                    self.consume();
                    out[n] = u;
                    n += 1;
                }
                Ok(None) => break,
                Err(_) if n > 0 => break,
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(n)
    }

    fn check_slot(&self, i: u16) -> Result<()> {
        if i < self.ring.size {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "slot {i} out of range for queue size {}",
                self.ring.size
            )))
        }
    }

    /// Hostile tests: overwrites ring slot `i` with anything (flags included, stored last
    /// with `Release`). The driver's bookkeeping is unchanged.
    pub fn raw_write_desc(&self, i: u16, d: PackedDesc) -> Result<()> {
        self.check_slot(i)?;
        self.ring.write_desc(i, d);
        Ok(())
    }

    /// Reads ring slot `i` as it is in memory.
    pub fn raw_read_desc(&self, i: u16) -> Result<PackedDesc> {
        self.check_slot(i)?;
        Ok(self.ring.read_desc(i))
    }

    /// Hostile tests: overwrites entry `k` of buffer `id`'s indirect table.
    pub fn raw_write_indirect(&self, id: u16, k: u16, d: PackedDesc) -> Result<()> {
        self.check_slot(id)?;
        let Some(area) = &self.indirect else {
            return Err(Error::InvalidArgument("no indirect area set".into()));
        };
        if k >= area.max {
            return Err(Error::InvalidArgument(format!(
                "indirect entry {k} beyond {} entries",
                area.max
            )));
        }
        let w = 2 * (usize::from(id) * usize::from(area.max) + usize::from(k));
        area.words[w].store(d.addr.to_le(), Ordering::Relaxed);
        area.words[w + 1].store(d.word1().to_le(), Ordering::Relaxed);
        Ok(())
    }

    /// Hostile tests: stores the driver event suppression area.
    pub fn raw_set_driver_event(&self, off_wrap: u16, flags: u16) {
        self.ring
            .driver_event
            .store(event_word(off_wrap, flags), Ordering::Relaxed);
    }

    /// The driver event suppression area as last stored: (off_wrap, flags).
    pub fn driver_event(&self) -> (u16, u16) {
        event_fields(self.ring.driver_event.load(Ordering::Relaxed))
    }

    /// The device event suppression area as the device last wrote it: (off_wrap, flags).
    pub fn device_event(&self) -> (u16, u16) {
        event_fields(self.ring.device_event.load(Ordering::Relaxed))
    }
}
