//! The virtio-pci common configuration structure (virtio 1.2 §4.1.4.3) and the device
//! status state machine behind it: feature windows, FEATURES_OK refused for invalid
//! combinations (the same dependency rules as vhost-user, `features.rs`), queue
//! selection, sizes, vectors, addresses and enables, and reset.
//!
//! The structure is plain state; what a write means for the data plane (start rings,
//! stop them, republish interrupt descriptors) is returned as [`Effects`] for the device
//! to act on.

use crate::vhost_user::device::status;
use crate::vhost_user::features::{self, bit, mask};

use super::layout::{COMMON_LEN, MAX_QUEUE_SIZE, MSIX_VECTORS, NUM_QUEUES};

/// "No MSI-X vector" (virtio 1.2 §4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// The features a vfio-user port offers: the split-ring set the data plane runs, without
/// vhost-user's protocol-features bit. Spelled out rather than derived from vhost-user's
/// offer, so a layout the PCI path does not translate (packed) is never offered here by
/// accident.
pub const OFFERED: u64 = mask(bit::VERSION_1)
    | mask(bit::MRG_RXBUF)
    | mask(bit::MAC)
    | mask(bit::STATUS)
    | mask(bit::EVENT_IDX)
    | mask(bit::INDIRECT_DESC);

/// The features a port offers: [`OFFERED`], plus VIRTIO_NET_F_MTU when the port has an
/// `mtu` setting (the device config space then carries it), plus the checksum and TSO
/// offloads ([`features::OFFLOAD_FEATURES`]) when its `offloads` setting is on.
pub const fn offered(mtu: Option<u16>, offloads: bool) -> u64 {
    let base = match mtu {
        Some(_) => OFFERED | mask(bit::MTU),
        None => OFFERED,
    };
    if offloads {
        base | features::OFFLOAD_FEATURES
    } else {
        base
    }
}

/// One queue's registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Entries (a power of two up to [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    /// MSI-X vector, or [`NO_VECTOR`].
    pub msix_vector: u16,
    /// The driver enabled the queue.
    pub enabled: bool,
    /// Descriptor table IOVA.
    pub desc: u64,
    /// Driver area (available ring) IOVA.
    pub driver: u64,
    /// Device area (used ring) IOVA.
    pub device: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            size: MAX_QUEUE_SIZE,
            msix_vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What a write asks of the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The driver reset the device (status 0): stop every ring.
    pub reset: bool,
    /// DRIVER_OK was set, or a queue was enabled after it: start what is enabled.
    pub start: bool,
    /// A vector changed: the rings' interrupt descriptors must be looked up again.
    pub vectors: bool,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.reset |= other.reset;
        self.start |= other.start;
        self.vectors |= other.vectors;
    }
}

/// The common configuration of one device.
#[derive(Clone, Debug)]
pub struct CommonCfg {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_msix_vector: u16,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    port: String,
    /// What the device offers ([`offered`]); kept across resets.
    offered: u64,
}

/// (offset, length) of each register, in the structure's order.
const FIELDS: [(u64, u64); 16] = [
    (0x00, 4), // device_feature_select
    (0x04, 4), // device_feature
    (0x08, 4), // driver_feature_select
    (0x0c, 4), // driver_feature
    (0x10, 2), // config_msix_vector
    (0x12, 2), // num_queues
    (0x14, 1), // device_status
    (0x15, 1), // config_generation
    (0x16, 2), // queue_select
    (0x18, 2), // queue_size
    (0x1a, 2), // queue_msix_vector
    (0x1c, 2), // queue_enable
    (0x1e, 2), // queue_notify_off
    (0x20, 8), // queue_desc
    (0x28, 8), // queue_driver
    (0x30, 8), // queue_device
];

impl CommonCfg {
    /// The structure after reset of a device offering [`OFFERED`]; `port` names the port
    /// in logs.
    pub fn new(port: &str) -> Self {
        Self::with_offered(port, OFFERED)
    }

