//! `mmap`/`munmap` of front-end memory files and the SIGBUS fence around them: the only
//! raw OS calls of the data plane.
//!
//! A front-end owns the files its guest memory lives in and can shrink one (`ftruncate`)
//! after we mapped it. The next access to a page past the new end of file raises SIGBUS
//! in whichever thread touched it, which by default kills the whole switch. Every mapping
//! made here is therefore registered in a fixed, lock-free table that a process-wide
//! SIGBUS handler consults: a fault inside a registered mapping is repaired by mapping an
//! anonymous page over the faulting page (the access is retried and reads zeros or writes
//! into the scratch page), and the mapping's fault counter goes up so that the control
//! thread fails that port. A fault anywhere else is handed back to the previous handler.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Live mappings the fence can watch at once (every port's regions together). A mapping
/// beyond that is refused, so the table can never silently stop covering memory.
pub(crate) const MAX_FENCED_MAPPINGS: usize = 4096;

/// One fenced mapping: its address range, page size and how often it faulted.
struct FenceSlot {
    /// Claimed by a live mapping (set before `start` is published, cleared after).
    claimed: AtomicBool,
    /// First byte of the mapping; 0 while the slot is free or being (un)registered.
    start: AtomicUsize,
    /// Length in bytes; written before `start` is published (Release) so a handler that
    /// sees `start` (Acquire) sees the matching length.
    len: AtomicUsize,
    /// Page size of the backing file (the unit a fault is repaired in).
    page: AtomicUsize,
    /// SIGBUS faults repaired in this mapping.
    faults: AtomicU64,
}

impl FenceSlot {
    const fn new() -> Self {
        FenceSlot {
            claimed: AtomicBool::new(false),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            page: AtomicUsize::new(0),
            faults: AtomicU64::new(0),
        }
    }
}

static FENCES: [FenceSlot; MAX_FENCED_MAPPINGS] = [const { FenceSlot::new() }; MAX_FENCED_MAPPINGS];

/// The SIGBUS disposition found when the fence was installed (std's stack-overflow
/// handler, usually): faults outside guest memory go back to it.
struct PreviousAction(libc::sigaction);

// SAFETY: a sigaction is plain data (a handler address, flags and a signal mask); it is
// written once before the handler is installed and only read afterwards.
unsafe impl Sync for PreviousAction {}
// SAFETY: as above.
unsafe impl Send for PreviousAction {}

static PREVIOUS: OnceLock<PreviousAction> = OnceLock::new();
static INSTALLED: OnceLock<io::Result<()>> = OnceLock::new();

/// Installs the SIGBUS handler once per process.
fn install_fence() -> io::Result<()> {
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sigaction is plain data; all-zero is an empty action with an empty mask.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `previous` is a valid out-parameter; the new action names a handler that
        // only performs async-signal-safe work (atomic loads/stores and mmap/sigaction
        // system calls) and the handler reads PREVIOUS, set before the action is live.
        unsafe {
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return Err(io::Error::last_os_error());
            }
            let _ = PREVIOUS.set(PreviousAction(previous));
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// The SIGBUS handler: repairs faults inside fenced mappings, passes on everything else.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in FENCES.iter() {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 {
            continue;
        }
        let len = slot.len.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        let page = slot.page.load(Ordering::Relaxed);
        let page_start = start + ((addr - start) & !(page - 1));
        // SAFETY:
        // - [page_start, page_start + page) lies inside a fenced mapping that is still
        //   alive: the faulting thread is the one running this handler (SIGBUS is
        //   synchronous) and it accesses guest memory only through a view that holds the
        //   mapping, so the slot cannot be unregistered meanwhile;
        // - the mapping starts on a page boundary of the file's page size, so the range is
        //   aligned as MAP_FIXED over a (huge) page mapping requires;
        // - replacing the page only changes what that guest memory reads as (zeros): no
        //   Rust object lives there.
        let fixed = unsafe {
            libc::mmap(
                page_start as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if fixed != libc::MAP_FAILED {
            slot.faults.fetch_add(1, Ordering::Relaxed);
            return;
        }
        break;
    }
    // Not guest memory (or the repair failed): restore the previous disposition and
    // return; the faulting access repeats and is handled (or kills us) as it would have
    // been without the fence.
    match PREVIOUS.get() {
        Some(previous) => {
            // SAFETY: re-installing the action that was in place before ours.
            unsafe { libc::sigaction(libc::SIGBUS, &previous.0, std::ptr::null_mut()) };
        }
        None => {
            // SAFETY: resetting a signal to its default disposition has no preconditions.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
    }
    let _ = (signal, context);
}

/// A claimed fence slot, released when the mapping goes away.
#[derive(Debug)]
struct Fence {
    slot: usize,
}

impl Fence {
    fn register(start: usize, len: usize, page: usize) -> io::Result<Fence> {
        install_fence()?;
        for (i, slot) in FENCES.iter().enumerate() {
            if slot
                .claimed
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.faults.store(0, Ordering::Relaxed);
                slot.page.store(page, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                // Pairs with the handler's Acquire load of `start`.
                slot.start.store(start, Ordering::Release);
                return Ok(Fence { slot: i });
            }
        }
        Err(io::Error::other(format!(
            "more than {MAX_FENCED_MAPPINGS} guest memory mappings in this process"
        )))
    }

    fn faults(&self) -> u64 {
        FENCES[self.slot].faults.load(Ordering::Relaxed)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let slot = &FENCES[self.slot];
        slot.start.store(0, Ordering::Release);
        slot.claimed.store(false, Ordering::Release);
    }
}

/// A shared, populated mapping of a window of a file, between two inaccessible guard
/// pages (a data-plane bug that ran past a guest region faults at once instead of touching
/// whatever is mapped next to it), fenced against SIGBUS. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    reserved: NonNull<u8>,
    reserved_len: usize,
    fence: Fence,
}

