//! Nonblocking `recvmsg`/`send` with SCM_RIGHTS on a unix stream, and the check that
//! makes a ring descriptor a non-blocking eventfd: the only raw descriptor calls of the
//! control plane.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

/// Linux accepts at most this many descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
const MAX_FDS_PER_RECV: usize = 253;
/// Control buffer large enough for MAX_FDS_PER_RECV descriptors, as u64 for alignment.
const CMSG_WORDS: usize = (MAX_FDS_PER_RECV * 4 + 64) / 8;

/// What one receive call got.
#[derive(Debug)]
pub struct Received {
    /// Bytes written into the buffer; 0 means the peer closed.
    pub bytes: usize,
    /// The kernel had to drop descriptors (more than fit): the message cannot be trusted.
    pub fds_truncated: bool,
}

/// Receives up to `buf.len()` bytes without blocking, appending any descriptors that came
/// with them to `fds` (close-on-exec). `WouldBlock` when nothing is there.
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<File>,
) -> io::Result<Received> {
    let mut cmsg_buf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: iov points at `buf` and msg_control at `cmsg_buf`, both alive and writable
    // for their stated lengths for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recvmsg filled msg_control/msg_controllen; CMSG_FIRSTHDR/NXTHDR only walk
    // inside that buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points at a header inside cmsg_buf (see above).
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation of the header size.
            let data_len = hdr.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<libc::c_int>();
            // SAFETY: CMSG_DATA points just past this header, inside cmsg_buf.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..count {
                // SAFETY: `count` ints follow the header inside the buffer; the data may be
                // unaligned, hence read_unaligned.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel just installed this descriptor for us; nobody else
                // owns it, so File becomes its only owner and closes it.
                fds.push(unsafe { File::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; NXTHDR returns null past the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        bytes: n as usize,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Sends all of `data` without blocking. A front-end that does not read its replies fills
/// the socket buffer; that is reported as `WouldBlock` instead of stalling the daemon.
pub fn send_nonblocking(sock: &UnixStream, data: &[u8]) -> io::Result<()> {
    // SAFETY: data is a live slice of data.len() bytes.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "reply only partly sent",
        ));
    }
    Ok(())
}

/// What a ring descriptor (kick, call, err) is, as the kernel names it.
fn describe_fd(file: &File) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Accepts `file` as a ring notification descriptor only if it is an eventfd, and makes
/// it non-blocking: a PMD writing an interrupt must never wait (a full counter, EAGAIN,
/// just means the interrupt is already pending). Returns what the descriptor is otherwise.
///
/// O_NONBLOCK is a property of the open file, which the front-end shares; QEMU and DPDK
/// create their eventfds non-blocking already.
pub fn accept_eventfd(file: &File) -> Result<(), String> {
    let what = describe_fd(file);
    if what != "anon_inode:[eventfd]" {
        return Err(what);
    }
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; only the status flags change.
    let ok = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(format!(
            "an eventfd whose flags cannot be set: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn only_eventfds_are_accepted_and_they_become_non_blocking() {
        // SAFETY: eventfd returns a new descriptor or -1 (checked).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let efd = unsafe { File::from_raw_fd(fd) };
        accept_eventfd(&efd).unwrap();
        // SAFETY: F_GETFL on our own descriptor.
        let flags = unsafe { libc::fcntl(efd.as_raw_fd(), libc::F_GETFL) };
        assert!(flags & libc::O_NONBLOCK != 0);
        let (a, _b) = UnixStream::pair().unwrap();
        let err = accept_eventfd(&File::from(std::os::fd::OwnedFd::from(a))).unwrap_err();
        assert!(err.starts_with("socket:"), "{err}");
        let file = tempfile_in_tmp();
        assert!(accept_eventfd(&file).unwrap_err().starts_with('/'));
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!("vs-fd-test-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
