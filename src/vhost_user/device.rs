//! The vhost-user-net device of one port connection: a state machine over front-end
//! requests that enforces DESIGN §4.
//!
//! [`NetDevice::handle`] takes one framed request and returns either the reply payload
//! the request defines, or the [`Violation`] it commits. The session layer turns a
//! violation into a NACK (REPLY_ACK) or a closed connection; the device itself never
//! changes state for a refused request.

use std::fs::File;
use std::sync::Arc;

use pmd::dataplane::Dataplane;
use pmd::memory::GuestMemoryMap;
use pmd::queue::{RingFeatures, RingRuntime};
use pmd::snapshot::PortSnapshot;
use pmd::vring::Layout;
use vhost::vhost_user::message::{FrontendReq, VhostUserConfig, VhostUserVringState};
use vhost::vhost_user::VhostUserProtocolFeatures as Proto;
use vm_memory::ByteValued;

use super::config_space;
use super::features::{self, bit, mask, OFFERED_PROTOCOL_FEATURES};
use super::rings::VringState;
use super::violation::Violation;
use super::wire::Request;

/// virtio status bits (virtio 1.2 §2.1).
pub mod status {
    /// The driver found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The driver knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device needs a reset.
    pub const NEEDS_RESET: u8 = 64;
    /// The driver gave up.
    pub const FAILED: u8 = 128;
}

/// Per-port settings the device is built from.
#[derive(Clone)]
pub struct DeviceConfig {
    /// Port name, for logs.
    pub port: String,
    /// MAC address served in config space.
    pub mac: [u8; 6],
    /// Queue pairs (rings = 2 x pairs).
    pub queue_pairs: u16,
    /// The port's `mtu` setting: offered as VIRTIO_NET_F_MTU with `mtu` in the config
    /// space, the upper bound of NET_SET_MTU, and the MTU enforced on frames delivered to
    /// the port until NET_SET_MTU says otherwise. `None`: not offered, no bound.
    pub mtu: Option<u16>,
    /// The port's `offloads` setting: offer the checksum and TSO offloads
    /// ([`features::OFFLOAD_FEATURES`]).
    pub offloads: bool,
    /// What one front-end may make the switch hold.
    pub limits: Limits,
    /// Where snapshots go: the data plane and this port's index in it.
    pub dataplane: Option<(Arc<Dataplane>, usize)>,
}

/// The resources one front-end connection may make the switch take, each checked before
/// the resource is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory regions allowed (GET_MAX_MEM_SLOTS; SET_MEM_TABLE is capped at 8 by the spec).
    pub max_mem_slots: u32,
    /// Bytes of guest memory the switch maps for a front-end at once: the page-rounded
    /// windows of its regions, which are populated, so this bounds the memory a front-end
    /// can make the switch map.
    pub max_memory: u64,
    /// Descriptors one message may carry; beyond it the connection is closed.
    pub max_fds_per_message: usize,
    /// Descriptors the switch holds for one connection at once (ring eventfds, the
    /// back-end channel, a message in flight); beyond it the connection is closed.
    pub max_fds_per_connection: usize,
    /// Refuse memory the front-end can still shrink (anything but a memfd sealed with
    /// F_SEAL_SHRINK). Off by default: DPDK's memfds and hugetlbfs files are unsealed, and
    /// the SIGBUS fence contains a shrink anyway.
    pub require_sealed_memory: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_mem_slots: 32,
            max_memory: 64 << 30,
            max_fds_per_message: super::wire::DEFAULT_MAX_FDS_PER_MESSAGE,
            max_fds_per_connection: crate::config::DEFAULT_MAX_FDS_PER_CONNECTION,
            require_sealed_memory: false,
        }
    }
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("port", &self.port)
            .field("mac", &self.mac)
            .field("queue_pairs", &self.queue_pairs)
            .field("mtu", &self.mtu)
            .field("offloads", &self.offloads)
            .field("limits", &self.limits)
            .field("dataplane_port", &self.dataplane.as_ref().map(|(_, p)| *p))
            .finish()
    }
}

