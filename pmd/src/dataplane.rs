//! PMD threads, the per-port snapshot slots, and the quiescent-state handoff.
//!
//! The control plane stores a port's new snapshot in its slot and bumps the global epoch;
//! every PMD checks the epoch once per loop iteration (one Acquire load), reloads changed
//! slots, and acknowledges the epoch. [`Dataplane::quiesce`] waits for every PMD's
//! acknowledgement: after it returns, no PMD holds a pointer from an older snapshot
//! (GET_VRING_BASE may answer; a ring is no longer touched).
//!
//! Snapshots a PMD lets go of are never the last reference: `publish` keeps the replaced
//! snapshot in a retired list that `quiesce` empties on the control thread once no PMD
//! can hold it, so a mapping is always unmapped by the control thread, never by a PMD.
//!
//! Frames the switch sends on its own ([`Dataplane::announce`]) ride on the same epoch: a
//! PMD delivers them at its quiescent point (see [`crate::announce`]).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::announce::{self, Announcement, Targets};
use crate::backoff::{IdleBackoff, FIRST_NAP};
use crate::chain::Segments;
use crate::cpu::{cycles, pin_current_thread, set_timer_slack};
use crate::forward::{self, Context, Scratch};
use crate::net::{mac_string, MacAddr, RarpAnnouncement, BROADCAST};
use crate::snapshot::PortSnapshot;
use crate::stats::{QueueStats, QueueTotals};
use crate::switch::{is_multicast, Destination, FdbEntry, Mode, PortPolicy, Switch};

/// Empty polls after which an idle PMD yields its core once.
const IDLE_POLLS_BEFORE_YIELD: u32 = 256;
/// How long a PMD without any started ring sleeps between checks.
const IDLE_SLEEP: Duration = Duration::from_micros(200);
/// How often `quiesce` warns that a PMD is late (preempted on a loaded machine, say).
const QUIESCE_WARN: Duration = Duration::from_secs(2);
/// Announcements queued at once (the control thread waits for each to go out, so one is
/// the most in practice; the bound keeps a misuse from growing memory).
const ANNOUNCE_QUEUE: usize = 8;
/// How long `quiesce` waits for a PMD by default before the switch gives up on it.
pub const DEFAULT_QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A port as the data plane knows it before any front-end connects.
#[derive(Clone, Debug)]
pub struct PortInfo {
    /// Name, for logs and stats.
    pub name: String,
    /// Queue pairs (rings = 2 x pairs).
    pub queue_pairs: u16,
    /// MAC addresses pinned to this port in the FDB.
    pub static_macs: Vec<[u8; 6]>,
    /// Source MACs the port may send from (port security); empty: any.
    pub allowed_sources: Vec<[u8; 6]>,
    /// MACs the FDB may learn on this port at once.
    pub max_learned: u32,
}

/// Data plane settings.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// The ports, in order.
    pub ports: Vec<PortInfo>,
    /// Learning or cross-connect.
    pub mode: Mode,
    /// One PMD thread per core.
    pub pmd_cores: Vec<usize>,
    /// FDB entry lifetime.
    pub fdb_aging_secs: u64,
    /// Largest frame taken from a guest (bytes after the virtio-net header).
    pub max_frame: u32,
    /// How long `quiesce` waits for a late PMD before reporting it stuck.
    pub quiesce_timeout: Duration,
    /// Longest nap of an idle PMD ([`crate::backoff`]); zero: PMDs never nap.
    pub pmd_sleep_max: Duration,
}

/// The data plane could not start or did not answer.
#[derive(Debug, Error)]
pub enum DataplaneError {
    /// A core could not be pinned.
    #[error("cannot pin a PMD thread to core {0}: the core is not available to this process")]
    Pin(usize),
    /// A thread could not be spawned.
    #[error("cannot start the PMD thread for core {0}: {1}")]
    Spawn(usize, std::io::Error),
    /// A PMD did not pass a quiescent point in time.
    #[error("PMD on core {0} did not reach a quiescent point within {1:?}")]
    Stuck(usize, Duration),
    /// A PMD thread is gone (it panicked).
    #[error("PMD on core {0} has died")]
    Dead(usize),
}

