//! One generator port: its memory plan, its buffers (RX pool, one TX pool per frame size
//! holding prebuilt frames), and the per-burst TX, RX and reclaim paths.
//!
//! Per transmitted packet: pop a buffer of the size class, restamp its first 64 bytes (one
//! 64-byte copy into guest memory), post it by id. Per received packet: the poll copies the
//! net header and the first 64 frame bytes; parse, sequence tracking and latency use those;
//! the whole frame is read only for the sampled (or `--verify all`) full check. Nothing is
//! allocated per packet.

use super::clock::now_ns;
use super::frame::{self, Parsed, Template, HEAD_LEN, MAX_FRAME, STAMP_LEN, STAMP_OFFSET};
use super::histogram::Histogram;
use super::rate::RateLimiter;
use super::seq::SeqTracker;
use super::{Config, FrameSize, Verify};
use vhost_kit::driver::split::Kick;
use vhost_kit::driver::zerocopy::{BufId, RxBatch, RxFrame, ZcNet, MAX_TX_CHAIN};
use vhost_kit::error::Result;
use vhost_kit::memory::SharedMemory;
use vhost_kit::sequences::bits::NET_F_MRG_RXBUF;
use vhost_kit::vring::{RingLayout, Vring};

/// Class of the RX buffers (TX classes are 0..).
pub(crate) const RX_CLASS: u8 = u8::MAX;
/// IMIX frame sizes.
pub const IMIX_SIZES: [usize; 3] = [64, 576, 1500];
/// IMIX order of size classes: 7 × 64, 4 × 576, 1 × 1500, interleaved.
pub(crate) const IMIX_PATTERN: [u8; 12] = [0, 1, 0, 2, 0, 1, 0, 0, 1, 0, 0, 1];

const PAGE: u64 = 4096;

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Frame sizes of the classes and the order they are sent in.
pub(crate) fn classes(size: &FrameSize) -> (Vec<usize>, Vec<u8>) {
    match size {
        FrameSize::Fixed(n) => (vec![*n], vec![0]),
        FrameSize::Imix => (IMIX_SIZES.to_vec(), IMIX_PATTERN.to_vec()),
    }
}

/// What a port does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PortRole {
    /// Transmits a stream towards this port index (addresses of the frames).
    pub tx_to: Option<u8>,
    /// Receives (counts, verifies).
    pub rx: bool,
    /// Sends what it receives back out (loopback).
    pub echo: bool,
    /// Its stream is received by a port of this generator (closed loop): TX in flight is
    /// capped to what the receiver's RX ring can hold, so that a stall of the generator
    /// thread cannot make the backend drop for lack of RX buffers.
    pub closed_loop: bool,
}

/// Where a port's rings and buffers go in its memory.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Split or packed rings (RING_PACKED negotiated).
    pub layout: RingLayout,
    pub queue_size: u16,
    pub rx_buf: u32,
    pub rx_count: usize,
    pub classes: Vec<usize>,
    /// Slot size of each class's TX buffers (the buffer is the slot minus `64 - hdr`).
    pub class_buf: Vec<u32>,
    pub tx_count: usize,
    pub tx_window: usize,
}

impl Plan {
    pub fn new(cfg: &Config, features: u64, role: &PortRole) -> Plan {
        let q = cfg.queue_size;
        let hdr = vhost_kit::driver::net::net_hdr_len(features);
        let (sizes, _) = classes(&cfg.size);
        let largest = sizes.iter().copied().max().unwrap_or(MAX_FRAME);
        let whole = align_up((hdr + largest) as u64, 64) as u32;
        let rx_buf = if features & NET_F_MRG_RXBUF != 0 {
            cfg.rx_buf_size
        } else {
            cfg.rx_buf_size.max(whole)
        };
        let rx_count = match (role.rx, role.echo) {
            (false, _) => 0,
            (true, false) => usize::from(q),
            (true, true) => 2 * usize::from(q) + 2 * usize::from(cfg.burst),
        };
        let tx_count = if role.tx_to.is_some() {
            usize::from(q)
        } else {
            0
        };
        // Each TX buffer starts `64 - hdr` bytes into a 64-byte aligned slot, so that the
        // frame starts on a cache line: the 64 bytes restamped per packet are one line.
        let class_buf = sizes
            .iter()
            .map(|&s| align_up((64 + s) as u64, 64) as u32)
            .collect();
        Plan {
            layout: RingLayout::for_features(features),
            queue_size: q,
            rx_buf,
            rx_count,
            classes: sizes,
            class_buf,
            tx_count,
            tx_window: 0,
        }
        .with_window(cfg, hdr, largest, role)
    }

