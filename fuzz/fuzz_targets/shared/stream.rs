//! What the message targets share: the descriptors a fuzzed front-end attaches, and the
//! input format, chunks of `[fd count (0..3), length (u16 LE), bytes...]`, each sent in
//! one `sendmsg` with that many descriptors (the memfd and the eventfd, alternating).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Descriptors to attach: a 1 MiB memfd (guest memory that can really be mapped) and an
/// eventfd.
fn fds() -> &'static (OwnedFd, OwnedFd) {
    static FDS: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    FDS.get_or_init(|| {
        // SAFETY: memfd_create/eventfd return new descriptors or -1 (checked); each
        // becomes the sole owner of its descriptor.
        unsafe {
            let m = libc::memfd_create(c"fuzz-guest".as_ptr(), libc::MFD_CLOEXEC);
            assert!(m >= 0 && libc::ftruncate(m, 1 << 20) == 0);
            let e = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            assert!(e >= 0);
            (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(e))
        }
    })
}

/// Sends `data`'s chunks to the server on the other end of `client` (nonblocking), calling
/// `handle` after each to let the server process it, and drains the replies (closing any
/// descriptor they carry). Returns false as soon as `handle` does (the session ended).
pub fn feed(data: &[u8], client: &UnixStream, mut handle: impl FnMut() -> bool) -> bool {
    let (memfd, eventfd) = fds();
    let mut rest = data;
    let mut drain = [0u8; 8192];
    while rest.len() >= 3 {
        let nfds = usize::from(rest[0] % 4);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])) % 1024;
        rest = &rest[3..];
        let chunk = &rest[..len.min(rest.len())];
        rest = &rest[chunk.len()..];
        let attached: Vec<RawFd> = (0..nfds)
            .map(|i| if i % 2 == 0 { memfd.as_raw_fd() } else { eventfd.as_raw_fd() })
            .collect();
        if chunk.is_empty() || client.send_with_fds(&[chunk], &attached).is_err() {
            break;
        }
        if !handle() {
            return false;
        }
        while let Ok((n, fd)) = client.recv_with_fd(&mut drain) {
            drop(fd);
            if n == 0 {
                break;
            }
        }
    }
    true
}
