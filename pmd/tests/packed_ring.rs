//! Packed rings through the fast path, against drivers modelled here from virtio 1.2 §2.7
//! (split) and §2.8 (packed): frames from a guest TX ring to another guest's RX ring with
//! either layout on either side, MRG_RXBUF, IN_ORDER and indirect tables on or off, across
//! many wraps of small rings; and what a hostile packed driver can do to the switch.
//!
//! virtio-queue has no packed ring, so the model is our own: a driver that posts chains,
//! reads used entries back (one per batch with IN_ORDER) and checks every byte delivered.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pmd::forward::{poll_tx, Context, Scratch, DEFAULT_MAX_FRAME};
use pmd::memory::{GuestMemoryMap, MappedRegion, RegionSpec};
use pmd::queue::{RingFeatures, RingRuntime};
use pmd::snapshot::PortSnapshot;
use pmd::stats::{DropReason, QueueStats, QueueTotals};
use pmd::switch::{Mode, Switch};
use pmd::vring::{translate, Layout, RingAddrs};
use proptest::prelude::*;

const MEM: u64 = 1 << 20;
const VERSION_1: u64 = 1 << 32;
const MRG_RXBUF: u64 = 1 << 15;
const INDIRECT_DESC: u64 = 1 << 28;
const RING_PACKED: u64 = 1 << 34;
const IN_ORDER: u64 = 1 << 35;
const HDR: usize = 12;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;

/// One guest's memory: a memfd mapped as the switch maps it.
struct Memory {
    map: Arc<GuestMemoryMap>,
}

impl Memory {
    fn new() -> Memory {
        // SAFETY: memfd_create takes a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"packed-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM).unwrap();
        let spec = RegionSpec {
            guest_phys_addr: 0,
            size: MEM,
            user_addr: 0,
            mmap_offset: 0,
        };
        let region = Arc::new(MappedRegion::map(spec, &file).unwrap());
        Memory {
            map: Arc::new(GuestMemoryMap::new(vec![region], 8).unwrap()),
        }
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        let r = self.map.translate_gpa(gpa, bytes.len() as u64).unwrap();
        self.map.slice(&r).unwrap().write(0, bytes).unwrap();
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        let r = self.map.translate_gpa(gpa, len as u64).unwrap();
        self.map.slice(&r).unwrap().read(0, &mut out).unwrap();
        out
    }

    fn load_u16(&self, gpa: u64) -> u16 {
        let r = self.map.translate_gpa(gpa, 2).unwrap();
        self.map
            .slice(&r)
            .unwrap()
            .load_u16(0, Ordering::Acquire)
            .unwrap()
    }

    fn store_u16(&self, gpa: u64, v: u16) {
        let r = self.map.translate_gpa(gpa, 2).unwrap();
        self.map
            .slice(&r)
            .unwrap()
            .store_u16(0, v, Ordering::Release)
            .unwrap();
    }

    fn u32_at(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
    }
}

/// A chain the driver posted: its id and buffers, in posting order.
#[derive(Clone, Debug)]
struct Posted {
    id: u16,
    /// Ring descriptors it occupies (packed) or descriptor indexes (split).
    descs: Vec<u16>,
    bufs: Vec<(u64, u32)>,
}

/// A driver of one ring at `base` (descriptors at +0, driver area at +0x1000, device area
/// at +0x2000) whose chains use the buffer slots at `bufs`.
struct Driver {
    packed: bool,
    in_order: bool,
    size: u16,
    base: u64,
    /// Split: next avail index; packed: next position and the wrap counter.
    next_avail: u16,
    avail_wrap: bool,
    /// Split: next used index to read; packed: next used position and wrap counter.
    next_used: u16,
    used_wrap: bool,
    /// Split: free descriptor indexes; packed: free buffer ids.
    free: Vec<u16>,
    /// Packed: free descriptor slots in the ring.
    free_slots: u16,
    in_flight: VecDeque<Posted>,
}

