//! PCI configuration space of the emulated virtio-net device (type 0 header, the
//! virtio-pci vendor capabilities and MSI-X).
//!
//! The space is a byte image plus a mask of the bits the driver may write, so every
//! register behaves as PCI says without a handler each: BAR sizing (write all ones, read
//! back the size mask) falls out of the BARs' masks, read-only bits ignore writes.

use super::layout::*;

/// Red Hat / virtio vendor id.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern virtio-net: 0x1040 + device type 1.
pub const DEVICE_ID: u16 = 0x1041;
/// The virtio-pci capability id (vendor-specific).
const CAP_VENDOR: u8 = 0x09;
/// The MSI-X capability id.
const CAP_MSIX: u8 = 0x11;

/// virtio-pci capability types (virtio 1.2 §4.1.4).
pub mod cfg_type {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications.
    pub const NOTIFY: u8 = 2;
    /// ISR status.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
}

/// Offsets of the capabilities in config space.
const CAP_COMMON: usize = 0x40;
const CAP_NOTIFY: usize = 0x50;
const CAP_ISR: usize = 0x64;
const CAP_DEVICE: usize = 0x74;
/// Offset of the MSI-X capability.
pub const CAP_MSIX_AT: usize = 0x84;

/// Command register bits the driver may set: I/O, memory, bus master, parity, SERR,
/// INTx disable.
const COMMAND_WRITABLE: u16 = 0x0547;
/// MSI-X message control bits the driver may set: enable, function mask.
const MSIX_CONTROL_WRITABLE: u16 = 0xc000;
/// MSI-X enable bit of message control.
const MSIX_ENABLE: u16 = 0x8000;

const LEN: usize = CONFIG_SPACE_LEN as usize;

/// The config space of one device.
#[derive(Clone, Debug)]
pub struct PciConfig {
    bytes: [u8; LEN],
    writable: [u8; LEN],
    initial: [u8; LEN],
}

impl Default for PciConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PciConfig {
    /// The space as it is after reset.
    pub fn new() -> Self {
        let mut c = PciConfig {
            bytes: [0; LEN],
            writable: [0; LEN],
            initial: [0; LEN],
        };
        c.put16(0x00, VENDOR_ID);
        c.put16(0x02, DEVICE_ID);
        c.put16(0x06, 0x0010); // status: capability list
        c.bytes[0x08] = 0x01; // revision 1: a modern (non-transitional) device
        c.put24(0x09, 0x02_00_00); // class: network controller, ethernet
        c.put16(0x2c, VENDOR_ID); // subsystem vendor
        c.put16(0x2e, 0x0001); // subsystem: virtio device type 1 (net)
        c.bytes[0x34] = CAP_COMMON as u8;
        // Interrupt pin 0: no INTx. The device interrupts through MSI-X only, and the
        // client then does not wire a line the device would never raise.
        c.bytes[0x3d] = 0;
        c.writable_bits(0x04, &COMMAND_WRITABLE.to_le_bytes());
        c.writable_bits(0x3c, &[0xff]); // interrupt line: scratch for the OS
        for bar in 0..6u32 {
            let size = bar_size(bar);
            if size > 0 {
                let mask = !(size as u32 - 1);
                // Memory, 32-bit, non-prefetchable: the flag bits are 0.
                c.writable_bits(0x10 + 4 * bar as usize, &mask.to_le_bytes());
            }
        }
        c.virtio_cap(
            CAP_COMMON,
            CAP_NOTIFY,
            cfg_type::COMMON,
            COMMON_OFFSET,
            COMMON_LEN,
            16,
        );
        c.virtio_cap(
            CAP_NOTIFY,
            CAP_ISR,
            cfg_type::NOTIFY,
            NOTIFY_OFFSET,
            NOTIFY_LEN,
            20,
        );
        c.put32(CAP_NOTIFY + 16, NOTIFY_MULTIPLIER);
        c.virtio_cap(CAP_ISR, CAP_DEVICE, cfg_type::ISR, ISR_OFFSET, ISR_LEN, 16);
        c.virtio_cap(
            CAP_DEVICE,
            CAP_MSIX_AT,
            cfg_type::DEVICE,
            DEVICE_OFFSET,
            DEVICE_LEN,
            16,
        );
        c.bytes[CAP_MSIX_AT] = CAP_MSIX;
        c.bytes[CAP_MSIX_AT + 1] = 0;
        c.put16(CAP_MSIX_AT + 2, MSIX_VECTORS - 1);
        c.put32(CAP_MSIX_AT + 4, MSIX_TABLE_OFFSET as u32 | MSIX_BAR);
        c.put32(CAP_MSIX_AT + 8, MSIX_PBA_OFFSET as u32 | MSIX_BAR);
        c.writable_bits(CAP_MSIX_AT + 2, &MSIX_CONTROL_WRITABLE.to_le_bytes());
        c.initial = c.bytes;
        c
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put24(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 3].copy_from_slice(&v.to_le_bytes()[..3]);
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn writable_bits(&mut self, at: usize, mask: &[u8]) {
        self.writable[at..at + mask.len()].copy_from_slice(mask);
    }

    fn virtio_cap(&mut self, at: usize, next: usize, kind: u8, offset: u64, len: u64, cap_len: u8) {
        self.bytes[at] = CAP_VENDOR;
        self.bytes[at + 1] = next as u8;
        self.bytes[at + 2] = cap_len;
        self.bytes[at + 3] = kind;
        self.bytes[at + 4] = VIRTIO_BAR as u8;
        self.put32(at + 8, offset as u32);
        self.put32(at + 12, len as u32);
    }

    /// Reads `out.len()` bytes at `offset`; `None` past the end of the space.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Option<()> {
        let start = usize::try_from(offset).ok()?;
        let src = self.bytes.get(start..start.checked_add(out.len())?)?;
        out.copy_from_slice(src);
        Some(())
    }

