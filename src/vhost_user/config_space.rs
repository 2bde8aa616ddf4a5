//! The virtio-net device configuration space (virtio 1.2 §5.1.4) served by GET_CONFIG.

use super::device::DeviceConfig;

/// `VIRTIO_NET_S_LINK_UP`.
const LINK_UP: u16 = 1;
/// Bytes of `struct virtio_net_config` up to and including `supported_hash_types`.
pub const CONFIG_LEN: usize = 24;
/// Offset of `mtu` in `struct virtio_net_config` (after mac, status, max_virtqueue_pairs).
pub const MTU_OFFSET: usize = 10;

/// Encodes the config space. With VERSION_1 negotiated (or, before SET_FEATURES, offered)
/// fields are little-endian; a legacy driver reads them in guest-native order, which on
/// the x86-64 and aarch64 hosts we support is little-endian as well.
pub fn encode(cfg: &DeviceConfig, version_1: bool) -> [u8; CONFIG_LEN] {
    let u16_bytes = |v: u16| {
        if version_1 {
            v.to_le_bytes()
        } else {
            v.to_ne_bytes()
        }
    };
    let mut space = [0u8; CONFIG_LEN];
    space[0..6].copy_from_slice(&cfg.mac);
    space[6..8].copy_from_slice(&u16_bytes(LINK_UP));
    space[8..10].copy_from_slice(&u16_bytes(cfg.queue_pairs));
    // `mtu` exists only with VIRTIO_NET_F_MTU, which is offered exactly when it is set.
    if let Some(mtu) = cfg.mtu {
        space[MTU_OFFSET..MTU_OFFSET + 2].copy_from_slice(&u16_bytes(mtu));
    }
    space
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_status_and_queue_pairs_in_place() {
        let cfg = DeviceConfig {
            port: "p".into(),
            mac: [2, 0, 0, 0, 0, 9],
            queue_pairs: 3,
            mtu: None,
            offloads: true,
            limits: Default::default(),
            dataplane: None,
        };
        let s = encode(&cfg, true);
        assert_eq!(&s[0..6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&s[6..8], &[1, 0]);
        assert_eq!(&s[8..10], &[3, 0]);
        assert!(s[10..].iter().all(|&b| b == 0));
        let jumbo = DeviceConfig {
            mtu: Some(9000),
            offloads: true,
            ..cfg
        };
        let s = encode(&jumbo, true);
        assert_eq!(&s[MTU_OFFSET..MTU_OFFSET + 2], &9000u16.to_le_bytes());
        assert!(s[12..].iter().all(|&b| b == 0));
    }
}