impl Driver {
    fn new(packed: bool, in_order: bool, size: u16, base: u64) -> Driver {
        Driver {
            packed,
            in_order,
            size,
            base,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            free: (0..size).rev().collect(),
            free_slots: size,
            in_flight: VecDeque::new(),
        }
    }

    fn addrs(&self) -> RingAddrs {
        RingAddrs {
            desc: self.base,
            avail: self.base + 0x1000,
            used: self.base + 0x2000,
        }
    }

    fn runtime(&self, mem: &Memory, index: u16, features: u64) -> RingRuntime {
        let layout = Layout::from_features(features);
        let t = translate(&mem.map, self.size, self.addrs(), layout).unwrap();
        let base = if self.packed { 0x8000 } else { 0 };
        RingRuntime::start(
            index,
            base,
            t,
            mem.map.clone(),
            RingFeatures::from_features(features),
            true,
            None,
        )
    }

    fn room(&self, descriptors: usize) -> bool {
        if self.packed {
            usize::from(self.free_slots) >= descriptors && !self.free.is_empty()
        } else {
            self.free.len() >= descriptors
        }
    }

    fn desc_bytes(addr: u64, len: u32, a: u16, b: u16) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&a.to_le_bytes());
        d[14..16].copy_from_slice(&b.to_le_bytes());
        d
    }

    /// Posts a chain of `bufs`, or with `indirect` one descriptor naming a table of them
    /// at `table`. Returns false when the ring has no room.
    fn post(
        &mut self,
        mem: &Memory,
        bufs: &[(u64, u32)],
        writable: bool,
        indirect: Option<u64>,
    ) -> bool {
        let ring_descs = if indirect.is_some() { 1 } else { bufs.len() };
        if !self.room(ring_descs) {
            return false;
        }
        let w = if writable { F_WRITE } else { 0 };
        if self.packed {
            let id = self.free.pop().unwrap();
            let mut descs = Vec::new();
            let head_pos = self.next_avail;
            let mut head_flags = 0;
            let entries: Vec<(u64, u32, u16)> = match indirect {
                Some(table) => {
                    for (k, &(addr, len)) in bufs.iter().enumerate() {
                        let d = Self::desc_bytes(addr, len, 0, w);
                        mem.write(table + 16 * k as u64, &d);
                    }
                    vec![(table, 16 * bufs.len() as u32, F_INDIRECT)]
                }
                None => bufs
                    .iter()
                    .enumerate()
                    .map(|(k, &(a, l))| (a, l, w | if k + 1 < bufs.len() { F_NEXT } else { 0 }))
                    .collect(),
            };
            for (k, &(addr, len, flags)) in entries.iter().enumerate() {
                let pos = self.next_avail;
                let flags = flags | round_flags(self.avail_wrap);
                let at = self.base + 16 * u64::from(pos);
                // The head's flags go last, so the device never sees half a chain.
                let written = if k == 0 { 0 } else { flags };
                mem.write(at, &Self::desc_bytes(addr, len, id, written));
                if k == 0 {
                    head_flags = flags;
                }
                descs.push(pos);
                self.next_avail += 1;
                if self.next_avail == self.size {
                    self.next_avail = 0;
                    self.avail_wrap = !self.avail_wrap;
                }
            }
            mem.store_u16(self.base + 16 * u64::from(head_pos) + 14, head_flags);
            self.free_slots -= entries.len() as u16;
            self.in_flight.push_back(Posted {
                id,
                descs,
                bufs: bufs.to_vec(),
            });
        } else {
            assert!(indirect.is_none(), "the model posts split chains directly");
            let descs: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
            for (k, &(addr, len)) in bufs.iter().enumerate() {
                let next = descs.get(k + 1).copied();
                let flags = w | if next.is_some() { F_NEXT } else { 0 };
                let d = Self::desc_bytes(addr, len, flags, next.unwrap_or(0));
                mem.write(self.base + 16 * u64::from(descs[k]), &d);
            }
            let slot = u64::from(self.next_avail % self.size);
            mem.write(self.base + 0x1000 + 4 + 2 * slot, &descs[0].to_le_bytes());
            self.next_avail = self.next_avail.wrapping_add(1);
            mem.store_u16(self.base + 0x1000 + 2, self.next_avail);
            self.in_flight.push_back(Posted {
                id: descs[0],
                descs,
                bufs: bufs.to_vec(),
            });
        }
        true
    }

    /// Takes `id`'s chain out of flight: the first one with IN_ORDER (checked), else any.
    fn complete(&mut self, id: u16) -> Posted {
        let at = self
            .in_flight
            .iter()
            .position(|p| p.id == id)
            .unwrap_or_else(|| panic!("used id {id} was never posted"));
        let p = self.in_flight.remove(at).unwrap();
        if self.packed {
            self.free.push(p.id);
            self.free_slots += p.descs.len() as u16;
        } else {
            self.free.extend(&p.descs);
        }
        p
    }

    /// The chains a used entry naming `id` returns: with IN_ORDER one entry may stand for
    /// every chain up to `id`.
    fn batch(&self, id: u16) -> Vec<u16> {
        if !self.in_order {
            return vec![id];
        }
        let upto = self
            .in_flight
            .iter()
            .position(|p| p.id == id)
            .expect("in-order used id in flight");
        self.in_flight.iter().take(upto + 1).map(|p| p.id).collect()
    }

    /// The chains the device used since the last call, each with the bytes it wrote.
    fn used(&mut self, mem: &Memory) -> Vec<(Posted, u32)> {
        let mut out = Vec::new();
        if self.packed {
            loop {
                let at = self.base + 16 * u64::from(self.next_used);
                let flags = mem.load_u16(at + 14);
                let used = (flags & F_AVAIL != 0) == self.used_wrap
                    && (flags & F_USED != 0) == self.used_wrap;
                if !used {
                    break;
                }
                let id = u16::from_le_bytes(mem.read(at + 12, 2).try_into().unwrap());
                let len = mem.u32_at(at + 8);
                let batch = self.batch(id);
                for (k, &chain) in batch.iter().enumerate() {
                    let p = self.complete(chain);
                    let n = p.descs.len() as u16;
                    self.next_used += n;
                    if self.next_used >= self.size {
                        self.next_used -= self.size;
                        self.used_wrap = !self.used_wrap;
                    }
                    let written = if k + 1 == batch.len() { len } else { 0 };
                    out.push((p, written));
                }
            }
        } else {
            let idx = mem.load_u16(self.base + 0x2000 + 2);
            while self.next_used != idx {
                let slot = u64::from(self.next_used % self.size);
                let at = self.base + 0x2000 + 4 + 8 * slot;
                let id = mem.u32_at(at) as u16;
                let len = mem.u32_at(at + 4);
                let batch = self.batch(id);
                let count = batch.len();
                for (k, &chain) in batch.iter().enumerate() {
                    let p = self.complete(chain);
                    out.push((p, if k + 1 == count { len } else { 0 }));
                }
                self.next_used = self.next_used.wrapping_add(count as u16);
            }
        }
        out
    }
}

