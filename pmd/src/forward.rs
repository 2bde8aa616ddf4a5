//! The fast path, in stages over a burst: take a burst of chains from a guest TX ring,
//! classify every frame, then per destination reserve RX chains for all of its frames in
//! one go, copy each frame once straight into the destination guest's buffers, and publish
//! used entries and notify once per ring.
//!
//! When the two cores are far apart on the host, each dependent cache miss (avail entry →
//! descriptor → buffer, on both guests' rings) costs hundreds of nanoseconds. Handled one
//! frame at a time those misses queue behind each other; in stages, every load of a stage
//! is started (prefetched) before the stage that needs it, so they overlap:
//!
//! 1. **take**: read the burst's avail entries, prefetch every descriptor;
//! 2. **walk**: walk every chain (descriptors now in flight or cached), prefetch every
//!    frame's first data line;
//! 3. **classify**: read each Ethernet header, decide its destination;
//! 4. **deliver**, per destination ring: reserve its chains for all of its frames (avail
//!    index read once, descriptors prefetched together, each buffer's first line
//!    prefetched as its chain is walked), then copy the frames, write used entries,
//!    publish once, notify once;
//! 5. **complete**: return the TX chains, publish once, notify once.
//!
//! The stages drive rings only through [`DeviceRing`], generic over the ring layout (split
//! or packed): the single copy does not care which layout either side uses. Nothing here allocates or blocks: scratch
//! space is preallocated per PMD, counters are single-writer, and the only synchronisation
//! is each ring's busy flag (uncontended with one PMD). Guest memory is reached only
//! through [`crate::memory`] views and the [`crate::copy`] engine; headers through the
//! typed views of [`crate::net`].
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::chain::{ChainError, Direction, Segments};
use crate::copy;
use crate::memory::GuestMemoryMap;
use crate::net::{EthernetHeader, VirtioNetHdr};
use crate::offload::{self, Action, Checksum, SegmentPlan};
use crate::queue::{broken, Cursor, RingRuntime, RingView};
use crate::ring::{ChainHead, DeviceRing};
use crate::snapshot::PortSnapshot;
use crate::stats::{DropReason, QueueStats};
use crate::switch::{Destination, Switch};

/// Descriptor chains taken from a ring per burst.
pub const BURST: u16 = 32;
const BURST_LEN: usize = BURST as usize;
/// Segments one chain (or one merged RX packet) may span.
const MAX_CHAIN_SEGMENTS: usize = 4096;
/// Segment space per burst: a burst ends early rather than refuse a chain for want of room.
const SEGMENT_SPACE: usize = 2 * MAX_CHAIN_SEGMENTS;
/// RX chains one packet may span with MRG_RXBUF.
const MAX_RX_CHAINS: usize = 512;
/// Default largest frame (after the virtio-net header) taken from a guest: a 64 KiB GSO
/// frame (IP total length 65535) behind an Ethernet header and one VLAN tag.
pub const DEFAULT_MAX_FRAME: u32 = 65_535 + 14 + 4;

/// Where a taken chain goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Verdict {
    /// Not classified yet.
    #[default]
    Pending,
    /// Dropped at the source, counted for this reason.
    Drop(DropReason),
    /// To one port.
    Port(usize),
    /// To every port but the source.
    Flood,
}

/// One chain taken from the TX ring in this burst.
#[derive(Clone, Copy, Debug, Default)]
struct Taken {
    head: ChainHead,
    /// Its segments: `scratch.src[segs.0..segs.1]`.
    segs: (usize, usize),
    /// Bytes of the chain, virtio-net header included.
    len: u64,
    verdict: Verdict,
    /// The checked offload header (all zero for a plain frame, the common case).
    vnet: VirtioNetHdr,
    /// The length a destination's MTU is checked against: the frame's, or for a TSO frame
    /// its longest segment's.
    mtu_len: u64,
}

/// RX chains reserved for one frame.
#[derive(Clone, Copy, Debug)]
struct Reserved {
    /// Index of the frame in `Scratch::taken`.
    frame: usize,
    /// Its RX segments: `scratch.dst[segs.0..segs.1]`.
    segs: (usize, usize),
    /// Its RX chains: `scratch.rx_chains[chains.0..chains.1]`.
    chains: (usize, usize),
}

