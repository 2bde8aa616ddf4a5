//! A packed virtqueue in guest memory (virtio 1.2 §2.8), seen through [`GuestSlice`]s: one
//! descriptor ring that the driver fills and the device writes back in place, and two
//! event suppression structures.
//!
//! A descriptor's flags are loaded with Acquire before the rest of it is read (the driver
//! writes them last, with a release); the rest is copied out with volatile reads, once.
//! The device writes a used descriptor's id and length first and its flags last, with a
//! release.
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;

use crate::memory::{GuestMemoryMap, GuestSlice};
use crate::vring::{Layout, TranslatedRing};

/// The buffer continues in the next descriptor of the ring.
pub const DESC_F_NEXT: u16 = 1;
/// The buffer is device-writable (in a used descriptor: the device wrote to it).
pub const DESC_F_WRITE: u16 = 2;
/// The buffer holds a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// The driver's wrap counter when it made the descriptor available.
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// The device's wrap counter when it used the descriptor.
pub const DESC_F_USED: u16 = 1 << 15;

/// Event suppression flags (virtio 1.2 §2.8.10): notify on every event.
pub const EVENT_F_ENABLE: u16 = 0;
/// Event suppression flags: do not notify.
pub const EVENT_F_DISABLE: u16 = 1;
/// Event suppression flags: notify when the given descriptor position is reached
/// (VIRTIO_RING_F_EVENT_IDX).
pub const EVENT_F_DESC: u16 = 2;

/// Size of a descriptor in the ring.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Descriptors to a cache line, checked together where they are available.
pub const BATCH: usize = 4;

/// Byte offsets inside a descriptor and an event suppression structure.
mod field {
    /// Descriptor: `len` (u32).
    pub const LEN: usize = 8;
    /// Descriptor: buffer `id` (u16).
    pub const ID: usize = 12;
    /// Descriptor: `flags` (u16).
    pub const FLAGS: usize = 14;
    /// Event suppression: `desc` (offset in bits 0-14, wrap counter in bit 15).
    pub const EVENT_OFF_WRAP: usize = 0;
    /// Event suppression: `flags`.
    pub const EVENT_FLAGS: usize = 2;
}

/// A descriptor as copied out of the ring or of an indirect table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// Buffer id (meaningful in the last descriptor of a chain).
    pub id: u16,
    /// `NEXT`, `WRITE`, `INDIRECT`, `AVAIL`, `USED`.
    pub flags: u16,
}

impl Descriptor {
    /// Decodes the two 64-bit words of the wire layout (read little-endian): `addr`, then
    /// `len | id << 32 | flags << 48`.
    #[inline(always)]
    pub fn from_words(lo: u64, hi: u64) -> Descriptor {
        Descriptor {
            addr: lo,
            len: hi as u32,
            id: (hi >> 32) as u16,
            flags: (hi >> 48) as u16,
        }
    }
}

/// Whether `flags` mark a descriptor available in the round whose wrap counter is `wrap`:
/// AVAIL equal to it and USED not (both equal: a used descriptor of that round).
#[inline(always)]
pub fn is_available(flags: u16, wrap: bool) -> bool {
    (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
}

/// The flags of a used descriptor written in the round whose wrap counter is `wrap`.
#[inline(always)]
pub fn used_flags(wrap: bool, written: bool) -> u16 {
    let round = if wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
    if written {
        round | DESC_F_WRITE
    } else {
        round
    }
}

/// A packed ring's three parts in one memory map, for as long as the map is borrowed.
#[derive(Debug)]
pub struct PackedRing<'m> {
    size: u16,
    desc: GuestSlice<'m>,
    driver: GuestSlice<'m>,
    device: GuestSlice<'m>,
}

