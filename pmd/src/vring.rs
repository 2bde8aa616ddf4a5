//! Virtqueue layouts (split, virtio 1.2 §2.7; packed, §2.8) and the translation of a
//! ring's parts through guest memory.
#![forbid(unsafe_code)]

use thiserror::Error;

use crate::memory::{GuestMemoryMap, GuestRange};

/// Largest ring the spec allows (both layouts).
pub const MAX_QUEUE_SIZE: u32 = 32768;

/// Front-end virtual addresses of one ring, as `SET_VRING_ADDR` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingAddrs {
    /// Descriptor table (split) or descriptor ring (packed).
    pub desc: u64,
    /// Driver area: the available ring (split) or the driver event suppression
    /// structure (packed).
    pub avail: u64,
    /// Device area: the used ring (split) or the device event suppression structure
    /// (packed).
    pub used: u64,
}

/// How a ring is laid out, from the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Descriptor table, available and used rings; with EVENT_IDX each ring ends with an
    /// event word.
    Split {
        /// VIRTIO_RING_F_EVENT_IDX.
        event_idx: bool,
    },
    /// One descriptor ring and two event suppression structures (VIRTIO_F_RING_PACKED).
    Packed,
}

impl Layout {
    /// The layout a virtio feature set selects.
    pub fn from_features(features: u64) -> Self {
        if features & (1 << 34) != 0 {
            Layout::Packed
        } else {
            Layout::Split {
                event_idx: features & (1 << 29) != 0,
            }
        }
    }
}

/// Which part of a ring an address check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table (or packed descriptor ring).
    Desc,
    /// The available ring (or packed driver event suppression structure).
    Avail,
    /// The used ring (or packed device event suppression structure).
    Used,
}

/// Why a ring's addresses were refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RingError {
    /// Not a power of two in 1..=32768.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u32),
    /// Address not aligned as §2.7 requires.
    #[error("{part:?} address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which part.
        part: RingPart,
        /// The address.
        addr: u64,
        /// Required alignment.
        align: u64,
    },
    /// The part does not lie wholly inside one memory region.
    #[error("{part:?} at {addr:#x} ({len} bytes) is not inside one memory region")]
    OutsideMemory {
        /// Which part.
        part: RingPart,
        /// The address.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// Two parts of the ring overlap (e.g. a used ring over the descriptor table).
    #[error("{0:?} and {1:?} overlap")]
    Overlap(RingPart, RingPart),
}

/// Checks a queue size: a power of two in 1..=32768 (packed rings need not be powers of
/// two, but the switch asks it of both layouts: every front-end uses one, and a ring size
/// must not change with the features negotiated after it).
pub fn check_queue_size(num: u32) -> Result<u16, RingError> {
    if num == 0 || num > MAX_QUEUE_SIZE || !num.is_power_of_two() {
        return Err(RingError::BadSize(num));
    }
    // 32768 fits in u16.
    Ok(num as u16)
}

/// Byte lengths and alignments of the three parts of a ring of `size` entries.
pub fn part_lengths(size: u16, layout: Layout) -> [(RingPart, u64, u64); 3] {
    let n = u64::from(size);
    match layout {
        Layout::Split { event_idx } => {
            let event = if event_idx { 2 } else { 0 };
            [
                (RingPart::Desc, 16 * n, 16),
                (RingPart::Avail, 4 + 2 * n + event, 2),
                (RingPart::Used, 4 + 8 * n + event, 4),
            ]
        }
        // virtio 1.2 §2.8.10.1: a 16-byte aligned descriptor ring, 4-byte aligned event
        // suppression structures of 4 bytes.
        Layout::Packed => [
            (RingPart::Desc, 16 * n, 16),
            (RingPart::Avail, 4, 4),
            (RingPart::Used, 4, 4),
        ],
    }
}

/// The parts of a ring whose addresses were checked against a memory map: ranges of that
/// map (plain numbers; memory is reached through the map, see [`crate::split::raw`] and
/// [`crate::packed::raw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslatedRing {
    /// The layout the parts were checked for.
    pub layout: Layout,
    /// Queue size.
    pub size: u16,
    /// Descriptor table or ring.
    pub desc: GuestRange,
    /// Driver area (split: with `used_event` when EVENT_IDX was used for the check).
    pub avail: GuestRange,
    /// Device area (split: with `avail_event` likewise).
    pub used: GuestRange,
}