/// Per-PMD scratch space, allocated once.
pub struct Scratch {
    taken: [Taken; BURST_LEN],
    src: Segments,
    dst: Segments,
    /// Reserved RX chains: head and capacity in bytes.
    rx_chains: Vec<(ChainHead, u64)>,
    reserved: Vec<Reserved>,
    /// Unicast destination ports of this burst, in first-seen order.
    destinations: Vec<usize>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            taken: [Taken::default(); BURST_LEN],
            src: Segments::with_capacity(SEGMENT_SPACE),
            dst: Segments::with_capacity(SEGMENT_SPACE),
            rx_chains: Vec::with_capacity(MAX_RX_CHAINS + BURST_LEN),
            reserved: Vec::with_capacity(BURST_LEN),
            destinations: Vec::with_capacity(BURST_LEN),
        }
    }
}

/// What a PMD needs to forward: the ports as it last loaded them, the switch, and its
/// own counters (`stats[port][ring]`).
pub struct Context<'a> {
    /// Each port's snapshot, `None` without a front-end.
    pub ports: &'a [Option<Arc<PortSnapshot>>],
    /// Forwarding decisions.
    pub switch: &'a Switch,
    /// This PMD's counters.
    pub stats: &'a [Vec<QueueStats>],
    /// Seconds, for FDB ageing.
    pub now: u64,
    /// Largest frame taken from a guest TX ring (bytes after the virtio-net header);
    /// longer ones are dropped as too long.
    pub max_frame: u32,
}

/// The burst being forwarded: its source ring's memory and header length.
struct Source<'m> {
    port: usize,
    ring: usize,
    memory: &'m GuestMemoryMap,
    header_len: u64,
}

/// Takes up to one burst from guest TX ring `tx` of port `src_port` and forwards it.
/// Returns the number of chains taken.
pub fn poll_tx(scratch: &mut Scratch, ctx: &Context<'_>, src_port: usize, tx: &RingRuntime) -> u32 {
    let Some(mut guard) = tx.shared.try_lock() else {
        return 0;
    };
    if tx.shared.broken() != 0 {
        return 0;
    }
    let cur = guard.cursor();
    let n = match tx.ring() {
        Some(RingView::Split(ring)) => forward_burst(scratch, ctx, src_port, tx, &ring, cur),
        Some(RingView::Packed(ring)) => forward_burst(scratch, ctx, src_port, tx, &ring, cur),
        None => {
            stop_ring(tx, broken::NO_MEMORY, src_port);
            0
        }
    };
    if n > 0 {
        guard.publish_position();
    }
    n
}

/// The stages over one burst of TX ring `tx`, whatever its layout.
fn forward_burst<R: DeviceRing>(
    scratch: &mut Scratch,
    ctx: &Context<'_>,
    src_port: usize,
    tx: &RingRuntime,
    ring: &R,
    cur: &mut Cursor,
) -> u32 {
    let ring_index = usize::from(tx.shared.index());
    let bound = match ring.poll(cur, BURST) {
        Ok(0) => return 0,
        Ok(n) => n,
        Err(why) => {
            stop_ring(tx, why, src_port);
            return 0;
        }
    };
    let source = Source {
        port: src_port,
        ring: ring_index,
        memory: tx.memory(),
        header_len: u64::from(tx.features.header_len),
    };
    let stats = &ctx.stats[src_port][ring_index];
    ring.prefetch_used(cur, if tx.features.in_order { 1 } else { bound });
    let n = take(scratch, ring, tx, cur, bound, &source, stats);
    if n == 0 {
        return 0;
    }
    classify(scratch, ctx, tx, n, &source, stats);
    deliver(scratch, ctx, n, &source);
    // Complete: TX buffers are only read, so every used length is 0.
    if tx.features.in_order {
        let descriptors = scratch.taken[..n]
            .iter()
            .map(|t| t.head.descriptors)
            .fold(0u16, u16::wrapping_add);
        ring.push_used_in_order(cur, scratch.taken[n - 1].head, n as u16, descriptors);
    } else {
        for t in &scratch.taken[..n] {
            ring.push_used(cur, t.head, 0);
        }
    }
    ring.suppress_kicks_after(cur, tx.features.event_idx);
    if ring.publish_used(cur, tx.features.event_idx) {
        tx.notify();
    }
    stats.packets.add(n as u64);
    n as u32
}

