//! The packed ring as the fast path drives it: [`DeviceRing`] for [`PackedRing`], with
//! chain walking (virtio 1.2 §2.8.6, §2.8.7, §2.8.19).
//!
//! A chain is a run of consecutive descriptors linked by NEXT; its buffer id is in the
//! last one. Only the head's flags say the chain is available (the driver writes them
//! last). The walk always finds the chain's end, even when a buffer is refused, so the
//! chain can be returned; a chain with no end within the ring size breaks the ring.
//! Used descriptors are written at the device's own position, one per chain, and the
//! device then skips the chain's length; the flags of the first used descriptor of a
//! batch are stored last, once for the whole batch.
#![forbid(unsafe_code)]

use std::sync::atomic::{fence, Ordering};

use super::raw::{
    is_available, used_flags, Descriptor, PackedRing, BATCH, DESC_F_INDIRECT, DESC_F_NEXT,
    DESC_F_USED, DESC_F_WRITE, EVENT_F_DESC, EVENT_F_DISABLE,
};
use crate::chain::{push_buffer, ChainError, Direction, IndirectTable, Segments};
use crate::memory::GuestMemoryMap;
use crate::queue::{broken, Cursor};
use crate::ring::{Broken, ChainHead, DeviceRing, TakenChain};

/// A position and wrap counter as one number that counts through two rounds of the ring
/// (`0..2 * size`), so intervals can be compared across the wrap: the round that starts
/// with the wrap counter set comes first, as after a reset.
#[inline]
fn linear(pos: u16, wrap: bool, size: u16) -> u32 {
    u32::from(pos) + if wrap { 0 } else { u32::from(size) }
}

/// Whether the driver's event position (`off_wrap`: offset in bits 0-14, wrap counter in
/// bit 15) lies among the used positions written since the last notification, `old` up
/// to `new` (the packed form of `vring_need_event`).
pub fn need_event(off_wrap: u16, old: (u16, bool), new: (u16, bool), size: u16) -> bool {
    let period = 2 * u32::from(size);
    let event = linear(off_wrap & 0x7fff, off_wrap & 0x8000 != 0, size);
    let old = linear(old.0, old.1, size);
    let new = linear(new.0, new.1, size);
    let since_old = |x: u32| (x + period - old) % period;
    since_old(event) < since_old(new)
}

/// Advances a position and its wrap counter by `n` descriptors (at most the ring size).
#[inline]
fn advance(pos: u16, wrap: bool, n: u16, size: u16) -> (u16, bool) {
    let next = u32::from(pos) + u32::from(n);
    if next >= u32::from(size) {
        ((next - u32::from(size)) as u16, !wrap)
    } else {
        (next as u16, wrap)
    }
}

impl PackedRing<'_> {
    /// Walks the chain whose head is at `head` (already seen available): its buffers into
    /// `out`, its buffer id and length in descriptors returned. `Err` when the chain has
    /// no end within the ring size.
    fn walk(
        &self,
        head: u16,
        memory: &GuestMemoryMap,
        dir: Direction,
        indirect_ok: bool,
        out: &mut Segments,
    ) -> Result<TakenChain, Broken> {
        let size = self.size();
        let mut pos = head;
        let mut walked = Ok(());
        for count in 1..=size {
            let desc = self.descriptor(pos).ok_or(broken::BAD_HEAD)?;
            if walked.is_ok() {
                walked = visit(memory, desc, size, dir, indirect_ok, out);
            }
            if desc.flags & DESC_F_NEXT == 0 {
                return Ok(TakenChain {
                    head: ChainHead {
                        id: desc.id,
                        descriptors: count,
                    },
                    walked,
                });
            }
            pos = if pos + 1 == size { 0 } else { pos + 1 };
        }
        Err(broken::ENDLESS_CHAIN)
    }
}

