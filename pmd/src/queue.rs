//! A started ring as the data plane runs it.
//!
//! [`RingShared`] lives from SET_VRING_KICK to GET_VRING_BASE: the cursor (next avail
//! position to read, next used position to write) and the flags a poller needs. It survives
//! memory-table swaps: a new [`RingRuntime`] with fresh pointers shares the same
//! `RingShared`. The cursor is written only by whoever holds the ring's `busy` flag, so a
//! guest RX ring can take packets from any PMD.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use crate::memory::GuestMemoryMap;
use crate::offload::Offloads;
use crate::packed::raw::{PackedRing, EVENT_F_DISABLE};
use crate::split::raw::{SplitRing, USED_F_NO_NOTIFY};
use crate::vring::{Layout, TranslatedRing};

/// Ring-level facts from the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFeatures {
    /// 12 or 10.
    pub header_len: u32,
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub mrg_rxbuf: bool,
    /// VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub indirect: bool,
    /// VIRTIO_F_IN_ORDER: chains returned without data may share one used entry.
    pub in_order: bool,
    /// Checksum and TSO offloads negotiated (what the guest sends and takes).
    pub offloads: Offloads,
}

impl RingFeatures {
    /// Derives them from a virtio feature set.
    pub fn from_features(f: u64) -> Self {
        let has = |b: u32| f & (1u64 << b) != 0;
        let mrg_rxbuf = has(15);
        RingFeatures {
            header_len: if has(32) || mrg_rxbuf { 12 } else { 10 },
            mrg_rxbuf,
            event_idx: has(29),
            indirect: has(28),
            in_order: has(35),
            offloads: Offloads::from_features(f),
        }
    }
}

/// Position of the device in a ring.
///
/// Split rings count indexes freely in 16 bits; packed rings count positions in the
/// descriptor ring (below its size), each with a wrap counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Next avail index (split) or descriptor position (packed) to read.
    pub last_avail: u16,
    /// Split: avail index last read from the ring (read again once used up).
    pub cached_avail: u16,
    /// Next used index (split) or descriptor position (packed) to write.
    pub next_used: u16,
    /// Used index (split) or position (packed) as last published.
    pub published_used: u16,
    /// Packed: the driver's wrap counter at `last_avail`.
    pub avail_wrap: bool,
    /// Packed: the device's wrap counter at `next_used`.
    pub used_wrap: bool,
    /// Packed: the wrap counter at `published_used`.
    pub published_wrap: bool,
    /// Packed: flags of the used descriptor at `published_used`, held back until the
    /// batch is published.
    pub held_flags: u16,
    /// Packed: descriptors from `last_avail` on already seen available, each a chain of
    /// its own, when their cache line was checked at once (the Acquire fence is behind).
    pub checked: u16,
}

impl Cursor {
    /// A split ring's cursor: avail index `base`, used index `used_idx`.
    pub fn split(base: u16, used_idx: u16) -> Self {
        Cursor {
            last_avail: base,
            cached_avail: base,
            next_used: used_idx,
            published_used: used_idx,
            ..Cursor::default()
        }
    }

    /// A packed ring's cursor from a SET_VRING_BASE value: position in bits 0-14, wrap
    /// counter in bit 15. The device's used position starts there too: no chain is in
    /// flight across a restart.
    pub fn packed(base: u32) -> Self {
        let pos = (base & 0x7fff) as u16;
        let wrap = base & 0x8000 != 0;
        Cursor {
            last_avail: pos,
            cached_avail: pos,
            next_used: pos,
            published_used: pos,
            avail_wrap: wrap,
            used_wrap: wrap,
            published_wrap: wrap,
            held_flags: 0,
            checked: 0,
        }
    }

    /// The ring's position as GET_VRING_BASE reports it: the avail index (split); for
    /// packed rings the avail position and wrap counter in bits 0-15 and the used ones in
    /// bits 16-31 (QEMU reads both, DPDK the low half).
    pub fn vring_base(&self, layout: Layout) -> u32 {
        match layout {
            Layout::Split { .. } => u32::from(self.last_avail),
            Layout::Packed => {
                let avail = u32::from(self.last_avail) | u32::from(self.avail_wrap) << 15;
                let used = u32::from(self.next_used) | u32::from(self.used_wrap) << 15;
                avail | used << 16
            }
        }
    }
}

/// What a broken ring did, so it is logged once.
pub mod broken {
    /// avail.idx moved by more than the queue size.
    pub const AVAIL_JUMP: u8 = 1;
    /// An avail entry named a head outside the table.
    pub const BAD_HEAD: u8 = 2;
    /// The ring's memory is not in the snapshot's memory map.
    pub const NO_MEMORY: u8 = 4;
    /// A packed chain with no end within the ring size.
    pub const ENDLESS_CHAIN: u8 = 8;
}

