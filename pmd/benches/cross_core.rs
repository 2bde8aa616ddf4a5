//! The fast path with the guests on another core: the guest side's ring work (guest A
//! sending, guest B receiving, both with the kit's virtio-net driver) runs pinned to CPU 0,
//! the switch's `poll_tx` pinned to CPU 1, so every ring index, descriptor and frame the
//! switch reads was last written by the other core, as in the real switch. Unlike the
//! in-cache `fast_path` benchmark this is the cost of cross-core traffic, and it depends
//! on where the two vCPUs sit on the host: each run records the core-to-core round trip
//! measured just before it and is classed near or far (`bench::pktgen::probe::Placement`).
//!
//! `cargo bench -p pmd --bench cross_core [-- RUNS]` prints, per frame size and run:
//! Mpps, switch TSC cycles per packet (cycles in bursts that moved packets / packets) and
//! the round trip; then the median per size and placement class.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::pktgen::probe::{round_trip_ns, Placement};
use pmd::forward::{poll_tx, Scratch};
use pmd::memory::{GuestMemoryMap, MappedRegion, RegionSpec};
use pmd::queue::{RingFeatures, RingRuntime};
use pmd::vring::{translate, Layout, RingAddrs};
use vhost_kit::driver::net::{NetDriver, NetLayout, NetOptions};
use vhost_kit::memory::{HugePages, SharedMemory};

mod common;
use common::{Xconnect, VERSION_1};

const QSIZE: u16 = 256;
const PACKETS: u64 = 2_000_000;
const GUEST_CORE: usize = 0;
const SWITCH_CORE: usize = 1;

/// One guest's memory as the switch maps it, and its layout.
struct Guest {
    shm: SharedMemory,
    layout: NetLayout,
    map: Arc<GuestMemoryMap>,
}

impl Guest {
    fn new() -> Guest {
        let shm = SharedMemory::new(16 << 20, HugePages::Never).unwrap();
        let layout = NetLayout::new(&shm, 0, QSIZE, 2048).unwrap();
        let spec = RegionSpec {
            guest_phys_addr: shm.guest_phys_addr(),
            size: shm.size() as u64,
            user_addr: shm.user_addr(),
            mmap_offset: 0,
        };
        // The switch maps its own duplicate of the guest's memfd, as from SET_MEM_TABLE.
        let file = std::fs::File::from(duplicate(shm.fd()));
        let region = Arc::new(MappedRegion::map(spec, &file).unwrap());
        Guest {
            shm,
            layout,
            map: Arc::new(GuestMemoryMap::new(vec![region], 8).unwrap()),
        }
    }

    fn ring(&self, index: u16) -> RingRuntime {
        let ring = if index == 0 {
            &self.layout.rx
        } else {
            &self.layout.tx
        };
        let a = ring.addr(u32::from(index), 0);
        let addrs = RingAddrs {
            desc: a.descriptor,
            avail: a.available,
            used: a.used,
        };
        let t = translate(&self.map, QSIZE, addrs, Layout::Split { event_idx: false }).unwrap();
        RingRuntime::start(
            index,
            0,
            t,
            self.map.clone(),
            RingFeatures::from_features(VERSION_1),
            true,
            None,
        )
    }
}

/// A duplicate of a descriptor the caller keeps open.
fn duplicate(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::BorrowedFd;
    // SAFETY: `fd` is the SharedMemory's open descriptor, alive for this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().unwrap()
}

/// The machine's cores, read once before any thread is pinned (a pinned thread sees only
/// its own core, and threads inherit their creator's mask).
static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();

fn pin(core: usize) -> bool {
    CORES
        .get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
        .iter()
        .find(|c| c.id == core)
        .is_some_and(|&c| core_affinity::set_for_current(c))
}

/// One run: `PACKETS` frames of `size` bytes from A to B. Returns (Mpps, switch cycles per
/// packet).
fn run(size: usize) -> (f64, f64) {
    let (a, b) = (Guest::new(), Guest::new());
    let xc = Xconnect::new(a.ring(1), b.ring(0));
    let done = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let frame = vec![0x5au8; size];
    let (elapsed, busy, moved) = std::thread::scope(|s| {
        let (done, received, frame, xc) = (&done, &received, &frame, &xc);
        let (a, b) = (&a, &b);
        s.spawn(move || {
            assert!(pin(GUEST_CORE), "cannot pin the guest thread");
            let mut tx = NetDriver::new(&a.shm, &a.layout, NetOptions::default()).unwrap();
            let mut rx = NetDriver::new(&b.shm, &b.layout, NetOptions::default()).unwrap();
            rx.fill_rx().unwrap();
            let burst: Vec<&[u8]> = (0..32).map(|_| frame.as_slice()).collect();
            let mut got = 0u64;
            while got < PACKETS {
                tx.reclaim_tx().unwrap();
                tx.send(&burst);
                got += rx.recv(|_| {}).unwrap() as u64;
                rx.fill_rx().unwrap();
                received.store(got, Ordering::Relaxed);
            }
            done.store(true, Ordering::Release);
        });
        // The switch runs in a thread of its own: the caller stays unpinned, so that the
        // next run's probe can still pin to both cores.
        s.spawn(move || {
            assert!(pin(SWITCH_CORE), "cannot pin the switch thread");
            let mut scratch = Scratch::default();
            let ctx = xc.context();
            let tx = xc.tx();
            let (mut busy, mut moved) = (0u64, 0u64);
            let start = Instant::now();
            while !done.load(Ordering::Acquire) {
                let t0 = pmd::cpu::cycles();
                let n = poll_tx(&mut scratch, &ctx, 0, tx);
                if n > 0 {
                    busy += pmd::cpu::cycles() - t0;
                    moved += u64::from(n);
                }
            }
            (start.elapsed(), busy, moved)
        })
        .join()
        .expect("switch thread")
    });
    let delivered = received.load(Ordering::Relaxed);
    (
        delivered as f64 / elapsed.as_secs_f64() / 1e6,
        busy as f64 / moved.max(1) as f64,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|x, y| x.total_cmp(y));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    if CORES
        .get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
        .len()
        < 2
    {
        println!("cross_core: needs two cores, skipped");
        return;
    }
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    for size in [64usize, 1500] {
        let mut classes: [(Vec<f64>, Vec<f64>); 2] = Default::default();
        for i in 0..runs {
            // The probe pins the thread it runs on: not this one.
            let rtt = std::thread::spawn(|| {
                round_trip_ns(GUEST_CORE, SWITCH_CORE, 20_000, Duration::from_secs(5))
            })
            .join()
            .ok()
            .flatten()
            .unwrap_or(f64::NAN);
            let (mpps, cycles) = run(size);
            // A failed probe (NaN) is classed far.
            let placement = Placement::of(rtt);
            let far = placement == Placement::Far;
            println!(
                "cross-core, {size} B, run {i}: {mpps:.2} Mpps, {cycles:.0} switch cycles/packet, round trip {rtt:.0} ns ({})",
                placement.name()
            );
            classes[usize::from(far)].0.push(mpps);
            classes[usize::from(far)].1.push(cycles);
        }
        for (class, (mpps, cycles)) in ["near", "far"].iter().zip(classes.iter_mut()) {
            if !mpps.is_empty() {
                println!(
                    "cross-core, {size} B, {class}: median {:.2} Mpps, {:.0} cycles/packet ({} runs)",
                    median(mpps),
                    median(cycles),
                    mpps.len()
                );
            }
        }
    }
}