/// Marks a ring broken and logs why, once.
pub(crate) fn stop_ring(rt: &RingRuntime, why: u8, port: usize) {
    if rt.shared.mark_broken(why) {
        let what = match why {
            broken::AVAIL_JUMP => "avail index jumped beyond the ring size",
            broken::BAD_HEAD => "avail entry names a descriptor outside the table",
            broken::ENDLESS_CHAIN => "descriptor chain longer than the ring",
            _ => "ring not in its memory map",
        };
        tracing::error!(port, ring = rt.shared.index(), "{what}: ring stopped");
    }
}

/// Marks RX ring `rx` of `port` broken for the bad chain `id` the driver offered (a guest
/// that gives the switch bad buffers to fill gets no more frames), and logs it once.
pub(crate) fn stop_rx_ring_at_bad_chain(rx: &RingRuntime, port: usize, id: u16, e: ChainError) {
    if rx.shared.mark_broken(broken::BAD_HEAD) {
        tracing::error!(
            port,
            ring = rx.shared.index(),
            id,
            "bad RX descriptor chain: {e}: ring stopped"
        );
    }
}

/// Stages 1 and 2: up to `bound` chains taken and walked (their descriptors were
/// prefetched by the poll), each frame's first data line prefetched. Returns how many
/// chains the burst takes: fewer than `bound` when the driver made fewer available, at a
/// broken ring (stopped there) or when segment space runs out (the rest wait for the next
/// burst).
fn take<R: DeviceRing>(
    scratch: &mut Scratch,
    ring: &R,
    tx: &RingRuntime,
    cur: &mut Cursor,
    bound: u16,
    source: &Source<'_>,
    stats: &QueueStats,
) -> usize {
    scratch.src.clear();
    let mut n = 0;
    while n < usize::from(bound) {
        if n > 0 && scratch.src.room() < MAX_CHAIN_SEGMENTS {
            break;
        }
        let start = scratch.src.len();
        scratch.src.begin_chain(MAX_CHAIN_SEGMENTS);
        let chain = match ring.take(
            cur,
            source.memory,
            Direction::Readable,
            tx.features.indirect,
            &mut scratch.src,
        ) {
            Ok(Some(chain)) => chain,
            Ok(None) => break,
            Err(why) => {
                scratch.src.truncate(start);
                stop_ring(tx, why, source.port);
                break;
            }
        };
        let t = &mut scratch.taken[n];
        *t = Taken {
            head: chain.head,
            ..Taken::default()
        };
        n += 1;
        match chain.walked {
            Ok(()) => {
                t.segs = (start, scratch.src.len());
                t.len = scratch.src.total_len();
                prefetch_frame(source, &scratch.src.as_slice()[start..]);
            }
            Err(e) => {
                scratch.src.truncate(start);
                t.segs = (start, start);
                let reason = if e == ChainError::TooManyBytes {
                    DropReason::TooLong
                } else {
                    DropReason::BadDescriptor
                };
                t.verdict = Verdict::Drop(reason);
                if e != ChainError::TooManyBytes && tx.shared.first_error() {
                    tracing::warn!(
                        port = source.port,
                        ring = source.ring,
                        id = t.head.id,
                        "bad TX descriptor chain dropped: {e} (further ones counted, not logged)"
                    );
                }
                stats.drop(reason);
            }
        }
    }
    n
}

impl Taken {
    fn frame_len(&self, header_len: u64) -> u64 {
        self.len - header_len
    }

    /// True when the header asks for an offload: the one branch the plain path takes.
    #[inline]
    fn has_offload(&self) -> bool {
        self.vnet.flags | self.vnet.gso_type != 0
    }
}

/// Reads the start of a TX chain in one copy: the virtio-net header's first two bytes
/// (flags, gso_type: all a plain frame needs of it) and the Ethernet header behind the
/// `hdr`-byte net header. `None` if the chain is shorter.
#[inline]
fn read_head(
    memory: &GuestMemoryMap,
    segs: &[crate::memory::GuestRange],
    hdr: u64,
) -> Option<([u8; 2], [u8; EthernetHeader::LEN])> {
    const LONG: usize = VirtioNetHdr::LEN + EthernetHeader::LEN;
    const SHORT: usize = VirtioNetHdr::LEGACY_LEN + EthernetHeader::LEN;
    let mut eth = [0u8; EthernetHeader::LEN];
    let flags = if hdr == VirtioNetHdr::LEN as u64 {
        let b = copy::read_array::<LONG>(memory, segs, 0)?;
        eth.copy_from_slice(&b[VirtioNetHdr::LEN..]);
        [b[0], b[1]]
    } else {
        let b = copy::read_array::<SHORT>(memory, segs, 0)?;
        eth.copy_from_slice(&b[VirtioNetHdr::LEGACY_LEN..]);
        [b[0], b[1]]
    };
    Some((flags, eth))
}

