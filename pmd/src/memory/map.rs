//! The memory table of one front-end: regions mapped from its files, and translation of
//! guest addresses into [`GuestRange`]s (plain numbers, no pointers) that only a
//! [`GuestMemoryMap`] turns into accessible [`GuestSlice`]s.
#![forbid(unsafe_code)]

use std::fs::File;
use std::sync::Arc;

use thiserror::Error;

use super::slice::{GuestSlice, Windows};
use crate::mmap::{self, Mapping};

/// One region as described by the front-end, before it is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest physical address of the first byte (what descriptors carry; an IOVA for a
    /// vfio-user DMA map).
    pub guest_phys_addr: u64,
    /// Length of the region in bytes.
    pub size: u64,
    /// The front-end's own virtual address of the first byte (what vhost-user ring
    /// addresses carry).
    pub user_addr: u64,
    /// Offset of the first byte inside the file descriptor.
    pub mmap_offset: u64,
}

impl RegionSpec {
    /// Checks the region on its own: non-empty and no address range wraps.
    pub fn validate(&self) -> Result<(), MemoryError> {
        if self.size == 0 {
            return Err(MemoryError::EmptyRegion(*self));
        }
        let wraps = self.guest_phys_addr.checked_add(self.size).is_none()
            || self.user_addr.checked_add(self.size).is_none()
            || self.mmap_offset.checked_add(self.size).is_none();
        if wraps {
            return Err(MemoryError::WrappingRegion(*self));
        }
        Ok(())
    }

    fn gpa_end(&self) -> u64 {
        self.guest_phys_addr + self.size
    }

    fn user_end(&self) -> u64 {
        self.user_addr + self.size
    }

    /// The file window that serves the region, in pages of `page` bytes: from
    /// `mmap_offset` rounded down to `mmap_offset + size` rounded up. Returns the window's
    /// file offset and length; `None` when it does not fit the address space.
    fn window(&self, page: u64) -> Option<(u64, u64)> {
        let first = self.mmap_offset - self.mmap_offset % page;
        let end = self
            .mmap_offset
            .checked_add(self.size)?
            .checked_next_multiple_of(page)?;
        Some((first, end - first))
    }
}

/// Why a memory table or region was refused.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// A region of size zero.
    #[error("region {0:x?} has size 0")]
    EmptyRegion(RegionSpec),
    /// A region whose guest-physical, user or file range passes 2^64.
    #[error("region {0:x?} wraps around the address space")]
    WrappingRegion(RegionSpec),
    /// Two regions share guest-physical or user addresses.
    #[error("regions {0:x?} and {1:x?} overlap")]
    Overlap(RegionSpec, RegionSpec),
    /// The fd is not a regular file (memfd, hugetlbfs or tmpfs file).
    #[error("region {0:x?}: the file descriptor is not a regular file")]
    NotAFile(RegionSpec),
    /// The file is shorter than `mmap_offset + size`.
    #[error("region {spec:x?}: file is {file_size} bytes, region needs {needed}")]
    FileTooSmall {
        /// The region.
        spec: RegionSpec,
        /// Size of the file behind the fd.
        file_size: u64,
        /// `mmap_offset + size`.
        needed: u64,
    },
    /// The table would hold more regions than allowed.
    #[error("{count} regions exceed the limit of {max}")]
    TooManyRegions {
        /// Regions asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `fstat`, `mmap` or the SIGBUS fence failed.
    #[error("region {0:x?}: {1}")]
    Os(RegionSpec, std::io::Error),
}

/// What mapping a region from its file will cost, checked before anything is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionPlan {
    /// The region.
    pub spec: RegionSpec,
    /// Page size of the backing file (huge page size on hugetlbfs).
    pub page: u64,
    /// File offset of the window that will be mapped.
    pub window_offset: u64,
    /// Bytes that will be mapped and populated.
    pub window_len: u64,
    /// The file is a memfd sealed against shrinking.
    pub sealed: bool,
}