    /// The structure after reset of a device offering `offered` (see [`offered`]).
    pub fn with_offered(port: &str, offered: u64) -> Self {
        CommonCfg {
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_msix_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            queues: vec![QueueConfig::default(); usize::from(NUM_QUEUES)],
            port: port.to_string(),
            offered,
        }
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Features the driver wrote (final once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The queues' registers.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// FEATURES_OK and DRIVER_OK are both set: the rings may run.
    pub fn driver_ok(&self) -> bool {
        let both = status::FEATURES_OK | status::DRIVER_OK;
        self.status & both == both
    }

    /// Back to the state after power-on.
    pub fn reset(&mut self) {
        *self = CommonCfg::with_offered(&self.port, self.offered);
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn field(&self, index: usize) -> u64 {
        let q = self.selected();
        let qf = |f: fn(&QueueConfig) -> u64| q.map_or(0, f);
        match index {
            0 => u64::from(self.device_feature_select),
            1 => match self.device_feature_select {
                0 => self.offered & 0xffff_ffff,
                1 => self.offered >> 32,
                _ => 0,
            },
            2 => u64::from(self.driver_feature_select),
            3 => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            4 => u64::from(self.config_msix_vector),
            5 => u64::from(NUM_QUEUES),
            6 => u64::from(self.status),
            // The configuration never changes, so its generation never moves.
            7 => 0,
            8 => u64::from(self.queue_select),
            // A queue that does not exist reads as size 0.
            9 => qf(|q| u64::from(q.size)),
            10 => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.msix_vector)),
            11 => qf(|q| u64::from(q.enabled)),
            // Each queue's doorbell is `notify_off * NOTIFY_MULTIPLIER` into the area.
            12 => u64::from(self.queue_select),
            13 => qf(|q| q.desc),
            14 => qf(|q| q.driver),
            _ => qf(|q| q.device),
        }
    }

    /// Reads `out.len()` bytes at `offset`; `None` outside the structure.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Option<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&e| e <= COMMON_LEN)?;
        for (i, &(at, len)) in FIELDS.iter().enumerate() {
            let bytes = self.field(i).to_le_bytes();
            for b in at.max(offset)..(at + len).min(end) {
                out[(b - offset) as usize] = bytes[(b - at) as usize];
            }
        }
        Some(())
    }