/// Checks frame `t`'s virtio-net header against the source's offloads: the checked
/// header and the length the MTU applies to, or why the frame is dropped. `flags` are the
/// header's first two bytes (flags, gso_type): when both are zero (a plain frame, the
/// common case) nothing more is read.
fn check_offload(
    t: &Taken,
    flags: [u8; 2],
    segs: &[crate::memory::GuestRange],
    source: &Source<'_>,
    offloads: offload::Offloads,
) -> Result<(VirtioNetHdr, u64), DropReason> {
    let frame_len = t.frame_len(source.header_len);
    if flags == [0, 0] {
        return Ok((VirtioNetHdr::default(), frame_len));
    }
    // Both header forms start with the same 10 bytes; num_buffers means nothing on TX.
    let raw = copy::read_array::<{ VirtioNetHdr::LEGACY_LEN }>(source.memory, segs, 0)
        .ok_or(DropReason::Runt)?;
    let mut long = [0u8; VirtioNetHdr::LEN];
    long[..VirtioNetHdr::LEGACY_LEN].copy_from_slice(&raw);
    let vnet = offload::check_claim(&VirtioNetHdr::parse(&long), offloads, frame_len)?;
    if vnet.gso_type == offload::GSO_NONE {
        return Ok((vnet, frame_len));
    }
    // A TSO frame: its headers are parsed now so that a destination's MTU applies to its
    // segments, and a frame no one could segment is refused once, at the source.
    let mut head = [0u8; offload::MAX_HEADERS];
    let n = frame_len.min(offload::MAX_HEADERS as u64) as usize;
    if !copy::read(source.memory, segs, source.header_len, &mut head[..n]) {
        return Err(DropReason::Runt);
    }
    let plan = SegmentPlan::parse(&vnet, &head[..n], frame_len)?;
    Ok((vnet, plan.max_segment_len()))
}

/// Starts loading the first line of the frame (its Ethernet header) behind the virtio-net
/// header, which may fill the first buffer on its own.
#[inline]
fn prefetch_frame(source: &Source<'_>, segs: &[crate::memory::GuestRange]) {
    let mut at = source.header_len;
    for seg in segs.iter().take(2) {
        if at < u64::from(seg.len()) {
            if let Some(view) = source.memory.slice(seg) {
                view.prefetch(at as usize);
            }
            return;
        }
        at -= u64::from(seg.len());
    }
}

/// Stage 3: every walked frame's Ethernet header read and its destination decided.
fn classify(
    scratch: &mut Scratch,
    ctx: &Context<'_>,
    tx: &RingRuntime,
    n: usize,
    source: &Source<'_>,
    stats: &QueueStats,
) {
    let hdr = source.header_len;
    let (mut forwarded, mut bytes) = (0u64, 0u64);
    scratch.destinations.clear();
    for t in &mut scratch.taken[..n] {
        if t.verdict != Verdict::Pending {
            continue;
        }
        let segs = &scratch.src.as_slice()[t.segs.0..t.segs.1];
        let (flags, eth) = match read_head(source.memory, segs, hdr) {
            Some((flags, eth)) => (flags, Some(eth)),
            None => ([0, 0], None),
        };
        t.verdict = match eth {
            _ if t.len < hdr + EthernetHeader::LEN as u64 => Verdict::Drop(DropReason::Runt),
            None => Verdict::Drop(DropReason::Runt),
            Some(_) if t.frame_len(hdr) > u64::from(ctx.max_frame) => {
                Verdict::Drop(DropReason::TooLong)
            }
            Some(_) if !tx.enabled => Verdict::Drop(DropReason::RingDisabled),
            // The offload claim is checked before the switch decision, so that a frame
            // dropped for it teaches the FDB nothing.
            Some(eth) => match check_offload(t, flags, segs, source, tx.features.offloads) {
                Err(reason) => Verdict::Drop(reason),
                Ok((vnet, mtu_len)) => {
                    t.vnet = vnet;
                    t.mtu_len = mtu_len;
                    let eth = EthernetHeader::parse(&eth);
                    match ctx.switch.decide(source.port, eth.dst, eth.src, ctx.now) {
                        Destination::Nowhere => Verdict::Drop(DropReason::NoDestination),
                        Destination::Spoofed => Verdict::Drop(DropReason::Spoofed),
                        Destination::Port(p) => {
                            if !scratch.destinations.contains(&p) {
                                scratch.destinations.push(p);
                            }
                            Verdict::Port(p)
                        }
                        Destination::Flood => Verdict::Flood,
                    }
                }
            },
        };
        match t.verdict {
            Verdict::Drop(reason) => stats.drop(reason),
            _ => {
                forwarded += 1;
                bytes += t.frame_len(hdr);
            }
        }
    }
    stats.forwarded.add(forwarded);
    stats.bytes.add(bytes);
}

