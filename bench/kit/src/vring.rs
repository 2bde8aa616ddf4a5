//! Virtqueue layouts inside front-end memory (split, virtio 1.2 §2.7; packed, §2.8), and
//! the eventfds that go with a ring.
//!
//! vhost-user names a ring's three areas after the split layout (SET_VRING_ADDR's
//! `descriptor`, `available`, `used`); for a packed ring they carry the descriptor ring, the
//! driver event suppression area and the device event suppression area, and
//! SET_VRING_BASE / GET_VRING_BASE carry the avail index with the wrap counter in bit 15
//! ([`packed_base`]).

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
/// Largest queue size (split and packed).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Alignment of a packed ring's event suppression areas.
pub const EVENT_ALIGN: u64 = 4;
/// Bytes of a packed ring's event suppression area (off_wrap, flags).
pub const EVENT_AREA_SIZE: u64 = 4;
/// Bit 15 of a packed ring's base (SET_VRING_BASE, GET_VRING_BASE) and of an event
/// suppression `off_wrap`: the wrap counter.
pub const PACKED_WRAP_BIT: u32 = 1 << 15;

/// The base of a packed ring as vhost-user carries it: `index | wrap << 15` (DPDK starts a
/// ring with 32768: index 0, wrap counter 1).
pub fn packed_base(index: u16, wrap: bool) -> u32 {
    u32::from(index & 0x7fff) | if wrap { PACKED_WRAP_BIT } else { 0 }
}

/// Splits a packed ring's base into index and wrap counter (bits above 15 are ignored).
pub fn parse_packed_base(base: u32) -> (u16, bool) {
    ((base & 0x7fff) as u16, base & PACKED_WRAP_BIT != 0)
}

/// Which virtqueue format a ring uses (VIRTIO_F_RING_PACKED negotiated or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RingLayout {
    /// Descriptor table, available ring, used ring (virtio 1.2 §2.7).
    #[default]
    Split,
    /// One descriptor ring and two event suppression areas (virtio 1.2 §2.8).
    Packed,
}

impl RingLayout {
    /// The layout the negotiated `features` call for (VIRTIO_F_RING_PACKED, bit 34).
    pub fn for_features(features: u64) -> RingLayout {
        if features & crate::sequences::bits::F_RING_PACKED != 0 {
            RingLayout::Packed
        } else {
            RingLayout::Split
        }
    }

    /// `split` or `packed`.
    pub fn name(self) -> &'static str {
        match self {
            RingLayout::Split => "split",
            RingLayout::Packed => "packed",
        }
    }
}

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

/// Where a virtqueue lies in a [`SharedMemory`]: offsets in the memory, and the same places
/// as front-end user addresses (what SET_VRING_ADDR carries) and guest physical addresses.
///
/// The three areas are named after the split layout; for a packed ring "desc" is the
/// descriptor ring, "avail" the driver event suppression area and "used" the device event
/// suppression area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vring {
    layout: RingLayout,
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
            layout: RingLayout::Split,
            queue_size,
            desc,
            avail,
            used,
            end,
            user_base: mem.user_addr(),
            gpa_base: mem.guest_phys_addr(),
        })
    }

    /// Lays out a packed ring of `queue_size` entries (1..=32768, any size: packed rings
    /// need no power of two) from `offset` in `mem`: descriptor ring (aligned 16), driver
    /// event suppression area right after (aligned 4), device event suppression area after
    /// that.
    pub fn new_packed(mem: &SharedMemory, offset: u64, queue_size: u16) -> Result<Vring> {
        if queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "queue size {queue_size} not in 1..=32768"
            )));
        }
        let desc = align_up(offset, DESC_ALIGN);
        let driver = align_up(desc + desc_table_size(queue_size), EVENT_ALIGN);
        let device = driver + EVENT_AREA_SIZE;
        let end = device + EVENT_AREA_SIZE;
        if end > mem.size() as u64 {
            return Err(Error::OutOfRange {
                offset,
                len: end - offset,
                size: mem.size() as u64,
            });
        }
        Ok(Vring {
            layout: RingLayout::Packed,
            queue_size,
            desc,
            avail: driver,
            used: device,
            end,
            user_base: mem.user_addr(),
            gpa_base: mem.guest_phys_addr(),
        })
    }

    /// A ring of `layout` ([`Vring::new`] or [`Vring::new_packed`]).
    pub fn with_layout(
        mem: &SharedMemory,
        offset: u64,
        queue_size: u16,
        layout: RingLayout,
    ) -> Result<Vring> {
        match layout {
            RingLayout::Split => Vring::new(mem, offset, queue_size),
            RingLayout::Packed => Vring::new_packed(mem, offset, queue_size),
        }
    }

    /// Bytes a ring of `layout` and `queue_size` takes from a 16-aligned offset.
    pub fn footprint(layout: RingLayout, queue_size: u16) -> u64 {
        let desc = desc_table_size(queue_size);
        match layout {
            RingLayout::Split => {
                let avail = align_up(desc + avail_ring_size(queue_size), USED_ALIGN);
                avail + used_ring_size(queue_size)
            }
            RingLayout::Packed => desc + 2 * EVENT_AREA_SIZE,
        }
    }

    /// The ring's format.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Whether this is a packed ring.
    pub fn is_packed(&self) -> bool {
        self.layout == RingLayout::Packed
    }

    /// The SET_VRING_BASE value that starts the ring afresh: 0 for a split ring, index 0
    /// with wrap counter 1 (32768) for a packed one.
    pub fn initial_base(&self) -> u32 {
        match self.layout {
            RingLayout::Split => 0,
            RingLayout::Packed => packed_base(0, true),
        }
    }

    /// The queue size.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Offset of the descriptor table in the memory.
    pub fn desc_offset(&self) -> u64 {
        self.desc
    }

    /// Offset of the available ring (packed: the driver event suppression area) in the
    /// memory.
    pub fn avail_offset(&self) -> u64 {
        self.avail
    }

    /// Offset of the used ring (packed: the device event suppression area) in the memory.
    pub fn used_offset(&self) -> u64 {
        self.used
    }

    /// Offset of the first byte after the ring's last area (where the next ring may start).
    pub fn end_offset(&self) -> u64 {
        self.end
    }

    /// User address of the descriptor table.
    pub fn desc_user_addr(&self) -> u64 {
        self.user_base + self.desc
    }

    /// User address of the available ring (packed: driver event suppression area).
    pub fn avail_user_addr(&self) -> u64 {
        self.user_base + self.avail
    }

    /// User address of the used ring (packed: device event suppression area).
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
    /// Value sent with SET_VRING_BASE ([`Vring::initial_base`] for a fresh ring; other
    /// values when replaying a reconnect).
    pub base: u32,
}

