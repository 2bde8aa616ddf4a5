//! Virtio-net and vhost-user feature bits: what we offer and which combinations are valid.

use vhost::vhost_user::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};

/// Virtio feature bit numbers used by the net device (virtio 1.2 §5.1.3, §6).
pub mod bit {
    /// Device handles packets with partial checksum.
    pub const CSUM: u32 = 0;
    /// Driver handles packets with partial checksum.
    pub const GUEST_CSUM: u32 = 1;
    /// Control channel offloads reconfiguration.
    pub const CTRL_GUEST_OFFLOADS: u32 = 2;
    /// Device reports the MTU.
    pub const MTU: u32 = 3;
    /// Device has a MAC address in config space.
    pub const MAC: u32 = 5;
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: u32 = 7;
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: u32 = 8;
    /// Driver can receive TSO with ECN.
    pub const GUEST_ECN: u32 = 9;
    /// Driver can receive UFO.
    pub const GUEST_UFO: u32 = 10;
    /// Device can receive TSOv4.
    pub const HOST_TSO4: u32 = 11;
    /// Device can receive TSOv6.
    pub const HOST_TSO6: u32 = 12;
    /// Device can receive TSO with ECN.
    pub const HOST_ECN: u32 = 13;
    /// Device can receive UFO.
    pub const HOST_UFO: u32 = 14;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u32 = 15;
    /// Link status in config space.
    pub const STATUS: u32 = 16;
    /// Control virtqueue.
    pub const CTRL_VQ: u32 = 17;
    /// Control channel RX mode.
    pub const CTRL_RX: u32 = 18;
    /// Control channel VLAN filtering.
    pub const CTRL_VLAN: u32 = 19;
    /// Driver can send gratuitous packets.
    pub const GUEST_ANNOUNCE: u32 = 21;
    /// Multiqueue with automatic steering.
    pub const MQ: u32 = 22;
    /// MAC address set through the control channel.
    pub const CTRL_MAC_ADDR: u32 = 23;
    /// Indirect descriptors.
    pub const INDIRECT_DESC: u32 = 28;
    /// used_event / avail_event notification suppression.
    pub const EVENT_IDX: u32 = 29;
    /// vhost-user: protocol features (the reserved virtio bit 30).
    pub const PROTOCOL_FEATURES: u32 = 30;
    /// Virtio 1.0 compliance (little-endian, 12-byte net header).
    pub const VERSION_1: u32 = 32;
    /// Packed virtqueue layout.
    pub const RING_PACKED: u32 = 34;
    /// Buffers are used in order.
    pub const IN_ORDER: u32 = 35;
    /// Notification coalescing (control channel).
    pub const NOTF_COAL: u32 = 53;
    /// Driver can receive USOv4.
    pub const GUEST_USO4: u32 = 54;
    /// Driver can receive USOv6.
    pub const GUEST_USO6: u32 = 55;
    /// Device can receive USO.
    pub const HOST_USO: u32 = 56;
    /// Receive-side scaling (control channel).
    pub const RSS: u32 = 60;
    /// Extended RSC info in the net header.
    pub const RSC_EXT: u32 = 61;
}

/// `1 << b` as a u64.
pub const fn mask(b: u32) -> u64 {
    1u64 << b
}

/// The virtio features every port offers; a port with an MTU setting adds MTU
/// ([`offered_features`]). Kept stable across restarts: a front-end that cached them
/// (reconnect, migration) must find the same set, and a port's settings do not change
/// while the switch runs.
pub const OFFERED_FEATURES: u64 = mask(bit::VERSION_1)
    | mask(bit::MRG_RXBUF)
    | mask(bit::MAC)
    | mask(bit::STATUS)
    | mask(bit::EVENT_IDX)
    | mask(bit::INDIRECT_DESC)
    | mask(bit::RING_PACKED)
    | mask(bit::IN_ORDER)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The checksum and TSO offloads a port offers unless its `offloads` setting is off: the
