//! Forwarding decisions: an L2 learning bridge or a cross-connect.
//!
//! The FDB is a fixed open-addressing table of atomic slots (no allocation and no lock on
//! the fast path; several PMDs may learn at once). A slot's key is the MAC with a presence
//! bit; its value packs the port, a static flag and the time the MAC was last seen. A value
//! of 0 means "being written" and reads as a miss.

use std::sync::atomic::{AtomicU64, Ordering};

/// How destinations are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Learn source MACs; unicast to the learned port, flood the rest.
    Learning,
    /// Port 2k <-> port 2k+1, whatever the MACs.
    Xconnect,
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One port.
    Port(usize),
    /// Every port but the source.
    Flood,
    /// Nowhere (hairpin, or a cross-connect without a peer).
    Nowhere,
    /// Refused: the source MAC is not allowed on the source port.
    Spoofed,
}

const SLOTS: usize = 4096;
const PROBE: usize = 16;
const PRESENT: u64 = 1 << 48;
const STATIC: u64 = 1 << 47;
/// Set in every written value, so that port 0 learned at second 0 is not 0.
const VALID: u64 = 1 << 46;
const TIME_MASK: u64 = VALID - 1;

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    value: AtomicU64,
}

/// One learned or static entry, for output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// The MAC address.
    pub mac: [u8; 6],
    /// The port index.
    pub port: usize,
    /// Configured, never ages.
    pub is_static: bool,
    /// Seconds since it was last seen (0 for static entries).
    pub age_secs: u64,
}

/// The switching state shared by every PMD.
#[derive(Debug)]
pub struct Switch {
    mode: Mode,
    ports: usize,
    aging_secs: u64,
    slots: Box<[Slot]>,
}

fn mac_key(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    u64::from_le_bytes(b) | PRESENT
}

