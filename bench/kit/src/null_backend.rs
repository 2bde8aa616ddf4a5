//! An in-process null device: the device side of virtio-net rings (split or packed) living
//! in this process's memory, so that the generator's TX and RX paths can run without a
//! backend process (`vhost-pktgen selftest`, unit tests).
//!
//! Each port's transmitq is consumed (chains completed with len 0); what it carried is either
//! dropped ([`Route::Sink`]) or copied into the receiveq of a port ([`Route::Port`], the
//! port itself for a loopback) with a net header (num_buffers set with MRG_RXBUF), as a
//! vhost-user switch would. One [`NullBackend::poll`] moves at most a burst per port and
//! publishes each used ring once. It can run on the generator's thread (call `poll` between
//! generator iterations) or on a thread of its own (it is `Send`). With VIRTIO_F_IN_ORDER it
//! returns each burst of TX chains with one used entry (the last chain's), as DPDK's vhost
//! does on packed rings, so that the driver's batch handling runs too.
//!
//! The rings are read as untrusted input: indexes, descriptor addresses and lengths are
//! checked; a bad chain is counted and skipped, never panicked on. Indirect descriptors
//! are not supported (counted as bad chains).

use std::sync::atomic::Ordering;

use crate::driver::net::net_hdr_len;
use crate::driver::packed::{
    self, PackedDesc, PackedRing, RING_EVENT_FLAGS_DISABLE, VIRTQ_DESC_F_INDIRECT,
};
use crate::driver::split::{
    SplitRing, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use crate::error::{Error, Result};
use crate::memory::SharedMemory;
use crate::sequences::bits::{F_IN_ORDER, NET_F_MRG_RXBUF};
use crate::vring::{RingLayout, Vring};

/// Most descriptors of a TX chain the null device walks.
const MAX_TX_SEGS: usize = 16;
/// Most RX buffers one frame may take (MRG_RXBUF).
const MAX_RX_BUFS: usize = 64;

/// Where a port's transmitted frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Completed and dropped.
    Sink,
    /// Delivered into this port's receive ring (may be the sending port itself).
    Port(usize),
}

/// Counters of one port of the null device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NullStats {
    /// TX chains completed.
    pub tx_taken: u64,
    /// Frames delivered into this port's RX ring.
    pub delivered: u64,
    /// Frames from this port dropped: no route, or not enough RX buffers at the destination.
    pub dropped: u64,
    /// Malformed chains (bad index, address, length, indirect, too long).
    pub bad_chains: u64,
}

/// One buffer of a chain as the device read it.
#[derive(Debug, Clone, Copy, Default)]
struct Buf {
    /// Guest physical address (`forward_one` turns it into an offset in the memory).
    gpa: u64,
    len: u32,
    writable: bool,
}

/// A chain taken from a ring: its id, the ring slots it took (packed), how many of its
/// buffers were stored, and whether it is one the null device can use.
#[derive(Debug, Clone, Copy)]
struct Taken {
    id: u16,
    ndesc: u16,
    nbufs: usize,
    ok: bool,
}

/// Used entries held back to be returned as one (IN_ORDER): the used position of the
/// first, the last chain's id and len, chains and ring slots covered.
#[derive(Debug, Clone, Copy)]
struct Batch {
    at: (u16, bool),
    id: u16,
    len: u32,
    chains: u16,
    slots: u16,
}

/// The device side of one split ring.
struct SplitDev<'m> {
    ring: SplitRing<'m>,
    last_avail: u16,
    /// avail.idx as last read (refreshed when `last_avail` reaches it).
    avail_end: u16,
    used_idx: u16,
    dirty: bool,
}

