//! Replays of the handshakes real front-ends send, in the orders measured in
//! `/work/shared/PEERS.md` (QEMU 7.2 with a Linux 6.1 guest; DPDK 22.11 virtio_user).
//!
//! Each replay takes the [`Frontend`], the memory regions and the rings (two per queue pair:
//! RX = even, TX = odd), plus options, and returns what was negotiated. The feature sets the
//! "driver" acks are approximations of the real ones (see the constants); tests can
//! override them through the options.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};

use crate::error::{Error, Result};
use crate::frontend::Frontend;
use crate::memory::SharedMemory;
use crate::vring::Ring;

/// Virtio feature bits used by the replays.
pub mod bits {
    /// VIRTIO_NET_F_CSUM.
    pub const NET_F_CSUM: u64 = 1 << 0;
    /// VIRTIO_NET_F_GUEST_CSUM.
    pub const NET_F_GUEST_CSUM: u64 = 1 << 1;
    /// VIRTIO_NET_F_MTU.
    pub const NET_F_MTU: u64 = 1 << 3;
    /// VIRTIO_NET_F_MAC.
    pub const NET_F_MAC: u64 = 1 << 5;
    /// VIRTIO_NET_F_GUEST_TSO4.
    pub const NET_F_GUEST_TSO4: u64 = 1 << 7;
    /// VIRTIO_NET_F_GUEST_TSO6.
    pub const NET_F_GUEST_TSO6: u64 = 1 << 8;
    /// VIRTIO_NET_F_GUEST_ECN.
    pub const NET_F_GUEST_ECN: u64 = 1 << 9;
    /// VIRTIO_NET_F_GUEST_UFO.
    pub const NET_F_GUEST_UFO: u64 = 1 << 10;
    /// VIRTIO_NET_F_HOST_TSO4.
    pub const NET_F_HOST_TSO4: u64 = 1 << 11;
    /// VIRTIO_NET_F_HOST_TSO6.
    pub const NET_F_HOST_TSO6: u64 = 1 << 12;
    /// VIRTIO_NET_F_HOST_ECN.
    pub const NET_F_HOST_ECN: u64 = 1 << 13;
    /// VIRTIO_NET_F_HOST_UFO.
    pub const NET_F_HOST_UFO: u64 = 1 << 14;
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub const NET_F_MRG_RXBUF: u64 = 1 << 15;
    /// VIRTIO_NET_F_STATUS.
    pub const NET_F_STATUS: u64 = 1 << 16;
    /// VIRTIO_NET_F_CTRL_VQ.
    pub const NET_F_CTRL_VQ: u64 = 1 << 17;
    /// VIRTIO_NET_F_GUEST_ANNOUNCE.
    pub const NET_F_GUEST_ANNOUNCE: u64 = 1 << 21;
    /// VIRTIO_NET_F_MQ.
    pub const NET_F_MQ: u64 = 1 << 22;
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const RING_F_INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const RING_F_EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// VIRTIO_F_VERSION_1.
    pub const F_VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_RING_PACKED.
    pub const F_RING_PACKED: u64 = 1 << 34;
    /// VIRTIO_F_IN_ORDER.
    pub const F_IN_ORDER: u64 = 1 << 35;

    /// Device status ACKNOWLEDGE.
    pub const STATUS_ACKNOWLEDGE: u8 = 1;
    /// Device status DRIVER.
    pub const STATUS_DRIVER: u8 = 2;
    /// Device status DRIVER_OK.
    pub const STATUS_DRIVER_OK: u8 = 4;
    /// Device status FEATURES_OK.
    pub const STATUS_FEATURES_OK: u8 = 8;
}

use bits::*;