/// guest may send partial checksums and TSO frames (CSUM, HOST_TSO4/6, HOST_ECN) and take
/// them (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN). The switch passes them through between
/// guests that negotiated them and completes or segments in software for the others; UFO
/// and USO are not offered.
pub const OFFLOAD_FEATURES: u64 = mask(bit::CSUM)
    | mask(bit::GUEST_CSUM)
    | mask(bit::HOST_TSO4)
    | mask(bit::HOST_TSO6)
    | mask(bit::HOST_ECN)
    | mask(bit::GUEST_TSO4)
    | mask(bit::GUEST_TSO6)
    | mask(bit::GUEST_ECN);

/// The virtio features a port offers: [`OFFERED_FEATURES`], plus VIRTIO_NET_F_MTU when
/// the port has an `mtu` setting (the config space then carries it), plus
/// [`OFFLOAD_FEATURES`] when its `offloads` setting is on.
pub const fn offered_features(mtu: Option<u16>, offloads: bool) -> u64 {
    let base = match mtu {
        Some(_) => OFFERED_FEATURES | mask(bit::MTU),
        None => OFFERED_FEATURES,
    };
    if offloads {
        base | OFFLOAD_FEATURES
    } else {
        base
    }
}

/// The vhost-user protocol features every port offers: only the ones really handled.
/// NET_MTU does not depend on the port's `mtu` setting: NET_SET_MTU tells the switch the
/// MTU the front-end gave its guest (QEMU's `host_mtu`), whatever the switch offered.
pub const OFFERED_PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits()
    | VhostUserProtocolFeatures::CONFIG.bits()
    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS.bits()
    | VhostUserProtocolFeatures::STATUS.bits()
    | VhostUserProtocolFeatures::MTU.bits()
    | VhostUserProtocolFeatures::RARP.bits();

/// One requirement of virtio 1.2 §5.1.3.1: `feature` needs one of `needs_any`.
struct Requirement {
    feature: u32,
    needs_any: &'static [u32],
}

const REQUIREMENTS: &[Requirement] = &[
    // A packed ring has no legacy form (virtio 1.2 §2.8 is a virtio 1.1 layout; the
    // legacy interface's feature word ends at bit 31).
    Requirement {
        feature: bit::RING_PACKED,
        needs_any: &[bit::VERSION_1],
    },
    Requirement {
        feature: bit::GUEST_TSO4,
        needs_any: &[bit::GUEST_CSUM],
    },
    Requirement {
        feature: bit::GUEST_TSO6,
        needs_any: &[bit::GUEST_CSUM],
    },
    Requirement {
        feature: bit::GUEST_ECN,
        needs_any: &[bit::GUEST_TSO4, bit::GUEST_TSO6],
    },
    Requirement {
        feature: bit::GUEST_UFO,
        needs_any: &[bit::GUEST_CSUM],
    },
    Requirement {
        feature: bit::GUEST_USO4,
        needs_any: &[bit::GUEST_CSUM],
    },
    Requirement {
        feature: bit::GUEST_USO6,
        needs_any: &[bit::GUEST_CSUM],
    },
    Requirement {
        feature: bit::HOST_TSO4,
        needs_any: &[bit::CSUM],
    },
    Requirement {
        feature: bit::HOST_TSO6,
        needs_any: &[bit::CSUM],
    },
    Requirement {
        feature: bit::HOST_ECN,
        needs_any: &[bit::HOST_TSO4, bit::HOST_TSO6],
    },
    Requirement {
        feature: bit::HOST_UFO,
        needs_any: &[bit::CSUM],
    },
    Requirement {
        feature: bit::HOST_USO,
        needs_any: &[bit::CSUM],
    },
    Requirement {
        feature: bit::CTRL_RX,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::CTRL_VLAN,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::GUEST_ANNOUNCE,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::MQ,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::CTRL_MAC_ADDR,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::CTRL_GUEST_OFFLOADS,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::NOTF_COAL,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::RSS,
        needs_any: &[bit::CTRL_VQ],
    },
    Requirement {
        feature: bit::RSC_EXT,
        needs_any: &[bit::HOST_TSO4, bit::HOST_TSO6],
    },
];