fn round_flags(wrap: bool) -> u16 {
    if wrap {
        F_AVAIL
    } else {
        F_USED
    }
}

/// Two guests cross-connected: A's TX ring (port 0, ring 1) to B's RX ring (port 1,
/// ring 0).
struct Pair {
    a: Memory,
    b: Memory,
    tx: Driver,
    rx: Driver,
    ports: Vec<Option<Arc<PortSnapshot>>>,
    stats: Vec<Vec<QueueStats>>,
    switch: Switch,
}

impl Pair {
    fn new(size: u16, tx_features: u64, rx_features: u64) -> Pair {
        let (a, b) = (Memory::new(), Memory::new());
        let layout = |f: u64| f & RING_PACKED != 0;
        let tx = Driver::new(layout(tx_features), tx_features & IN_ORDER != 0, size, 0);
        let rx = Driver::new(layout(rx_features), rx_features & IN_ORDER != 0, size, 0);
        let port = |features, rings| {
            Some(Arc::new(PortSnapshot {
                features,
                rings,
                mtu: None,
            }))
        };
        let ports = vec![
            port(
                tx_features,
                vec![None, Some(tx.runtime(&a, 1, tx_features))],
            ),
            port(
                rx_features,
                vec![Some(rx.runtime(&b, 0, rx_features)), None],
            ),
        ];
        Pair {
            a,
            b,
            tx,
            rx,
            ports,
            stats: (0..2)
                .map(|_| (0..2).map(|_| QueueStats::default()).collect())
                .collect(),
            switch: Switch::new(Mode::Xconnect, 2, 300, Vec::new()),
        }
    }