/// What a handled request answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing (a REPLY_ACK `0` is added by the session when the front-end asked).
    None,
    /// The payload of the reply this request defines.
    Payload(Vec<u8>),
}

/// The state of one front-end connection's device.
#[derive(Debug)]
pub struct NetDevice {
    pub(super) cfg: DeviceConfig,
    owner: bool,
    protocol: u64,
    acked: Option<u64>,
    /// Features written by SET_FEATURES that break §5.1.3.1; FEATURES_OK will be refused.
    invalid_acked: Option<u64>,
    features_ok_refused: bool,
    status: u8,
    pub(super) memory: Arc<GuestMemoryMap>,
    pub(super) rings: Vec<VringState>,
    snapshot: Option<Arc<PortSnapshot>>,
    /// The MTU the front-end gave its guest (NET_SET_MTU).
    net_mtu: Option<u16>,
}

/// Reads a fixed-size payload, checking its length exactly.
pub(super) fn body<T: ByteValued + Default>(req: &Request) -> Result<T, Violation> {
    let mut value = T::default();
    let want = std::mem::size_of::<T>();
    if req.payload.len() != want {
        return Err(Violation::PayloadSize {
            expected: want,
            got: req.payload.len(),
        });
    }
    value.as_mut_slice().copy_from_slice(&req.payload);
    Ok(value)
}

/// Refuses descriptors on a request that carries none.
pub(super) fn no_fds(req: &Request) -> Result<(), Violation> {
    if !req.fds.is_empty() {
        return Err(Violation::FdCount {
            expected: "0",
            got: req.fds.len(),
        });
    }
    Ok(())
}

fn u64_body(req: &Request) -> Result<u64, Violation> {
    Ok(body::<vhost::vhost_user::message::VhostUserU64>(req)?.value)
}

fn u64_reply(value: u64) -> Reply {
    Reply::Payload(value.to_ne_bytes().to_vec())
}

impl NetDevice {
    /// A device in its initial state (a new connection).
    pub fn new(cfg: DeviceConfig) -> Self {
        let rings = (0..u32::from(cfg.queue_pairs) * 2)
            .map(|_| VringState::default())
            .collect();
        NetDevice {
            cfg,
            owner: false,
            protocol: 0,
            acked: None,
            invalid_acked: None,
            features_ok_refused: false,
            status: 0,
            memory: Arc::new(GuestMemoryMap::default()),
            rings,
            snapshot: None,
            net_mtu: None,
        }
    }

    /// The virtio features this port offers (its `mtu` setting adds VIRTIO_NET_F_MTU, its
    /// `offloads` setting the offloads).
    fn offered(&self) -> u64 {
        features::offered_features(self.cfg.mtu, self.cfg.offloads)
    }

    /// The MTU enforced on frames delivered to this port: NET_SET_MTU's, else the port's
    /// setting; `None`: no MTU.
    pub fn mtu(&self) -> Option<u16> {
        self.net_mtu.or(self.cfg.mtu)
    }

    /// Protocol features negotiated by SET_PROTOCOL_FEATURES.
    pub fn protocol_features(&self) -> u64 {
        self.protocol
    }

    /// True when REPLY_ACK was negotiated: every NEED_REPLY request gets one u64 reply.
    pub fn reply_ack(&self) -> bool {
        self.protocol & Proto::REPLY_ACK.bits() != 0
    }

    /// Features acked by the last accepted SET_FEATURES.
    pub fn acked_features(&self) -> Option<u64> {
        self.acked
    }

    /// The virtio status byte as GET_STATUS reports it.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The rings' states.
    pub fn rings(&self) -> &[VringState] {
        &self.rings
    }

    /// The current memory map.
    pub fn memory(&self) -> &Arc<GuestMemoryMap> {
        &self.memory
    }

