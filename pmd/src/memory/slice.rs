//! [`GuestSlice`]: a checked view of guest memory, and the only code of the data plane
//! that dereferences a pointer into it.
//!
//! Guest memory is shared with a driver that may write it at any time, so nothing here
//! hands out a Rust reference to it: ring metadata is read and written with atomics or
//! volatile accesses (copied once, then validated from the copy), frame data is moved with
//! `ptr::copy` into or out of memory we own or another guest's memory. Every access is
//! bounds-checked against the view, and a view borrows the region that keeps its mapping
//! alive, so it cannot outlive the memory.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use super::map::MappedRegion;
use crate::mmap::Mapping;

/// One region as translation and the fast path read it.
#[derive(Clone, Copy, Debug)]
struct Window {
    gpa: u64,
    user: u64,
    size: u64,
    /// Host address of the region's first byte, inside a mapping `Windows` keeps alive.
    host: NonNull<u8>,
}

/// The regions of one memory map in one flat array (guest-physical and user start, size,
/// host address): what every translation and every access reads, in a cache line or two
/// instead of a pointer chase per region. Holds the regions' `Arc`s, so every address in
/// it stays mapped as long as it exists.
#[derive(Clone, Debug, Default)]
pub(super) struct Windows {
    entries: Box<[Window]>,
    _regions: Vec<Arc<MappedRegion>>,
}

// SAFETY: the host addresses point into mappings owned (through the `Arc`s) by the value
// itself; they are only turned into `GuestSlice`s, which access the memory with volatile,
// atomic or `ptr::copy` operations, as the data plane does from several threads anyway.
unsafe impl Send for Windows {}
// SAFETY: as above; nothing in `Windows` is mutated after construction.
unsafe impl Sync for Windows {}

impl Windows {
    /// The windows of `regions`, in order.
    pub(super) fn new(regions: &[Arc<MappedRegion>]) -> Windows {
        let entries = regions
            .iter()
            .map(|r| {
                let (mapping, start) = r.window();
                let spec = r.spec();
                // The mapping is the region's page-rounded window, `start` the region's
                // offset in it, so nothing is cut here; the clamp makes the bound local.
                let start = start.min(mapping.len());
                let room = (mapping.len() - start) as u64;
                Window {
                    gpa: spec.guest_phys_addr,
                    user: spec.user_addr,
                    size: spec.size.min(room),
                    // SAFETY: start <= mapping.len(), so the result stays inside (or one past
                    // the end of) the mapping, which starts at a non-null `base`; `size` is
                    // clamped to what follows `start` in the mapping.
                    host: unsafe { mapping.base().add(start) },
                }
            })
            .collect();
        Windows {
            entries,
            _regions: regions.to_vec(),
        }
    }

    /// The region holding guest-physical address `gpa` (`user == false`) or front-end
    /// address `gpa` (`user == true`): its index, the offset of the address in it, and the
    /// bytes from there to the region's end.
    #[inline(always)]
    pub(super) fn find(&self, addr: u64, user: bool) -> Option<(u32, u64, u64)> {
        for (i, w) in self.entries.iter().enumerate() {
            let base = if user { w.user } else { w.gpa };
            if let Some(offset) = addr.checked_sub(base) {
                if offset < w.size {
                    return Some((i as u32, offset, w.size - offset));
                }
            }
        }
        None
    }

    /// The guest-physical start of region `index`.
    pub(super) fn gpa(&self, index: u32) -> Option<u64> {
        Some(self.entries.get(index as usize)?.gpa)
    }

    /// `len` bytes of region `index` from `offset`, if wholly inside it.
    #[inline(always)]
    pub(super) fn slice(&self, index: u32, offset: u64, len: u32) -> Option<GuestSlice<'_>> {
        let w = self.entries.get(index as usize)?;
        if offset > w.size || u64::from(len) > w.size - offset {
            return None;
        }
        Some(GuestSlice {
            // SAFETY: offset + len <= size, so the range lies inside the region, which lies
            // inside a mapping kept alive by `self` (see `new`); `host` is not null.
            ptr: unsafe { w.host.add(offset as usize) },
            len: len as usize,
            _region: PhantomData,
        })
    }
}

/// A range of guest memory, valid while the region it was made from is borrowed.
///
/// Deliberately neither `Copy` nor `Clone` and without a public pointer: code outside
/// this module can only ask for checked accesses.
#[derive(Debug)]
pub struct GuestSlice<'m> {
    ptr: NonNull<u8>,
    len: usize,
    _region: PhantomData<&'m Mapping>,
}

// SAFETY: a GuestSlice only performs volatile, atomic or `ptr::copy` accesses to shared
// memory that stays mapped for 'm; sending or sharing the view across threads is what
// the data plane does with guest memory anyway (several PMDs, one driver).
unsafe impl Send for GuestSlice<'_> {}
// SAFETY: as above; no method gives out a reference into the memory.
unsafe impl Sync for GuestSlice<'_> {}

