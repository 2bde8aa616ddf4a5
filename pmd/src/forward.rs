//! The fast path: take a burst from a guest TX ring, switch each frame, copy it once
//! straight into the destination guest's RX buffers, publish used entries once per burst.
//!
//! Nothing here allocates or blocks: scratch space is preallocated per PMD, counters are
//! single-writer, and the only synchronisation is each ring's busy flag (uncontended with
//! one PMD; several PMDs may deliver into the same guest RX ring).
//!
//! Guest memory is reached only through [`crate::memory`] views and the [`crate::copy`]
//! engine; headers through the typed views of [`crate::net`].
#![forbid(unsafe_code)]

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crate::copy;
use crate::memory::GuestMemoryMap;
use crate::net::{EthernetHeader, VirtioNetHdr};
use crate::queue::{broken, Cursor, RingGuard, RingRuntime};
use crate::snapshot::PortSnapshot;
use crate::split::chain::{self, Direction, Segments};
use crate::split::raw::{SplitRing, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT};
use crate::stats::{DropReason, QueueStats};
use crate::switch::{Destination, Switch};

/// Descriptor chains taken from a ring per burst.
pub const BURST: u16 = 32;
/// Segments one chain (or one merged RX packet) may span.
const MAX_SEGMENTS: usize = 4096;
/// RX chains one packet may span with MRG_RXBUF.
const MAX_RX_CHAINS: usize = 512;
/// Default largest frame (after the virtio-net header) taken from a guest: a 64 KiB GSO
/// frame (IP total length 65535) behind an Ethernet header and one VLAN tag.
pub const DEFAULT_MAX_FRAME: u32 = 65_535 + 14 + 4;

