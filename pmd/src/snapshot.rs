//! Immutable per-port state handed from the control plane to the data plane.
//!
//! A snapshot is rebuilt whenever the control plane changes something a poller reads
//! (features at ring start, memory table, ring start/stop/enable) and replaces the previous
//! one whole. Each ring runtime holds the `Arc` of the memory map its pointers point into,
//! so memory is unmapped only after the last poller has let go of the last snapshot.

#![forbid(unsafe_code)]

use crate::queue::RingRuntime;

/// Everything a poller needs about one port's device.
#[derive(Debug)]
pub struct PortSnapshot {
    /// Virtio features the rings run with.
    pub features: u64,
    /// Started rings by index (even: guest RX, odd: guest TX); `None` if not started.
    pub rings: Vec<Option<RingRuntime>>,
}