/// Stage 4: each destination port gets its frames of the burst, in burst order.
fn deliver(scratch: &mut Scratch, ctx: &Context<'_>, n: usize, source: &Source<'_>) {
    let flood = scratch.taken[..n]
        .iter()
        .any(|t| t.verdict == Verdict::Flood);
    if flood {
        // Rare on the fast path: every port but the source, in port order.
        for port in (0..ctx.ports.len()).filter(|&p| p != source.port) {
            deliver_to(scratch, ctx, n, source, port);
        }
    } else {
        for i in 0..scratch.destinations.len() {
            let port = scratch.destinations[i];
            deliver_to(scratch, ctx, n, source, port);
        }
    }
}

/// True when the `k`-th frame of the burst goes to `port`.
fn goes_to(t: &Taken, port: usize, source_port: usize) -> bool {
    match t.verdict {
        Verdict::Port(p) => p == port,
        Verdict::Flood => port != source_port,
        _ => false,
    }
}

/// Reserves, copies and publishes the frames of the burst bound for `port`, holding its
/// RX ring's busy flag once for all of them.
fn deliver_to(
    scratch: &mut Scratch,
    ctx: &Context<'_>,
    n: usize,
    source: &Source<'_>,
    port: usize,
) {
    let port_stats = &ctx.stats[port];
    let pairs = (port_stats.len() / 2).max(1);
    let queue = source.ring / 2;
    let ring_index = 2 * if queue < pairs { queue } else { queue % pairs };
    let stats = &port_stats[ring_index];
    let count = scratch.taken[..n]
        .iter()
        .filter(|t| goes_to(t, port, source.port))
        .count() as u64;
    let snapshot = ctx.ports[port].as_deref();
    // Read once per destination: each frame then costs one compare against it.
    let limit = snapshot.map_or(u64::MAX, PortSnapshot::frame_limit);
    let rx = match snapshot.and_then(|s| s.rings.get(ring_index)) {
        Some(Some(rx)) if rx.enabled && rx.shared.broken() == 0 => rx,
        _ => {
            // No front-end, ring not started, disabled or broken.
            stats.drops[DropReason::RxRingUnavailable as usize].add(count);
            return;
        }
    };
    let mut guard = rx.shared.lock();
    let cur = guard.cursor();
    match rx.ring() {
        Some(RingView::Split(ring)) => deliver_on(
            scratch, n, count, source, port, limit, rx, &ring, cur, stats,
        ),
        Some(RingView::Packed(ring)) => deliver_on(
            scratch, n, count, source, port, limit, rx, &ring, cur, stats,
        ),
        None => {
            stop_ring(rx, broken::NO_MEMORY, port);
            stats.drops[DropReason::RxRingUnavailable as usize].add(count);
            return;
        }
    }
    // GET_VRING_BASE reports every ring's position, RX included.
    guard.publish_position();
}

