//! Zero-copy virtio-net driving for traffic generators (`vhost-pktgen`).
//!
//! [`NetDriver`](super::NetDriver) copies every frame into and out of guest memory, which
//! is right for tests but costs a copy per packet. [`ZcNet`] instead hands out *buffers*:
//! the caller registers buffers in guest memory once ([`ZcNet::add_buffer`]), writes their
//! contents in place (a prebuilt frame template, then only the few bytes that change per
//! packet), posts them by id ([`ZcNet::tx_post`], [`ZcNet::rx_post`]) and gets them back by
//! id ([`ZcNet::tx_reclaim`], [`ZcNet::rx_poll`]). A received frame is not copied: the poll
//! copies only its first bytes (the "peek", e.g. the headers and a sequence number) into an
//! [`RxBatch`]; [`ZcNet::read_frame`] gathers the whole frame when the caller wants it.
//!
//! Batching: posts write descriptors and avail entries; [`ZcNet::tx_publish`] /
//! [`ZcNet::rx_publish`] store avail.idx once and decide the kick once per burst;
//! [`ZcNet::rx_poll`] and [`ZcNet::tx_reclaim`] read used.idx once per call (packed: scan
//! the used descriptors once). The rings are split or packed ([`Queue`]).
//!
//! Buffer ownership is tracked per id (free / posted for RX / posted for TX): posting a
//! buffer that is already posted is refused, so that a caller bug cannot hand the device the
//! same memory twice. Everything the device writes is validated by the [`Queue`]s; a
//! bad num_buffers or length comes back as an [`RxFrame`] carrying the error (with its
//! buffers, so that the caller can recycle them), never as a panic.

use std::fmt;

use vmm_sys_util::eventfd::EventFd;

use super::net::{check_layout, net_hdr_len, NUM_BUFFERS_OFFSET};
use super::queue::{each, Kick, Queue, Seg, UsedElem};
use crate::error::{DeviceError, Error, Result};
use crate::memory::SharedMemory;
use crate::sequences::bits::{F_IN_ORDER, NET_F_MRG_RXBUF, RING_F_EVENT_IDX};
use crate::vring::Vring;

/// A buffer registered with [`ZcNet::add_buffer`].
pub type BufId = u32;

/// Most buffers one TX chain may carry ([`ZcNet::tx_post_chain`]).
pub const MAX_TX_CHAIN: usize = 8;
/// Largest peek (frame bytes copied per received frame).
pub const MAX_PEEK: usize = 64;

/// What popping one RX used entry gave: a buffer and its used len, nothing, or an error
/// with the buffer of a chain the device returned wrongly (`None` once the queue broke).
type PopRx = std::result::Result<Option<(BufId, u32)>, (Error, Option<BufId>)>;

/// Owner of a buffer.
const FREE: u8 = 0;
const ON_RX: u8 = 1;
const ON_TX: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Buf {
    offset: u64,
    cap: u32,
}

/// Counters of a [`ZcNet`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZcStats {
    /// Kicks written (RX and TX).
    pub kicks: u64,
    /// Kick writes that failed.
    pub kick_errors: u64,
    /// Received frames returned with an error (bad num_buffers, too short, bad len).
    pub rx_errors: u64,
}

/// Metadata of one frame of an [`RxBatch`].
#[derive(Debug, Clone)]
struct RxMeta {
    len: u32,
    first: u32,
    nbufs: u32,
    head_len: u16,
    error: Option<DeviceError>,
}

/// The frames one [`ZcNet::rx_poll`] returned: per frame its buffers and its first bytes.
/// Preallocated for a whole ring ([`ZcNet::rx_batch`]); reused from poll to poll.
#[derive(Debug)]
pub struct RxBatch {
    metas: Vec<RxMeta>,
    bufs: Vec<(BufId, u32)>,
    heads: Vec<u8>,
    peek: usize,
    capacity: usize,
}

/// Room for the net header in front of each head.
const HDR_ROOM: usize = 16;
/// Bytes read per frame with the usual 64-byte peek (header room included).
const FIXED_READ: usize = HDR_ROOM + 64;

