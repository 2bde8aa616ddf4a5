//! The memory behind the virtio BAR's notification page.
//!
//! The client maps the page (a sparse-mmap area of the BAR) into the guest, so a
//! doorbell is a plain store into shared memory: no VM exit reaches the switch, no
//! message, no eventfd. Nothing needs to read the doorbells: the PMDs poll every started
//! ring's available index, which is what a doorbell announces, and they ask the driver
//! not to ring at all (VRING_USED_F_NO_NOTIFY / avail_event).

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use super::layout::VIRTIO_BAR_SIZE;

/// A memfd the size of the virtio BAR; the notification page is mapped from it at the
/// BAR offset, so the region's file offset is 0.
pub fn bar_memfd() -> io::Result<File> {
    // SAFETY: memfd_create takes a NUL-terminated name (a C string literal) and flags; it
    // returns a new descriptor or -1, checked below.
    let fd = unsafe { libc::memfd_create(c"vhost-switch-virtio-bar".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nobody else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(VIRTIO_BAR_SIZE)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memfd_covers_the_bar() {
        let f = bar_memfd().unwrap();
        assert_eq!(f.metadata().unwrap().len(), VIRTIO_BAR_SIZE);
        assert!(f.metadata().unwrap().file_type().is_file());
    }
}