/// Reserves, copies and publishes the `frames` frames of the burst bound for `port` on its
/// RX ring `ring`, whatever its layout. Frames longer than `limit` (what the port's MTU
/// allows, see [`PortSnapshot::frame_limit`]) are dropped as `over_mtu`.
#[allow(clippy::too_many_arguments)]
fn deliver_on<R: DeviceRing>(
    scratch: &mut Scratch,
    n: usize,
    frames: u64,
    source: &Source<'_>,
    port: usize,
    limit: u64,
    rx: &RingRuntime,
    ring: &R,
    cur: &mut Cursor,
    stats: &QueueStats,
) {
    scratch.dst.clear();
    scratch.rx_chains.clear();
    scratch.reserved.clear();
    ring.prefetch_used(cur, frames as u16);
    // Once the ring has no buffer left, or broke, the rest of the group is dropped for the
    // same reason without touching the ring again.
    let mut exhausted: Option<DropReason> = None;
    for k in 0..n {
        if !goes_to(&scratch.taken[k], port, source.port) {
            continue;
        }
        let t = &scratch.taken[k];
        let frame_len = t.frame_len(source.header_len);
        let segment =
            t.has_offload() && offload::action(&t.vnet, rx.features.offloads) == Action::Segment;
        if t.mtu_len > limit {
            stats.drop(DropReason::OverMtu);
            continue;
        }
        if let Some(reason) = exhausted {
            stats.drop(reason);
            continue;
        }
        if segment {
            // Rare: the frames reserved before it go first, in order.
            copy_reserved(scratch, rx, ring, cur, source, stats);
            let to = (port, limit);
            if let Err(reason) = deliver_segments(scratch, rx, ring, cur, k, source, to, stats) {
                stats.drop(reason);
                if !matches!(
                    reason,
                    DropReason::TooBig | DropReason::BadOffload | DropReason::OverMtu
                ) {
                    exhausted = Some(reason);
                }
            }
            continue;
        }
        if scratch.dst.room() < MAX_CHAIN_SEGMENTS
            || scratch.rx_chains.capacity() - scratch.rx_chains.len() < MAX_RX_CHAINS
        {
            copy_reserved(scratch, rx, ring, cur, source, stats);
        }
        let need = u64::from(rx.features.header_len) + frame_len;
        match reserve(scratch, rx, ring, cur, k, need, port) {
            Ok(()) => {}
            Err(reason) => {
                stats.drop(reason);
                if reason != DropReason::TooBig {
                    exhausted = Some(reason);
                }
            }
        }
    }
    copy_reserved(scratch, rx, ring, cur, source, stats);
    if ring.publish_used(cur, rx.features.event_idx) {
        rx.notify();
    }
}

/// Reserves RX chains of `need` bytes for frame `k` (its header and bytes, or one of its
/// segments), walking them into `scratch.dst` and prefetching each one's first line. On
/// failure nothing is consumed.
fn reserve<R: DeviceRing>(
    scratch: &mut Scratch,
    rx: &RingRuntime,
    ring: &R,
    cur: &mut Cursor,
    k: usize,
    need: u64,
    port: usize,
) -> Result<(), DropReason> {
    let memory = rx.memory();
    let (start_cursor, start_seg, start_chain) = (*cur, scratch.dst.len(), scratch.rx_chains.len());
    let undo = |scratch: &mut Scratch, cur: &mut Cursor| {
        *cur = start_cursor;
        scratch.dst.truncate(start_seg);
        scratch.rx_chains.truncate(start_chain);
    };
    scratch.dst.begin_chain(MAX_CHAIN_SEGMENTS);
    let mut capacity = 0u64;
    while capacity < need {
        if scratch.rx_chains.len() - start_chain == MAX_RX_CHAINS {
            undo(scratch, cur);
            return Err(DropReason::TooBig);
        }
        let seg_start = scratch.dst.len();
        let before = scratch.dst.total_len();
        let chain = match ring.take(
            cur,
            memory,
            Direction::Writable,
            rx.features.indirect,
            &mut scratch.dst,
        ) {
            Ok(Some(chain)) => chain,
            Ok(None) => {
                undo(scratch, cur);
                return Err(DropReason::NoRxBuffer);
            }
            Err(why) => {
                undo(scratch, cur);
                stop_ring(rx, why, port);
                return Err(DropReason::RxRingUnavailable);
            }
        };
        if let Err(e) = chain.walked {
            undo(scratch, cur);
            stop_rx_ring_at_bad_chain(rx, port, chain.head.id, e);
            return Err(DropReason::RxBadDescriptor);
        }
        // The copy overwrites the buffer's first lines (header and frame), which the
        // driver's core last held: fetch them owned, not shared.
        if let Some(first) = scratch.dst.as_slice().get(seg_start) {
            if let Some(view) = memory.slice(first) {
                view.prefetch_write(0);
                if need > 64 {
                    view.prefetch_write(64);
                }
            }
        }
        let chain_len = scratch.dst.total_len() - before;
        capacity += chain_len;
        scratch.rx_chains.push((chain.head, chain_len));
        if !rx.features.mrg_rxbuf && capacity < need {
            undo(scratch, cur);
            return Err(DropReason::TooBig);
        }
    }
    scratch.reserved.push(Reserved {
        frame: k,
        segs: (start_seg, scratch.dst.len()),
        chains: (start_chain, scratch.rx_chains.len()),
    });
    Ok(())
}