impl<'m> GuestSlice<'m> {
    /// `len` bytes of `mapping` from `offset`, if wholly inside it.
    #[cfg(test)]
    fn new(mapping: &'m Mapping, offset: usize, len: usize) -> Option<Self> {
        if offset.checked_add(len)? > mapping.len() {
            return None;
        }
        Some(GuestSlice {
            // SAFETY: offset <= mapping.len(), so the result stays inside (or one past the
            // end of) the mapping that starts at `base`, which is not null.
            ptr: unsafe { mapping.base().add(offset) },
            len,
            _region: PhantomData,
        })
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty view.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to `offset..offset + n`, if inside the view.
    #[inline(always)]
    fn at(&self, offset: usize, n: usize) -> Option<*mut u8> {
        if offset > self.len || n > self.len - offset {
            return None;
        }
        // SAFETY: offset <= len, inside the view (see `new`).
        Some(unsafe { self.ptr.as_ptr().add(offset) })
    }

    /// The view of `offset..offset + len`, if inside this one.
    #[inline]
    pub fn subslice(&self, offset: usize, len: usize) -> Option<GuestSlice<'m>> {
        let p = self.at(offset, len)?;
        Some(GuestSlice {
            ptr: NonNull::new(p)?,
            len,
            _region: PhantomData,
        })
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`.
    #[inline]
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        let src = self.at(offset, dst.len())?;
        // SAFETY: `src..src + dst.len()` is inside the view (checked by `at`) and mapped
        // for 'm; `dst` is our own memory, which guest memory cannot overlap. The driver
        // may write the source concurrently: the copy is what the caller uses.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Some(())
    }

    /// Copies `N` bytes from `offset` into an array.
    #[inline]
    pub fn read_array<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        self.read(offset, &mut out)?;
        Some(out)
    }

    /// Copies `src` into the view at `offset`.
    #[inline]
    pub fn write(&self, offset: usize, src: &[u8]) -> Option<()> {
        let dst = self.at(offset, src.len())?;
        // SAFETY: `dst..dst + src.len()` is inside the view and mapped writable for 'm;
        // `src` is our own memory, which guest memory cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Some(())
    }

    /// Copies `len` bytes from `offset` of this view to `dst_offset` of `dst` (another
    /// guest's memory, or this one's).
    #[inline]
    pub fn copy_to(
        &self,
        offset: usize,
        dst: &GuestSlice<'_>,
        dst_offset: usize,
        len: usize,
    ) -> Option<()> {
        let s = self.at(offset, len)?;
        let d = dst.at(dst_offset, len)?;
        // SAFETY: both ranges are inside their views (checked by `at`) and mapped for the
        // views' lifetimes. A guest can point a TX and an RX buffer at the same memory, so
        // the ranges may overlap: `copy` (memmove) is correct for that, and the result can
        // only corrupt that guest's own data.
        unsafe { std::ptr::copy(s, d, len) };
        Some(())
    }

    /// Loads the u16 at `offset` atomically (`offset` must be 2-byte aligned in memory).
    #[inline]
    pub fn load_u16(&self, offset: usize, order: Ordering) -> Option<u16> {
        Some(self.atomic_u16(offset)?.load(order))
    }

    /// Stores `value` at `offset` atomically (`offset` must be 2-byte aligned in memory).
    #[inline]
    pub fn store_u16(&self, offset: usize, value: u16, order: Ordering) -> Option<()> {
        self.atomic_u16(offset)?.store(value, order);
        Some(())
    }

    #[inline(always)]
    fn atomic_u16(&self, offset: usize) -> Option<&AtomicU16> {
        let p = self.at(offset, 2)?;
        if !(p as usize).is_multiple_of(2) {
            return None;
        }
        // SAFETY:
        // - `p..p + 2` is inside the view and mapped for the lifetime of `&self` (<= 'm);
        // - `p` is 2-byte aligned (checked above) and AtomicU16 has u16's layout;
        // - the driver writes the same word concurrently: atomic access is what makes that
        //   defined, and no non-atomic reference to it exists on our side.
        Some(unsafe { AtomicU16::from_ptr(p.cast()) })
    }

    /// Stores the little-endian `value` at `offset` with one volatile 32-bit store
    /// (`offset` must be 4-byte aligned in memory).
    #[inline]
    pub fn store_u32_le(&self, offset: usize, value: u32) -> Option<()> {
        let p = self.at(offset, 4)?;
        if !(p as usize).is_multiple_of(4) {
            return None;
        }
        // SAFETY: `p..p + 4` is inside the view, mapped writable, and 4-byte aligned; a
        // volatile store is emitted exactly once, as the driver reads it concurrently.
        unsafe { std::ptr::write_volatile(p.cast::<u32>(), value.to_le()) };
        Some(())
    }

    /// Copies the 16 bytes at `offset` as two little-endian u64 words, with volatile loads
    /// (two 64-bit loads when aligned): the driver may rewrite a descriptor at any time, so
    /// it is read exactly once here and validated from the copy.
    #[inline(always)]
    pub fn read_volatile_le_u64_pair(&self, offset: usize) -> Option<(u64, u64)> {
        let p = self.at(offset, 16)?;
        if (p as usize).is_multiple_of(8) {
            // SAFETY: 16 bytes at `p` are inside the view, mapped, and 8-byte aligned.
            let (lo, hi) = unsafe {
                (
                    std::ptr::read_volatile(p.cast::<u64>()),
                    std::ptr::read_volatile(p.add(8).cast::<u64>()),
                )
            };
            return Some((u64::from_le(lo), u64::from_le(hi)));
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: i < 16, inside the 16 bytes checked above.
            *b = unsafe { std::ptr::read_volatile(p.add(i)) };
        }
        let (lo, hi) = out.split_at(8);
        Some((
            u64::from_le_bytes(lo.try_into().ok()?),
            u64::from_le_bytes(hi.try_into().ok()?),
        ))
    }

    /// Asks the CPU to start loading the cache line at `offset` (a hint: nothing is read).
    #[inline(always)]
    pub fn prefetch(&self, offset: usize) {
        if offset < self.len {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 never faults and has no architectural effect; the address
            // is inside the view anyway.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    self.ptr.as_ptr().add(offset).cast::<i8>(),
                )
            };
        }
    }

    /// Asks the CPU to start loading the cache line at `offset` for writing (a hint:
    /// nothing is read or written). A line the other core last held is then fetched once,
    /// owned, instead of shared by a read prefetch and invalidated again by the store.
    /// Where the CPU lacks PREFETCHW it is a read prefetch.
    #[inline(always)]
    pub fn prefetch_write(&self, offset: usize) {
        if offset >= self.len {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if *HAS_PREFETCHW {
                // SAFETY: PREFETCHW never faults, has no architectural effect and touches
                // neither the stack nor the flags; the CPU reports it (CPUID), and the
                // address is inside the view anyway.
                unsafe {
                    std::arch::asm!(
                        "prefetchw [{p}]",
                        p = in(reg) self.ptr.as_ptr().add(offset),
                        options(nostack, preserves_flags, readonly)
                    )
                };
            } else {
                self.prefetch(offset);
            }
        }
    }
}

/// Whether the CPU has PREFETCHW (CPUID 8000_0001h, ECX bit 8), read once.
#[cfg(target_arch = "x86_64")]
static HAS_PREFETCHW: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    // CPUID is unprivileged and present on every x86_64 CPU.
    let max_extended = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    max_extended >= 0x8000_0001 && std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::test_memfd;

    fn mapping(len: usize) -> Mapping {
        Mapping::shared_populated(&test_memfd(len as u64), 0, len, 4096).unwrap()
    }

    #[test]
    fn every_access_is_bounded_by_the_view() {
        let m = mapping(4096);
        let whole = GuestSlice::new(&m, 0, 4096).unwrap();
        assert!(GuestSlice::new(&m, 4000, 97).is_none());
        let s = whole.subslice(4000, 96).unwrap();
        assert_eq!(s.len(), 96);
        assert!(s.write(90, b"123456").is_some());
        assert!(s.write(91, b"123456").is_none());
        assert!(s.read_array::<7>(90).is_none());
        assert_eq!(s.read_array::<6>(90), Some(*b"123456"));
        assert!(s.subslice(1, 96).is_none());
        assert!(s.subslice(usize::MAX, 2).is_none());
        assert!(s.load_u16(95, Ordering::Relaxed).is_none());
        assert!(s.read_volatile_le_u64_pair(81).is_none());
    }

    #[test]
    fn atomics_and_volatile_copies_see_the_same_bytes() {
        let m = mapping(4096);
        let s = GuestSlice::new(&m, 0, 4096).unwrap();
        s.store_u16(2, 0xbeef, Ordering::Release).unwrap();
        assert_eq!(s.read_array::<2>(2), Some(0xbeefu16.to_ne_bytes()));
        assert!(s.store_u16(3, 1, Ordering::Relaxed).is_none(), "unaligned");
        s.store_u32_le(8, 0x0403_0201).unwrap();
        assert!(s.store_u32_le(10, 0).is_none(), "unaligned");
        let bytes: Vec<u8> = (1..=16).collect();
        s.write(16, &bytes).unwrap();
        let want = (0x0807_0605_0403_0201, 0x100f_0e0d_0c0b_0a09);
        assert_eq!(s.read_volatile_le_u64_pair(16), Some(want));
        s.write(33, &bytes).unwrap();
        assert_eq!(
            s.read_volatile_le_u64_pair(33),
            Some(want),
            "unaligned table"
        );
        assert_eq!(s.read_array::<4>(8), Some([1, 2, 3, 4]));
    }

    #[test]
    fn copies_between_views_and_within_one() {
        let (a, b) = (mapping(4096), mapping(4096));
        let (sa, sb) = (
            GuestSlice::new(&a, 0, 4096).unwrap(),
            GuestSlice::new(&b, 0, 4096).unwrap(),
        );
        sa.write(0, b"0123456789").unwrap();
        sa.copy_to(2, &sb, 100, 5).unwrap();
        assert_eq!(sb.read_array::<5>(100), Some(*b"23456"));
        sa.copy_to(0, &sa, 1, 9).unwrap();
        assert_eq!(sa.read_array::<10>(0), Some(*b"0012345678"));
        assert!(sa.copy_to(4090, &sb, 0, 7).is_none());
    }
}
