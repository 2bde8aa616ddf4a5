//! A virtio-net driver over two queues (receiveq = ring 0, transmitq = ring 1), split or
//! packed, and a buffer pool preallocated in guest memory (virtio 1.2 §5.1.6).
//!
//! Nothing is allocated per packet: buffers, chain scratch space and the receive assembly
//! buffer are sized at construction. Received frames are copied out of guest memory into
//! the assembly buffer before the caller sees them (the device may still write the shared
//! memory; no reference into it is ever handed out).

use std::fmt;

use vmm_sys_util::eventfd::EventFd;

use super::queue::{indirect_area_size, Kick, Queue, Seg, UsedElem};
use crate::error::{DeviceError, Error, Result};
use crate::memory::SharedMemory;
use crate::sequences::bits::{
    F_IN_ORDER, F_VERSION_1, NET_F_MRG_RXBUF, RING_F_EVENT_IDX, RING_F_INDIRECT_DESC,
};
use crate::vring::{RingLayout, Vring};

/// virtio_net_hdr without num_buffers (legacy, no MRG_RXBUF).
pub const NET_HDR_LEN: usize = 10;
/// virtio_net_hdr with num_buffers (VERSION_1 or MRG_RXBUF).
pub const NET_HDR_MRG_LEN: usize = 12;
/// Offset of num_buffers (u16, little endian) in the header.
pub const NUM_BUFFERS_OFFSET: u64 = 10;
/// Largest frame [`NetDriver::send`] accepts (without the net header).
pub const MAX_TX_FRAME: usize = 9216;
/// Largest frame [`NetDriver::recv`] assembles (without the net header).
pub const MAX_RX_FRAME: usize = 65535;
/// Smallest buffer size.
pub const MIN_BUF_SIZE: u32 = 64;
/// Largest buffer size.
pub const MAX_BUF_SIZE: u32 = 65536;

/// Shortest frame accepted on receive: an Ethernet header.
const ETH_HLEN: usize = 14;
/// Used entries consumed per `used_pending` round in `reclaim_tx`.
const RECLAIM_BATCH: usize = 64;
/// Alignment of the buffer pool.
const POOL_ALIGN: u64 = 64;

/// Net header length for `features`: 12 bytes with VERSION_1 or MRG_RXBUF, else 10.
pub fn net_hdr_len(features: u64) -> usize {
    if features & (F_VERSION_1 | NET_F_MRG_RXBUF) != 0 {
        NET_HDR_MRG_LEN
    } else {
        NET_HDR_LEN
    }
}

/// Checks that every ring's layout is the one `features` call for (RING_PACKED or not).
pub(crate) fn check_layout(features: u64, rings: &[&Vring]) -> Result<()> {
    let want = RingLayout::for_features(features);
    match rings.iter().find(|v| v.layout() != want) {
        Some(v) => Err(Error::InvalidArgument(format!(
            "a {} ring with features {features:#x}, which call for {} rings",
            v.layout().name(),
            want.name()
        ))),
        None => Ok(()),
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// How [`NetDriver::send`] lays a frame out in descriptors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and frame in the same buffers, a chain when the frame needs several.
    #[default]
    HeaderInline,
    /// Header in a descriptor of its own, then the frame's buffers (as Linux lays out TX
    /// when the device offers neither VERSION_1 nor ANY_LAYOUT).
    HeaderSeparate,
    /// One ring descriptor pointing to an indirect table: header entry, then the frame's
    /// buffers (needs VIRTIO_RING_F_INDIRECT_DESC).
    Indirect,
}

/// Where a [`NetDriver`]'s rings and buffer pool lie in the memory.
///
/// Pool, from `pool_offset` (aligned 64): RX buffers (RX queue size × `buf_size`), TX
/// buffers (TX queue size × `buf_size`), TX header slots (16 bytes per TX buffer), TX
/// indirect tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLayout {
    /// The receive ring (ring 0).
    pub rx: Vring,
    /// The transmit ring (ring 1).
    pub tx: Vring,
    /// Where the pool starts.
    pub pool_offset: u64,
    /// Size of each buffer.
    pub buf_size: u32,
}