impl RxBatch {
    /// A batch for up to `capacity` frames (and buffers), copying the first `peek` bytes of
    /// each frame (at most [`MAX_PEEK`]).
    pub fn new(capacity: usize, peek: usize) -> Self {
        let peek = peek.min(MAX_PEEK);
        RxBatch {
            metas: Vec::with_capacity(capacity),
            bufs: Vec::with_capacity(capacity),
            heads: vec![0; capacity * (HDR_ROOM + peek)],
            peek,
            capacity,
        }
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// The peek length.
    pub fn peek(&self) -> usize {
        self.peek
    }

    fn clear(&mut self) {
        self.metas.clear();
        self.bufs.clear();
    }

    fn stride(&self) -> usize {
        HDR_ROOM + self.peek
    }

    /// Frame `i` (`None` past the end).
    #[inline]
    pub fn get(&self, i: usize) -> Option<RxFrame<'_>> {
        let m = self.metas.get(i)?;
        let (first, n) = (m.first as usize, m.nbufs as usize);
        let head_start = i * self.stride() + HDR_ROOM;
        Some(RxFrame {
            len: m.len as usize,
            bufs: self.bufs.get(first..first + n).unwrap_or_default(),
            head: self
                .heads
                .get(head_start..head_start + usize::from(m.head_len))
                .unwrap_or_default(),
            error: m.error.as_ref(),
        })
    }

    /// The frames, in order.
    pub fn iter(&self) -> impl Iterator<Item = RxFrame<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// One received frame, as [`ZcNet::rx_poll`] found it. Its buffers now belong to the caller
/// (re-post them with [`ZcNet::rx_post`], or send them with [`ZcNet::tx_post_chain`]).
#[derive(Debug, Clone, Copy)]
pub struct RxFrame<'a> {
    /// Frame length, net header excluded (0 for an error frame).
    pub len: usize,
    /// The buffers in order, each with the bytes the device wrote into it (the first one's
    /// count includes the net header).
    pub bufs: &'a [(BufId, u32)],
    /// The first `min(len, peek)` bytes of the frame (net header excluded).
    pub head: &'a [u8],
    /// Why the frame is unusable, if it is (its buffers must still be recycled).
    pub error: Option<&'a DeviceError>,
}

/// Reads whole received frames out of guest memory (given to [`ZcNet::rx_poll_with`]'s
/// callback).
#[derive(Debug)]
pub struct FrameReader<'a> {
    mem: &'a SharedMemory,
    bufs: &'a [Buf],
    hdr: usize,
}

impl FrameReader<'_> {
    /// Copies the whole of `frame` (net header excluded) into `out`; returns its length.
    /// Fails if `out` is too small.
    pub fn read_frame(&self, frame: &RxFrame<'_>, out: &mut [u8]) -> Result<usize> {
        if out.len() < frame.len {
            return Err(Error::InvalidArgument(format!(
                "frame of {} bytes, buffer of {}",
                frame.len,
                out.len()
            )));
        }
        let mut at = 0usize;
        for (k, &(b, len)) in frame.bufs.iter().enumerate() {
            let buf = self
                .bufs
                .get(b as usize)
                .ok_or_else(|| Error::InvalidArgument(format!("no buffer {b}")))?;
            let (skip, n) = if k == 0 {
                (self.hdr, (len as usize).saturating_sub(self.hdr))
            } else {
                (0, len as usize)
            };
            let n = n.min(frame.len - at);
            self.mem
                .read(buf.offset + skip as u64, &mut out[at..at + n])?;
            at += n;
        }
        Ok(at)
    }
}

/// What popping one RX used entry (`popped`, from [`Queue::pop_used`]) gave, as buffers:
/// `Ok(Some((buf, len)))`, or `Err` with the buffer of a chain returned with a bad len
/// (`Some`) or none (the queue broke). Returned buffers are ours again (`owner`).
#[inline]
fn rx_buffer(popped: Result<Option<UsedElem>>, rx_buf_of: &[BufId], owner: &mut [u8]) -> PopRx {
    match popped {
        Ok(Some(u)) => {
            let b = rx_buf_of[usize::from(u.id)];
            owner[b as usize] = FREE;
            Ok(Some((b, u.len)))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            let buf = match &e {
                Error::Device(DeviceError::LenTooLarge { id, .. }) => {
                    let b = rx_buf_of[usize::from(*id)];
                    owner[b as usize] = FREE;
                    Some(b)
                }
                _ => None,
            };
            Err((e, buf))
        }
    }
}