/// Per-PMD scratch space, allocated once.
pub struct Scratch {
    src: Segments,
    dst: Segments,
    chains: Vec<(u16, usize, u64)>,
    touched: Vec<(usize, usize)>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            src: Segments::with_capacity(MAX_SEGMENTS),
            dst: Segments::with_capacity(MAX_SEGMENTS),
            chains: Vec::with_capacity(MAX_RX_CHAINS),
            touched: Vec::with_capacity(64),
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

/// Starts loading the first bytes of the frame in chain `head` (its MAC addresses).
#[inline(always)]
fn prefetch_data(ring: &SplitRing<'_>, memory: &GuestMemoryMap, head: u16, hdr: u64) {
    if let Some(d) = ring.descriptor(head) {
        if d.flags & DESC_F_INDIRECT == 0 {
            if let Some(first) = memory.translate_gpa_prefix(d.addr) {
                // The header may fill a short first buffer; then the frame is in the next.
                if let Some(view) = memory.slice(&first) {
                    view.prefetch(hdr as usize);
                }
            }
        }
    }
}

/// `vring_need_event` (virtio 1.2 §2.7.10): did `new` pass `event` since `old`?
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Publishes the used entries written since the last flush and interrupts the guest if
/// it asked to be (at most once per call).
fn flush_used(rt: &RingRuntime, ring: &SplitRing<'_>, cur: &mut Cursor) {
    let (old, new) = (cur.published_used, cur.next_used);
    if old == new {
        return;
    }
    ring.store_used_idx(new);
    cur.published_used = new;
    // The driver writes its flags / used_event and then reads used.idx; we write used.idx
    // and then read its flags: both sides need a full barrier in between.
    fence(Ordering::SeqCst);
    let wanted = if rt.features.event_idx {
        need_event(ring.used_event(), new, old)
    } else {
        ring.avail_flags() & AVAIL_F_NO_INTERRUPT == 0
    };
    if wanted {
        rt.notify();
    }
}

/// Takes up to one burst from guest TX ring `tx` of port `src_port` and forwards it.
/// Returns the number of chains taken.
pub fn poll_tx<'a>(
    scratch: &mut Scratch,
    ctx: &Context<'a>,
    src_port: usize,
    tx: &RingRuntime,
) -> u32 {
    let Some(mut guard) = tx.shared.try_lock() else {
        return 0;
    };
    if tx.shared.broken() != 0 {
        return 0;
    }
    let ring_index = usize::from(tx.shared.index());
    let Some(raw) = tx.ring() else {
        if tx.shared.mark_broken(broken::NO_MEMORY) {
            tracing::error!(
                port = src_port,
                ring = ring_index,
                "ring not in its memory map: ring stopped"
            );
        }
        return 0;
    };
    let mem = tx.memory();
    let size = raw.size();
    let avail = raw.avail_idx();
    let cur = guard.cursor();
    let pending = avail.wrapping_sub(cur.last_avail);
    if pending == 0 {
        return 0;
    }
    if pending > size {
        if tx.shared.mark_broken(broken::AVAIL_JUMP) {
            tracing::error!(
                port = src_port,
                ring = ring_index,
                avail,
                last = cur.last_avail,
                "avail index jumped beyond the ring size: ring stopped"
            );
        }
        return 0;
    }
    let stats = &ctx.stats[src_port][ring_index];
    let queue = ring_index / 2;
    let hdr = u64::from(tx.features.header_len);
    let mut taken = 0u32;
    let (mut bytes, mut forwarded) = (0u64, 0u64);
    scratch.touched.clear();
    let mut held: Option<Held<'a>> = None;
    let burst = pending.min(BURST);
    // Start every descriptor of the burst loading at once, and the first frame's data.
    for k in 0..burst {
        raw.prefetch_descriptor(raw.avail_entry(cur.last_avail.wrapping_add(k)));
    }
    prefetch_data(&raw, mem, raw.avail_entry(cur.last_avail), hdr);
    for k in 0..burst {
        // While this frame is handled, the next one's data is on its way.
        if k + 1 < burst {
            prefetch_data(
                &raw,
                mem,
                raw.avail_entry(cur.last_avail.wrapping_add(1)),
                hdr,
            );
        }
        let head = raw.avail_entry(cur.last_avail);
        if head >= size {
            if tx.shared.mark_broken(broken::BAD_HEAD) {
                tracing::error!(
                    port = src_port,
                    ring = ring_index,
                    head,
                    "avail entry names a descriptor outside the table: ring stopped"
                );
            }
            break;
        }
        cur.last_avail = cur.last_avail.wrapping_add(1);
        taken += 1;
        match chain::walk(
            &raw,
            mem,
            head,
            Direction::Readable,
            tx.features.indirect,
            &mut scratch.src,
        ) {
            Err(chain::ChainError::TooManyBytes) => stats.drop(DropReason::TooLong),
            Err(e) => {
                stats.drop(DropReason::BadDescriptor);
                if tx.shared.first_error() {
                    tracing::warn!(
                        port = src_port,
                        ring = ring_index,
                        head,
                        "bad TX descriptor chain dropped: {e} (further ones counted, not logged)"
                    );
                }
            }
            Ok(()) => {
                let total = scratch.src.total_len();
                let eth =
                    copy::read_array::<{ EthernetHeader::LEN }>(mem, scratch.src.as_slice(), hdr);
                if total < hdr + EthernetHeader::LEN as u64 || eth.is_none() {
                    stats.drop(DropReason::Runt);
                } else if total - hdr > u64::from(ctx.max_frame) {
                    stats.drop(DropReason::TooLong);
                } else if !tx.enabled {
                    stats.drop(DropReason::RingDisabled);
                } else {
                    let frame_len = total - hdr;
                    let eth = EthernetHeader::parse(&eth.unwrap_or_default());
                    let frame = Frame {
                        memory: mem,
                        header_len: hdr,
                        len: frame_len,
                    };
                    match ctx.switch.decide(src_port, eth.dst, eth.src, ctx.now) {
                        Destination::Nowhere => stats.drop(DropReason::NoDestination),
                        Destination::Spoofed => stats.drop(DropReason::Spoofed),
                        Destination::Port(p) => {
                            forwarded += 1;
                            bytes += frame_len;
                            deliver(scratch, ctx, &mut held, p, queue, &frame);
                        }
                        Destination::Flood => {
                            forwarded += 1;
                            bytes += frame_len;
                            for p in (0..ctx.ports.len()).filter(|&p| p != src_port) {
                                deliver(scratch, ctx, &mut held, p, queue, &frame);
                            }
                        }
                    }
                }
            }
        }
        // TX buffers are only read: the used length is 0.
        raw.write_used(cur.next_used, head, 0);
        cur.next_used = cur.next_used.wrapping_add(1);
    }
    stats.packets.add(u64::from(taken));
    stats.forwarded.add(forwarded);
    stats.bytes.add(bytes);
    if tx.features.event_idx {
        // Keep avail_event just behind the driver: it never needs to kick a poller.
        raw.set_avail_event(cur.last_avail.wrapping_sub(1));
    }
    flush_used(tx, &raw, cur);
    guard.publish_last_avail();
    drop(guard);
    if let Some(mut h) = held.take() {
        flush_used(h.rx, &h.ring, h.guard.cursor());
        h.guard.publish_last_avail();
    }
    flush_touched(scratch, ctx);
    taken
}