impl<'m> SplitDev<'m> {
    fn new(mem: &'m SharedMemory, vring: &Vring) -> Result<Self> {
        let ring = SplitRing::new(mem, vring)?;
        // Relaxed: a hint the driver reads when deciding to kick; we poll.
        ring.used_flags
            .store(VRING_USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
        let used = u16::from_le(ring.used_idx.load(Ordering::Relaxed));
        Ok(SplitDev {
            last_avail: used,
            avail_end: used,
            used_idx: used,
            ring,
            dirty: false,
        })
    }

    /// Published chains not yet taken (0 if avail.idx is implausible).
    fn pending(&mut self) -> u16 {
        // Acquire: pairs with the driver's Release store of avail.idx; the entries and
        // descriptors it wrote before are visible after this load.
        let idx = u16::from_le(self.ring.avail_idx.load(Ordering::Acquire));
        let n = idx.wrapping_sub(self.last_avail);
        if n > self.ring.size {
            0
        } else {
            self.avail_end = idx;
            n
        }
    }

    /// Takes the next published chain, its buffers into `bufs`.
    #[inline]
    fn take(&mut self, bufs: &mut [Buf]) -> Option<Taken> {
        if self.last_avail == self.avail_end && self.pending() == 0 {
            return None;
        }
        let slot = usize::from(self.last_avail % self.ring.size);
        self.last_avail = self.last_avail.wrapping_add(1);
        // Relaxed: ordered after the Acquire load of avail.idx in `pending`.
        let head = u16::from_le(self.ring.avail_ring[slot].load(Ordering::Relaxed));
        let mut t = Taken {
            id: head,
            ndesc: 1,
            nbufs: 0,
            ok: head < self.ring.size,
        };
        if !t.ok {
            return Some(t);
        }
        let mut d = self.ring.read_desc(head);
        loop {
            if d.flags & !(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE) != 0 || t.nbufs == bufs.len() {
                t.ok = false;
                break;
            }
            bufs[t.nbufs] = Buf {
                gpa: d.addr,
                len: d.len,
                writable: d.flags & VIRTQ_DESC_F_WRITE != 0,
            };
            t.nbufs += 1;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            if d.next >= self.ring.size {
                t.ok = false;
                break;
            }
            d = self.ring.read_desc(d.next);
        }
        Some(t)
    }

    #[inline]
    fn cursor(&self) -> (u16, bool) {
        (self.last_avail, false)
    }

    #[inline]
    fn rewind(&mut self, c: (u16, bool)) {
        self.last_avail = c.0;
    }

    fn used_pos(&self) -> (u16, bool) {
        (self.used_idx, false)
    }

    /// Writes a used entry for `n` chains at `at` (the last one's id and len).
    #[inline]
    fn write_used(&mut self, at: (u16, bool), id: u16, len: u32, n: u16) {
        let slot = usize::from(at.0 % self.ring.size);
        // Relaxed: published by the Release store of used.idx in `publish`.
        self.ring.used_ring[2 * slot].store(u32::from(id).to_le(), Ordering::Relaxed);
        self.ring.used_ring[2 * slot + 1].store(len.to_le(), Ordering::Relaxed);
        self.used_idx = self.used_idx.wrapping_add(n);
        self.dirty = true;
    }

    fn publish(&mut self) {
        if self.dirty {
            // Release: the used entries and the buffer data written before become visible
            // to the driver's Acquire load of used.idx.
            self.ring
                .used_idx
                .store(self.used_idx.to_le(), Ordering::Release);
            self.dirty = false;
        }
    }
}

/// The device side of one packed ring.
struct PackedDev<'m> {
    ring: PackedRing<'m>,
    /// Next slot to read and the driver's wrap counter there.
    avail: (u16, bool),
    /// Next slot to write a used descriptor and its wrap counter.
    used: (u16, bool),
    /// The first used descriptor since the last publication: index of its second word and
    /// the value held back, so that the driver sees the whole burst at once (a frame's
    /// merged buffers are never seen in part).
    held: Option<(usize, u64)>,
}

impl<'m> PackedDev<'m> {
    fn new(mem: &'m SharedMemory, vring: &Vring) -> Result<Self> {
        let ring = PackedRing::new(mem, vring)?;
        // Relaxed: a hint the driver reads when deciding to kick; we poll.
        ring.device_event.store(
            packed::event_word(0, RING_EVENT_FLAGS_DISABLE),
            Ordering::Relaxed,
        );
        Ok(PackedDev {
            ring,
            avail: (0, true),
            used: (0, true),
            held: None,
        })
    }