/// Copies every reserved frame into its RX chains (virtio-net header, then the frame) and
/// returns the chains as used entries (published by the caller). Clears the reservations.
fn copy_reserved<R: DeviceRing>(
    scratch: &mut Scratch,
    rx: &RingRuntime,
    ring: &R,
    cur: &mut Cursor,
    source: &Source<'_>,
    stats: &QueueStats,
) {
    let memory = rx.memory();
    let hdr = u64::from(rx.features.header_len);
    for r in &scratch.reserved {
        let t = &scratch.taken[r.frame];
        let frame_len = t.frame_len(source.header_len);
        let dst = &scratch.dst.as_slice()[r.segs.0..r.segs.1];
        let chains = &scratch.rx_chains[r.chains.0..r.chains.1];
        let num_buffers = chains.len() as u16;
        // A plain frame (the common case: one branch) gets a header all zero but
        // num_buffers (1 without MRG_RXBUF, as §5.1.6.4.1 requires). An offload header
        // passes unchanged to a guest that negotiated the offload; for one that did not,
        // the checksum is completed below (segmentation never comes here).
        let action = if t.has_offload() {
            offload::action(&t.vnet, rx.features.offloads)
        } else {
            Action::Plain
        };
        let header = if action == Action::PassThrough {
            VirtioNetHdr {
                num_buffers,
                ..t.vnet
            }
        } else {
            VirtioNetHdr::plain(num_buffers)
        };
        let mut copied = write_header(memory, dst, hdr, &header)
            && copy::chain_to_chain(
                source.memory,
                &scratch.src.as_slice()[t.segs.0..t.segs.1],
                source.header_len,
                memory,
                dst,
                hdr,
                frame_len,
            ) == frame_len;
        if copied && action == Action::CompleteChecksum {
            copied = complete_checksum(memory, dst, hdr, frame_len, &t.vnet);
            if copied {
                stats.csum_completed.add(1);
            }
        }
        // The chains were walked in `memory` and cover the length, so the copy cannot fall
        // short; should it anyway, the chains go back empty and the frame is counted lost.
        let mut left = if copied { hdr + frame_len } else { 0 };
        for &(head, chain_len) in chains {
            let used = left.min(chain_len);
            left -= used;
            ring.push_used(cur, head, used as u32);
        }
        if copied {
            stats.packets.add(1);
            stats.bytes.add(frame_len);
        } else {
            stats.drop(DropReason::RxBadDescriptor);
        }
    }
    scratch.reserved.clear();
    scratch.dst.clear();
    scratch.rx_chains.clear();
}

/// Writes `header` at the start of RX chain `dst` in the destination's form: 12 bytes, or
/// the legacy 10 (without num_buffers). False if the chain is shorter.
#[inline]
fn write_header(
    memory: &GuestMemoryMap,
    dst: &[crate::memory::GuestRange],
    hdr: u64,
    header: &VirtioNetHdr,
) -> bool {
    let header = header.emit();
    if hdr == VirtioNetHdr::LEN as u64 {
        copy::write_array(memory, dst, &header)
    } else {
        let mut legacy = [0u8; VirtioNetHdr::LEGACY_LEN];
        legacy.copy_from_slice(&header[..VirtioNetHdr::LEGACY_LEN]);
        copy::write_array(memory, dst, &legacy)
    }
}

