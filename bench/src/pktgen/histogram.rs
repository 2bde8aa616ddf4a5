//! A log-linear latency histogram: exact below 64 ns, then 32 buckets per power of two
//! (relative error under 3.2%); fixed size, no allocation when recording.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const EXACT: u64 = 2 * SUB;
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub samples: u64,
    /// Smallest value.
    pub min_ns: u64,
    /// Mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest value.
    pub max_ns: u64,
}

/// A latency histogram (see the module docs).
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    (u64::from(shift) * SUB + (v >> shift)) as usize
}

/// Lowest and highest value of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < EXACT {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let mant = i - shift * SUB;
    // The last bucket ends at u64::MAX: (64 << 58) wraps to 0.
    (mant << shift, ((mant + 1) << shift).wrapping_sub(1))
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum = self.sum.wrapping_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Adds `other`'s values.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, within [min, max].
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return (lo + (hi - lo) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// min, mean, p50, p99, p99.9, max.
    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        Percentiles {
            samples: self.total,
            min_ns: self.min,
            mean_ns: self.sum as f64 / self.total as f64,
            p50_ns: self.quantile(0.5),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
            max_ns: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev_hi = None;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds(i);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i}");
            }
            assert!(lo <= hi);
            assert!(
                (hi - lo) as f64 <= lo as f64 / 31.0 + 0.5,
                "bucket {i}: {lo}..{hi}"
            );
            prev_hi = Some(hi);
        }
        assert_eq!(prev_hi, Some(u64::MAX));
        for v in [0, 1, 63, 64, 65, 127, 128, 1000, 123_456_789, u64::MAX] {
            let (lo, hi) = bounds(index(v));
            assert!(lo <= v && v <= hi, "{v}");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p = h.percentiles();
        assert_eq!((p.samples, p.min_ns, p.max_ns), (100_000, 1, 100_000));
        let near = |got: u64, want: f64| (got as f64 - want).abs() / want < 0.035;
        assert!(near(p.p50_ns, 50_000.0), "{p:?}");
        assert!(near(p.p99_ns, 99_000.0), "{p:?}");
        assert!(near(p.p999_ns, 99_900.0), "{p:?}");
        assert!((p.mean_ns - 50_000.5).abs() < 1e-6);
    }

    #[test]
    fn small_values_are_exact_and_tails_show() {
        let mut h = Histogram::new();
        for _ in 0..998 {
            h.record(40);
        }
        h.record(5_000);
        h.record(1_000_000);
        let p = h.percentiles();
        assert_eq!((p.min_ns, p.p50_ns, p.p99_ns), (40, 40, 40));
        assert!((4_900..=5_100).contains(&p.p999_ns), "{p:?}");
        assert_eq!(p.max_ns, 1_000_000);
        let mut other = Histogram::new();
        other.record(1);
        h.merge(&other);
        assert_eq!(h.percentiles().min_ns, 1);
        assert_eq!(Histogram::new().percentiles(), Percentiles::default());
    }
}
