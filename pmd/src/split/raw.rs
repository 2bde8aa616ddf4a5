//! A split virtqueue in guest memory (virtio 1.2 §2.7), seen through [`GuestSlice`]s.
//!
//! Every shared index is read and written through atomics with the ordering that pairs
//! with the driver's side; descriptors are copied out with volatile reads (read once, then
//! validated from the copy: no double fetch).
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;

use crate::memory::{GuestMemoryMap, GuestSlice};
use crate::vring::TranslatedRing;

/// A descriptor as copied out of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// Size of a descriptor in the table (virtio 1.2 §2.7.5).
pub const DESCRIPTOR_SIZE: usize = 16;

/// Byte offsets inside the avail and used rings (virtio 1.2 §2.7.6, §2.7.8).
mod field {
    /// `flags`, in both rings.
    pub const FLAGS: usize = 0;
    /// `idx`, in both rings.
    pub const IDX: usize = 2;
    /// First ring entry, in both rings.
    pub const RING: usize = 4;
    /// An avail entry: a descriptor head.
    pub const AVAIL_ENTRY: usize = 2;
    /// A used element: `id` (u32) and `len` (u32).
    pub const USED_ELEM: usize = 8;
}

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

/// A split ring's three parts in one memory map, for as long as the map is borrowed.
///
/// Built from a [`TranslatedRing`] whose parts were checked for size and alignment, so
/// the accessors below stay in bounds; should a range not fit the map (it came from
/// another map), [`SplitRing::new`] refuses it instead.
#[derive(Debug)]
pub struct SplitRing<'m> {
    size: u16,
    desc: GuestSlice<'m>,
    avail: GuestSlice<'m>,
    used: GuestSlice<'m>,
}

impl<'m> SplitRing<'m> {
    /// The ring `ring` in `memory`. `None` if a part does not lie in `memory` with the
    /// length a ring of its size needs (the event words included).
    pub fn new(memory: &'m GuestMemoryMap, ring: &TranslatedRing) -> Option<Self> {
        let n = usize::from(ring.size);
        let desc = memory.slice(&ring.desc)?;
        let avail = memory.slice(&ring.avail)?;
        let used = memory.slice(&ring.used)?;
        let fits = desc.len() >= DESCRIPTOR_SIZE * n
            && avail.len() >= field::RING + field::AVAIL_ENTRY * n
            && used.len() >= field::RING + field::USED_ELEM * n
            && ring.size.is_power_of_two();
        fits.then_some(SplitRing {
            size: ring.size,
            desc,
            avail,
            used,
        })
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// `avail.idx`, Acquire: pairs with the driver's release after writing ring entries.
    #[inline]
    pub fn avail_idx(&self) -> u16 {
        self.avail
            .load_u16(field::IDX, Ordering::Acquire)
            .unwrap_or_default()
    }

    /// `avail.flags`.
    #[inline]
    pub fn avail_flags(&self) -> u16 {
        self.avail
            .load_u16(field::FLAGS, Ordering::Relaxed)
            .unwrap_or_default()
    }

    /// `avail.ring[idx % size]`: a descriptor head (not yet validated).
    #[inline]
    pub fn avail_entry(&self, idx: u16) -> u16 {
        let slot = usize::from(idx & (self.size - 1));
        self.avail
            .load_u16(field::RING + field::AVAIL_ENTRY * slot, Ordering::Relaxed)
            .unwrap_or_default()
    }

    /// `used_event` (EVENT_IDX), after the avail ring; 0 if the ring was checked without
    /// room for it.
    #[inline]
    pub fn used_event(&self) -> u16 {
        let n = usize::from(self.size);
        self.avail
            .load_u16(field::RING + field::AVAIL_ENTRY * n, Ordering::Acquire)
            .unwrap_or_default()
    }

    /// `used.idx` as currently in memory.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        self.used
            .load_u16(field::IDX, Ordering::Relaxed)
            .unwrap_or_default()
    }

    /// Publishes `used.idx`, Release: every used entry written before is visible first.
    #[inline]
    pub fn store_used_idx(&self, idx: u16) {
        let _ = self.used.store_u16(field::IDX, idx, Ordering::Release);
    }