    fn step(&self, (pos, wrap): (u16, bool), by: u16) -> (u16, bool) {
        let p = u32::from(pos) + u32::from(by);
        let size = u32::from(self.ring.size);
        if p >= size {
            ((p - size) as u16, !wrap)
        } else {
            (p as u16, wrap)
        }
    }

    /// Takes the next available chain (consecutive slots linked by NEXT; the id from the
    /// last), its buffers into `bufs`. A chain whose later slots are not available yet is
    /// left alone (a driver releases the first slot last, so it cannot be seen half-made).
    #[inline]
    fn take(&mut self, bufs: &mut [Buf]) -> Option<Taken> {
        let mut at = self.avail;
        let mut t = Taken {
            id: 0,
            ndesc: 0,
            nbufs: 0,
            ok: true,
        };
        loop {
            // Acquire: pairs with the driver's Release store of the burst's first flags;
            // the other descriptors it wrote before are visible after it.
            let mut d = PackedDesc::from_words(0, self.ring.load_word1(at.0));
            if !packed::is_avail(d.flags, at.1) {
                return None;
            }
            d.addr = self.ring.read_desc(at.0).addr;
            t.ndesc += 1;
            at = self.step(at, 1);
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 || t.nbufs == bufs.len() {
                t.ok = false;
            } else if t.ok {
                bufs[t.nbufs] = Buf {
                    gpa: d.addr,
                    len: d.len,
                    writable: d.flags & VIRTQ_DESC_F_WRITE != 0,
                };
                t.nbufs += 1;
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 || t.ndesc == self.ring.size {
                // A chain as long as the ring is the driver's bug: end it there.
                t.ok &= d.flags & VIRTQ_DESC_F_NEXT == 0;
                t.id = d.id;
                break;
            }
        }
        self.avail = at;
        Some(t)
    }

    #[inline]
    fn cursor(&self) -> (u16, bool) {
        self.avail
    }

    #[inline]
    fn rewind(&mut self, c: (u16, bool)) {
        self.avail = c;
    }

    fn used_pos(&self) -> (u16, bool) {
        self.used
    }

    /// Writes a used descriptor at `at` for chains covering `slots` ring slots (the last
    /// one's id and len); the first of a burst waits for `publish`.
    #[inline]
    fn write_used(&mut self, at: (u16, bool), id: u16, len: u32, slots: u16) {
        let flags = packed::used_bits(at.1) | if len > 0 { VIRTQ_DESC_F_WRITE } else { 0 };
        let d = PackedDesc {
            addr: 0,
            len,
            id,
            flags,
        };
        let w = 2 * usize::from(at.0) + 1;
        if self.held.is_none() {
            self.held = Some((w, d.word1()));
        } else {
            // Relaxed: published by the Release store of the held descriptor.
            self.ring.desc[w].store(d.word1().to_le(), Ordering::Relaxed);
        }
        self.used = self.step(at, slots);
    }

    fn publish(&mut self) {
        if let Some((w, word1)) = self.held.take() {
            // Release: pairs with the driver's Acquire load of these flags; the other used
            // descriptors and the buffer data written before are visible after it.
            self.ring.desc[w].store(word1.to_le(), Ordering::Release);
        }
    }
}

/// The device side of one ring of either layout, with IN_ORDER batching of its used
/// entries when asked.
struct DevRing<'m> {
    kind: DevKind<'m>,
    batch: Option<Batch>,
}