impl NetLayout {
    /// Lays out RX ring, TX ring (both split, of `queue_size`) and the pool from `offset`.
    pub fn new(mem: &SharedMemory, offset: u64, queue_size: u16, buf_size: u32) -> Result<Self> {
        Self::new_as(mem, offset, queue_size, buf_size, RingLayout::Split)
    }

    /// [`NetLayout::new`] with rings of `layout` (packed when VIRTIO_F_RING_PACKED is
    /// negotiated: [`RingLayout::for_features`]).
    pub fn new_as(
        mem: &SharedMemory,
        offset: u64,
        queue_size: u16,
        buf_size: u32,
        layout: RingLayout,
    ) -> Result<Self> {
        let rx = Vring::with_layout(mem, offset, queue_size, layout)?;
        let tx = Vring::with_layout(mem, rx.end_offset(), queue_size, layout)?;
        Self::with_rings(rx, tx, tx.end_offset(), buf_size)
    }

    /// Uses rings laid out elsewhere (e.g. by [`crate::Ring::layout`]); the pool starts at
    /// `pool_offset` (rounded up to 64).
    pub fn with_rings(rx: Vring, tx: Vring, pool_offset: u64, buf_size: u32) -> Result<Self> {
        if !(MIN_BUF_SIZE..=MAX_BUF_SIZE).contains(&buf_size) {
            return Err(Error::InvalidArgument(format!(
                "buffer size {buf_size} not in {MIN_BUF_SIZE}..={MAX_BUF_SIZE}"
            )));
        }
        Ok(NetLayout {
            rx,
            tx,
            pool_offset: align_up(pool_offset, POOL_ALIGN),
            buf_size,
        })
    }

    /// Descriptors per TX frame at most: buffers for the largest frame with a 12-byte
    /// header, plus a header descriptor; at most the TX queue size.
    pub fn max_tx_segs(&self) -> u16 {
        let bufs = (NET_HDR_MRG_LEN + MAX_TX_FRAME).div_ceil(self.buf_size as usize) + 1;
        bufs.min(usize::from(self.tx.queue_size())) as u16
    }

    fn rx_bufs(&self) -> u64 {
        self.pool_offset
    }

    fn tx_bufs(&self) -> u64 {
        self.rx_bufs() + u64::from(self.rx.queue_size()) * u64::from(self.buf_size)
    }

    fn tx_hdrs(&self) -> u64 {
        align_up(
            self.tx_bufs() + u64::from(self.tx.queue_size()) * u64::from(self.buf_size),
            16,
        )
    }

    fn tx_indirect(&self) -> u64 {
        self.tx_hdrs() + u64::from(self.tx.queue_size()) * 16
    }

    /// First byte after the pool.
    pub fn end_offset(&self) -> u64 {
        self.tx_indirect() + indirect_area_size(self.tx.queue_size(), self.max_tx_segs())
    }

    /// Bytes of the pool.
    pub fn pool_size(&self) -> u64 {
        self.end_offset() - self.pool_offset
    }
}

/// Driver options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetOptions {
    /// Negotiated virtio features: decide the header length, MRG_RXBUF, EVENT_IDX,
    /// IN_ORDER, and whether [`TxLayout::Indirect`] is allowed; RING_PACKED must match the
    /// rings' layout.
    pub features: u64,
    /// TX descriptor layout.
    pub tx_layout: TxLayout,
    /// When to kick (needs [`NetDriver::set_kick_fds`]).
    pub kick: Kick,
    /// Require used len 0 on TX (see [`Queue::set_strict_len`]).
    pub strict_tx_len: bool,
}

impl Default for NetOptions {
    /// VERSION_1, inline headers, no kicks, strict TX len.
    fn default() -> Self {
        NetOptions {
            features: F_VERSION_1,
            tx_layout: TxLayout::HeaderInline,
            kick: Kick::Never,
            strict_tx_len: true,
        }
    }
}

