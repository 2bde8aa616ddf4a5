//! `mmap`/`munmap` of front-end memory files: the only raw OS calls of the data plane.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// A shared, populated mapping of the start of a file, between two inaccessible guard
/// pages: a data-plane bug that ran past a guest region would fault at once instead of
/// touching whatever happens to be mapped next to it. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    reserved: NonNull<u8>,
    reserved_len: usize,
}

// SAFETY: the mapping is plain shared memory; `Mapping` only hands out raw pointers, and
// every reader goes through the data plane's own checked accessors.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` has no interior state that a shared reference could mutate.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` read-write, `MAP_SHARED | MAP_POPULATE`, at an
    /// address aligned to `page` (the file's page size), with a guard of at least one
    /// page on each side.
    pub(crate) fn shared_populated(file: &File, len: usize, page: usize) -> io::Result<Self> {
        if len == 0 || !page.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let guard = page.max(4096);
        let reserved_len = len
            .checked_add(3 * guard)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh anonymous PROT_NONE reservation (addr NULL) cannot alias any Rust
        // object; the result is checked against MAP_FAILED.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = (reserved as usize + guard).next_multiple_of(page);
        // SAFETY: [start, start + len) lies inside our own reservation, at least `guard`
        // bytes from both of its ends (start <= reserved + guard + page - 1 and the
        // reservation has 3 * guard >= guard + page + guard spare bytes), so MAP_FIXED
        // replaces only PROT_NONE pages we own; the fd is valid for the call.
        let ptr = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // SAFETY: unmapping exactly the reservation made above, which nothing uses.
            unsafe { libc::munmap(reserved, reserved_len) };
            return Err(err);
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let reserved = NonNull::new(reserved.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping {
            base,
            len,
            reserved,
            reserved_len,
        })
    }

    /// Pointer to byte `offset` of the mapping, if inside it.
    pub(crate) fn ptr_at(&self, offset: usize) -> Option<NonNull<u8>> {
        if offset >= self.len {
            return None;
        }
        // SAFETY: offset < len, so the result stays inside the one mapping that starts at
        // `base`, which is not null.
        Some(unsafe { self.base.add(offset) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the reservation (which contains the file mapping) is exactly what mmap
        // returned and this is the only unmap. Readers hold an `Arc` to the owning region,
        // so none is left when this runs.
        unsafe {
            libc::munmap(self.reserved.as_ptr().cast(), self.reserved_len);
        }
    }
}

/// The page size backing `file`: the huge page size on hugetlbfs, else the base page.
pub(crate) fn file_page_size(file: &File) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes a statfs into the buffer we own; the result is checked before
    // the buffer is read.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    let page = if st.f_type == libc::HUGETLBFS_MAGIC {
        st.f_bsize as u64
    } else {
        4096
    };
    Ok(page.max(4096))
}

#[cfg(test)]
pub(crate) fn test_memfd(len: u64) -> File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create takes a NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"pmd-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_fenced_by_inaccessible_pages() {
        let file = test_memfd(3 * 4096);
        let m = Mapping::shared_populated(&file, 3 * 4096, 4096).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let base = m.base.as_ptr() as usize;
        let prot_at = |addr: usize| {
            maps.lines().find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                let (lo, hi) = range.split_once('-')?;
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).ok()?,
                    usize::from_str_radix(hi, 16).ok()?,
                );
                (lo <= addr && addr < hi).then(|| rest[..4].to_string())
            })
        };
        assert_eq!(prot_at(base).as_deref(), Some("rw-s"));
        assert_eq!(prot_at(base - 1).as_deref(), Some("---p"));
        assert_eq!(prot_at(base + 3 * 4096).as_deref(), Some("---p"));
    }
}
