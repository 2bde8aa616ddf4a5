//! The soak test (`scripts/soak.sh`; ignored by `cargo test`): for SOAK_SECONDS (default
//! 600) it mixes verified traffic, front-end reconnects, ring stop/start cycles, memory
//! table swaps and a guest that keeps vandalising its rings, then checks conservation, that
//! nothing was delivered twice, and that the daemon's resident memory stayed flat.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::guest::*;
use common::*;
use vhost_kit::driver::frame::{self, local_mac};
use vhost_kit::memory::SharedMemory;

/// Resident set size growth allowed between the first and the last sample.
const RSS_GROWTH_LIMIT_KB: u64 = 16 * 1024;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
#[ignore = "long: run with scripts/soak.sh"]
fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut d = Daemon::start(&["p0", "p1", "p2", "p3"], &["--mode", "xconnect"]);
    let mems: Vec<Arc<SharedMemory>> = (0..4).map(|_| Arc::new(memory())).collect();
    let mut a = attach(&d, "p0", &mems[0], GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &mems[1], GUEST_FEATURES, 2048, local_mac(2));
    let stop = Arc::new(AtomicBool::new(false));
    // p2: a guest that reconnects over and over and vandalises its TX ring in between.
    let vandal = {
        let (stop, dir) = (stop.clone(), d.dir.clone());
        let mem = mems[2].clone();
        std::thread::spawn(move || {
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            let mut cycles = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(fe) = vhost_kit::Frontend::connect(dir.join("p2.sock")) else {
                    continue;
                };
                let vm = attach_fe(
                    fe,
                    &mem,
                    vhost_kit::driver::net::NetOptions {
                        features: GUEST_FEATURES,
                        ..Default::default()
                    },
                    2048,
                    local_mac(3),
                    true,
                );
                let tx = vm.layout.tx;
                for round in 0..50u16 {
                    for _ in 0..32 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let slot = x % u64::from(QUEUE_SIZE);
                        let _ = mem.write(
                            tx.desc_offset() + 16 * slot,
                            &[x.to_le_bytes(), x.rotate_left(17).to_le_bytes()].concat(),
                        );
                        let _ = mem.write(
                            tx.avail_offset() + 4 + 2 * slot,
                            &((x >> 20) as u16 % QUEUE_SIZE).to_le_bytes(),
                        );
                    }
                    let _ = mem.write(tx.avail_offset() + 2, &(round * 32).to_le_bytes());
                    std::thread::sleep(Duration::from_millis(2));
                }
                drop(vm);
                cycles += 1;
            }
            cycles
        })
    };
    let start = Instant::now();
    let mut seen = HashSet::new();
    let mut seq = 0u64;
    let mut rss_first = None;
    let mut round = 0u64;
    let mut events = [0u64; 3];
    while start.elapsed() < Duration::from_secs(seconds) {
        // Verified traffic p0 -> p1.
        let frames: Vec<Vec<u8>> = (0..64)
            .map(|i| make_frame(64 + (i as usize * 23) % 1400, b.mac, a.mac, seq + i))
            .collect();
        a.send_all(&frames);
        seq += 64;
        a.wait_tx_done();
        for f in b.recv_n(64, TIMEOUT) {
            let s = frame::verify(&f).expect("corrupted frame");
            assert!(seen.insert(s), "frame {s} delivered twice");
        }
        assert_eq!(seen.len() as u64, seq, "round {round}: frames lost");
        round += 1;
        match round % 50 {
            // A ring stop/start cycle on p0 (QEMU stop/cont).
            10 => {
                a.stop_and_restart_rings();
                events[0] += 1;
            }
            // The memory table again, while traffic runs.
            20 => {
                b.fe.set_mem_table(&[(mems[1].region(), mems[1].fd())], true)
                    .unwrap();
                events[1] += 1;
            }
            // p3 connects, negotiates and leaves.
            30 => {
                let mut fe = d.connect("p3");
                negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
                events[2] += 1;
            }
            _ => {}
        }
        if rss_first.is_none() && start.elapsed() > Duration::from_secs(5.min(seconds / 4)) {
            rss_first = Some(rss_kb(d.pid()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reconnects = vandal.join().unwrap();
    assert!(d.alive(), "the daemon died:\n{}", d.log());
    assert_conservation(&d);
    let rss_last = rss_kb(d.pid());
    let gap = d.ctl("stats")["pmds"][0]["max_gap_cycles"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "soak: longest PMD loop gap {:.1} ms (TSC ~2.6 GHz)",
        gap as f64 / 2.6e6
    );
    let rss_first = rss_first.unwrap_or(rss_last);
    println!(
        "soak: {seconds} s, {seq} frames verified (no loss, no duplicate), {round} rounds, {} ring stop/start cycles, {} memory table swaps, {} p3 connections, {reconnects} vandal reconnects; RSS {rss_first} kB -> {rss_last} kB",
        events[0], events[1], events[2]
    );
    assert!(
        rss_last <= rss_first + RSS_GROWTH_LIMIT_KB,
        "RSS grew from {rss_first} kB to {rss_last} kB"
    );
}