/// A feature acked without one of the features it requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingDependency {
    /// The feature bit acked.
    pub feature: u32,
    /// The bits of which at least one must also be acked.
    pub needs_any: &'static [u32],
}

impl std::fmt::Display for MissingDependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "feature bit {} requires one of bits {:?}",
            self.feature, self.needs_any
        )
    }
}

/// Checks a driver's feature set against virtio 1.2 §5.1.3.1.
pub fn check_dependencies(features: u64) -> Result<(), MissingDependency> {
    for req in REQUIREMENTS {
        let has = features & mask(req.feature) != 0;
        let satisfied = req.needs_any.iter().any(|&b| features & mask(b) != 0);
        if has && !satisfied {
            return Err(MissingDependency {
                feature: req.feature,
                needs_any: req.needs_any,
            });
        }
    }
    Ok(())
}

/// Size of the virtio-net header the features imply (virtio 1.2 §5.1.6).
pub fn net_header_len(features: u64) -> usize {
    if features & (mask(bit::VERSION_1) | mask(bit::MRG_RXBUF)) != 0 {
        12
    } else {
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_set_is_self_consistent() {
        assert_eq!(check_dependencies(OFFERED_FEATURES), Ok(()));
        assert_ne!(OFFERED_FEATURES & mask(bit::PROTOCOL_FEATURES), 0);
        assert_ne!(OFFERED_FEATURES & mask(bit::RING_PACKED), 0);
        assert_ne!(OFFERED_FEATURES & mask(bit::IN_ORDER), 0);
        assert_eq!(OFFERED_FEATURES & mask(bit::MTU), 0);
        assert_eq!(offered_features(None, false), OFFERED_FEATURES);
        let with_mtu = offered_features(Some(1500), false);
        assert_eq!(with_mtu, OFFERED_FEATURES | mask(bit::MTU));
        assert_eq!(check_dependencies(with_mtu), Ok(()));
        let all = offered_features(Some(1500), true);
        assert_eq!(all, with_mtu | OFFLOAD_FEATURES);
        assert_eq!(check_dependencies(all), Ok(()));
        assert_eq!(OFFLOAD_FEATURES & OFFERED_FEATURES, 0);
    }

    #[test]
    fn every_requirement_is_enforced() {
        for req in REQUIREMENTS {
            let alone = mask(req.feature);
            assert!(
                check_dependencies(alone).is_err(),
                "bit {} alone",
                req.feature
            );
            for &need in req.needs_any {
                let with = alone | mask(need);
                // The needed bit may itself have requirements; satisfy them too.
                let full = with | mask(bit::CSUM) | mask(bit::GUEST_CSUM) | mask(bit::CTRL_VQ);
                assert!(
                    check_dependencies(full).is_ok(),
                    "bit {} with {}",
                    req.feature,
                    need
                );
            }
        }
    }

    #[test]
    fn guest_tso4_needs_guest_csum() {
        let err = check_dependencies(mask(bit::GUEST_TSO4)).unwrap_err();
        assert_eq!(err.feature, bit::GUEST_TSO4);
        assert!(check_dependencies(mask(bit::GUEST_TSO4) | mask(bit::GUEST_CSUM)).is_ok());
    }

    #[test]
    fn header_length_follows_version_1_and_mrg_rxbuf() {
        assert_eq!(net_header_len(0), 10);
        assert_eq!(net_header_len(mask(bit::VERSION_1)), 12);
        assert_eq!(net_header_len(mask(bit::MRG_RXBUF)), 12);
    }
}
