//! Forwarding decisions: an L2 learning bridge or a cross-connect, with per-port policy.
//!
//! # The table
//!
//! The FDB is a fixed open-addressing table of atomic slots (no allocation and no lock on
//! the fast path; several PMDs learn at once). A slot's key is the MAC with a presence bit;
//! its value is one of:
//!
//! - `0`: free (never used, or forgotten by [`Switch::expire`]);
//! - an entry (the `VALID` bit set): port, static flag, second the MAC was last seen;
//! - a claim (`VALID` clear, not 0): one thread is writing a new entry into this slot. The
//!   claim carries the MAC being inserted, so that two PMDs learning the same new MAC notice
//!   each other. A claim reads as a miss.
//!
//! Keys are never cleared (a forgotten entry keeps its key and value 0), so a never-used
//! slot ends every probe sequence and inserts never go past one.
//!
//! # Port policy
//!
//! Each port has a [`PortPolicy`]:
//!
//! - `allowed_sources`: if not empty, a frame whose source MAC is not listed is refused
//!   ([`Destination::Spoofed`]) before anything is learned, in either mode;
//! - `max_learned`: the port may hold at most that many learned entries, so that one tenant
//!   cannot fill the table with made-up source MACs. A new MAC from a port at its limit is
//!   not learned (the frame is still switched; replies to it flood), a MAC moving to a port
//!   at its limit stays where it was, and [`Switch::learn_refusals`] counts both.
//!
//! Static entries ([`Switch::add_static`]) count against no port, never age, and learning
//! never moves them: a port sending with another port's static MAC as source does not
//! redirect traffic for it.
//!
//! # Why the per-port counts stay exact
//!
//! `learned(p)` counts the slots holding a learned entry of port `p`, live or aged out but
//! not yet forgotten by `expire`.
//!
//! 1. Every change of a slot's value is a compare-exchange, or a store by the one thread
//!    whose claim owns the slot. So each transition `old -> new` is made by exactly one
//!    thread, and that thread knows `old`.
//! 2. That thread adjusts the counts for exactly that transition: +1 to `new`'s port before
//!    the exchange (a reservation, refused at the limit: the check and the increment are one
//!    atomic read-modify-write), taken back if the exchange fails; -1 to `old`'s port after
//!    it succeeds; nothing if both are learned entries of the same port (a refresh). No
//!    decrement is lost or done twice, so once no learn or expire is in flight the count is
//!    exact: it cannot drift.
//! 3. While one is in flight the count can only be ahead of the table (reserve before,
//!    release after), never behind: it never underflows, and since every entry held by a port
//!    has an outstanding reservation, a port never holds more than `max_learned` entries,
//!    however PMDs race. The counter itself is `Relaxed`: what orders a reservation before the
//!    release of the same entry by another thread is the slot value, whose exchanges are
//!    `AcqRel` (the remover acquires the value the creator released). Being ahead, the count
//!    can refuse a learn that races others at the limit: the next frame tries again.
//! 4. The table keeps its shape: a free slot is taken by exchanging 0 for a claim (`SeqCst`),
//!    after which the claimer looks for another claim or entry of the same MAC in the probe
//!    sequence (`SeqCst` loads). Of two PMDs claiming slots for the same new MAC, at least one
//!    sees the other (neither load can precede the other thread's exchange in the single
//!    `SeqCst` order) and puts its slot back, so a MAC never has two entries. The key is
//!    written under the claim, before the entry (`Release`); readers load value, key, value and
//!    trust the pair only if the value did not change, so they never pair a key with the
//!    entry of the MAC that replaced it.
//!
//! The only hole is ABA on a slot value: a reader or updater could be fooled if, between its
//! two loads, the slot were forgotten, reused for another MAC and given back the very same
//! value (same port, same second). Forgetting a learned entry takes a whole aging period (or
//! its port leaving and coming back), so that needs a thread stalled for that long; the damage
//! is a stale port for one MAC until it is seen again or ages out. The counts follow values,
//! not keys: they stay exact even then.
//!
//! An aged-out entry keeps its slot and its count until `expire` forgets it (the control
//! thread calls it every second). So for up to one expire period after its entries aged out,
//! a port at its limit is still refused new MACs; `expire` must be called periodically.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
    /// Nowhere: the source MAC is not one the port may send from (see
    /// [`PortPolicy::allowed_sources`]). Nothing was learned from the frame.
    Spoofed,
}

/// Learned entries a port may hold by default: room for a VM with many interfaces, or a
/// small bridge or container host behind one port, while one port can fill at most 1/16 of
/// the 4096-slot table.
pub const DEFAULT_MAX_LEARNED: u32 = 256;