enum DevKind<'m> {
    Split(SplitDev<'m>),
    Packed(PackedDev<'m>),
}

/// Runs `$body` with `$r` bound to the ring of whichever layout `$kind` holds.
macro_rules! dev {
    ($kind:expr, $r:ident => $body:expr) => {
        match $kind {
            DevKind::Split($r) => $body,
            DevKind::Packed($r) => $body,
        }
    };
}

impl<'m> DevRing<'m> {
    fn new(mem: &'m SharedMemory, vring: &Vring) -> Result<Self> {
        let kind = match vring.layout() {
            RingLayout::Split => DevKind::Split(SplitDev::new(mem, vring)?),
            RingLayout::Packed => DevKind::Packed(PackedDev::new(mem, vring)?),
        };
        Ok(DevRing { kind, batch: None })
    }

    /// Chains worth trying this round: split rings know, packed ones are read until empty.
    fn budget(&mut self, burst: usize) -> usize {
        match &mut self.kind {
            DevKind::Split(r) => usize::from(r.pending()).min(burst),
            DevKind::Packed(_) => burst,
        }
    }

    #[inline]
    fn take(&mut self, bufs: &mut [Buf]) -> Option<Taken> {
        dev!(&mut self.kind, r => r.take(bufs))
    }

    fn size(&self) -> u16 {
        dev!(&self.kind, r => r.ring.size)
    }

    #[inline]
    fn cursor(&self) -> (u16, bool) {
        dev!(&self.kind, r => r.cursor())
    }

    #[inline]
    fn rewind(&mut self, c: (u16, bool)) {
        dev!(&mut self.kind, r => r.rewind(c))
    }

    /// Returns chain `id` (of `ndesc` ring slots) with `len` bytes written, now (`batch`
    /// false) or as part of the batch `publish` writes (IN_ORDER).
    #[inline]
    fn push_used(&mut self, id: u16, ndesc: u16, len: u32, batch: bool) {
        if !batch {
            match &mut self.kind {
                DevKind::Split(r) => r.write_used(r.used_pos(), id, len, 1),
                DevKind::Packed(r) => r.write_used(r.used_pos(), id, len, ndesc),
            }
            return;
        }
        match &mut self.batch {
            Some(b) => {
                b.id = id;
                b.len = len;
                b.chains += 1;
                b.slots += ndesc;
            }
            None => {
                self.batch = Some(Batch {
                    at: dev!(&self.kind, r => r.used_pos()),
                    id,
                    len,
                    chains: 1,
                    slots: ndesc,
                })
            }
        }
    }

    fn publish(&mut self) {
        if let Some(b) = self.batch.take() {
            match &mut self.kind {
                DevKind::Split(r) => r.write_used(b.at, b.id, b.len, b.chains),
                DevKind::Packed(r) => r.write_used(b.at, b.id, b.len, b.slots),
            }
        }
        dev!(&mut self.kind, r => r.publish());
    }
}

/// One port of the null device.
struct NullPort<'m> {
    mem: &'m SharedMemory,
    rx: DevRing<'m>,
    tx: DevRing<'m>,
    hdr_len: usize,
    mrg: bool,
    in_order: bool,
    route: Route,
    stats: NullStats,
}

impl NullPort<'_> {
    /// Offset of guest address `gpa` with `len` bytes in the memory, if inside.
    fn offset(&self, gpa: u64, len: u32) -> Option<u64> {
        let off = gpa.checked_sub(self.mem.guest_phys_addr())?;
        let end = off.checked_add(u64::from(len))?;
        (end <= self.mem.size() as u64).then_some(off)
    }
}

/// An in-process null device over any number of ports (see the module docs).
pub struct NullBackend<'m> {
    ports: Vec<NullPort<'m>>,
    burst: usize,
    /// Per frame moved: the TX chain's buffers, and the RX buffers taken for it (chain id,
    /// ring slots, offset, capacity). Allocated once.
    tx_bufs: Vec<Buf>,
    rx_bufs: Vec<((u16, u16), u64, u32)>,
}