/// Per-driver counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames queued for transmission.
    pub sent: u64,
    /// Bytes of those frames (without header).
    pub sent_bytes: u64,
    /// Frames [`NetDriver::send`] refused (empty, or too large for any chain).
    pub tx_invalid: u64,
    /// TX chains returned by the device.
    pub tx_reclaimed: u64,
    /// Device errors seen on the TX used ring.
    pub tx_errors: u64,
    /// Frames received.
    pub received: u64,
    /// Bytes of those frames (without header).
    pub received_bytes: u64,
    /// Device errors seen on the RX side (bad used entries, num_buffers, lengths).
    pub rx_errors: u64,
    /// Failed kick writes.
    pub kick_errors: u64,
}

/// A virtio-net driver: RX and TX [`Queue`]s and a buffer pool in guest memory.
pub struct NetDriver<'m> {
    mem: &'m SharedMemory,
    layout: NetLayout,
    features: u64,
    hdr_len: usize,
    mrg_rxbuf: bool,
    tx_layout: TxLayout,
    rx: Queue<'m>,
    tx: Queue<'m>,
    /// Free RX buffer indexes.
    rx_free: Vec<u16>,
    /// RX buffer of each posted head.
    rx_buf_of: Vec<u16>,
    /// Free TX buffer indexes.
    tx_free: Vec<u16>,
    /// TX buffers of each head: `max_segs` slots per head.
    tx_bufs: Vec<u16>,
    /// Number of TX buffers of each head.
    tx_nbufs: Vec<u16>,
    max_segs: u16,
    /// Chain being built.
    segs: Vec<Seg>,
    /// TX buffers being filled.
    pending: Vec<u16>,
    used: Vec<UsedElem>,
    /// Receive assembly buffer.
    scratch: Vec<u8>,
    /// The net header of the frame last gathered (its first `hdr_len` bytes are valid).
    rx_hdr: [u8; NET_HDR_MRG_LEN],
    rx_kick: Option<EventFd>,
    tx_kick: Option<EventFd>,
    counters: NetCounters,
}

