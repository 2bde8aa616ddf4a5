//! The data plane's fast path on guest memory the fuzzer writes: descriptor-chain walking
//! (loops, indirect tables, bad lengths and addresses, index jumps, packed wrap counters
//! and flags), dequeue from a guest TX ring, the switch decision, and enqueue into another
//! guest's RX ring (split or packed, each side on its own; MRG_RXBUF or not; IN_ORDER or
//! not), with checksum and TSO offloads negotiated or not on each side, so that the
//! virtio-net headers the fuzzer writes are checked, passed through, completed or
//! segmented. Oracle: no panic, no access outside the mapped memory (AddressSanitizer plus the
//! walker's checks), and conservation: every chain taken is forwarded or dropped for one
//! reason, and every frame forwarded is delivered or dropped for one reason.
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pmd::forward::{poll_tx, Context, Scratch};
use pmd::memory::{GuestMemoryMap, MappedRegion, RegionSpec};
use pmd::queue::{RingFeatures, RingRuntime};
use pmd::snapshot::PortSnapshot;
use pmd::stats::{QueueStats, QueueTotals};
use pmd::switch::{Mode, Switch};
use pmd::vring::{translate, Layout, RingAddrs};

const MEM: u64 = 64 << 10;

fn guest(bytes: &[u8]) -> Arc<GuestMemoryMap> {
    // SAFETY: memfd_create returns a new descriptor or -1 (checked); File owns it.
    let file = unsafe {
        let fd = libc::memfd_create(c"fuzz-ring".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        File::from_raw_fd(fd)
    };
    file.set_len(MEM).unwrap();
    if !bytes.is_empty() {
        use std::os::unix::fs::FileExt;
        let fill: Vec<u8> = bytes.iter().copied().cycle().take(MEM as usize).collect();
        file.write_all_at(&fill, 0).unwrap();
    }
    let spec = RegionSpec { guest_phys_addr: 0, size: MEM, user_addr: 0, mmap_offset: 0 };
    Arc::new(GuestMemoryMap::new(vec![Arc::new(MappedRegion::map(spec, &file).unwrap())], 8).unwrap())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size = 1u16 << (data[0] % 9);
    // VERSION_1, MRG_RXBUF, EVENT_IDX, INDIRECT_DESC, RING_PACKED, IN_ORDER per port.
    let features_of = |f: u8| {
        [(0, 32), (1, 15), (2, 29), (3, 28), (4, 34), (5, 35)]
            .iter()
            .fold(0u64, |acc, &(from, to)| acc | u64::from(f >> from & 1) << to)
    };
    // Offloads from the last byte, which the memory image also uses (it is cycled), so that
    // older seeds keep their ring layout: the source's CSUM, HOST_TSO4/6, HOST_ECN from
    // bits 0-3, the destination's GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN from bits 4-7, in
    // any combination (the fast path must hold even where §5.1.3.1 would refuse one).
    let off = data[data.len() - 1];
    let offloads_of = |bits: u8, map: [u32; 4]| {
        map.iter()
            .enumerate()
            .fold(0u64, |acc, (i, &to)| acc | u64::from(bits >> i & 1) << to)
    };
    let fa = features_of(data[1]) | offloads_of(off, [0, 11, 12, 13]);
    let fb = features_of(data[2] >> 2) | offloads_of(off >> 4, [1, 7, 8, 9]);
    let rounds = 1 + data[2] % 8;
    let split = 3 + (data.len() - 3) / 2;
    let (a, b) = (guest(&data[3..split]), guest(&data[split..]));
    let addrs = RingAddrs { desc: 0, avail: 0x1000, used: 0x2000 };
    let ring = |mem: &Arc<GuestMemoryMap>, index: u16, features: u64| {
        let layout = Layout::from_features(features);
        let t = translate(mem, size, addrs, layout).unwrap();
        // Packed rings start where front-ends start them: position 0, wrap counter set.
        let base = if layout == Layout::Packed { 0x8000 } else { 0 };
        RingRuntime::start(index, base, t, mem.clone(), RingFeatures::from_features(features), true, None)
    };
    // The destination's MTU from the two bits the feature map leaves unused, so that
    // `over_mtu` drops are part of the conservation checked below.
    let mtu_b = [None, Some(68), Some(1500), Some(9000)][usize::from(data[1] >> 6)];
    let ports = vec![
        Some(Arc::new(PortSnapshot { features: fa, rings: vec![None, Some(ring(&a, 1, fa))], mtu: None })),
        Some(Arc::new(PortSnapshot { features: fb, rings: vec![Some(ring(&b, 0, fb)), None], mtu: mtu_b })),
    ];
    let stats: Vec<Vec<QueueStats>> = (0..2).map(|_| (0..2).map(|_| QueueStats::default()).collect()).collect();
    let switch = Switch::new(Mode::Xconnect, 2, 300, Vec::new());
    let mut scratch = Scratch::default();
    let ctx = Context { ports: &ports, switch: &switch, stats: &stats, now: 0, max_frame: pmd::forward::DEFAULT_MAX_FRAME };
    let tx = ports[0].as_ref().unwrap().rings[1].as_ref().unwrap();
    for _ in 0..rounds {
        poll_tx(&mut scratch, &ctx, 0, tx);
    }
    let mut src = QueueTotals::default();
    src.add(&stats[0][1]);
    let mut dst = QueueTotals::default();
    dst.add(&stats[1][0]);
    assert_eq!(src.packets, src.forwarded + src.dropped(), "source conservation");
    assert_eq!(src.forwarded, dst.packets + dst.dropped(), "destination conservation");
});