    /// Most TX frames in flight: the ring, or in a closed loop what the receiver's RX ring
    /// holds (frames of the largest size; receivers use the same plan) minus two bursts.
    fn with_window(mut self, cfg: &Config, hdr: usize, largest: usize, role: &PortRole) -> Self {
        let q = usize::from(self.queue_size);
        self.tx_window = if role.closed_loop {
            let per_frame = (hdr + largest).div_ceil(self.rx_buf as usize).max(1);
            let burst = usize::from(cfg.burst);
            (q / per_frame).saturating_sub(2 * burst).max(burst)
        } else {
            q
        };
        self
    }

    fn rings_end(&self) -> u64 {
        // Each ring starts 16-aligned after the previous one.
        2 * (Vring::footprint(self.layout, self.queue_size) + 16)
    }

    fn pool_offset(&self) -> u64 {
        align_up(self.rings_end(), PAGE)
    }

    /// Bytes of memory the port needs.
    pub fn mem_size(&self) -> usize {
        let rx = self.rx_count as u64 * u64::from(self.rx_buf);
        let tx: u64 = self
            .class_buf
            .iter()
            .map(|&b| self.tx_count as u64 * u64::from(b))
            .sum();
        align_up(self.pool_offset() + rx + tx, PAGE) as usize
    }
}

/// A transmitted stream's generator state.
pub(crate) struct TxGen {
    pub active: bool,
    vary: bool,
    flows: u32,
    flow: u32,
    round: u64,
    pattern: Vec<u8>,
    pat: usize,
    templates: Vec<Template>,
    tx_len: Vec<u32>,
    pub limiter: RateLimiter,
    burst: usize,
    /// Most frames in flight on the TX ring.
    window: usize,
    pub sent: u64,
    pub sent_bytes: u64,
    /// TX bursts attempted, and those the ring or window cut short.
    pub bursts: u64,
    pub blocked: u64,
}

/// What a port received of one stream.
pub(crate) struct DirRx {
    pub seq: SeqTracker,
    pub hist: Histogram,
    pub bytes: u64,
    pub corrupted: u64,
}

impl DirRx {
    fn new(flows: u32) -> Self {
        DirRx {
            seq: SeqTracker::new(flows as usize),
            hist: Histogram::new(),
            bytes: 0,
            corrupted: 0,
        }
    }
}

/// Port counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PortCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_foreign: u64,
    /// Damaged pktgen frames whose stream could not be told.
    pub rx_corrupt: u64,
    pub rx_errors: u64,
    pub verified: u64,
    pub echoed: u64,
    pub echo_dropped: u64,
}

/// Description of a port for the report.
#[derive(Debug, Clone, Default)]
pub(crate) struct PortInfo {
    pub socket: String,
    pub role: String,
    pub protocol_features: u64,
    pub hugepages: bool,
    pub memory_bytes: usize,
}

/// One generator port at run time.
pub(crate) struct PortRt<'m> {
    pub name: String,
    pub net: ZcNet<'m>,
    pub info: PortInfo,
    hdr: usize,
    pub rx_on: bool,
    echo: bool,
    macswap: bool,
    flows: u32,
    rx_free: Vec<BufId>,
    class_of: Vec<u8>,
    class_free: Vec<Vec<BufId>>,
    batch: RxBatch,
    pub tx: Option<TxGen>,
    pub dirs: Vec<Option<Box<DirRx>>>,
    pub c: PortCounters,
    scratch: Vec<u8>,
    verify: Verify,
    verify_ctr: u32,
    pub error: Option<String>,
}

