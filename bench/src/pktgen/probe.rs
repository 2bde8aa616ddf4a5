//! Core-to-core round trip: two threads pinned to two cores bounce a cache line. On a VM
//! whose vCPUs move between near and far host cores this changes throughput by ~2x, so the
//! benchmark records it next to each run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Round trip (ns) from which two cores count as far apart on the host; below it they are
/// near. Measured placements fall well on either side (~50 ns or ~300-450 ns on this
/// project's VMs), so the exact value matters little; what matters is that every report
/// classes runs alike (`scripts/bench_vs_dpdk.py` holds the same value for Python).
pub const NEAR_BELOW_NS: f64 = 100.0;

/// Where two cores sit on the host, as classed from their round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Round trip under [`NEAR_BELOW_NS`].
    Near,
    /// Round trip of [`NEAR_BELOW_NS`] or more.
    Far,
}

impl Placement {
    /// The class of a round trip measured by [`round_trip_ns`].
    pub fn of(round_trip_ns: f64) -> Self {
        if round_trip_ns < NEAR_BELOW_NS {
            Placement::Near
        } else {
            Placement::Far
        }
    }

    /// `near` or `far`, as the reports and the benchmark JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Near => "near",
            Placement::Far => "far",
        }
    }
}

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
    use super::{Placement, NEAR_BELOW_NS};

    #[test]
    fn the_threshold_itself_is_far() {
        assert_eq!(Placement::of(NEAR_BELOW_NS - 0.5), Placement::Near);
        assert_eq!(Placement::of(NEAR_BELOW_NS), Placement::Far);
        assert_eq!(Placement::of(f64::INFINITY), Placement::Far);
    }

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