/// An announcement the data plane will not send.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AnnounceError {
    /// A multicast or all-zero MAC cannot be a frame's source.
    #[error("{} cannot be a source MAC (multicast or zero)", mac_string(*.0))]
    InvalidMac(MacAddr),
    /// The port may not send from this MAC (`allowed_macs`).
    #[error("{} is not among the port's allowed source MACs", mac_string(*.0))]
    NotAllowed(MacAddr),
    /// No such port.
    #[error("no port {0}")]
    NoPort(usize),
    /// Too many announcements wait for a PMD.
    #[error("{ANNOUNCE_QUEUE} announcements already wait for a PMD")]
    QueueFull,
}

#[derive(Debug)]
struct PortSlot {
    snapshot: Mutex<Option<Arc<PortSnapshot>>>,
    generation: AtomicU64,
}

/// One PMD's shared state.
#[derive(Debug)]
struct Pmd {
    core: usize,
    /// (port, ring) pairs this PMD polls: guest TX rings, assigned round-robin.
    assigned: Vec<(usize, usize)>,
    seen_epoch: AtomicU64,
    stats: Vec<Vec<QueueStats>>,
    busy_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    /// Longest time between the starts of two loop iterations (a long one means the
    /// thread was preempted, or one burst took that long).
    max_gap_cycles: AtomicU64,
    /// Loop iterations so far (diagnostics: a late PMD that still iterates is a bug).
    iterations: AtomicU64,
    /// Naps taken by the idle back-off, and their total length in nanoseconds.
    naps: AtomicU64,
    napped_ns: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    ports: Vec<PortInfo>,
    slots: Vec<PortSlot>,
    epoch: AtomicU64,
    pmds: Vec<Pmd>,
    switch: Switch,
    stop: AtomicBool,
    started: Instant,
    max_frame: u32,
    quiesce_timeout: Duration,
    pmd_sleep_max: Duration,
    /// Snapshots replaced by `publish`, dropped by `quiesce` on the control thread.
    retired: Mutex<Vec<Arc<PortSnapshot>>>,
    /// Frames for the next PMD at a quiescent point (capacity [`ANNOUNCE_QUEUE`], allocated
    /// at start: neither side allocates or frees while queueing).
    announcements: Mutex<Vec<Announcement>>,
}