fn key_mac(key: u64) -> [u8; 6] {
    let b = (key & !PRESENT).to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

fn home(key: u64) -> usize {
    // Fibonacci hashing spreads the vendor prefix and the low bytes alike.
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize & (SLOTS - 1)
}

/// True for broadcast and multicast destinations.
pub fn is_multicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// A switch over `ports` ports. Entries not seen for `aging_secs` are forgotten.
    pub fn new(mode: Mode, ports: usize, aging_secs: u64) -> Self {
        let slots = (0..SLOTS).map(|_| Slot::default()).collect();
        Switch {
            mode,
            ports,
            aging_secs,
            slots,
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Decides where a frame from `src_port` goes, learning its source MAC.
    #[inline]
    pub fn decide(&self, src_port: usize, dst: [u8; 6], src: [u8; 6], now: u64) -> Destination {
        match self.mode {
            Mode::Xconnect => {
                let peer = src_port ^ 1;
                if peer < self.ports {
                    Destination::Port(peer)
                } else {
                    Destination::Nowhere
                }
            }
            Mode::Learning => {
                if !is_multicast(src) {
                    self.learn(src, src_port, now);
                }
                if is_multicast(dst) {
                    return Destination::Flood;
                }
                match self.lookup(dst, now) {
                    Some(p) if p == src_port => Destination::Nowhere,
                    Some(p) => Destination::Port(p),
                    None => Destination::Flood,
                }
            }
        }
    }

    fn live(&self, value: u64, now: u64) -> bool {
        value != 0
            && (value & STATIC != 0 || now.saturating_sub(value & TIME_MASK) < self.aging_secs)
    }

    /// The port `mac` was learned on, if the entry is live.
    pub fn lookup(&self, mac: [u8; 6], now: u64) -> Option<usize> {
        let key = mac_key(mac);
        let start = home(key);
        for i in 0..PROBE {
            let slot = &self.slots[(start + i) & (SLOTS - 1)];
            let k = slot.key.load(Ordering::Acquire);
            if k == key {
                let v = slot.value.load(Ordering::Acquire);
                return self.live(v, now).then_some((v >> 48) as usize);
            }
            // Keys are never cleared, so an empty slot ends every probe sequence.
            if k == 0 {
                return None;
            }
        }
        None
    }

    /// Records that `mac` was seen on `port` at `now` (seconds).
    pub fn learn(&self, mac: [u8; 6], port: usize, now: u64) {
        self.insert(
            mac,
            ((port as u64) << 48) | VALID | (now & TIME_MASK),
            false,
            now,
        );
    }

    /// Adds a static entry (never ages, never moved by learning).
    pub fn add_static(&self, mac: [u8; 6], port: usize) {
        self.insert(mac, ((port as u64) << 48) | VALID | STATIC, true, 0);
    }

    fn insert(&self, mac: [u8; 6], value: u64, force: bool, now: u64) {
        let key = mac_key(mac);
        let start = home(key);
        // A slot to take if `mac` is not in the table: the first never-used or dead one.
        let mut free: Option<(&Slot, u64)> = None;
        for i in 0..PROBE {
            let slot = &self.slots[(start + i) & (SLOTS - 1)];
            let k = slot.key.load(Ordering::Acquire);
            if k == key {
                let old = slot.value.load(Ordering::Relaxed);
                if old & STATIC != 0 && !force {
                    return;
                }
                // Refresh at most once a second: a store per packet would bounce the
                // cache line between PMDs.
                let moved = old >> 48 != value >> 48;
                let newer = value & TIME_MASK > old & TIME_MASK;
                if force || old == 0 || moved || newer {
                    slot.value.store(value, Ordering::Release);
                }
                return;
            }
            if free.is_none() && (k == 0 || !self.live(slot.value.load(Ordering::Acquire), now)) {
                free = Some((slot, k));
            }
            if k == 0 {
                break;
            }
        }
        // Not present: claim the free slot (a dead entry keeps its key until reused, so
        // probe sequences never get holes). Losing the race only means flooding.
        if let Some((slot, old_key)) = free {
            if slot
                .key
                .compare_exchange(old_key, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.value.store(value, Ordering::Release);
            }
        }
    }

    /// Forgets the entries of `port` (its front-end went away) and expired ones. The key
    /// stays (value 0 = dead) so that later entries of the same probe sequence stay found.
    pub fn expire(&self, now: u64, port_gone: Option<usize>) {
        for slot in self.slots.iter() {
            let v = slot.value.load(Ordering::Acquire);
            if slot.key.load(Ordering::Acquire) == 0 || v == 0 {
                continue;
            }
            let dead =
                !self.live(v, now) || (v & STATIC == 0 && port_gone == Some((v >> 48) as usize));
            if dead {
                slot.value.store(0, Ordering::Release);
            }
        }
    }

    /// Live entries.
    pub fn entries(&self, now: u64) -> Vec<FdbEntry> {
        self.slots
            .iter()
            .filter_map(|s| {
                let k = s.key.load(Ordering::Acquire);
                let v = s.value.load(Ordering::Acquire);
                (k != 0 && self.live(v, now)).then(|| FdbEntry {
                    mac: key_mac(k),
                    port: (v >> 48) as usize,
                    is_static: v & STATIC != 0,
                    age_secs: if v & STATIC != 0 {
                        0
                    } else {
                        now.saturating_sub(v & TIME_MASK)
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const BCAST: [u8; 6] = [0xff; 6];

    #[test]
    fn learns_floods_and_never_hairpins() {
        let s = Switch::new(Mode::Learning, 3, 300);
        assert_eq!(s.decide(0, B, A, 10), Destination::Flood);
        assert_eq!(s.decide(1, A, B, 10), Destination::Port(0));
        assert_eq!(s.decide(0, B, A, 11), Destination::Port(1));
        assert_eq!(s.decide(0, BCAST, A, 11), Destination::Flood);
        assert_eq!(
            s.decide(0, [1, 0, 0x5e, 0, 0, 1], A, 11),
            Destination::Flood
        );
        // A frame for a MAC learned on the source port goes nowhere.
        assert_eq!(s.decide(0, A, A, 11), Destination::Nowhere);
        // Multicast sources are not learned.
        s.decide(2, A, [3, 0, 0, 0, 0, 1], 11);
        assert_eq!(s.lookup([3, 0, 0, 0, 0, 1], 11), None);
    }

    #[test]
    fn port_0_learned_at_second_0_is_found() {
        let s = Switch::new(Mode::Learning, 2, 300);
        s.learn(A, 0, 0);
        assert_eq!(s.lookup(A, 0), Some(0));
        assert_eq!(s.decide(1, A, B, 0), Destination::Port(0));
    }

    #[test]
    fn entries_age_and_move() {
        let s = Switch::new(Mode::Learning, 3, 5);
        s.learn(A, 0, 100);
        assert_eq!(s.lookup(A, 104), Some(0));
        assert_eq!(s.lookup(A, 105), None);
        s.learn(A, 2, 106);
        assert_eq!(s.lookup(A, 106), Some(2));
        s.expire(200, None);
        assert!(s.entries(200).is_empty());
        assert_eq!(s.decide(1, A, B, 200), Destination::Flood);
    }

    #[test]
    fn expiring_an_entry_keeps_later_entries_of_its_probe_sequence() {
        // Regression (found by fuzz/switch_fdb): clearing a dead entry's key cut the probe
        // sequence, hiding live entries stored after it.
        let s = Switch::new(Mode::Learning, 2, 5);
        let macs: Vec<[u8; 6]> = (0..3000u32)
            .map(|i| {
                let b = i.to_le_bytes();
                [2, 0, 0, b[2], b[1], b[0]]
            })
            .collect();
        for (i, m) in macs.iter().enumerate() {
            s.learn(*m, 0, if i % 2 == 0 { 0 } else { 10 });
        }
        s.expire(10, None);
        for (i, m) in macs.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            if s.entries(10).iter().any(|e| e.mac == *m) {
                assert_eq!(s.lookup(*m, 10), Some(0), "live entry {i} lost");
            }
        }
        // Dead slots are reused.
        s.learn([2, 9, 9, 9, 9, 9], 1, 11);
        assert_eq!(s.lookup([2, 9, 9, 9, 9, 9], 11), Some(1));
    }

    #[test]
    fn static_entries_never_age_or_move() {
        let s = Switch::new(Mode::Learning, 3, 5);
        s.add_static(A, 1);
        s.learn(A, 2, 1000);
        assert_eq!(s.lookup(A, 1_000_000), Some(1));
        s.expire(1_000_000, Some(1));
        assert_eq!(
            s.entries(1_000_000),
            vec![FdbEntry {
                mac: A,
                port: 1,
                is_static: true,
                age_secs: 0
            }]
        );
    }

    #[test]
    fn port_removal_forgets_its_macs() {
        let s = Switch::new(Mode::Learning, 2, 300);
        s.learn(A, 0, 1);
        s.learn(B, 1, 1);
        s.expire(2, Some(0));
        assert_eq!(s.lookup(A, 2), None);
        assert_eq!(s.lookup(B, 2), Some(1));
    }

    #[test]
    fn xconnect_pairs_ports_in_order() {
        let s = Switch::new(Mode::Xconnect, 3, 300);
        assert_eq!(s.decide(0, A, B, 0), Destination::Port(1));
        assert_eq!(s.decide(1, A, B, 0), Destination::Port(0));
        assert_eq!(s.decide(2, A, B, 0), Destination::Nowhere);
    }

    #[test]
    fn many_macs_fit_and_overflow_floods() {
        let s = Switch::new(Mode::Learning, 2, 300);
        for i in 0..2000u32 {
            let b = i.to_le_bytes();
            s.learn([2, 0, b[0], b[1], b[2], 1], (i % 2) as usize, 1);
        }
        let learned = s.entries(1).len();
        assert!(learned > 1900, "{learned}");
        for i in 0..2000u32 {
            let b = i.to_le_bytes();
            if let Some(p) = s.lookup([2, 0, b[0], b[1], b[2], 1], 1) {
                assert_eq!(p, (i % 2) as usize);
            }
        }
    }
}