/// What a port may do to the FDB, fixed at construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    /// Most learned (not static) entries the port may hold at once; 0: it learns nothing.
    pub max_learned: u32,
    /// Source MACs the port may send from; empty: any.
    pub allowed_sources: Vec<[u8; 6]>,
}

impl Default for PortPolicy {
    /// [`DEFAULT_MAX_LEARNED`] entries, any source.
    fn default() -> Self {
        PortPolicy {
            max_learned: DEFAULT_MAX_LEARNED,
            allowed_sources: Vec::new(),
        }
    }
}

const SLOTS: usize = 4096;
const PROBE: usize = 16;
const PRESENT: u64 = 1 << 48;
/// Value bits 48..64: the port.
const PORT_SHIFT: u32 = 48;
const STATIC: u64 = 1 << 47;
/// Set in every entry, so that port 0 learned at second 0 is not 0 (free), and so that
/// entries and claims are told apart.
const VALID: u64 = 1 << 46;
const TIME_MASK: u64 = VALID - 1;
/// Set in every claim, so that the claim for MAC 00:00:00:00:00:00 is not 0.
const CLAIM: u64 = 1 << 63;
/// Tries of one update that keeps losing its compare-exchange (a PMD never spins longer).
const UPDATE_TRIES: usize = 4;
/// Tries of `add_static` against PMDs that keep the slot claimed (control plane: yields).
const STATIC_TRIES: usize = 10_000;

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    value: AtomicU64,
}

/// A port's policy and counters. On a cache line of its own: PMDs learning on one port do
/// not slow down those reading another port's policy.
#[derive(Debug)]
#[repr(align(64))]
struct PortState {
    max_learned: u32,
    allowed_sources: Box<[[u8; 6]]>,
    /// Slots holding a learned entry of this port (see the module docs).
    learned: AtomicU32,
    /// Learns refused because `learned` was at `max_learned`.
    refusals: AtomicU64,
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
    aging_secs: u64,
    ports: Box<[PortState]>,
    // A fixed-size array: indexes masked with `SLOTS - 1` need no bounds check.
    slots: Box<[Slot; SLOTS]>,
}

/// What one insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Written, or nothing to write (already there, or static and learning).
    Done,
    /// The port is at its limit.
    Refused,
    /// Another thread is writing the slot (or the same MAC): not written this time.
    Busy,
    /// No free slot in the MAC's probe sequence.
    Full,
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

/// The claim value for `key`: the 48 MAC bits with `VALID` clear (its MAC bits 46 and 47
/// move to 48 and 49), so a claim is never mistaken for an entry and names its MAC exactly.
fn claim_value(key: u64) -> u64 {
    CLAIM | (key & TIME_MASK) | ((key & (STATIC | VALID)) << 2)
}

fn entry(port: usize, now: u64, is_static: bool) -> u64 {
    let flags = if is_static { VALID | STATIC } else { VALID };
    ((port as u64) << PORT_SHIFT) | flags | (now & TIME_MASK)
}

fn owner(value: u64) -> usize {
    (value >> PORT_SHIFT) as usize
}

/// A claim: some thread is writing the slot.
fn is_claim(value: u64) -> bool {
    value != 0 && value & VALID == 0
}

/// A learned entry: counted against its port.
fn is_learned(value: u64) -> bool {
    value & (VALID | STATIC) == VALID
}

