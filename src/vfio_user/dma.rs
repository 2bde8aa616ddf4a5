//! The client's DMA maps and the guest memory they make.
//!
//! Every map is held (so UNMAP and overlap checks see all of them), but only maps that
//! came with a file and allow both reading and writing become guest memory: a map without
//! a file is the client's own memory (QEMU's BIOS ROM, say) that only DMA_READ/WRITE
//! messages could reach, and a read-only map cannot take received packets. Neither is
//! ever used for packets. Addresses are IOVAs; without a vIOMMU they are guest-physical,
//! and ring addresses are IOVAs too, so a region's "user address" is its IOVA.

use std::fs::File;
use std::sync::Arc;

use pmd::memory::{check_disjoint, GuestMemoryMap, MappedRegion, RegionPlan, RegionSpec};

use super::message::{DmaMap, DmaUnmap, DMA_READ, DMA_WRITE, UNMAP_ALL};
use super::refusal::Refusal;
use super::version::PAGE_SIZE;
use super::wire::Command;

/// One map as held.
#[derive(Debug)]
struct Held {
    iova: u64,
    size: u64,
    /// Mapped into this process: fd-backed and read-write.
    region: Option<Arc<MappedRegion>>,
}

/// The maps of one connection, bounded in count and in bytes mapped.
#[derive(Debug)]
pub struct DmaTable {
    maps: Vec<Held>,
    max_maps: usize,
    max_memory: u64,
    require_sealed: bool,
}

impl DmaTable {
    /// An empty table holding at most `max_maps` maps and mapping at most `max_memory`
    /// bytes; `require_sealed` refuses files the client could still shrink.
    pub fn new(max_maps: usize, max_memory: u64, require_sealed: bool) -> Self {
        DmaTable {
            maps: Vec::new(),
            max_maps,
            max_memory,
            require_sealed,
        }
    }

    /// Maps held (with or without a file).
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True when no map is held.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Bytes mapped into this process.
    pub fn mapped_bytes(&self) -> u64 {
        self.maps
            .iter()
            .filter_map(|m| m.region.as_ref())
            .map(|r| r.mapped_bytes())
            .sum()
    }

    /// Adds a map. Returns true when guest memory changed (the map has a usable file).
    /// Nothing changes on `Err`.
    pub fn map(&mut self, req: &DmaMap, file: Option<File>) -> Result<bool, Refusal> {
        let c = Command::DmaMap;
        if req.size == 0 || req.iova.checked_add(req.size).is_none() {
            return Err(Refusal::invalid(
                c,
                format!("[{:#x}, +{:#x}) is empty or wraps", req.iova, req.size),
            ));
        }
        if !req.iova.is_multiple_of(PAGE_SIZE) || !req.size.is_multiple_of(PAGE_SIZE) {
            return Err(Refusal::invalid(
                c,
                format!("[{:#x}, +{:#x}) is not 4 KiB-aligned", req.iova, req.size),
            ));
        }
        if req.flags & DMA_READ == 0 {
            return Err(Refusal::invalid(c, "a map the device may not read"));
        }
        if self.maps.len() >= self.max_maps {
            return Err(Refusal::TooManyMaps {
                limit: self.max_maps,
            });
        }
        let end = req.iova + req.size;
        if self
            .maps
            .iter()
            .any(|m| req.iova < m.iova + m.size && m.iova < end)
        {
            return Err(Refusal::Overlap {
                iova: req.iova,
                size: req.size,
            });
        }
        let writable = req.flags & DMA_WRITE != 0;
        let region = match file {
            Some(file) if writable => Some(self.map_file(req, &file)?),
            Some(_) => {
                tracing::debug!(
                    iova = req.iova,
                    size = req.size,
                    "read-only DMA map held, not used for packets"
                );
                None
            }
            None => None,
        };
        let changed = region.is_some();
        self.maps.push(Held {
            iova: req.iova,
            size: req.size,
            region,
        });
        Ok(changed)
    }

    fn map_file(&self, req: &DmaMap, file: &File) -> Result<Arc<MappedRegion>, Refusal> {
        let spec = RegionSpec {
            guest_phys_addr: req.iova,
            size: req.size,
            user_addr: req.iova,
            mmap_offset: req.offset,
        };
        let plan = RegionPlan::new(spec, file)?;
        if self.require_sealed && !plan.sealed {
            return Err(Refusal::invalid(
                Command::DmaMap,
                format!(
                    "map at {:#x} is not a memfd sealed against shrinking (require_sealed_memory)",
                    req.iova
                ),
            ));
        }
        let wanted = self.mapped_bytes().saturating_add(plan.window_len);
        if wanted > self.max_memory {
            return Err(Refusal::MemoryLimit {
                wanted,
                limit: self.max_memory,
            });
        }
        Ok(Arc::new(MappedRegion::map_planned(plan, file)?))
    }

    /// Removes the maps inside the range (or all of them). A map that the range cuts is
    /// refused, as VFIO refuses it, and nothing is removed. Returns true when guest memory
    /// changed.
    pub fn unmap(&mut self, req: &DmaUnmap) -> Result<bool, Refusal> {
        if req.flags & UNMAP_ALL != 0 {
            let changed = self.maps.iter().any(|m| m.region.is_some());
            self.maps.clear();
            return Ok(changed);
        }
        let end = req.iova.checked_add(req.size).ok_or_else(|| {
            Refusal::invalid(
                Command::DmaUnmap,
                format!("[{:#x}, +{:#x}) wraps", req.iova, req.size),
            )
        })?;
        let cut = self.maps.iter().find(|m| {
            let overlaps = req.iova < m.iova + m.size && m.iova < end;
            let inside = req.iova <= m.iova && m.iova + m.size <= end;
            overlaps && !inside
        });
        if let Some(m) = cut {
            return Err(Refusal::invalid(
                Command::DmaUnmap,
                format!(
                    "[{:#x}, +{:#x}) cuts the map [{:#x}, +{:#x})",
                    req.iova, req.size, m.iova, m.size
                ),
            ));
        }
        let before = self.maps.iter().filter(|m| m.region.is_some()).count();
        self.maps
            .retain(|m| !(req.iova <= m.iova && m.iova + m.size <= end));
        Ok(self.maps.iter().filter(|m| m.region.is_some()).count() != before)
    }

