//! Typed views of the headers the data plane reads and writes: the virtio-net header
//! (virtio 1.2 §5.1.6) and the Ethernet header, in the smoltcp style (field ranges in a
//! `field` module, `parse` from bytes, `emit` into bytes). Offload headers (IP, TCP, UDP)
//! join them here.
#![forbid(unsafe_code)]

use std::ops::Range;

/// A MAC address.
pub type MacAddr = [u8; 6];

/// Byte ranges of the virtio-net header fields.
mod vnet_field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    pub const NUM_BUFFERS: Range<usize> = 10..12;
}

/// `struct virtio_net_hdr` (12 bytes with VERSION_1 or MRG_RXBUF, else the first 10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers before the payload.
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers (RX chains) the packet spans, with MRG_RXBUF.
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Length of the long form (VERSION_1 or MRG_RXBUF).
    pub const LEN: usize = 12;
    /// Length of the legacy form without `num_buffers`.
    pub const LEGACY_LEN: usize = 10;

    /// A header that asks for nothing, for a packet spanning `num_buffers` buffers.
    pub fn plain(num_buffers: u16) -> Self {
        VirtioNetHdr {
            num_buffers,
            ..VirtioNetHdr::default()
        }
    }

    /// Decodes the long form.
    pub fn parse(b: &[u8; Self::LEN]) -> Self {
        let u16_at = |r: Range<usize>| u16::from_le_bytes([b[r.start], b[r.start + 1]]);
        VirtioNetHdr {
            flags: b[vnet_field::FLAGS],
            gso_type: b[vnet_field::GSO_TYPE],
            hdr_len: u16_at(vnet_field::HDR_LEN),
            gso_size: u16_at(vnet_field::GSO_SIZE),
            csum_start: u16_at(vnet_field::CSUM_START),
            csum_offset: u16_at(vnet_field::CSUM_OFFSET),
            num_buffers: u16_at(vnet_field::NUM_BUFFERS),
        }
    }

    /// Encodes the long form; a legacy header is its first 10 bytes.
    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[vnet_field::FLAGS] = self.flags;
        b[vnet_field::GSO_TYPE] = self.gso_type;
        b[vnet_field::HDR_LEN].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[vnet_field::GSO_SIZE].copy_from_slice(&self.gso_size.to_le_bytes());
        b[vnet_field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        b[vnet_field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[vnet_field::NUM_BUFFERS].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Byte ranges of the Ethernet header fields.
mod eth_field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// An Ethernet II header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EthernetHeader {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType (or the 802.1Q TPID).
    pub ethertype: u16,
}

impl EthernetHeader {
    /// Header length.
    pub const LEN: usize = 14;

    /// Decodes a header.
    pub fn parse(b: &[u8; Self::LEN]) -> Self {
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&b[eth_field::DST]);
        src.copy_from_slice(&b[eth_field::SRC]);
        EthernetHeader {
            dst,
            src,
            ethertype: u16::from_be_bytes([
                b[eth_field::ETHERTYPE.start],
                b[eth_field::ETHERTYPE.start + 1],
            ]),
        }
    }

    /// Encodes the header.
    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[eth_field::DST].copy_from_slice(&self.dst);
        b[eth_field::SRC].copy_from_slice(&self.src);
        b[eth_field::ETHERTYPE].copy_from_slice(&self.ethertype.to_be_bytes());
        b
    }
}

/// EtherType of RARP (RFC 903).
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// The broadcast MAC.
pub const BROADCAST: MacAddr = [0xff; 6];

/// Byte ranges of the RARP packet fields behind the Ethernet header (RFC 903 uses ARP's
/// layout, RFC 826, for Ethernet and IPv4).
mod rarp_field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 14..16;
    pub const PTYPE: Range<usize> = 16..18;
    pub const HLEN: usize = 18;
    pub const PLEN: usize = 19;
    pub const OPER: Range<usize> = 20..22;
    pub const SHA: Range<usize> = 22..28;
    pub const SPA: Range<usize> = 28..32;
    pub const THA: Range<usize> = 32..38;
    pub const TPA: Range<usize> = 38..42;
}

/// A RARP announcement of a MAC: the frame a hypervisor broadcasts after moving a guest so
/// that switches learn where the MAC now is (QEMU's `announce_self` sends this form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RarpAnnouncement {
    /// The MAC announced: Ethernet source, sender and target hardware address.
    pub mac: MacAddr,
}

impl RarpAnnouncement {
    /// Frame length: 42 bytes of headers padded to Ethernet's 60-byte minimum (the FCS is
    /// not part of a virtio-net frame).
    pub const LEN: usize = 60;
    /// ARP hardware type Ethernet.
    const HTYPE_ETHERNET: u16 = 1;
    /// ARP protocol type IPv4.
    const PTYPE_IPV4: u16 = 0x0800;
    /// RFC 903 opcode 3, "request reverse".
    pub const OPER_REQUEST_REVERSE: u16 = 3;

    /// Encodes the frame: broadcast from `mac`, EtherType RARP, a reverse request whose
    /// sender and target hardware addresses are `mac` and whose protocol addresses are
    /// 0.0.0.0 (the guest's IP is not known to the switch).
    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let eth = EthernetHeader {
            dst: BROADCAST,
            src: self.mac,
            ethertype: ETHERTYPE_RARP,
        };
        b[..EthernetHeader::LEN].copy_from_slice(&eth.emit());
        b[rarp_field::HTYPE].copy_from_slice(&Self::HTYPE_ETHERNET.to_be_bytes());
        b[rarp_field::PTYPE].copy_from_slice(&Self::PTYPE_IPV4.to_be_bytes());
        b[rarp_field::HLEN] = 6;
        b[rarp_field::PLEN] = 4;
        b[rarp_field::OPER].copy_from_slice(&Self::OPER_REQUEST_REVERSE.to_be_bytes());
        b[rarp_field::SHA].copy_from_slice(&self.mac);
        b[rarp_field::SPA].fill(0);
        b[rarp_field::THA].copy_from_slice(&self.mac);
        b[rarp_field::TPA].fill(0);
        b
    }
}

/// `02:00:00:00:00:01` form, for logs and messages.
pub fn mac_string(mac: MacAddr) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_announcement_is_an_rfc_903_reverse_request_from_the_mac() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = RarpAnnouncement { mac }.emit();
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        // htype 1, ptype 0x0800, hlen 6, plen 4, op 3.
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac);
        assert!(f[38..].iter().all(|&b| b == 0));
        assert_eq!(mac_string(mac), "52:54:00:12:34:56");
    }

    #[test]
    fn virtio_net_header_round_trips_in_wire_order() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 3,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 2,
        };
        let b = h.emit();
        assert_eq!(&b[..4], &[1, 3, 0x02, 0x01]);
        assert_eq!(&b[10..], &[2, 0]);
        assert_eq!(VirtioNetHdr::parse(&b), h);
        assert_eq!(
            VirtioNetHdr::plain(1).emit(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn ethernet_header_round_trips() {
        let h = EthernetHeader {
            dst: [0xff; 6],
            src: [2, 0, 0, 0, 0, 1],
            ethertype: 0x0800,
        };
        let b = h.emit();
        assert_eq!(&b[12..], &[0x08, 0x00]);
        assert_eq!(EthernetHeader::parse(&b), h);
    }
}
