//! The vfio-user server of a port fed arbitrary byte streams with arbitrary descriptors
//! attached: a real `vfio_user::session::Session` (framing, the emulated virtio-net PCI
//! device, DMA maps, interrupts, replies) on one end of a socketpair.
//!
//! Input: chunks of `[fd count (0..3), length (u16 LE), bytes...]`, as for
//! `vhost_user_messages`; each chunk is sent in one `sendmsg` with that many descriptors (a
//! memfd to map as guest RAM and an eventfd for interrupts, alternating), then the session
//! handles what arrived and its replies are drained. Nothing may panic or hang.
#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhost_switch::vfio_user::session::Session;
use vhost_switch::vhost_user::device::{DeviceConfig, Limits};
use vhost_switch::vhost_user::session::SessionCounters;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Descriptors to attach: a 1 MiB memfd (guest RAM for DMA_MAP) and an eventfd.
fn fds() -> &'static (OwnedFd, OwnedFd) {
    static FDS: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    FDS.get_or_init(|| {
        // SAFETY: memfd_create/eventfd return new descriptors or -1 (checked); each
        // becomes the sole owner of its descriptor.
        unsafe {
            let m = libc::memfd_create(c"fuzz-vfio-guest".as_ptr(), libc::MFD_CLOEXEC);
            assert!(m >= 0 && libc::ftruncate(m, 1 << 20) == 0);
            let e = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            assert!(e >= 0);
            (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(e))
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (client, server) = UnixStream::pair().unwrap();
    client.set_nonblocking(true).unwrap();
    let cfg = DeviceConfig {
        port: "fuzz".into(),
        mac: [2, 0, 0, 0, 0, 1],
        queue_pairs: 1,
        mtu: Some(1500),
        limits: Limits { max_mem_slots: 8, max_memory: 64 << 20, ..Limits::default() },
        dataplane: None,
    };
    let mut session = Session::new(server, cfg).unwrap();
    let mut counters = SessionCounters::default();
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
        if session.on_readable(&mut counters).is_err() {
            return;
        }
        // Replies may carry descriptors (a region's memfd): receive them so they close.
        while let Ok((n, fd)) = client.recv_with_fd(&mut drain) {
            drop(fd);
            if n == 0 {
                break;
            }
        }
    }
    // The client goes away: the session must notice.
    drop(client);
    assert!(session.on_readable(&mut counters).is_err());
});