    /// Writes `data` at `offset`, register by register (a register written in part
    /// keeps its other bytes, as 64-bit addresses are written in halves). `None` outside
    /// the structure.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effects> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= COMMON_LEN)?;
        let mut effects = Effects::default();
        for (i, &(at, len)) in FIELDS.iter().enumerate() {
            let (from, to) = (at.max(offset), (at + len).min(end));
            if from >= to {
                continue;
            }
            let mut bytes = self.field(i).to_le_bytes();
            for b in from..to {
                bytes[(b - at) as usize] = data[(b - offset) as usize];
            }
            effects.merge(self.set(i, u64::from_le_bytes(bytes)));
        }
        Some(effects)
    }

    fn set(&mut self, index: usize, value: u64) -> Effects {
        let none = Effects::default();
        match index {
            0 => self.device_feature_select = value as u32,
            2 => self.driver_feature_select = value as u32,
            3 => self.set_driver_features(value as u32),
            4 => {
                self.config_msix_vector = checked_vector(value as u16);
                return Effects {
                    vectors: true,
                    ..none
                };
            }
            6 => return self.set_status(value as u8),
            8 => self.queue_select = value as u16,
            9..=15 => return self.set_queue(index, value),
            // Read-only registers ignore writes.
            _ => {}
        }
        none
    }

    fn set_driver_features(&mut self, half: u32) {
        if self.status & status::FEATURES_OK != 0 {
            tracing::warn!(port = %self.port, "driver_feature written after FEATURES_OK: ignored");
            return;
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(half),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(half) << 32)
            }
            // Feature bits past 63 do not exist; a driver accepting any there is refused
            // at FEATURES_OK by the subset check only if it also set known bits wrong.
            _ if half != 0 => {
                tracing::warn!(port = %self.port, select = self.driver_feature_select, "driver accepted feature bits beyond 63: ignored")
            }
            _ => {}
        }
    }

    fn set_status(&mut self, value: u8) -> Effects {
        if value == 0 {
            self.reset();
            return Effects {
                reset: true,
                ..Effects::default()
            };
        }
        let mut value = value;
        let old = self.status;
        if value & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            if let Err(why) = check_features(self.driver_features, self.offered) {
                tracing::warn!(port = %self.port, rule = "R5 FEATURES_OK", "FEATURES_OK refused: {why}");
                value &= !status::FEATURES_OK;
            } else {
                tracing::info!(port = %self.port, features = format_args!("{:#x}", self.driver_features), "features acked");
            }
        }
        self.status = value;
        let now_ok = self.driver_ok() && old & status::DRIVER_OK == 0;
        if value & status::DRIVER_OK != 0 && value & status::FEATURES_OK == 0 {
            tracing::warn!(port = %self.port, "DRIVER_OK without FEATURES_OK: rings stay stopped");
        }
        Effects {
            start: now_ok,
            ..Effects::default()
        }
    }

    fn set_queue(&mut self, index: usize, value: u64) -> Effects {
        let none = Effects::default();
        let port = self.port.clone();
        let select = self.queue_select;
        let driver_ok = self.driver_ok();
        let Some(q) = self.queues.get_mut(usize::from(select)) else {
            return none;
        };
        if q.enabled && index != 10 {
            // Queue registers are the driver's only until it enables the queue.
            tracing::warn!(port = %port, queue = select, "queue register written while the queue is enabled: ignored");
            return none;
        }
        match index {
            9 => {
                let size = value as u16;
                if size.is_power_of_two() && size <= MAX_QUEUE_SIZE {
                    q.size = size;
                } else {
                    tracing::warn!(port = %port, queue = select, "queue_size {size} refused (a power of two up to {MAX_QUEUE_SIZE})");
                }
            }
            10 => {
                q.msix_vector = checked_vector(value as u16);
                return Effects {
                    vectors: true,
                    ..none
                };
            }
            11 if value == 1 => {
                q.enabled = true;
                return Effects {
                    start: driver_ok,
                    ..none
                };
            }
            13 => q.desc = value,
            14 => q.driver = value,
            15 => q.device = value,
            _ => {}
        }
        none
    }
}

/// A vector the device cannot map reads back as NO_VECTOR, which is how the driver
/// learns it was refused (virtio 1.2 §4.1.5.1.2).
fn checked_vector(v: u16) -> u16 {
    if v < MSIX_VECTORS {
        v
    } else {
        NO_VECTOR
    }
}

