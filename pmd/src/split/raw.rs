//! Raw access to a split virtqueue in guest memory (virtio 1.2 §2.7): the only place the
//! data plane dereferences ring pointers.
//!
//! Every shared index is read and written through atomics with the ordering that pairs
//! with the driver's side; descriptors and ring entries are copied out with volatile reads
//! (read once, then validated from the copy: no double fetch).

use std::sync::atomic::{AtomicU16, Ordering};

use crate::vring::TranslatedRing;

/// A descriptor as copied out of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// `NEXT`, `WRITE`, `INDIRECT`.
    pub flags: u16,
    /// Next descriptor index when `NEXT` is set.
    pub next: u16,
}

const _: () = assert!(std::mem::size_of::<Descriptor>() == 16);

/// The chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// The buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// The buffer holds a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// used.flags: the device does not want kicks.
pub const USED_F_NO_NOTIFY: u16 = 1;
/// avail.flags: the driver does not want interrupts.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Asks the CPU to start loading the cache line at `p`. A hint only: nothing is read, and
/// no address can fault, so any pointer is fine.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 never faults and has no architectural effect, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Pointers to the three parts of one split ring, checked at construction.
#[derive(Clone, Copy, Debug)]
pub struct RawRing {
    ring: TranslatedRing,
}

// SAFETY: RawRing holds plain addresses into shared guest memory; all access goes through
// the atomic/volatile accessors below, and the owner (`RingRuntime`) keeps the mapping
// alive and serialises the device-side writers.
unsafe impl Send for RawRing {}
// SAFETY: as above.
unsafe impl Sync for RawRing {}

impl RawRing {
    /// Wraps a translated ring.
    ///
    /// # Safety
    ///
    /// - `ring` came from [`crate::vring::translate`] with `event_idx = true` sizes or the
    ///   ring's real feature set, so each part's full length lies inside mapped memory;
    /// - that mapping outlives every use of the returned value (the caller holds the
    ///   `Arc<GuestMemoryMap>` the pointers point into).
    pub unsafe fn new(ring: TranslatedRing) -> Self {
        RawRing { ring }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.ring.size
    }

    fn u16_at(&self, base: *mut u8, offset: usize) -> &AtomicU16 {
        // SAFETY:
        // - `base + offset` lies inside a ring part whose whole length was checked against
        //   the memory map (callers pass offsets within the §2.7 layout for `size`);
        // - ring parts are at least 2-byte aligned (checked by `vring::translate`), and
        //   every u16 field sits at an even offset;
        // - the mapping outlives `self` (constructor contract), and AtomicU16 has the
        //   same layout as u16; concurrent access by the driver is what atomics are for.
        unsafe { AtomicU16::from_ptr(base.add(offset).cast()) }
    }

    /// `avail.idx`, Acquire: pairs with the driver's release after writing ring entries.
    pub fn avail_idx(&self) -> u16 {
        self.u16_at(self.ring.avail.as_ptr(), 2)
            .load(Ordering::Acquire)
    }

    /// `avail.flags`.
    pub fn avail_flags(&self) -> u16 {
        self.u16_at(self.ring.avail.as_ptr(), 0)
            .load(Ordering::Relaxed)
    }

    /// `avail.ring[slot % size]`: a descriptor head (not yet validated).
    pub fn avail_entry(&self, idx: u16) -> u16 {
        let slot = usize::from(idx & (self.ring.size - 1));
        self.u16_at(self.ring.avail.as_ptr(), 4 + 2 * slot)
            .load(Ordering::Relaxed)
    }

    /// `used_event` (EVENT_IDX), after the avail ring.
    pub fn used_event(&self) -> u16 {
        let n = usize::from(self.ring.size);
        self.u16_at(self.ring.avail.as_ptr(), 4 + 2 * n)
            .load(Ordering::Acquire)
    }

    /// `used.idx` as currently in memory.
    pub fn used_idx(&self) -> u16 {
        self.u16_at(self.ring.used.as_ptr(), 2)
            .load(Ordering::Relaxed)
    }

