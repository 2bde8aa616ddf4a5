//! Immutable per-port state handed from the control plane to the data plane.
//!
//! A snapshot is rebuilt whenever the control plane changes something a poller reads
//! (features at device start, memory table, ring start/stop/enable) and replaces the
//! previous one as a whole. It holds an `Arc` to the memory map its pointers point into.

use std::sync::Arc;

use crate::memory::GuestMemoryMap;
use crate::vring::TranslatedRing;

/// One ring as a poller sees it.
#[derive(Clone, Debug)]
pub struct RingSnapshot {
    /// Ring index (even: guest RX, odd: guest TX).
    pub index: u16,
    /// Host pointers of the ring, valid while `PortSnapshot::memory` lives.
    pub ring: TranslatedRing,
    /// Next available index to read (from SET_VRING_BASE or where the ring stopped).
    pub last_avail_idx: u16,
    /// Whether the ring may carry packets (started and enabled are independent).
    pub enabled: bool,
}

/// Everything a poller needs about one port's device.
#[derive(Clone, Debug)]
pub struct PortSnapshot {
    /// Virtio features negotiated and final (accepted with FEATURES_OK or ring start).
    pub features: u64,
    /// The memory the ring pointers point into.
    pub memory: Arc<GuestMemoryMap>,
    /// The started rings.
    pub rings: Vec<RingSnapshot>,
}

// SAFETY: the raw pointers inside `TranslatedRing` point into mappings owned by `memory`,
// which this snapshot keeps alive; sharing them between threads is what the data plane's
// own ring accessors are written for.
unsafe impl Send for RingSnapshot {}
// SAFETY: as above; a snapshot is never mutated after publication.
unsafe impl Sync for RingSnapshot {}