/// Completes the partial checksum of a frame already copied into RX chain `dst` (behind a
/// `hdr`-byte header): the ones' complement sum from `csum_start` to the end of the frame,
/// which includes the pseudo-header sum the sender seeded the checksum field with, stored
/// at `csum_start + csum_offset` (inside the frame: checked at the source). Summed over the
/// destination's copy, so the source cannot change the bytes after they were summed.
fn complete_checksum(
    memory: &GuestMemoryMap,
    dst: &[crate::memory::GuestRange],
    hdr: u64,
    frame_len: u64,
    vnet: &VirtioNetHdr,
) -> bool {
    let start = u64::from(vnet.csum_start);
    let mut sum = Checksum::default();
    copy::checksum(memory, dst, hdr + start, frame_len - start, &mut sum)
        && copy::write(
            memory,
            dst,
            hdr + start + u64::from(vnet.csum_offset),
            &sum.finish().to_be_bytes(),
        )
}

/// Cuts TSO frame `k` into segments for a destination that cannot take it, each written
/// straight into its own RX chains: headers rebuilt from a copy of the frame's headers
/// ([`SegmentPlan::segment_headers`]), payload copied from the source, the TCP checksum
/// summed over the destination's copy. `to` is the destination port and its frame limit
/// ([`PortSnapshot::frame_limit`]). Counts the frame delivered once all of its segments
/// are; on failure returns why (segments already delivered stay delivered: a receiver sees
/// a TCP segment loss, which TCP repairs).
#[allow(clippy::too_many_arguments)]
fn deliver_segments<R: DeviceRing>(
    scratch: &mut Scratch,
    rx: &RingRuntime,
    ring: &R,
    cur: &mut Cursor,
    k: usize,
    source: &Source<'_>,
    to: (usize, u64),
    stats: &QueueStats,
) -> Result<(), DropReason> {
    let (port, limit) = to;
    let t = scratch.taken[k];
    let memory = rx.memory();
    let hdr = u64::from(rx.features.header_len);
    let frame_len = t.frame_len(source.header_len);
    // Copy, then validate: the headers are read from the source once more (it may have
    // changed them since classification) and parsed again from our copy, which alone is
    // used from here on.
    let mut head = [0u8; offload::MAX_HEADERS];
    let n = frame_len.min(offload::MAX_HEADERS as u64) as usize;
    let src_segs = (t.segs.0, t.segs.1);
    if !copy::read(
        source.memory,
        &scratch.src.as_slice()[src_segs.0..src_segs.1],
        source.header_len,
        &mut head[..n],
    ) {
        return Err(DropReason::BadOffload);
    }
    let plan = SegmentPlan::parse(&t.vnet, &head[..n], frame_len)?;
    // The source may have grown its headers since the MTU was checked at classification.
    if plan.max_segment_len() > limit {
        return Err(DropReason::OverMtu);
    }
    let mut out = [0u8; offload::MAX_HEADERS];
    let headers = plan.headers as u64;
    for i in 0..plan.segments() {
        let payload = u64::from(plan.segment_payload(i));
        reserve(scratch, rx, ring, cur, k, hdr + headers + payload, port)?;
        let Some(r) = scratch.reserved.pop() else {
            return Err(DropReason::RxBadDescriptor);
        };
        let src = &scratch.src.as_slice()[src_segs.0..src_segs.1];
        let dst = &scratch.dst.as_slice()[r.segs.0..r.segs.1];
        let chains = &scratch.rx_chains[r.chains.0..r.chains.1];
        let mut sum = plan.segment_headers(&head, i, &mut out);
        let src_off = source.header_len + headers + u64::from(i) * u64::from(plan.mss);
        let ok = write_header(memory, dst, hdr, &VirtioNetHdr::plain(chains.len() as u16))
            && copy::chain_to_chain(
                source.memory,
                src,
                src_off,
                memory,
                dst,
                hdr + headers,
                payload,
            ) == payload
            && copy::checksum(memory, dst, hdr + headers, payload, &mut sum);
        let csum_at = plan.l4 + 16;
        out[csum_at..csum_at + 2].copy_from_slice(&sum.finish().to_be_bytes());
        let ok = ok && copy::write(memory, dst, hdr, &out[..plan.headers]);
        let mut left = if ok { hdr + headers + payload } else { 0 };
        for &(head, chain_len) in chains {
            let used = left.min(chain_len);
            left -= used;
            ring.push_used(cur, head, used as u32);
        }
        scratch.dst.clear();
        scratch.rx_chains.clear();
        if !ok {
            return Err(DropReason::RxBadDescriptor);
        }
    }
    stats.packets.add(1);
    stats.bytes.add(frame_len);
    stats.segmented.add(1);
    Ok(())
}
