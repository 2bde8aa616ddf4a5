//! Payloads of the fixed-size commands, decoded from and encoded to little-endian bytes.
//!
//! Each payload is checked for its exact length before a field is read; nothing here
//! trusts a length the client wrote (`argsz` is checked against what arrived).

use super::refusal::Refusal;
use super::wire::Command;

/// Little-endian field reads over a payload whose length was checked.
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// Wraps `bytes` after checking that exactly `len` of them (or, with `at_least`, no
    /// fewer) arrived.
    pub fn exact(command: Command, bytes: &'a [u8], len: usize) -> Result<Self, Refusal> {
        if bytes.len() != len {
            return Err(Refusal::PayloadSize {
                command,
                expected: expected_text(len),
                got: bytes.len(),
            });
        }
        Ok(Fields(bytes))
    }

    /// Wraps `bytes` after checking that at least `len` of them arrived.
    pub fn at_least(command: Command, bytes: &'a [u8], len: usize) -> Result<Self, Refusal> {
        if bytes.len() < len {
            return Err(Refusal::PayloadSize {
                command,
                expected: expected_text(len),
                got: bytes.len(),
            });
        }
        Ok(Fields(bytes))
    }

    /// The u16 at `at`.
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    /// The u32 at `at`.
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().unwrap_or([0; 4]))
    }

    /// The u64 at `at`.
    pub fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().unwrap_or([0; 8]))
    }

    /// The bytes from `at` on.
    pub fn rest(&self, at: usize) -> &'a [u8] {
        &self.0[at..]
    }
}

fn expected_text(len: usize) -> &'static str {
    match len {
        0 => "0",
        4 => "4",
        8 => "8",
        16 => "16",
        20 => "20",
        24 => "24",
        32 => "32",
        _ => "a fixed size",
    }
}

/// Appends little-endian values to a reply.
#[derive(Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// Appends a u16.
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u32.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u64.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }

    /// The encoded payload.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// DMA_MAP flag: the device may read the memory.
pub const DMA_READ: u32 = 1 << 0;
/// DMA_MAP flag: the device may write the memory.
pub const DMA_WRITE: u32 = 1 << 1;
/// DMA_UNMAP flag: return a dirty bitmap (migration; not supported).
pub const UNMAP_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// DMA_UNMAP flag: remove every map (address and size 0).
pub const UNMAP_ALL: u32 = 1 << 1;

/// DMA_MAP: argsz, flags, offset into the attached file, IOVA, size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMap {
    /// [`DMA_READ`] | [`DMA_WRITE`].
    pub flags: u32,
    /// Offset of the first byte in the attached file.
    pub offset: u64,
    /// IO virtual address (guest-physical without a vIOMMU).
    pub iova: u64,
    /// Bytes.
    pub size: u64,
}

impl DmaMap {
    /// Bytes of the payload.
    pub const LEN: usize = 32;

    /// Decodes and checks the payload.
    pub fn parse(bytes: &[u8]) -> Result<Self, Refusal> {
        let c = Command::DmaMap;
        let f = Fields::exact(c, bytes, Self::LEN)?;
        if f.u32(0) as usize != Self::LEN {
            return Err(Refusal::invalid(
                c,
                format!("argsz {} (32 expected)", f.u32(0)),
            ));
        }
        let map = DmaMap {
            flags: f.u32(4),
            offset: f.u64(8),
            iova: f.u64(16),
            size: f.u64(24),
        };
        if map.flags & !(DMA_READ | DMA_WRITE) != 0 {
            return Err(Refusal::invalid(
                c,
                format!("unknown flags {:#x}", map.flags),
            ));
        }
        Ok(map)
    }
}

/// DMA_UNMAP: argsz, flags, IOVA, size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmap {
    /// [`UNMAP_ALL`] (and [`UNMAP_GET_DIRTY_BITMAP`], refused).
    pub flags: u32,
    /// First IOVA of the range.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
}

impl DmaUnmap {
    /// Bytes of the payload.
    pub const LEN: usize = 24;