impl RegionPlan {
    /// Checks `file` against `spec` (a regular file long enough) and works out the window
    /// to map: only the pages that serve the region, whatever `mmap_offset` is.
    pub fn new(spec: RegionSpec, file: &File) -> Result<Self, MemoryError> {
        spec.validate()?;
        let meta = file.metadata().map_err(|e| MemoryError::Os(spec, e))?;
        if !meta.file_type().is_file() {
            return Err(MemoryError::NotAFile(spec));
        }
        let needed = spec.mmap_offset + spec.size;
        if meta.len() < needed {
            return Err(MemoryError::FileTooSmall {
                spec,
                file_size: meta.len(),
                needed,
            });
        }
        let page = mmap::file_page_size(file).map_err(|e| MemoryError::Os(spec, e))?;
        let (window_offset, window_len) =
            spec.window(page).ok_or(MemoryError::WrappingRegion(spec))?;
        Ok(RegionPlan {
            spec,
            page,
            window_offset,
            window_len,
            sealed: mmap::sealed_against_shrink(file),
        })
    }
}

/// A region mapped into this process. Unmapped when the last `Arc` is dropped.
#[derive(Debug)]
pub struct MappedRegion {
    plan: RegionPlan,
    mapping: Mapping,
    /// Offset of the region's first byte inside `mapping`.
    start: usize,
}

impl MappedRegion {
    /// Maps `spec` from `file`: only its window, `MAP_SHARED`, populated, fenced.
    pub fn map(spec: RegionSpec, file: &File) -> Result<Self, MemoryError> {
        let plan = RegionPlan::new(spec, file)?;
        Self::map_planned(plan, file)
    }

    /// Maps a region whose plan was checked (against a memory limit, say) beforehand.
    pub fn map_planned(plan: RegionPlan, file: &File) -> Result<Self, MemoryError> {
        let spec = plan.spec;
        let len =
            usize::try_from(plan.window_len).map_err(|_| MemoryError::WrappingRegion(spec))?;
        let page = usize::try_from(plan.page).map_err(|_| MemoryError::WrappingRegion(spec))?;
        let mapping = Mapping::shared_populated(file, plan.window_offset, len, page)
            .map_err(|e| MemoryError::Os(spec, e))?;
        Ok(MappedRegion {
            plan,
            mapping,
            start: (spec.mmap_offset - plan.window_offset) as usize,
        })
    }

    /// The region as the front-end described it.
    pub fn spec(&self) -> &RegionSpec {
        &self.plan.spec
    }

    /// True when the backing file lives on hugetlbfs (page size above 4 KiB).
    pub fn is_hugetlb(&self) -> bool {
        self.plan.page > 4096
    }

    /// True when the backing file is sealed against shrinking.
    pub fn is_sealed(&self) -> bool {
        self.plan.sealed
    }

    /// Bytes mapped for this region.
    pub fn mapped_bytes(&self) -> u64 {
        self.plan.window_len
    }

    /// Accesses that faulted because the file shrank under the mapping.
    pub fn faults(&self) -> u64 {
        self.mapping.faults()
    }

    /// The mapping and the offset of the region's first byte in it (for [`Windows`]).
    pub(super) fn window(&self) -> (&Mapping, usize) {
        (&self.mapping, self.start)
    }
}

/// A range of one region of a [`GuestMemoryMap`]: plain numbers, safe to keep anywhere.
/// Only the map it came from turns it into memory, after checking it again; used with any
/// other map it reads as out of range or as other guest memory, never as host memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRange {
    region: u32,
    offset: u64,
    len: u32,
}

impl GuestRange {
    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True for an empty range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part of the range from `skip` bytes in, at most `len` bytes long.
    #[inline]
    pub fn sub(&self, skip: u32, len: u32) -> GuestRange {
        let skip = skip.min(self.len);
        GuestRange {
            region: self.region,
            offset: self.offset + u64::from(skip),
            len: len.min(self.len - skip),
        }
    }
}

/// An immutable table of mapped regions with address translation.
#[derive(Debug, Default, Clone)]
pub struct GuestMemoryMap {
    regions: Vec<Arc<MappedRegion>>,
    windows: Windows,
}

