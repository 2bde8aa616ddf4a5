//! What both fast-path benchmarks set up: two ports cross-connected, guest A's TX ring on
//! port 0 and guest B's RX ring on port 1, with one PMD's counters.

use std::sync::Arc;

use pmd::forward::{Context, DEFAULT_MAX_FRAME};
use pmd::queue::RingRuntime;
use pmd::snapshot::PortSnapshot;
use pmd::stats::QueueStats;
use pmd::switch::{Mode, Switch};

/// VIRTIO_F_VERSION_1: 12-byte net headers.
pub const VERSION_1: u64 = 1 << 32;

/// The data plane of a two-port cross-connect.
pub struct Xconnect {
    /// Port 0 with A's TX ring, port 1 with B's RX ring.
    pub ports: Vec<Option<Arc<PortSnapshot>>>,
    /// Counters, `stats[port][ring]`.
    pub stats: Vec<Vec<QueueStats>>,
    /// The switch, in cross-connect mode.
    pub switch: Switch,
}

impl Xconnect {
    /// A's TX ring (ring 1) to B's RX ring (ring 0).
    pub fn new(a_tx: RingRuntime, b_rx: RingRuntime) -> Xconnect {
        let port = |rings| {
            Some(Arc::new(PortSnapshot {
                features: VERSION_1,
                rings,
                mtu: None,
            }))
        };
        Xconnect {
            ports: vec![port(vec![None, Some(a_tx)]), port(vec![Some(b_rx), None])],
            stats: (0..2)
                .map(|_| (0..2).map(|_| QueueStats::default()).collect())
                .collect(),
            switch: Switch::new(Mode::Xconnect, 2, 300, Vec::new()),
        }
    }

    /// What `poll_tx` needs.
    pub fn context(&self) -> Context<'_> {
        Context {
            ports: &self.ports,
            switch: &self.switch,
            stats: &self.stats,
            now: 0,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// A's TX ring.
    pub fn tx(&self) -> &RingRuntime {
        self.ports[0]
            .as_ref()
            .and_then(|p| p.rings[1].as_ref())
            .expect("A's TX ring")
    }
}
