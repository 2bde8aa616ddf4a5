//! Guest memory of the front-end: a memfd mapped `MAP_SHARED`, whose fd is handed to the
//! backend in SET_MEM_TABLE / ADD_MEM_REG.
//!
//! One [`SharedMemory`] is one region (one fd). A front-end with several regions makes
//! several `SharedMemory` and composes their [`SharedMemory::region`]s.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::ByteValued;

use crate::error::{Error, Result};

/// Default huge page size when `/proc/meminfo` does not tell.
const DEFAULT_HUGE_PAGE_SIZE: usize = 2 << 20;

/// Whether to back the memory with hugetlb pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// Use hugetlb pages when the system has enough; otherwise warn and use normal pages.
    Try,
    /// Always use normal (4 KiB) pages.
    Never,
    /// Use hugetlb pages or fail with [`Error::HugePages`].
    Require,
}

/// A memfd-backed shared mapping used as front-end ("guest") memory.
///
/// Reads and writes go through raw pointer copies (never references into the mapping),
/// because the backend process writes the same memory concurrently.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    addr: NonNull<u8>,
    size: usize,
    guest_phys_addr: u64,
    hugetlb: bool,
}

// SAFETY: the mapping is owned by this value and stays valid until Drop; the raw pointer is
// only used for bounded copies, which are fine from any thread.
unsafe impl Send for SharedMemory {}
// SAFETY: all `&self` accessors only copy bytes through raw pointers within bounds; the
// memory is shared with another process anyway, so concurrent copies add no new hazard
// beyond torn values, which callers of shared memory must expect.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates `size` bytes of zeroed shared memory with guest physical base 0.
    ///
    /// With hugetlb pages the size is rounded up to a multiple of the huge page size;
    /// [`SharedMemory::size`] returns the real size.
    pub fn new(size: usize, huge: HugePages) -> Result<Self> {
        if size == 0 {
            return Err(Error::InvalidArgument("shared memory size 0".into()));
        }
        match huge {
            HugePages::Never => Self::create(size, false).map_err(Error::from),
            HugePages::Require => Self::create(size, true).map_err(Error::HugePages),
            HugePages::Try => match Self::create(size, true) {
                Ok(m) => Ok(m),
                Err(e) => {
                    tracing::warn!(
                        "hugetlb memory of {size} bytes unavailable ({e}); using normal pages"
                    );
                    Self::create(size, false).map_err(Error::from)
                }
            },
        }
    }

    fn create(size: usize, hugetlb: bool) -> io::Result<Self> {
        let size = if hugetlb {
            let page = huge_page_size();
            size.checked_next_multiple_of(page)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
        } else {
            size
        };
        let len =
            libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let name: &CStr = c"vhost-pktgen";
        let mut flags = libc::MFD_CLOEXEC;
        if hugetlb {
            flags |= libc::MFD_HUGETLB;
        }
        // SAFETY: `name` is a valid NUL-terminated string; the return value is checked.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscall on a descriptor we own; the return value is checked.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of our own fd at an address the kernel chooses; it
        // aliases no Rust object. The result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(SharedMemory {
            fd,
            addr,
            size,
            guest_phys_addr: 0,
            hugetlb,
        })
    }

    /// Returns this memory with guest physical base `gpa` (builder form).
    pub fn with_guest_phys_addr(mut self, gpa: u64) -> Self {
        self.guest_phys_addr = gpa;
        self
    }

    /// Sets the guest physical base address (DPDK's virtio_user uses the user address).
    pub fn set_guest_phys_addr(&mut self, gpa: u64) {
        self.guest_phys_addr = gpa;
    }

    /// The memfd, to attach to SET_MEM_TABLE / ADD_MEM_REG.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The size of the mapping in bytes.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// The mapping's virtual address in this process: the front-end "user address", as
    /// QEMU and DPDK send it.
    pub fn user_addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    /// The guest physical base address chosen by the caller (default 0).
    #[inline]
    pub fn guest_phys_addr(&self) -> u64 {
        self.guest_phys_addr
    }

    /// Whether hugetlb pages back this memory.
    pub fn is_hugetlb(&self) -> bool {
        self.hugetlb
    }

    /// Raw pointer to the start of the mapping, valid for [`SharedMemory::size`] bytes
    /// while `self` lives (for ring drivers that need atomics in place).
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// The whole memory as one region (mmap offset 0).
    pub fn region(&self) -> VhostUserMemoryRegion {
        VhostUserMemoryRegion::new(self.guest_phys_addr, self.size as u64, self.user_addr(), 0)
    }

    /// The `len` bytes starting at `offset` as a region: guest and user addresses shifted
    /// by `offset`, mmap offset `offset`.
    pub fn sub_region(&self, offset: u64, len: u64) -> Result<VhostUserMemoryRegion> {
        self.check(offset, len)?;
        Ok(VhostUserMemoryRegion::new(
            self.guest_phys_addr + offset,
            len,
            self.user_addr() + offset,
            offset,
        ))
    }

    #[inline]
    fn check(&self, offset: u64, len: u64) -> Result<usize> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size as u64 => Ok(offset as usize),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.size as u64,
            }),
        }
    }

    /// Copies `data` into the memory at `offset`.
    #[inline]
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let start = self.check(offset, data.len() as u64)?;
        // SAFETY: `check` proved `start + data.len() <= size`, so the destination lies in our
        // live mapping; `data` is a Rust slice, which cannot overlap the mapping because no
        // reference into the mapping is ever created.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.as_ptr().add(start), data.len());
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    #[inline]
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = self.check(offset, buf.len() as u64)?;
        // SAFETY: `check` proved the source range lies in our live mapping; `buf` is a
        // distinct Rust slice (no reference into the mapping exists).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.as_ptr().add(start),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Hints the CPU to fetch the cache line at `offset` (nothing happens out of range or
    /// off x86_64).
    #[inline]
    pub fn prefetch(&self, offset: u64) {
        #[cfg(target_arch = "x86_64")]
        if offset < self.size as u64 {
            let p = self.addr.as_ptr().wrapping_add(offset as usize);
            // SAFETY: a prefetch is a hint: it has no effect on the program's memory and
            // cannot fault; SSE is part of the x86_64 baseline.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }

    /// Copies `N` bytes at `offset` into `out` (a copy of constant size: a few vector moves
    /// rather than a `memcpy` call).
    #[inline]
    pub fn read_fixed<const N: usize>(&self, offset: u64, out: &mut [u8; N]) -> Result<()> {
        let start = self.check(offset, N as u64)?;
        // SAFETY: `check` proved the source range lies in our live mapping; `out` is a
        // distinct Rust array (no reference into the mapping exists).
        unsafe {
            std::ptr::copy_nonoverlapping(self.addr.as_ptr().add(start), out.as_mut_ptr(), N);
        }
        Ok(())
    }

    /// Writes `val` at `offset` (no alignment requirement).
    pub fn write_obj<T: ByteValued>(&self, offset: u64, val: T) -> Result<()> {
        self.write(offset, val.as_slice())
    }

    /// Reads a `T` at `offset` (no alignment requirement).
    #[inline]
    pub fn read_obj<T: ByteValued>(&self, offset: u64) -> Result<T> {
        let start = self.check(offset, std::mem::size_of::<T>() as u64)?;
        // SAFETY: the range is inside the mapping (checked above); `read_unaligned` has no
        // alignment requirement and `T: ByteValued` is valid for any bit pattern.
        let val = unsafe { std::ptr::read_unaligned(self.addr.as_ptr().add(start).cast::<T>()) };
        Ok(val)
    }

    /// Copies `len` bytes at `offset` in this memory to `dst_offset` in `dst` (which may be
    /// this same memory; overlapping ranges are copied as by `memmove`).
    pub fn copy_to(
        &self,
        offset: u64,
        dst: &SharedMemory,
        dst_offset: u64,
        len: u64,
    ) -> Result<()> {
        let src = self.check(offset, len)?;
        let to = dst.check(dst_offset, len)?;
        // SAFETY: both ranges lie inside live mappings (checked above; `len` fits in usize
        // because it fits in the mapping); `ptr::copy` allows the ranges to overlap, and no
        // Rust reference into either mapping exists.
        unsafe {
            std::ptr::copy(
                self.addr.as_ptr().add(src),
                dst.addr.as_ptr().add(to),
                len as usize,
            );
        }
        Ok(())
    }

    /// Fills `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<()> {
        let start = self.check(offset, len)?;
        // SAFETY: the range is inside our live mapping (checked above).
        unsafe { std::ptr::write_bytes(self.addr.as_ptr().add(start), byte, len as usize) };
        Ok(())
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `addr`/`size` are exactly the mapping created in `create`, unmapped only
        // here; no reference into it can outlive `self`. The fd closes with `OwnedFd`.
        let rc = unsafe { libc::munmap(self.addr.as_ptr().cast(), self.size) };
        if rc != 0 {
            tracing::warn!("munmap failed: {}", io::Error::last_os_error());
        }
    }
}