impl GuestMemoryMap {
    /// Builds a table, refusing overlapping regions and more than `max_regions`.
    pub fn new(regions: Vec<Arc<MappedRegion>>, max_regions: usize) -> Result<Self, MemoryError> {
        if regions.len() > max_regions {
            return Err(MemoryError::TooManyRegions {
                count: regions.len(),
                max: max_regions,
            });
        }
        check_disjoint(regions.iter().map(|r| *r.spec()))?;
        let windows = Windows::new(&regions);
        Ok(GuestMemoryMap { regions, windows })
    }

    /// The mapped regions, in the order the front-end gave them.
    pub fn regions(&self) -> &[Arc<MappedRegion>] {
        &self.regions
    }

    /// True when no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Bytes mapped for all regions.
    pub fn mapped_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.mapped_bytes()).sum()
    }

    /// Faults repaired in any region (the front-end shrank a file under its mapping).
    pub fn faults(&self) -> u64 {
        self.regions.iter().map(|r| r.faults()).sum()
    }

    fn whole(found: Option<(u32, u64, u64)>, len: u64) -> Option<GuestRange> {
        let (region, offset, room) = found?;
        (len <= room).then_some(GuestRange {
            region,
            offset,
            len: u32::try_from(len).ok()?,
        })
    }

    /// Translates a front-end virtual address range (vhost-user ring addresses). The whole
    /// range must lie inside one region.
    pub fn translate_user(&self, addr: u64, len: u64) -> Option<GuestRange> {
        Self::whole(self.windows.find(addr, true), len)
    }

    /// Translates a guest physical address range (descriptor buffers). The whole range
    /// must lie inside one region.
    #[inline]
    pub fn translate_gpa(&self, gpa: u64, len: u64) -> Option<GuestRange> {
        Self::whole(self.windows.find(gpa, false), len)
    }

    /// The range from `gpa` to the end of its region (at most 4 GiB - 1): used to split
    /// buffers that cross a region boundary.
    #[inline]
    pub fn translate_gpa_prefix(&self, gpa: u64) -> Option<GuestRange> {
        let (region, offset, room) = self.windows.find(gpa, false)?;
        Some(GuestRange {
            region,
            offset,
            len: room.min(u64::from(u32::MAX)) as u32,
        })
    }

    /// The guest physical address of a range's first byte.
    pub fn gpa_of(&self, range: &GuestRange) -> Option<u64> {
        self.windows.gpa(range.region)?.checked_add(range.offset)
    }

    /// The memory of `range`, checked against this map.
    #[inline]
    pub fn slice(&self, range: &GuestRange) -> Option<GuestSlice<'_>> {
        self.windows.slice(range.region, range.offset, range.len)
    }

    /// Copies guest memory from `gpa` into `dst`, across region boundaries if needed.
    pub fn read_gpa(&self, gpa: u64, dst: &mut [u8]) -> Option<()> {
        let mut at = gpa;
        let mut done = 0;
        while done < dst.len() {
            let prefix = self.translate_gpa_prefix(at)?;
            let n = (dst.len() - done).min(prefix.len() as usize);
            self.slice(&prefix)?.read(0, &mut dst[done..done + n])?;
            done += n;
            at = at.checked_add(n as u64)?;
        }
        Some(())
    }

    /// True when every byte of `gpa..gpa + len` is guest memory (possibly several regions).
    pub fn covers_gpa(&self, gpa: u64, len: u64) -> bool {
        let mut at = gpa;
        let mut left = len;
        while left > 0 {
            let Some(prefix) = self.translate_gpa_prefix(at) else {
                return false;
            };
            let take = left.min(u64::from(prefix.len()));
            let Some(next) = at.checked_add(take) else {
                return false;
            };
            at = next;
            left -= take;
        }
        true
    }
}