    /// Writes `data` at `offset`: only writable bits change. `None` past the end.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<()> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(data.len()).filter(|&e| e <= LEN)?;
        for (i, &b) in (start..end).zip(data) {
            let m = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !m) | (b & m);
        }
        Some(())
    }

    /// True when the driver enabled MSI-X.
    pub fn msix_enabled(&self) -> bool {
        u16::from_le_bytes([self.bytes[CAP_MSIX_AT + 2], self.bytes[CAP_MSIX_AT + 3]]) & MSIX_ENABLE
            != 0
    }

    /// Back to the state after power-on (DEVICE_RESET).
    pub fn reset(&mut self) {
        self.bytes = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(c: &PciConfig, at: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(at, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn identifies_as_modern_virtio_net() {
        let c = PciConfig::new();
        assert_eq!(read32(&c, 0), 0x1041_1af4);
        assert_eq!(read32(&c, 8) >> 8, 0x02_00_00);
        assert_eq!(read32(&c, 8) & 0xff, 1);
        assert_eq!(read32(&c, 0x2c), 0x0001_1af4);
    }

    #[test]
    fn bars_size_like_pci_and_read_only_bits_hold() {
        let mut c = PciConfig::new();
        c.write(0x10, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(read32(&c, 0x10), !(VIRTIO_BAR_SIZE as u32 - 1));
        c.write(0x18, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(read32(&c, 0x18), !(MSIX_BAR_SIZE as u32 - 1));
        c.write(0x14, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(read32(&c, 0x14), 0, "unused BAR");
        c.write(0x10, &0xfebf_4000u32.to_le_bytes()).unwrap();
        assert_eq!(read32(&c, 0x10), 0xfebf_4000);
        c.write(0, &[0; 4]).unwrap();
        assert_eq!(read32(&c, 0), 0x1041_1af4, "ids are read-only");
        c.write(4, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(read32(&c, 4) & 0xffff, 0x0547);
        assert!(c.write(255, &[0, 0]).is_none());
        assert!(c.read(u64::MAX, &mut [0]).is_none());
        c.reset();
        assert_eq!(read32(&c, 0x10), 0);
    }

    #[test]
    fn capability_chain_names_every_virtio_structure_and_msix() {
        let c = PciConfig::new();
        let mut at = c.bytes[0x34] as usize;
        let mut seen = Vec::new();
        while at != 0 {
            let id = c.bytes[at];
            if id == CAP_VENDOR {
                let off = read32(&c, at as u64 + 8) as u64;
                let len = read32(&c, at as u64 + 12) as u64;
                assert!(off + len <= VIRTIO_BAR_SIZE);
                seen.push(c.bytes[at + 3]);
            } else {
                assert_eq!(id, CAP_MSIX);
                seen.push(0x11);
            }
            at = c.bytes[at + 1] as usize;
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 0x11]);
        assert_eq!(read32(&c, CAP_NOTIFY as u64 + 16), NOTIFY_MULTIPLIER);
    }

    #[test]
    fn msix_enable_is_writable() {
        let mut c = PciConfig::new();
        assert!(!c.msix_enabled());
        c.write(CAP_MSIX_AT as u64 + 2, &0xffffu16.to_le_bytes())
            .unwrap();
        assert!(c.msix_enabled());
        let mut ctl = [0u8; 2];
        c.read(CAP_MSIX_AT as u64 + 2, &mut ctl).unwrap();
        assert_eq!(
            u16::from_le_bytes(ctl),
            0xc000 | (MSIX_VECTORS - 1),
            "table size stays"
        );
    }
}
