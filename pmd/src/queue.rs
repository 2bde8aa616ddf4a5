//! A started ring as the data plane runs it.
//!
//! [`RingShared`] lives from SET_VRING_KICK to GET_VRING_BASE: the cursor (next avail
//! index to read, next used slot to write) and the flags a poller needs. It survives
//! memory-table swaps: a new [`RingRuntime`] with fresh pointers shares the same
//! `RingShared`. The cursor is written only by whoever holds the ring's `busy` flag, so a
//! guest RX ring can take packets from any PMD.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use crate::memory::GuestMemoryMap;
use crate::split::raw::{SplitRing, USED_F_NO_NOTIFY};
use crate::vring::TranslatedRing;

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
        }
    }
}

/// Position of the device in a ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Next avail index to read.
    pub last_avail: u16,
    /// Avail index last read from the ring (RX rings read it once per refill).
    pub cached_avail: u16,
    /// Next used slot to write.
    pub next_used: u16,
    /// used.idx as last published.
    pub published_used: u16,
}

/// What a broken ring did, so it is logged once.
pub mod broken {
    /// avail.idx moved by more than the queue size.
    pub const AVAIL_JUMP: u8 = 1;
    /// An avail entry named a head outside the table.
    pub const BAD_HEAD: u8 = 2;
    /// The ring's memory is not in the snapshot's memory map.
    pub const NO_MEMORY: u8 = 4;
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
}

impl StoredCursor {
    // Relaxed is enough for all four: they are only accessed by the holder of `busy`,
    // whose Acquire (take) and Release (give back) order them between holders.
    fn load(&self) -> Cursor {
        Cursor {
            last_avail: self.last_avail.load(Ordering::Relaxed),
            cached_avail: self.cached_avail.load(Ordering::Relaxed),
            next_used: self.next_used.load(Ordering::Relaxed),
            published_used: self.published_used.load(Ordering::Relaxed),
        }
    }

    fn store(&self, c: &Cursor) {
        self.last_avail.store(c.last_avail, Ordering::Relaxed);
        self.cached_avail.store(c.cached_avail, Ordering::Relaxed);
        self.next_used.store(c.next_used, Ordering::Relaxed);
        self.published_used
            .store(c.published_used, Ordering::Relaxed);
    }
}

/// State of a started ring shared by the control plane and every PMD.
#[derive(Debug)]
pub struct RingShared {
    index: u16,
    busy: AtomicBool,
    cursor: StoredCursor,
    last_avail: AtomicU16,
    broken: AtomicU8,
    logged_errors: AtomicBool,
}

impl RingShared {
    /// A ring starting at avail index `base` with used index `used_idx`.
    pub fn new(index: u16, base: u16, used_idx: u16) -> Self {
        RingShared {
            index,
            busy: AtomicBool::new(false),
            cursor: StoredCursor {
                last_avail: AtomicU16::new(base),
                cached_avail: AtomicU16::new(base),
                next_used: AtomicU16::new(used_idx),
                published_used: AtomicU16::new(used_idx),
            },
            last_avail: AtomicU16::new(base),
            broken: AtomicU8::new(0),
            logged_errors: AtomicBool::new(false),
        }
    }

    /// Ring index in its port.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The next avail index as of the last completed burst (GET_VRING_BASE reads it once
    /// every PMD is quiescent).
    pub fn last_avail(&self) -> u16 {
        self.last_avail.load(Ordering::Acquire)
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

    /// Publishes the avail position for GET_VRING_BASE.
    pub fn publish_last_avail(&mut self) {
        self.ring
            .last_avail
            .store(self.cursor.last_avail, Ordering::Release);
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
    pub fn ring(&self) -> Option<SplitRing<'_>> {
        SplitRing::new(&self.memory, &self.ring)
    }

    /// Asks the driver not to kick: we poll. With EVENT_IDX that is done per burst by
    /// moving avail_event behind the driver; without it, by the used.flags bit.
    pub fn suppress_kicks(&self) {
        if !self.features.event_idx {
            if let Some(ring) = self.ring() {
                ring.set_used_flags(USED_F_NO_NOTIFY);
            }
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

    /// Starts a ring: its cursor begins at avail index `base` and at the used index the
    /// ring holds in memory (a reconnecting front-end keeps its used ring), and the driver
    /// is asked not to kick.
    pub fn start(
        index: u16,
        base: u16,
        ring: TranslatedRing,
        memory: Arc<GuestMemoryMap>,
        features: RingFeatures,
        enabled: bool,
        call: Option<Arc<File>>,
    ) -> Self {
        let used_idx = SplitRing::new(&memory, &ring).map_or(0, |r| r.used_idx());
        let shared = Arc::new(RingShared::new(index, base, used_idx));
        let runtime = RingRuntime::new(shared, ring, memory, features, enabled, call);
        runtime.suppress_kicks();
        runtime
    }
}
