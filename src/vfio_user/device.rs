//! The emulated virtio-net PCI device of one vfio-user connection: commands in, replies
//! or refusals out, and the data-plane snapshot kept in step.
//!
//! [`VirtioNetPci::handle`] takes one framed command and returns the reply payload (and
//! the descriptor that goes with it, for the BAR's region info) or the [`Refusal`] the
//! client is answered with. State changes only on success. Whatever a PMD reads (rings,
//! memory, interrupt descriptors) is republished and quiesced before the reply, so a
//! client that gets its answer (an unmap, a reset) can rely on it being in force.

use std::fs::File;
use std::sync::Arc;

use pmd::memory::GuestMemoryMap;
use pmd::queue::{RingFeatures, RingRuntime, RingShared};
use pmd::snapshot::PortSnapshot;
use pmd::vring::{self, Layout, RingAddrs};

use super::common_cfg::{CommonCfg, Effects};
use super::dma::DmaTable;
use super::irqs::{self, Irqs};
use super::layout::*;
use super::message::{DmaMap, DmaUnmap, Fields, IndexQuery, RegionAccess, SetIrqs, Writer};
use super::notify;
use super::pci::PciConfig;
use super::refusal::Refusal;
use super::version::{self, ServerCaps};
use super::wire::{Command, Request, MAX_DATA_XFER};
use crate::vhost_user::config_space;
use crate::vhost_user::device::DeviceConfig;

/// VFIO device flags: resettable PCI device.
const DEVICE_FLAGS: u32 = (1 << 0) | (1 << 1);
/// Region info flags.
mod region_flags {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const MMAP: u32 = 1 << 2;
    pub const CAPS: u32 = 1 << 3;
}
/// Bytes of `struct vfio_region_info`.
const REGION_INFO_LEN: usize = 32;
/// The sparse-mmap capability: id 1, version 1.
const CAP_SPARSE_MMAP: u16 = 1;

/// What a handled command answers.
#[derive(Debug, Default)]
pub struct Reply {
    /// The payload after the header.
    pub payload: Vec<u8>,
    /// A descriptor sent with it (the BAR's memfd in its region info).
    pub fd: Option<Arc<File>>,
}

impl Reply {
    fn payload(payload: Vec<u8>) -> Self {
        Reply { payload, fd: None }
    }
}

/// The device state of one connection.
#[derive(Debug)]
pub struct VirtioNetPci {
    pub(super) cfg: DeviceConfig,
    versioned: bool,
    pci: PciConfig,
    common: CommonCfg,
    msix_bar: Vec<u8>,
    bar_file: Arc<File>,
    dma: DmaTable,
    irqs: Irqs,
    memory: Arc<GuestMemoryMap>,
    rings: Vec<Option<Arc<RingShared>>>,
    snapshot: Option<Arc<PortSnapshot>>,
}

impl VirtioNetPci {
    /// A device after power-on, for a new connection.
    pub fn new(cfg: DeviceConfig) -> std::io::Result<Self> {
        let limits = cfg.limits;
        let mut msix_bar = vec![0u8; MSIX_BAR_SIZE as usize];
        // Every vector starts masked (vector control bit 0).
        for v in 0..usize::from(MSIX_VECTORS) {
            msix_bar[MSIX_TABLE_OFFSET as usize + 16 * v + 12] = 1;
        }
        Ok(VirtioNetPci {
            common: CommonCfg::with_offered(
                &cfg.port,
                super::common_cfg::offered(cfg.mtu, cfg.offloads),
            ),
            cfg,
            versioned: false,
            pci: PciConfig::new(),
            msix_bar,
            bar_file: Arc::new(notify::bar_memfd()?),
            dma: DmaTable::new(
                limits.max_mem_slots as usize,
                limits.max_memory,
                limits.require_sealed_memory,
            ),
            irqs: Irqs::new(MSIX_VECTORS),
            memory: Arc::new(GuestMemoryMap::default()),
            rings: vec![None; usize::from(NUM_QUEUES)],
            snapshot: None,
        })
    }

    /// The virtio device status byte.
    pub fn status(&self) -> u8 {
        self.common.status()
    }

