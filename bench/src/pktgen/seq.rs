//! Per-flow sequence tracking: unique, lost (holes), reordered (late), duplicated frames.
//!
//! Each flow keeps the next expected sequence number and a 64-bit window of which of the
//! 64 numbers before it arrived. A number ahead of the expected one opens a hole (counted as
//! lost until it is filled); a number inside the window fills a hole (reordered) or hits a
//! seen bit (duplicate); a number older than the window is counted as reordered (it cannot
//! be told from a duplicate any more). The first frame of a flow sets its start, so that a
//! receiver joining a running stream does not count what it missed before.

/// State of one flow.
#[derive(Debug, Clone, Copy, Default)]
struct FlowSeq {
    started: bool,
    next: u64,
    /// Bit k: sequence number `next - 1 - k` arrived.
    seen: u64,
}

/// Counters of a [`SeqTracker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounts {
    /// Frames recorded.
    pub received: u64,
    /// Distinct sequence numbers recorded.
    pub unique: u64,
    /// Frames that arrived after a later one of their flow (holes filled late, or too old
    /// to tell).
    pub reordered: u64,
    /// Frames whose number had already arrived.
    pub duplicated: u64,
    /// Numbers skipped and not (yet) filled: frames lost so far.
    pub holes: u64,
}

/// Sequence tracking over up to 65536 flows (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    flows: Vec<FlowSeq>,
    counts: SeqCounts,
}

impl SeqTracker {
    /// A tracker with room for `flows` flows (more are added on first sight).
    pub fn new(flows: usize) -> Self {
        SeqTracker {
            flows: vec![FlowSeq::default(); flows.clamp(1, 65536)],
            counts: SeqCounts::default(),
        }
    }

    /// The counters.
    pub fn counts(&self) -> SeqCounts {
        self.counts
    }

    /// Records the arrival of `seq` on `flow`.
    #[inline]
    pub fn record(&mut self, flow: u16, seq: u64) {
        let i = usize::from(flow);
        if i >= self.flows.len() {
            // A flow beyond the expected count: grow once (not per packet).
            self.flows.resize(i + 1, FlowSeq::default());
        }
        let f = &mut self.flows[i];
        let c = &mut self.counts;
        c.received += 1;
        if !f.started {
            *f = FlowSeq {
                started: true,
                next: seq.wrapping_add(1),
                seen: 1,
            };
            c.unique += 1;
            return;
        }
        if seq == f.next {
            f.seen = f.seen << 1 | 1;
            f.next = seq.wrapping_add(1);
            c.unique += 1;
        } else if seq > f.next {
            let gap = seq - f.next;
            c.holes += gap;
            f.seen = if gap >= 63 {
                1
            } else {
                f.seen << (gap + 1) | 1
            };
            f.next = seq.wrapping_add(1);
            c.unique += 1;
        } else {
            let back = f.next - 1 - seq;
            if back < 64 {
                let bit = 1u64 << back;
                if f.seen & bit != 0 {
                    c.duplicated += 1;
                    return;
                }
                f.seen |= bit;
            }
            c.reordered += 1;
            c.unique += 1;
            c.holes = c.holes.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> SeqCounts {
        let mut t = SeqTracker::new(1);
        for &s in seqs {
            t.record(0, s);
        }
        t.counts()
    }

    #[test]
    fn in_order() {
        let c = run(&[0, 1, 2, 3, 4]);
        assert_eq!(
            c,
            SeqCounts {
                received: 5,
                unique: 5,
                ..SeqCounts::default()
            }
        );
    }

    #[test]
    fn loss_is_a_hole() {
        let c = run(&[0, 1, 4, 5, 9]);
        assert_eq!((c.unique, c.holes, c.reordered, c.duplicated), (5, 5, 0, 0));
    }

    #[test]
    fn late_frames_fill_holes_as_reordered() {
        let c = run(&[0, 2, 1, 3, 6, 4, 5]);
        assert_eq!((c.unique, c.holes, c.reordered, c.duplicated), (7, 0, 3, 0));
    }

    #[test]
    fn duplicates_are_told_apart_from_reordering() {
        let c = run(&[0, 1, 1, 2, 0, 5, 3, 3, 5]);
        // 1 dup, 0 dup, 3 late (fills a hole), 3 dup, 5 dup.
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.reordered, c.holes),
            (9, 5, 4, 1, 1)
        );
    }

    #[test]
    fn very_late_frames_and_big_jumps() {
        // A jump of 1000 then a frame 900 back (outside the window): reordered, hole filled.
        let c = run(&[0, 1000, 100, 1001]);
        assert_eq!((c.unique, c.reordered, c.holes), (4, 1, 998));
        // Window edge: 37 is 63 back (inside: its repeat is a duplicate), 36 is 64 back
        // (outside: counted as reordered, a repeat could not be told).
        let c = run(&[0, 100, 37, 37, 36]);
        assert_eq!(
            (c.unique, c.reordered, c.duplicated, c.holes),
            (4, 2, 1, 97)
        );
    }

    #[test]
    fn flows_are_independent_and_joining_late_is_not_loss() {
        let mut t = SeqTracker::new(2);
        for s in 0..10 {
            t.record(0, s);
            t.record(1, 500 + s);
        }
        t.record(7, 3); // a flow beyond the expected count
        t.record(7, 4);
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.holes, c.reordered, c.duplicated),
            (22, 22, 0, 0, 0)
        );
    }
}