impl PackedRing<'_> {
    /// Checks the cache line of descriptors starting at `head` at once: when `head` opens
    /// a line wholly inside the ring and all [`BATCH`] descriptors in it are available,
    /// each a chain of its own (no NEXT), fences once and returns `BATCH`, so that they
    /// are taken without reading their flags again; else 0 (one chain at a time then).
    #[inline]
    fn check_batch(&self, head: u16, wrap: bool) -> u16 {
        let at_line = usize::from(head) % BATCH == 0;
        if !at_line || usize::from(head) + BATCH > usize::from(self.size()) {
            return 0;
        }
        let Some(flags) = self.batch_flags(head) else {
            return 0;
        };
        if !flags
            .iter()
            .all(|&f| is_available(f, wrap) && f & DESC_F_NEXT == 0)
        {
            return 0;
        }
        // Pairs with the driver's release of each flags word: the descriptors read after
        // this are what the driver wrote before making them available.
        fence(Ordering::Acquire);
        BATCH as u16
    }

    /// Takes the descriptor at `head`, checked available and single by [`Self::check_batch`],
    /// as a chain of one. Should the driver have rewritten it since (a hostile driver
    /// only), it is still one descriptor: its NEXT flag is not followed.
    #[inline]
    fn take_checked(
        &self,
        head: u16,
        memory: &GuestMemoryMap,
        dir: Direction,
        indirect_ok: bool,
        out: &mut Segments,
    ) -> Result<TakenChain, Broken> {
        let desc = self.descriptor(head).ok_or(broken::BAD_HEAD)?;
        let single = Descriptor {
            flags: desc.flags & !DESC_F_NEXT,
            ..desc
        };
        Ok(TakenChain {
            head: ChainHead {
                id: desc.id,
                descriptors: 1,
            },
            walked: visit(memory, single, self.size(), dir, indirect_ok, out),
        })
    }
}

/// Checks one ring descriptor of a chain and appends its buffers (an indirect table's,
/// for an indirect descriptor).
#[inline]
fn visit(
    memory: &GuestMemoryMap,
    desc: Descriptor,
    size: u16,
    dir: Direction,
    indirect_ok: bool,
    out: &mut Segments,
) -> Result<(), ChainError> {
    if desc.flags & DESC_F_INDIRECT == 0 {
        return push_buffer(
            memory,
            desc.addr,
            desc.len,
            desc.flags & DESC_F_WRITE != 0,
            dir,
            out,
        );
    }
    if !indirect_ok {
        return Err(ChainError::IndirectNotNegotiated);
    }
    if desc.flags & DESC_F_NEXT != 0 {
        return Err(ChainError::IndirectWithNext);
    }
    // The table's entries are used in order; WRITE is their only meaningful flag
    // (virtio 1.2 §2.8.19), the others are ignored.
    let table = IndirectTable::new(memory, desc.addr, desc.len, size)?;
    for i in 0..table.len() {
        let (lo, hi) = table
            .entry(i)
            .ok_or(ChainError::IndexOutOfRange(i as u16))?;
        let entry = Descriptor::from_words(lo, hi);
        push_buffer(
            memory,
            entry.addr,
            entry.len,
            entry.flags & DESC_F_WRITE != 0,
            dir,
            out,
        )?;
    }
    Ok(())
}

impl DeviceRing for PackedRing<'_> {
    #[inline]
    fn poll(&self, cur: &mut Cursor, max: u16) -> Result<u16, Broken> {
        if cur.last_avail >= self.size() {
            return Err(broken::BAD_HEAD);
        }
        if !is_available(self.flags(cur.last_avail), cur.avail_wrap) {
            return Ok(0);
        }
        // The burst's descriptors are consecutive: four to a cache line.
        let mut pos = cur.last_avail;
        for _ in 0..max.min(self.size()).div_ceil(4) {
            self.prefetch_descriptor(pos);
            pos = advance(pos, false, 4, self.size()).0;
        }
        Ok(max)
    }

    #[inline]
    fn prefetch_used(&self, _: &Cursor, _: u16) {
        // Used descriptors are written where the chains were read: `poll` fetched those
        // lines for writing already.
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
        let head = cur.last_avail;
        if head >= self.size() {
            return Err(broken::BAD_HEAD);
        }
        if cur.checked == 0 {
            cur.checked = self.check_batch(head, cur.avail_wrap);
        }
        let taken = if cur.checked > 0 {
            cur.checked -= 1;
            self.take_checked(head, memory, dir, indirect_ok, out)?
        } else if is_available(self.flags(head), cur.avail_wrap) {
            self.walk(head, memory, dir, indirect_ok, out)?
        } else {
            return Ok(None);
        };
        (cur.last_avail, cur.avail_wrap) =
            advance(head, cur.avail_wrap, taken.head.descriptors, self.size());
        Ok(Some(taken))
    }

    #[inline]
    fn push_used(&self, cur: &mut Cursor, head: ChainHead, len: u32) {
        self.push(cur, head.id, len, head.descriptors);
    }

    #[inline]
    fn push_used_in_order(&self, cur: &mut Cursor, last: ChainHead, _: u16, descriptors: u16) {
        self.push(cur, last.id, 0, descriptors);
    }

    fn publish_used(&self, cur: &mut Cursor, event_idx: bool) -> bool {
        let old = (cur.published_used, cur.published_wrap);
        let new = (cur.next_used, cur.used_wrap);
        if old == new {
            return false;
        }
        // The batch's first used descriptor becomes visible last, with everything after
        // it already in place.
        self.store_flags(old.0, cur.held_flags);
        (cur.published_used, cur.published_wrap) = new;
        // As for split rings: the driver writes its event structure, then reads the used
        // flags; we write used flags, then read its structure.
        fence(Ordering::SeqCst);
        let (off_wrap, flags) = self.driver_event();
        match flags {
            EVENT_F_DISABLE => false,
            EVENT_F_DESC if event_idx => need_event(off_wrap, old, new, self.size()),
            // ENABLE, or a value the driver may not use here (DESC without EVENT_IDX, the
            // reserved 3): interrupt, since a spurious interrupt is harmless and a lost one
            // stalls the driver.
            _ => true,
        }
    }

    #[inline]
    fn suppress_kicks_after(&self, _: &Cursor, _: bool) {
        // The device event structure says "disable" from the ring's start on.
    }
}

