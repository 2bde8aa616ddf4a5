//! The driver's only `unsafe`: typed atomic views of shared ring memory.
//!
//! Ring fields (indexes, flags, ring entries, descriptors) are accessed as slices of
//! `AtomicU16` / `AtomicU32` / `AtomicU64` placed over the mapping of a [`SharedMemory`].
//! Every access then names its `Ordering`, no reference to plain integers in the shared
//! mapping ever exists, and the rest of the driver is safe code. Buffer contents go through
//! [`SharedMemory::read`] / [`SharedMemory::write`] (bounded raw copies).

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};

use crate::error::{Error, Result};
use crate::memory::SharedMemory;

/// Atomic integer types that may be laid over shared memory.
///
/// # Safety
///
/// Implementors must have the size and alignment of their integer, accept every bit pattern,
/// and have interior mutability (so that the peer writing the memory does not violate a
/// shared reference).
pub(crate) unsafe trait AtomicWord: Sized + Sync {}

// SAFETY: `AtomicU16` has the size, alignment and bit validity of `u16` (std documents it)
// and its value lives in an `UnsafeCell`.
unsafe impl AtomicWord for AtomicU16 {}
// SAFETY: as for `AtomicU16`, with `u32`.
unsafe impl AtomicWord for AtomicU32 {}
// SAFETY: as for `AtomicU16`, with `u64` (the alignment of `AtomicU64` is 8 even where `u64`'s
// is 4; `atomics` checks the address against `align_of::<T>()`).
unsafe impl AtomicWord for AtomicU64 {}

/// `count` atomics of type `T` at `offset` in `mem`, borrowed for as long as `mem`.
///
/// Fails with [`Error::OutOfRange`] if the range leaves the mapping and with
/// [`Error::InvalidArgument`] if the address is not aligned for `T`.
pub(crate) fn atomics<T: AtomicWord>(
    mem: &SharedMemory,
    offset: u64,
    count: usize,
) -> Result<&[T]> {
    let bytes = (count as u64).checked_mul(std::mem::size_of::<T>() as u64);
    let in_range = bytes
        .and_then(|b| offset.checked_add(b))
        .is_some_and(|end| end <= mem.size() as u64);
    if !in_range {
        return Err(Error::OutOfRange {
            offset,
            len: bytes.unwrap_or(u64::MAX),
            size: mem.size() as u64,
        });
    }
    // In range, so `offset` fits in usize and the pointer stays inside the mapping.
    let ptr = mem.as_ptr().wrapping_add(offset as usize);
    // Alignments are powers of two.
    if (ptr as usize) & (std::mem::align_of::<T>() - 1) != 0 {
        return Err(Error::InvalidArgument(format!(
            "offset {offset:#x} not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    // SAFETY:
    // - `ptr .. ptr + count * size_of::<T>()` lies inside the mapping of `mem` (checked
    //   above), one allocation of at most isize::MAX bytes, non-null and aligned for `T`
    //   (checked above);
    // - the mapping stays valid for the returned lifetime: `SharedMemory` unmaps only in
    //   `Drop`, which cannot run while `mem` is borrowed;
    // - the bytes are initialized (a memfd mapping is zero-filled) and every bit pattern is
    //   a valid `T` (`AtomicWord` contract);
    // - `T` is interiorly mutable, so writes by the backend process or through
    //   `SharedMemory::write` while the slice lives do not break a shared-reference
    //   guarantee; within this process all accesses through the slice are atomic.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), count) })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::memory::HugePages;

    #[test]
    fn views_alias_the_memory() {
        let mem = SharedMemory::new(4096, HugePages::Never).unwrap();
        let w = atomics::<AtomicU16>(&mem, 6, 3).unwrap();
        w[1].store(0xbeef, Ordering::Relaxed);
        assert_eq!(mem.read_obj::<u16>(8).unwrap(), 0xbeef);
        mem.write_obj(10u64, 0x1234u16).unwrap();
        assert_eq!(w[2].load(Ordering::Relaxed), 0x1234);
        let q = atomics::<AtomicU64>(&mem, 4088, 1).unwrap();
        q[0].store(u64::MAX, Ordering::Relaxed);
        assert_eq!(mem.read_obj::<u64>(4088).unwrap(), u64::MAX);
        assert!(atomics::<AtomicU32>(&mem, 0, 0).unwrap().is_empty());
    }

    #[test]
    fn bounds_and_alignment_are_checked() {
        let mem = SharedMemory::new(4096, HugePages::Never).unwrap();
        assert!(matches!(
            atomics::<AtomicU64>(&mem, 4088, 2),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            atomics::<AtomicU32>(&mem, u64::MAX - 1, 1),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            atomics::<AtomicU16>(&mem, 0, usize::MAX),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            atomics::<AtomicU16>(&mem, 1, 1),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            atomics::<AtomicU64>(&mem, 4, 1),
            Err(Error::InvalidArgument(_))
        ));
        assert!(atomics::<AtomicU32>(&mem, 4092, 1).is_ok());
    }
}