    /// The snapshot the data plane reads: started rings with translated addresses.
    pub fn snapshot(&self) -> Option<&Arc<PortSnapshot>> {
        self.snapshot.as_ref()
    }

    /// Descriptors this connection makes the switch hold (ring eventfds; region files are
    /// closed once mapped).
    pub fn held_fds(&self) -> usize {
        self.rings
            .iter()
            .map(|r| {
                usize::from(r.kick.is_some())
                    + usize::from(r.call.is_some())
                    + usize::from(r.err.is_some())
            })
            .sum()
    }

    /// Faults repaired in this front-end's memory since it was mapped: non-zero means the
    /// front-end shrank a file under its mapping and the port must be failed.
    pub fn memory_faults(&self) -> u64 {
        self.memory.faults()
    }

    /// Handles one request. On `Err` no state has changed.
    pub fn handle(&mut self, req: &mut Request) -> Result<Reply, Violation> {
        use FrontendReq as R;
        let (held, incoming) = (self.held_fds(), req.fds.len());
        if incoming > 0 && held + incoming > self.cfg.limits.max_fds_per_connection {
            return Err(Violation::FdLimit {
                held,
                incoming,
                limit: self.cfg.limits.max_fds_per_connection,
            });
        }
        match req.code {
            R::GET_FEATURES => {
                no_fds(req)?;
                expect_empty(req)?;
                Ok(u64_reply(self.offered()))
            }
            R::SET_FEATURES => self.set_features(req),
            R::GET_PROTOCOL_FEATURES => {
                no_fds(req)?;
                expect_empty(req)?;
                Ok(u64_reply(OFFERED_PROTOCOL_FEATURES))
            }
            R::SET_PROTOCOL_FEATURES => self.set_protocol_features(req),
            R::SET_OWNER => {
                no_fds(req)?;
                expect_empty(req)?;
                if self.owner {
                    return Err(Violation::AlreadyOwner);
                }
                self.owner = true;
                Ok(Reply::None)
            }
            R::GET_QUEUE_NUM => {
                self.need_protocol(Proto::MQ, "MQ")?;
                no_fds(req)?;
                expect_empty(req)?;
                Ok(u64_reply(u64::from(self.cfg.queue_pairs)))
            }
            R::SET_MEM_TABLE => self.set_mem_table(req),
            R::GET_MAX_MEM_SLOTS => {
                self.need_protocol(Proto::CONFIGURE_MEM_SLOTS, "CONFIGURE_MEM_SLOTS")?;
                no_fds(req)?;
                expect_empty(req)?;
                Ok(u64_reply(u64::from(self.cfg.limits.max_mem_slots)))
            }
            R::ADD_MEM_REG => self.add_mem_reg(req),
            R::REM_MEM_REG => self.rem_mem_reg(req),
            R::SET_VRING_NUM => self.set_vring_num(req),
            R::SET_VRING_ADDR => self.set_vring_addr(req),
            R::SET_VRING_BASE => self.set_vring_base(req),
            R::GET_VRING_BASE => self.get_vring_base(req),
            R::SET_VRING_KICK => self.set_vring_kick(req),
            R::SET_VRING_CALL => self.set_vring_call(req),
            R::SET_VRING_ERR => self.set_vring_err(req),
            R::SET_VRING_ENABLE => self.set_vring_enable(req),
            R::GET_CONFIG => self.get_config(req),
            R::SET_CONFIG => {
                self.need_protocol(Proto::CONFIG, "CONFIG")?;
                Err(Violation::Config(
                    "virtio-net config space is read-only".into(),
                ))
            }
            R::SET_STATUS => self.set_status(req),
            R::GET_STATUS => {
                self.need_protocol(Proto::STATUS, "STATUS")?;
                no_fds(req)?;
                expect_empty(req)?;
                Ok(u64_reply(u64::from(self.status)))
            }
            R::SET_LOG_BASE | R::SET_LOG_FD => Err(Violation::ProtocolFeatureMissing("LOG_SHMFD")),
            R::SEND_RARP => self.send_rarp(req),
            R::NET_SET_MTU => self.net_set_mtu(req),
            R::SET_BACKEND_REQ_FD => Err(Violation::ProtocolFeatureMissing("BACKEND_REQ")),
            R::IOTLB_MSG => Err(Violation::Unsupported(
                "IOTLB_MSG (ACCESS_PLATFORM not offered)",
            )),
            R::SET_VRING_ENDIAN => Err(Violation::ProtocolFeatureMissing("CROSS_ENDIAN")),
            R::CREATE_CRYPTO_SESSION | R::CLOSE_CRYPTO_SESSION => {
                Err(Violation::ProtocolFeatureMissing("CRYPTO_SESSION"))
            }
            R::POSTCOPY_ADVISE | R::POSTCOPY_LISTEN | R::POSTCOPY_END => {
                Err(Violation::ProtocolFeatureMissing("PAGEFAULT"))
            }
            R::GET_INFLIGHT_FD | R::SET_INFLIGHT_FD => {
                Err(Violation::ProtocolFeatureMissing("INFLIGHT_SHMFD"))
            }
            R::GPU_SET_SOCKET => Err(Violation::Unsupported("GPU_SET_SOCKET (not a GPU device)")),
            R::RESET_OWNER => Err(Violation::Unsupported("RESET_OWNER (deprecated)")),
            R::RESET_DEVICE => Err(Violation::ProtocolFeatureMissing("RESET_DEVICE")),
            R::VRING_KICK => Err(Violation::ProtocolFeatureMissing("INBAND_NOTIFICATIONS")),
            R::GET_SHARED_OBJECT => Err(Violation::ProtocolFeatureMissing("SHARED_OBJECT")),
            R::SET_DEVICE_STATE_FD | R::CHECK_DEVICE_STATE => {
                Err(Violation::ProtocolFeatureMissing("DEVICE_STATE"))
            }
            R::GET_SHMEM_CONFIG => Err(Violation::ProtocolFeatureMissing("SHMEM")),
        }
    }