    /// The guest memory the usable maps make, for the data plane.
    pub fn memory(&self) -> GuestMemoryMap {
        let regions: Vec<Arc<MappedRegion>> =
            self.maps.iter().filter_map(|m| m.region.clone()).collect();
        // Maps were checked disjoint when added, and their count is bounded by max_maps.
        debug_assert!(check_disjoint(regions.iter().map(|r| *r.spec())).is_ok());
        GuestMemoryMap::new(regions, usize::MAX).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(len: u64) -> File {
        // SAFETY: memfd_create returns a new descriptor or -1 (checked).
        let fd = unsafe { libc::memfd_create(c"dma-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    fn map(iova: u64, size: u64, offset: u64, flags: u32) -> DmaMap {
        DmaMap {
            flags,
            offset,
            iova,
            size,
        }
    }

    const RW: u32 = DMA_READ | DMA_WRITE;

    #[test]
    fn only_fd_backed_read_write_maps_become_guest_memory() {
        let mut t = DmaTable::new(8, 1 << 30, false);
        let f = memfd(1 << 20);
        // QEMU's BIOS ROM: no file, read-only.
        assert!(!t
            .map(&map(0xfffc_0000, 0x4_0000, 0, DMA_READ), None)
            .unwrap());
        assert!(!t
            .map(
                &map(0x20_0000, 0x1000, 0, DMA_READ),
                Some(f.try_clone().unwrap())
            )
            .unwrap());
        assert!(t.map(&map(0x10_0000, 0x10_0000, 0, RW), Some(f)).unwrap());
        assert_eq!(t.len(), 3);
        let mem = t.memory();
        assert_eq!(mem.regions().len(), 1);
        assert!(mem.translate_gpa(0x10_0000, 0x10_0000).is_some());
        assert!(
            mem.translate_user(0x10_0000, 16).is_some(),
            "ring addresses are IOVAs"
        );
        assert!(
            mem.translate_gpa(0xfffc_0000, 16).is_none(),
            "never packets in a ROM map"
        );
        assert!(
            mem.translate_gpa(0x20_0000, 16).is_none(),
            "nor in a read-only one"
        );
    }

    #[test]
    fn refuses_overlap_misalignment_limits_and_short_files() {
        let mut t = DmaTable::new(2, 0x2000, false);
        let f = memfd(0x4000);
        t.map(&map(0x1000, 0x1000, 0, RW), Some(f.try_clone().unwrap()))
            .unwrap();
        let e = t.map(&map(0x1000, 0x1000, 0, RW), None).unwrap_err();
        assert_eq!(e.errno(), libc::EEXIST);
        assert!(t.map(&map(0x3001, 0x1000, 0, RW), None).is_err());
        assert!(t.map(&map(0x3000, 0, 0, RW), None).is_err());
        assert!(t.map(&map(u64::MAX - 0xfff, 0x1000, 0, RW), None).is_err());
        let e = t
            .map(&map(0x8000, 0x2000, 0, RW), Some(f.try_clone().unwrap()))
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOMEM, "{e}");
        let e = t
            .map(
                &map(0x8000, 0x1000, 0x4000, RW),
                Some(f.try_clone().unwrap()),
            )
            .unwrap_err();
        assert!(matches!(e, Refusal::Memory(_)), "past the file's end: {e}");
        t.map(&map(0x8000, 0x1000, 0, DMA_READ), None).unwrap();
        let e = t.map(&map(0x9000, 0x1000, 0, DMA_READ), None).unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(t.len(), 2, "nothing added by a refusal");
    }

    #[test]
    fn unmap_takes_whole_maps_only() {
        let mut t = DmaTable::new(8, 1 << 30, false);
        let f = memfd(0x10_0000);
        t.map(&map(0, 0x1_0000, 0, RW), Some(f.try_clone().unwrap()))
            .unwrap();
        t.map(&map(0x1_0000, 0x1_0000, 0x1_0000, RW), Some(f))
            .unwrap();
        t.map(&map(0xfffc_0000, 0x4_0000, 0, DMA_READ), None)
            .unwrap();
        let cut = DmaUnmap {
            flags: 0,
            iova: 0x8000,
            size: 0x1_0000,
        };
        assert!(t.unmap(&cut).is_err());
        assert_eq!(t.len(), 3);
        let first = DmaUnmap {
            flags: 0,
            iova: 0,
            size: 0x1_0000,
        };
        assert!(t.unmap(&first).unwrap());
        assert_eq!(t.memory().regions().len(), 1);
        let nothing = DmaUnmap {
            flags: 0,
            iova: 0x100_0000,
            size: 0x1000,
        };
        assert!(!t.unmap(&nothing).unwrap());
        let all = DmaUnmap {
            flags: UNMAP_ALL,
            iova: 0,
            size: 0,
        };
        assert!(t.unmap(&all).unwrap());
        assert!(t.is_empty());
        assert!(t.memory().is_empty());
    }
}
