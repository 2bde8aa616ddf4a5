//! Frames the switch sends on its own: the RARP announcement a front-end asks for with
//! SEND_RARP (QEMU does after a migration, for a guest that cannot announce itself).
//!
//! The control thread never touches a ring. It queues the frame with its source port and
//! where it goes ([`crate::dataplane::Dataplane::announce`]) and bumps the epoch; the first
//! PMD to reach its next quiescent point takes it off the queue and delivers it into the
//! first RX ring of every destination, counting it in its own counters, before it
//! acknowledges the epoch. So:
//!
//! - the fast path is untouched: the queue is looked at only when the epoch moved, where a
//!   PMD already reloads snapshots, and delivery takes each RX ring's busy flag as
//!   forwarding does;
//! - once the control thread's `quiesce` returns, the frame was delivered or dropped and
//!   counted (REPLY_ACK then means "sent");
//! - the frame goes through the same MTU limit and RX drop reasons as a forwarded one.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::chain::{Direction, Segments};
use crate::copy;
use crate::forward::{stop_ring, stop_rx_ring_at_bad_chain};
use crate::net::{RarpAnnouncement, VirtioNetHdr};
use crate::queue::{Cursor, RingRuntime, RingView};
use crate::ring::DeviceRing;
use crate::snapshot::PortSnapshot;
use crate::stats::{DropReason, QueueStats};

/// Segments one announcement's RX chain may have (the frame is 60 bytes; a guest posting
/// it in more pieces than this is not worth serving).
pub(crate) const SEGMENTS: usize = 64;

/// Where an announcement goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Every port but the source (learning mode: it is a broadcast).
    AllBut(usize),
    /// One port (xconnect: the source's peer).
    Port(usize),
}

impl Targets {
    /// True when `port` gets the frame.
    pub fn includes(self, port: usize) -> bool {
        match self {
            Targets::AllBut(source) => port != source,
            Targets::Port(p) => p == port,
        }
    }
}

/// A frame queued by the control thread for the next PMD at a quiescent point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The ports that get it.
    pub targets: Targets,
    /// The frame (after the virtio-net header).
    pub frame: [u8; RarpAnnouncement::LEN],
}

/// Delivers `a` to every target port's first RX ring, counting each copy in `stats`
/// (`stats[port][0]`: delivered, or dropped with an RX reason).
pub(crate) fn deliver(
    segs: &mut Segments,
    a: &Announcement,
    ports: &[Option<Arc<PortSnapshot>>],
    stats: &[Vec<QueueStats>],
) {
    for (port, snapshot) in ports.iter().enumerate() {
        if !a.targets.includes(port) {
            continue;
        }
        let Some(stats) = stats.get(port).and_then(|s| s.first()) else {
            continue;
        };
        match deliver_to(segs, &a.frame, port, snapshot.as_deref()) {
            Ok(()) => {
                stats.packets.add(1);
                stats.bytes.add(a.frame.len() as u64);
            }
            Err(reason) => stats.drop(reason),
        }
    }
}

/// One copy of `frame` into `port`'s RX ring 0.
fn deliver_to(
    segs: &mut Segments,
    frame: &[u8],
    port: usize,
    snapshot: Option<&PortSnapshot>,
) -> Result<(), DropReason> {
    let snapshot = snapshot.ok_or(DropReason::RxRingUnavailable)?;
    let rx = match snapshot.rings.first() {
        Some(Some(rx)) if rx.enabled && rx.shared.broken() == 0 => rx,
        _ => return Err(DropReason::RxRingUnavailable),
    };
    if frame.len() as u64 > snapshot.frame_limit() {
        return Err(DropReason::OverMtu);
    }
    let mut guard = rx.shared.lock();
    let result = match rx.ring() {
        Some(RingView::Split(ring)) => put(segs, frame, port, rx, &ring, guard.cursor()),
        Some(RingView::Packed(ring)) => put(segs, frame, port, rx, &ring, guard.cursor()),
        None => Err(DropReason::RxRingUnavailable),
    };
    // GET_VRING_BASE reports every ring's position, RX included.
    guard.publish_position();
    result
}

/// Takes one RX chain, writes a plain virtio-net header and `frame` into it, returns it
/// used and interrupts the guest if it asked. A chain too short is left to the guest.
fn put<R: DeviceRing>(
    segs: &mut Segments,
    frame: &[u8],
    port: usize,
    rx: &RingRuntime,
    ring: &R,
    cur: &mut Cursor,
) -> Result<(), DropReason> {
    let memory = rx.memory();
    let header_len = rx.features.header_len as usize;
    let need = (header_len + frame.len()) as u64;
    let start = *cur;
    segs.clear();
    segs.begin_chain(SEGMENTS);
    let chain = match ring.take(cur, memory, Direction::Writable, rx.features.indirect, segs) {
        Ok(Some(chain)) => chain,
        Ok(None) => return Err(DropReason::NoRxBuffer),
        Err(why) => {
            stop_ring(rx, why, port);
            return Err(DropReason::RxRingUnavailable);
        }
    };
    if let Err(e) = chain.walked {
        *cur = start;
        stop_rx_ring_at_bad_chain(rx, port, chain.head.id, e);
        return Err(DropReason::RxBadDescriptor);
    }
    if segs.total_len() < need {
        *cur = start;
        return Err(DropReason::TooBig);
    }
    // One buffer, no offload: num_buffers 1 (§5.1.6.4.1); the legacy header stops before it.
    let header = VirtioNetHdr::plain(1).emit();
    let written = copy::write(memory, segs.as_slice(), 0, &header[..header_len])
        && copy::write(memory, segs.as_slice(), header_len as u64, frame);
    // The chain was walked in `memory` and is long enough; should a write fail anyway the
    // chain goes back empty.
    ring.push_used(cur, chain.head, if written { need as u32 } else { 0 });
    if ring.publish_used(cur, rx.features.event_idx) {
        rx.notify();
    }
    if written {
        Ok(())
    } else {
        Err(DropReason::RxBadDescriptor)
    }
}