/// True for broadcast and multicast destinations.
pub fn is_multicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// A switch over `ports` ports. Entries not seen for `aging_secs` are forgotten.
    ///
    /// `policies[p]` is port `p`'s policy (one per port); a port without one gets
    /// [`PortPolicy::default`], policies beyond `ports` are ignored.
    pub fn new(mode: Mode, ports: usize, aging_secs: u64, policies: Vec<PortPolicy>) -> Self {
        let mut policies = policies.into_iter();
        let ports = (0..ports)
            .map(|_| {
                let policy = policies.next().unwrap_or_default();
                PortState {
                    max_learned: policy.max_learned,
                    allowed_sources: policy.allowed_sources.into_boxed_slice(),
                    learned: AtomicU32::new(0),
                    refusals: AtomicU64::new(0),
                }
            })
            .collect();
        let slots: Vec<Slot> = (0..SLOTS).map(|_| Slot::default()).collect();
        let slots = match slots.into_boxed_slice().try_into() {
            Ok(slots) => slots,
            Err(_) => unreachable!("exactly SLOTS slots were made"),
        };
        Switch {
            mode,
            aging_secs,
            ports,
            slots,
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Decides where a frame from `src_port` goes: [`Destination::Spoofed`] if the port may
    /// not send from `src` (then nothing is learned), else learning `src` within the port's
    /// limit and switching on `dst`.
    #[inline]
    pub fn decide(&self, src_port: usize, dst: [u8; 6], src: [u8; 6], now: u64) -> Destination {
        if !self.source_allowed(src_port, src) {
            return Destination::Spoofed;
        }
        match self.mode {
            Mode::Xconnect => {
                let peer = src_port ^ 1;
                if peer < self.ports.len() {
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

    /// Whether `port` may send from `src`: its list is short, a scan beats hashing.
    #[inline]
    fn source_allowed(&self, port: usize, src: [u8; 6]) -> bool {
        // A match, not `is_none_or`: the workspace's rust-version is 1.80.
        match self.ports.get(port) {
            Some(p) => p.allowed_sources.is_empty() || p.allowed_sources.contains(&src),
            None => true,
        }
    }

    fn live(&self, value: u64, now: u64) -> bool {
        value & VALID != 0
            && (value & STATIC != 0 || now.saturating_sub(value & TIME_MASK) < self.aging_secs)
    }

    /// The value of `slot` if its key is `key`, read consistently: a value changes before
    /// the key does (a new key is only written under a claim), so an unchanged value around
    /// the key belongs to it.
    fn read(slot: &Slot, key: u64) -> Option<u64> {
        // Acquire, all three: the first pairs with the release of the entry (its key is then
        // visible); each orders the next load after it.
        let v = slot.value.load(Ordering::Acquire);
        let k = slot.key.load(Ordering::Acquire);
        (k == key && slot.value.load(Ordering::Acquire) == v).then_some(v)
    }

    /// The port `mac` was learned on, if the entry is live.
    pub fn lookup(&self, mac: [u8; 6], now: u64) -> Option<usize> {
        let key = mac_key(mac);
        let start = home(key);
        for i in 0..PROBE {
            let slot = &self.slots[(start + i) & (SLOTS - 1)];
            // Acquire: a key seen here is re-checked by `read`; this load only skips slots.
            let k = slot.key.load(Ordering::Acquire);
            if k == key {
                // A MAC has at most one slot (module docs, point 4).
                return Self::read(slot, key)
                    .filter(|&v| self.live(v, now))
                    .map(owner);
            }
            // Keys are never cleared, so a never-used slot ends every probe sequence.
            if k == 0 {
                return None;
            }
        }
        None
    }

    /// Records that `mac` was seen on `port` at `now` (seconds), within `port`'s limit.
    /// Ports out of range learn nothing.
    pub fn learn(&self, mac: [u8; 6], port: usize, now: u64) {
        if port < self.ports.len() {
            self.insert(mac_key(mac), entry(port, now, false));
        }
    }

    /// Adds a static entry (never ages, never moved by learning, counts against no port;
    /// replaces a learned entry of `mac`). False if `port` is out of range or the table
    /// has no room for `mac`.
    pub fn add_static(&self, mac: [u8; 6], port: usize) -> bool {
        if port >= self.ports.len() {
            return false;
        }
        let (key, value) = (mac_key(mac), entry(port, 0, true));
        for _ in 0..STATIC_TRIES {
            match self.insert(key, value) {
                Outcome::Done => return true,
                // (Static entries are charged to no port: never `Refused`.)
                Outcome::Full | Outcome::Refused => return false,
                // A PMD is writing the slot: let it finish.
                Outcome::Busy => std::thread::yield_now(),
            }
        }
        false
    }

    /// Learned entries `port` holds (live, or aged out and not yet expired). While a learn is
    /// in flight it may be ahead by the learns in flight, never behind.
    pub fn learned(&self, port: usize) -> u32 {
        // Relaxed: a statistic; exactness is about the sequence of updates, not ordering.
        self.ports
            .get(port)
            .map_or(0, |p| p.learned.load(Ordering::Relaxed))
    }

    /// Frames from `port` whose source MAC was not learned (or not moved to it) because the
    /// port was at its `max_learned`: one per frame, not per MAC.
    pub fn learn_refusals(&self, port: usize) -> u64 {
        // Relaxed: a statistic.
        self.ports
            .get(port)
            .map_or(0, |p| p.refusals.load(Ordering::Relaxed))
    }

    /// Takes one of `port`'s learned entries, unless it is at its limit (then counts a
    /// refusal).
    fn reserve(&self, port: usize) -> bool {
        let Some(p) = self.ports.get(port) else {
            return false;
        };
        // Relaxed: the limit holds by the atomicity of the read-modify-write; the order
        // against the slot is given by the slot's own exchanges (module docs, point 3).
        let taken = p
            .learned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < p.max_learned).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            p.refusals.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Gives back one of `port`'s learned entries.
    fn release(&self, port: usize) {
        if let Some(p) = self.ports.get(port) {
            // Relaxed: see `reserve`. Never below 0: every release follows its reservation.
            p.learned.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Makes `value` the entry of `key`: updates its slot, or claims a free one.
    fn insert(&self, key: u64, value: u64) -> Outcome {
        let start = home(key);
        let claim = claim_value(key);
        let mut free = None;
        let mut busy = false;
        for i in 0..PROBE {
            let index = (start + i) & (SLOTS - 1);
            let slot = &self.slots[index];
            // Acquire: pairs with the key's release in `claim` (see `read`).
            let k = slot.key.load(Ordering::Acquire);
            if k == key {
                return self.update(slot, key, value);
            }
            // Acquire: a free slot is only a candidate; `claim` re-checks with its exchange.
            let v = slot.value.load(Ordering::Acquire);
            if v == claim {
                // Another PMD is learning this very MAC: let it.
                return Outcome::Busy;
            }
            busy |= is_claim(v);
            if v == 0 && free.is_none() {
                free = Some(index);
            }
            if k == 0 {
                // Nothing lies beyond a never-used slot, even one being claimed: its claimer
                // either writes its key or puts it back as it was.
                break;
            }
        }
        let Some(index) = free else {
            return if busy { Outcome::Busy } else { Outcome::Full };
        };
        if is_learned(value) && !self.reserve(owner(value)) {
            return Outcome::Refused;
        }
        if self.claim(index, key, claim, value) {
            Outcome::Done
        } else {
            if is_learned(value) {
                self.release(owner(value));
            }
            Outcome::Busy
        }
    }

    /// Writes `value` into free slot `index` for `key`, unless the slot was taken meanwhile
    /// or another thread is inserting `key` too.
    fn claim(&self, index: usize, key: u64, claim: u64, value: u64) -> bool {
        let slot = &self.slots[index];
        // SeqCst: one half of the duplicate check (module docs, point 4). On failure nothing
        // was read that matters: Relaxed.
        if slot
            .value
            .compare_exchange(0, claim, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        if self.claimed_elsewhere(key, claim, index) {
            // Back off. Relaxed: nothing was written under the claim, there is nothing to
            // publish.
            slot.value.store(0, Ordering::Relaxed);
            return false;
        }
        // Release, both: the key (and before it the claim) happens-before any load that sees
        // it, and the key happens-before any load that sees the entry (see `read`).
        slot.key.store(key, Ordering::Release);
        slot.value.store(value, Ordering::Release);
        true
    }

    /// Whether the probe sequence of `key` has, besides slot `index`, a claim or a key for
    /// `key`: a thread inserting the same MAC at the same time, or one that just did.
    fn claimed_elsewhere(&self, key: u64, claim: u64, index: usize) -> bool {
        let start = home(key);
        (0..PROBE)
            .map(|i| (start + i) & (SLOTS - 1))
            .filter(|&j| j != index)
            .any(|j| {
                let slot = &self.slots[j];
                // SeqCst: the other half of the duplicate check. An entry seen here was
                // released after its key, so the key load below sees that key (or a later).
                let v = slot.value.load(Ordering::SeqCst);
                v == claim || slot.key.load(Ordering::Acquire) == key
            })
    }

    /// Makes `value` the entry in `slot`, whose key was seen to be `key`.
    fn update(&self, slot: &Slot, key: u64, value: u64) -> Outcome {
        // Acquire: pairs with the release of the entry (or of 0 by `expire`).
        let mut v = slot.value.load(Ordering::Acquire);
        for _ in 0..UPDATE_TRIES {
            if is_claim(v) {
                // The entry was forgotten and the slot is being reused for another MAC.
                return Outcome::Busy;
            }
            if value & STATIC == 0 {
                if v & STATIC != 0 {
                    // Learning never moves a static entry.
                    return Outcome::Done;
                }
                // Refresh at most once a second: a store per packet would bounce the cache
                // line between PMDs.
                if is_learned(v) && owner(v) == owner(value) && value & TIME_MASK <= v & TIME_MASK {
                    return Outcome::Done;
                }
            } else if v == value {
                return Outcome::Done;
            }
            // About to write: check that `v` still belongs to `key` (see `read`).
            match Self::read(slot, key) {
                None => return Outcome::Busy,
                Some(current) if current != v => {
                    v = current;
                    continue;
                }
                Some(_) => {}
            }
            let same_port = is_learned(v) && is_learned(value) && owner(v) == owner(value);
            let charge = is_learned(value) && !same_port;
            if charge && !self.reserve(owner(value)) {
                // A move to a port at its limit: the entry stays where it was.
                return Outcome::Refused;
            }
            // AcqRel: acquire what the previous writer did (its reservation, its key) so that
            // it happens-before our release of its count; release ours likewise.
            match slot
                .value
                .compare_exchange(v, value, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if is_learned(v) && !same_port {
                        self.release(owner(v));
                    }
                    return Outcome::Done;
                }
                Err(current) => {
                    if charge {
                        self.release(owner(value));
                    }
                    v = current;
                }
            }
        }
        Outcome::Busy
    }

    /// Forgets the entries of `port` (its front-end went away) and expired ones, giving back
    /// their ports' counts. The key stays (value 0 = free) so that later entries of the same
    /// probe sequence stay found.
    pub fn expire(&self, now: u64, port_gone: Option<usize>) {
        for slot in self.slots.iter() {
            // Acquire: pairs with the release of the entry (see `update`).
            let mut v = slot.value.load(Ordering::Acquire);
            // Lock-free, not wait-free: a failed exchange means a PMD refreshed or moved the
            // entry, at most once a second each.
            while v & VALID != 0 {
                let gone = is_learned(v) && port_gone == Some(owner(v));
                if self.live(v, now) && !gone {
                    break;
                }
                // AcqRel: as in `update`.
                match slot
                    .value
                    .compare_exchange(v, 0, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        if is_learned(v) {
                            self.release(owner(v));
                        }
                        break;
                    }
                    Err(current) => v = current,
                }
            }
        }
    }

    /// Live entries.
    pub fn entries(&self, now: u64) -> Vec<FdbEntry> {
        self.slots
            .iter()
            .filter_map(|s| {
                // As in `read`, with whatever key is there.
                let v = s.value.load(Ordering::Acquire);
                let k = s.key.load(Ordering::Acquire);
                let consistent = s.value.load(Ordering::Acquire) == v;
                (consistent && k != 0 && self.live(v, now)).then(|| FdbEntry {
                    mac: key_mac(k),
                    port: owner(v),
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
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];

    /// Default policy on every port.
    fn switch(mode: Mode, ports: usize, aging_secs: u64) -> Switch {
        Switch::new(mode, ports, aging_secs, vec![PortPolicy::default(); ports])
    }

    /// Policies that only limit learning.
    fn limited(limits: &[u32]) -> Vec<PortPolicy> {
        limits
            .iter()
            .map(|&max_learned| PortPolicy {
                max_learned,
                allowed_sources: Vec::new(),
            })
            .collect()
    }

    fn mac(i: u32) -> [u8; 6] {
        let b = i.to_le_bytes();
        [2, 0, b[3], b[2], b[1], b[0]]
    }

    /// Live learned entries per port, as listed by `entries`.
    fn listed(s: &Switch, ports: usize, now: u64) -> Vec<u32> {
        let mut n = vec![0; ports];
        for e in s.entries(now).iter().filter(|e| !e.is_static) {
            n[e.port] += 1;
        }
        n
    }

    #[test]
    fn learns_floods_and_never_hairpins() {
        let s = switch(Mode::Learning, 3, 300);
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
        assert_eq!((s.learned(0), s.learned(1), s.learned(2)), (1, 1, 0));
    }

    #[test]
    fn port_0_learned_at_second_0_is_found() {
        let s = switch(Mode::Learning, 2, 300);
        s.learn(A, 0, 0);
        assert_eq!(s.lookup(A, 0), Some(0));
        assert_eq!(s.decide(1, A, B, 0), Destination::Port(0));
    }

    #[test]
    fn entries_age_and_move() {
        let s = switch(Mode::Learning, 3, 5);
        s.learn(A, 0, 100);
        assert_eq!(s.lookup(A, 104), Some(0));
        assert_eq!(s.lookup(A, 105), None);
        s.learn(A, 2, 106);
        assert_eq!(s.lookup(A, 106), Some(2));
        assert_eq!((s.learned(0), s.learned(2)), (0, 1));
        s.expire(200, None);
        assert!(s.entries(200).is_empty());
        assert_eq!(s.learned(2), 0);
        assert_eq!(s.decide(1, A, B, 200), Destination::Flood);
    }

    #[test]
    fn expiring_an_entry_keeps_later_entries_of_its_probe_sequence() {
        // Regression (found by fuzz/switch_fdb): clearing a dead entry's key cut the probe
        // sequence, hiding live entries stored after it.
        let s = Switch::new(Mode::Learning, 2, 5, limited(&[u32::MAX, u32::MAX]));
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
        assert_eq!(vec![s.learned(0)], listed(&s, 1, 10));
        for (i, m) in macs.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            if s.entries(10).iter().any(|e| e.mac == *m) {
                assert_eq!(s.lookup(*m, 10), Some(0), "live entry {i} lost");
            }
        }
        // Freed slots are reused.
        s.learn([2, 9, 9, 9, 9, 9], 1, 11);
        assert_eq!(s.lookup([2, 9, 9, 9, 9, 9], 11), Some(1));
    }

    #[test]
    fn static_entries_never_age_or_move() {
        let s = switch(Mode::Learning, 3, 5);
        assert!(s.add_static(A, 1));
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
        // Static entries count against no port.
        assert_eq!((s.learned(1), s.learned(2)), (0, 0));
        assert!(!s.add_static(B, 3), "port out of range");
    }

    #[test]
    fn a_thief_cannot_take_a_static_mac() {
        let s = switch(Mode::Learning, 3, 300);
        s.add_static(A, 1);
        // Port 2 sends with the victim's MAC as source: switched (A is not its own), but
        // not learned.
        assert_eq!(s.decide(2, B, A, 10), Destination::Flood);
        assert_eq!(s.decide(2, BCAST, A, 11), Destination::Flood);
        // Unicast to A still goes to the victim, from anywhere.
        assert_eq!(s.decide(0, A, C, 12), Destination::Port(1));
        assert_eq!(s.decide(2, A, B, 12), Destination::Port(1));
        assert_eq!(s.lookup(A, 12), Some(1));
        assert_eq!((s.learned(1), s.learned(2)), (0, 1), "only B, port 2's own");
    }

    #[test]
    fn a_static_entry_replaces_a_learned_one_and_its_count() {
        let s = switch(Mode::Learning, 2, 300);
        s.learn(A, 0, 1);
        assert_eq!(s.learned(0), 1);
        assert!(s.add_static(A, 1));
        assert_eq!(s.lookup(A, 1), Some(1));
        assert_eq!(s.learned(0), 0);
    }

    #[test]
    fn a_port_at_its_limit_learns_nothing_new_and_counts_refusals() {
        let s = Switch::new(Mode::Learning, 2, 300, limited(&[2, 10]));
        assert_eq!(s.decide(0, BCAST, A, 1), Destination::Flood);
        assert_eq!(s.decide(0, BCAST, B, 1), Destination::Flood);
        assert_eq!((s.learned(0), s.learn_refusals(0)), (2, 0));
        // The third MAC is switched but not learned: replies to it flood.
        assert_eq!(s.decide(0, BCAST, C, 1), Destination::Flood);
        assert_eq!(s.lookup(C, 1), None);
        assert_eq!((s.learned(0), s.learn_refusals(0)), (2, 1));
        assert_eq!(s.decide(1, C, [2, 1, 1, 1, 1, 1], 1), Destination::Flood);
        // Refreshing a MAC the port holds is not a new one.
        s.learn(A, 0, 50);
        assert_eq!(
            s.entries(50)
                .iter()
                .find(|e| e.mac == A)
                .map(|e| e.age_secs),
            Some(0)
        );
        assert_eq!((s.learned(0), s.learn_refusals(0)), (2, 1));
        // Other ports are not affected.
        assert_eq!(s.learned(1), 1);
        assert_eq!(s.learn_refusals(1), 0);
    }

    #[test]
    fn a_port_with_no_room_learns_nothing() {
        let s = Switch::new(Mode::Learning, 2, 300, limited(&[0, 10]));
        assert_eq!(s.decide(0, BCAST, A, 1), Destination::Flood);
        assert_eq!(s.decide(1, A, B, 1), Destination::Flood);
        assert_eq!((s.learned(0), s.learn_refusals(0)), (0, 1));
    }

    #[test]
    fn expire_gives_counts_back() {
        let s = Switch::new(Mode::Learning, 1, 5, limited(&[2]));
        s.learn(A, 0, 0);
        s.learn(B, 0, 0);
        // Aged out but not yet expired: still held (the documented bound).
        assert_eq!(s.lookup(A, 10), None);
        s.learn(C, 0, 10);
        assert_eq!((s.learned(0), s.learn_refusals(0)), (2, 1));
        s.expire(10, None);
        assert_eq!(s.learned(0), 0);
        s.learn(C, 0, 10);
        assert_eq!((s.learned(0), s.lookup(C, 10)), (1, Some(0)));
        // A MAC coming back after its entry expired is new again.
        s.learn(A, 0, 11);
        assert_eq!((s.learned(0), s.lookup(A, 11)), (2, Some(0)));
    }

    #[test]
    fn an_aged_entry_refreshed_by_its_port_keeps_its_count() {
        let s = Switch::new(Mode::Learning, 1, 5, limited(&[1]));
        s.learn(A, 0, 0);
        s.learn(A, 0, 100);
        assert_eq!((s.learned(0), s.learn_refusals(0)), (1, 0));
        assert_eq!(s.lookup(A, 100), Some(0));
    }

    #[test]
    fn port_removal_forgets_its_macs_and_counts() {
        let s = switch(Mode::Learning, 2, 300);
        s.learn(A, 0, 1);
        s.learn(C, 0, 1);
        s.learn(B, 1, 1);
        assert_eq!((s.learned(0), s.learned(1)), (2, 1));
        s.expire(2, Some(0));
        assert_eq!(s.lookup(A, 2), None);
        assert_eq!(s.lookup(B, 2), Some(1));
        assert_eq!((s.learned(0), s.learned(1)), (0, 1));
    }

    #[test]
    fn a_move_is_charged_to_the_new_port() {
        let s = Switch::new(Mode::Learning, 3, 300, limited(&[5, 5, 1]));
        s.learn(A, 0, 1);
        s.learn(A, 1, 2);
        assert_eq!(s.lookup(A, 2), Some(1));
        assert_eq!((s.learned(0), s.learned(1)), (0, 1));
        // Port 2 is full (it holds B): A stays on port 1.
        s.learn(B, 2, 2);
        assert_eq!(s.decide(2, BCAST, A, 3), Destination::Flood);
        assert_eq!(s.lookup(A, 3), Some(1));
        assert_eq!((s.learned(1), s.learned(2)), (1, 1));
        assert_eq!(s.learn_refusals(2), 1);
        // An aged entry moves like a live one.
        s.learn(A, 0, 1000);
        assert_eq!((s.learned(0), s.learned(1)), (1, 0));
        assert_eq!(s.lookup(A, 1000), Some(0));
    }

    #[test]
    fn spoofed_sources_are_refused_in_both_modes() {
        for mode in [Mode::Learning, Mode::Xconnect] {
            let policies = vec![
                PortPolicy {
                    max_learned: 8,
                    allowed_sources: vec![A, C],
                },
                PortPolicy::default(),
            ];
            let s = Switch::new(mode, 2, 300, policies);
            assert_eq!(s.decide(0, BCAST, B, 1), Destination::Spoofed, "{mode:?}");
            assert_eq!(s.decide(0, A, B, 1), Destination::Spoofed, "{mode:?}");
            assert_eq!(s.decide(0, B, [3, 0, 0, 0, 0, 1], 1), Destination::Spoofed);
            // Refused before learning.
            assert_eq!(s.lookup(B, 1), None);
            assert_eq!(s.learned(0), 0);
            let want = match mode {
                Mode::Learning => Destination::Flood,
                Mode::Xconnect => Destination::Port(1),
            };
            assert_eq!(s.decide(0, B, A, 1), want);
            assert_eq!(s.decide(0, B, C, 1), want);
            // The other port may send from anything.
            assert_ne!(s.decide(1, A, B, 1), Destination::Spoofed);
        }
    }

    #[test]
    fn missing_policies_are_defaults() {
        let s = Switch::new(Mode::Learning, 2, 300, Vec::new());
        for i in 0..300 {
            s.learn(mac(i), 1, 1);
        }
        assert_eq!(s.learned(1), DEFAULT_MAX_LEARNED);
        assert_eq!(s.learn_refusals(1), 300 - u64::from(DEFAULT_MAX_LEARNED));
        assert_eq!(PortPolicy::default().allowed_sources, Vec::<[u8; 6]>::new());
        // Out-of-range ports learn nothing and have no counts.
        let m = [2, 7, 7, 7, 7, 7];
        s.learn(m, 2, 1);
        assert_eq!(
            (s.lookup(m, 1), s.learned(2), s.learn_refusals(2)),
            (None, 0, 0)
        );
    }

    #[test]
    fn xconnect_pairs_ports_in_order() {
        let s = switch(Mode::Xconnect, 3, 300);
        assert_eq!(s.decide(0, A, B, 0), Destination::Port(1));
        assert_eq!(s.decide(1, A, B, 0), Destination::Port(0));
        assert_eq!(s.decide(2, A, B, 0), Destination::Nowhere);
        assert!(s.entries(0).is_empty());
    }

    #[test]
    fn many_macs_fit_and_overflow_floods() {
        let s = Switch::new(Mode::Learning, 2, 300, limited(&[u32::MAX, u32::MAX]));
        for i in 0..2000u32 {
            let b = i.to_le_bytes();
            s.learn([2, 0, b[0], b[1], b[2], 1], (i % 2) as usize, 1);
        }
        let learned = s.entries(1).len();
        assert!(learned > 1900, "{learned}");
        assert_eq!(vec![s.learned(0), s.learned(1)], listed(&s, 2, 1));
        for i in 0..2000u32 {
            let b = i.to_le_bytes();
            if let Some(p) = s.lookup([2, 0, b[0], b[1], b[2], 1], 1) {
                assert_eq!(p, (i % 2) as usize);
            }
        }
    }

    #[test]
    fn concurrent_learning_keeps_counts_exact() {
        const PORTS: usize = 4;
        const LIMIT: u32 = 40;
        let s = Switch::new(Mode::Learning, PORTS, 3, limited(&[LIMIT; PORTS]));
        let clock = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for port in 0..PORTS {
                let (s, clock, stop) = (&s, &clock, &stop);
                scope.spawn(move || {
                    let mut round = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let now = clock.load(Ordering::Relaxed);
                        // 64 MACs of its own (more than its limit), and 16 every port fights
                        // over (they move), all learned as new at the same time by several.
                        let own = mac(((port as u32) << 8) | (round % 64));
                        let shared = mac(0x1_0000 | (round % 16));
                        s.decide(port, BCAST, own, now);
                        s.decide(port, shared, shared, now);
                        round = round.wrapping_add(1);
                    }
                });
            }
            // The control thread: time passes, entries expire, a port goes now and then.
            for tick in 1..=60 {
                clock.store(tick, Ordering::Relaxed);
                let gone = (tick % 10 == 0).then_some(tick as usize / 10 % PORTS);
                s.expire(tick, gone);
                for p in 0..PORTS {
                    assert!(s.learned(p) <= LIMIT, "port {p}: {}", s.learned(p));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            stop.store(true, Ordering::Relaxed);
        });
        let now = clock.load(Ordering::Relaxed);
        s.expire(now, None);
        let entries = s.entries(now);
        let macs: HashSet<[u8; 6]> = entries.iter().map(|e| e.mac).collect();
        assert_eq!(macs.len(), entries.len(), "a MAC has two entries");
        let counts: Vec<u32> = (0..PORTS).map(|p| s.learned(p)).collect();
        assert_eq!(counts, listed(&s, PORTS, now));
        assert!(counts.iter().all(|&n| n <= LIMIT), "{counts:?}");
        assert!(counts.iter().any(|&n| n > 0), "{counts:?}");
        s.expire(now + 3, None);
        assert_eq!((0..PORTS).map(|p| s.learned(p)).sum::<u32>(), 0);
        assert!(s.entries(now + 3).is_empty());
    }
    #[test]
    fn racing_learners_of_the_same_new_macs_leave_one_entry_each() {
        const PORTS: usize = 3;
        const MACS: u32 = 1500;
        let s = Switch::new(Mode::Learning, PORTS, 300, limited(&[u32::MAX; PORTS]));
        for round in 0..20u64 {
            // Every port learns the same new MACs in the same order, at the same time.
            let now = round * 1000;
            let start = std::sync::Barrier::new(PORTS);
            std::thread::scope(|scope| {
                for port in 0..PORTS {
                    let (s, start) = (&s, &start);
                    scope.spawn(move || {
                        start.wait();
                        for i in 0..MACS {
                            s.learn(mac(i), port, now);
                        }
                    });
                }
            });
            let entries = s.entries(now);
            let macs: HashSet<[u8; 6]> = entries.iter().map(|e| e.mac).collect();
            assert_eq!(
                macs.len(),
                entries.len(),
                "round {round}: a MAC has two entries"
            );
            let counts: Vec<u32> = (0..PORTS).map(|p| s.learned(p)).collect();
            assert_eq!(counts, listed(&s, PORTS, now), "round {round}");
            s.expire(now + 300, None);
            assert_eq!((0..PORTS).map(|p| s.learned(p)).sum::<u32>(), 0);
        }
    }

    #[test]
    fn a_claim_backs_off_when_its_mac_is_claimed_or_present_elsewhere() {
        // The half of the duplicate check that races rarely reach: another thread claimed
        // (or filled) a different slot for the same MAC after this one probed.
        let s = switch(Mode::Learning, 2, 300);
        let key = mac_key(A);
        let (first, second) = (home(key), (home(key) + 1) & (SLOTS - 1));
        let claim = claim_value(key);
        s.slots[first].value.store(claim, Ordering::Relaxed);
        assert!(!s.claim(second, key, claim, entry(0, 1, false)));
        assert_eq!(s.slots[second].value.load(Ordering::Relaxed), 0, "put back");
        assert_eq!(s.slots[second].key.load(Ordering::Relaxed), 0);
        // Learning sees the claim and leaves the MAC to its claimer, charging no one.
        s.learn(A, 0, 1);
        assert_eq!((s.lookup(A, 1), s.learned(0)), (None, 0));
        // The claimer published its entry meanwhile: still no second one.
        s.slots[first].key.store(key, Ordering::Relaxed);
        s.slots[first]
            .value
            .store(entry(1, 1, false), Ordering::Relaxed);
        assert!(!s.claim(second, key, claim, entry(0, 1, false)));
        assert_eq!(s.lookup(A, 1), Some(1));
        // Claims are never entries, whatever the MAC.
        for m in [[0; 6], [0xff; 6], A] {
            assert!(is_claim(claim_value(mac_key(m))));
        }
        assert_ne!(
            claim_value(mac_key([0, 0, 0, 0, 0, 0x40])),
            claim_value(mac_key([0; 6]))
        );
        assert_ne!(
            claim_value(mac_key([0, 0, 0, 0, 0, 0x80])),
            claim_value(mac_key([0; 6]))
        );
    }
}