    /// Decodes and checks the payload.
    pub fn parse(bytes: &[u8]) -> Result<Self, Refusal> {
        let c = Command::DmaUnmap;
        let f = Fields::exact(c, bytes, Self::LEN)?;
        if f.u32(0) as usize != Self::LEN {
            return Err(Refusal::invalid(
                c,
                format!("argsz {} (24 expected)", f.u32(0)),
            ));
        }
        let unmap = DmaUnmap {
            flags: f.u32(4),
            iova: f.u64(8),
            size: f.u64(16),
        };
        if unmap.flags & UNMAP_GET_DIRTY_BITMAP != 0 {
            return Err(Refusal::Unsupported(c));
        }
        if unmap.flags & !UNMAP_ALL != 0 {
            return Err(Refusal::invalid(
                c,
                format!("unknown flags {:#x}", unmap.flags),
            ));
        }
        if unmap.flags & UNMAP_ALL != 0 && (unmap.iova != 0 || unmap.size != 0) {
            return Err(Refusal::invalid(c, "UNMAP_ALL with an address or size"));
        }
        Ok(unmap)
    }

    /// The reply: the request echoed (no dirty bitmap follows).
    pub fn encode(&self) -> Vec<u8> {
        Writer::default()
            .u32(Self::LEN as u32)
            .u32(self.flags)
            .u64(self.iova)
            .u64(self.size)
            .finish()
    }
}

/// REGION_READ / REGION_WRITE: offset, region index, byte count (and, for a write, the
/// data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset inside the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes.
    pub count: u32,
}

impl RegionAccess {
    /// Bytes before the data.
    pub const LEN: usize = 16;

    /// Decodes a REGION_READ payload.
    pub fn parse_read(bytes: &[u8], max: usize) -> Result<Self, Refusal> {
        let c = Command::RegionRead;
        let f = Fields::exact(c, bytes, Self::LEN)?;
        let access = Self::decode(&f);
        if access.count as usize > max {
            return Err(Refusal::invalid(
                c,
                format!("count {} exceeds max_data_xfer_size {max}", access.count),
            ));
        }
        Ok(access)
    }

    /// Decodes a REGION_WRITE payload: the access and its data, exactly `count` bytes.
    pub fn parse_write(bytes: &[u8]) -> Result<(Self, &[u8]), Refusal> {
        let c = Command::RegionWrite;
        let f = Fields::at_least(c, bytes, Self::LEN)?;
        let access = Self::decode(&f);
        let data = f.rest(Self::LEN);
        if data.len() != access.count as usize {
            return Err(Refusal::invalid(
                c,
                format!("count {} but {} bytes of data", access.count, data.len()),
            ));
        }
        Ok((access, data))
    }

    fn decode(f: &Fields<'_>) -> Self {
        RegionAccess {
            offset: f.u64(0),
            region: f.u32(8),
            count: f.u32(12),
        }
    }

    /// The access header of a reply.
    pub fn encode(&self) -> Writer {
        Writer::default()
            .u64(self.offset)
            .u32(self.region)
            .u32(self.count)
    }
}

/// The `argsz, flags, index, count` shape shared by GET_IRQ_INFO and
/// GET_REGION_IO_FDS requests, and the `argsz, ..., index, ...` of GET_REGION_INFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexQuery {
    /// Bytes the client has room for in the reply (after the header).
    pub argsz: u32,
    /// Flags (unused by requests).
    pub flags: u32,
    /// Region or interrupt index.
    pub index: u32,
}

impl IndexQuery {
    /// Decodes a request of `len` bytes whose index is at offset 8.
    pub fn parse(command: Command, bytes: &[u8], len: usize) -> Result<Self, Refusal> {
        let f = Fields::exact(command, bytes, len)?;
        let q = IndexQuery {
            argsz: f.u32(0),
            flags: f.u32(4),
            index: f.u32(8),
        };
        if (q.argsz as usize) < len {
            return Err(Refusal::invalid(
                command,
                format!("argsz {} is smaller than the {len}-byte request", q.argsz),
            ));
        }
        Ok(q)
    }
}