    fn poll(&self) -> u32 {
        let ctx = Context {
            ports: &self.ports,
            switch: &self.switch,
            stats: &self.stats,
            now: 0,
            max_frame: DEFAULT_MAX_FRAME,
        };
        let tx = self.ports[0].as_ref().unwrap().rings[1].as_ref().unwrap();
        poll_tx(&mut Scratch::default(), &ctx, 0, tx)
    }

    fn totals(&self, port: usize, ring: usize) -> QueueTotals {
        let mut t = QueueTotals::default();
        t.add(&self.stats[port][ring]);
        t
    }
}

/// Buffer slot `k` of a ring's chains (4 KiB each, after the ring).
fn slot(k: u16) -> u64 {
    0x10000 + 0x1000 * u64::from(k)
}

/// A frame of `len` bytes numbered `seq`, behind a zero virtio-net header.
fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; HDR + len];
    for (i, b) in f[HDR..].iter_mut().enumerate() {
        *b = (seq as usize * 31 + i * 7) as u8;
    }
    f[HDR..HDR + 6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[HDR + 6..HDR + 12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f
}

/// What one run sends: frame lengths and how each TX chain is cut into descriptors.
#[derive(Clone, Debug)]
struct Traffic {
    /// (frame length, descriptors 1..=3) per frame.
    frames: Vec<(usize, usize)>,
    /// Frames posted per round (1..=size).
    per_round: Vec<usize>,
    indirect_tx: bool,
}

/// Sends `traffic` from A to B and checks that every frame arrives once, in order, byte
/// for byte, and that every chain of both rings comes back.
fn run(size: u16, tx_features: u64, rx_features: u64, traffic: &Traffic) {
    let mut p = Pair::new(size, tx_features, rx_features);
    let mrg = rx_features & MRG_RXBUF != 0;
    let rx_buf: u32 = if mrg { 512 } else { 2048 };
    let mut next_frame = 0usize;
    let mut expected: VecDeque<Vec<u8>> = VecDeque::new();
    let mut received: Vec<u8> = Vec::new();
    let mut delivered = 0usize;
    let mut rounds = traffic.per_round.iter().cycle();
    let mut rx_slot = 0u16;
    let mut tx_slot = 0u16;
    while delivered < traffic.frames.len() {
        // Give B every buffer it can take.
        while p.rx.room(1) {
            let gpa = slot(rx_slot % 64) + 0x100000 / 2;
            rx_slot = rx_slot.wrapping_add(1);
            assert!(p.rx.post(&p.b, &[(gpa, rx_buf)], true, None));
        }
        // Post as many frames as B can surely take, so that none is dropped.
        let rx_room = p.rx.in_flight.len() as u32 * rx_buf;
        let mut budget = rx_room;
        let want = *rounds.next().unwrap();
        for _ in 0..want {
            let Some(&(len, descs)) = traffic.frames.get(next_frame) else {
                break;
            };
            let chains_needed = if mrg {
                (HDR + len).div_ceil(rx_buf as usize) as u32
            } else {
                1
            };
            assert!(
                chains_needed <= u32::from(size) && descs <= usize::from(size),
                "frame {next_frame} can never fit the rings"
            );
            if chains_needed * rx_buf > budget || !p.tx.room(descs) {
                break;
            }
            budget -= chains_needed * rx_buf;
            let f = frame(next_frame as u32, len);
            let base = slot(tx_slot % 32);
            tx_slot = tx_slot.wrapping_add(1);
            p.a.write(base, &f);
            // Cut into `descs` pieces (the first holds at least the header).
            let mut bufs = Vec::new();
            let mut at = 0usize;
            for k in 0..descs {
                let end = if k + 1 == descs {
                    f.len()
                } else {
                    (at + f.len() / descs).max(HDR).min(f.len())
                };
                bufs.push((base + at as u64, (end - at) as u32));
                at = end;
            }
            let table = traffic.indirect_tx.then_some(base + 0xc00);
            assert!(p.tx.post(&p.a, &bufs, false, table));
            expected.push_back(f);
            next_frame += 1;
        }
        let taken = p.poll();
        assert!(
            taken > 0 || p.tx.in_flight.is_empty(),
            "the switch took nothing with {} chains posted",
            p.tx.in_flight.len()
        );
        for (chain, len) in p.tx.used(&p.a) {
            assert_eq!(len, 0, "TX chain {} returned with bytes written", chain.id);
        }
        // B's RX: reassemble merged buffers; check each frame.
        let mut pending: Vec<(Posted, u32)> = p.rx.used(&p.b);
        pending.reverse();
        while let Some((chain, len)) = pending.pop() {
            let (gpa, cap) = chain.bufs[0];
            assert!(len <= cap);
            received.extend(p.b.read(gpa, len as usize));
            let buffers = u16::from_le_bytes([received[10], received[11]]) as usize;
            let mut merged = 1;
            while merged < buffers {
                let (more, more_len) = pending.pop().expect("merged buffers arrive together");
                received.extend(p.b.read(more.bufs[0].0, more_len as usize));
                merged += 1;
            }
            let want = expected
                .pop_front()
                .expect("a frame arrived that was never sent");
            assert_eq!(received.len(), want.len(), "frame {delivered} length");
            assert_eq!(received[HDR..], want[HDR..], "frame {delivered} bytes");
            assert_eq!(
                &received[..10],
                &[0u8; 10][..],
                "net header of frame {delivered}"
            );
            received.clear();
            delivered += 1;
        }
    }
    assert!(p.tx.in_flight.is_empty(), "TX chains not returned");
    let (src, dst) = (p.totals(0, 1), p.totals(1, 0));
    assert_eq!(src.packets, traffic.frames.len() as u64);
    assert_eq!(src.dropped(), 0);
    assert_eq!(dst.packets, traffic.frames.len() as u64);
    assert_eq!(dst.dropped(), 0);
}

fn features(packed: bool, in_order: bool, mrg: bool) -> u64 {
    let mut f = VERSION_1 | INDIRECT_DESC;
    if packed {
        f |= RING_PACKED;
    }
    if in_order {
        f |= IN_ORDER;
    }
    if mrg {
        f |= MRG_RXBUF;
    }
    f
}

#[test]
fn every_layout_pairing_delivers_every_frame_across_many_wraps() {
    let traffic = Traffic {
        frames: (0..300)
            .map(|i| (60 + (i * 97) % 1450, 1 + i % 3))
            .collect(),
        per_round: vec![1, 3, 8, 2, 5],
        indirect_tx: false,
    };
    for (tx_packed, rx_packed) in [(true, true), (true, false), (false, true)] {
        for in_order in [false, true] {
            for mrg in [false, true] {
                let (tf, rf) = (
                    features(tx_packed, in_order, mrg),
                    features(rx_packed, in_order, mrg),
                );
                run(8, tf, rf, &traffic);
            }
        }
    }
}

#[test]
fn packed_indirect_tables_carry_frames() {
    let traffic = Traffic {
        frames: (0..100).map(|i| (64 + i * 13, 1 + i % 3)).collect(),
        per_round: vec![4, 7],
        indirect_tx: true,
    };
    run(
        8,
        features(true, false, true),
        features(true, false, true),
        &traffic,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random frame sizes, chain cuts, bursts, ring sizes and features on both sides.
    #[test]
    fn random_traffic_is_conserved(
        log_size in 1u32..6,
        tx_packed in any::<bool>(),
        rx_packed in any::<bool>(),
        in_order in any::<bool>(),
        mrg in any::<bool>(),
        indirect in any::<bool>(),
        frames in prop::collection::vec((60usize..1600, 1usize..4), 1..80),
        per_round in prop::collection::vec(1usize..40, 1..6),
    ) {
        let size = 1u16 << log_size;
        // Every frame must fit the rings: its descriptors the TX ring, its merged
        // buffers the RX ring.
        let frames: Vec<_> = frames
            .into_iter()
            .map(|(len, d)| (len, d.min(usize::from(size))))
            .filter(|&(len, _)| !mrg || (HDR + len).div_ceil(512) <= usize::from(size))
            .collect();
        let traffic = Traffic { frames, per_round, indirect_tx: indirect && tx_packed };
        run(size, features(tx_packed, in_order, mrg), features(rx_packed, in_order, mrg), &traffic);
    }
}

/// A packed driver that writes one descriptor (at the head, with NEXT everywhere, so the
/// chain never ends) makes the switch stop that ring and nothing else.
#[test]
fn a_chain_without_end_stops_the_ring_only() {
    let p = Pair::new(
        8,
        features(true, false, false),
        features(true, false, false),
    );
    let round = round_flags(true);
    for pos in 0..8u64 {
        let d = Driver::desc_bytes(slot(0), 64, 0, F_NEXT | round);
        p.a.write(16 * pos, &d);
    }
    assert_eq!(p.poll(), 0);
    let tx = p.ports[0].as_ref().unwrap().rings[1].as_ref().unwrap();
    assert_ne!(tx.shared.broken(), 0, "the ring is stopped");
    // Nothing was written back.
    assert_eq!(p.a.load_u16(14) & F_USED, 0);
}

/// Descriptors marked available and used at once are neither: the switch waits.
#[test]
fn available_and_used_at_once_is_not_available() {
    let mut p = Pair::new(
        8,
        features(true, false, false),
        features(true, false, false),
    );
    p.a.write(slot(0), &frame(0, 64));
    let d = Driver::desc_bytes(slot(0), (HDR + 64) as u32, 3, F_AVAIL | F_USED);
    p.a.write(0, &d);
    assert_eq!(p.poll(), 0);
    let tx = p.ports[0].as_ref().unwrap().rings[1].as_ref().unwrap();
    assert_eq!(tx.shared.broken(), 0);
    // Marked available properly, it is taken; its id (beyond the ring size) comes back.
    p.tx.free = vec![999];
    assert!(p
        .tx
        .post(&p.a, &[(slot(0), (HDR + 64) as u32)], false, None));
    assert_eq!(p.poll(), 1);
    let used = p.tx.used(&p.a);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0.id, 999);
    // B had no buffer: the frame was counted as dropped there.
    assert_eq!(p.totals(1, 0).drops[DropReason::NoRxBuffer as usize], 1);
}

/// A buffer outside guest memory is refused, but the chain still comes back, and the
/// ring keeps going.
#[test]
fn a_bad_buffer_drops_its_chain_and_returns_it() {
    let mut p = Pair::new(
        8,
        features(true, false, false),
        features(true, false, false),
    );
    assert!(p
        .tx
        .post(&p.a, &[(slot(0), 100), (MEM - 8, 64)], false, None));
    p.a.write(slot(1), &frame(1, 64));
    assert!(p
        .tx
        .post(&p.a, &[(slot(1), (HDR + 64) as u32)], false, None));
    assert_eq!(p.poll(), 2);
    assert_eq!(p.tx.used(&p.a).len(), 2);
    let src = p.totals(0, 1);
    assert_eq!(src.drops[DropReason::BadDescriptor as usize], 1);
    let tx = p.ports[0].as_ref().unwrap().rings[1].as_ref().unwrap();
    assert_eq!(tx.shared.broken(), 0);
}