/// The system's default huge page size from `/proc/meminfo` (2 MiB if unknown).
pub fn huge_page_size() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(DEFAULT_HUGE_PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_read_write() {
        let mem = SharedMemory::new(64 << 10, HugePages::Never).unwrap();
        assert_eq!(mem.size(), 64 << 10);
        assert!(!mem.is_hugetlb());
        assert_eq!(mem.user_addr() % 4096, 0);
        assert!(mem.fd() >= 0);
        let mut buf = [0xffu8; 4];
        mem.read(100, &mut buf).unwrap();
        assert_eq!(buf, [0; 4], "fresh memory is zeroed");
        mem.write(100, &[1, 2, 3, 4]).unwrap();
        mem.read(100, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        mem.write_obj(1001u64, 0x1122_3344_5566_7788u64).unwrap();
        assert_eq!(mem.read_obj::<u64>(1001).unwrap(), 0x1122_3344_5566_7788);
        mem.fill(0, 16, 0xaa).unwrap();
        assert_eq!(mem.read_obj::<u32>(12).unwrap(), 0xaaaa_aaaa);
    }

    #[test]
    fn data_is_visible_through_the_fd() {
        // The backend maps the fd: what we write must be in the file, not a private copy.
        let mem = SharedMemory::new(8192, HugePages::Never).unwrap();
        mem.write(4096, b"vhost").unwrap();
        let mut buf = [0u8; 5];
        // SAFETY: pread into a valid buffer of the given length from our own memfd.
        let n = unsafe { libc::pread(mem.fd(), buf.as_mut_ptr().cast(), 5, 4096) };
        assert_eq!(n, 5);
        assert_eq!(&buf, b"vhost");
    }

    #[test]
    fn bounds_are_checked() {
        let mem = SharedMemory::new(4096, HugePages::Never).unwrap();
        assert!(mem.write(4095, &[1]).is_ok());
        assert!(matches!(
            mem.write(4095, &[1, 2]),
            Err(Error::OutOfRange {
                offset: 4095,
                len: 2,
                size: 4096
            })
        ));
        let mut buf = [0u8; 1];
        assert!(mem.read(4096, &mut buf).is_err());
        assert!(mem.read(u64::MAX, &mut buf).is_err());
        assert!(mem.read_obj::<u64>(4089).is_err());
        assert!(mem.read_obj::<u64>(4088).is_ok());
        assert!(mem.write_obj(u64::MAX - 3, 0u32).is_err());
        assert!(mem.fill(1, 4096, 0).is_err());
        assert!(mem.sub_region(4096, 1).is_err());
        assert!(matches!(
            SharedMemory::new(0, HugePages::Never),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn regions_describe_the_mapping() {
        let mem = SharedMemory::new(1 << 20, HugePages::Never)
            .unwrap()
            .with_guest_phys_addr(0x1_0000_0000);
        let r = mem.region();
        let (gpa, size, ua, off) = (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
        assert_eq!(
            (gpa, size, ua, off),
            (0x1_0000_0000, 1 << 20, mem.user_addr(), 0)
        );
        let r = mem.sub_region(0x1000, 0x2000).unwrap();
        let (gpa, size, ua, off) = (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
        assert_eq!(
            (gpa, size, ua, off),
            (0x1_0000_1000, 0x2000, mem.user_addr() + 0x1000, 0x1000)
        );
    }

    #[test]
    fn try_hugepages_always_gives_memory() {
        let mem = SharedMemory::new(4096, HugePages::Try).unwrap();
        if mem.is_hugetlb() {
            assert_eq!(mem.size() % huge_page_size(), 0);
        } else {
            assert_eq!(mem.size(), 4096);
        }
        mem.write(mem.size() as u64 - 1, &[7]).unwrap();
    }

    #[test]
    fn require_hugepages_fails_cleanly_or_succeeds() {
        match SharedMemory::new(4096, HugePages::Require) {
            Ok(mem) => assert!(mem.is_hugetlb() && mem.size() >= huge_page_size()),
            Err(e) => assert!(matches!(e, Error::HugePages(_)), "{e:?}"),
        }
    }

    #[test]
    fn huge_page_size_is_sane() {
        let s = huge_page_size();
        assert!(s.is_power_of_two() && s >= 64 << 10);
    }
}