/// SET_IRQS flag: no data (trigger, or disable with count 0).
pub const IRQ_DATA_NONE: u32 = 1 << 0;
/// SET_IRQS flag: one bool byte per interrupt.
pub const IRQ_DATA_BOOL: u32 = 1 << 1;
/// SET_IRQS flag: eventfds attached, one per interrupt (or none: unassign).
pub const IRQ_DATA_EVENTFD: u32 = 1 << 2;
/// SET_IRQS flag: mask.
pub const IRQ_ACTION_MASK: u32 = 1 << 3;
/// SET_IRQS flag: unmask.
pub const IRQ_ACTION_UNMASK: u32 = 1 << 4;
/// SET_IRQS flag: trigger (assign eventfds, fire, or disable).
pub const IRQ_ACTION_TRIGGER: u32 = 1 << 5;

/// What a SET_IRQS carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqData {
    /// Nothing.
    None,
    /// One bool per interrupt.
    Bool(Vec<bool>),
    /// Eventfds (attached to the message, not in the payload).
    Eventfd,
}

/// What a SET_IRQS does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask.
    Mask,
    /// Unmask.
    Unmask,
    /// Trigger / assign.
    Trigger,
}

/// SET_IRQS: argsz, flags, index, start, count, then data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetIrqs {
    /// The data kind.
    pub data: IrqData,
    /// The action.
    pub action: IrqAction,
    /// Interrupt index (INTx, MSI, MSI-X, ERR, REQ).
    pub index: u32,
    /// First interrupt of the index.
    pub start: u32,
    /// Interrupts concerned.
    pub count: u32,
}

impl SetIrqs {
    /// Bytes before the data.
    pub const LEN: usize = 20;