/// The frame being forwarded: in `scratch.src`, after `header_len` bytes of virtio-net
/// header, in the source guest's `memory`.
struct Frame<'m> {
    memory: &'m GuestMemoryMap,
    header_len: u64,
    len: u64,
}

/// Publishes the used entries of every guest RX ring this burst delivered into.
fn flush_touched(scratch: &mut Scratch, ctx: &Context<'_>) {
    for &(port, ring) in &scratch.touched {
        if let Some(Some(rx)) = ctx.ports[port].as_ref().and_then(|s| s.rings.get(ring)) {
            flush_rx(rx, &mut rx.shared.lock());
        }
    }
}

/// Publishes an RX ring's used entries and its avail position (GET_VRING_BASE reports
/// the position of every ring, RX included).
fn flush_rx(rx: &RingRuntime, guard: &mut RingGuard<'_>) {
    if let Some(ring) = rx.ring() {
        flush_used(rx, &ring, guard.cursor());
    }
    guard.publish_last_avail();
}

/// A destination RX ring whose busy flag this burst holds, with its view: consecutive
/// frames to the same guest take both once, not once per frame.
struct Held<'a> {
    port: usize,
    index: usize,
    rx: &'a RingRuntime,
    ring: SplitRing<'a>,
    guard: RingGuard<'a>,
}

/// Offers `frame` to port `port`.
fn deliver<'a>(
    scratch: &mut Scratch,
    ctx: &Context<'a>,
    held: &mut Option<Held<'a>>,
    port: usize,
    queue: usize,
    frame: &Frame<'_>,
) {
    let port_stats = &ctx.stats[port];
    let ring_index = 2 * (queue % (port_stats.len() / 2).max(1));
    let stats = &port_stats[ring_index];
    let same = matches!(held, Some(h) if h.port == port && h.index == ring_index);
    if !same {
        let Some(snap) = ctx.ports[port].as_ref() else {
            // No front-end on that port.
            return stats.drop(DropReason::RxRingUnavailable);
        };
        let rx = match snap.rings.get(ring_index) {
            Some(Some(rx)) if rx.enabled && rx.shared.broken() == 0 => rx,
            _ => return stats.drop(DropReason::RxRingUnavailable),
        };
        let Some(ring) = rx.ring() else {
            rx.shared.mark_broken(broken::NO_MEMORY);
            return stats.drop(DropReason::RxRingUnavailable);
        };
        // Release the previous ring before taking the next: a PMD holds one at a time,
        // so two PMDs can never wait on each other.
        *held = None;
        *held = Some(Held {
            port,
            index: ring_index,
            rx,
            ring,
            guard: rx.shared.lock(),
        });
    }
    let Some(h) = held.as_mut() else { return };
    match fill_rx(scratch, h.rx, &h.ring, &mut h.guard, port, frame) {
        Ok(()) => {
            stats.packets.add(1);
            stats.bytes.add(frame.len);
            if !scratch.touched.contains(&(port, ring_index)) {
                if scratch.touched.len() < scratch.touched.capacity() {
                    scratch.touched.push((port, ring_index));
                } else {
                    flush_used(h.rx, &h.ring, h.guard.cursor());
                    h.guard.publish_last_avail();
                }
            }
        }
        Err(reason) => {
            stats.drop(reason);
            if h.rx.shared.broken() != 0 {
                *held = None;
            }
        }
    }
}

