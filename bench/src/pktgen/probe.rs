//! Core-to-core round trip: two threads pinned to two cores bounce a cache line. On a VM
//! whose vCPUs move between near and far host cores this changes throughput by ~2x, so the
//! benchmark records it next to each run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Mean round trip (ns) of a cache line between cores `a` and `b` over `iterations`, or
/// `None` if a core cannot be pinned or the other side stalls for more than `limit`.
pub fn round_trip_ns(a: usize, b: usize, iterations: u64, limit: Duration) -> Option<f64> {
    let ids = core_affinity::get_core_ids()?;
    let (ca, cb) = (
        *ids.iter().find(|c| c.id == a)?,
        *ids.iter().find(|c| c.id == b)?,
    );
    let flag = AtomicU64::new(0);
    let abort = AtomicU64::new(0);
    let warmup = iterations / 10 + 1;
    let total = warmup + iterations;
    std::thread::scope(|s| {
        let (flag, abort) = (&flag, &abort);
        s.spawn(move || {
            if !core_affinity::set_for_current(cb) {
                abort.store(1, Ordering::Relaxed);
                return;
            }
            for i in 0..total {
                while flag.load(Ordering::Acquire) != 2 * i + 1 {
                    if abort.load(Ordering::Relaxed) != 0 {
                        return;
                    }
                    std::hint::spin_loop();
                }
                flag.store(2 * i + 2, Ordering::Release);
            }
        });
        if !core_affinity::set_for_current(ca) {
            abort.store(1, Ordering::Relaxed);
            return None;
        }
        let deadline = Instant::now() + limit;
        let mut start = Instant::now();
        for i in 0..total {
            if i == warmup {
                start = Instant::now();
            }
            flag.store(2 * i + 1, Ordering::Release);
            let mut spins = 0u32;
            while flag.load(Ordering::Acquire) != 2 * i + 2 {
                spins = spins.wrapping_add(1);
                if spins & 4095 == 0
                    && (abort.load(Ordering::Relaxed) != 0 || Instant::now() > deadline)
                {
                    abort.store(1, Ordering::Relaxed);
                    return None;
                }
                std::hint::spin_loop();
            }
        }
        Some(start.elapsed().as_nanos() as f64 / iterations as f64)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_core_or_two_cores_gives_a_plausible_time() {
        let n = core_affinity::get_core_ids().map_or(0, |c| c.len());
        if n >= 2 {
            if let Some(ns) = super::round_trip_ns(0, 1, 2000, std::time::Duration::from_secs(5)) {
                assert!(ns > 1.0 && ns < 1e7, "{ns}");
            }
        }
        assert_eq!(
            super::round_trip_ns(0, 100_000, 10, std::time::Duration::from_secs(1)),
            None
        );
    }
}
