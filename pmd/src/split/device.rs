//! The split ring as the fast path drives it: [`DeviceRing`] for [`SplitRing`].
#![forbid(unsafe_code)]

use std::sync::atomic::{fence, Ordering};

use super::chain;
use super::raw::{SplitRing, AVAIL_F_NO_INTERRUPT};
use crate::chain::{Direction, Segments};
use crate::forward::BURST;
use crate::memory::GuestMemoryMap;
use crate::queue::{broken, Cursor};
use crate::ring::{Broken, ChainHead, DeviceRing, TakenChain};

/// `vring_need_event` (virtio 1.2 §2.7.10): did `new` pass `event` since `old`?
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl DeviceRing for SplitRing<'_> {
    #[inline]
    fn poll(&self, cur: &mut Cursor, max: u16) -> Result<u16, Broken> {
        let avail = self.avail_idx();
        let pending = avail.wrapping_sub(cur.last_avail);
        if pending > self.size() {
            return Err(broken::AVAIL_JUMP);
        }
        cur.cached_avail = avail;
        let n = pending.min(max);
        for k in 0..n {
            let id = self.avail_entry(cur.last_avail.wrapping_add(k));
            self.prefetch_descriptor(id);
        }
        Ok(n)
    }

    #[inline]
    fn take(
        &self,
        cur: &mut Cursor,
        memory: &GuestMemoryMap,
        dir: Direction,
        indirect_ok: bool,
        out: &mut Segments,
    ) -> Result<Option<TakenChain>, Broken> {
        if cur.last_avail == cur.cached_avail {
            // The avail index is read again only once the cached one is used up; newly
            // seen chains have their descriptors fetched together, not one miss per frame.
            if self.poll(cur, BURST)? == 0 {
                return Ok(None);
            }
        }
        let id = self.avail_entry(cur.last_avail);
        if id >= self.size() {
            return Err(broken::BAD_HEAD);
        }
        cur.last_avail = cur.last_avail.wrapping_add(1);
        Ok(Some(TakenChain {
            head: ChainHead { id, descriptors: 1 },
            walked: chain::walk_append(self, memory, id, dir, indirect_ok, out),
        }))
    }

    #[inline]
    fn prefetch_used(&self, cur: &Cursor, count: u16) {
        // Eight bytes per entry: a line holds eight.
        for k in (0..count).step_by(8) {
            self.prefetch_used_entry(cur.next_used.wrapping_add(k));
        }
        if count > 0 {
            self.prefetch_used_entry(cur.next_used.wrapping_add(count - 1));
        }
    }

    #[inline]
    fn push_used(&self, cur: &mut Cursor, head: ChainHead, len: u32) {
        self.write_used(cur.next_used, head.id, len);
        cur.next_used = cur.next_used.wrapping_add(1);
    }

    #[inline]
    fn push_used_in_order(&self, cur: &mut Cursor, last: ChainHead, chains: u16, _: u16) {
        self.write_used(cur.next_used, last.id, 0);
        cur.next_used = cur.next_used.wrapping_add(chains);
    }

    fn publish_used(&self, cur: &mut Cursor, event_idx: bool) -> bool {
        let (old, new) = (cur.published_used, cur.next_used);
        if old == new {
            return false;
        }
        self.store_used_idx(new);
        cur.published_used = new;
        // The driver writes its flags / used_event and then reads used.idx; we write
        // used.idx and then read its flags: both sides need a full barrier in between.
        fence(Ordering::SeqCst);
        if event_idx {
            need_event(self.used_event(), new, old)
        } else {
            self.avail_flags() & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    #[inline]
    fn suppress_kicks_after(&self, cur: &Cursor, event_idx: bool) {
        if event_idx {
            // Keep avail_event just behind the driver: it never needs to kick a poller.
            self.set_avail_event(cur.last_avail.wrapping_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_examples() {
        // Driver asked to be told once used passes 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(10, 6, 3));
        // Across the 16-bit wrap.
        assert!(need_event(65535, 1, 65530));
    }
}
