//! A token-bucket rate limiter on a nanosecond clock, consulted once per burst.

/// Limits packets per second; `None` rate means unlimited.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Packets per nanosecond.
    per_ns: f64,
    tokens: f64,
    cap: f64,
    last_ns: Option<u64>,
}

impl RateLimiter {
    /// A limiter of `pps` packets per second (`None` or ≤ 0: unlimited), letting at most
    /// `burst` packets go at once.
    pub fn new(pps: Option<f64>, burst: u32) -> Self {
        let per_ns = match pps {
            Some(p) if p > 0.0 && p.is_finite() => p / 1e9,
            _ => 0.0,
        };
        RateLimiter {
            per_ns,
            tokens: 0.0,
            // One more than a burst, so that the fraction left after a full burst is kept.
            cap: f64::from(burst.max(1)) + 1.0,
            last_ns: None,
        }
    }

    /// Whether there is no limit.
    pub fn unlimited(&self) -> bool {
        self.per_ns == 0.0
    }

    /// How many packets may go at `now_ns` (at most `want`). Call [`RateLimiter::take`] with
    /// how many went.
    #[inline]
    pub fn available(&mut self, now_ns: u64, want: u32) -> u32 {
        if self.per_ns == 0.0 {
            return want;
        }
        match self.last_ns {
            // The first packet goes at once.
            None => self.tokens = self.tokens.max(1.0),
            Some(last) => {
                let dt = now_ns.saturating_sub(last) as f64;
                self.tokens = (self.tokens + dt * self.per_ns).min(self.cap);
            }
        }
        self.last_ns = Some(now_ns);
        (self.tokens as u32).min(want)
    }

    /// Spends `n` tokens.
    #[inline]
    pub fn take(&mut self, n: u32) {
        if self.per_ns != 0.0 {
            self.tokens = (self.tokens - f64::from(n)).max(0.0);
        }
    }

    /// Forgets accumulated time (call when (re)starting traffic).
    pub fn reset(&mut self) {
        self.tokens = 0.0;
        self.last_ns = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a limiter with a loop polling every `step_ns`, sending all it may.
    fn simulate(pps: f64, burst: u32, step_ns: u64, secs: f64) -> u64 {
        let mut r = RateLimiter::new(Some(pps), burst);
        let mut sent = 0u64;
        let end = (secs * 1e9) as u64;
        let mut t = 1_000_000;
        while t < end + 1_000_000 {
            let n = r.available(t, burst);
            r.take(n);
            sent += u64::from(n);
            t += step_ns;
        }
        sent
    }

    #[test]
    fn rates_are_met_within_a_fraction_of_a_percent() {
        for (pps, burst, step) in [
            (1_000_000.0, 32, 700),
            (10_000.0, 1, 1_000),
            (14_880_952.0, 32, 300),
            (123.0, 4, 50_000),
        ] {
            let sent = simulate(pps, burst, step, 1.0) as f64;
            assert!((sent - pps).abs() / pps < 0.005, "{pps} pps: sent {sent}");
        }
    }

    #[test]
    fn a_stalled_loop_does_not_burst_more_than_the_cap() {
        let mut r = RateLimiter::new(Some(1e6), 32);
        assert_eq!(r.available(0, 32), 1);
        r.take(1);
        // A 1 s stall: about one burst, not a million packets.
        assert_eq!(r.available(1_000_000_000, 1000), 33);
        assert_eq!(r.available(1_000_000_000, 32), 32);
        let mut u = RateLimiter::new(None, 32);
        assert!(u.unlimited());
        assert_eq!(u.available(5, 17), 17);
        assert!(RateLimiter::new(Some(0.0), 8).unlimited());
    }
}
