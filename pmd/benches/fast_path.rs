//! Cost per packet of the burst fast path: one guest's TX ring to another guest's RX ring
//! (xconnect), 32 frames per `poll_tx`, frames of 64 and 1500 bytes.
//!
//! The "guests" are plain memory: descriptor tables filled once, and per iteration the
//! avail index of the sender's TX ring and of the receiver's RX ring moves by 32, as a
//! driver that recycles its buffers in order would do. Run: `cargo bench -p pmd`.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pmd::forward::{poll_tx, Scratch, BURST};
use pmd::memory::{GuestMemoryMap, MappedRegion, RegionSpec};
use pmd::queue::{RingFeatures, RingRuntime};
use pmd::vring::{translate, Layout, RingAddrs};

mod common;
use common::{Xconnect, VERSION_1};

const QSIZE: u16 = 256;
const MEM: u64 = 2 << 20;
const BUFS: u64 = 0x4000;
const BUF_SIZE: u64 = 2048;
const DESC_F_WRITE: u16 = 2;

/// One guest's memory with one ring laid out at offset 0.
struct Guest {
    memory: Arc<GuestMemoryMap>,
}

impl Guest {
    fn new() -> Guest {
        // SAFETY: memfd_create takes a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"bench-guest".as_ptr(), libc::MFD_CLOEXEC) };
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
        Guest {
            memory: Arc::new(GuestMemoryMap::new(vec![region], 8).unwrap()),
        }
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        let range = self.memory.translate_gpa(gpa, bytes.len() as u64).unwrap();
        self.memory.slice(&range).unwrap().write(0, bytes).unwrap();
    }

    /// Descriptor i -> buffer i; avail slot i -> head i.
    fn fill_ring(&self, len: u32, flags: u16) {
        for i in 0..u64::from(QSIZE) {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&(BUFS + i * BUF_SIZE).to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            self.write(16 * i, &d);
            self.write(0x1000 + 4 + 2 * i, &(i as u16).to_le_bytes());
        }
    }

    fn set_avail_idx(&self, idx: u16) {
        self.write(0x1000 + 2, &idx.to_le_bytes());
    }

    fn ring(&self, index: u16) -> RingRuntime {
        let addrs = RingAddrs {
            desc: 0,
            avail: 0x1000,
            used: 0x2000,
        };
        let t = translate(
            &self.memory,
            QSIZE,
            addrs,
            Layout::Split { event_idx: false },
        )
        .unwrap();
        RingRuntime::start(
            index,
            0,
            t,
            self.memory.clone(),
            RingFeatures::from_features(VERSION_1),
            true,
            None,
        )
    }
}

fn bench_burst(c: &mut Criterion) {
    let mut group = c.benchmark_group("tx_to_rx_burst");
    for frame in [64u32, 1500] {
        let (a, b) = (Guest::new(), Guest::new());
        a.fill_ring(12 + frame, 0);
        b.fill_ring(BUF_SIZE as u32, DESC_F_WRITE);
        for i in 0..u64::from(QSIZE) {
            // Net header zero, then dst MAC (b) and src MAC (a).
            a.write(
                BUFS + i * BUF_SIZE + 12,
                &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1],
            );
        }
        let xc = Xconnect::new(a.ring(1), b.ring(0));
        let stats = &xc.stats;
        let mut scratch = Scratch::default();
        let ctx = xc.context();
        let tx = xc.tx();
        let mut idx = 0u16;
        let mut burst = || {
            idx = idx.wrapping_add(BURST);
            a.set_avail_idx(idx);
            b.set_avail_idx(idx);
            let n = poll_tx(&mut scratch, &ctx, 0, tx);
            assert_eq!(n, u32::from(BURST));
        };
        group.throughput(Throughput::Elements(u64::from(BURST)));
        group.bench_with_input(BenchmarkId::from_parameter(frame), &frame, |bench, _| {
            bench.iter(&mut burst)
        });
        // Cycles per packet from the time-stamp counter, for docs/performance.md.
        let rounds = 200_000u64;
        let start = Instant::now();
        let t0 = pmd::cpu::cycles();
        for _ in 0..rounds {
            burst();
        }
        let cycles = pmd::cpu::cycles() - t0;
        let elapsed = start.elapsed();
        let packets = rounds * u64::from(BURST);
        println!(
            "fast path, {frame} B frames: {:.1} ns/packet, {:.0} TSC cycles/packet ({:.2} GHz TSC), {} packets; delivered {}",
            elapsed.as_nanos() as f64 / packets as f64,
            cycles as f64 / packets as f64,
            cycles as f64 / elapsed.as_nanos() as f64,
            packets,
            stats[1][0].packets.get(),
        );
        assert_eq!(
            stats[1][0].drops.iter().map(|d| d.get()).sum::<u64>(),
            0,
            "drops in the benchmark"
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_burst
}
criterion_main!(benches);
