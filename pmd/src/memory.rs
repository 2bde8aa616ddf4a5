//! Guest memory shared by a vhost-user front-end, mapped into this process.
//!
//! The front-end (QEMU, DPDK virtio_user, vhost-pktgen) owns guest memory and passes one
//! file descriptor per region (`SET_MEM_TABLE`, `ADD_MEM_REG`). A [`MappedRegion`] is one
//! such region mapped `MAP_SHARED | MAP_POPULATE`; a [`GuestMemoryMap`] is the immutable
//! table of regions a data-plane snapshot points into. Tables are replaced, never edited,
//! so a reader holding an `Arc<GuestMemoryMap>` keeps every mapping it can see alive.
//!
//! This module and `mmap.rs` are the only places in the crate that create raw pointers
//! into guest memory.

use std::fs::File;
use std::ptr::NonNull;
use std::sync::Arc;

use thiserror::Error;

use crate::mmap::Mapping;

/// One region as described by the front-end, before it is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest physical address of the first byte (what descriptors carry).
    pub guest_phys_addr: u64,
    /// Length of the region in bytes.
    pub size: u64,
    /// The front-end's own virtual address of the first byte (what ring addresses carry).
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
    /// `fstat` or `mmap` failed.
    #[error("region {0:x?}: {1}")]
    Os(RegionSpec, std::io::Error),
}

/// A region mapped into this process. Unmapped when the last `Arc` is dropped.
#[derive(Debug)]
pub struct MappedRegion {
    spec: RegionSpec,
    mapping: Mapping,
    /// Offset of `spec.mmap_offset` inside `mapping` (the mapping starts at file offset 0
    /// so that hugetlbfs alignment rules are met whatever offset the front-end chose).
    start: usize,
    hugetlb: bool,
}

impl MappedRegion {
    /// Maps `spec` from `file`: `MAP_SHARED`, populated, rounded to the file's page size.
    pub fn map(spec: RegionSpec, file: &File) -> Result<Self, MemoryError> {
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
        let page = crate::mmap::file_page_size(file).map_err(|e| MemoryError::Os(spec, e))?;
        let len = needed
            .checked_next_multiple_of(page)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or(MemoryError::WrappingRegion(spec))?;
        let mapping = Mapping::shared_populated(file, len, page as usize)
            .map_err(|e| MemoryError::Os(spec, e))?;
        Ok(MappedRegion {
            spec,
            mapping,
            start: spec.mmap_offset as usize,
            hugetlb: page > 4096,
        })
    }

    /// The region as the front-end described it.
    pub fn spec(&self) -> &RegionSpec {
        &self.spec
    }

    /// True when the backing file lives on hugetlbfs (page size above 4 KiB).
    pub fn is_hugetlb(&self) -> bool {
        self.hugetlb
    }

    /// Host pointer for `offset..offset + len` inside the region, if wholly inside.
    fn host_range(&self, offset: u64, len: u64) -> Option<NonNull<u8>> {
        let end = offset.checked_add(len)?;
        if end > self.spec.size {
            return None;
        }
        self.mapping.ptr_at(self.start + offset as usize)
    }
}

/// An immutable table of mapped regions with address translation.
#[derive(Debug, Default, Clone)]
pub struct GuestMemoryMap {
    regions: Vec<Arc<MappedRegion>>,
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
        check_disjoint(regions.iter().map(|r| r.spec))?;
        Ok(GuestMemoryMap { regions })
    }

    /// The mapped regions, in the order the front-end gave them.
    pub fn regions(&self) -> &[Arc<MappedRegion>] {
        &self.regions
    }

    /// True when no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Translates a front-end virtual address range (ring addresses) to a host pointer.
    /// The whole range must lie inside one region.
    pub fn translate_user(&self, addr: u64, len: u64) -> Option<NonNull<u8>> {
        self.regions.iter().find_map(|r| {
            let offset = addr.checked_sub(r.spec.user_addr)?;
            (offset < r.spec.size).then(|| r.host_range(offset, len))?
        })
    }

    /// The host pointer of `gpa` and how many bytes follow it in the same region. Used to
    /// split buffers that cross a region boundary.
    pub fn translate_gpa_prefix(&self, gpa: u64) -> Option<(NonNull<u8>, u64)> {
        self.regions.iter().find_map(|r| {
            let offset = gpa.checked_sub(r.spec.guest_phys_addr)?;
            (offset < r.spec.size)
                .then(|| Some((r.host_range(offset, 1)?, r.spec.size - offset)))?
        })
    }

    /// Translates a guest physical address range (descriptor buffers) to a host pointer.
    /// The whole range must lie inside one region.
    pub fn translate_gpa(&self, gpa: u64, len: u64) -> Option<NonNull<u8>> {
        self.regions.iter().find_map(|r| {
            let offset = gpa.checked_sub(r.spec.guest_phys_addr)?;
            (offset < r.spec.size).then(|| r.host_range(offset, len))?
        })
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
    }

    #[test]
    fn mapping_sees_the_file_at_the_offset() {
        use std::os::unix::fs::FileExt;
        let file = test_memfd(2 * 4096);
        file.write_all_at(b"hello", 4096 + 8).unwrap();
        let s = spec(0, 4096, 0x1000, 4096);
        let region = Arc::new(MappedRegion::map(s, &file).unwrap());
        let map = GuestMemoryMap::new(vec![region], 8).unwrap();
        let p = map.translate_gpa(8, 5).unwrap();
        // SAFETY: translate_gpa checked that 5 bytes at p lie inside the live mapping held
        // by `map`, and nothing else writes to the memfd during the test.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), 5) };
        assert_eq!(bytes, b"hello");
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
}