/// The cursor as stored between holders of the busy flag: plain atomics, read into a
/// [`Cursor`] when the flag is taken and written back when it is released, so the
/// hand-over needs no `unsafe` and the holder works on a local copy.
#[derive(Debug, Default)]
struct StoredCursor {
    last_avail: AtomicU16,
    cached_avail: AtomicU16,
    next_used: AtomicU16,
    published_used: AtomicU16,
    /// The three wrap counters, one bit each.
    wraps: AtomicU8,
    held_flags: AtomicU16,
    checked: AtomicU16,
}

impl StoredCursor {
    fn new(c: &Cursor) -> Self {
        let stored = StoredCursor::default();
        stored.store(c);
        stored
    }

    // Relaxed is enough for all of them: they are only accessed by the holder of `busy`,
    // whose Acquire (take) and Release (give back) order them between holders.
    fn load(&self) -> Cursor {
        let wraps = self.wraps.load(Ordering::Relaxed);
        Cursor {
            last_avail: self.last_avail.load(Ordering::Relaxed),
            cached_avail: self.cached_avail.load(Ordering::Relaxed),
            next_used: self.next_used.load(Ordering::Relaxed),
            published_used: self.published_used.load(Ordering::Relaxed),
            avail_wrap: wraps & 1 != 0,
            used_wrap: wraps & 2 != 0,
            published_wrap: wraps & 4 != 0,
            held_flags: self.held_flags.load(Ordering::Relaxed),
            checked: self.checked.load(Ordering::Relaxed),
        }
    }

    fn store(&self, c: &Cursor) {
        self.last_avail.store(c.last_avail, Ordering::Relaxed);
        self.cached_avail.store(c.cached_avail, Ordering::Relaxed);
        self.next_used.store(c.next_used, Ordering::Relaxed);
        self.published_used
            .store(c.published_used, Ordering::Relaxed);
        let wraps =
            u8::from(c.avail_wrap) | u8::from(c.used_wrap) << 1 | u8::from(c.published_wrap) << 2;
        self.wraps.store(wraps, Ordering::Relaxed);
        self.held_flags.store(c.held_flags, Ordering::Relaxed);
        self.checked.store(c.checked, Ordering::Relaxed);
    }
}

/// State of a started ring shared by the control plane and every PMD.
#[derive(Debug)]
pub struct RingShared {
    index: u16,
    layout: Layout,
    busy: AtomicBool,
    cursor: StoredCursor,
    vring_base: AtomicU32,
    broken: AtomicU8,
    logged_errors: AtomicBool,
}

impl RingShared {
    /// A ring of layout `layout` starting at `cursor`.
    pub fn new(index: u16, layout: Layout, cursor: Cursor) -> Self {
        RingShared {
            index,
            layout,
            busy: AtomicBool::new(false),
            cursor: StoredCursor::new(&cursor),
            vring_base: AtomicU32::new(cursor.vring_base(layout)),
            broken: AtomicU8::new(0),
            logged_errors: AtomicBool::new(false),
        }
    }

    /// Ring index in its port.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The ring's position as of the last completed burst, in GET_VRING_BASE's encoding
    /// ([`Cursor::vring_base`]); read once every PMD is quiescent.
    pub fn vring_base(&self) -> u32 {
        self.vring_base.load(Ordering::Acquire)
    }

    /// Non-zero when the ring was stopped for a driver error ([`broken`] bits).
    pub fn broken(&self) -> u8 {
        self.broken.load(Ordering::Relaxed)
    }

    /// Marks the ring broken; returns true the first time (so it is logged once).
    pub fn mark_broken(&self, why: u8) -> bool {
        self.broken.fetch_or(why, Ordering::Relaxed) == 0
    }

    /// True the first time a descriptor error is reported on this ring.
    pub fn first_error(&self) -> bool {
        !self.logged_errors.swap(true, Ordering::Relaxed)
    }

    /// Takes the ring; `None` if another PMD has it.
    pub fn try_lock(&self) -> Option<RingGuard<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RingGuard {
                ring: self,
                cursor: self.cursor.load(),
            })
    }

    /// Takes the ring, spinning while another PMD holds it (a burst at most).
    pub fn lock(&self) -> RingGuard<'_> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            std::hint::spin_loop();
        }
    }
}

/// Exclusive access to a ring's cursor: a working copy, stored back on drop.
pub struct RingGuard<'a> {
    ring: &'a RingShared,
    cursor: Cursor,
}

impl RingGuard<'_> {
    /// The cursor.
    #[inline]
    pub fn cursor(&mut self) -> &mut Cursor {
        &mut self.cursor
    }

    /// Publishes the ring's position for GET_VRING_BASE.
    pub fn publish_position(&mut self) {
        let base = self.cursor.vring_base(self.ring.layout);
        self.ring.vring_base.store(base, Ordering::Release);
    }
}

