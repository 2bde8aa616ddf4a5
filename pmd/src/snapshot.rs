//! Immutable per-port state handed from the control plane to the data plane.
//!
//! A snapshot is rebuilt whenever the control plane changes something a poller reads
//! (features at ring start, memory table, ring start/stop/enable, the MTU) and replaces the
//! previous one whole. Each ring runtime holds the `Arc` of the memory map its pointers
//! point into, so memory is unmapped only after the last poller has let go of the last
//! snapshot.

#![forbid(unsafe_code)]

use crate::queue::RingRuntime;

/// Bytes a frame may carry on top of the MTU: the Ethernet header (14) and one 802.1Q tag
/// (4). The tag is allowed whether or not the frame has one, as Linux's bridge does
/// (`is_skb_forwardable`): a guest with MTU 1500 on a VLAN trunk receives 1518-byte frames.
pub const MTU_OVERHEAD: u64 = 14 + 4;

/// Everything a poller needs about one port's device.
#[derive(Debug)]
pub struct PortSnapshot {
    /// Virtio features the rings run with.
    pub features: u64,
    /// Started rings by index (even: guest RX, odd: guest TX); `None` if not started.
    pub rings: Vec<Option<RingRuntime>>,
    /// The MTU of the port's guest (NET_SET_MTU, else the port's `mtu` setting); `None`:
    /// no MTU, frames up to the switch's maximum frame length are delivered.
    pub mtu: Option<u16>,
}

impl PortSnapshot {
    /// Longest frame (bytes after the virtio-net header) this port's guest is given: its
    /// MTU plus [`MTU_OVERHEAD`]; no limit without an MTU. Longer frames are dropped at
    /// this destination as `over_mtu`.
    #[inline]
    pub fn frame_limit(&self) -> u64 {
        self.mtu
            .map_or(u64::MAX, |mtu| u64::from(mtu) + MTU_OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_limit_is_the_mtu_plus_ethernet_header_and_one_tag() {
        let port = |mtu| PortSnapshot {
            features: 0,
            rings: Vec::new(),
            mtu,
        };
        assert_eq!(port(None).frame_limit(), u64::MAX);
        assert_eq!(port(Some(1500)).frame_limit(), 1518);
        assert_eq!(port(Some(u16::MAX)).frame_limit(), 65_553);
    }
}