    /// Features the driver accepted (final once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.common.driver_features()
    }

    /// Started rings, by queue index.
    pub fn started_rings(&self) -> Vec<bool> {
        self.rings.iter().map(Option::is_some).collect()
    }

    /// DMA maps held (with or without a file).
    pub fn dma_maps(&self) -> usize {
        self.dma.len()
    }

    /// The guest memory the usable DMA maps make.
    pub fn memory(&self) -> &Arc<GuestMemoryMap> {
        &self.memory
    }

    /// The snapshot the data plane reads.
    pub fn snapshot(&self) -> Option<&Arc<PortSnapshot>> {
        self.snapshot.as_ref()
    }

    /// Descriptors this connection makes the switch hold (interrupt eventfds; DMA files
    /// are closed once mapped).
    pub fn held_fds(&self) -> usize {
        self.irqs.held_fds()
    }

    /// Faults repaired in the client's memory: non-zero means it shrank a file under a
    /// mapping, and the port must be failed.
    pub fn memory_faults(&self) -> u64 {
        self.memory.faults()
    }

    /// Handles one command. On `Err` nothing changed.
    pub fn handle(&mut self, req: &mut Request) -> Result<Reply, Refusal> {
        use Command as C;
        let command = req.header.command;
        let takes_fds = matches!(command, C::DmaMap | C::DeviceSetIrqs);
        if !takes_fds && !req.fds.is_empty() {
            return Err(Refusal::FdCount {
                command,
                expected: "0",
                got: req.fds.len(),
            });
        }
        let (held, incoming) = (self.held_fds(), req.fds.len());
        if incoming > 0 && held + incoming > self.cfg.limits.max_fds_per_connection {
            return Err(Refusal::invalid(
                command,
                format!(
                    "{held} descriptors held, {incoming} more would pass max_fds_per_connection {}",
                    self.cfg.limits.max_fds_per_connection
                ),
            ));
        }
        if (command == C::Version) == self.versioned {
            return Err(Refusal::OutOfOrder(command));
        }
        match command {
            C::Version => self.version(req),
            C::DmaMap => self.dma_map(req),
            C::DmaUnmap => self.dma_unmap(req),
            C::DeviceGetInfo => {
                let f = Fields::exact(command, &req.payload, 16)?;
                if f.u32(0) < 16 {
                    return Err(Refusal::invalid(command, format!("argsz {}", f.u32(0))));
                }
                let w = Writer::default()
                    .u32(16)
                    .u32(DEVICE_FLAGS)
                    .u32(NUM_REGIONS)
                    .u32(irqs::index::COUNT);
                Ok(Reply::payload(w.finish()))
            }
            C::DeviceGetRegionInfo => self.region_info(req),
            C::GetRegionIoFds => {
                let q = IndexQuery::parse(command, &req.payload, 16)?;
                if q.index >= NUM_REGIONS {
                    return Err(Refusal::invalid(command, format!("region {}", q.index)));
                }
                // No ioeventfds: doorbells land in the mapped notification page.
                let w = Writer::default().u32(16).u32(0).u32(q.index).u32(0);
                Ok(Reply::payload(w.finish()))
            }
            C::DeviceGetIrqInfo => {
                let q = IndexQuery::parse(command, &req.payload, 16)?;
                let (count, flags) = self.irqs.info(q.index).ok_or_else(|| {
                    Refusal::invalid(command, format!("interrupt index {}", q.index))
                })?;
                let w = Writer::default().u32(16).u32(flags).u32(q.index).u32(count);
                Ok(Reply::payload(w.finish()))
            }
            C::DeviceSetIrqs => {
                let set = SetIrqs::parse(&req.payload)?;
                let fds = std::mem::take(&mut req.fds);
                if self.irqs.set(&set, fds)? && self.any_ring_started() {
                    self.republish();
                }
                Ok(Reply::default())
            }
            C::RegionRead => {
                let access = RegionAccess::parse_read(&req.payload, MAX_DATA_XFER)?;
                let mut data = vec![0u8; access.count as usize];
                self.region_read(&access, &mut data)?;
                Ok(Reply::payload(access.encode().bytes(&data).finish()))
            }
            C::RegionWrite => {
                let (access, data) = RegionAccess::parse_write(&req.payload)?;
                self.region_write(&access, data)?;
                Ok(Reply::payload(access.encode().finish()))
            }
            C::DeviceReset => {
                Fields::exact(command, &req.payload, 0)?;
                tracing::info!(port = %self.cfg.port, "device reset");
                self.common.reset();
                self.pci.reset();
                self.stop_rings();
                Ok(Reply::default())
            }
            C::DeviceFeature => Err(Refusal::NoDeviceFeature),
            C::DmaRead
            | C::DmaWrite
            | C::DirtyPages
            | C::RegionWriteMulti
            | C::MigDataRead
            | C::MigDataWrite
            | C::Unknown(_) => Err(Refusal::Unsupported(command)),
        }
    }

    fn version(&mut self, req: &Request) -> Result<Reply, Refusal> {
        let client = version::parse(&req.payload)?;
        tracing::debug!(port = %self.cfg.port, minor = client.minor, max_msg_fds = client.max_msg_fds, "client version");
        self.versioned = true;
        Ok(Reply::payload(version::encode(ServerCaps {
            max_msg_fds: self.cfg.limits.max_fds_per_message,
            max_dma_maps: self.cfg.limits.max_mem_slots as usize,
        })))
    }

    fn dma_map(&mut self, req: &mut Request) -> Result<Reply, Refusal> {
        let map = DmaMap::parse(&req.payload)?;
        if req.fds.len() > 1 {
            return Err(Refusal::FdCount {
                command: Command::DmaMap,
                expected: "0 or 1",
                got: req.fds.len(),
            });
        }
        let file = req.fds.pop();
        let with_file = file.is_some();
        if self.dma.map(&map, file)? {
            self.memory_changed();
        }
        tracing::debug!(port = %self.cfg.port, iova = format_args!("{:#x}", map.iova), size = format_args!("{:#x}", map.size), with_file, flags = map.flags, "DMA map");
        Ok(Reply::default())
    }

    fn dma_unmap(&mut self, req: &Request) -> Result<Reply, Refusal> {
        let unmap = DmaUnmap::parse(&req.payload)?;
        if self.dma.unmap(&unmap)? {
            self.memory_changed();
        }
        Ok(Reply::payload(unmap.encode()))
    }

    fn region_info(&self, req: &Request) -> Result<Reply, Refusal> {
        let command = Command::DeviceGetRegionInfo;
        let q = IndexQuery::parse(command, &req.payload, REGION_INFO_LEN)?;
        let (flags, size, caps): (u32, u64, Vec<u8>) = match q.index {
            VIRTIO_BAR => {
                let sparse = Writer::default()
                    .u16(CAP_SPARSE_MMAP)
                    .u16(1)
                    .u32(0)
                    .u32(1)
                    .u32(0)
                    .u64(NOTIFY_OFFSET)
                    .u64(NOTIFY_LEN)
                    .finish();
                let f = region_flags::READ
                    | region_flags::WRITE
                    | region_flags::MMAP
                    | region_flags::CAPS;
                (f, VIRTIO_BAR_SIZE, sparse)
            }
            MSIX_BAR => (
                region_flags::READ | region_flags::WRITE,
                MSIX_BAR_SIZE,
                Vec::new(),
            ),
            CONFIG_REGION => (
                region_flags::READ | region_flags::WRITE,
                CONFIG_SPACE_LEN,
                Vec::new(),
            ),
            i if i < NUM_REGIONS => (0, 0, Vec::new()),
            i => return Err(Refusal::invalid(command, format!("region {i}"))),
        };
        let needed = REGION_INFO_LEN + caps.len();
        // A client with too little room learns the size it needs (argsz) and asks again;
        // the descriptor goes with the full answer only. QEMU refuses a reply that names
        // CAPS without a capability inside it.
        let fits = q.argsz as usize >= needed;
        let (flags, cap_offset) = if fits && !caps.is_empty() {
            (flags, REGION_INFO_LEN as u32)
        } else {
            (flags & !region_flags::CAPS, 0)
        };
        let mut w = Writer::default()
            .u32(needed as u32)
            .u32(flags)
            .u32(q.index)
            .u32(cap_offset)
            .u64(size)
            .u64(0);
        if fits {
            w = w.bytes(&caps);
        }
        let fd = (fits && q.index == VIRTIO_BAR).then(|| self.bar_file.clone());
        Ok(Reply {
            payload: w.finish(),
            fd,
        })
    }

    fn out_of_range(command: Command, a: &RegionAccess) -> Refusal {
        Refusal::invalid(
            command,
            format!(
                "{} bytes at {:#x} of region {}",
                a.count, a.offset, a.region
            ),
        )
    }

    fn region_read(&mut self, a: &RegionAccess, out: &mut [u8]) -> Result<(), Refusal> {
        let c = Command::RegionRead;
        let bad = || Self::out_of_range(c, a);
        match a.region {
            CONFIG_REGION => self.pci.read(a.offset, out).ok_or_else(bad),
            MSIX_BAR => {
                let start = usize::try_from(a.offset).map_err(|_| bad())?;
                let src = self
                    .msix_bar
                    .get(start..start.saturating_add(out.len()))
                    .ok_or_else(bad)?;
                out.copy_from_slice(src);
                Ok(())
            }
            VIRTIO_BAR => {
                let (base, len) = virtio_structure(a).ok_or_else(bad)?;
                let inner = a.offset - base;
                match base {
                    COMMON_OFFSET if inner + out.len() as u64 <= COMMON_LEN => {
                        self.common.read(inner, out).ok_or_else(bad)
                    }
                    DEVICE_OFFSET if inner + out.len() as u64 <= len => {
                        let space = config_space::encode(&self.cfg, true);
                        out.copy_from_slice(&space[inner as usize..inner as usize + out.len()]);
                        Ok(())
                    }
                    // ISR: the device interrupts through MSI-X only, so no ISR bit is ever
                    // set; the notify page and the rest of each page read as zeros.
                    _ => {
                        out.fill(0);
                        Ok(())
                    }
                }
            }
            _ => Err(bad()),
        }
    }

    fn region_write(&mut self, a: &RegionAccess, data: &[u8]) -> Result<(), Refusal> {
        let c = Command::RegionWrite;
        let bad = || Self::out_of_range(c, a);
        let effects = match a.region {
            CONFIG_REGION => {
                let msix_before = self.pci.msix_enabled();
                self.pci.write(a.offset, data).ok_or_else(bad)?;
                Effects {
                    vectors: self.pci.msix_enabled() != msix_before,
                    ..Effects::default()
                }
            }
            MSIX_BAR => {
                let start = usize::try_from(a.offset).map_err(|_| bad())?;
                let end = start
                    .checked_add(data.len())
                    .filter(|&e| e <= MSIX_PBA_OFFSET as usize);
                match end {
                    Some(end) => self.msix_bar[start..end].copy_from_slice(data),
                    // The pending bits are the device's; writes there are dropped.
                    None if start.saturating_add(data.len()) <= MSIX_BAR_SIZE as usize => {}
                    None => return Err(bad()),
                }
                Effects::default()
            }
            VIRTIO_BAR => {
                let (base, _) = virtio_structure(a).ok_or_else(bad)?;
                let inner = a.offset - base;
                if base == COMMON_OFFSET && inner + data.len() as u64 <= COMMON_LEN {
                    self.common.write(inner, data).ok_or_else(bad)?
                } else {
                    // Device config is read-only, the ISR is read-to-clear, doorbells
                    // that come as messages are as good as dropped: the PMDs poll.
                    Effects::default()
                }
            }
            _ => return Err(bad()),
        };
        self.apply(effects);
        Ok(())
    }

    fn apply(&mut self, effects: Effects) {
        if effects.reset {
            self.stop_rings();
            return;
        }
        let mut changed = false;
        if effects.start {
            changed |= self.start_rings();
        }
        if (effects.vectors || changed) && self.any_ring_started() {
            self.republish();
        }
    }

    fn any_ring_started(&self) -> bool {
        self.rings.iter().any(Option::is_some)
    }

    fn ring_features(&self) -> (u64, RingFeatures, Layout) {
        let f = self.common.driver_features();
        (f, RingFeatures::from_features(f), Layout::from_features(f))
    }

    fn addrs(q: &super::common_cfg::QueueConfig) -> RingAddrs {
        RingAddrs {
            desc: q.desc,
            avail: q.driver,
            used: q.device,
        }
    }

    /// Starts every enabled queue not yet started. Returns true if one started.
    fn start_rings(&mut self) -> bool {
        if !self.common.driver_ok() {
            return false;
        }
        let (_, features, layout) = self.ring_features();
        let mut started = false;
        for (i, q) in self.common.queues().iter().enumerate() {
            if !q.enabled || self.rings[i].is_some() {
                continue;
            }
            match vring::translate(&self.memory, q.size, Self::addrs(q), layout) {
                Ok(t) => {
                    let call = self.call_fd(q.msix_vector);
                    let runtime = RingRuntime::start(
                        i as u16,
                        0,
                        t,
                        self.memory.clone(),
                        features,
                        true,
                        call,
                    );
                    tracing::info!(port = %self.cfg.port, queue = i, size = q.size, vector = q.msix_vector, "ring started");
                    self.rings[i] = Some(runtime.shared);
                    started = true;
                }
                Err(e) => {
                    tracing::warn!(port = %self.cfg.port, queue = i, "ring not started: {e} (not in the client's fd-backed DMA memory)")
                }
            }
        }
        started
    }

    fn call_fd(&self, vector: u16) -> Option<Arc<File>> {
        if !self.pci.msix_enabled() {
            return None;
        }
        self.irqs.msix(vector)
    }

    fn stop_rings(&mut self) {
        let had = self.any_ring_started();
        self.rings.iter_mut().for_each(|r| *r = None);
        if had {
            tracing::info!(port = %self.cfg.port, "rings stopped");
            self.republish();
        }
    }

    /// DMA maps changed: rebuild guest memory, re-translate running rings (a ring whose
    /// memory went away stops), republish and quiesce before the client is answered, so
    /// no PMD touches memory the client took back.
    fn memory_changed(&mut self) {
        self.memory = Arc::new(self.dma.memory());
        if !self.any_ring_started() {
            return;
        }
        let (_, _, layout) = self.ring_features();
        for (i, q) in self.common.queues().iter().enumerate() {
            if self.rings[i].is_some()
                && vring::translate(&self.memory, q.size, Self::addrs(q), layout).is_err()
            {
                tracing::warn!(port = %self.cfg.port, queue = i, "ring stopped: its memory was unmapped");
                self.rings[i] = None;
            }
        }
        self.republish();
    }

    /// Hands the data plane a snapshot of the started rings and waits until every PMD
    /// has taken it.
    fn republish(&mut self) {
        let (features, ring_features, layout) = self.ring_features();
        let mut rings = Vec::with_capacity(self.rings.len());
        for (i, shared) in self.rings.iter().enumerate() {
            let q = &self.common.queues()[i];
            let runtime = shared.as_ref().and_then(|shared| {
                vring::translate(&self.memory, q.size, Self::addrs(q), layout)
                    .ok()
                    .map(|t| {
                        RingRuntime::new(
                            shared.clone(),
                            t,
                            self.memory.clone(),
                            ring_features,
                            true,
                            self.call_fd(q.msix_vector),
                        )
                    })
            });
            rings.push(runtime);
        }
        let any = rings.iter().any(Option::is_some);
        // No NET_SET_MTU over PCI: the port's setting is the guest's MTU.
        let mtu = self.cfg.mtu;
        self.snapshot = any.then(|| {
            Arc::new(PortSnapshot {
                features,
                rings,
                mtu,
            })
        });
        if let Some((dp, port)) = &self.cfg.dataplane {
            dp.publish(*port, self.snapshot.clone());
            if let Err(e) = dp.quiesce() {
                fatal_quiesce(&self.cfg.port, &e);
            }
        }
    }
}