/// Reserves RX chains for the header and `frame`, writes both, and writes (unpublished)
/// used entries. On failure nothing was consumed.
fn fill_rx(
    scratch: &mut Scratch,
    rx: &RingRuntime,
    raw: &SplitRing<'_>,
    guard: &mut RingGuard<'_>,
    port: usize,
    frame: &Frame<'_>,
) -> Result<(), DropReason> {
    let mem = rx.memory();
    let size = raw.size();
    let hdr = u64::from(rx.features.header_len);
    let need = hdr + frame.len;
    let cur = guard.cursor();
    let start_avail = cur.last_avail;
    scratch.dst.clear();
    scratch.chains.clear();
    let mut capacity = 0u64;
    while capacity < need {
        if scratch.chains.len() == scratch.chains.capacity() {
            cur.last_avail = start_avail;
            return Err(DropReason::TooBig);
        }
        if cur.last_avail == cur.cached_avail {
            cur.cached_avail = raw.avail_idx();
            if cur.cached_avail.wrapping_sub(cur.last_avail) > size {
                if rx.shared.mark_broken(broken::AVAIL_JUMP) {
                    tracing::error!(
                        port,
                        ring = rx.shared.index(),
                        "RX avail index jumped beyond the ring size: ring stopped"
                    );
                }
                cur.last_avail = start_avail;
                return Err(DropReason::RxRingUnavailable);
            }
            if cur.last_avail == cur.cached_avail {
                cur.last_avail = start_avail;
                return Err(DropReason::NoRxBuffer);
            }
            // New buffers: fetch their descriptors together, not one miss per frame.
            let fresh = cur.cached_avail.wrapping_sub(cur.last_avail).min(BURST);
            for k in 0..fresh {
                raw.prefetch_descriptor(raw.avail_entry(cur.last_avail.wrapping_add(k)));
            }
        }
        let head = raw.avail_entry(cur.last_avail);
        let seg_start = scratch.dst.as_slice().len();
        let walked = if head >= size {
            Err(chain::ChainError::IndexOutOfRange(head))
        } else {
            chain::walk_append(
                raw,
                mem,
                head,
                Direction::Writable,
                rx.features.indirect,
                &mut scratch.dst,
            )
        };
        if let Err(e) = walked {
            if rx.shared.mark_broken(broken::BAD_HEAD) {
                tracing::error!(
                    port,
                    ring = rx.shared.index(),
                    head,
                    "bad RX descriptor chain: {e}: ring stopped"
                );
            }
            cur.last_avail = start_avail;
            return Err(DropReason::RxBadDescriptor);
        }
        cur.last_avail = cur.last_avail.wrapping_add(1);
        let chain_len: u64 = scratch.dst.as_slice()[seg_start..]
            .iter()
            .map(|s| u64::from(s.len()))
            .sum();
        capacity += chain_len;
        scratch
            .chains
            .push((head, scratch.dst.as_slice().len(), chain_len));
        if !rx.features.mrg_rxbuf && capacity < need {
            cur.last_avail = start_avail;
            return Err(DropReason::TooBig);
        }
    }
    // No offloads are negotiated, so the header is all zero but num_buffers (1 without
    // MRG_RXBUF, as §5.1.6.4.1 requires); the legacy form stops before num_buffers.
    let header = VirtioNetHdr::plain(scratch.chains.len() as u16).emit();
    let dst = scratch.dst.as_slice();
    let header_written = if hdr == VirtioNetHdr::LEN as u64 {
        copy::write_array(mem, dst, &header)
    } else {
        let mut legacy = [0u8; VirtioNetHdr::LEGACY_LEN];
        legacy.copy_from_slice(&header[..VirtioNetHdr::LEGACY_LEN]);
        copy::write_array(mem, dst, &legacy)
    };
    let copied = header_written
        && copy::chain_to_chain(
            frame.memory,
            scratch.src.as_slice(),
            frame.header_len,
            mem,
            dst,
            hdr,
            frame.len,
        ) == frame.len;
    if !copied {
        // Cannot happen: the chains were walked in `mem` and cover `need` bytes. Should it
        // anyway, nothing is consumed.
        cur.last_avail = start_avail;
        return Err(DropReason::RxBadDescriptor);
    }
    let mut left = need;
    for &(head, _, chain_len) in &scratch.chains {
        let used = left.min(chain_len);
        left -= used;
        raw.write_used(cur.next_used, head, used as u32);
        cur.next_used = cur.next_used.wrapping_add(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_examples() {
        // Driver asked to be told once used passes 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(10, 6, 3));
        // Across the 16-bit wrap.
        assert!(need_event(65535, 1, 65530));
    }
}