    /// Decodes and checks the payload: exactly one data kind and one action, bool data
    /// exactly `count` bytes long.
    pub fn parse(bytes: &[u8]) -> Result<Self, Refusal> {
        let c = Command::DeviceSetIrqs;
        let f = Fields::at_least(c, bytes, Self::LEN)?;
        let (argsz, flags) = (f.u32(0) as usize, f.u32(4));
        let (index, start, count) = (f.u32(8), f.u32(12), f.u32(16));
        let data_bits = flags & (IRQ_DATA_NONE | IRQ_DATA_BOOL | IRQ_DATA_EVENTFD);
        let action_bits = flags & (IRQ_ACTION_MASK | IRQ_ACTION_UNMASK | IRQ_ACTION_TRIGGER);
        if flags & !(data_bits | action_bits) != 0
            || data_bits.count_ones() != 1
            || action_bits.count_ones() != 1
        {
            return Err(Refusal::invalid(
                c,
                format!("flags {flags:#x}: one data kind and one action"),
            ));
        }
        let rest = f.rest(Self::LEN);
        let data = match data_bits {
            IRQ_DATA_BOOL => {
                if rest.len() != count as usize {
                    return Err(Refusal::invalid(
                        c,
                        format!("{} bool bytes for count {count}", rest.len()),
                    ));
                }
                IrqData::Bool(rest.iter().map(|&b| b != 0).collect())
            }
            IRQ_DATA_EVENTFD => IrqData::Eventfd,
            _ => IrqData::None,
        };
        if !matches!(data, IrqData::Bool(_)) && !rest.is_empty() {
            return Err(Refusal::invalid(
                c,
                format!("{} bytes of data without DATA_BOOL", rest.len()),
            ));
        }
        // QEMU states argsz as the fixed part only when descriptors carry the data.
        if argsz < Self::LEN || argsz > bytes.len() {
            return Err(Refusal::invalid(
                c,
                format!("argsz {argsz} for a {}-byte payload", bytes.len()),
            ));
        }
        let action = match action_bits {
            IRQ_ACTION_MASK => IrqAction::Mask,
            IRQ_ACTION_UNMASK => IrqAction::Unmask,
            _ => IrqAction::Trigger,
        };
        Ok(SetIrqs {
            data,
            action,
            index,
            start,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn dma_map_fields_and_checks() {
        let mut p = words(&[32, DMA_READ | DMA_WRITE]);
        p.extend_from_slice(&0x1000u64.to_le_bytes());
        p.extend_from_slice(&0x10_0000u64.to_le_bytes());
        p.extend_from_slice(&0x20_0000u64.to_le_bytes());
        let m = DmaMap::parse(&p).unwrap();
        assert_eq!((m.offset, m.iova, m.size), (0x1000, 0x10_0000, 0x20_0000));
        assert!(DmaMap::parse(&p[..31]).is_err());
        let mut bad = p.clone();
        bad[4] = 4;
        assert_eq!(DmaMap::parse(&bad).unwrap_err().errno(), libc::EINVAL);
        let mut bad = p;
        bad[0] = 40;
        assert!(DmaMap::parse(&bad).is_err());
    }

    #[test]
    fn dma_unmap_refuses_dirty_bitmaps_and_partial_unmap_all() {
        let mut p = words(&[24, 0]);
        p.extend_from_slice(&0x1000u64.to_le_bytes());
        p.extend_from_slice(&0x1000u64.to_le_bytes());
        let u = DmaUnmap::parse(&p).unwrap();
        assert_eq!(u.encode(), p);
        p[4] = UNMAP_GET_DIRTY_BITMAP as u8;
        assert_eq!(DmaUnmap::parse(&p).unwrap_err().errno(), libc::EOPNOTSUPP);
        p[4] = UNMAP_ALL as u8;
        assert!(DmaUnmap::parse(&p).is_err(), "UNMAP_ALL with a range");
        let mut all = words(&[24, UNMAP_ALL]);
        all.extend_from_slice(&[0; 16]);
        assert_eq!(DmaUnmap::parse(&all).unwrap().flags, UNMAP_ALL);
    }

    #[test]
    fn region_access_counts_must_match() {
        let mut p = 0x10u64.to_le_bytes().to_vec();
        p.extend_from_slice(&words(&[7, 4]));
        let r = RegionAccess::parse_read(&p, 8).unwrap();
        assert_eq!((r.offset, r.region, r.count), (0x10, 7, 4));
        assert!(
            RegionAccess::parse_read(&p, 2).is_err(),
            "beyond max transfer"
        );
        p.extend_from_slice(&[1, 2, 3, 4]);
        let (w, data) = RegionAccess::parse_write(&p).unwrap();
        assert_eq!((w.count, data), (4, &[1u8, 2, 3, 4][..]));
        assert!(RegionAccess::parse_write(&p[..19]).is_err());
    }

    #[test]
    fn set_irqs_needs_one_data_kind_and_one_action() {
        let eventfd = words(&[20, IRQ_DATA_EVENTFD | IRQ_ACTION_TRIGGER, 2, 0, 3]);
        let s = SetIrqs::parse(&eventfd).unwrap();
        assert_eq!(
            (s.data, s.action, s.index, s.count),
            (IrqData::Eventfd, IrqAction::Trigger, 2, 3)
        );
        let two_kinds = words(&[
            20,
            IRQ_DATA_EVENTFD | IRQ_DATA_NONE | IRQ_ACTION_TRIGGER,
            2,
            0,
            3,
        ]);
        assert!(SetIrqs::parse(&two_kinds).is_err());
        let no_action = words(&[20, IRQ_DATA_NONE, 2, 0, 0]);
        assert!(SetIrqs::parse(&no_action).is_err());
        let mut bools = words(&[22, IRQ_DATA_BOOL | IRQ_ACTION_TRIGGER, 2, 1, 2]);
        bools.extend_from_slice(&[1, 0]);
        assert_eq!(
            SetIrqs::parse(&bools).unwrap().data,
            IrqData::Bool(vec![true, false])
        );
        bools.pop();
        assert!(SetIrqs::parse(&bools).is_err(), "one bool short");
        let mut stray = words(&[20, IRQ_DATA_NONE | IRQ_ACTION_TRIGGER, 2, 0, 0]);
        stray.push(9);
        assert!(SetIrqs::parse(&stray).is_err(), "data without DATA_BOOL");
    }

    #[test]
    fn index_queries_check_argsz() {
        let q = IndexQuery::parse(Command::DeviceGetIrqInfo, &words(&[16, 0, 2, 0]), 16).unwrap();
        assert_eq!(q.index, 2);
        assert!(IndexQuery::parse(Command::DeviceGetIrqInfo, &words(&[8, 0, 2, 0]), 16).is_err());
        assert!(IndexQuery::parse(Command::DeviceGetIrqInfo, &words(&[16, 0, 2]), 16).is_err());
    }
}