impl Ring {
    /// A ring with fresh non-blocking eventfds and the ring's initial base.
    pub fn new(vring: Vring) -> Result<Ring> {
        Ok(Ring {
            base: vring.initial_base(),
            vring,
            kick: EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?,
            call: EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?,
            err: EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?,
        })
    }

    /// Lays out `count` consecutive split rings of `queue_size` entries from `offset` in
    /// `mem`, each with fresh eventfds.
    pub fn layout(
        mem: &SharedMemory,
        offset: u64,
        queue_size: u16,
        count: usize,
    ) -> Result<Vec<Ring>> {
        Ring::layout_as(mem, offset, queue_size, count, RingLayout::Split)
    }

    /// [`Ring::layout`] for rings of `layout`.
    pub fn layout_as(
        mem: &SharedMemory,
        offset: u64,
        queue_size: u16,
        count: usize,
        layout: RingLayout,
    ) -> Result<Vec<Ring>> {
        let mut rings = Vec::with_capacity(count);
        let mut at = offset;
        for _ in 0..count {
            let vring = Vring::with_layout(mem, at, queue_size, layout)?;
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

    #[test]
    fn packed_rings_hold_a_descriptor_ring_and_two_event_areas() {
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let v = Vring::new_packed(&mem, 3, 5).unwrap();
        assert!(v.is_packed());
        assert_eq!(v.layout(), RingLayout::Packed);
        assert_eq!(v.desc_offset(), 16);
        assert_eq!(
            v.avail_offset(),
            16 + 80,
            "driver event area after the ring"
        );
        assert_eq!(v.used_offset(), 16 + 80 + 4, "device event area after it");
        assert_eq!(v.end_offset(), 16 + 80 + 8);
        assert_eq!(v.initial_base(), 32768);
        assert_eq!(Vring::new(&mem, 0, 8).unwrap().initial_base(), 0);
        let a = v.addr(0, 0);
        let (d, u, av) = (a.descriptor, a.used, a.available);
        assert_eq!(
            (d, av, u),
            (v.desc_user_addr(), v.avail_user_addr(), v.used_user_addr()),
            "SET_VRING_ADDR: desc = ring, avail = driver area, used = device area"
        );
        for n in [1u16, 3, 256, 1000, 32768] {
            for layout in [RingLayout::Split, RingLayout::Packed] {
                let v = Vring::with_layout(&mem, 0x20, n, layout);
                let Ok(v) = v else { continue };
                assert_eq!(v.layout(), layout);
                assert_eq!(
                    v.end_offset() - v.desc_offset(),
                    Vring::footprint(layout, n)
                );
                assert_eq!(v.avail_user_addr() % 4, 0, "{layout:?} {n}");
            }
        }
        assert!(Vring::new_packed(&mem, 0, 0).is_err());
        assert!(Vring::new_packed(&mem, 0, 32769).is_err());
        assert!(matches!(
            Vring::new_packed(&mem, (1 << 20) - 100, 8),
            Err(Error::OutOfRange { .. })
        ));
        let rings = Ring::layout_as(&mem, 0, 256, 2, RingLayout::Packed).unwrap();
        assert!(rings[1].vring.desc_offset() >= rings[0].vring.end_offset());
        assert_eq!((rings[0].base, rings[1].base), (32768, 32768));
    }

    #[test]
    fn packed_bases_carry_the_wrap_counter_in_bit_15() {
        assert_eq!(packed_base(0, true), 32768);
        assert_eq!(packed_base(5, false), 5);
        assert_eq!(packed_base(0x7fff, true), 0xffff);
        assert_eq!(parse_packed_base(32768), (0, true));
        assert_eq!(parse_packed_base(0x1_0005), (5, false));
        for (i, w) in [(0u16, false), (1, true), (300, true), (0x7fff, false)] {
            assert_eq!(parse_packed_base(packed_base(i, w)), (i, w));
        }
        assert_eq!(
            RingLayout::for_features(crate::sequences::bits::F_RING_PACKED),
            RingLayout::Packed
        );
        assert_eq!(
            RingLayout::for_features(!crate::sequences::bits::F_RING_PACKED),
            RingLayout::Split
        );
    }
}