/// Counts one good received frame: parse its head, track its sequence number and latency
/// per stream; with `full` (a reader and a scratch buffer) also check the whole frame.
#[inline]
fn account<R: Fn(&RxFrame<'_>, &mut [u8]) -> Option<usize>>(
    dirs: &mut [Option<Box<DirRx>>],
    c: &mut PortCounters,
    flows: u32,
    now: u64,
    f: &RxFrame<'_>,
    full: Option<(&R, &mut [u8])>,
) {
    c.rx_packets += 1;
    c.rx_bytes += f.len as u64;
    match frame::parse(f.head, f.len) {
        Parsed::Ok(st) => {
            let d = dirs[usize::from(st.stream)].get_or_insert_with(|| Box::new(DirRx::new(flows)));
            d.seq.record(st.flow, st.seq);
            d.bytes += f.len as u64;
            d.hist.record(now.saturating_sub(st.ts));
            if let Some((read, scratch)) = full {
                c.verified += 1;
                let ok = match read(f, scratch) {
                    Some(len) => frame::verify_full(&scratch[..len], &st),
                    None => false,
                };
                if !ok {
                    d.corrupted += 1;
                }
            }
        }
        Parsed::Corrupt(Some(s)) => {
            dirs[usize::from(s)]
                .get_or_insert_with(|| Box::new(DirRx::new(flows)))
                .corrupted += 1;
        }
        Parsed::Corrupt(None) => c.rx_corrupt += 1,
        Parsed::Foreign => c.rx_foreign += 1,
    }
}