    /// True for requests whose protocol-defined reply the front-end waits for, whatever
    /// REPLY_ACK says: refusing one of them cannot be answered with a NACK.
    pub fn solicits_reply(code: FrontendReq) -> bool {
        use FrontendReq as R;
        matches!(
            code,
            R::GET_FEATURES
                | R::GET_PROTOCOL_FEATURES
                | R::GET_QUEUE_NUM
                | R::GET_VRING_BASE
                | R::GET_CONFIG
                | R::GET_MAX_MEM_SLOTS
                | R::GET_STATUS
                | R::GET_INFLIGHT_FD
                | R::GET_SHARED_OBJECT
                | R::SET_DEVICE_STATE_FD
                | R::CHECK_DEVICE_STATE
                | R::GET_SHMEM_CONFIG
                | R::POSTCOPY_ADVISE
        )
    }

    pub(super) fn need_owner(&self) -> Result<(), Violation> {
        if self.owner {
            Ok(())
        } else {
            Err(Violation::NotOwner)
        }
    }

    fn need_protocol(&self, feature: Proto, name: &'static str) -> Result<(), Violation> {
        if self.protocol & feature.bits() == 0 {
            return Err(Violation::ProtocolFeatureMissing(name));
        }
        Ok(())
    }

    /// R5: the features rings will run with, or why none are usable yet.
    pub(super) fn features_for_start(&self, index: u32) -> Result<u64, Violation> {
        if self.invalid_acked.is_some() || self.features_ok_refused {
            return Err(Violation::FeaturesRefused(index));
        }
        self.acked.ok_or(Violation::FeaturesNotSet(index))
    }