impl fmt::Debug for NetDriver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetDriver")
            .field("layout", &self.layout)
            .field("features", &format_args!("{:#x}", self.features))
            .field("hdr_len", &self.hdr_len)
            .field("tx_layout", &self.tx_layout)
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<'m> NetDriver<'m> {
    /// A driver on `layout` in `mem`: zeroes both rings, asks for no interrupts (it polls)
    /// and applies the features. Call [`NetDriver::fill_rx`] once the device may start.
    pub fn new(mem: &'m SharedMemory, layout: &NetLayout, opts: NetOptions) -> Result<Self> {
        if layout.end_offset() > mem.size() as u64 {
            return Err(Error::OutOfRange {
                offset: layout.pool_offset,
                len: layout.pool_size(),
                size: mem.size() as u64,
            });
        }
        if opts.tx_layout == TxLayout::Indirect && opts.features & RING_F_INDIRECT_DESC == 0 {
            return Err(Error::InvalidArgument(
                "TxLayout::Indirect without VIRTIO_RING_F_INDIRECT_DESC".into(),
            ));
        }
        check_layout(opts.features, &[&layout.rx, &layout.tx])?;
        let event_idx = opts.features & RING_F_EVENT_IDX != 0;
        let mut rx = Queue::new(mem, layout.rx)?;
        let mut tx = Queue::new(mem, layout.tx)?;
        let max_segs = layout.max_tx_segs();
        tx.set_indirect_area(layout.tx_indirect(), max_segs)?;
        tx.set_strict_len(opts.strict_tx_len);
        for q in [&mut rx, &mut tx] {
            q.set_event_idx(event_idx);
            q.set_in_order(opts.features & F_IN_ORDER != 0);
            q.set_no_interrupt(true);
            q.set_kick(opts.kick);
        }
        let (nrx, ntx) = (layout.rx.queue_size(), layout.tx.queue_size());
        Ok(NetDriver {
            mem,
            layout: *layout,
            features: opts.features,
            hdr_len: net_hdr_len(opts.features),
            mrg_rxbuf: opts.features & NET_F_MRG_RXBUF != 0,
            tx_layout: opts.tx_layout,
            rx,
            tx,
            rx_free: (0..nrx).rev().collect(),
            rx_buf_of: vec![0; usize::from(nrx)],
            tx_free: (0..ntx).rev().collect(),
            tx_bufs: vec![0; usize::from(ntx) * usize::from(max_segs)],
            tx_nbufs: vec![0; usize::from(ntx)],
            max_segs,
            segs: Vec::with_capacity(usize::from(max_segs)),
            pending: Vec::with_capacity(usize::from(max_segs)),
            used: vec![UsedElem::default(); RECLAIM_BATCH],
            scratch: vec![0; MAX_RX_FRAME.max(layout.buf_size as usize)],
            rx_hdr: [0; NET_HDR_MRG_LEN],
            rx_kick: None,
            tx_kick: None,
            counters: NetCounters::default(),
        })
    }

    /// Gives the driver the kick eventfds (e.g. `try_clone`s of the rings' `kick`).
    pub fn set_kick_fds(&mut self, rx: Option<EventFd>, tx: Option<EventFd>) {
        self.rx_kick = rx;
        self.tx_kick = tx;
    }

    /// The net header length in use.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The features the driver was built with.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The layout.
    pub fn layout(&self) -> &NetLayout {
        &self.layout
    }

    /// The TX layout in use.
    pub fn tx_layout(&self) -> TxLayout {
        self.tx_layout
    }

    /// Changes the TX layout ([`TxLayout::Indirect`] needs INDIRECT_DESC).
    pub fn set_tx_layout(&mut self, layout: TxLayout) -> Result<()> {
        if layout == TxLayout::Indirect && self.features & RING_F_INDIRECT_DESC == 0 {
            return Err(Error::InvalidArgument(
                "TxLayout::Indirect without VIRTIO_RING_F_INDIRECT_DESC".into(),
            ));
        }
        self.tx_layout = layout;
        Ok(())
    }

    /// The counters.
    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }

    /// The receive queue.
    pub fn rx_queue(&self) -> &Queue<'m> {
        &self.rx
    }

    /// The receive queue, for hostile tests (raw writes through [`Queue::as_split_mut`] /
    /// [`Queue::as_packed_mut`]).
    pub fn rx_queue_mut(&mut self) -> &mut Queue<'m> {
        &mut self.rx
    }

    /// The transmit queue.
    pub fn tx_queue(&self) -> &Queue<'m> {
        &self.tx
    }

    /// The transmit queue, for hostile tests (raw writes).
    pub fn tx_queue_mut(&mut self) -> &mut Queue<'m> {
        &mut self.tx
    }

    /// TX buffers not in flight.
    pub fn tx_free_buffers(&self) -> usize {
        self.tx_free.len()
    }

    /// RX buffers not posted.
    pub fn rx_free_buffers(&self) -> usize {
        self.rx_free.len()
    }

    fn rx_buf_offset(&self, b: u16) -> u64 {
        self.layout.rx_bufs() + u64::from(b) * u64::from(self.layout.buf_size)
    }

    fn tx_buf_offset(&self, b: u16) -> u64 {
        self.layout.tx_bufs() + u64::from(b) * u64::from(self.layout.buf_size)
    }

    fn tx_hdr_offset(&self, b: u16) -> u64 {
        self.layout.tx_hdrs() + u64::from(b) * 16
    }

    fn gpa(&self, offset: u64) -> u64 {
        self.mem.guest_phys_addr() + offset
    }

    fn kick(q: &mut Queue<'m>, fd: Option<&EventFd>, counters: &mut NetCounters) {
        if let Some(fd) = fd {
            if let Err(e) = q.kick_if_needed(fd) {
                counters.kick_errors += 1;
                tracing::warn!("kick failed: {e}");
            }
        }
    }

    /// Posts every free RX buffer (one writable descriptor of `buf_size` bytes each,
    /// header included), publishes once and kicks if needed. Returns how many were posted.
    pub fn fill_rx(&mut self) -> Result<usize> {
        if let Some(e) = self.rx.broken() {
            return Err(Error::Device(e.clone()));
        }
        let mut n = 0;
        while let Some(&b) = self.rx_free.last() {
            let seg = Seg::writable(self.gpa(self.rx_buf_offset(b)), self.layout.buf_size);
            match self.rx.add_chain(&[seg]) {
                Ok(head) => {
                    self.rx_free.pop();
                    self.rx_buf_of[usize::from(head)] = b;
                    n += 1;
                }
                Err(Error::QueueFull { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        self.rx.publish();
        Self::kick(&mut self.rx, self.rx_kick.as_ref(), &mut self.counters);
        Ok(n)
    }

    /// Queues `frames` for transmission: each gets a zeroed net header (num_buffers 0) and
    /// is laid out per the [`TxLayout`], split over several buffers when larger than one.
    /// Publishes once and kicks if needed.
    ///
    /// Returns how many frames were taken from the front of `frames`; it stops at the first
    /// frame for which there are not enough free descriptors or buffers (retry after
    /// [`NetDriver::reclaim_tx`]). A frame that no chain can carry (empty, larger than
    /// [`MAX_TX_FRAME`], or needing more descriptors than the queue has) is taken, dropped
    /// and counted in `tx_invalid`.
    pub fn send(&mut self, frames: &[&[u8]]) -> usize {
        let mut taken = 0;
        for frame in frames {
            match self.send_one(frame) {
                Ok(true) => {}
                Ok(false) => self.counters.tx_invalid += 1,
                Err(_) => break,
            }
            taken += 1;
        }
        self.tx.publish();
        Self::kick(&mut self.tx, self.tx_kick.as_ref(), &mut self.counters);
        taken
    }

    /// Queues one frame: Ok(true) queued, Ok(false) can never be queued, Err no room now
    /// (or a broken queue).
    fn send_one(&mut self, frame: &[u8]) -> Result<bool> {
        let (hdr, buf) = (self.hdr_len, self.layout.buf_size as usize);
        let len = frame.len();
        if len == 0 || len > MAX_TX_FRAME {
            return Ok(false);
        }
        let inline = self.tx_layout == TxLayout::HeaderInline;
        let nbufs = if inline { hdr + len } else { len }.div_ceil(buf);
        let (ndesc, limit) = match self.tx_layout {
            TxLayout::HeaderInline => (nbufs, usize::from(self.tx.queue_size())),
            TxLayout::HeaderSeparate => (nbufs + 1, usize::from(self.tx.queue_size())),
            TxLayout::Indirect => (1, usize::from(self.max_segs)),
        };
        let entries = if inline { nbufs } else { nbufs + 1 };
        if entries > limit || entries > usize::from(self.max_segs) {
            return Ok(false);
        }
        if nbufs > self.tx_free.len() || ndesc > usize::from(self.tx.num_free()) {
            return Err(Error::QueueFull {
                needed: ndesc as u16,
                free: self.tx.num_free(),
            });
        }
        self.segs.clear();
        self.pending.clear();
        match self.write_tx(frame) {
            Ok(head) => {
                let slots = usize::from(head) * usize::from(self.max_segs);
                self.tx_bufs[slots..slots + self.pending.len()].copy_from_slice(&self.pending);
                self.tx_nbufs[usize::from(head)] = self.pending.len() as u16;
                self.counters.sent += 1;
                self.counters.sent_bytes += len as u64;
                Ok(true)
            }
            Err(e) => {
                self.tx_free.extend_from_slice(&self.pending);
                Err(e)
            }
        }
    }

    /// Writes header and frame into free TX buffers (recorded in `pending`) and adds the
    /// chain; returns its head. The caller checked there are enough buffers.
    fn write_tx(&mut self, frame: &[u8]) -> Result<u16> {
        let (hdr, buf) = (self.hdr_len, self.layout.buf_size as usize);
        let mut rest = frame;
        if self.tx_layout == TxLayout::HeaderInline {
            let b = self.take_tx_buf();
            let off = self.tx_buf_offset(b);
            let chunk = rest.len().min(buf - hdr);
            self.mem.fill(off, hdr as u64, 0)?;
            self.mem.write(off + hdr as u64, &rest[..chunk])?;
            rest = &rest[chunk..];
            self.segs
                .push(Seg::readable(self.gpa(off), (hdr + chunk) as u32));
        } else {
            // The header goes to the header slot of the frame's first buffer.
            let b = self.tx_free.last().copied().unwrap_or_default();
            let off = self.tx_hdr_offset(b);
            self.mem.fill(off, hdr as u64, 0)?;
            self.segs.push(Seg::readable(self.gpa(off), hdr as u32));
        }
        while !rest.is_empty() {
            let b = self.take_tx_buf();
            let off = self.tx_buf_offset(b);
            let chunk = rest.len().min(buf);
            self.mem.write(off, &rest[..chunk])?;
            rest = &rest[chunk..];
            self.segs.push(Seg::readable(self.gpa(off), chunk as u32));
        }
        match self.tx_layout {
            TxLayout::Indirect => self.tx.add_chain_indirect(&self.segs),
            _ => self.tx.add_chain(&self.segs),
        }
    }

    /// Pops a free TX buffer into `pending` (the caller checked there are enough).
    fn take_tx_buf(&mut self) -> u16 {
        let b = self.tx_free.pop().unwrap_or_default();
        self.pending.push(b);
        b
    }

    fn free_tx(&mut self, head: u16) {
        let h = usize::from(head);
        let n = usize::from(std::mem::take(&mut self.tx_nbufs[h]));
        let slots = h * usize::from(self.max_segs);
        self.tx_free
            .extend_from_slice(&self.tx_bufs[slots..slots + n]);
    }

    /// Takes back the TX chains the device used and frees their buffers; returns how many.
    /// A device error is counted in `tx_errors` and returned (chains reclaimed before it
    /// stay reclaimed).
    pub fn reclaim_tx(&mut self) -> Result<usize> {
        let was_broken = self.tx.broken().is_some();
        let mut total = 0;
        let result = loop {
            match self.tx.poll_used(&mut self.used) {
                Ok(n) => {
                    for k in 0..n {
                        let id = self.used[k].id;
                        self.free_tx(id);
                    }
                    total += n;
                    if n < self.used.len() {
                        break Ok(total);
                    }
                }
                Err(e) => {
                    if let Error::Device(DeviceError::LenTooLarge { id, .. }) = e {
                        self.free_tx(id);
                        total += 1;
                    }
                    break Err(e);
                }
            }
        };
        self.counters.tx_reclaimed += total as u64;
        if matches!(result, Err(Error::Device(_))) && !was_broken {
            self.counters.tx_errors += 1;
        }
        result
    }

    /// Receives the frames the device has completed (bounded by used.idx read once):
    /// calls `f` with each frame (header stripped), recycles the buffers and re-posts them.
    /// Returns how many frames were delivered.
    ///
    /// With MRG_RXBUF a frame spans the `num_buffers` used entries its header announces. A
    /// device error (bad used entry, num_buffers 0 or more than published, too short or
    /// too long a frame) drops that frame, is counted in `rx_errors` and returned; frames
    /// before it were delivered.
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize> {
        self.recv_with_header(|_, frame| f(frame))
    }

    /// [`NetDriver::recv`], giving `f` each frame's net header (`hdr_len` bytes, as the
    /// device wrote it: offload flags, GSO fields, num_buffers) before the frame.
    pub fn recv_with_header(&mut self, mut f: impl FnMut(&[u8], &[u8])) -> Result<usize> {
        let was_broken = self.rx.broken().is_some();
        let burst = self.recv_burst(&mut f);
        if matches!(burst, Err(Error::Device(_))) && !was_broken {
            self.counters.rx_errors += 1;
        }
        let refill = if self.rx.broken().is_none() {
            self.fill_rx().map(|_| ())
        } else {
            Ok(())
        };
        let n = burst?;
        refill?;
        Ok(n)
    }

    /// [`NetDriver::recv`] into owned frames (allocates; for tests).
    pub fn recv_into(&mut self, out: &mut Vec<Vec<u8>>) -> Result<usize> {
        self.recv(|frame| out.push(frame.to_vec()))
    }

    fn recv_burst(&mut self, f: &mut impl FnMut(&[u8], &[u8])) -> Result<usize> {
        let mut left = self.rx.used_pending()?;
        let mut n = 0;
        while left > 0 {
            let Some(first) = self.pop_rx()? else { break };
            left -= 1;
            let len = self.gather(first, &mut left)?;
            self.counters.received += 1;
            self.counters.received_bytes += len as u64;
            f(&self.rx_hdr[..self.hdr_len], &self.scratch[..len]);
            n += 1;
        }
        Ok(n)
    }

    /// Pops one RX used entry and recycles its buffer (copied out before the next
    /// `fill_rx`). On a bad len the chain came back: its buffer is recycled too.
    fn pop_rx(&mut self) -> Result<Option<(u16, u32)>> {
        match self.rx.pop_used() {
            Ok(Some(u)) => {
                let b = self.rx_buf_of[usize::from(u.id)];
                self.rx_free.push(b);
                Ok(Some((b, u.len)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                if let Error::Device(DeviceError::LenTooLarge { id, .. }) = e {
                    let b = self.rx_buf_of[usize::from(id)];
                    self.rx_free.push(b);
                }
                Err(e)
            }
        }
    }

    /// Copies the frame starting with `first` (buffer, len) into `scratch`, consuming the
    /// further entries num_buffers announces; returns the frame length.
    fn gather(&mut self, first: (u16, u32), left: &mut u16) -> Result<usize> {
        let hdr = self.hdr_len;
        let min = (hdr + ETH_HLEN) as u64;
        let (b0, len0) = (first.0, first.1 as usize);
        if len0 < hdr {
            return Err(DeviceError::RxTooShort {
                len: len0 as u64,
                min,
            }
            .into());
        }
        let off0 = self.rx_buf_offset(b0);
        let num_buffers = if self.mrg_rxbuf {
            u16::from_le(self.mem.read_obj::<u16>(off0 + NUM_BUFFERS_OFFSET)?)
        } else {
            1
        };
        if num_buffers == 0 || num_buffers - 1 > *left {
            return Err(DeviceError::BadNumBuffers {
                num_buffers,
                available: *left + 1,
            }
            .into());
        }
        self.mem.read(off0, &mut self.rx_hdr[..hdr])?;
        // len0 <= buf_size <= scratch.len() (checked by the queue against the posted size).
        let mut total = len0 - hdr;
        self.mem
            .read(off0 + hdr as u64, &mut self.scratch[..total])?;
        let mut too_long = false;
        for _ in 1..num_buffers {
            let Some((b, len)) = self.pop_rx()? else {
                // Counted by used_pending; cannot happen unless the queue changed under us.
                return Err(DeviceError::BadNumBuffers {
                    num_buffers,
                    available: 0,
                }
                .into());
            };
            *left -= 1;
            let len = len as usize;
            if too_long || total + len > MAX_RX_FRAME {
                // Keep consuming this frame's buffers so that they are not taken for the
                // start of the next frame.
                too_long = true;
                total += len;
                continue;
            }
            self.mem
                .read(self.rx_buf_offset(b), &mut self.scratch[total..total + len])?;
            total += len;
        }
        if too_long {
            return Err(DeviceError::FrameTooLong {
                len: total as u64,
                max: MAX_RX_FRAME as u64,
            }
            .into());
        }
        if total < ETH_HLEN {
            return Err(DeviceError::RxTooShort {
                len: (total + hdr) as u64,
                min,
            }
            .into());
        }
        Ok(total)
    }
}
