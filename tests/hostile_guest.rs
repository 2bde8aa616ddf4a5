//! Hostile guests (issue: reliability): rings rewritten while the PMD reads them, buffers
//! across region boundaries, nested indirect tables. The switch maps every guest region
//! between inaccessible guard pages, so a read or write outside a guest's own memory would
//! kill the daemon: each test checks it is alive, that the other ports kept forwarding,
//! and that the counters conserve.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::guest::*;
use common::*;
use vhost_kit::driver::frame::local_mac;
use vhost_kit::driver::split::{Desc, Seg, VIRTQ_DESC_F_INDIRECT};
use vhost_kit::memory::{HugePages, SharedMemory};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn descriptors_rewritten_during_traffic_by_a_second_thread() {
    let mut d = Daemon::start(&["p0", "p1", "p2", "p3"], &["--mode", "xconnect"]);
    let mems: Vec<Arc<SharedMemory>> = (0..4).map(|_| Arc::new(memory())).collect();
    let mut g = attach_ports(&d, &mems);
    let tx = g[2].layout.tx;
    let stop = Arc::new(AtomicBool::new(false));
    // The "guest" of p2: another thread rewrites its TX descriptor table and avail ring
    // with random addresses, lengths, flags and next fields, and keeps moving avail.idx.
    let vandal = {
        let (mem, stop) = (mems[2].clone(), stop.clone());
        std::thread::spawn(move || {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut idx: u16 = 0;
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let slot = x % u64::from(QUEUE_SIZE);
                    let mut desc = [0u8; 16];
                    desc.copy_from_slice(
                        &[x.to_le_bytes(), x.rotate_left(29).to_le_bytes()].concat(),
                    );
                    // Half the time a plausible in-memory address, to reach the copy path.
                    if x & 1 == 0 {
                        desc[0..8].copy_from_slice(&((x >> 8) % (16 << 20)).to_le_bytes());
                        desc[8..12].copy_from_slice(&((x >> 40) as u32 % 4096).to_le_bytes());
                    }
                    let _ = mem.write(tx.desc_offset() + 16 * slot, &desc);
                    // Heads inside the table but for a rare one, which stops the ring.
                    let head = if x.is_multiple_of(4096) {
                        (x >> 16) as u16
                    } else {
                        (x >> 16) as u16 % QUEUE_SIZE
                    };
                    let _ = mem.write(
                        tx.avail_offset() + 4 + 2 * (u64::from(idx) % u64::from(QUEUE_SIZE)),
                        &head.to_le_bytes(),
                    );
                    idx = idx.wrapping_add(1);
                }
                let _ = mem.write(tx.avail_offset() + 2, &idx.to_le_bytes());
                rounds += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            rounds
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seq = 0;
    let (left, _) = g.split_at_mut(2);
    let [a, b] = left else { unreachable!() };
    while Instant::now() < deadline {
        exchange(a, b, 256, 256, seq);
        seq += 256;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = vandal.join().unwrap();
    assert!(rounds > 10, "the vandal barely ran");
    assert!(d.alive(), "the daemon died:\n{}", d.log());
    let p2 = port_stats(&d, "p2");
    eprintln!("p2 under attack: {p2}");
    let taken = p2["rx_packets"].as_u64().unwrap();
    let broken = d.ctl("ports")["ports"][2]["rings"][1]["broken"]
        .as_bool()
        .unwrap();
    assert!(
        taken > 1000 || broken,
        "the PMD never worked on the vandalised ring: {p2}"
    );
    if broken {
        assert!(
            d.log().contains("ring stopped"),
            "a stopped ring must be logged"
        );
    }
    assert_conservation(&d);
}

#[test]
fn buffer_straddling_a_region_boundary_is_delivered_intact() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let low = memory();
    // A second region right after the first in guest-physical space.
    let high = SharedMemory::new(1 << 20, HugePages::Never)
        .unwrap()
        .with_guest_phys_addr(low.size() as u64);
    let mb = memory();
    let mut b = attach(&d, "p1", &mb, GUEST_FEATURES, 2048, local_mac(2));
    let mut a = attach(&d, "p0", &low, GUEST_FEATURES, 2048, local_mac(1));
    a.fe.set_mem_table(
        &[(low.region(), low.fd()), (high.region(), high.fd())],
        true,
    )
    .unwrap();
    // Header + frame at the very end of `low`, running 100 bytes into `high`.
    let frame = make_frame(300, b.mac, a.mac, 77);
    let mut bytes = vec![0u8; 12];
    bytes.extend_from_slice(&frame);
    let start = low.size() as u64 - (bytes.len() as u64 - 100);
    let cut = (low.size() as u64 - start) as usize;
    low.write(start, &bytes[..cut]).unwrap();
    high.write(0, &bytes[cut..]).unwrap();
    let q = a.drv.tx_queue_mut().as_split_mut().unwrap();
    let head = q
        .add_chain(&[Seg::readable(start, bytes.len() as u32)])
        .unwrap();
    q.publish();
    let got = b.recv_n(1, WAIT);
    assert_eq!(got.len(), 1, "{}", port_stats(&d, "p0"));
    assert_eq!(got[0], frame);
    let _ = head;
    assert_conservation(&d);
}

#[test]
fn nested_indirect_table_is_dropped_and_the_ring_goes_on() {
    let mut d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    // An indirect table (at 0x300000) whose only entry is itself indirect.
    let inner = Desc {
        addr: 0x30_0000,
        len: 16,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
    };
    m0.write(0x30_0000, &inner.to_bytes()).unwrap();
    let q = a.drv.tx_queue_mut().as_split_mut().unwrap();
    let head = q.add_chain(&[Seg::readable(0x30_0000, 16)]).unwrap();
    q.raw_write_desc(
        head,
        Desc {
            addr: 0x30_0000,
            len: 16,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        },
    )
    .unwrap();
    q.publish();
    let deadline = Instant::now() + WAIT;
    while drops(&d, "p0", 1, "bad_descriptor") == 0 {
        assert!(Instant::now() < deadline, "nested indirect not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The chain came back with used length 0; the ring keeps working.
    a.wait_tx_done();
    exchange(&mut a, &mut b, 64, 256, 1);
    assert!(d.alive());
    assert_conservation(&d);
}