    /// Features used to size rings before SET_FEATURES: assume the larger layout.
    /// The ring layout the features select: before SET_FEATURES a split ring with every
    /// offered bit that grows it (EVENT_IDX), the stricter check; packed only once acked.
    pub(super) fn ring_layout(&self) -> Layout {
        match self.acked {
            Some(acked) => Layout::from_features(acked),
            None => Layout::Split {
                event_idx: self.offered() & mask(bit::EVENT_IDX) != 0,
            },
        }
    }

    fn any_ring_started(&self) -> bool {
        self.rings.iter().any(|r| r.started)
    }

    fn set_protocol_features(&mut self, req: &Request) -> Result<Reply, Violation> {
        no_fds(req)?;
        let value = u64_body(req)?;
        let unoffered = value & !OFFERED_PROTOCOL_FEATURES;
        if unoffered != 0 {
            return Err(Violation::UnofferedProtocolFeatures(unoffered));
        }
        self.protocol = value;
        Ok(Reply::None)
    }

    fn set_features(&mut self, req: &Request) -> Result<Reply, Violation> {
        no_fds(req)?;
        self.need_owner()?;
        let value = u64_body(req)?;
        let unoffered = value & !self.offered();
        if unoffered != 0 {
            return Err(Violation::UnofferedFeatures(unoffered));
        }
        let final_why = if self.any_ring_started() {
            Some("rings are running")
        } else if self.status & status::FEATURES_OK != 0 && !self.features_ok_refused {
            Some("FEATURES_OK is set")
        } else {
            None
        };
        if let (Some(why), Some(old)) = (final_why, self.acked) {
            if old != value {
                return Err(Violation::FeaturesFinal {
                    why,
                    old,
                    new: value,
                });
            }
        }
        if let Err(missing) = features::check_dependencies(value) {
            // With the STATUS protocol feature the spec's way to refuse is FEATURES_OK
            // (rule 5): accept the write and refuse FEATURES_OK. Otherwise refuse now.
            if self.protocol & Proto::STATUS.bits() != 0 && !(req.need_reply() && self.reply_ack())
            {
                tracing::warn!(
                    port = %self.cfg.port,
                    rule = "R5 FEATURES_OK",
                    "SET_FEATURES {value:#x}: {missing}; FEATURES_OK will be refused"
                );
                self.invalid_acked = Some(value);
                self.acked = None;
                return Ok(Reply::None);
            }
            return Err(Violation::Dependency(missing));
        }
        if self.acked != Some(value) {
            tracing::info!(port = %self.cfg.port, features = format_args!("{value:#x}"), "features acked");
        }
        self.acked = Some(value);
        self.invalid_acked = None;
        self.features_ok_refused = false;
        Ok(Reply::None)
    }

    fn set_status(&mut self, req: &Request) -> Result<Reply, Violation> {
        self.need_protocol(Proto::STATUS, "STATUS")?;
        no_fds(req)?;
        self.need_owner()?;
        let value = u64_body(req)?;
        let mut new = u8::try_from(value).map_err(|_| Violation::Status(value))?;
        if new == 0 {
            // Device reset by the driver. Rings keep running until GET_VRING_BASE stops
            // them (QEMU sends SET_STATUS 0 first, then GET_VRING_BASE per ring).
            self.status = 0;
            self.features_ok_refused = false;
            return Ok(Reply::None);
        }
        let setting_features_ok =
            new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0;
        if setting_features_ok {
            let refusal = match (self.acked, self.invalid_acked) {
                (_, Some(bad)) => Some(format!(
                    "acked features {bad:#x} break virtio §5.1.3.1: {}",
                    features::check_dependencies(bad).unwrap_err()
                )),
                (None, None) => Some("no SET_FEATURES before FEATURES_OK".to_string()),
                (Some(_), None) => None,
            };
            if let Some(why) = refusal {
                tracing::warn!(
                    port = %self.cfg.port,
                    request = "SET_STATUS",
                    rule = "R5 FEATURES_OK",
                    "FEATURES_OK refused: {why}"
                );
                new &= !status::FEATURES_OK;
                self.features_ok_refused = true;
            }
        }
        self.status = new;
        Ok(Reply::None)
    }