/// The structure of the virtio BAR an access falls in: its base and length. `None` when
/// the access leaves the BAR or straddles two structures' pages.
fn virtio_structure(a: &RegionAccess) -> Option<(u64, u64)> {
    let end = a.offset.checked_add(u64::from(a.count))?;
    if end > VIRTIO_BAR_SIZE {
        return None;
    }
    let (base, len) = [
        (COMMON_OFFSET, COMMON_LEN),
        (ISR_OFFSET, ISR_LEN),
        (DEVICE_OFFSET, DEVICE_LEN),
        (NOTIFY_OFFSET, NOTIFY_LEN),
    ]
    .into_iter()
    .find(|&(base, _)| a.offset >= base && a.offset < base + 0x1000)?;
    (end <= base + 0x1000).then_some((base, len))
}

/// A PMD missed a quiescent point or died: answering the client as if the change were
/// in force could let a PMD write memory the client took back. Exit loudly (status 70),
/// as the vhost-user ports do, for a supervisor to restart the switch.
fn fatal_quiesce(port: &str, e: &pmd::dataplane::DataplaneError) -> ! {
    tracing::error!(
        port,
        "fatal: {e}; exiting so that a supervisor restarts the switch"
    );
    eprintln!("vhost-switch: fatal: port {port}: {e}; exiting");
    std::process::exit(70);
}

impl Drop for VirtioNetPci {
    /// The client is gone: the data plane lets go of the port before its memory and
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
