//! Byte encodings of the front-end request payloads the net device uses (native endian).
//!
//! Public so that tests can start from a legal payload and break it (truncate, pad, flip
//! bits) before sending it with [`crate::Connection::send`].

use vhost::vhost_user::message::{VhostUserMemoryRegion, VhostUserVringAddr};

/// Size of one memory region descriptor on the wire.
pub const REGION_SIZE: usize = 32;
/// Size of the SET_MEM_TABLE payload before the regions (u32 count + u32 padding).
pub const MEM_TABLE_HEADER_SIZE: usize = 8;
/// Size of the ADD_MEM_REG / REM_MEM_REG payload (u64 padding + one region).
pub const SINGLE_REGION_SIZE: usize = 8 + REGION_SIZE;
/// Size of the SET_VRING_ADDR payload.
pub const VRING_ADDR_SIZE: usize = 40;
/// Size of a vring state (index, num) payload.
pub const VRING_STATE_SIZE: usize = 8;
/// Size of the GET_CONFIG / SET_CONFIG header (offset, size, flags).
pub const CONFIG_HEADER_SIZE: usize = 12;
/// Bit of a vring file payload (KICK/CALL/ERR) meaning "no fd attached".
pub const VRING_NOFD_MASK: u64 = 0x100;
/// Mask of the vring index in a vring file payload.
pub const VRING_IDX_MASK: u64 = 0xff;

/// Encodes one memory region: gpa, size, user address, mmap offset.
pub fn region(r: &VhostUserMemoryRegion) -> [u8; REGION_SIZE] {
    // Copy the fields out of the packed struct before use.
    let (gpa, size, ua, off) = (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
    let mut b = [0u8; REGION_SIZE];
    b[0..8].copy_from_slice(&gpa.to_ne_bytes());
    b[8..16].copy_from_slice(&size.to_ne_bytes());
    b[16..24].copy_from_slice(&ua.to_ne_bytes());
    b[24..32].copy_from_slice(&off.to_ne_bytes());
    b
}

/// SET_MEM_TABLE payload: u32 number of regions, u32 padding, the regions (8 + 32 n bytes).
pub fn mem_table<'a>(regions: impl ExactSizeIterator<Item = &'a VhostUserMemoryRegion>) -> Vec<u8> {
    let n = regions.len();
    let mut b = Vec::with_capacity(MEM_TABLE_HEADER_SIZE + REGION_SIZE * n);
    b.extend_from_slice(&(n as u32).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    for r in regions {
        b.extend_from_slice(&region(r));
    }
    b
}

/// ADD_MEM_REG / REM_MEM_REG payload: u64 padding then one region (40 bytes).
pub fn single_region(r: &VhostUserMemoryRegion) -> [u8; SINGLE_REGION_SIZE] {
    let mut b = [0u8; SINGLE_REGION_SIZE];
    b[8..].copy_from_slice(&region(r));
    b
}

/// Vring state payload (SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE).
pub fn vring_state(index: u32, num: u32) -> [u8; VRING_STATE_SIZE] {
    let mut b = [0u8; VRING_STATE_SIZE];
    b[0..4].copy_from_slice(&index.to_ne_bytes());
    b[4..8].copy_from_slice(&num.to_ne_bytes());
    b
}

/// SET_VRING_ADDR payload: u32 index, u32 flags, u64 desc, u64 used, u64 avail, u64 log.
pub fn vring_addr(a: &VhostUserVringAddr) -> [u8; VRING_ADDR_SIZE] {
    let (index, flags, desc, used, avail, log) =
        (a.index, a.flags, a.descriptor, a.used, a.available, a.log);
    let mut b = [0u8; VRING_ADDR_SIZE];
    b[0..4].copy_from_slice(&index.to_ne_bytes());
    b[4..8].copy_from_slice(&flags.to_ne_bytes());
    b[8..16].copy_from_slice(&desc.to_ne_bytes());
    b[16..24].copy_from_slice(&used.to_ne_bytes());
    b[24..32].copy_from_slice(&avail.to_ne_bytes());
    b[32..40].copy_from_slice(&log.to_ne_bytes());
    b
}

/// SET_VRING_KICK / CALL / ERR payload: bits 0-7 index, bit 8 set when no fd is attached.
pub fn vring_file(index: u32, has_fd: bool) -> u64 {
    let mut v = u64::from(index) & VRING_IDX_MASK;
    if !has_fd {
        v |= VRING_NOFD_MASK;
    }
    v
}

/// GET_CONFIG / SET_CONFIG header: u32 offset, u32 size, u32 flags.
pub fn config_header(offset: u32, size: u32, flags: u32) -> [u8; CONFIG_HEADER_SIZE] {
    let mut b = [0u8; CONFIG_HEADER_SIZE];
    b[0..4].copy_from_slice(&offset.to_ne_bytes());
    b[4..8].copy_from_slice(&size.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// Reads a native-endian u32 at `at` (None when out of range).
pub fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(s.try_into().ok()?))
}

/// Reads a native-endian u64 at `at` (None when out of range).
pub fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(s.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost::vhost_user::message::VhostUserVringAddrFlags;
    use vm_memory::ByteValued;

    #[test]
    fn region_matches_vhost_layout() {
        let r = VhostUserMemoryRegion::new(1, 2, 3, 4);
        assert_eq!(region(&r).as_slice(), r.as_slice());
        let t = mem_table([r, r].iter());
        assert_eq!(t.len(), 8 + 64);
        assert_eq!(read_u32(&t, 0), Some(2));
        assert_eq!(read_u32(&t, 4), Some(0));
        assert_eq!(read_u64(&t, 8 + 32 + 16), Some(3));
        let s = single_region(&r);
        assert_eq!(read_u64(&s, 0), Some(0));
        assert_eq!(read_u64(&s, 8), Some(1));
        assert_eq!(read_u64(&s, 32), Some(4));
    }

    #[test]
    fn vring_addr_matches_vhost_layout() {
        let a = VhostUserVringAddr::new(
            1,
            VhostUserVringAddrFlags::VHOST_VRING_F_LOG,
            0x10,
            0x20,
            0x30,
            0x40,
        );
        let b = vring_addr(&a);
        assert_eq!(b.as_slice(), a.as_slice());
        // desc, used, avail order (not desc, avail, used).
        assert_eq!(read_u64(&b, 16), Some(0x20));
        assert_eq!(read_u64(&b, 24), Some(0x30));
    }

    #[test]
    fn vring_file_bits() {
        assert_eq!(vring_file(3, true), 3);
        assert_eq!(vring_file(3, false), 0x103);
        assert_eq!(vring_file(0x1ff, true), 0xff, "index is masked to 8 bits");
    }

    #[test]
    fn readers_are_bounded() {
        let b = [1u8, 0, 0, 0, 0, 0, 0];
        assert_eq!(read_u32(&b, 0), Some(1));
        assert_eq!(read_u32(&b, 4), None);
        assert_eq!(read_u64(&b, 0), None);
        assert_eq!(read_u64(&b, usize::MAX), None);
    }
}