impl Shared {
    fn now_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// Per-PMD totals, for output.
#[derive(Clone, Debug)]
pub struct PmdTotals {
    /// The core it is pinned to.
    pub core: usize,
    /// Its (port name, ring index) assignments.
    pub assigned: Vec<(String, usize)>,
    /// Cycles spent in iterations that moved packets.
    pub busy_cycles: u64,
    /// Cycles spent in iterations that found nothing.
    pub idle_cycles: u64,
    /// Longest gap between two loop iterations, in cycles.
    pub max_gap_cycles: u64,
    /// Naps taken while idle ([`crate::backoff`]).
    pub naps: u64,
    /// Their total length, in nanoseconds.
    pub napped_ns: u64,
}

/// Totals of one port, for output.
#[derive(Clone, Debug)]
pub struct PortTotals {
    /// Port name.
    pub name: String,
    /// Per ring index, summed over PMDs.
    pub rings: Vec<QueueTotals>,
}

/// The running data plane.
#[derive(Debug)]
pub struct Dataplane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Starts one pinned PMD thread per core and assigns every guest TX ring round-robin.
    pub fn start(cfg: DataplaneConfig) -> Result<Dataplane, DataplaneError> {
        let n = cfg.pmd_cores.len().max(1);
        let mut assigned = vec![Vec::new(); n];
        let mut next = 0;
        for (p, port) in cfg.ports.iter().enumerate() {
            for q in 0..usize::from(port.queue_pairs) {
                assigned[next % n].push((p, 2 * q + 1));
                next += 1;
            }
        }
        let stats_shape = || -> Vec<Vec<QueueStats>> {
            cfg.ports
                .iter()
                .map(|p| {
                    (0..2 * usize::from(p.queue_pairs))
                        .map(|_| QueueStats::default())
                        .collect()
                })
                .collect()
        };
        let pmds = cfg
            .pmd_cores
            .iter()
            .zip(assigned)
            .map(|(&core, assigned)| Pmd {
                core,
                assigned,
                seen_epoch: AtomicU64::new(0),
                stats: stats_shape(),
                busy_cycles: AtomicU64::new(0),
                idle_cycles: AtomicU64::new(0),
                max_gap_cycles: AtomicU64::new(0),
                iterations: AtomicU64::new(0),
                naps: AtomicU64::new(0),
                napped_ns: AtomicU64::new(0),
            })
            .collect();
        let policies = cfg
            .ports
            .iter()
            .map(|p| PortPolicy {
                max_learned: p.max_learned,
                allowed_sources: p.allowed_sources.clone(),
            })
            .collect();
        let switch = Switch::new(cfg.mode, cfg.ports.len(), cfg.fdb_aging_secs, policies);
        for (p, port) in cfg.ports.iter().enumerate() {
            for mac in &port.static_macs {
                if !switch.add_static(*mac, p) {
                    tracing::warn!(port = %port.name, ?mac, "no room in the FDB for a static MAC");
                }
            }
        }
        let shared = Arc::new(Shared {
            slots: cfg
                .ports
                .iter()
                .map(|_| PortSlot {
                    snapshot: Mutex::new(None),
                    generation: AtomicU64::new(0),
                })
                .collect(),
            ports: cfg.ports,
            epoch: AtomicU64::new(0),
            pmds,
            switch,
            stop: AtomicBool::new(false),
            started: Instant::now(),
            max_frame: cfg.max_frame,
            quiesce_timeout: cfg.quiesce_timeout,
            pmd_sleep_max: cfg.pmd_sleep_max,
            retired: Mutex::new(Vec::new()),
            announcements: Mutex::new(Vec::with_capacity(ANNOUNCE_QUEUE)),
        });
        let mut dp = Dataplane {
            shared,
            threads: Vec::new(),
        };
        for i in 0..dp.shared.pmds.len() {
            let core = dp.shared.pmds[i].core;
            let shared = dp.shared.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let handle = std::thread::Builder::new()
                .name(format!("pmd-{core}"))
                .spawn(move || {
                    let pinned = pin_current_thread(core);
                    let _ = tx.send(pinned);
                    if pinned {
                        pmd_loop(&shared, i);
                    }
                })
                .map_err(|e| DataplaneError::Spawn(core, e))?;
            dp.threads.push(handle);
            if !rx.recv().unwrap_or(false) {
                return Err(DataplaneError::Pin(core));
            }
            let names: Vec<String> = dp.shared.pmds[i]
                .assigned
                .iter()
                .map(|&(p, r)| format!("{}/ring{r}", dp.shared.ports[p].name))
                .collect();
            tracing::info!(core, queues = ?names, "PMD started");
        }
        Ok(dp)
    }