/// Checks every region on its own and that no two share guest-physical or user addresses.
pub fn check_disjoint(specs: impl Iterator<Item = RegionSpec>) -> Result<(), MemoryError> {
    let mut specs: Vec<RegionSpec> = specs.collect();
    for spec in &specs {
        spec.validate()?;
    }
    specs.sort_by_key(|s| s.guest_phys_addr);
    for pair in specs.windows(2) {
        if pair[0].gpa_end() > pair[1].guest_phys_addr {
            return Err(MemoryError::Overlap(pair[0], pair[1]));
        }
    }
    specs.sort_by_key(|s| s.user_addr);
    for pair in specs.windows(2) {
        if pair[0].user_end() > pair[1].user_addr {
            return Err(MemoryError::Overlap(pair[0], pair[1]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::test_memfd;

    fn spec(gpa: u64, size: u64, user: u64, off: u64) -> RegionSpec {
        RegionSpec {
            guest_phys_addr: gpa,
            size,
            user_addr: user,
            mmap_offset: off,
        }
    }

    #[test]
    fn refuses_empty_and_wrapping_regions() {
        assert!(matches!(
            spec(0, 0, 0, 0).validate(),
            Err(MemoryError::EmptyRegion(_))
        ));
        assert!(matches!(
            spec(u64::MAX - 10, 4096, 0, 0).validate(),
            Err(MemoryError::WrappingRegion(_))
        ));
        assert!(matches!(
            spec(0, 4096, u64::MAX, 0).validate(),
            Err(MemoryError::WrappingRegion(_))
        ));
        assert!(spec(0, 4096, 0x1000, 0).validate().is_ok());
    }

    #[test]
    fn refuses_overlap_in_either_address_space() {
        let a = spec(0, 0x2000, 0x10_0000, 0);
        let gpa_overlap = spec(0x1000, 0x1000, 0x20_0000, 0);
        let user_overlap = spec(0x10_0000, 0x1000, 0x10_1000, 0);
        let fine = spec(0x2000, 0x1000, 0x10_2000, 0);
        assert!(check_disjoint([a, gpa_overlap].into_iter()).is_err());
        assert!(check_disjoint([a, user_overlap].into_iter()).is_err());
        assert!(check_disjoint([a, fine].into_iter()).is_ok());
    }

    #[test]
    fn maps_and_translates_whole_ranges_only() {
        let file = test_memfd(3 * 4096);
        let s = spec(0x1_0000, 2 * 4096, 0x7000_0000, 4096);
        let region = Arc::new(MappedRegion::map(s, &file).unwrap());
        let map = GuestMemoryMap::new(vec![region], 8).unwrap();
        let p = map.translate_gpa(0x1_0000, 16).unwrap();
        let q = map.translate_user(0x7000_0000, 16).unwrap();
        assert_eq!(p, q);
        assert!(map.translate_gpa(0x1_0000 + 2 * 4096 - 8, 8).is_some());
        assert!(map.translate_gpa(0x1_0000 + 2 * 4096 - 8, 9).is_none());
        assert!(map.translate_gpa(0xffff, 2).is_none());
        assert!(map.translate_gpa(u64::MAX, 2).is_none());
        assert!(map.translate_user(0x7000_0000, u64::MAX).is_none());
        assert_eq!(map.gpa_of(&p), Some(0x1_0000));
    }

    #[test]
    fn mapping_sees_the_file_at_the_offset() {
        use std::os::unix::fs::FileExt;
        let file = test_memfd(2 * 4096);
        file.write_all_at(b"hello", 4096 + 8).unwrap();
        let s = spec(0, 4096, 0x1000, 4096);
        let region = Arc::new(MappedRegion::map(s, &file).unwrap());
        let map = GuestMemoryMap::new(vec![region], 8).unwrap();
        let mut bytes = [0u8; 5];
        map.read_gpa(8, &mut bytes).unwrap();
        assert_eq!(&bytes, b"hello");
    }

    #[test]
    fn maps_only_the_pages_that_serve_the_region() {
        // A 4 KiB region at a 1 GiB offset of a sparse file: one page is mapped, not 1 GiB.
        let file = test_memfd((1 << 30) + 3 * 4096);
        let s = spec(0, 4096, 0x1000, (1 << 30) + 100);
        let plan = RegionPlan::new(s, &file).unwrap();
        assert_eq!(plan.window_offset, 1 << 30);
        assert_eq!(plan.window_len, 2 * 4096);
        let region = MappedRegion::map_planned(plan, &file).unwrap();
        assert_eq!(region.mapped_bytes(), 2 * 4096);
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"xyz", (1 << 30) + 100).unwrap();
        let map = GuestMemoryMap::new(vec![Arc::new(region)], 8).unwrap();
        let mut got = [0u8; 3];
        map.read_gpa(0, &mut got).unwrap();
        assert_eq!(&got, b"xyz");
    }

    #[test]
    fn reads_across_regions_and_checks_coverage() {
        use std::os::unix::fs::FileExt;
        let (f1, f2) = (test_memfd(4096), test_memfd(4096));
        f1.write_all_at(b"ab", 4094).unwrap();
        f2.write_all_at(b"cd", 0).unwrap();
        let r1 = Arc::new(MappedRegion::map(spec(0, 4096, 0x10_0000, 0), &f1).unwrap());
        let r2 = Arc::new(MappedRegion::map(spec(4096, 4096, 0x20_0000, 0), &f2).unwrap());
        let map = GuestMemoryMap::new(vec![r1, r2], 8).unwrap();
        let mut got = [0u8; 4];
        map.read_gpa(4094, &mut got).unwrap();
        assert_eq!(&got, b"abcd");
        assert!(map.translate_gpa(4094, 4).is_none());
        assert!(map.covers_gpa(4094, 4));
        assert!(!map.covers_gpa(8190, 4));
    }

    #[test]
    fn a_range_from_another_map_is_checked_again() {
        let big = test_memfd(8 * 4096);
        let small = test_memfd(4096);
        let map_big = GuestMemoryMap::new(
            vec![Arc::new(
                MappedRegion::map(spec(0, 8 * 4096, 0, 0), &big).unwrap(),
            )],
            8,
        )
        .unwrap();
        let map_small = GuestMemoryMap::new(
            vec![Arc::new(
                MappedRegion::map(spec(0, 4096, 0, 0), &small).unwrap(),
            )],
            8,
        )
        .unwrap();
        let far = map_big.translate_gpa(6 * 4096, 4096).unwrap();
        assert!(map_small.slice(&far).is_none());
        assert!(map_big.slice(&far).is_some());
    }

    #[test]
    fn refuses_short_files_and_too_many_regions() {
        let file = test_memfd(4096);
        let s = spec(0, 8192, 0, 0);
        assert!(matches!(
            MappedRegion::map(s, &file),
            Err(MemoryError::FileTooSmall { .. })
        ));
        let r = Arc::new(MappedRegion::map(spec(0, 4096, 0, 0), &file).unwrap());
        assert!(matches!(
            GuestMemoryMap::new(vec![r.clone(), r], 1),
            Err(MemoryError::TooManyRegions { .. })
        ));
    }

    #[test]
    fn a_file_that_shrinks_under_the_mapping_faults_only_its_region() {
        let file = test_memfd(4 * 4096);
        let s = spec(0, 4 * 4096, 0x1000_0000, 0);
        let map =
            GuestMemoryMap::new(vec![Arc::new(MappedRegion::map(s, &file).unwrap())], 8).unwrap();
        let range = map.translate_gpa(0, 4 * 4096).unwrap();
        map.slice(&range).unwrap().write(8192, b"before").unwrap();
        assert_eq!(map.faults(), 0);
        // The front-end truncates its memfd: the pages are gone from under the mapping.
        file.set_len(0).unwrap();
        let mut got = [0xffu8; 6];
        map.slice(&range).unwrap().read(8192, &mut got).unwrap();
        assert_eq!(got, [0u8; 6], "a repaired page reads as zeros");
        map.slice(&range)
            .unwrap()
            .write(3 * 4096, b"after")
            .unwrap();
        assert!(map.faults() >= 2, "faults: {}", map.faults());
    }
}
