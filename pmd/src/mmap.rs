//! `mmap`/`munmap` of front-end memory files: the only raw OS calls of the data plane.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// A shared, populated mapping of the start of a file. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; `Mapping` only hands out raw pointers, and
// every reader goes through the data plane's own checked accessors.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` has no interior state that a shared reference could mutate.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` read-write, `MAP_SHARED | MAP_POPULATE`.
    pub(crate) fn shared_populated(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh mapping (addr NULL) cannot alias any Rust object; the fd is valid
        // for the duration of the call; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { base, len })
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
        // SAFETY: base/len are exactly what mmap returned and this is the only unmap.
        // Readers hold an `Arc` to the owning region, so none is left when this runs.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
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