/// The virtio-net bits QEMU 7.2 forwards to a vhost-user backend from what a Linux 6.1
/// guest acks (QEMU's `user_feature_bits` ∩ Linux's driver features). QEMU keeps MAC,
/// STATUS and CTRL_* to itself. RING_PACKED is left out because the replays lay out split
/// rings (a real guest would take it if offered; `Ring::layout_as` lays out packed ones).
pub const LINUX_GUEST_FEATURES: u64 = F_VERSION_1
    | NET_F_CSUM
    | NET_F_GUEST_CSUM
    | NET_F_GUEST_TSO4
    | NET_F_GUEST_TSO6
    | NET_F_GUEST_ECN
    | NET_F_GUEST_UFO
    | NET_F_HOST_TSO4
    | NET_F_HOST_TSO6
    | NET_F_HOST_ECN
    | NET_F_HOST_UFO
    | NET_F_MRG_RXBUF
    | NET_F_MTU
    | NET_F_GUEST_ANNOUNCE
    | NET_F_MQ
    | RING_F_INDIRECT_DESC
    | RING_F_EVENT_IDX;

/// Features DPDK 22.11's virtio PMD over virtio_user acks by default (`queues=1`, no
/// control queue, split ring, no offloads requested).
pub const DPDK_DRIVER_FEATURES: u64 =
    F_VERSION_1 | NET_F_MAC | NET_F_STATUS | NET_F_MRG_RXBUF | NET_F_MTU | F_IN_ORDER;

/// Protocol features QEMU 7.2's vhost-user-net acks when offered (its mask minus CONFIG,
/// which QEMU drops for devices without a config notifier, such as net).
pub const QEMU_PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::LOG_SHMFD.bits()
    | VhostUserProtocolFeatures::RARP.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits()
    | VhostUserProtocolFeatures::MTU.bits()
    | VhostUserProtocolFeatures::BACKEND_REQ.bits()
    | VhostUserProtocolFeatures::CROSS_ENDIAN.bits()
    | VhostUserProtocolFeatures::CRYPTO_SESSION.bits()
    | VhostUserProtocolFeatures::PAGEFAULT.bits()
    | VhostUserProtocolFeatures::BACKEND_SEND_FD.bits()
    | VhostUserProtocolFeatures::HOST_NOTIFIER.bits()
    | VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits()
    | VhostUserProtocolFeatures::RESET_DEVICE.bits()
    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS.bits()
    | VhostUserProtocolFeatures::STATUS.bits();

/// Protocol features DPDK 22.11's virtio_user acks when offered.
pub const DPDK_PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits()
    | VhostUserProtocolFeatures::STATUS.bits();

/// Options of the QEMU 7.2 replay.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// Protocol features QEMU is willing to ack (∩ offered is sent).
    pub protocol_features: u64,
    /// Virtio features the guest acks (∩ offered, plus bit 30 if offered, is sent).
    pub guest_features: u64,
    /// How many rounds of SET_VRING_ENABLE 1 on every ring before the rings are configured
    /// (the guest probing makes QEMU send several).
    pub early_enable_rounds: u32,
    /// `host_mtu=N` on the device: QEMU offers its guest VIRTIO_NET_F_MTU (whatever the
    /// back-end offers) and, once the guest acked it, sends NET_SET_MTU N (NEED_REPLY if
    /// REPLY_ACK) at DRIVER_OK, before SET_FEATURES, if NET_MTU was negotiated.
    pub host_mtu: Option<u16>,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            protocol_features: QEMU_PROTOCOL_FEATURES,
            guest_features: LINUX_GUEST_FEATURES,
            early_enable_rounds: 1,
            host_mtu: None,
        }
    }
}

/// Options of the DPDK 22.11 replay.
#[derive(Debug, Clone)]
pub struct DpdkOptions {
    /// Protocol features virtio_user is willing to ack (∩ offered is sent).
    pub protocol_features: u64,
    /// Virtio features the PMD acks (∩ offered, plus bit 30 if offered, is sent).
    pub driver_features: u64,
}

impl Default for DpdkOptions {
    fn default() -> Self {
        DpdkOptions {
            protocol_features: DPDK_PROTOCOL_FEATURES,
            driver_features: DPDK_DRIVER_FEATURES,
        }
    }
}