    /// NET_SET_MTU: the MTU the front-end gave its guest. QEMU sends it at DRIVER_OK before
    /// SET_FEATURES, and whenever its guest acked VIRTIO_NET_F_MTU, which QEMU offers for
    /// `host_mtu` even when the switch did not: so neither an acked nor an offered
    /// VIRTIO_NET_F_MTU is required (R10), only the NET_MTU protocol feature.
    fn net_set_mtu(&mut self, req: &Request) -> Result<Reply, Violation> {
        self.need_protocol(Proto::MTU, "MTU")?;
        no_fds(req)?;
        self.need_owner()?;
        let value = u64_body(req)?;
        let mtu = u16::try_from(value)
            .ok()
            .filter(|&m| crate::config::MTU_RANGE.contains(&u32::from(m)))
            .ok_or(Violation::MtuRange(value))?;
        if let Some(setting) = self.cfg.mtu {
            if mtu > setting {
                return Err(Violation::MtuAboveSetting { mtu, setting });
            }
        }
        if self.net_mtu != Some(mtu) {
            tracing::info!(port = %self.cfg.port, mtu, "guest MTU set by NET_SET_MTU");
        }
        self.net_mtu = Some(mtu);
        // Rings already running read the MTU from their snapshot: hand them the new one.
        if self.snapshot.is_some() {
            self.republish();
        }
        Ok(Reply::None)
    }

    /// SEND_RARP: announce the guest's MAC (the first 6 bytes of the u64 payload, as QEMU
    /// copies them in) to the other ports and learn it on this one. Answered (REPLY_ACK)
    /// once the frame went out.
    fn send_rarp(&mut self, req: &Request) -> Result<Reply, Violation> {
        self.need_protocol(Proto::RARP, "RARP")?;
        no_fds(req)?;
        self.need_owner()?;
        let bytes = u64_body(req)?.to_ne_bytes();
        let mac = [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]];
        if let Some((dp, port)) = &self.cfg.dataplane {
            let ports = dp.announce(*port, mac)?;
            tracing::info!(
                port = %self.cfg.port,
                mac = %pmd::net::mac_string(mac),
                ports,
                "SEND_RARP: MAC learned on this port, RARP announcement sent"
            );
            self.quiesce();
        }
        Ok(Reply::None)
    }

    fn get_config(&mut self, req: &Request) -> Result<Reply, Violation> {
        self.need_protocol(Proto::CONFIG, "CONFIG")?;
        no_fds(req)?;
        let head = std::mem::size_of::<VhostUserConfig>();
        if req.payload.len() < head {
            return Err(Violation::PayloadSize {
                expected: head,
                got: req.payload.len(),
            });
        }
        let mut msg = VhostUserConfig::default();
        msg.as_mut_slice().copy_from_slice(&req.payload[..head]);
        let (offset, size, flags) = (msg.offset, msg.size, msg.flags);
        if req.payload.len() != head + size as usize {
            return Err(Violation::PayloadSize {
                expected: head + size as usize,
                got: req.payload.len(),
            });
        }
        if flags != 0 {
            return Err(Violation::Config(format!("flags {flags:#x} on a read")));
        }
        let negotiated_version_1 = match self.acked {
            Some(f) => f & mask(bit::VERSION_1) != 0,
            None => self.offered() & mask(bit::VERSION_1) != 0,
        };
        let space = config_space::encode(&self.cfg, negotiated_version_1);
        let range = (offset as usize)..(offset as usize + size as usize);
        let data = space.get(range).ok_or_else(|| {
            Violation::Config(format!(
                "offset {offset} size {size} is outside the {}-byte config space",
                space.len()
            ))
        })?;
        let mut out = msg.as_slice().to_vec();
        out.extend_from_slice(data);
        Ok(Reply::Payload(out))
    }

    /// Rebuilds the data-plane snapshot after a change to rings, memory or features, hands
    /// it to the data plane and waits until every PMD has taken it.
    pub(super) fn republish(&mut self) {
        let features = self.acked.unwrap_or(0);
        let bit30 = features & mask(bit::PROTOCOL_FEATURES) != 0;
        let layout = Layout::from_features(features);
        let ring_features = RingFeatures::from_features(features);
        let mut rings = Vec::with_capacity(self.rings.len());
        for ring in &self.rings {
            let runtime = match (ring.started, ring.size, ring.addrs, &ring.shared) {
                // Started rings were checked when they started and whenever memory
                // changed, so translation succeeds.
                (true, Some(size), Some(addrs), Some(shared)) => {
                    pmd::vring::translate(&self.memory, size, addrs, layout)
                        .ok()
                        .map(|t| {
                            RingRuntime::new(
                                shared.clone(),
                                t,
                                self.memory.clone(),
                                ring_features,
                                ring.effective_enable(bit30),
                                ring.call.clone(),
                            )
                        })
                }
                _ => None,
            };
            rings.push(runtime);
        }
        let any = rings.iter().any(Option::is_some);
        let mtu = self.mtu();
        self.snapshot = any.then(|| {
            Arc::new(PortSnapshot {
                features,
                rings,
                mtu,
            })
        });
        if let Some((dp, port)) = &self.cfg.dataplane {
            dp.publish(*port, self.snapshot.clone());
        }
        // The front-end's reply comes after this: what it was acked for (a ring enabled,
        // stopped, re-mapped) must already be what every poller sees.
        self.quiesce();
    }

    /// Waits until no poller holds an older snapshot.
    pub(super) fn quiesce(&self) {
        if let Some((dp, _)) = &self.cfg.dataplane {
            if let Err(e) = dp.quiesce() {
                fatal_quiesce(&self.cfg.port, &e);
            }
        }
    }
}