impl<'m> PortRt<'m> {
    /// Lays the port out in `mem` per `plan`: rings at 0, buffers after; prebuilds the TX
    /// frames; posts the RX buffers (published, not kicked). Returns the port and its rings.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        mem: &'m SharedMemory,
        plan: &Plan,
        cfg: &Config,
        idx: u8,
        name: &str,
        role: PortRole,
        features: u64,
        kick: Kick,
    ) -> Result<(Self, Vring, Vring)> {
        let q = plan.queue_size;
        let rx = Vring::with_layout(mem, 0, q, plan.layout)?;
        let tx = Vring::with_layout(mem, rx.end_offset(), q, plan.layout)?;
        let mut net = ZcNet::new(mem, rx, tx, features, kick)?;
        let hdr = net.hdr_len();
        let mut at = plan.pool_offset();
        let mut class_of = Vec::new();
        let mut rx_free = Vec::with_capacity(plan.rx_count);
        for _ in 0..plan.rx_count {
            rx_free.push(net.add_buffer(at, plan.rx_buf)?);
            class_of.push(RX_CLASS);
            at += u64::from(plan.rx_buf);
        }
        let (_, pattern) = classes(&cfg.size);
        let mut class_free = Vec::new();
        let mut templates = Vec::new();
        let mut img = vec![0u8; hdr + MAX_FRAME];
        let lead = (64 - hdr) as u64;
        for (k, (&len, &slot)) in plan.classes.iter().zip(&plan.class_buf).enumerate() {
            let mut free = Vec::with_capacity(plan.tx_count);
            if let Some(dst) = role.tx_to {
                let t = Template::new(len, idx, idx, dst)
                    .map_err(|e| vhost_kit::Error::InvalidArgument(e.to_string()))?;
                img[..hdr].fill(0);
                t.fill(&mut img[hdr..hdr + len]);
                for _ in 0..plan.tx_count {
                    mem.write(at + lead, &img[..hdr + len])?;
                    let id = net.add_buffer(at + lead, slot - lead as u32)?;
                    class_of.push(k as u8);
                    free.push(id);
                    at += u64::from(slot);
                }
                templates.push(t);
            }
            class_free.push(free);
        }
        let tx_gen = role.tx_to.map(|_| TxGen {
            active: false,
            vary: cfg.flows > 1,
            flows: cfg.flows.max(1),
            flow: 0,
            round: 0,
            pattern: pattern.clone(),
            pat: 0,
            tx_len: plan.classes.iter().map(|&l| (hdr + l) as u32).collect(),
            templates,
            limiter: RateLimiter::new(None, u32::from(cfg.burst)),
            burst: usize::from(cfg.burst),
            window: plan.tx_window,
            sent: 0,
            sent_bytes: 0,
            bursts: 0,
            blocked: 0,
        });
        let verify = cfg.verify;
        let mut p = PortRt {
            name: name.to_string(),
            batch: net.rx_batch(HEAD_LEN),
            net,
            info: PortInfo::default(),
            hdr,
            rx_on: role.rx,
            echo: role.echo,
            macswap: cfg.macswap,
            flows: cfg.flows.max(1),
            rx_free,
            class_of,
            class_free,
            tx: tx_gen,
            dirs: (0..256).map(|_| None).collect(),
            c: PortCounters::default(),
            scratch: if verify == Verify::None {
                Vec::new()
            } else {
                vec![0; 65536]
            },
            verify,
            verify_ctr: 0,
            error: None,
        };
        p.refill()?;
        Ok((p, rx, tx))
    }

    /// Whether the port still runs (no device error).
    pub fn alive(&self) -> bool {
        self.error.is_none()
    }

    /// Posts free RX buffers while the ring has room; publishes once.
    fn refill(&mut self) -> Result<()> {
        Self::refill_parts(&mut self.net, &mut self.rx_free)
    }

    fn refill_parts(net: &mut ZcNet<'m>, rx_free: &mut Vec<BufId>) -> Result<()> {
        net.rx_refill(rx_free).map(|_| ())
    }

    /// Takes back completed TX chains (their buffers go back to their pools).
    pub fn reclaim(&mut self) -> Result<usize> {
        if self.net.tx_in_flight() == 0 {
            return Ok(0);
        }
        let PortRt {
            net,
            class_of,
            class_free,
            rx_free,
            ..
        } = self;
        net.tx_reclaim(|b| match class_of.get(b as usize) {
            Some(&RX_CLASS) => rx_free.push(b),
            Some(&k) => class_free[usize::from(k)].push(b),
            None => {}
        })
    }

    /// Generates one burst (bounded by the burst size, free descriptors and the rate).
    #[inline]
    pub fn tx_burst(&mut self, now: u64) -> Result<usize> {
        let PortRt {
            net,
            class_free,
            tx,
            c,
            hdr,
            ..
        } = self;
        let Some(g) = tx.as_mut() else { return Ok(0) };
        if !g.active {
            return Ok(0);
        }
        let room = net
            .tx_room()
            .min(g.burst)
            .min(g.window.saturating_sub(net.tx_in_flight())) as u32;
        // Back-pressure: the ring (or window) could not take a whole burst.
        g.bursts += 1;
        if (room as usize) < g.burst {
            g.blocked += 1;
        }
        if room == 0 {
            return Ok(0);
        }
        let n = g.limiter.available(now, room);
        if n == 0 {
            return Ok(0);
        }
        let mem = net.mem();
        let mut head = [0u8; HEAD_LEN];
        let mut stamp = [0u8; STAMP_LEN];
        let mut sent = 0u32;
        let mut bytes = 0u64;
        let mut result = Ok(());
        while sent < n {
            let class = usize::from(g.pattern[g.pat]);
            let Some(b) = class_free[class].pop() else {
                break;
            };
            let t = &g.templates[class];
            let at = net.buf_offset(b) + *hdr as u64;
            let written = if g.vary {
                t.stamp(&mut head, g.flow as u16, g.round, now, true);
                mem.write(at, &head)
            } else {
                // One flow: the addresses in the buffer stay; only the stamp changes.
                t.stamp_fields(&mut stamp, 0, g.round, now);
                mem.write(at + STAMP_OFFSET as u64, &stamp)
            };
            let posted = written.and_then(|()| net.tx_post(b, g.tx_len[class]));
            if let Err(e) = posted {
                class_free[class].push(b);
                result = Err(e);
                break;
            }
            sent += 1;
            bytes += t.len() as u64;
            g.pat += 1;
            if g.pat == g.pattern.len() {
                g.pat = 0;
            }
            g.flow += 1;
            if g.flow == g.flows {
                g.flow = 0;
                g.round += 1;
            }
        }
        g.limiter.take(sent);
        g.sent += u64::from(sent);
        g.sent_bytes += bytes;
        c.tx_packets += u64::from(sent);
        c.tx_bytes += bytes;
        if sent > 0 {
            net.tx_publish();
        }
        result.map(|()| sent as usize)
    }

    /// Polls the receive ring once: counts, tracks and verifies what arrived (or echoes it),
    /// then re-posts the free RX buffers. Latency is measured against a clock read right
    /// after a non-empty poll.
    #[inline]
    pub fn rx_burst(&mut self) -> Result<usize> {
        if !self.rx_on {
            return Ok(0);
        }
        if self.echo {
            return self.rx_burst_echo();
        }
        let PortRt {
            net,
            rx_free,
            dirs,
            c,
            scratch,
            verify,
            verify_ctr,
            flows,
            ..
        } = self;
        let mut now = 0;
        let n = net.rx_poll_with(|rd, f| {
            if f.error.is_none() {
                if now == 0 {
                    now = now_ns();
                }
                let full = match *verify {
                    Verify::None => false,
                    Verify::All => true,
                    Verify::Sample(k) => {
                        *verify_ctr += 1;
                        let hit = *verify_ctr >= k;
                        if hit {
                            *verify_ctr = 0;
                        }
                        hit
                    }
                };
                let reader = |f: &RxFrame<'_>, out: &mut [u8]| rd.read_frame(f, out).ok();
                account(
                    dirs,
                    c,
                    *flows,
                    now,
                    &f,
                    full.then_some((&reader, &mut scratch[..])),
                );
            } else {
                c.rx_errors += 1;
            }
            rx_free.extend(f.bufs.iter().map(|&(b, _)| b));
        })?;
        if n > 0 {
            Self::refill_parts(net, rx_free)?;
        }
        Ok(n)
    }

    /// The loopback receive path: frames are accounted, then sent back out in place.
    fn rx_burst_echo(&mut self) -> Result<usize> {
        let PortRt {
            net,
            batch,
            rx_free,
            dirs,
            c,
            macswap,
            flows,
            hdr,
            ..
        } = self;
        let n = net.rx_poll(batch)?;
        if n == 0 {
            return Ok(0);
        }
        let now = now_ns();
        let (mut echoed, mut echo_bytes) = (0, 0);
        for f in batch.iter() {
            if f.error.is_some() {
                c.rx_errors += 1;
                rx_free.extend(f.bufs.iter().map(|&(b, _)| b));
                continue;
            }
            account::<fn(&RxFrame<'_>, &mut [u8]) -> Option<usize>>(dirs, c, *flows, now, &f, None);
            if Self::echo_one(net, &f, *hdr, *macswap) {
                echoed += 1;
                echo_bytes += f.len as u64;
            } else {
                c.echo_dropped += 1;
                rx_free.extend(f.bufs.iter().map(|&(b, _)| b));
            }
        }
        if echoed > 0 {
            c.echoed += echoed;
            c.tx_packets += echoed;
            c.tx_bytes += echo_bytes;
            net.tx_publish();
        }
        Self::refill_parts(net, rx_free)?;
        Ok(n)
    }

    /// Sends a received frame back out, in place (its RX buffers become the TX chain).
    fn echo_one(net: &mut ZcNet<'m>, f: &RxFrame<'_>, hdr: usize, macswap: bool) -> bool {
        if f.bufs.len() > MAX_TX_CHAIN
            || net.tx_room() < f.bufs.len()
            || f.bufs.iter().any(|&(_, l)| l == 0)
        {
            return false;
        }
        let mem = net.mem();
        let off = net.buf_offset(f.bufs[0].0);
        if mem.write(off, &[0u8; 12][..hdr]).is_err() {
            return false;
        }
        if macswap && f.head.len() >= 12 {
            let mut m = [0u8; 12];
            m[..6].copy_from_slice(&f.head[6..12]);
            m[6..].copy_from_slice(&f.head[..6]);
            if mem.write(off + hdr as u64, &m).is_err() {
                return false;
            }
        }
        net.tx_post_chain(f.bufs).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost_kit::memory::HugePages;
    use vhost_kit::null_backend::NullBackend;
    use vhost_kit::sequences::bits::F_VERSION_1;

    #[test]
    fn imix_is_7_4_1_of_64_576_1500() {
        let (sizes, pattern) = classes(&FrameSize::Imix);
        let count = |c: u8| pattern.iter().filter(|&&p| p == c).count();
        assert_eq!((count(0), count(1), count(2)), (7, 4, 1));
        assert_eq!(sizes, [64, 576, 1500]);
        // Interleaved: never two 576 or a 1500 next to each other.
        for w in pattern.windows(2) {
            assert!(w[0] == 0 || w[1] == 0, "{pattern:?}");
        }
        // Generated frames follow the mix exactly.
        let cfg = Config {
            size: FrameSize::Imix,
            burst: 12,
            queue_size: 256,
            ..Config::default()
        };
        let features = F_VERSION_1 | NET_F_MRG_RXBUF;
        let role = PortRole {
            tx_to: Some(1),
            ..PortRole::default()
        };
        let plan = Plan::new(&cfg, features, &role);
        assert_eq!(plan.tx_window, 256);
        let mem = SharedMemory::new(plan.mem_size(), HugePages::Never).unwrap();
        let (mut p, rx, tx) =
            PortRt::build(&mem, &plan, &cfg, 0, "a", role, features, Kick::Never).unwrap();
        let mut dev = NullBackend::new(64);
        dev.add_port(&mem, &rx, &tx, features).unwrap();
        p.tx.as_mut().unwrap().active = true;
        let mut now = 0;
        while p.tx.as_ref().unwrap().sent < 1200 {
            p.tx_burst(now).unwrap();
            dev.poll();
            p.reclaim().unwrap();
            now += 1000;
        }
        let g = p.tx.as_ref().unwrap();
        assert_eq!(g.sent, 1200);
        assert_eq!(g.sent_bytes, 100 * (7 * 64 + 4 * 576 + 1500));
        assert_eq!(dev.stats(0).unwrap().tx_taken, 1200);
    }

    #[test]
    fn closed_loops_keep_what_the_receiver_can_hold_in_flight() {
        let cfg = Config {
            size: FrameSize::Fixed(9000),
            queue_size: 1024,
            burst: 32,
            ..Config::default()
        };
        let role = PortRole {
            tx_to: Some(1),
            rx: true,
            closed_loop: true,
            ..PortRole::default()
        };
        let mrg = Plan::new(&cfg, F_VERSION_1 | NET_F_MRG_RXBUF, &role);
        // 9012 bytes take 5 buffers of 2048: 204 frames, minus two bursts.
        assert_eq!((mrg.rx_buf, mrg.tx_window), (2048, 204 - 64));
        let plain = Plan::new(&cfg, F_VERSION_1, &role);
        assert_eq!((plain.rx_buf, plain.tx_window), (9024, 1024 - 64));
        let small = Plan::new(
            &Config {
                size: FrameSize::Fixed(64),
                ..cfg.clone()
            },
            F_VERSION_1 | NET_F_MRG_RXBUF,
            &role,
        );
        assert_eq!(small.tx_window, 1024 - 64);
    }
}
