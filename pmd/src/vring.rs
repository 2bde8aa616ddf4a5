//! Split virtqueue layout (virtio 1.2 §2.7) and its translation through guest memory.
#![forbid(unsafe_code)]

use thiserror::Error;

use crate::memory::{GuestMemoryMap, GuestRange};

/// Largest split ring the spec allows.
pub const MAX_QUEUE_SIZE: u32 = 32768;

/// Front-end virtual addresses of one split ring, as `SET_VRING_ADDR` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Driver area (available ring).
    pub avail: u64,
    /// Device area (used ring).
    pub used: u64,
}

/// Which part of a ring an address check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table.
    Desc,
    /// The available ring.
    Avail,
    /// The used ring.
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

/// Checks a queue size: a power of two in 1..=32768.
pub fn check_queue_size(num: u32) -> Result<u16, RingError> {
    if num == 0 || num > MAX_QUEUE_SIZE || !num.is_power_of_two() {
        return Err(RingError::BadSize(num));
    }
    // 32768 fits in u16.
    Ok(num as u16)
}

/// Byte lengths of the three parts of a split ring of `size` entries.
pub fn part_lengths(size: u16, event_idx: bool) -> [(RingPart, u64, u64); 3] {
    let n = u64::from(size);
    let event = if event_idx { 2 } else { 0 };
    [
        (RingPart::Desc, 16 * n, 16),
        (RingPart::Avail, 4 + 2 * n + event, 2),
        (RingPart::Used, 4 + 8 * n + event, 4),
    ]
}

/// The parts of a ring whose addresses were checked against a memory map: ranges of that
/// map (plain numbers; memory is reached through the map, see [`crate::split::raw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslatedRing {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: GuestRange,
    /// Available ring (with `used_event` when EVENT_IDX was used for the check).
    pub avail: GuestRange,
    /// Used ring (with `avail_event` likewise).
    pub used: GuestRange,
}

/// Checks alignment, containment in one region and non-overlap of the three parts, and
/// returns their ranges.
pub fn translate(
    memory: &GuestMemoryMap,
    size: u16,
    addrs: RingAddrs,
    event_idx: bool,
) -> Result<TranslatedRing, RingError> {
    let lens = part_lengths(size, event_idx);
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
        let t = translate(&mem, 256, addrs, true).unwrap();
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
            translate(&mem, 256, misaligned, false),
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
            translate(&mem, 256, outside, false),
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
            translate(&mem, 256, straddles_end, false),
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
            translate(&mem, 256, used_over_desc, false),
            Err(RingError::Overlap(RingPart::Desc, RingPart::Used))
        );
    }
}