/// What a replay negotiated and saw.
#[derive(Debug, Default)]
pub struct Negotiated {
    /// Features GET_FEATURES offered (the last answer).
    pub offered_features: u64,
    /// Features sent with SET_FEATURES.
    pub acked_features: u64,
    /// Protocol features GET_PROTOCOL_FEATURES offered (0 if not asked).
    pub offered_protocol_features: u64,
    /// Protocol features sent with SET_PROTOCOL_FEATURES (0 if not sent).
    pub protocol_features: u64,
    /// GET_QUEUE_NUM's answer, if asked.
    pub queue_num: Option<u64>,
    /// GET_MAX_MEM_SLOTS's answer, if asked.
    pub max_mem_slots: Option<u64>,
    /// Every GET_STATUS answer, in order.
    pub status_seen: Vec<u64>,
    /// Number of rings set up.
    pub num_rings: u32,
    /// Our end of the backend request channel, if SET_BACKEND_REQ_FD was sent.
    pub backend_channel: Option<UnixStream>,
}

impl Negotiated {
    /// Whether protocol feature `f` was acked.
    pub fn has_protocol(&self, f: VhostUserProtocolFeatures) -> bool {
        self.protocol_features & f.bits() == f.bits()
    }

    /// Whether REPLY_ACK was negotiated (replays then set NEED_REPLY where the real
    /// front-end does).
    pub fn reply_ack(&self) -> bool {
        self.has_protocol(VhostUserProtocolFeatures::REPLY_ACK)
    }
}

fn check_inputs(memory: &[&SharedMemory], rings: &[Ring]) -> Result<()> {
    if memory.is_empty() {
        return Err(Error::InvalidArgument("no memory region".into()));
    }
    if rings.is_empty() {
        return Err(Error::InvalidArgument("no ring".into()));
    }
    Ok(())
}

fn table(memory: &[&SharedMemory]) -> Vec<(VhostUserMemoryRegion, RawFd)> {
    memory.iter().map(|m| (m.region(), m.fd())).collect()
}

