//! Split virtqueue layout inside front-end memory, and the eventfds that go with a ring.

use std::os::fd::{AsRawFd, RawFd};

use vhost::vhost_user::message::{VhostUserVringAddr, VhostUserVringAddrFlags};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};
use crate::memory::SharedMemory;

/// Alignment of the descriptor table (virtio 1.2 §2.7).
pub const DESC_ALIGN: u64 = 16;
/// Alignment of the available ring.
pub const AVAIL_ALIGN: u64 = 2;
/// Alignment of the used ring.
pub const USED_ALIGN: u64 = 4;
/// Largest split queue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Bytes of a descriptor table of `n` entries.
pub fn desc_table_size(n: u16) -> u64 {
    16 * u64::from(n)
}

/// Bytes of an available ring of `n` entries (flags, idx, ring, used_event).
pub fn avail_ring_size(n: u16) -> u64 {
    4 + 2 * u64::from(n) + 2
}

/// Bytes of a used ring of `n` entries (flags, idx, ring, avail_event).
pub fn used_ring_size(n: u16) -> u64 {
    4 + 8 * u64::from(n) + 2
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Where a split virtqueue lies in a [`SharedMemory`]: offsets in the memory, and the same
/// places as front-end user addresses (what SET_VRING_ADDR carries) and guest physical
/// addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vring {
    queue_size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    end: u64,
    user_base: u64,
    gpa_base: u64,
}

impl Vring {
    /// Lays out a ring of `queue_size` entries from `offset` in `mem`: descriptor table
    /// (aligned 16), available ring right after (aligned 2), used ring after that (aligned
    /// 4). Any size 1..=32768 is accepted (non powers of two too, for illegal tests).
    pub fn new(mem: &SharedMemory, offset: u64, queue_size: u16) -> Result<Vring> {
        if queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "queue size {queue_size} not in 1..=32768"
            )));
        }
        let desc = align_up(offset, DESC_ALIGN);
        let avail = align_up(desc + desc_table_size(queue_size), AVAIL_ALIGN);
        let used = align_up(avail + avail_ring_size(queue_size), USED_ALIGN);
        let end = used + used_ring_size(queue_size);
        if end > mem.size() as u64 {
            return Err(Error::OutOfRange {
                offset,
                len: end - offset,
                size: mem.size() as u64,
            });
        }
        Ok(Vring {
            queue_size,
            desc,
            avail,
            used,
            end,
            user_base: mem.user_addr(),
            gpa_base: mem.guest_phys_addr(),
        })
    }

    /// The queue size.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Offset of the descriptor table in the memory.
    pub fn desc_offset(&self) -> u64 {
        self.desc
    }

    /// Offset of the available ring in the memory.
    pub fn avail_offset(&self) -> u64 {
        self.avail
    }

    /// Offset of the used ring in the memory.
    pub fn used_offset(&self) -> u64 {
        self.used
    }

    /// Offset of the first byte after the used ring (where the next ring may start).
    pub fn end_offset(&self) -> u64 {
        self.end
    }

    /// User address of the descriptor table.
    pub fn desc_user_addr(&self) -> u64 {
        self.user_base + self.desc
    }

    /// User address of the available ring.
    pub fn avail_user_addr(&self) -> u64 {
        self.user_base + self.avail
    }

    /// User address of the used ring.
    pub fn used_user_addr(&self) -> u64 {
        self.user_base + self.used
    }

    /// Guest physical address of the descriptor table.
    pub fn desc_gpa(&self) -> u64 {
        self.gpa_base + self.desc
    }

    /// Guest physical address of the available ring.
    pub fn avail_gpa(&self) -> u64 {
        self.gpa_base + self.avail
    }

    /// Guest physical address of the used ring (QEMU sends it as the log address).
    pub fn used_gpa(&self) -> u64 {
        self.gpa_base + self.used
    }

    /// SET_VRING_ADDR payload for ring `index`: user addresses, flags 0, log address `log`.
    pub fn addr(&self, index: u32, log: u64) -> VhostUserVringAddr {
        VhostUserVringAddr::new(
            index,
            VhostUserVringAddrFlags::empty(),
            self.desc_user_addr(),
            self.used_user_addr(),
            self.avail_user_addr(),
            log,
        )
    }
}

/// A ring as a front-end sets it up: its layout, its eventfds and its start index.
#[derive(Debug)]
pub struct Ring {
    /// Layout in memory.
    pub vring: Vring,
    /// Kick eventfd (front-end → backend), non-blocking.
    pub kick: EventFd,
    /// Call eventfd (backend → front-end), non-blocking.
    pub call: EventFd,
    /// Error eventfd (QEMU sends it with SET_VRING_ERR), non-blocking.
    pub err: EventFd,
    /// Value sent with SET_VRING_BASE (non-zero when replaying a reconnect).
    pub base: u32,
}