impl PackedRing<'_> {
    /// Where a device restarting at `(pos, wrap)` really stands, read from the ring.
    ///
    /// Only the device sets USED bits, and it sets them in ring order: with chains of one
    /// descriptor each, every position before the device's holds the USED bit of the
    /// device's round, and every position from it on the other value (a descriptor the
    /// driver posted keeps the bit of the round it was posted for). So the bits change
    /// value once around the ring, where the device stands. When they do, that position
    /// is returned, whatever `(pos, wrap)` said: QEMU sends a stale one when the back-end
    /// died, because it cannot ask a dead back-end and a packed ring, unlike a split one,
    /// keeps no used index in memory, so it repeats the position the ring last started
    /// at. When they change more than once (chains of several descriptors leave the
    /// driver's bits in their tails), the ring cannot say and `(pos, wrap)` stands.
    pub fn resume_position(&self, pos: u16, wrap: bool) -> (u16, bool) {
        let used_bit = |q: u16| self.flags(q) & DESC_F_USED != 0;
        let first = used_bit(0);
        let mut step = None;
        for q in 1..self.size() {
            if used_bit(q) != used_bit(q - 1) {
                if step.is_some() {
                    return (pos, wrap);
                }
                step = Some(q);
            }
        }
        match step {
            // Positions before the step were used in the device's round.
            Some(q) => (q, first),
            // No step: the device is at the start of the round after the bits'.
            None => (0, !first),
        }
    }

    /// Writes a used descriptor at the device's position and skips the chain: its flags
    /// are stored at once unless it opens the batch, whose flags are held for
    /// [`DeviceRing::publish_used`].
    #[inline]
    fn push(&self, cur: &mut Cursor, id: u16, len: u32, descriptors: u16) {
        let pos = cur.next_used;
        let flags = used_flags(cur.used_wrap, len > 0);
        self.write_used(pos, id, len);
        if (pos, cur.used_wrap) == (cur.published_used, cur.published_wrap) {
            cur.held_flags = flags;
        } else {
            self.store_flags(pos, flags);
        }
        (cur.next_used, cur.used_wrap) = advance(pos, cur.used_wrap, descriptors, self.size());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_map;
    use crate::packed::raw::{DESC_F_AVAIL, EVENT_F_ENABLE};
    use crate::vring::{translate, Layout, RingAddrs};

    #[test]
    fn a_batch_becomes_visible_with_its_first_flags_and_notifies_as_asked() {
        let mem = test_map(0x4000, 0);
        let addrs = RingAddrs {
            desc: 0,
            avail: 0x1000,
            used: 0x1004,
        };
        let t = translate(&mem, 8, addrs, Layout::Packed).unwrap();
        let ring = PackedRing::new(&mem, &t).unwrap();
        let driver = mem.slice(&t.avail).unwrap();
        let mut cur = Cursor::packed(0x8006);
        ring.push_used(
            &mut cur,
            ChainHead {
                id: 4,
                descriptors: 1,
            },
            60,
        );
        ring.push_used(
            &mut cur,
            ChainHead {
                id: 9,
                descriptors: 3,
            },
            0,
        );
        assert_eq!((cur.next_used, cur.used_wrap), (2, false), "wrapped");
        // The second is written; the first waits for the publish.
        assert_eq!(ring.flags(7), DESC_F_AVAIL | DESC_F_USED);
        assert_eq!(ring.flags(6), 0);
        driver.write(2, &EVENT_F_DISABLE.to_le_bytes()).unwrap();
        assert!(!ring.publish_used(&mut cur, true));
        assert_eq!(ring.flags(6), DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE);
        assert_eq!(ring.descriptor(6).map(|d| (d.id, d.len)), Some((4, 60)));
        assert!(!ring.publish_used(&mut cur, true), "nothing new");
        // Next batch at position 2 of the second round (wrap clear).
        driver.write(0, &(2u16).to_le_bytes()).unwrap();
        driver.write(2, &EVENT_F_DESC.to_le_bytes()).unwrap();
        ring.push_used(
            &mut cur,
            ChainHead {
                id: 1,
                descriptors: 1,
            },
            0,
        );
        assert!(
            ring.publish_used(&mut cur, true),
            "position 2, round 2 reached"
        );
        assert_eq!(
            ring.flags(2),
            0,
            "used in the round with the wrap counter clear"
        );
        ring.push_used(
            &mut cur,
            ChainHead {
                id: 2,
                descriptors: 1,
            },
            0,
        );
        assert!(!ring.publish_used(&mut cur, true), "event already passed");
        driver.write(2, &EVENT_F_ENABLE.to_le_bytes()).unwrap();
        ring.push_used(
            &mut cur,
            ChainHead {
                id: 3,
                descriptors: 1,
            },
            0,
        );
        assert!(ring.publish_used(&mut cur, false));
    }

    /// A ring of 8 at 0 in a 16 KiB map, a cursor at its start, and a way to post
    /// descriptor `pos` (buffer at 0x2000 + 0x100 * pos) with `flags`.
    fn posting_ring(mem: &GuestMemoryMap) -> (PackedRing<'_>, impl Fn(u16, u16) + '_) {
        let addrs = RingAddrs {
            desc: 0,
            avail: 0x1000,
            used: 0x1004,
        };
        let t = translate(mem, 8, addrs, Layout::Packed).unwrap();
        let desc = mem.slice(&t.desc).unwrap();
        let post = move |pos: u16, flags: u16| {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&(0x2000 + 0x100 * u64::from(pos)).to_le_bytes());
            d[8..12].copy_from_slice(&64u32.to_le_bytes());
            d[12..14].copy_from_slice(&(100 + pos).to_le_bytes());
            d[14..].copy_from_slice(&flags.to_le_bytes());
            desc.write(16 * usize::from(pos), &d).unwrap();
        };
        (PackedRing::new(mem, &t).unwrap(), post)
    }

    fn take_ids(ring: &PackedRing<'_>, mem: &GuestMemoryMap, cur: &mut Cursor) -> Vec<(u16, u16)> {
        let mut out = Segments::with_capacity(64);
        let mut ids = Vec::new();
        while let Some(t) = ring
            .take(cur, mem, Direction::Readable, false, &mut out)
            .unwrap()
        {
            assert_eq!(t.walked, Ok(()));
            ids.push((t.head.id, t.head.descriptors));
        }
        ids
    }

    #[test]
    fn a_line_of_four_single_descriptors_is_checked_once() {
        let mem = test_map(0x4000, 0);
        let (ring, post) = posting_ring(&mem);
        for pos in 0..6 {
            post(pos, DESC_F_AVAIL);
        }
        let mut cur = Cursor::packed(0x8000);
        let mut out = Segments::with_capacity(64);
        let first = ring
            .take(&mut cur, &mem, Direction::Readable, false, &mut out)
            .unwrap();
        assert_eq!(first.map(|t| t.head.id), Some(100));
        assert_eq!(cur.checked, 3, "the rest of the line needs no second look");
        // A driver rewriting a checked descriptor cannot make it a longer chain.
        post(1, DESC_F_AVAIL | DESC_F_NEXT);
        assert_eq!(
            take_ids(&ring, &mem, &mut cur),
            [(101, 1), (102, 1), (103, 1), (104, 1), (105, 1)]
        );
        assert_eq!((cur.last_avail, cur.checked), (6, 0));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_line_not_wholly_available_and_single_is_taken_one_chain_at_a_time() {
        let mem = test_map(0x4000, 0);
        let (ring, post) = posting_ring(&mem);
        // A two-descriptor chain in the first line.
        post(0, DESC_F_AVAIL | DESC_F_NEXT);
        for pos in 1..3 {
            post(pos, DESC_F_AVAIL);
        }
        let mut cur = Cursor::packed(0x8000);
        assert_eq!(ring.check_batch(0, true), 0);
        assert_eq!(take_ids(&ring, &mem, &mut cur), [(101, 2), (102, 1)]);
        // The second line: its last descriptor is not available yet.
        for pos in 4..7 {
            post(pos, DESC_F_AVAIL);
        }
        post(3, DESC_F_AVAIL);
        assert_eq!(ring.check_batch(4, true), 0);
        assert_eq!(
            take_ids(&ring, &mem, &mut cur),
            [(103, 1), (104, 1), (105, 1), (106, 1)]
        );
        assert_eq!(cur.checked, 0);
        // Lines start at multiples of four, inside the ring; the next round's view.
        assert_eq!(ring.check_batch(2, true), 0);
        assert_eq!(ring.check_batch(6, true), 0);
        assert_eq!(ring.check_batch(4, false), 0, "available in round 1 only");
    }

    #[test]
    fn need_event_across_the_wrap() {
        let size = 8;
        // Used positions 2..5 of the first round (wrap set) were written.
        assert!(need_event(0x8003, (2, true), (5, true), size));
        assert!(!need_event(0x8005, (2, true), (5, true), size));
        assert!(
            !need_event(0x0003, (2, true), (5, true), size),
            "next round"
        );
        // From position 6 of the first round to 2 of the second.
        assert!(need_event(0x8007, (6, true), (2, false), size));
        assert!(need_event(0x0001, (6, true), (2, false), size));
        assert!(!need_event(0x0002, (6, true), (2, false), size));
        // The second round back into the first.
        assert!(need_event(0x8000, (7, false), (1, true), size));
    }

    #[test]
    fn positions_advance_with_their_wrap_counter() {
        assert_eq!(advance(5, true, 2, 8), (7, true));
        assert_eq!(advance(7, true, 1, 8), (0, false));
        assert_eq!(advance(6, false, 4, 8), (2, true));
        assert_eq!(advance(0, true, 8, 8), (0, false));
    }

    #[test]
    fn a_restarting_device_finds_its_position_in_the_ring() {
        let mem = test_map(0x4000, 0);
        let addrs = RingAddrs {
            desc: 0,
            avail: 0x1000,
            used: 0x1004,
        };
        let t = translate(&mem, 4, addrs, Layout::Packed).unwrap();
        let ring = PackedRing::new(&mem, &t).unwrap();
        let set = |flags: [u16; 4]| {
            for (pos, f) in flags.into_iter().enumerate() {
                ring.store_flags(pos as u16, f);
            }
        };
        let (avail, used) = (DESC_F_AVAIL, DESC_F_AVAIL | DESC_F_USED);
        // A fresh ring: the first round starts with the wrap counter set.
        assert_eq!(ring.resume_position(0, true), (0, true));
        // Round 1: two used, two posted (the driver in the device's round).
        set([used, used, avail, avail]);
        assert_eq!(ring.resume_position(0, true), (2, true), "stale base");
        assert_eq!(ring.resume_position(2, true), (2, true));
        // The driver a round ahead: it reposted 0 and 1 for round 2.
        set([DESC_F_USED, DESC_F_USED, avail, avail]);
        assert_eq!(ring.resume_position(0, true), (2, true));
        // The device a round ahead of the stale base: 0 used in round 2, 1..3 in round 1.
        set([0, used, used, used]);
        assert_eq!(ring.resume_position(0, true), (1, false));
        // Every descriptor used in round 1: the device starts round 2.
        set([used; 4]);
        assert_eq!(ring.resume_position(0, true), (0, false));
        // Tails of longer chains: the ring cannot tell; the base stands.
        set([used, avail, used, avail]);
        assert_eq!(ring.resume_position(3, false), (3, false));
    }
}