    /// Sets `used.flags`.
    pub fn set_used_flags(&self, flags: u16) {
        let _ = self.used.store_u16(field::FLAGS, flags, Ordering::Relaxed);
    }

    /// Sets `avail_event` (EVENT_IDX), after the used ring.
    #[inline]
    pub fn set_avail_event(&self, idx: u16) {
        let n = usize::from(self.size);
        let _ = self
            .used
            .store_u16(field::RING + field::USED_ELEM * n, idx, Ordering::Release);
    }

    /// Writes used element `idx % size`; it becomes visible with the next `store_used_idx`.
    #[inline]
    pub fn write_used(&self, idx: u16, id: u16, len: u32) {
        let slot = usize::from(idx & (self.size - 1));
        let at = field::RING + field::USED_ELEM * slot;
        let _ = self.used.store_u32_le(at, u32::from(id));
        let _ = self.used.store_u32_le(at + 4, len);
    }

    /// Starts fetching used element `idx % size` for writing.
    #[inline]
    pub fn prefetch_used_entry(&self, idx: u16) {
        let slot = usize::from(idx & (self.size - 1));
        self.used
            .prefetch_write(field::RING + field::USED_ELEM * slot);
    }

    /// Starts loading descriptor `index` (a burst's descriptors are fetched in parallel
    /// instead of one cross-core miss after another).
    #[inline]
    pub fn prefetch_descriptor(&self, index: u16) {
        self.desc.prefetch(DESCRIPTOR_SIZE * usize::from(index));
    }

    /// Copies descriptor `index` out of the main table. `None` when `index >= size`.
    #[inline]
    pub fn descriptor(&self, index: u16) -> Option<Descriptor> {
        if index >= self.size {
            return None;
        }
        let (lo, hi) = self
            .desc
            .read_volatile_le_u64_pair(DESCRIPTOR_SIZE * usize::from(index))?;
        Some(Descriptor::from_words(lo, hi))
    }
}

impl Descriptor {
    /// Decodes the two 64-bit words of the wire layout (read little-endian): `addr`, then
    /// `len | flags << 32 | next << 48`.
    #[inline(always)]
    pub fn from_words(lo: u64, hi: u64) -> Descriptor {
        Descriptor {
            addr: lo,
            len: hi as u32,
            flags: (hi >> 32) as u16,
            next: (hi >> 48) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_map;
    use crate::vring::{translate, Layout, RingAddrs};

    #[test]
    fn reads_and_writes_the_fields_where_the_spec_puts_them() {
        let mem = test_map(0x4000, 0x1000_0000);
        let addrs = RingAddrs {
            desc: 0x1000_0000,
            avail: 0x1000_1000,
            used: 0x1000_2000,
        };
        let t = translate(&mem, 8, addrs, Layout::Split { event_idx: true }).unwrap();
        let ring = SplitRing::new(&mem, &t).unwrap();
        let avail = mem.slice(&t.avail).unwrap();
        avail.write(2, &5u16.to_le_bytes()).unwrap();
        avail.write(4 + 2 * 3, &7u16.to_le_bytes()).unwrap();
        avail.write(4 + 2 * 8, &9u16.to_le_bytes()).unwrap();
        assert_eq!(ring.avail_idx(), 5);
        assert_eq!(ring.avail_entry(11), 7, "slot 11 % 8 = 3");
        assert_eq!(ring.used_event(), 9);
        ring.write_used(9, 6, 1500);
        ring.store_used_idx(10);
        ring.set_avail_event(4);
        let used = mem.slice(&t.used).unwrap();
        assert_eq!(used.read_array::<2>(2), Some(10u16.to_le_bytes()));
        assert_eq!(used.read_array::<4>(4 + 8), Some(6u32.to_le_bytes()));
        assert_eq!(used.read_array::<4>(4 + 8 + 4), Some(1500u32.to_le_bytes()));
        assert_eq!(used.read_array::<2>(4 + 8 * 8), Some(4u16.to_le_bytes()));
        let desc = mem.slice(&t.desc).unwrap();
        desc.write(16 * 2, &[1, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 3, 0, 5, 0])
            .unwrap();
        assert_eq!(
            ring.descriptor(2),
            Some(Descriptor {
                addr: 1,
                len: 64,
                flags: 3,
                next: 5
            })
        );
        assert_eq!(ring.descriptor(8), None);
    }
}