impl std::fmt::Debug for NullBackend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NullBackend")
            .field("ports", &self.ports.len())
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl<'m> NullBackend<'m> {
    /// A null device moving at most `burst` (≥ 1) frames per port per [`NullBackend::poll`].
    pub fn new(burst: usize) -> Self {
        NullBackend {
            ports: Vec::new(),
            burst: burst.max(1),
            tx_bufs: vec![Buf::default(); MAX_TX_SEGS],
            rx_bufs: Vec::with_capacity(MAX_RX_BUFS),
        }
    }

    /// Adds a port whose receive ring is `rx` and transmit ring `tx` in `mem` (split or
    /// packed), with the negotiated `features` (header length, MRG_RXBUF, IN_ORDER). The
    /// rings must be initialized by the driver first. Routes to [`Route::Sink`]; returns
    /// the port's index.
    pub fn add_port(
        &mut self,
        mem: &'m SharedMemory,
        rx: &Vring,
        tx: &Vring,
        features: u64,
    ) -> Result<usize> {
        self.ports.push(NullPort {
            mem,
            rx: DevRing::new(mem, rx)?,
            tx: DevRing::new(mem, tx)?,
            hdr_len: net_hdr_len(features),
            mrg: features & NET_F_MRG_RXBUF != 0,
            in_order: features & F_IN_ORDER != 0,
            route: Route::Sink,
            stats: NullStats::default(),
        });
        Ok(self.ports.len() - 1)
    }

    /// Sets where port `from`'s transmitted frames go.
    pub fn set_route(&mut self, from: usize, route: Route) -> Result<()> {
        if let Route::Port(to) = route {
            if to >= self.ports.len() {
                return Err(Error::InvalidArgument(format!("no port {to}")));
            }
        }
        let p = self
            .ports
            .get_mut(from)
            .ok_or_else(|| Error::InvalidArgument(format!("no port {from}")))?;
        p.route = route;
        Ok(())
    }

    /// Connects ports `a` and `b` both ways (a cross-connect).
    pub fn connect(&mut self, a: usize, b: usize) -> Result<()> {
        self.set_route(a, Route::Port(b))?;
        self.set_route(b, Route::Port(a))
    }

    /// The counters of port `i`.
    pub fn stats(&self, i: usize) -> Option<NullStats> {
        self.ports.get(i).map(|p| p.stats)
    }

    /// Moves at most a burst of frames per port; returns how many TX chains were taken.
    pub fn poll(&mut self) -> usize {
        let mut moved = 0;
        for i in 0..self.ports.len() {
            let n = self.ports[i].tx.budget(self.burst);
            for _ in 0..n {
                if !self.forward_one(i) {
                    break;
                }
                moved += 1;
            }
        }
        for p in &mut self.ports {
            p.tx.publish();
            p.rx.publish();
        }
        moved
    }

    /// Takes one TX chain of port `i`, delivers it per the route, completes it; false when
    /// none was available.
    fn forward_one(&mut self, i: usize) -> bool {
        let src = &mut self.ports[i];
        let bufs = &mut self.tx_bufs[..];
        let Some(t) = src.tx.take(bufs) else {
            return false;
        };
        if t.id >= src.tx.size() {
            // No valid id to complete: the chain is lost to the driver (its bug).
            src.stats.bad_chains += 1;
            return true;
        }
        // The buffers' guest addresses become offsets in the memory.
        let mut total = 0u64;
        let mut ok = t.ok;
        for b in bufs[..t.nbufs].iter_mut() {
            match src.offset(b.gpa, b.len) {
                Some(off) if !b.writable => {
                    b.gpa = off;
                    total += u64::from(b.len);
                }
                _ => ok = false,
            }
        }
        let hdr = src.hdr_len as u64;
        let in_order = src.in_order;
        src.tx.push_used(t.id, t.ndesc, 0, in_order);
        src.stats.tx_taken += 1;
        if !ok || total < hdr + 14 {
            src.stats.bad_chains += 1;
            return true;
        }
        let route = src.route;
        let src_mem = src.mem;
        match route {
            Route::Sink => src.stats.dropped += 1,
            Route::Port(to) => {
                if !self.deliver(to, src_mem, t.nbufs, hdr, total - hdr) {
                    self.ports[i].stats.dropped += 1;
                }
            }
        }
        true
    }

    /// Copies a frame (`len` bytes after `skip` header bytes of the first `nsegs` buffers
    /// of `tx_bufs`, at offsets in `src_mem`) into port `to`'s RX buffers; false if they
    /// cannot hold it (nothing is taken then).
    fn deliver(
        &mut self,
        to: usize,
        src_mem: &SharedMemory,
        nsegs: usize,
        skip: u64,
        len: u64,
    ) -> bool {
        let NullBackend {
            ports,
            tx_bufs,
            rx_bufs: bufs,
            ..
        } = self;
        let segs = &tx_bufs[..nsegs];
        let dst = &mut ports[to];
        let hdr = dst.hdr_len as u64;
        let need = hdr + len;
        bufs.clear();
        let mut room = 0u64;
        let start = dst.rx.cursor();
        while room < need {
            let nbufs = bufs.len();
            if nbufs == MAX_RX_BUFS || (nbufs == 1 && !dst.mrg) {
                dst.rx.rewind(start);
                return false;
            }
            let mut one = [Buf::default(); 1];
            let Some(t) = dst.rx.take(&mut one) else {
                dst.rx.rewind(start);
                return false;
            };
            let b = one[0];
            let off = match dst.offset(b.gpa, b.len) {
                Some(off) if t.ok && t.nbufs == 1 && b.writable && b.len > 0 => off,
                _ => {
                    // Unusable buffer: leave it (and the frame) untaken.
                    dst.rx.rewind(start);
                    dst.stats.bad_chains += 1;
                    return false;
                }
            };
            bufs.push(((t.id, t.ndesc), off, b.len));
            room += u64::from(b.len);
        }
        let nbufs = bufs.len();
        // Net header: zeros, num_buffers in the 12-byte form.
        let mut h = [0u8; 12];
        h[10..12].copy_from_slice(&(nbufs as u16).to_le_bytes());
        let first = bufs[0].1;
        if dst.mem.write(first, &h[..hdr as usize]).is_err() {
            dst.rx.rewind(start);
            return false;
        }
        // Scatter-gather copy: source segments (after `skip`) into the buffers (after hdr).
        let (mut si, mut s_at) = (0usize, skip);
        while si < segs.len() && s_at >= u64::from(segs[si].len) {
            s_at -= u64::from(segs[si].len);
            si += 1;
        }
        let mut copied = 0u64;
        for (k, &(_, off, cap)) in bufs.iter().enumerate() {
            let mut d_at = if k == 0 { hdr } else { 0 };
            while d_at < u64::from(cap) && copied < len && si < segs.len() {
                let (soff, slen) = (segs[si].gpa, segs[si].len);
                let n = (u64::from(cap) - d_at)
                    .min(u64::from(slen) - s_at)
                    .min(len - copied);
                if src_mem
                    .copy_to(soff + s_at, dst.mem, off + d_at, n)
                    .is_err()
                {
                    break;
                }
                d_at += n;
                s_at += n;
                copied += n;
                if s_at == u64::from(slen) {
                    si += 1;
                    s_at = 0;
                }
            }
        }
        let mut left = need;
        for &((id, ndesc), _, cap) in bufs.iter() {
            let n = left.min(u64::from(cap));
            left -= n;
            dst.rx.push_used(id, ndesc, n as u32, false);
        }
        dst.stats.delivered += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::net::{NetDriver, NetLayout, NetOptions};
    use crate::memory::HugePages;
    use crate::sequences::bits::F_VERSION_1;

    #[test]
    fn cross_connect_delivers_frames_intact_with_and_without_mrg() {
        use crate::sequences::bits::F_RING_PACKED;
        for extra in [0, F_RING_PACKED, F_IN_ORDER, F_RING_PACKED | F_IN_ORDER] {
            for (features, buf, len) in [
                (F_VERSION_1 | NET_F_MRG_RXBUF, 2048, 64usize),
                (F_VERSION_1 | NET_F_MRG_RXBUF, 512, 3000),
                (F_VERSION_1, 2048, 1500),
                (0, 2048, 100),
            ] {
                let features = features | extra;
                let what = format!("features {features:#x} buf {buf} len {len}");
                let (ma, mb) = (
                    SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
                    SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
                );
                let layout = RingLayout::for_features(features);
                let (la, lb) = (
                    NetLayout::new_as(&ma, 0, 256, buf, layout).unwrap(),
                    NetLayout::new_as(&mb, 0, 256, buf, layout).unwrap(),
                );
                let opts = NetOptions {
                    features,
                    ..NetOptions::default()
                };
                let mut a = NetDriver::new(&ma, &la, opts).unwrap();
                let mut b = NetDriver::new(&mb, &lb, opts).unwrap();
                a.fill_rx().unwrap();
                b.fill_rx().unwrap();
                let mut dev = NullBackend::new(32);
                let pa = dev.add_port(&ma, &la.rx, &la.tx, features).unwrap();
                let pb = dev.add_port(&mb, &lb.rx, &lb.tx, features).unwrap();
                dev.connect(pa, pb).unwrap();
                // Enough rounds for the rings to wrap.
                for round in 0..40u8 {
                    let frames: Vec<Vec<u8>> = (0..10u8)
                        .map(|k| (0..len).map(|i| (i as u8) ^ k ^ round).collect())
                        .collect();
                    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
                    assert_eq!(a.send(&refs), 10, "{what}");
                    assert_eq!(dev.poll(), 10, "{what}");
                    let mut got = Vec::new();
                    b.recv_into(&mut got).unwrap();
                    assert_eq!(got, frames, "{what}");
                    assert_eq!(a.reclaim_tx().unwrap(), 10, "{what}");
                }
                let s = dev.stats(pa).unwrap();
                assert_eq!((s.tx_taken, s.dropped, s.bad_chains), (400, 0, 0), "{what}");
                assert_eq!(dev.stats(pb).unwrap().delivered, 400, "{what}");
            }
        }
    }

    #[test]
    fn split_and_packed_ports_interconnect() {
        use crate::sequences::bits::F_RING_PACKED;
        let (ma, mb) = (
            SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
            SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
        );
        let fa = F_VERSION_1 | NET_F_MRG_RXBUF;
        let fb = fa | F_RING_PACKED | F_IN_ORDER;
        let la = NetLayout::new(&ma, 0, 64, 2048).unwrap();
        let lb = NetLayout::new_as(&mb, 0, 64, 2048, RingLayout::Packed).unwrap();
        let opts = |features| NetOptions {
            features,
            ..NetOptions::default()
        };
        let mut a = NetDriver::new(&ma, &la, opts(fa)).unwrap();
        let mut b = NetDriver::new(&mb, &lb, opts(fb)).unwrap();
        a.fill_rx().unwrap();
        b.fill_rx().unwrap();
        let mut dev = NullBackend::new(16);
        let pa = dev.add_port(&ma, &la.rx, &la.tx, fa).unwrap();
        let pb = dev.add_port(&mb, &lb.rx, &lb.tx, fb).unwrap();
        dev.connect(pa, pb).unwrap();
        let f = vec![0x5au8; 200];
        for _ in 0..100 {
            assert_eq!(a.send(&[&f, &f]), 2);
            assert_eq!(b.send(&[&f]), 1);
            assert_eq!(dev.poll(), 3);
            let (mut ga, mut gb) = (Vec::new(), Vec::new());
            assert_eq!(a.recv_into(&mut ga).unwrap(), 1);
            assert_eq!(b.recv_into(&mut gb).unwrap(), 2);
            assert!(ga.iter().chain(&gb).all(|g| *g == f));
            assert_eq!(a.reclaim_tx().unwrap() + b.reclaim_tx().unwrap(), 3);
        }
        assert_eq!(dev.stats(pb).unwrap().delivered, 200);
    }

    #[test]
    fn no_rx_buffers_drops_and_sink_completes() {
        let m = SharedMemory::new(4 << 20, HugePages::Never).unwrap();
        let l = NetLayout::new(&m, 0, 64, 2048).unwrap();
        let mut d = NetDriver::new(&m, &l, NetOptions::default()).unwrap();
        let mut dev = NullBackend::new(8);
        let p = dev.add_port(&m, &l.rx, &l.tx, F_VERSION_1).unwrap();
        dev.set_route(p, Route::Port(p)).unwrap();
        let f = vec![0u8; 60];
        assert_eq!(d.send(&[&f, &f]), 2);
        assert_eq!(dev.poll(), 2);
        assert_eq!(dev.stats(p).unwrap().dropped, 2, "no RX buffer posted");
        d.fill_rx().unwrap();
        assert_eq!(d.send(&[&f]), 1);
        dev.poll();
        assert_eq!(dev.stats(p).unwrap().delivered, 1);
        dev.set_route(p, Route::Sink).unwrap();
        assert_eq!(d.send(&[&f]), 1);
        dev.poll();
        assert_eq!(d.reclaim_tx().unwrap(), 4);
        assert!(dev.set_route(p, Route::Port(9)).is_err());
    }
}