impl Ring {
    /// A ring with fresh non-blocking eventfds and base 0.
    pub fn new(vring: Vring) -> Result<Ring> {
        Ok(Ring {
            vring,
            kick: EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?,
            call: EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?,
            err: EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?,
            base: 0,
        })
    }

    /// Lays out `count` consecutive rings of `queue_size` entries from `offset` in `mem`,
    /// each with fresh eventfds.
    pub fn layout(
        mem: &SharedMemory,
        offset: u64,
        queue_size: u16,
        count: usize,
    ) -> Result<Vec<Ring>> {
        let mut rings = Vec::with_capacity(count);
        let mut at = offset;
        for _ in 0..count {
            let vring = Vring::new(mem, at, queue_size)?;
            at = vring.end_offset();
            rings.push(Ring::new(vring)?);
        }
        Ok(rings)
    }

    /// The kick eventfd's raw descriptor.
    pub fn kick_fd(&self) -> RawFd {
        self.kick.as_raw_fd()
    }

    /// The call eventfd's raw descriptor.
    pub fn call_fd(&self) -> RawFd {
        self.call.as_raw_fd()
    }

    /// The error eventfd's raw descriptor.
    pub fn err_fd(&self) -> RawFd {
        self.err.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::HugePages;

    #[test]
    fn layout_is_aligned_and_contiguous() {
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        // Odd offset and odd size force every alignment step.
        let v = Vring::new(&mem, 3, 5).unwrap();
        assert_eq!(v.desc_offset(), 16);
        assert_eq!(v.avail_offset(), 16 + 80);
        assert_eq!(v.avail_offset() % AVAIL_ALIGN, 0);
        // avail = 96 + 4 + 10 + 2 = 112, already 4-aligned.
        assert_eq!(v.used_offset(), 112);
        assert_eq!(v.end_offset(), 112 + 4 + 40 + 2);

        let v = Vring::new(&mem, 0, 3).unwrap();
        // avail ends at 48 + 12 = 60: used is at 60 (4-aligned).
        assert_eq!(
            (v.desc_offset(), v.avail_offset(), v.used_offset()),
            (0, 48, 60)
        );
        let v = Vring::new(&mem, 0, 2).unwrap();
        // avail ends at 32 + 10 = 42: used goes to 44.
        assert_eq!(v.used_offset(), 44);

        for n in [1u16, 2, 7, 256, 1024, 32768] {
            let v = Vring::new(&mem, 0x1001, n).unwrap();
            assert_eq!(v.desc_user_addr() % DESC_ALIGN, 0);
            assert_eq!(v.avail_user_addr() % AVAIL_ALIGN, 0);
            assert_eq!(v.used_user_addr() % USED_ALIGN, 0);
            assert!(v.avail_offset() >= v.desc_offset() + desc_table_size(n));
            assert!(v.used_offset() >= v.avail_offset() + avail_ring_size(n));
        }
    }

    #[test]
    fn addresses_follow_memory_bases() {
        let mem = SharedMemory::new(1 << 16, HugePages::Never)
            .unwrap()
            .with_guest_phys_addr(0x4000_0000);
        let v = Vring::new(&mem, 0x100, 256).unwrap();
        assert_eq!(v.desc_user_addr(), mem.user_addr() + 0x100);
        assert_eq!(v.desc_gpa(), 0x4000_0100);
        assert_eq!(
            v.used_gpa() - v.desc_gpa(),
            v.used_offset() - v.desc_offset()
        );
        let a = v.addr(1, v.used_gpa());
        let (idx, flags, d, u, av, log) =
            (a.index, a.flags, a.descriptor, a.used, a.available, a.log);
        assert_eq!(idx, 1);
        assert_eq!(flags, 0);
        assert_eq!(
            (d, u, av),
            (v.desc_user_addr(), v.used_user_addr(), v.avail_user_addr())
        );
        assert_eq!(log, v.used_gpa());
    }

    #[test]
    fn bad_sizes_and_overflow_are_refused() {
        let mem = SharedMemory::new(4096, HugePages::Never).unwrap();
        assert!(matches!(
            Vring::new(&mem, 0, 0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Vring::new(&mem, 0, 32769),
            Err(Error::InvalidArgument(_))
        ));
        // 256 entries need 4096 + 518 + 2054 bytes.
        assert!(matches!(
            Vring::new(&mem, 0, 256),
            Err(Error::OutOfRange { .. })
        ));
        assert!(Vring::new(&mem, 0, 64).is_ok());
    }

    #[test]
    fn rings_are_laid_out_back_to_back() {
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let rings = Ring::layout(&mem, 0, 256, 2).unwrap();
        assert_eq!(rings.len(), 2);
        assert!(rings[1].vring.desc_offset() >= rings[0].vring.end_offset());
        assert_ne!(rings[0].kick_fd(), rings[1].kick_fd());
        assert_ne!(rings[0].call_fd(), rings[0].kick_fd());
        assert_eq!(rings[0].base, 0);
    }
}