/// Checks alignment, containment in one region and non-overlap of the three parts, and
/// returns their ranges.
pub fn translate(
    memory: &GuestMemoryMap,
    size: u16,
    addrs: RingAddrs,
    layout: Layout,
) -> Result<TranslatedRing, RingError> {
    let lens = part_lengths(size, layout);
    let starts = [addrs.desc, addrs.avail, addrs.used];
    let mut ranges = [GuestRange::default(); 3];
    for (i, &(part, len, align)) in lens.iter().enumerate() {
        let addr = starts[i];
        if !addr.is_multiple_of(align) {
            return Err(RingError::Misaligned { part, addr, align });
        }
        ranges[i] = memory
            .translate_user(addr, len)
            .ok_or(RingError::OutsideMemory { part, addr, len })?;
    }
    for i in 0..3 {
        for j in i + 1..3 {
            let (a, b) = (starts[i], starts[j]);
            // Both ranges were translated, so neither end overflows.
            if a < b + lens[j].1 && b < a + lens[i].1 {
                return Err(RingError::Overlap(lens[i].0, lens[j].0));
            }
        }
    }
    Ok(TranslatedRing {
        layout,
        size,
        desc: ranges[0],
        avail: ranges[1],
        used: ranges[2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_map;

    const SPLIT: Layout = Layout::Split { event_idx: false };

    fn memory() -> GuestMemoryMap {
        test_map(0x10000, 0x4000_0000)
    }

    #[test]
    fn queue_sizes() {
        for bad in [0, 3, 6, 65536, 40000] {
            assert_eq!(check_queue_size(bad), Err(RingError::BadSize(bad)));
        }
        for good in [1, 2, 256, 1024, 32768] {
            assert_eq!(check_queue_size(good), Ok(good as u16));
        }
    }

    #[test]
    fn translates_a_well_placed_ring() {
        let mem = memory();
        let addrs = RingAddrs {
            desc: 0x4000_0000,
            avail: 0x4000_1000,
            used: 0x4000_2000,
        };
        let t = translate(&mem, 256, addrs, Layout::Split { event_idx: true }).unwrap();
        assert_eq!(t.size, 256);
        assert_eq!(
            Some(t.avail),
            mem.translate_user(0x4000_1000, 4 + 2 * 256 + 2)
        );
    }

    #[test]
    fn refuses_misaligned_outside_and_overlapping_rings() {
        let mem = memory();
        let base = RingAddrs {
            desc: 0x4000_0000,
            avail: 0x4000_1000,
            used: 0x4000_2000,
        };
        let misaligned = RingAddrs {
            used: 0x4000_2002,
            ..base
        };
        assert!(matches!(
            translate(&mem, 256, misaligned, SPLIT),
            Err(RingError::Misaligned {
                part: RingPart::Used,
                ..
            })
        ));
        let outside = RingAddrs {
            desc: 0x3000_0000,
            ..base
        };
        assert!(matches!(
            translate(&mem, 256, outside, SPLIT),
            Err(RingError::OutsideMemory {
                part: RingPart::Desc,
                ..
            })
        ));
        let straddles_end = RingAddrs {
            used: 0x4000_fff0,
            ..base
        };
        assert!(matches!(
            translate(&mem, 256, straddles_end, SPLIT),
            Err(RingError::OutsideMemory {
                part: RingPart::Used,
                ..
            })
        ));
        let used_over_desc = RingAddrs {
            used: 0x4000_0100,
            ..base
        };
        assert_eq!(
            translate(&mem, 256, used_over_desc, SPLIT),
            Err(RingError::Overlap(RingPart::Desc, RingPart::Used))
        );
    }

    #[test]
    fn a_packed_ring_needs_only_four_bytes_per_event_area() {
        let mem = memory();
        let addrs = RingAddrs {
            desc: 0x4000_0000,
            avail: 0x4000_1000,
            used: 0x4000_1004,
        };
        let t = translate(&mem, 256, addrs, Layout::Packed).unwrap();
        assert_eq!(Some(t.used), mem.translate_user(0x4000_1004, 4));
        // Split, the same addresses overlap.
        assert!(translate(&mem, 256, addrs, SPLIT).is_err());
        let misaligned = RingAddrs {
            avail: 0x4000_1002,
            ..addrs
        };
        assert!(matches!(
            translate(&mem, 256, misaligned, Layout::Packed),
            Err(RingError::Misaligned {
                part: RingPart::Avail,
                align: 4,
                ..
            })
        ));
    }
}
