//! An in-process null device: the device side of split virtio-net rings living in this
//! process's memory, so that the generator's TX and RX paths can run without a backend
//! process (`vhost-pktgen selftest`, unit tests).
//!
//! Each port's transmitq is consumed (chains completed with len 0); what it carried is either
//! dropped ([`Route::Sink`]) or copied into the receiveq of a port ([`Route::Port`], the
//! port itself for a loopback) with a net header (num_buffers set with MRG_RXBUF), as a
//! vhost-user switch would. One [`NullBackend::poll`] moves at most a burst per port and
//! publishes each used ring once. It can run on the generator's thread (call `poll` between
//! generator iterations) or on a thread of its own (it is `Send`).
//!
//! The rings are read as untrusted input: indexes, descriptor addresses and lengths are
//! checked; a bad chain is counted and skipped, never panicked on. Indirect descriptors
//! are not supported (counted as bad chains).

use std::sync::atomic::Ordering;

use crate::driver::net::net_hdr_len;
use crate::driver::split::{
    SplitRing, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use crate::error::{Error, Result};
use crate::memory::SharedMemory;
use crate::sequences::bits::NET_F_MRG_RXBUF;
use crate::vring::Vring;

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

/// The device side of one split ring.
struct DevRing<'m> {
    ring: SplitRing<'m>,
    last_avail: u16,
    used_idx: u16,
    dirty: bool,
}

impl<'m> DevRing<'m> {
    fn new(mem: &'m SharedMemory, vring: &Vring) -> Result<Self> {
        let ring = SplitRing::new(mem, vring)?;
        // Relaxed: a hint the driver reads when deciding to kick; we poll.
        ring.used_flags
            .store(VRING_USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
        Ok(DevRing {
            last_avail: u16::from_le(ring.used_idx.load(Ordering::Relaxed)),
            used_idx: u16::from_le(ring.used_idx.load(Ordering::Relaxed)),
            ring,
            dirty: false,
        })
    }

    /// Published chains not yet taken (0 if avail.idx is implausible).
    fn pending(&self) -> u16 {
        // Acquire: pairs with the driver's Release store of avail.idx; the entries and
        // descriptors it wrote before are visible after this load.
        let idx = u16::from_le(self.ring.avail_idx.load(Ordering::Acquire));
        let n = idx.wrapping_sub(self.last_avail);
        if n > self.ring.size {
            0
        } else {
            n
        }
    }

    /// The next avail head (the caller checked `pending`); `None` if out of range.
    fn pop(&mut self) -> Option<u16> {
        let slot = usize::from(self.last_avail % self.ring.size);
        self.last_avail = self.last_avail.wrapping_add(1);
        // Relaxed: ordered after the Acquire load of avail.idx in `pending`.
        let head = u16::from_le(self.ring.avail_ring[slot].load(Ordering::Relaxed));
        (head < self.ring.size).then_some(head)
    }

    fn unpop(&mut self, n: u16) {
        self.last_avail = self.last_avail.wrapping_sub(n);
    }

    fn push_used(&mut self, id: u16, len: u32) {
        let slot = usize::from(self.used_idx % self.ring.size);
        // Relaxed: published by the Release store of used.idx in `publish`.
        self.ring.used_ring[2 * slot].store(u32::from(id).to_le(), Ordering::Relaxed);
        self.ring.used_ring[2 * slot + 1].store(len.to_le(), Ordering::Relaxed);
        self.used_idx = self.used_idx.wrapping_add(1);
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

/// One port of the null device.
struct NullPort<'m> {
    mem: &'m SharedMemory,
    rx: DevRing<'m>,
    tx: DevRing<'m>,
    hdr_len: usize,
    mrg: bool,
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
        }
    }

