//! Idle back-off: a PMD that keeps finding nothing naps in growing steps, up to a bound,
//! instead of spinning; the first poll that moves a packet returns it to pure polling.
//!
//! Off by default (a bound of zero): a PMD then polls without a pause, as a poll-mode
//! driver should when latency matters. With a bound, an idle PMD gives its core back for
//! most of the time, and traffic that arrives waits at most one nap (the bound) before it
//! is seen. The steps double from [`FIRST_NAP`]: a short lull costs little latency, a long
//! one saves nearly all the CPU.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Empty polls in a row before the first nap: a gap between two bursts of a busy guest is
/// shorter than this, so steady traffic never naps.
pub const POLLS_BEFORE_NAPPING: u32 = 256;
/// The first nap; each following one doubles, up to the bound.
pub const FIRST_NAP: Duration = Duration::from_micros(1);

/// The back-off state of one PMD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleBackoff {
    max: Duration,
    empty_polls: u32,
    nap: Duration,
}

impl IdleBackoff {
    /// Back-off with naps up to `max`; `Duration::ZERO` never naps.
    pub fn new(max: Duration) -> Self {
        IdleBackoff {
            max,
            empty_polls: 0,
            nap: Duration::ZERO,
        }
    }

    /// Whether this PMD ever naps.
    pub fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// After a round of polls that took `chains` chains: how long to nap before the next
    /// round, `None` to poll again at once.
    pub fn after_poll(&mut self, chains: u32) -> Option<Duration> {
        if chains > 0 {
            self.empty_polls = 0;
            self.nap = Duration::ZERO;
            return None;
        }
        self.empty_polls = self.empty_polls.saturating_add(1);
        if !self.enabled() || self.empty_polls < POLLS_BEFORE_NAPPING {
            return None;
        }
        self.nap = if self.nap.is_zero() {
            FIRST_NAP.min(self.max)
        } else {
            (self.nap * 2).min(self.max)
        };
        Some(self.nap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(b: &mut IdleBackoff, polls: u32) -> Vec<Option<Duration>> {
        (0..polls).map(|_| b.after_poll(0)).collect()
    }

    #[test]
    fn naps_grow_from_the_first_step_to_the_bound_after_a_run_of_empty_polls() {
        let mut b = IdleBackoff::new(Duration::from_micros(50));
        let first = idle(&mut b, POLLS_BEFORE_NAPPING);
        assert!(first[..first.len() - 1].iter().all(Option::is_none));
        assert_eq!(first.last(), Some(&Some(FIRST_NAP)));
        let us = |n| Some(Duration::from_micros(n));
        assert_eq!(
            idle(&mut b, 7),
            [us(2), us(4), us(8), us(16), us(32), us(50), us(50)]
        );
    }

    #[test]
    fn traffic_returns_to_polling_at_once_and_the_steps_start_over() {
        let mut b = IdleBackoff::new(Duration::from_micros(100));
        idle(&mut b, POLLS_BEFORE_NAPPING + 5);
        assert_eq!(b.after_poll(3), None);
        assert!(idle(&mut b, POLLS_BEFORE_NAPPING - 1)
            .iter()
            .all(Option::is_none));
        assert_eq!(b.after_poll(0), Some(FIRST_NAP));
    }

    #[test]
    fn a_zero_bound_never_naps_and_a_bound_below_the_first_step_caps_it() {
        let mut off = IdleBackoff::new(Duration::ZERO);
        assert!(!off.enabled());
        assert!(idle(&mut off, 10 * POLLS_BEFORE_NAPPING)
            .iter()
            .all(Option::is_none));
        let mut tiny = IdleBackoff::new(Duration::from_nanos(300));
        assert_eq!(
            idle(&mut tiny, POLLS_BEFORE_NAPPING + 1).last(),
            Some(&Some(Duration::from_nanos(300)))
        );
    }
}