    /// Replaces port `port`'s snapshot (`None`: no front-end) and bumps the epoch. The
    /// replaced snapshot is retired: released by the next successful `quiesce`.
    pub fn publish(&self, port: usize, snapshot: Option<Arc<PortSnapshot>>) {
        let slot = &self.shared.slots[port];
        let old = std::mem::replace(
            &mut *slot.snapshot.lock().unwrap_or_else(|e| e.into_inner()),
            snapshot,
        );
        if let Some(old) = old {
            self.shared
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
        }
        slot.generation.fetch_add(1, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits until every PMD has passed a quiescent point after the last `publish`.
    ///
    /// Correctness depends on it (after GET_VRING_BASE no PMD may touch the ring), so a late
    /// PMD is waited for, with a warning every 2 s; only a dead PMD thread or the quiesce
    /// timeout end the wait with an error, which the caller must treat as fatal. On
    /// success the retired snapshots are released here, on the calling thread.
    pub fn quiesce(&self) -> Result<(), DataplaneError> {
        let target = self.shared.epoch.load(Ordering::Acquire);
        let start = Instant::now();
        let mut next_warning = start + QUIESCE_WARN;
        for (i, pmd) in self.shared.pmds.iter().enumerate() {
            while pmd.seen_epoch.load(Ordering::Acquire) < target {
                let now = Instant::now();
                if self.threads.get(i).is_some_and(|t| t.is_finished()) {
                    return Err(DataplaneError::Dead(pmd.core));
                }
                if now > start + self.shared.quiesce_timeout {
                    return Err(DataplaneError::Stuck(pmd.core, self.shared.quiesce_timeout));
                }
                if now > next_warning {
                    tracing::warn!(
                        core = pmd.core,
                        waited_ms = (now - start).as_millis() as u64,
                        acknowledged = pmd.seen_epoch.load(Ordering::Acquire),
                        target,
                        iterations = pmd.iterations.load(Ordering::Relaxed),
                        "PMD late to a quiescent point (CPU starved?); still waiting"
                    );
                    next_warning = now + QUIESCE_WARN;
                }
                std::thread::yield_now();
            }
        }
        let retired = std::mem::take(
            &mut *self
                .shared
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        drop(retired);
        Ok(())
    }

    /// Announces `mac` from `port`, as SEND_RARP asks: the switch treats it as a broadcast
    /// the port sent from `mac` (port security checked first, then `mac` learned on the
    /// port within its limit, moving it from another port, as a migrated guest's first
    /// frame would) and queues a RARP announcement ([`RarpAnnouncement`]) for the ports
    /// that broadcast reaches. A PMD sends it at its next quiescent point: call
    /// [`Dataplane::quiesce`] to wait until it went out. Returns the number of ports it
    /// goes to.
    pub fn announce(&self, port: usize, mac: MacAddr) -> Result<usize, AnnounceError> {
        let ports = self.shared.ports.len();
        if port >= ports {
            return Err(AnnounceError::NoPort(port));
        }
        if is_multicast(mac) || mac == [0; 6] {
            return Err(AnnounceError::InvalidMac(mac));
        }
        let now = self.shared.now_secs();
        let (targets, count) = match self.shared.switch.decide(port, BROADCAST, mac, now) {
            Destination::Spoofed => return Err(AnnounceError::NotAllowed(mac)),
            Destination::Nowhere => return Ok(0),
            Destination::Flood => (Targets::AllBut(port), ports - 1),
            Destination::Port(p) => (Targets::Port(p), 1),
        };
        if count == 0 {
            return Ok(0);
        }
        {
            let mut queue = self
                .shared
                .announcements
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if queue.len() == queue.capacity() {
                return Err(AnnounceError::QueueFull);
            }
            queue.push(Announcement {
                targets,
                frame: RarpAnnouncement { mac }.emit(),
            });
        }
        // Wakes every PMD up to a quiescent point, where one of them takes the frame.
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(count)
    }

    /// Forgets FDB entries learned on `port` (its front-end left) and expired ones.
    pub fn forget_port(&self, port: usize) {
        self.shared
            .switch
            .expire(self.shared.now_secs(), Some(port));
    }

    /// Drops expired FDB entries.
    pub fn expire_fdb(&self) {
        self.shared.switch.expire(self.shared.now_secs(), None);
    }

    /// MACs learned on `port` now, and frames whose source MAC was not learned because
    /// the port was at its limit.
    pub fn fdb_port_counts(&self, port: usize) -> (u32, u64) {
        (
            self.shared.switch.learned(port),
            self.shared.switch.learn_refusals(port),
        )
    }

    /// Live FDB entries with port names.
    pub fn fdb(&self) -> Vec<(FdbEntry, String)> {
        self.shared
            .switch
            .entries(self.shared.now_secs())
            .into_iter()
            .map(|e| {
                let name = self
                    .shared
                    .ports
                    .get(e.port)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                (e, name)
            })
            .collect()
    }

    /// Counters of every port, summed over PMDs.
    pub fn port_totals(&self) -> Vec<PortTotals> {
        self.shared
            .ports
            .iter()
            .enumerate()
            .map(|(p, info)| {
                let mut rings = vec![QueueTotals::default(); 2 * usize::from(info.queue_pairs)];
                for pmd in &self.shared.pmds {
                    for (t, q) in rings.iter_mut().zip(&pmd.stats[p]) {
                        t.add(q);
                    }
                }
                PortTotals {
                    name: info.name.clone(),
                    rings,
                }
            })
            .collect()
    }

    /// Per-PMD assignment and cycle counters.
    pub fn pmd_totals(&self) -> Vec<PmdTotals> {
        self.shared
            .pmds
            .iter()
            .map(|pmd| PmdTotals {
                core: pmd.core,
                assigned: pmd
                    .assigned
                    .iter()
                    .map(|&(p, r)| (self.shared.ports[p].name.clone(), r))
                    .collect(),
                busy_cycles: pmd.busy_cycles.load(Ordering::Relaxed),
                idle_cycles: pmd.idle_cycles.load(Ordering::Relaxed),
                max_gap_cycles: pmd.max_gap_cycles.load(Ordering::Relaxed),
                naps: pmd.naps.load(Ordering::Relaxed),
                napped_ns: pmd.napped_ns.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Switching mode.
    pub fn mode(&self) -> Mode {
        self.shared.switch.mode()
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn pmd_loop(shared: &Shared, me: usize) {
    let pmd = &shared.pmds[me];
    let mut ports: Vec<Option<Arc<PortSnapshot>>> = vec![None; shared.slots.len()];
    let mut generations = vec![0u64; shared.slots.len()];
    let mut seen = u64::MAX;
    let mut scratch = Scratch::default();
    let mut announce_segs = Segments::with_capacity(announce::SEGMENTS);
    let (mut busy, mut idle) = (0u64, 0u64);
    let mut iterations = 0u32;
    let mut now = shared.now_secs();
    let mut last_start = cycles();
    let mut max_gap = 0u64;
    let mut idle_streak = 0u32;
    let mut backoff = IdleBackoff::new(shared.pmd_sleep_max);
    if backoff.enabled() && !set_timer_slack(FIRST_NAP) {
        tracing::warn!(
            core = pmd.core,
            "timer slack not set: naps may last 50 µs or more"
        );
    }
    let (mut naps, mut napped_ns) = (0u64, 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        let epoch = shared.epoch.load(Ordering::Acquire);
        if epoch != seen {
            for (i, slot) in shared.slots.iter().enumerate() {
                let g = slot.generation.load(Ordering::Acquire);
                if g != generations[i] {
                    // Clone under the slot's lock, let go of the old one after it: the
                    // control thread's retired list still holds the old snapshot, so this
                    // drop never unmaps anything.
                    let fresh = slot
                        .snapshot
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    ports[i] = fresh;
                    generations[i] = g;
                }
            }
            // Frames queued before this epoch go out before it is acknowledged, so the
            // control thread's quiesce waits for them. Popped one at a time: the queue's
            // lock is never held while a ring is.
            loop {
                let next = shared
                    .announcements
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop();
                let Some(a) = next else { break };
                announce::deliver(&mut announce_segs, &a, &ports, &pmd.stats);
            }
            seen = epoch;
            pmd.seen_epoch.store(epoch, Ordering::Release);
        }
        let start = cycles();
        let gap = start.wrapping_sub(last_start);
        last_start = start;
        if gap > max_gap {
            max_gap = gap;
            pmd.max_gap_cycles.store(gap, Ordering::Relaxed);
        }
        let mut active = false;
        let mut work = 0;
        {
            let ctx = Context {
                ports: &ports,
                switch: &shared.switch,
                stats: &pmd.stats,
                now,
                max_frame: shared.max_frame,
            };
            for &(p, r) in &pmd.assigned {
                if let Some(Some(tx)) = ports[p].as_ref().and_then(|s| s.rings.get(r)) {
                    active = true;
                    work += forward::poll_tx(&mut scratch, &ctx, p, tx);
                }
            }
        }
        let spent = cycles().wrapping_sub(start);
        if work > 0 {
            busy += spent;
            idle_streak = 0;
        } else {
            idle += spent;
            idle_streak += 1;
        }
        if let Some(nap) = backoff.after_poll(work) {
            let asleep = Instant::now();
            std::thread::sleep(nap);
            naps += 1;
            napped_ns += u64::try_from(asleep.elapsed().as_nanos()).unwrap_or(u64::MAX);
            pmd.naps.store(naps, Ordering::Relaxed);
            pmd.napped_ns.store(napped_ns, Ordering::Relaxed);
        } else if work == 0 && idle_streak.is_multiple_of(IDLE_POLLS_BEFORE_YIELD) {
            // Polling without naps; but when nothing came for a while, let another thread
            // that shares this core run (two pollers pinned to one core otherwise starve
            // each other for seconds). Alone on its core, yield returns at once.
            std::thread::yield_now();
        }
        iterations = iterations.wrapping_add(1);
        pmd.iterations
            .store(u64::from(iterations), Ordering::Relaxed);
        if iterations.is_multiple_of(1024) || !active {
            pmd.busy_cycles.store(busy, Ordering::Relaxed);
            pmd.idle_cycles.store(idle, Ordering::Relaxed);
            now = shared.now_secs();
        }
        if !active {
            // Nothing to poll: no front-end has a started TX ring on this PMD.
            std::thread::sleep(IDLE_SLEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_port_dataplane() -> Dataplane {
        Dataplane::start(DataplaneConfig {
            ports: vec![PortInfo {
                name: "p0".into(),
                queue_pairs: 1,
                static_macs: Vec::new(),
                allowed_sources: Vec::new(),
                max_learned: 16,
            }],
            mode: Mode::Learning,
            pmd_cores: vec![0],
            fdb_aging_secs: 300,
            max_frame: crate::forward::DEFAULT_MAX_FRAME,
            quiesce_timeout: DEFAULT_QUIESCE_TIMEOUT,
            pmd_sleep_max: Duration::ZERO,
        })
        .unwrap()
    }

    fn snapshot() -> Arc<PortSnapshot> {
        Arc::new(PortSnapshot {
            features: 0,
            rings: vec![None, None],
            mtu: None,
        })
    }

    #[test]
    fn announcements_are_checked_and_a_lone_port_has_nobody_to_tell() {
        let dp = one_port_dataplane();
        let mac = [2, 0, 0, 0, 0, 5];
        assert_eq!(dp.announce(1, mac), Err(AnnounceError::NoPort(1)));
        assert_eq!(
            dp.announce(0, [3, 0, 0, 0, 0, 5]),
            Err(AnnounceError::InvalidMac([3, 0, 0, 0, 0, 5]))
        );
        assert_eq!(
            dp.announce(0, [0; 6]),
            Err(AnnounceError::InvalidMac([0; 6]))
        );
        // Learned all the same: the port is where the MAC is.
        assert_eq!(dp.announce(0, mac), Ok(0));
        assert_eq!(
            dp.fdb().first().map(|(e, _)| (e.mac, e.port)),
            Some((mac, 0))
        );
        dp.quiesce().unwrap();
    }

    #[test]
    fn a_replaced_snapshot_lives_until_quiesce_releases_it() {
        let dp = one_port_dataplane();
        let first = snapshot();
        let watch = Arc::downgrade(&first);
        dp.publish(0, Some(first));
        dp.quiesce().unwrap();
        dp.publish(0, Some(snapshot()));
        // Whatever the PMD has done meanwhile, the retired list still holds it ...
        std::thread::sleep(Duration::from_millis(20));
        assert!(watch.upgrade().is_some());
        // ... until quiesce, which drops it here, after every PMD let go.
        dp.quiesce().unwrap();
        assert!(watch.upgrade().is_none());
        dp.publish(0, None);
        dp.quiesce().unwrap();
    }
}
