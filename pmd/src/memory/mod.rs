//! Guest memory: the one layer of the data plane that turns guest addresses into memory
//! accesses.
//!
//! The front-end (QEMU, DPDK virtio_user, vhost-pktgen; a vfio-user client's DMA maps
//! later) owns guest memory and passes one file descriptor per region. A [`MappedRegion`]
//! maps only the pages of that file which serve the region (`MAP_SHARED | MAP_POPULATE`,
//! between guard pages, fenced against SIGBUS should the front-end shrink the file); a
//! [`GuestMemoryMap`] is the immutable table of regions a data-plane snapshot holds.
//!
//! Translation yields [`GuestRange`]s: region index, offset and length, plain numbers that
//! scratch space can keep between bursts. Memory is reached only through
//! [`GuestMemoryMap::slice`], which checks the range again and returns a [`GuestSlice`]
//! bound to the borrow of the map, so no view outlives its mapping and no raw pointer
//! leaves this module. Ring layouts (split, packed), the copy engine and the packet
//! header views are built on these two types; the unsafe code of the whole data plane's
//! guest-memory access is in `slice.rs`, with the mapping itself in `crate::mmap`.

mod map;
mod slice;

pub use map::{
    check_disjoint, GuestMemoryMap, GuestRange, MappedRegion, MemoryError, RegionPlan, RegionSpec,
};
pub use slice::GuestSlice;

/// A memfd of `len` bytes, for tests of this crate.
#[cfg(test)]
pub(crate) use crate::mmap::test_memfd;

/// A map of one `size`-byte region at guest-physical address 0 and front-end address
/// `user_addr`, backed by a fresh memfd, for tests of this crate.
#[cfg(test)]
pub(crate) fn test_map(size: u64, user_addr: u64) -> GuestMemoryMap {
    let file = test_memfd(size);
    let spec = RegionSpec {
        guest_phys_addr: 0,
        size,
        user_addr,
        mmap_offset: 0,
    };
    let region = std::sync::Arc::new(MappedRegion::map(spec, &file).expect("map a test region"));
    GuestMemoryMap::new(vec![region], 8).expect("a one-region map")
}
