//! Where the virtio-pci structures live: the BARs, their offsets and sizes, and the MSI-X
//! vectors. One place, so the config-space capabilities, the region handlers and the
//! region info the client maps agree by construction.
//!
//! BAR0 (16 KiB, 32-bit memory) holds the four virtio structures, one page each, so that
//! the notify page can be handed to the client as a sparse-mmap area on its own; BAR2
//! (4 KiB) holds the MSI-X table and PBA.

/// The BAR of the virtio structures.
pub const VIRTIO_BAR: u32 = 0;
/// Its size.
pub const VIRTIO_BAR_SIZE: u64 = 0x4000;
/// Common configuration (virtio 1.2 §4.1.4.3).
pub const COMMON_OFFSET: u64 = 0x0;
/// Bytes of the common configuration structure served (up to `queue_device`).
pub const COMMON_LEN: u64 = 0x38;
/// ISR status.
pub const ISR_OFFSET: u64 = 0x1000;
/// Bytes of the ISR structure.
pub const ISR_LEN: u64 = 1;
/// Device-specific (virtio-net) configuration.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Bytes of the device configuration.
pub const DEVICE_LEN: u64 = crate::vhost_user::config_space::CONFIG_LEN as u64;
/// Notification area: the page the client maps, so doorbells become memory writes.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes of the notification area.
pub const NOTIFY_LEN: u64 = 0x1000;
/// Bytes between two queues' doorbells (`notify_off_multiplier`).
pub const NOTIFY_MULTIPLIER: u32 = 4;

/// The BAR of the MSI-X table and PBA.
pub const MSIX_BAR: u32 = 2;
/// Its size.
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// Offset of the MSI-X table in its BAR.
pub const MSIX_TABLE_OFFSET: u64 = 0;
/// Offset of the pending-bit array in its BAR.
pub const MSIX_PBA_OFFSET: u64 = 0x800;

/// PCI config space served (conventional, 256 bytes).
pub const CONFIG_SPACE_LEN: u64 = 256;
/// VFIO region index of the config space.
pub const CONFIG_REGION: u32 = 7;
/// VFIO PCI regions: six BARs, ROM, config, VGA.
pub const NUM_REGIONS: u32 = 9;

/// Virtqueues of a virtio-net device with one queue pair and no control queue.
pub const NUM_QUEUES: u16 = 2;
/// MSI-X vectors: one per queue and one for configuration changes.
pub const MSIX_VECTORS: u16 = NUM_QUEUES + 1;
/// Largest queue the device offers (`queue_size` after reset).
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Size of BAR `index` (0 when unused).
pub fn bar_size(index: u32) -> u64 {
    match index {
        VIRTIO_BAR => VIRTIO_BAR_SIZE,
        MSIX_BAR => MSIX_BAR_SIZE,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_fit_their_bar_and_the_notify_page_stands_alone() {
        for (off, len) in [
            (COMMON_OFFSET, COMMON_LEN),
            (ISR_OFFSET, ISR_LEN),
            (DEVICE_OFFSET, DEVICE_LEN),
            (NOTIFY_OFFSET, NOTIFY_LEN),
        ] {
            assert!(off + len <= VIRTIO_BAR_SIZE);
        }
        assert_eq!(NOTIFY_OFFSET % 4096, 0);
        assert_eq!(NOTIFY_LEN % 4096, 0);
        assert!(u64::from(NUM_QUEUES) * u64::from(NOTIFY_MULTIPLIER) <= NOTIFY_LEN);
        assert!(MSIX_TABLE_OFFSET + 16 * u64::from(MSIX_VECTORS) <= MSIX_PBA_OFFSET);
        assert!(bar_size(VIRTIO_BAR).is_power_of_two() && bar_size(MSIX_BAR).is_power_of_two());
    }
}