/// A PMD missed a quiescent point or died: the change the front-end asked for is not in
/// force, and answering as if it were could let a PMD write into memory the front-end got
/// back. The switch cannot recover from that by itself, so it exits loudly (status 70)
/// for its supervisor to restart it.
fn fatal_quiesce(port: &str, e: &pmd::dataplane::DataplaneError) -> ! {
    tracing::error!(
        port,
        "fatal: {e}; exiting so that a supervisor restarts the switch"
    );
    eprintln!("vhost-switch: fatal: port {port}: {e}; exiting");
    std::process::exit(70);
}

impl Drop for NetDevice {
    /// The connection is gone: the data plane lets go of the port before its memory and
    /// descriptors are released, and the FDB forgets the port's MACs.
    fn drop(&mut self) {
        if let Some((dp, port)) = &self.cfg.dataplane {
            dp.publish(*port, None);
            if let Err(e) = dp.quiesce() {
                fatal_quiesce(&self.cfg.port, &e);
            }
            dp.forget_port(*port);
        }
    }
}

fn expect_empty(req: &Request) -> Result<(), Violation> {
    if !req.payload.is_empty() {
        return Err(Violation::PayloadSize {
            expected: 0,
            got: req.payload.len(),
        });
    }
    Ok(())
}

/// Parses a `VhostUserVringState` payload.
pub(super) fn vring_state(req: &Request) -> Result<VhostUserVringState, Violation> {
    body::<VhostUserVringState>(req)
}

/// Keeps an fd-carrying request's descriptors, checking their count.
pub(super) fn take_fds(req: &mut Request, expected: usize) -> Result<Vec<File>, Violation> {
    if req.fds.len() != expected {
        return Err(Violation::FdCount {
            expected: match expected {
                0 => "0",
                1 => "1",
                _ => "one per memory region",
            },
            got: req.fds.len(),
        });
    }
    Ok(std::mem::take(&mut req.fds))
}