/// Zero-copy virtio-net driving over a receiveq and a transmitq (see the module docs).
pub struct ZcNet<'m> {
    mem: &'m SharedMemory,
    rx: Queue<'m>,
    tx: Queue<'m>,
    features: u64,
    hdr_len: usize,
    mrg: bool,
    bufs: Vec<Buf>,
    owner: Vec<u8>,
    rx_buf_of: Vec<BufId>,
    tx_bufs: Vec<BufId>,
    tx_nbufs: Vec<u8>,
    used: Vec<UsedElem>,
    /// RX used entries of the current poll: buffer, used len (0 for entries in error).
    popped: Vec<(BufId, u32)>,
    /// Errors of entries of `popped`, by position.
    popped_err: Vec<(usize, DeviceError)>,
    rx_kick: Option<EventFd>,
    tx_kick: Option<EventFd>,
    stats: ZcStats,
}

impl fmt::Debug for ZcNet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZcNet")
            .field("features", &format_args!("{:#x}", self.features))
            .field("hdr_len", &self.hdr_len)
            .field("buffers", &self.bufs.len())
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'m> ZcNet<'m> {
    /// A driver over the rings `rx` (ring 0) and `tx` (ring 1) in `mem`: zeroes both rings,
    /// asks for no interrupts (it polls), applies EVENT_IDX / IN_ORDER / MRG_RXBUF / the
    /// header length from `features` (whose RING_PACKED must match the rings' layout), and
    /// kicks per `kick` (once [`ZcNet::set_kick_fds`] gave the fds).
    /// TX used lengths are not checked (devices differ in what they write there).
    pub fn new(
        mem: &'m SharedMemory,
        rx: Vring,
        tx: Vring,
        features: u64,
        kick: Kick,
    ) -> Result<Self> {
        check_layout(features, &[&rx, &tx])?;
        let mut rxq = Queue::new(mem, rx)?;
        let mut txq = Queue::new(mem, tx)?;
        txq.set_strict_len(false);
        let event_idx = features & RING_F_EVENT_IDX != 0;
        for q in [&mut rxq, &mut txq] {
            q.set_event_idx(event_idx);
            q.set_in_order(features & F_IN_ORDER != 0);
            q.set_no_interrupt(true);
            q.set_kick(kick);
        }
        let (nrx, ntx) = (usize::from(rx.queue_size()), usize::from(tx.queue_size()));
        Ok(ZcNet {
            mem,
            rx: rxq,
            tx: txq,
            features,
            hdr_len: net_hdr_len(features),
            mrg: features & NET_F_MRG_RXBUF != 0,
            bufs: Vec::new(),
            owner: Vec::new(),
            rx_buf_of: vec![0; nrx],
            tx_bufs: vec![0; ntx * MAX_TX_CHAIN],
            tx_nbufs: vec![0; ntx],
            used: vec![UsedElem::default(); nrx.max(ntx)],
            popped: Vec::with_capacity(nrx),
            popped_err: Vec::new(),
            rx_kick: None,
            tx_kick: None,
            stats: ZcStats::default(),
        })
    }

    /// Gives the driver the kick eventfds (used with [`Kick::IfNeeded`] / [`Kick::Always`]).
    pub fn set_kick_fds(&mut self, rx: Option<EventFd>, tx: Option<EventFd>) {
        self.rx_kick = rx;
        self.tx_kick = tx;
    }

    /// The memory.
    #[inline]
    pub fn mem(&self) -> &'m SharedMemory {
        self.mem
    }

    /// The features the driver was built with.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The net header length (10 or 12).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Whether MRG_RXBUF is in use (a frame may span several RX buffers).
    pub fn mrg_rxbuf(&self) -> bool {
        self.mrg
    }

    /// The counters.
    pub fn stats(&self) -> &ZcStats {
        &self.stats
    }

    /// The receive queue.
    pub fn rx_queue(&self) -> &Queue<'m> {
        &self.rx
    }

    /// The transmit queue.
    pub fn tx_queue(&self) -> &Queue<'m> {
        &self.tx
    }

    /// A batch sized for this driver's receive ring, copying `peek` bytes per frame.
    pub fn rx_batch(&self, peek: usize) -> RxBatch {
        RxBatch::new(usize::from(self.rx.queue_size()), peek)
    }

    /// Registers `cap` bytes at `offset` of the memory as a buffer; returns its id.
    pub fn add_buffer(&mut self, offset: u64, cap: u32) -> Result<BufId> {
        if cap == 0 {
            return Err(Error::InvalidArgument("buffer of 0 bytes".into()));
        }
        let inside =
            matches!(offset.checked_add(u64::from(cap)), Some(e) if e <= self.mem.size() as u64);
        if !inside {
            return Err(Error::OutOfRange {
                offset,
                len: u64::from(cap),
                size: self.mem.size() as u64,
            });
        }
        let id = BufId::try_from(self.bufs.len())
            .map_err(|_| Error::InvalidArgument("too many buffers".into()))?;
        self.bufs.push(Buf { offset, cap });
        self.owner.push(FREE);
        Ok(id)
    }

    /// Buffers registered.
    pub fn buffers(&self) -> usize {
        self.bufs.len()
    }

    #[inline]
    fn buf(&self, id: BufId) -> Result<Buf> {
        self.bufs
            .get(id as usize)
            .copied()
            .ok_or_else(|| Error::InvalidArgument(format!("no buffer {id}")))
    }

    /// Offset of buffer `id` in the memory (0 for an unknown id).
    #[inline]
    pub fn buf_offset(&self, id: BufId) -> u64 {
        self.bufs.get(id as usize).map_or(0, |b| b.offset)
    }

    /// Capacity of buffer `id` (0 for an unknown id).
    pub fn buf_cap(&self, id: BufId) -> u32 {
        self.bufs.get(id as usize).map_or(0, |b| b.cap)
    }

    #[inline]
    fn gpa(&self, offset: u64) -> u64 {
        self.mem.guest_phys_addr() + offset
    }

    #[inline]
    fn take(&mut self, id: BufId, to: u8) -> Result<Buf> {
        let b = self.buf(id)?;
        let o = &mut self.owner[id as usize];
        if *o != FREE {
            return Err(Error::InvalidArgument(format!(
                "buffer {id} is already posted"
            )));
        }
        *o = to;
        Ok(b)
    }

    #[inline]
    fn kick(q: &mut Queue<'m>, fd: Option<&EventFd>, stats: &mut ZcStats) {
        if let Some(fd) = fd {
            match q.kick_if_needed(fd) {
                Ok(true) => stats.kicks += 1,
                Ok(false) => {}
                Err(e) => {
                    stats.kick_errors += 1;
                    tracing::warn!("kick failed: {e}");
                }
            }
        }
    }

    /// Free RX descriptors.
    #[inline]
    pub fn rx_room(&self) -> usize {
        usize::from(self.rx.num_free())
    }

    /// RX buffers posted and not yet returned.
    pub fn rx_posted(&self) -> usize {
        usize::from(self.rx.in_flight())
    }

    /// Posts buffer `id` (all of it, device-writable) on the receive ring; visible after
    /// [`ZcNet::rx_publish`].
    #[inline]
    pub fn rx_post(&mut self, id: BufId) -> Result<()> {
        let b = self.take(id, ON_RX)?;
        match self.rx.add_buf(self.gpa(b.offset), b.cap, true) {
            Ok(head) => {
                self.rx_buf_of[usize::from(head)] = id;
                Ok(())
            }
            Err(e) => {
                self.owner[id as usize] = FREE;
                Err(e)
            }
        }
    }

    /// Posts buffers taken from the end of `free` (each all of it, device-writable) while
    /// the receive ring has room, then publishes and kicks if any was posted; returns how
    /// many. A buffer that cannot be posted (unknown, already posted) stays in `free` and
    /// fails the call, after what was posted before it is published.
    #[inline]
    pub fn rx_refill(&mut self, free: &mut Vec<BufId>) -> Result<usize> {
        let ZcNet {
            rx,
            mem,
            bufs,
            owner,
            rx_buf_of,
            ..
        } = self;
        let base = mem.guest_phys_addr();
        let (n, result) = each!(rx, q => {
            let mut n = 0;
            let mut result = Ok(());
            while q.num_free() > 0 {
                let Some(&id) = free.last() else { break };
                let b = match (bufs.get(id as usize), owner.get(id as usize)) {
                    (Some(b), Some(&FREE)) => *b,
                    _ => {
                        result = Err(Error::InvalidArgument(format!(
                            "buffer {id} is unknown or already posted"
                        )));
                        break;
                    }
                };
                match q.add_buf(base + b.offset, b.cap, true) {
                    Ok(head) => {
                        rx_buf_of[usize::from(head)] = id;
                        owner[id as usize] = ON_RX;
                        free.pop();
                        n += 1;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            (n, result)
        });
        if n > 0 {
            self.rx_publish();
        }
        result.map(|()| n)
    }

    /// Publishes the RX buffers posted so far (one avail.idx store) and kicks if needed.
    #[inline]
    pub fn rx_publish(&mut self) {
        self.rx.publish();
        Self::kick(&mut self.rx, self.rx_kick.as_ref(), &mut self.stats);
    }

    /// Takes the frames the device completed (used.idx read once) into `batch` (cleared
    /// first), copying the first [`RxBatch::peek`] bytes of each; returns how many frames.
    /// The frames' buffers now belong to the caller. A frame the device got wrong comes
    /// back with [`RxFrame::error`] set (and counted in [`ZcStats::rx_errors`]). A broken
    /// receive queue is an error once the frames before the breakage were returned.
    pub fn rx_poll(&mut self, batch: &mut RxBatch) -> Result<usize> {
        batch.clear();
        let (stride, peek, cap) = (batch.stride(), batch.peek, batch.capacity);
        let RxBatch {
            metas, bufs, heads, ..
        } = batch;
        self.rx_frames(cap, |_, f| {
            let i = metas.len();
            let first = bufs.len();
            bufs.extend_from_slice(f.bufs);
            let head_len = f.head.len().min(peek);
            let slot = i * stride + HDR_ROOM;
            heads[slot..slot + head_len].copy_from_slice(&f.head[..head_len]);
            metas.push(RxMeta {
                len: f.len as u32,
                first: first as u32,
                nbufs: f.bufs.len() as u32,
                head_len: head_len as u16,
                error: f.error.cloned(),
            });
        })
    }

    /// Like [`ZcNet::rx_poll`], without a batch: calls `f` with each frame as it is
    /// assembled (its first 64 bytes, its buffers, which now belong to the caller) and a
    /// [`FrameReader`] to read the whole of it if wanted. The fastest receive path.
    #[inline]
    pub fn rx_poll_with(&mut self, f: impl FnMut(&FrameReader<'_>, RxFrame<'_>)) -> Result<usize> {
        let cap = usize::from(self.rx.queue_size());
        self.rx_frames(cap, f)
    }

    /// Both receive paths: pass 1 takes up to `limit` used entries and prefetches their
    /// buffers' first two cache lines (written by the device on another core, so that the
    /// misses overlap); pass 2 assembles frames (num_buffers) and hands each to `f`.
    #[inline]
    fn rx_frames(
        &mut self,
        limit: usize,
        mut f: impl FnMut(&FrameReader<'_>, RxFrame<'_>),
    ) -> Result<usize> {
        let pending = self.rx.used_pending()?;
        self.popped.clear();
        self.popped_err.clear();
        let limit = usize::from(pending).min(limit);
        let ZcNet {
            rx,
            mem,
            bufs,
            owner,
            rx_buf_of,
            popped,
            popped_err,
            ..
        } = self;
        let broken = each!(rx, q => {
            let mut broken = None;
            while popped.len() < limit {
                match rx_buffer(q.pop_used(), rx_buf_of, owner) {
                    Ok(Some((b, len))) => {
                        let off = bufs[b as usize].offset;
                        mem.prefetch(off);
                        mem.prefetch(off + 64);
                        popped.push((b, len));
                    }
                    Ok(None) => break,
                    Err((e, Some(b))) => {
                        let d = match e {
                            Error::Device(d) => d,
                            _ => DeviceError::RxTooShort { len: 0, min: 0 },
                        };
                        popped_err.push((popped.len(), d));
                        popped.push((b, 0));
                    }
                    Err((e, None)) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            broken
        });
        if self.popped.is_empty() {
            return match broken {
                Some(e) => Err(e),
                None => Ok(0),
            };
        }
        let ZcNet {
            mem,
            bufs,
            popped,
            popped_err,
            stats,
            hdr_len,
            mrg,
            ..
        } = self;
        let (hdr, mrg) = (*hdr_len, *mrg);
        let reader = FrameReader { mem, bufs, hdr };
        let min = (hdr + 14) as u64;
        let bad_at = |pos: usize| {
            popped_err
                .iter()
                .find(|(p, _)| *p == pos)
                .map(|(_, e)| e.clone())
        };
        let (n, mut i, mut frames) = (popped.len(), 0, 0);
        let mut tmp = [0u8; FIXED_READ];
        while i < n {
            let first = i;
            let (b0, len0) = popped[i];
            i += 1;
            frames += 1;
            let mut error = if popped_err.is_empty() {
                None
            } else {
                bad_at(first)
            };
            if error.is_none() && (len0 as usize) < hdr {
                error = Some(DeviceError::RxTooShort {
                    len: len0.into(),
                    min,
                });
            }
            if let Some(e) = error {
                stats.rx_errors += 1;
                f(
                    &reader,
                    RxFrame {
                        len: 0,
                        bufs: &popped[first..i],
                        head: &[],
                        error: Some(&e),
                    },
                );
                continue;
            }
            let buf0 = bufs[b0 as usize];
            let want = (len0 as usize).min(FIXED_READ);
            if buf0.cap as usize >= FIXED_READ {
                // A constant-size copy (reading past the used length is harmless: the bytes
                // are inside our buffer and never trusted).
                mem.read_fixed(buf0.offset, &mut tmp)?;
            } else {
                mem.read(buf0.offset, &mut tmp[..want])?;
            }
            let num_buffers = if mrg {
                let at = NUM_BUFFERS_OFFSET as usize;
                u16::from_le_bytes([tmp[at], tmp[at + 1]])
            } else {
                1
            };
            let left = n - i;
            let mut total = u64::from(len0) - hdr as u64;
            let mut error = None;
            if num_buffers == 0 || usize::from(num_buffers) - 1 > left {
                // More than was taken (a device lying about num_buffers, or a queue that
                // broke): an error frame; its further buffers, if any, come as frames of
                // their own.
                error = Some(DeviceError::BadNumBuffers {
                    num_buffers,
                    available: left.min(usize::from(u16::MAX - 1)) as u16 + 1,
                });
            } else {
                for _ in 1..num_buffers {
                    if error.is_none() && !popped_err.is_empty() {
                        error = bad_at(i);
                    }
                    total += u64::from(popped[i].1);
                    i += 1;
                }
            }
            if error.is_none() && total < 14 {
                error = Some(DeviceError::RxTooShort {
                    len: total + hdr as u64,
                    min,
                });
            }
            if error.is_none() && total > u64::from(u32::MAX) {
                error = Some(DeviceError::FrameTooLong {
                    len: total,
                    max: u32::MAX.into(),
                });
            }
            if let Some(e) = error {
                stats.rx_errors += 1;
                f(
                    &reader,
                    RxFrame {
                        len: 0,
                        bufs: &popped[first..i],
                        head: &[],
                        error: Some(&e),
                    },
                );
                continue;
            }
            let head_len = (want - hdr).min(total as usize).min(FIXED_READ - hdr);
            f(
                &reader,
                RxFrame {
                    len: total as usize,
                    bufs: &popped[first..i],
                    head: &tmp[hdr..hdr + head_len],
                    error: None,
                },
            );
        }
        Ok(frames)
    }

    /// Copies the whole of `frame` (net header excluded) into `out`; returns its length.
    /// Fails if `out` is too small.
    pub fn read_frame(&self, frame: &RxFrame<'_>, out: &mut [u8]) -> Result<usize> {
        FrameReader {
            mem: self.mem,
            bufs: &self.bufs,
            hdr: self.hdr_len,
        }
        .read_frame(frame, out)
    }

    /// Free TX descriptors.
    #[inline]
    pub fn tx_room(&self) -> usize {
        usize::from(self.tx.num_free())
    }

    /// TX chains posted and not yet reclaimed.
    #[inline]
    pub fn tx_in_flight(&self) -> usize {
        usize::from(self.tx.in_flight())
    }

    /// Posts the first `len` bytes of buffer `id` (net header + frame, already written) as a
    /// one-descriptor TX chain; visible after [`ZcNet::tx_publish`].
    #[inline]
    pub fn tx_post(&mut self, id: BufId, len: u32) -> Result<()> {
        let b = self.buf(id)?;
        if len == 0 || len > b.cap {
            return Err(Error::InvalidArgument(format!(
                "TX of {len} bytes from buffer {id} of {}",
                b.cap
            )));
        }
        self.take(id, ON_TX)?;
        match self.tx.add_buf(self.gpa(b.offset), len, false) {
            Ok(head) => {
                let h = usize::from(head);
                self.tx_bufs[h * MAX_TX_CHAIN] = id;
                self.tx_nbufs[h] = 1;
                Ok(())
            }
            Err(e) => {
                self.owner[id as usize] = FREE;
                Err(e)
            }
        }
    }

    /// Posts a TX chain of up to [`MAX_TX_CHAIN`] buffers, each with the bytes to send from
    /// it (the first one starts with the net header); visible after [`ZcNet::tx_publish`].
    pub fn tx_post_chain(&mut self, bufs: &[(BufId, u32)]) -> Result<()> {
        if bufs.is_empty() || bufs.len() > MAX_TX_CHAIN {
            return Err(Error::InvalidArgument(format!(
                "TX chain of {} buffers (1..={MAX_TX_CHAIN})",
                bufs.len()
            )));
        }
        if bufs.len() == 1 {
            return self.tx_post(bufs[0].0, bufs[0].1);
        }
        let mut segs = [Seg::readable(0, 0); MAX_TX_CHAIN];
        for (k, &(id, len)) in bufs.iter().enumerate() {
            let b = self.buf(id)?;
            if len == 0 || len > b.cap || self.owner[id as usize] != FREE {
                return Err(Error::InvalidArgument(format!(
                    "TX of {len} bytes from buffer {id} (capacity {}, posted: {})",
                    b.cap,
                    self.owner[id as usize] != FREE
                )));
            }
            if bufs[..k].iter().any(|&(o, _)| o == id) {
                return Err(Error::InvalidArgument(format!(
                    "buffer {id} twice in a chain"
                )));
            }
            segs[k] = Seg::readable(self.gpa(b.offset), len);
        }
        let head = self.tx.add_chain(&segs[..bufs.len()])?;
        let h = usize::from(head);
        for (k, &(id, _)) in bufs.iter().enumerate() {
            self.owner[id as usize] = ON_TX;
            self.tx_bufs[h * MAX_TX_CHAIN + k] = id;
        }
        self.tx_nbufs[h] = bufs.len() as u8;
        Ok(())
    }

    /// Publishes the TX chains posted so far (one avail.idx store) and kicks if needed.
    #[inline]
    pub fn tx_publish(&mut self) {
        self.tx.publish();
        Self::kick(&mut self.tx, self.tx_kick.as_ref(), &mut self.stats);
    }

    /// Takes back the TX chains the device used (used.idx read once per ring's worth) and
    /// hands each of their buffers to `f`; returns how many chains.
    #[inline]
    pub fn tx_reclaim(&mut self, mut f: impl FnMut(BufId)) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.tx.poll_used(&mut self.used)?;
            for u in &self.used[..n] {
                let h = usize::from(u.id);
                let nb = usize::from(std::mem::take(&mut self.tx_nbufs[h]));
                for &b in &self.tx_bufs[h * MAX_TX_CHAIN..h * MAX_TX_CHAIN + nb] {
                    self.owner[b as usize] = FREE;
                    f(b);
                }
            }
            total += n;
            if n < self.used.len() {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake::FakeDevice;
    use crate::memory::HugePages;
    use crate::null_backend::{NullBackend, Route};
    use crate::sequences::bits::F_VERSION_1;

    const FEATURES: u64 = F_VERSION_1 | NET_F_MRG_RXBUF;

    fn setup(mem: &SharedMemory) -> (ZcNet<'_>, Vring, Vring) {
        let rx = Vring::new(mem, 0, 64).unwrap();
        let tx = Vring::new(mem, rx.end_offset(), 64).unwrap();
        (
            ZcNet::new(mem, rx, tx, FEATURES, Kick::Never).unwrap(),
            rx,
            tx,
        )
    }

    #[test]
    fn prefilled_tx_buffers_loop_back_zero_copy_with_merged_rx() {
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let (mut net, rx, tx) = setup(&mem);
        let rx_bufs: Vec<BufId> = (0..8)
            .map(|i| net.add_buffer(0x10000 + i * 512, 512).unwrap())
            .collect();
        let tx_buf = net.add_buffer(0x20000, 4096).unwrap();
        for &b in &rx_bufs {
            net.rx_post(b).unwrap();
        }
        net.rx_publish();
        assert_eq!(net.rx_posted(), 8);
        let frame: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        mem.write(net.buf_offset(tx_buf), &[0u8; 12]).unwrap();
        mem.write(net.buf_offset(tx_buf) + 12, &frame).unwrap();
        net.tx_post(tx_buf, 1012).unwrap();
        assert!(
            net.tx_post(tx_buf, 1012).is_err(),
            "a posted buffer cannot be posted again"
        );
        net.tx_publish();
        let mut dev = NullBackend::new(8);
        let p = dev.add_port(&mem, &rx, &tx, FEATURES).unwrap();
        dev.set_route(p, Route::Port(p)).unwrap();
        assert_eq!(dev.poll(), 1);
        let mut back = Vec::new();
        assert_eq!(net.tx_reclaim(|b| back.push(b)).unwrap(), 1);
        assert_eq!(back, [tx_buf]);
        let mut batch = net.rx_batch(64);
        assert_eq!(net.rx_poll(&mut batch).unwrap(), 1);
        let f = batch.get(0).unwrap();
        assert!(f.error.is_none());
        assert_eq!(f.len, 1000);
        assert_eq!(f.bufs.len(), 2, "1012 bytes in 512-byte buffers");
        assert_eq!((f.bufs[0].1, f.bufs[1].1), (512, 500));
        assert_eq!(f.head, &frame[..64]);
        let mut out = vec![0u8; 2000];
        assert_eq!(net.read_frame(&f, &mut out).unwrap(), 1000);
        assert_eq!(&out[..1000], &frame[..]);
        assert!(net.read_frame(&f, &mut out[..999]).is_err());
        // The frame's buffers are ours again: they can be re-posted, or sent as a chain.
        let chain: Vec<(BufId, u32)> = f.bufs.to_vec();
        net.tx_post_chain(&chain).unwrap();
        net.tx_publish();
        dev.poll();
        let mut back = Vec::new();
        net.tx_reclaim(|b| back.push(b)).unwrap();
        assert_eq!(back, [chain[0].0, chain[1].0]);
        assert_eq!(
            net.rx_poll(&mut batch).unwrap(),
            1,
            "the chain came back as one frame"
        );
        assert_eq!(batch.get(0).unwrap().len, 1000);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let (mut net, _, _) = setup(&mem);
        assert!(net.add_buffer(0, 0).is_err());
        assert!(net.add_buffer((1 << 20) - 10, 11).is_err());
        assert!(net.add_buffer(u64::MAX, 2).is_err());
        let b = net.add_buffer(0x10000, 256).unwrap();
        assert!(net.tx_post(b, 257).is_err());
        assert!(net.tx_post(b, 0).is_err());
        assert!(net.tx_post(99, 10).is_err());
        assert!(net.rx_post(99).is_err());
        assert!(net.tx_post_chain(&[]).is_err());
        assert!(
            net.tx_post_chain(&[(b, 10), (b, 10)]).is_err(),
            "same buffer twice"
        );
        net.rx_post(b).unwrap();
        assert!(net.rx_post(b).is_err());
        let c = net.add_buffer(0x10100, 256).unwrap();
        assert!(
            net.tx_post_chain(&[(c, 10), (b, 10)]).is_err(),
            "b is posted on RX"
        );
        assert_eq!(net.tx_in_flight(), 0);
    }

    #[test]
    fn a_bad_num_buffers_comes_back_as_an_error_frame_with_its_buffer() {
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let (mut net, rx, _) = setup(&mem);
        let bufs: Vec<BufId> = (0..4)
            .map(|i| net.add_buffer(0x10000 + i * 2048, 2048).unwrap())
            .collect();
        for &b in &bufs {
            net.rx_post(b).unwrap();
        }
        net.rx_publish();
        let mut dev = FakeDevice::new(&mem, &rx);
        // A good 100-byte frame, then one claiming 7 buffers with only 1 published.
        assert!(dev.deliver(&[0xab; 100], 12, true));
        let c = dev.pop().unwrap();
        let mut hdr = [0u8; 12];
        hdr[10] = 7;
        dev.write_chain(&c, &hdr);
        dev.push_used(u32::from(c.head), 80);
        dev.publish_used();
        let mut batch = net.rx_batch(64);
        assert_eq!(net.rx_poll(&mut batch).unwrap(), 2);
        let good = batch.get(0).unwrap();
        assert!(good.error.is_none());
        assert_eq!((good.len, good.head.len()), (100, 64));
        let bad = batch.get(1).unwrap();
        assert!(
            matches!(
                bad.error,
                Some(DeviceError::BadNumBuffers { num_buffers: 7, .. })
            ),
            "{bad:?}"
        );
        assert_eq!(bad.bufs.len(), 1);
        assert_eq!(net.stats().rx_errors, 1);
        // Both buffers can be posted again.
        let ids: Vec<BufId> = batch
            .iter()
            .flat_map(|f| f.bufs.iter().map(|&(b, _)| b))
            .collect();
        for b in ids {
            net.rx_post(b).unwrap();
        }
        // A used id the driver never posted breaks the queue: an error, not a panic.
        dev.push_used(63, 0);
        dev.publish_used();
        assert!(net.rx_poll(&mut batch).is_err());
    }
}