impl<'m> PackedRing<'m> {
    /// The ring `ring` in `memory`. `None` if it was not checked as a packed ring or a
    /// part does not lie in `memory` with the length a ring of its size needs.
    pub fn new(memory: &'m GuestMemoryMap, ring: &TranslatedRing) -> Option<Self> {
        if ring.layout != Layout::Packed || ring.size == 0 {
            return None;
        }
        let desc = memory.slice(&ring.desc)?;
        let driver = memory.slice(&ring.avail)?;
        let device = memory.slice(&ring.used)?;
        let fits = desc.len() >= DESCRIPTOR_SIZE * usize::from(ring.size)
            && driver.len() >= 4
            && device.len() >= 4;
        fits.then_some(PackedRing {
            size: ring.size,
            desc,
            driver,
            device,
        })
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The flags of descriptor `pos` (below the size), Acquire: pairs with the driver's
    /// release when it made the descriptor available, so what is read of the descriptor
    /// afterwards is what the driver wrote before.
    #[inline]
    pub fn flags(&self, pos: u16) -> u16 {
        self.desc
            .load_u16(
                DESCRIPTOR_SIZE * usize::from(pos) + field::FLAGS,
                Ordering::Acquire,
            )
            .unwrap_or_default()
    }

    /// The flags of the [`BATCH`] descriptors from `pos` on, Relaxed: a caller that uses
    /// the descriptors after checking them fences (Acquire) first. `None` past the end.
    #[inline]
    pub fn batch_flags(&self, pos: u16) -> Option<[u16; BATCH]> {
        let mut flags = [0u16; BATCH];
        for (k, f) in flags.iter_mut().enumerate() {
            let at = DESCRIPTOR_SIZE * (usize::from(pos) + k) + field::FLAGS;
            *f = self.desc.load_u16(at, Ordering::Relaxed)?;
        }
        Some(flags)
    }

    /// Copies descriptor `pos` out of the ring. `None` when `pos >= size`.
    #[inline]
    pub fn descriptor(&self, pos: u16) -> Option<Descriptor> {
        if pos >= self.size {
            return None;
        }
        let (lo, hi) = self
            .desc
            .read_volatile_le_u64_pair(DESCRIPTOR_SIZE * usize::from(pos))?;
        Some(Descriptor::from_words(lo, hi))
    }

    /// Starts loading descriptor `pos` for writing: the device reads it, then writes the
    /// used descriptor over it, so the line is fetched owned once rather than shared first.
    #[inline]
    pub fn prefetch_descriptor(&self, pos: u16) {
        self.desc.prefetch_write(DESCRIPTOR_SIZE * usize::from(pos));
    }

    /// Writes the id and length of used descriptor `pos`; its flags are stored apart
    /// ([`Self::store_flags`]), after.
    #[inline]
    pub fn write_used(&self, pos: u16, id: u16, len: u32) {
        let at = DESCRIPTOR_SIZE * usize::from(pos);
        let _ = self.desc.store_u32_le(at + field::LEN, len);
        let _ = self.desc.store_u16(at + field::ID, id, Ordering::Relaxed);
    }

    /// Stores the flags of descriptor `pos`, Release: the id and length written before are
    /// visible to the driver first.
    #[inline]
    pub fn store_flags(&self, pos: u16, flags: u16) {
        let at = DESCRIPTOR_SIZE * usize::from(pos) + field::FLAGS;
        let _ = self.desc.store_u16(at, flags, Ordering::Release);
    }

    /// The driver event suppression structure: (`desc` offset/wrap word, `flags`).
    #[inline]
    pub fn driver_event(&self) -> (u16, u16) {
        let off_wrap = self
            .driver
            .load_u16(field::EVENT_OFF_WRAP, Ordering::Acquire)
            .unwrap_or_default();
        let flags = self
            .driver
            .load_u16(field::EVENT_FLAGS, Ordering::Acquire)
            .unwrap_or_default();
        (off_wrap, flags)
    }

    /// Sets the flags of the device event suppression structure (whether the driver
    /// should notify the device).
    pub fn set_device_event_flags(&self, flags: u16) {
        let _ = self
            .device
            .store_u16(field::EVENT_FLAGS, flags, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_map;
    use crate::vring::{translate, RingAddrs};

    #[test]
    fn reads_and_writes_the_fields_where_the_spec_puts_them() {
        let mem = test_map(0x4000, 0x1000_0000);
        let addrs = RingAddrs {
            desc: 0x1000_0000,
            avail: 0x1000_1000,
            used: 0x1000_1004,
        };
        let t = translate(&mem, 8, addrs, Layout::Packed).unwrap();
        let ring = PackedRing::new(&mem, &t).unwrap();
        let desc = mem.slice(&t.desc).unwrap();
        desc.write(
            16 * 2,
            &[1, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 5, 0, 0x81, 0],
        )
        .unwrap();
        assert_eq!(
            ring.descriptor(2),
            Some(Descriptor {
                addr: 1,
                len: 64,
                id: 5,
                flags: DESC_F_AVAIL | DESC_F_NEXT
            })
        );
        assert_eq!(ring.flags(2), DESC_F_AVAIL | DESC_F_NEXT);
        assert_eq!(ring.descriptor(8), None);
        ring.write_used(3, 7, 1500);
        ring.store_flags(3, used_flags(true, true));
        assert_eq!(
            desc.read_array::<8>(16 * 3 + 8),
            Some([0xdc, 0x05, 0, 0, 7, 0, 0x82, 0x80])
        );
        let driver = mem.slice(&t.avail).unwrap();
        driver.write(0, &[3, 0x80, 2, 0]).unwrap();
        assert_eq!(ring.driver_event(), (0x8003, EVENT_F_DESC));
        ring.set_device_event_flags(EVENT_F_DISABLE);
        let device = mem.slice(&t.used).unwrap();
        assert_eq!(device.read_array::<2>(2), Some([1, 0]));
    }

    #[test]
    fn availability_follows_the_wrap_counter() {
        assert!(is_available(DESC_F_AVAIL, true));
        assert!(!is_available(DESC_F_AVAIL | DESC_F_USED, true), "used");
        assert!(is_available(DESC_F_USED, false));
        assert!(!is_available(0, false), "used in the first round's view");
        assert!(!is_available(DESC_F_AVAIL, false));
    }
}