// SAFETY: the mapping is plain shared memory; `Mapping` hands its address only to the
// guest-memory module, whose views perform every access with volatile or atomic operations.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` has no interior state that a shared reference could mutate.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset` read-write, `MAP_SHARED | MAP_POPULATE`
    /// (only those bytes are populated), at an address aligned to `page` (the file's page
    /// size; `offset` must be a multiple of it), with a guard of at least one page on each
    /// side, and fences it against SIGBUS.
    pub(crate) fn shared_populated(
        file: &File,
        offset: u64,
        len: usize,
        page: usize,
    ) -> io::Result<Self> {
        if len == 0 || !page.is_power_of_two() || !offset.is_multiple_of(page as u64) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let file_offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
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
                file_offset,
            )
        };
        let unreserve = || {
            // SAFETY: unmapping exactly the reservation made above, which nothing uses.
            unsafe { libc::munmap(reserved, reserved_len) };
        };
        if ptr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            unreserve();
            return Err(err);
        }
        let fence = match Fence::register(start, len, page) {
            Ok(fence) => fence,
            Err(e) => {
                unreserve();
                return Err(e);
            }
        };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let reserved = NonNull::new(reserved.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping {
            base,
            len,
            reserved,
            reserved_len,
            fence,
        })
    }

    /// First byte of the mapping (for the guest-memory views only).
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// SIGBUS faults repaired in this mapping (the file shrank under it).
    pub(crate) fn faults(&self) -> u64 {
        self.fence.faults()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the reservation (which contains the file mapping and any pages the fence
        // put over it) is exactly what mmap returned and this is the only unmap. Views
        // borrow the owning region, so none is left when this runs.
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

/// True when the file can no longer shrink: a memfd sealed with `F_SEAL_SHRINK` (seals
/// cannot be removed). Other files (hugetlbfs, tmpfs, unsealed memfds) can shrink.
pub(crate) fn sealed_against_shrink(file: &File) -> bool {
    // SAFETY: F_GET_SEALS takes no argument and only reads the file's seal set; on files
    // without seal support it fails with EINVAL, which reads as "not sealed".
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// A memfd of `len` bytes for tests.
#[cfg(test)]
pub(crate) fn test_memfd(len: u64) -> File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create takes a NUL-terminated name and returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"pmd-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prot_at(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (lo, hi) = range.split_once('-')?;
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            );
            (lo <= addr && addr < hi).then(|| rest[..4].to_string())
        })
    }

    #[test]
    fn the_mapping_is_fenced_by_inaccessible_pages() {
        let file = test_memfd(3 * 4096);
        let m = Mapping::shared_populated(&file, 0, 3 * 4096, 4096).unwrap();
        let base = m.base.as_ptr() as usize;
        assert_eq!(prot_at(base).as_deref(), Some("rw-s"));
        assert_eq!(prot_at(base - 1).as_deref(), Some("---p"));
        assert_eq!(prot_at(base + 3 * 4096).as_deref(), Some("---p"));
    }

    #[test]
    fn maps_only_the_window_it_is_asked_for() {
        let file = test_memfd(64 * 4096);
        let m = Mapping::shared_populated(&file, 8 * 4096, 2 * 4096, 4096).unwrap();
        assert_eq!(m.len(), 2 * 4096);
        let base = m.base.as_ptr() as usize;
        assert_eq!(prot_at(base + 4096).as_deref(), Some("rw-s"));
        assert_eq!(prot_at(base + 2 * 4096).as_deref(), Some("---p"));
        assert!(Mapping::shared_populated(&file, 100, 4096, 4096).is_err());
    }

    #[test]
    fn seals_are_read_from_the_file() {
        let file = test_memfd(4096);
        assert!(!sealed_against_shrink(&file));
        // SAFETY: F_ADD_SEALS on our own memfd, created with MFD_ALLOW_SEALING.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(rc, 0);
        assert!(sealed_against_shrink(&file));
    }
}