fn acked_features(offered: u64, wanted: u64) -> u64 {
    (offered & wanted) | (offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
}

/// QEMU's `vhost_user_add_status`: GET_STATUS, then SET_STATUS(status | `add`) unless all of
/// `add` is already set.
fn qemu_add_status(fe: &mut Frontend, n: &mut Negotiated, add: u8) -> Result<()> {
    let s = fe.get_status()?;
    n.status_seen.push(s);
    if s & u64::from(add) == u64::from(add) {
        return Ok(());
    }
    // The status byte is the low byte; QEMU keeps the backend's bits.
    fe.set_status((s as u8) | add, false)
}

/// Replays QEMU 7.2 (Linux 6.1 guest) from connection to DRIVER_OK:
///
/// GET_FEATURES; if bit 30 offered: GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES (before
/// any SET_FEATURES); GET_QUEUE_NUM if MQ; GET_MAX_MEM_SLOTS if CONFIGURE_MEM_SLOTS;
/// SET_BACKEND_REQ_FD (NEED_REPLY if REPLY_ACK) if BACKEND_REQ; SET_OWNER; GET_FEATURES;
/// per ring SET_VRING_CALL, SET_VRING_ERR; `early_enable_rounds` × SET_VRING_ENABLE 1 per
/// ring (if bit 30 offered); NET_SET_MTU (NEED_REPLY if REPLY_ACK) with `host_mtu` if
/// NET_MTU; SET_FEATURES; if STATUS: GET_STATUS, SET_STATUS(FEATURES_OK);
/// SET_MEM_TABLE (or ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS), NEED_REPLY if
/// REPLY_ACK; per ring NUM, BASE, ADDR (log = used ring GPA), KICK, CALL; if STATUS:
/// GET_STATUS, SET_STATUS(ACK|DRIVER|DRIVER_OK | previous).
pub fn qemu_7_2(
    fe: &mut Frontend,
    memory: &[&SharedMemory],
    rings: &[Ring],
    opts: &QemuOptions,
) -> Result<Negotiated> {
    check_inputs(memory, rings)?;
    let num_rings = rings.len() as u32;
    let mut n = Negotiated {
        num_rings,
        ..Negotiated::default()
    };
    n.offered_features = fe.get_features()?;
    let has_bit30 = n.offered_features & PROTOCOL_FEATURES != 0;
    if has_bit30 {
        n.offered_protocol_features = fe.get_protocol_features()?;
        n.protocol_features = n.offered_protocol_features & opts.protocol_features;
        fe.set_protocol_features(n.protocol_features, false)?;
    }
    let reply_ack = n.reply_ack();
    if n.has_protocol(VhostUserProtocolFeatures::MQ) {
        let q = fe.get_queue_num()?;
        n.queue_num = Some(q);
        if q < u64::from(num_rings.div_ceil(2)) {
            return Err(Error::Unsupported(format!(
                "backend has {q} queue pairs, {} needed",
                num_rings.div_ceil(2)
            )));
        }
    } else if num_rings > 2 {
        return Err(Error::Unsupported("several queue pairs without MQ".into()));
    }
    let mem_slots = n.has_protocol(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
    if mem_slots {
        let slots = fe.get_max_mem_slots()?;
        n.max_mem_slots = Some(slots);
        if (memory.len() as u64) > slots {
            return Err(Error::Unsupported(format!(
                "{} regions, backend has {slots} slots",
                memory.len()
            )));
        }
    }
    if n.has_protocol(VhostUserProtocolFeatures::BACKEND_REQ) {
        let (ours, theirs) = UnixStream::pair().map_err(Error::Io)?;
        fe.set_backend_req_fd(theirs.as_raw_fd(), reply_ack)?;
        n.backend_channel = Some(ours);
    }
    fe.set_owner(false)?;
    n.offered_features = fe.get_features()?;
    for (i, r) in rings.iter().enumerate() {
        fe.set_vring_call(i as u32, Some(r.call_fd()), false)?;
        fe.set_vring_err(i as u32, Some(r.err_fd()), false)?;
    }
    if has_bit30 {
        for _ in 0..opts.early_enable_rounds {
            for i in 0..num_rings {
                fe.set_vring_enable(i, true, false)?;
            }
        }
    }
    // The guest sets DRIVER_OK: QEMU starts the vhost device, telling the back-end the MTU
    // first (the guest acked the F_MTU QEMU offers it with host_mtu).
    if let Some(mtu) = opts.host_mtu {
        if n.has_protocol(VhostUserProtocolFeatures::MTU) {
            fe.net_set_mtu(u64::from(mtu), reply_ack)?;
        }
    }
    n.acked_features = acked_features(n.offered_features, opts.guest_features);
    fe.set_features(n.acked_features, false)?;
    let status = n.has_protocol(VhostUserProtocolFeatures::STATUS);
    if status {
        qemu_add_status(fe, &mut n, STATUS_FEATURES_OK)?;
    }
    if mem_slots {
        for m in memory {
            fe.add_mem_reg(&m.region(), m.fd(), reply_ack)?;
        }
    } else {
        fe.set_mem_table(&table(memory), reply_ack)?;
    }
    for (i, r) in rings.iter().enumerate() {
        fe.setup_vring(
            i as u32,
            &r.vring,
            r.base,
            r.vring.used_gpa(),
            Some(r.kick_fd()),
            Some(r.call_fd()),
            false,
        )?;
    }
    if status {
        qemu_add_status(
            fe,
            &mut n,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        )?;
    }
    Ok(n)
}

/// Replays QEMU 7.2's `announce_self` (also run after a migration) for a guest with MAC
/// `mac`: one SEND_RARP per round (no NEED_REPLY) if RARP was negotiated and the guest
/// did not ack GUEST_ANNOUNCE to the back-end. Returns the number of SEND_RARP sent.
pub fn qemu_7_2_announce(
    fe: &mut Frontend,
    n: &Negotiated,
    mac: [u8; 6],
    rounds: u32,
) -> Result<u32> {
    if !n.has_protocol(VhostUserProtocolFeatures::RARP)
        || n.acked_features & NET_F_GUEST_ANNOUNCE != 0
    {
        return Ok(0);
    }
    for _ in 0..rounds {
        fe.send_rarp(mac, false)?;
    }
    Ok(rounds)
}

/// Replays QEMU 7.2 stopping the device: SET_STATUS 0 (if STATUS was negotiated), then
/// GET_VRING_BASE per ring. Returns the bases.
pub fn qemu_7_2_stop(fe: &mut Frontend, n: &Negotiated) -> Result<Vec<u32>> {
    if n.has_protocol(VhostUserProtocolFeatures::STATUS) {
        fe.set_status(0, false)?;
    }
    (0..n.num_rings).map(|i| fe.get_vring_base(i)).collect()
}

/// Replays DPDK 22.11 virtio_user (client mode) to DRIVER_OK:
///
/// SET_OWNER; GET_FEATURES; if bit 30 offered: GET_PROTOCOL_FEATURES,
/// SET_PROTOCOL_FEATURES; SET_VRING_CALL per ring; SET_FEATURES; if STATUS:
/// SET_STATUS(ACK|DRIVER|FEATURES_OK) (NEED_REPLY if REPLY_ACK), GET_STATUS × 2 (fails
/// with [`Error::FeaturesRejected`] when FEATURES_OK is cleared); SET_MEM_TABLE (NEED_REPLY
/// if REPLY_ACK); per ring NUM, BASE, ADDR, KICK; SET_VRING_ENABLE 1 per ring; if STATUS:
/// SET_STATUS(ACK|DRIVER|FEATURES_OK|DRIVER_OK).
pub fn dpdk_22_11(
    fe: &mut Frontend,
    memory: &[&SharedMemory],
    rings: &[Ring],
    opts: &DpdkOptions,
) -> Result<Negotiated> {
    check_inputs(memory, rings)?;
    let num_rings = rings.len() as u32;
    let mut n = Negotiated {
        num_rings,
        ..Negotiated::default()
    };
    fe.set_owner(false)?;
    n.offered_features = fe.get_features()?;
    if n.offered_features & PROTOCOL_FEATURES != 0 {
        n.offered_protocol_features = fe.get_protocol_features()?;
        n.protocol_features = n.offered_protocol_features & opts.protocol_features;
        fe.set_protocol_features(n.protocol_features, false)?;
    }
    if num_rings > 2 && !n.has_protocol(VhostUserProtocolFeatures::MQ) {
        return Err(Error::Unsupported("several queue pairs without MQ".into()));
    }
    let reply_ack = n.reply_ack();
    for (i, r) in rings.iter().enumerate() {
        fe.set_vring_call(i as u32, Some(r.call_fd()), false)?;
    }
    n.acked_features = acked_features(n.offered_features, opts.driver_features);
    fe.set_features(n.acked_features, false)?;
    let status = n.has_protocol(VhostUserProtocolFeatures::STATUS);
    let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    if status {
        fe.set_status(features_ok, reply_ack)?;
        for _ in 0..2 {
            let s = fe.get_status()?;
            n.status_seen.push(s);
            if s & u64::from(STATUS_FEATURES_OK) == 0 {
                return Err(Error::FeaturesRejected { status: s });
            }
        }
    }
    fe.set_mem_table(&table(memory), reply_ack)?;
    for (i, r) in rings.iter().enumerate() {
        let a = &r.vring;
        fe.setup_vring(i as u32, a, r.base, 0, Some(r.kick_fd()), None, false)?;
    }
    for i in 0..num_rings {
        fe.set_vring_enable(i, true, false)?;
    }
    if status {
        fe.set_status(features_ok | STATUS_DRIVER_OK, reply_ack)?;
    }
    Ok(n)
}

/// Replays DPDK 22.11 stopping the port: SET_VRING_ENABLE 0 per ring, then GET_VRING_BASE
/// per ring. Returns the bases.
pub fn dpdk_22_11_stop(fe: &mut Frontend, n: &Negotiated) -> Result<Vec<u32>> {
    for i in 0..n.num_rings {
        fe.set_vring_enable(i, false, false)?;
    }
    (0..n.num_rings).map(|i| fe.get_vring_base(i)).collect()
}

/// Replays one DPDK memory-growth cycle (hugepage heap grown after DRIVER_OK):
/// SET_VRING_ENABLE 0 per ring, SET_MEM_TABLE with `memory` (NEED_REPLY if REPLY_ACK),
/// SET_VRING_ENABLE 1 per ring.
pub fn dpdk_memory_growth(
    fe: &mut Frontend,
    n: &Negotiated,
    memory: &[&SharedMemory],
) -> Result<()> {
    if memory.is_empty() {
        return Err(Error::InvalidArgument("no memory region".into()));
    }
    for i in 0..n.num_rings {
        fe.set_vring_enable(i, false, false)?;
    }
    fe.set_mem_table(&table(memory), n.reply_ack())?;
    for i in 0..n.num_rings {
        fe.set_vring_enable(i, true, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::HugePages;
    use crate::payload;
    use crate::wire::testpeer::{scripted_backend, Seen};
    use std::thread::JoinHandle;
    use std::time::Duration;
    use vhost::vhost_user::message::FrontendReq as R;

    fn fake_backend(
        features: u64,
        protocol: u64,
        status_mask: u64,
    ) -> (UnixStream, JoinHandle<Vec<Seen>>) {
        scripted_backend(features, protocol, status_mask, 100)
    }

    fn setup() -> (SharedMemory, Vec<Ring>) {
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let rings = Ring::layout(&mem, 0, 256, 2).unwrap();
        (mem, rings)
    }

    fn codes(seen: &[Seen]) -> Vec<u32> {
        seen.iter().map(|s| s.req).collect()
    }

    const OFFERED: u64 = F_VERSION_1 | NET_F_MRG_RXBUF | NET_F_MAC | NET_F_CSUM | PROTOCOL_FEATURES;

    #[test]
    fn qemu_order_matches_peers_md() {
        let protocol = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::STATUS
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIG;
        let (sock, backend) = fake_backend(OFFERED, protocol.bits(), u64::MAX);
        let mut fe = Frontend::from_stream(sock).unwrap();
        fe.set_timeout(Duration::from_secs(5));
        let (mem, rings) = setup();
        let n = qemu_7_2(&mut fe, &[&mem], &rings, &QemuOptions::default()).unwrap();
        let bases = qemu_7_2_stop(&mut fe, &n).unwrap();
        assert_eq!(bases, vec![100, 101]);
        drop(fe);
        let seen = backend.join().unwrap();

        let expected = [
            R::GET_FEATURES,
            R::GET_PROTOCOL_FEATURES,
            R::SET_PROTOCOL_FEATURES,
            R::GET_QUEUE_NUM,
            R::SET_BACKEND_REQ_FD,
            R::SET_OWNER,
            R::GET_FEATURES,
            R::SET_VRING_CALL,
            R::SET_VRING_ERR,
            R::SET_VRING_CALL,
            R::SET_VRING_ERR,
            R::SET_VRING_ENABLE,
            R::SET_VRING_ENABLE,
            R::SET_FEATURES,
            R::GET_STATUS,
            R::SET_STATUS,
            R::SET_MEM_TABLE,
            R::SET_VRING_NUM,
            R::SET_VRING_BASE,
            R::SET_VRING_ADDR,
            R::SET_VRING_KICK,
            R::SET_VRING_CALL,
            R::SET_VRING_NUM,
            R::SET_VRING_BASE,
            R::SET_VRING_ADDR,
            R::SET_VRING_KICK,
            R::SET_VRING_CALL,
            R::GET_STATUS,
            R::SET_STATUS,
            R::SET_STATUS,
            R::GET_VRING_BASE,
            R::GET_VRING_BASE,
        ]
        .map(u32::from);
        assert_eq!(codes(&seen), expected);

        // CONFIG is not acked by QEMU for net; the rest is.
        let acked = (protocol - VhostUserProtocolFeatures::CONFIG).bits();
        assert_eq!(n.protocol_features, acked);
        assert_eq!(payload::read_u64(&seen[2].payload, 0), Some(acked));
        // SET_FEATURES: offered ∩ guest, bit 30 kept, MAC dropped (QEMU keeps it).
        let want = F_VERSION_1 | NET_F_MRG_RXBUF | NET_F_CSUM | PROTOCOL_FEATURES;
        assert_eq!(n.acked_features, want);
        assert_eq!(payload::read_u64(&seen[13].payload, 0), Some(want));
        // NEED_REPLY exactly on SET_BACKEND_REQ_FD and SET_MEM_TABLE.
        let nr: Vec<u32> = seen
            .iter()
            .filter(|s| s.need_reply)
            .map(|s| s.req)
            .collect();
        assert_eq!(nr, [R::SET_BACKEND_REQ_FD, R::SET_MEM_TABLE].map(u32::from));
        assert_eq!((seen[4].nfds, seen[16].nfds, seen[16].size), (1, 1, 40));
        // Status: FEATURES_OK alone first, then ACK|DRIVER|DRIVER_OK added, then 0.
        assert_eq!(payload::read_u64(&seen[15].payload, 0), Some(8));
        assert_eq!(payload::read_u64(&seen[28].payload, 0), Some(8 | 1 | 2 | 4));
        assert_eq!(payload::read_u64(&seen[29].payload, 0), Some(0));
        assert_eq!(n.status_seen, vec![0, 8]);
        // SET_VRING_ADDR carries user addresses and the used ring GPA as log address.
        let a = &seen[19].payload;
        assert_eq!(
            payload::read_u64(a, 8),
            Some(rings[0].vring.desc_user_addr())
        );
        assert_eq!(payload::read_u64(a, 32), Some(rings[0].vring.used_gpa()));
        assert!(n.backend_channel.is_some());
        assert_eq!(n.queue_num, Some(1));
    }

    #[test]
    fn qemu_with_mem_slots_uses_add_mem_reg_and_no_status_without_it() {
        let protocol = VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let (sock, backend) = fake_backend(OFFERED, protocol.bits(), u64::MAX);
        let mut fe = Frontend::from_stream(sock).unwrap();
        let (mem, rings) = setup();
        let mem2 = SharedMemory::new(1 << 16, HugePages::Never)
            .unwrap()
            .with_guest_phys_addr(1 << 30);
        let n = qemu_7_2(&mut fe, &[&mem, &mem2], &rings, &QemuOptions::default()).unwrap();
        drop(fe);
        let seen = backend.join().unwrap();
        let c = codes(&seen);
        assert_eq!(
            &c[..4],
            &[
                R::GET_FEATURES,
                R::GET_PROTOCOL_FEATURES,
                R::SET_PROTOCOL_FEATURES,
                R::GET_MAX_MEM_SLOTS
            ]
            .map(u32::from)
        );
        let adds: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.req == u32::from(R::ADD_MEM_REG))
            .collect();
        assert_eq!(adds.len(), 2);
        assert!(adds
            .iter()
            .all(|s| s.size == 40 && s.nfds == 1 && !s.need_reply));
        assert!(!c.contains(&u32::from(R::SET_MEM_TABLE)));
        assert!(!c.contains(&u32::from(R::GET_STATUS)));
        assert!(!c.contains(&u32::from(R::GET_QUEUE_NUM)));
        assert_eq!(n.max_mem_slots, Some(8));
    }

    #[test]
    fn qemu_without_bit_30_skips_protocol_features_and_enables() {
        let (sock, backend) = fake_backend(F_VERSION_1, 0, u64::MAX);
        let mut fe = Frontend::from_stream(sock).unwrap();
        let (mem, rings) = setup();
        let n = qemu_7_2(&mut fe, &[&mem], &rings, &QemuOptions::default()).unwrap();
        drop(fe);
        let c = codes(&backend.join().unwrap());
        assert_eq!(
            &c[..3],
            &[R::GET_FEATURES, R::SET_OWNER, R::GET_FEATURES].map(u32::from)
        );
        assert!(!c.contains(&u32::from(R::SET_VRING_ENABLE)));
        assert_eq!(n.acked_features, F_VERSION_1);
        assert_eq!(n.protocol_features, 0);
    }

    #[test]
    fn dpdk_order_matches_peers_md() {
        let protocol = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::STATUS
            | VhostUserProtocolFeatures::BACKEND_REQ;
        let (sock, backend) = fake_backend(OFFERED, protocol.bits(), u64::MAX);
        let mut fe = Frontend::from_stream(sock).unwrap();
        let (mem, rings) = setup();
        let n = dpdk_22_11(&mut fe, &[&mem], &rings, &DpdkOptions::default()).unwrap();
        let bigger = SharedMemory::new(2 << 20, HugePages::Never).unwrap();
        dpdk_memory_growth(&mut fe, &n, &[&bigger]).unwrap();
        let bases = dpdk_22_11_stop(&mut fe, &n).unwrap();
        assert_eq!(bases, vec![100, 101]);
        drop(fe);
        let seen = backend.join().unwrap();
        let expected = [
            R::SET_OWNER,
            R::GET_FEATURES,
            R::GET_PROTOCOL_FEATURES,
            R::SET_PROTOCOL_FEATURES,
            R::SET_VRING_CALL,
            R::SET_VRING_CALL,
            R::SET_FEATURES,
            R::SET_STATUS,
            R::GET_STATUS,
            R::GET_STATUS,
            R::SET_MEM_TABLE,
            R::SET_VRING_NUM,
            R::SET_VRING_BASE,
            R::SET_VRING_ADDR,
            R::SET_VRING_KICK,
            R::SET_VRING_NUM,
            R::SET_VRING_BASE,
            R::SET_VRING_ADDR,
            R::SET_VRING_KICK,
            R::SET_VRING_ENABLE,
            R::SET_VRING_ENABLE,
            R::SET_STATUS,
            // memory growth
            R::SET_VRING_ENABLE,
            R::SET_VRING_ENABLE,
            R::SET_MEM_TABLE,
            R::SET_VRING_ENABLE,
            R::SET_VRING_ENABLE,
            // stop
            R::SET_VRING_ENABLE,
            R::SET_VRING_ENABLE,
            R::GET_VRING_BASE,
            R::GET_VRING_BASE,
        ]
        .map(u32::from);
        assert_eq!(codes(&seen), expected);
        let acked = (VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::STATUS)
            .bits();
        assert_eq!(payload::read_u64(&seen[3].payload, 0), Some(acked));
        let want = F_VERSION_1 | NET_F_MRG_RXBUF | NET_F_MAC | PROTOCOL_FEATURES;
        assert_eq!(payload::read_u64(&seen[6].payload, 0), Some(want));
        assert_eq!(payload::read_u64(&seen[7].payload, 0), Some(0x0b));
        assert_eq!(payload::read_u64(&seen[21].payload, 0), Some(0x0f));
        let nr: Vec<u32> = seen
            .iter()
            .filter(|s| s.need_reply)
            .map(|s| s.req)
            .collect();
        assert_eq!(
            nr,
            [
                R::SET_STATUS,
                R::SET_MEM_TABLE,
                R::SET_STATUS,
                R::SET_MEM_TABLE
            ]
            .map(u32::from)
        );
        // The grown table describes the bigger region.
        assert_eq!(payload::read_u64(&seen[24].payload, 16), Some(2 << 20));
        // Enables: 1,1 then 0,0 / 1,1 then 0,0.
        let en: Vec<u32> = seen
            .iter()
            .filter(|s| s.req == u32::from(R::SET_VRING_ENABLE))
            .map(|s| payload::read_u32(&s.payload, 4).unwrap())
            .collect();
        assert_eq!(en, vec![1, 1, 0, 0, 1, 1, 0, 0]);
        assert_eq!(n.status_seen, vec![0x0b, 0x0b]);
        // KICK carries the fd, CALL was sent early with fds too.
        assert_eq!((seen[4].nfds, seen[14].nfds, seen[18].nfds), (1, 1, 1));
    }

    #[test]
    fn dpdk_fails_when_features_ok_is_refused() {
        // The backend clears FEATURES_OK from what it reports.
        let protocol = VhostUserProtocolFeatures::STATUS;
        let (sock, backend) =
            fake_backend(OFFERED, protocol.bits(), !u64::from(STATUS_FEATURES_OK));
        let mut fe = Frontend::from_stream(sock).unwrap();
        let (mem, rings) = setup();
        let e = dpdk_22_11(&mut fe, &[&mem], &rings, &DpdkOptions::default()).unwrap_err();
        assert!(matches!(e, Error::FeaturesRejected { status: 3 }), "{e:?}");
        drop(fe);
        let seen = backend.join().unwrap();
        assert_eq!(seen.last().map(|s| s.req), Some(u32::from(R::GET_STATUS)));
        assert!(
            !seen.iter().any(|s| s.need_reply),
            "no REPLY_ACK, no NEED_REPLY"
        );
    }

    #[test]
    fn replays_refuse_empty_inputs() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut fe = Frontend::from_stream(a).unwrap();
        let (mem, rings) = setup();
        assert!(matches!(
            qemu_7_2(&mut fe, &[], &rings, &QemuOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            dpdk_22_11(&mut fe, &[&mem], &[], &DpdkOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