impl Drop for RingGuard<'_> {
    fn drop(&mut self) {
        self.ring.cursor.store(&self.cursor);
        // Pairs with the Acquire of the next `try_lock`: the cursor stores above are
        // visible to the next holder.
        self.ring.busy.store(false, Ordering::Release);
    }
}

/// A ring in guest memory, in its layout.
#[derive(Debug)]
pub enum RingView<'m> {
    /// A split ring.
    Split(SplitRing<'m>),
    /// A packed ring.
    Packed(PackedRing<'m>),
}

/// A started ring in one memory map.
#[derive(Debug)]
pub struct RingRuntime {
    /// Cursor and flags, shared across memory swaps.
    pub shared: Arc<RingShared>,
    /// Features that shape the ring and the net header.
    pub features: RingFeatures,
    /// May carry packets (started and enabled are independent).
    pub enabled: bool,
    /// The guest's interrupt eventfd, if it gave one (non-blocking: the control plane
    /// accepts only eventfds and sets O_NONBLOCK).
    pub call: Option<Arc<File>>,
    ring: TranslatedRing,
    memory: Arc<GuestMemoryMap>,
}

impl RingRuntime {
    /// Builds the runtime of a ring translated in `memory`.
    pub fn new(
        shared: Arc<RingShared>,
        ring: TranslatedRing,
        memory: Arc<GuestMemoryMap>,
        features: RingFeatures,
        enabled: bool,
        call: Option<Arc<File>>,
    ) -> Self {
        RingRuntime {
            shared,
            features,
            enabled,
            call,
            ring,
            memory,
        }
    }

    /// The memory the ring and its buffers live in.
    #[inline]
    pub fn memory(&self) -> &GuestMemoryMap {
        &self.memory
    }

    /// The ring in guest memory, for as long as `self` is borrowed. `None` only if the
    /// ring was translated in another map (a control-plane bug; the ring is then not used).
    #[inline]
    pub fn ring(&self) -> Option<RingView<'_>> {
        match self.ring.layout {
            Layout::Split { .. } => SplitRing::new(&self.memory, &self.ring).map(RingView::Split),
            Layout::Packed => PackedRing::new(&self.memory, &self.ring).map(RingView::Packed),
        }
    }

    /// Asks the driver not to kick: we poll. Split rings with EVENT_IDX do it per burst
    /// by moving avail_event behind the driver; without it, by the used.flags bit. Packed
    /// rings say it once in the device event suppression structure.
    pub fn suppress_kicks(&self) {
        match self.ring() {
            Some(RingView::Split(ring)) if !self.features.event_idx => {
                ring.set_used_flags(USED_F_NO_NOTIFY)
            }
            Some(RingView::Packed(ring)) => ring.set_device_event_flags(EVENT_F_DISABLE),
            _ => {}
        }
    }

    /// Interrupts the guest. The eventfd is non-blocking: EAGAIN (counter full) means an
    /// interrupt is already pending, so the error is of no consequence.
    #[inline]
    pub fn notify(&self) {
        if let Some(call) = &self.call {
            let _ = (&**call).write(&1u64.to_ne_bytes());
        }
    }

    /// Starts a ring at `base`, a SET_VRING_BASE value, and asks the driver not to kick.
    /// A split ring's used index is the one it holds in memory (a reconnecting front-end
    /// keeps its used ring); see [`Cursor::packed`] for packed rings, whose position is
    /// checked against the ring ([`PackedRing::resume_position`]).
    pub fn start(
        index: u16,
        base: u32,
        ring: TranslatedRing,
        memory: Arc<GuestMemoryMap>,
        features: RingFeatures,
        enabled: bool,
        call: Option<Arc<File>>,
    ) -> Self {
        let cursor = match ring.layout {
            Layout::Split { .. } => {
                let used_idx = SplitRing::new(&memory, &ring).map_or(0, |r| r.used_idx());
                Cursor::split(base as u16, used_idx)
            }
            Layout::Packed => {
                let cursor = Cursor::packed(base);
                let (pos, wrap) = PackedRing::new(&memory, &ring)
                    .map_or((cursor.last_avail, cursor.avail_wrap), |r| {
                        r.resume_position(cursor.last_avail, cursor.avail_wrap)
                    });
                if (pos, wrap) != (cursor.last_avail, cursor.avail_wrap) {
                    tracing::warn!(
                        ring = index,
                        base = format_args!("{base:#x}"),
                        position = pos,
                        wrap,
                        "packed ring base disagrees with the ring (a back-end restart): \
                         resuming where the ring says the device stands"
                    );
                }
                Cursor::packed(u32::from(pos) | u32::from(wrap) << 15)
            }
        };
        let shared = Arc::new(RingShared::new(index, ring.layout, cursor));
        let runtime = RingRuntime::new(shared, ring, memory, features, enabled, call);
        runtime.suppress_kicks();
        runtime
    }
}