/// Why a feature set cannot be accepted by a device offering `offered`: bits never
/// offered, a modern device without VERSION_1, or a §5.1.3.1 dependency missing.
pub fn check_features(f: u64, offered: u64) -> Result<(), String> {
    let unoffered = f & !offered;
    if unoffered != 0 {
        return Err(format!("features {unoffered:#x} were never offered"));
    }
    if f & mask(bit::VERSION_1) == 0 {
        return Err("VERSION_1 not accepted by the driver of a modern device".into());
    }
    features::check_dependencies(f).map_err(|m| m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(c: &mut CommonCfg, off: u64, v: u64, len: usize) -> Effects {
        c.write(off, &v.to_le_bytes()[..len]).unwrap()
    }

    fn r(c: &CommonCfg, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(off, &mut b[..len]).unwrap();
        u64::from_le_bytes(b)
    }

    /// The Linux driver's sequence for one queue: select, size, vector, addresses in
    /// halves, enable.
    fn set_up_queue(c: &mut CommonCfg, q: u16, base: u64) -> Effects {
        w(c, 0x16, u64::from(q), 2);
        w(c, 0x18, 256, 2);
        w(c, 0x1a, u64::from(q), 2);
        for (off, addr) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
            w(c, off, addr & 0xffff_ffff, 4);
            w(c, off + 4, addr >> 32, 4);
        }
        w(c, 0x1c, 1, 2)
    }

    fn negotiate(c: &mut CommonCfg, features: u64) -> u8 {
        w(c, 0x14, u64::from(status::ACKNOWLEDGE | status::DRIVER), 1);
        w(c, 0x08, 0, 4);
        w(c, 0x0c, features & 0xffff_ffff, 4);
        w(c, 0x08, 1, 4);
        w(c, 0x0c, features >> 32, 4);
        w(
            c,
            0x14,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
            1,
        );
        r(c, 0x14, 1) as u8
    }

    #[test]
    fn device_features_read_through_the_select_window() {
        let mut c = CommonCfg::new("p");
        assert_eq!(r(&c, 0x04, 4), OFFERED & 0xffff_ffff);
        w(&mut c, 0x00, 1, 4);
        assert_eq!(r(&c, 0x04, 4), OFFERED >> 32);
        w(&mut c, 0x00, 2, 4);
        assert_eq!(r(&c, 0x04, 4), 0);
        assert_eq!(r(&c, 0x12, 2), u64::from(NUM_QUEUES));
        assert_eq!(OFFERED & mask(bit::RING_PACKED), 0);
        assert_eq!(OFFERED & mask(bit::PROTOCOL_FEATURES), 0);
    }

    #[test]
    fn features_ok_is_refused_for_invalid_combinations() {
        let good = mask(bit::VERSION_1) | mask(bit::MRG_RXBUF);
        let cases = [
            (good, true),
            (mask(bit::MRG_RXBUF), false),          // no VERSION_1
            (good | mask(bit::GUEST_TSO4), false),  // never offered
            (good | mask(bit::RING_PACKED), false), // never offered
            (OFFERED, true),
        ];
        for (f, ok) in cases {
            let mut c = CommonCfg::new("p");
            let st = negotiate(&mut c, f);
            assert_eq!(st & status::FEATURES_OK != 0, ok, "features {f:#x}");
        }
        // The dependency table is the shared one.
        assert!(check_features(mask(bit::VERSION_1) | mask(bit::GUEST_TSO4), OFFERED).is_err());
        // VIRTIO_NET_F_MTU only where it is offered (a port with an mtu).
        let with_mtu = good | mask(bit::MTU);
        assert!(check_features(with_mtu, OFFERED).is_err());
        assert!(check_features(with_mtu, offered(Some(1500), false)).is_ok());
        let mut c = CommonCfg::with_offered("p", offered(Some(1500), false));
        assert_eq!(r(&c, 0x04, 4), (OFFERED | mask(bit::MTU)) & 0xffff_ffff);
        assert_ne!(negotiate(&mut c, with_mtu) & status::FEATURES_OK, 0);
        c.reset();
        assert_eq!(r(&c, 0x04, 4), (OFFERED | mask(bit::MTU)) & 0xffff_ffff);
        // Offloads where the port's setting offers them, with their dependencies.
        let offloads = offered(None, true);
        let tso = good | mask(bit::GUEST_CSUM) | mask(bit::GUEST_TSO4);
        assert!(check_features(tso, OFFERED).is_err());
        assert!(check_features(tso, offloads).is_ok());
        assert!(check_features(good | mask(bit::GUEST_TSO4), offloads).is_err());
        assert!(check_features(good | mask(bit::HOST_TSO6), offloads).is_err());
        let mut c = CommonCfg::with_offered("p", offloads);
        assert_ne!(negotiate(&mut c, tso) & status::FEATURES_OK, 0);
        let mut c = CommonCfg::with_offered("p", offloads);
        assert_eq!(
            negotiate(&mut c, good | mask(bit::HOST_ECN)) & status::FEATURES_OK,
            0
        );
    }

    #[test]
    fn features_are_final_at_features_ok() {
        let mut c = CommonCfg::new("p");
        let f = mask(bit::VERSION_1);
        assert_ne!(negotiate(&mut c, f) & status::FEATURES_OK, 0);
        w(&mut c, 0x08, 0, 4);
        w(&mut c, 0x0c, 0xffff_ffff, 4);
        assert_eq!(c.driver_features(), f);
    }

    #[test]
    fn rings_start_at_driver_ok_and_reset_clears_everything() {
        let mut c = CommonCfg::new("p");
        negotiate(&mut c, mask(bit::VERSION_1));
        assert!(
            !set_up_queue(&mut c, 0, 0x1_0000_0000).start,
            "before DRIVER_OK"
        );
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        let e = w(&mut c, 0x14, u64::from(all), 1);
        assert!(e.start);
        assert!(c.driver_ok());
        // A queue enabled after DRIVER_OK starts at once.
        assert!(set_up_queue(&mut c, 1, 0x2_0000).start);
        let q0 = c.queues()[0];
        assert_eq!(
            (q0.desc, q0.driver, q0.device),
            (0x1_0000_0000, 0x1_0000_1000, 0x1_0000_2000)
        );
        assert!(q0.enabled && q0.msix_vector == 0);
        // Registers of an enabled queue are the device's now.
        w(&mut c, 0x16, 0, 2);
        w(&mut c, 0x20, 0xdead_0000, 4);
        assert_eq!(c.queues()[0].desc, 0x1_0000_0000);
        assert!(w(&mut c, 0x14, 0, 1).reset);
        assert_eq!(c.status(), 0);
        assert_eq!(c.queues()[0], QueueConfig::default());
        assert_eq!(c.driver_features(), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_starts_nothing() {
        let mut c = CommonCfg::new("p");
        let e = w(
            &mut c,
            0x14,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK),
            1,
        );
        assert!(!e.start && !c.driver_ok());
    }

    #[test]
    fn bad_sizes_and_vectors_are_refused_as_the_spec_says() {
        let mut c = CommonCfg::new("p");
        w(&mut c, 0x18, 100, 2);
        assert_eq!(r(&c, 0x18, 2), u64::from(MAX_QUEUE_SIZE));
        w(&mut c, 0x18, 512, 2);
        assert_eq!(r(&c, 0x18, 2), u64::from(MAX_QUEUE_SIZE));
        w(&mut c, 0x18, 64, 2);
        assert_eq!(r(&c, 0x18, 2), 64);
        w(&mut c, 0x1a, u64::from(MSIX_VECTORS), 2);
        assert_eq!(r(&c, 0x1a, 2), u64::from(NO_VECTOR));
        w(&mut c, 0x10, 2, 2);
        assert_eq!(r(&c, 0x10, 2), 2);
        // A queue that does not exist.
        w(&mut c, 0x16, 7, 2);
        assert_eq!(r(&c, 0x18, 2), 0);
        w(&mut c, 0x1c, 1, 2);
        assert!(c.queues().iter().all(|q| !q.enabled));
        assert!(c.write(0x36, &[0; 4]).is_none());
        assert!(c.read(u64::MAX, &mut [0; 2]).is_none());
    }

    #[test]
    fn wide_reads_cover_several_registers() {
        let c = CommonCfg::new("p");
        let mut all = [0u8; COMMON_LEN as usize];
        c.read(0, &mut all).unwrap();
        assert_eq!(u16::from_le_bytes([all[0x12], all[0x13]]), NUM_QUEUES);
        assert_eq!(u16::from_le_bytes([all[0x18], all[0x19]]), MAX_QUEUE_SIZE);
    }
}