    /// Publishes `used.idx`, Release: every used entry written before is visible first.
    pub fn publish_used(&self, idx: u16) {
        self.u16_at(self.ring.used.as_ptr(), 2)
            .store(idx, Ordering::Release);
    }

    /// Sets `used.flags`.
    pub fn set_used_flags(&self, flags: u16) {
        self.u16_at(self.ring.used.as_ptr(), 0)
            .store(flags, Ordering::Relaxed);
    }

    /// Sets `avail_event` (EVENT_IDX), after the used ring.
    pub fn set_avail_event(&self, idx: u16) {
        let n = usize::from(self.ring.size);
        self.u16_at(self.ring.used.as_ptr(), 4 + 8 * n)
            .store(idx, Ordering::Release);
    }

    /// Writes used entry `idx % size`; it becomes visible with the next `publish_used`.
    pub fn write_used(&self, idx: u16, id: u16, len: u32) {
        let slot = usize::from(idx & (self.ring.size - 1));
        let elem = u64::from(id) | (u64::from(len) << 32);
        // SAFETY: slot < size, so the 8-byte element at 4 + 8*slot lies inside the used
        // ring checked at construction; it is 4-byte aligned (used ring alignment, offset
        // multiple of 4), hence write_unaligned. The driver reads it only after the
        // Release store of used.idx that follows.
        unsafe {
            let p = self.ring.used.as_ptr().add(4 + 8 * slot).cast::<u64>();
            std::ptr::write_volatile(p.cast::<[u32; 2]>(), [elem as u32, (elem >> 32) as u32]);
        }
    }

    /// Starts loading descriptor `index` (a burst's descriptors are fetched in parallel
    /// instead of one cross-core miss after another).
    #[inline]
    pub fn prefetch_descriptor(&self, index: u16) {
        if index < self.ring.size {
            prefetch(
                self.ring
                    .desc
                    .as_ptr()
                    .wrapping_add(16 * usize::from(index)),
            );
        }
    }

    /// Copies descriptor `index` out of the main table. `None` when `index >= size`.
    pub fn descriptor(&self, index: u16) -> Option<Descriptor> {
        if index >= self.ring.size {
            return None;
        }
        // SAFETY: index < size, so the 16 bytes at 16*index lie inside the descriptor
        // table checked at construction, which is 16-byte aligned. The copy is volatile
        // because the driver may rewrite the table at any time; the copy is what we validate.
        Some(unsafe {
            std::ptr::read_volatile(
                self.ring
                    .desc
                    .as_ptr()
                    .add(16 * usize::from(index))
                    .cast::<Descriptor>(),
            )
        })
    }
}

/// Copies descriptor `index` out of an indirect table at `table` with `count` entries.
/// `None` when `index >= count`.
///
/// # Safety
///
/// `table` points to `16 * count` bytes of mapped guest memory that stay mapped for the
/// duration of the call (translated through the memory map the caller holds).
pub unsafe fn indirect_descriptor(table: *const u8, count: u32, index: u16) -> Option<Descriptor> {
    if u32::from(index) >= count {
        return None;
    }
    // SAFETY: index < count, so the 16 bytes lie inside the table (caller contract); the
    // table may be unaligned (the spec does not require alignment), hence a byte copy.
    let bytes =
        unsafe { std::ptr::read_volatile(table.add(16 * usize::from(index)).cast::<[u8; 16]>()) };
    Some(Descriptor::from_le_bytes(bytes))
}

/// Copies `dst.len()` bytes of guest memory starting at `src`, byte by byte (for the rare
/// descriptor that straddles two regions).
///
/// # Safety
///
/// `src..src + dst.len()` is mapped guest memory that stays mapped during the call.
pub unsafe fn read_guest_bytes(src: *const u8, dst: &mut [u8]) {
    for (i, b) in dst.iter_mut().enumerate() {
        // SAFETY: i < dst.len(), inside the range the caller vouches for.
        *b = unsafe { std::ptr::read_volatile(src.add(i)) };
    }
}

impl Descriptor {
    /// Decodes the little-endian wire layout (virtio 1.x).
    pub fn from_le_bytes(b: [u8; 16]) -> Descriptor {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[0..8]);
        Descriptor {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}