    /// Adds a port whose receive ring is `rx` and transmit ring `tx` in `mem`, with the
    /// negotiated `features` (header length, MRG_RXBUF). The rings must be initialized by the
    /// driver first. Routes to [`Route::Sink`]; returns the port's index.
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
            let n = usize::from(self.ports[i].tx.pending()).min(self.burst);
            for _ in 0..n {
                self.forward_one(i);
            }
            moved += n;
        }
        for p in &mut self.ports {
            p.tx.publish();
            p.rx.publish();
        }
        moved
    }

    /// Takes one TX chain of port `i`, delivers it per the route, completes it.
    fn forward_one(&mut self, i: usize) {
        let src = &mut self.ports[i];
        let Some(head) = src.tx.pop() else {
            // No valid id to complete: the chain is lost to the driver (its bug).
            src.stats.bad_chains += 1;
            return;
        };
        let mut segs = [(0u64, 0u32); MAX_TX_SEGS];
        let mut nsegs = 0;
        let mut total = 0u64;
        let mut d = src.tx.ring.read_desc(head);
        let mut ok = true;
        loop {
            let readable = d.flags & VIRTQ_DESC_F_WRITE == 0 && d.flags & !VIRTQ_DESC_F_NEXT == 0;
            match (readable, src.offset(d.addr, d.len)) {
                (true, Some(off)) if nsegs < MAX_TX_SEGS => {
                    segs[nsegs] = (off, d.len);
                    nsegs += 1;
                    total += u64::from(d.len);
                }
                _ => {
                    ok = false;
                    break;
                }
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            if d.next >= src.tx.ring.size {
                ok = false;
                break;
            }
            d = src.tx.ring.read_desc(d.next);
        }
        let hdr = src.hdr_len as u64;
        src.tx.push_used(head, 0);
        src.stats.tx_taken += 1;
        if !ok || total < hdr + 14 {
            src.stats.bad_chains += 1;
            return;
        }
        let route = src.route;
        let src_mem = src.mem;
        match route {
            Route::Sink => src.stats.dropped += 1,
            Route::Port(to) => {
                if !self.deliver(to, src_mem, &segs[..nsegs], hdr, total - hdr) {
                    self.ports[i].stats.dropped += 1;
                }
            }
        }
    }

    /// Copies a frame (`len` bytes after `skip` header bytes of `segs` in `src_mem`) into
    /// port `to`'s RX buffers; false if they cannot hold it (nothing is taken then).
    fn deliver(
        &mut self,
        to: usize,
        src_mem: &SharedMemory,
        segs: &[(u64, u32)],
        skip: u64,
        len: u64,
    ) -> bool {
        let dst = &mut self.ports[to];
        let hdr = dst.hdr_len as u64;
        let need = hdr + len;
        let mut bufs = [(0u16, 0u64, 0u32); MAX_RX_BUFS];
        let mut nbufs = 0usize;
        let mut room = 0u64;
        let pending = dst.rx.pending();
        while room < need {
            if nbufs == MAX_RX_BUFS || nbufs == usize::from(pending) || (nbufs == 1 && !dst.mrg) {
                dst.rx.unpop(nbufs as u16);
                return false;
            }
            let Some(h) = dst.rx.pop() else {
                dst.rx.unpop(nbufs as u16 + 1);
                dst.stats.bad_chains += 1;
                return false;
            };
            let d = dst.rx.ring.read_desc(h);
            let off = match dst.offset(d.addr, d.len) {
                Some(off) if d.flags & VIRTQ_DESC_F_WRITE != 0 && d.len > 0 => off,
                _ => {
                    // Unusable buffer: leave it (and the frame) untaken.
                    dst.rx.unpop(nbufs as u16 + 1);
                    dst.stats.bad_chains += 1;
                    return false;
                }
            };
            bufs[nbufs] = (h, off, d.len);
            nbufs += 1;
            room += u64::from(d.len);
        }
        // Net header: zeros, num_buffers in the 12-byte form.
        let mut h = [0u8; 12];
        h[10..12].copy_from_slice(&(nbufs as u16).to_le_bytes());
        let first = bufs[0].1;
        if dst.mem.write(first, &h[..hdr as usize]).is_err() {
            dst.rx.unpop(nbufs as u16);
            return false;
        }
        // Scatter-gather copy: source segments (after `skip`) into the buffers (after hdr).
        let (mut si, mut s_at) = (0usize, skip);
        while si < segs.len() && s_at >= u64::from(segs[si].1) {
            s_at -= u64::from(segs[si].1);
            si += 1;
        }
        let mut copied = 0u64;
        for (k, &(_, off, cap)) in bufs[..nbufs].iter().enumerate() {
            let mut d_at = if k == 0 { hdr } else { 0 };
            while d_at < u64::from(cap) && copied < len && si < segs.len() {
                let (soff, slen) = segs[si];
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
        for &(h, _, cap) in &bufs[..nbufs] {
            let n = left.min(u64::from(cap));
            left -= n;
            dst.rx.push_used(h, n as u32);
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
        for (features, buf, len) in [
            (F_VERSION_1 | NET_F_MRG_RXBUF, 2048, 64usize),
            (F_VERSION_1 | NET_F_MRG_RXBUF, 512, 3000),
            (F_VERSION_1, 2048, 1500),
            (0, 2048, 100),
        ] {
            let (ma, mb) = (
                SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
                SharedMemory::new(4 << 20, HugePages::Never).unwrap(),
            );
            let (la, lb) = (
                NetLayout::new(&ma, 0, 256, buf).unwrap(),
                NetLayout::new(&mb, 0, 256, buf).unwrap(),
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
            let frames: Vec<Vec<u8>> = (0..10u8)
                .map(|k| (0..len).map(|i| (i as u8) ^ k).collect())
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
            assert_eq!(a.send(&refs), 10);
            assert_eq!(dev.poll(), 10);
            let mut got = Vec::new();
            b.recv_into(&mut got).unwrap();
            assert_eq!(got, frames, "features {features:#x} buf {buf} len {len}");
            assert_eq!(a.reclaim_tx().unwrap(), 10);
            let s = dev.stats(pa).unwrap();
            assert_eq!((s.tx_taken, s.dropped, s.bad_chains), (10, 0, 0));
            assert_eq!(dev.stats(pb).unwrap().delivered, 10);
        }
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
