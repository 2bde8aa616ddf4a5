//! `vhost-pktgen`: a vhost-user front-end that generates, receives, reflects and measures
//! Ethernet traffic through a vhost-user-net backend (our switch, DPDK's `net_vhost`...).
//!
//! ```no_run
//! use bench::pktgen::{self, Config, Mode, PortSpec};
//! let cfg = Config {
//!     ports: vec![PortSpec::client("a", "/tmp/pg/p0.sock"), PortSpec::client("b", "/tmp/pg/p1.sock")],
//!     mode: Mode::Pair,
//!     duration: std::time::Duration::from_secs(5),
//!     ..Config::default()
//! };
//! let report = pktgen::run(&cfg)?;
//! print!("{}", report.render_table());
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! How it works: every port gets its own guest memory (a memfd, hugetlb pages when
//! possible), a [`ZcNet`](vhost_kit::driver::ZcNet) driver over a receive and a transmit
//! ring (split, or packed with [`Config::packed`] when the backend offers RING_PACKED), and
//! a vhost-user session (`attach`: client or server role, DPDK virtio_user's message
//! order, VERSION_1 + bit 30 + MRG_RXBUF, optionally EVENT_IDX / INDIRECT_DESC /
//! RING_PACKED / IN_ORDER as far as offered; REPLY_ACK, MQ, STATUS when offered). Rings ask for no interrupts; kicks are written only
//! when the backend asks for them. One thread (pinned to `core`) polls every port in turn:
//! RX burst, TX reclaim, TX burst (see [`port`] for the per-packet work: a 64-byte restamp
//! of a prebuilt frame on TX, a 76-byte peek on RX, nothing allocated).
//!
//! Modes ([`Mode`]): `txonly`, `rxonly`, `loopback` (echo in place), `pair` (ports paired
//! 0↔1, 2↔3...: a closed loop in both directions, on one thread), `latency` (pair topology
//! at a low rate, latency percentiles), `rfc2544` (binary search of NDR / PDR). `pair`,
//! `latency` and `rfc2544` on a single port send to themselves (for an external
//! reflector).
//!
//! Accounting: each stream (sending port) numbers its frames per flow; receivers track
//! per-flow sequence numbers ([`seq`]) for loss, reordering and duplicates, check a hash of
//! the stamped header on every frame and the whole payload on a sample ([`Verify`]). After
//! traffic stops, a drain (at most [`Config::drain`]) lets in-flight frames arrive before
//! loss is counted. Rates are per direction; `--rate` limits each direction.

mod attach;
mod clock;
mod engine;
pub mod frame;
pub mod histogram;
pub mod port;
pub mod probe;
pub mod rate;
mod report;
pub mod selftest;
pub mod seq;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use clock::now_ns;
pub use engine::LATENCY_DEFAULT_PPS;
pub use histogram::Percentiles;
pub use report::{DirectionReport, PortReport, Report, Rfc2544Report, Rfc2544Step, SelftestReport};
pub use selftest::selftest;

use engine::{topology, Engine};
use port::{Plan, PortInfo, PortRt};
use vhost_kit::driver::split::Kick;
use vhost_kit::memory::{HugePages, SharedMemory};
use vhost_kit::sequences::bits::{
    F_IN_ORDER, F_RING_PACKED, RING_F_EVENT_IDX, RING_F_INDIRECT_DESC,
};

/// What the generator does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Transmit on every port.
    TxOnly,
    /// Receive (count, verify) on every port.
    RxOnly,
    /// Send every received frame back out of the port it came in on.
    Loopback,
    /// Ports in pairs: each sends to its peer and receives from it (both directions unless
    /// [`Config::bidirectional`] is false).
    #[default]
    Pair,
    /// `Pair` at a low rate (default [`LATENCY_DEFAULT_PPS`]) for latency percentiles.
    Latency,
    /// `Pair` trials of a binary search for the zero-loss (NDR) and partial-drop (PDR)
    /// rates.
    Rfc2544,
}

impl Mode {
    /// Every mode with its name.
    pub const ALL: [(&'static str, Mode); 6] = [
        ("txonly", Mode::TxOnly),
        ("rxonly", Mode::RxOnly),
        ("loopback", Mode::Loopback),
        ("pair", Mode::Pair),
        ("latency", Mode::Latency),
        ("rfc2544", Mode::Rfc2544),
    ];
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!("unknown mode {s:?} (txonly, rxonly, loopback, pair, latency, rfc2544)")
            })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Mode::ALL
            .iter()
            .find(|(_, m)| m == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// Which side of the vhost-user socket the generator takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Connect to the backend's listening socket (retrying until the connect timeout).
    #[default]
    Client,
    /// Listen on the socket and accept one backend in client mode.
    Server,
}

/// One port: a name and a vhost-user socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Name (in reports).
    pub name: String,
    /// Socket path.
    pub socket: PathBuf,
    /// Client or server side.
    pub role: Role,
}

impl PortSpec {
    /// A port connecting to the backend at `socket`.
    pub fn client(name: &str, socket: impl Into<PathBuf>) -> Self {
        PortSpec {
            name: name.into(),
            socket: socket.into(),
            role: Role::Client,
        }
    }

    /// A port listening on `socket` for a client-mode backend.
    pub fn server(name: &str, socket: impl Into<PathBuf>) -> Self {
        PortSpec {
            name: name.into(),
            socket: socket.into(),
            role: Role::Server,
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;
    /// `NAME=PATH` (client role).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok(PortSpec::client(n, p)),
            _ => Err(format!("port {s:?} is not NAME=SOCKET_PATH")),
        }
    }
}

/// Frame sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// Every frame of this size (64..=9000 bytes, FCS excluded).
    Fixed(usize),
    /// 7 × 64 B, 4 × 576 B, 1 × 1500 B, interleaved.
    Imix,
}

impl FromStr for FrameSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(FrameSize::Imix);
        }
        let n: usize = s
            .parse()
            .map_err(|_| format!("frame size {s:?} is neither a number nor imix"))?;
        if !(frame::MIN_FRAME..=frame::MAX_FRAME).contains(&n) {
            return Err(format!(
                "frame size {n} not in {}..={}",
                frame::MIN_FRAME,
                frame::MAX_FRAME
            ));
        }
        Ok(FrameSize::Fixed(n))
    }
}

/// How much of each received frame is checked beyond its stamped header (which is always
/// checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Header check only.
    None,
    /// The whole frame, one in `n` per port.
    Sample(u32),
    /// The whole of every frame (slower).
    All,
}

impl FromStr for Verify {
    type Err = String;
    /// `none`, `all`, `sample` (1 in 128) or `sample:N`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Verify::None),
            "all" => Ok(Verify::All),
            "sample" => Ok(Verify::Sample(128)),
            _ => s
                .strip_prefix("sample:")
                .and_then(|n| n.parse().ok())
                .filter(|&n: &u32| n > 0)
                .map(Verify::Sample)
                .ok_or_else(|| format!("verify {s:?}: none, sample, sample:N or all")),
        }
    }
}

/// Where the live one-line-per-second progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nowhere.
    Off,
    /// Standard output (rewritten in place on a terminal).
    Stdout,
    /// Standard error (rewritten in place on a terminal).
    Stderr,
}

/// RFC 2544 search settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Rfc2544Options {
    /// Length of each trial.
    pub step_duration: Duration,
    /// PDR loss tolerance (fraction; 0.005 = 0.5%).
    pub pdr_loss: f64,
    /// Stop when the search interval is below this fraction of the maximum rate.
    pub resolution: f64,
    /// Most trials per search (NDR, then PDR).
    pub max_steps: u32,
}

impl Default for Rfc2544Options {
    fn default() -> Self {
        Rfc2544Options {
            step_duration: Duration::from_secs(2),
            pdr_loss: 0.005,
            resolution: 0.01,
            max_steps: 10,
        }
    }
}

/// Everything a run needs. `Config::default()` is `pair` mode, 64-byte frames, one flow, 10
/// seconds, no rate limit, bursts of 32, rings of 1024, core 0, progress on stderr.
#[derive(Debug, Clone)]
pub struct Config {
    /// The ports, in order (pairing: 0↔1, 2↔3...).
    pub ports: Vec<PortSpec>,
    /// Mode.
    pub mode: Mode,
    /// Frame size.
    pub size: FrameSize,
    /// Flows per stream (1..=65536): source/destination MAC and IP vary per flow.
    pub flows: u32,
    /// Traffic time (per trial in rfc2544: see [`Rfc2544Options::step_duration`]).
    pub duration: Duration,
    /// Rate limit per direction (pps); `None`: as fast as the rings allow.
    pub rate_pps: Option<f64>,
    /// Most frames per TX burst.
    pub burst: u16,
    /// Ring size (power of two, 64..=32768).
    pub queue_size: u16,
    /// Pin the generator thread to this core.
    pub core: Option<usize>,
    /// Live progress.
    pub progress: Progress,
    /// In pair topologies, traffic both ways (else only from the first port of each pair).
    pub bidirectional: bool,
    /// Payload verification.
    pub verify: Verify,
    /// Longest wait for in-flight frames after traffic stops.
    pub drain: Duration,
    /// How long to wait for the backend (client: retries; server: accept).
    pub connect_timeout: Duration,
    /// Hugetlb guest memory: `Try` falls back to 4 KiB pages with a warning.
    pub hugepages: HugePages,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Negotiate VIRTIO_RING_F_INDIRECT_DESC if offered (never used for sending).
    pub indirect: bool,
    /// Negotiate VIRTIO_F_RING_PACKED if offered: packed rings on the ports whose backend
    /// offers it, split rings (and a warning) on the others.
    pub packed: bool,
    /// Negotiate VIRTIO_F_IN_ORDER if offered (the backend may then return a batch of
    /// buffers with one used entry).
    pub in_order: bool,
    /// Loopback: swap source and destination MAC of echoed frames.
    pub macswap: bool,
    /// RX buffer size with MRG_RXBUF (without it, RX buffers hold the largest frame).
    pub rx_buf_size: u32,
    /// RFC 2544 settings.
    pub rfc2544: Rfc2544Options,
    /// Set to stop the run early (e.g. from a signal handler); checked every round.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ports: Vec::new(),
            mode: Mode::Pair,
            size: FrameSize::Fixed(64),
            flows: 1,
            duration: Duration::from_secs(10),
            rate_pps: None,
            burst: 32,
            queue_size: 1024,
            core: Some(0),
            progress: Progress::Stderr,
            bidirectional: true,
            verify: Verify::Sample(128),
            drain: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            hugepages: HugePages::Try,
            event_idx: false,
            indirect: false,
            packed: false,
            in_order: false,
            macswap: false,
            rx_buf_size: 2048,
            rfc2544: Rfc2544Options::default(),
            stop: None,
        }
    }
}

impl Config {
    /// Checks the settings against each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.ports.is_empty() {
            bail!("no port (--port NAME=SOCKET_PATH)");
        }
        if self.ports.len() > 255 {
            bail!("{} ports: at most 255", self.ports.len());
        }
        for (i, p) in self.ports.iter().enumerate() {
            if self.ports[..i].iter().any(|q| q.name == p.name) {
                bail!("port name {:?} used twice", p.name);
            }
        }
        let n = self.ports.len();
        if matches!(self.mode, Mode::Pair | Mode::Latency | Mode::Rfc2544) && n > 1 && n % 2 == 1 {
            bail!(
                "{} mode pairs ports (0-1, 2-3...): {n} ports given",
                self.mode
            );
        }
        if self.mode == Mode::Pair && n == 1 {
            bail!("pair mode needs two ports (or use latency / rfc2544 against a reflector)");
        }
        if let FrameSize::Fixed(s) = self.size {
            if !(frame::MIN_FRAME..=frame::MAX_FRAME).contains(&s) {
                bail!(
                    "frame size {s} not in {}..={}",
                    frame::MIN_FRAME,
                    frame::MAX_FRAME
                );
            }
        }
        if !(1..=65536).contains(&self.flows) {
            bail!("flows {} not in 1..=65536", self.flows);
        }
        if !self.queue_size.is_power_of_two() || !(64..=32768).contains(&self.queue_size) {
            bail!(
                "queue size {} is not a power of two in 64..=32768",
                self.queue_size
            );
        }
        if self.burst == 0 || self.burst > self.queue_size / 2 {
            bail!("burst {} not in 1..={}", self.burst, self.queue_size / 2);
        }
        if let Some(r) = self.rate_pps {
            if !(r > 0.0 && r.is_finite()) {
                bail!("rate {r} pps is not positive");
            }
        }
        if !(64..=65536).contains(&self.rx_buf_size) {
            bail!("RX buffer size {} not in 64..=65536", self.rx_buf_size);
        }
        let r = &self.rfc2544;
        let fractions =
            (0.0..1.0).contains(&r.pdr_loss) && r.resolution > 0.0 && r.resolution < 1.0;
        if !fractions {
            bail!("rfc2544 pdr loss / resolution must be fractions in (0, 1)");
        }
        Ok(())
    }

    pub(crate) fn extra_features(&self) -> u64 {
        let mut f = 0;
        if self.event_idx {
            f |= RING_F_EVENT_IDX;
        }
        if self.indirect {
            f |= RING_F_INDIRECT_DESC;
        }
        if self.packed {
            f |= F_RING_PACKED;
        }
        if self.in_order {
            f |= F_IN_ORDER;
        }
        f
    }

    /// Warnings for the features asked for that port `name`'s backend did not give.
    fn missing_features(&self, name: &str, negotiated: u64, warnings: &mut Vec<String>) {
        for (asked, bit, what, instead) in [
            (self.packed, F_RING_PACKED, "RING_PACKED", "split rings"),
            (
                self.in_order,
                F_IN_ORDER,
                "IN_ORDER",
                "out-of-order completion",
            ),
        ] {
            if asked && negotiated & bit == 0 {
                let w = format!("port {name}: the backend does not offer {what}; using {instead}");
                tracing::warn!("{w}");
                warnings.push(w);
            }
        }
    }
}

/// Pins the calling thread to `core` (a warning when it cannot).
pub(crate) fn pin(core: Option<usize>, warnings: &mut Vec<String>) {
    let Some(id) = core else { return };
    let known = core_affinity::get_core_ids().unwrap_or_default();
    if !known.iter().any(|c| c.id == id)
        || !core_affinity::set_for_current(core_affinity::CoreId { id })
    {
        let w = format!("could not pin the generator to core {id}; running unpinned");
        tracing::warn!("{w}");
        warnings.push(w);
    }
}

/// Guest memory of `size` bytes per `huge`; guest physical addresses = user addresses (as
/// DPDK's virtio_user does).
pub(crate) fn alloc(
    size: usize,
    huge: HugePages,
    name: &str,
    warnings: &mut Vec<String>,
) -> anyhow::Result<SharedMemory> {
    let mem = match huge {
        HugePages::Never => SharedMemory::new(size, HugePages::Never)?,
        HugePages::Require => SharedMemory::new(size, HugePages::Require)
            .with_context(|| format!("port {name}: {size} bytes of hugetlb memory"))?,
        HugePages::Try => match SharedMemory::new(size, HugePages::Require) {
            Ok(m) => m,
            Err(e) => {
                let w = format!(
                    "port {name}: hugepages unavailable ({e}); using 4 KiB pages (see scripts/setup-hugepages.sh)"
                );
                tracing::warn!("{w}");
                warnings.push(w);
                SharedMemory::new(size, HugePages::Never)?
            }
        },
    };
    let mut mem = mem;
    let ua = mem.user_addr();
    mem.set_guest_phys_addr(ua);
    Ok(mem)
}

/// Runs the generator: connects every port, runs the mode, stops the rings and returns the
/// report. Errors are setup failures (no backend, refused features, no memory); a device
/// error during traffic stops that port and is listed in [`Report::errors`].
///
/// The traffic runs on a thread of its own (pinned to [`Config::core`]); the caller's thread
/// and its CPU affinity are left alone, so `run` can be called from any thread (e.g. a
/// daemon's `demo` command) and blocks until the report is ready.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    cfg.validate()?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("vhost-pktgen".into())
            .spawn_scoped(s, || run_here(cfg))?
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
    })
}

/// [`run`] on the calling thread (which it pins).
fn run_here(cfg: &Config) -> anyhow::Result<Report> {
    let mut warnings = Vec::new();
    pin(cfg.core, &mut warnings);
    let stop = cfg.stop.as_deref();
    let (roles, dirs) = topology(cfg, cfg.ports.len());
    let mut sessions = Vec::with_capacity(cfg.ports.len());
    for spec in &cfg.ports {
        let fe = attach::connect(spec, cfg.connect_timeout, stop)?;
        let s = attach::negotiate(fe, cfg.extra_features(), &spec.name)?;
        cfg.missing_features(&spec.name, s.features, &mut warnings);
        sessions.push(s);
    }
    let plans: Vec<Plan> = sessions
        .iter()
        .zip(&roles)
        .map(|(s, r)| Plan::new(cfg, s.features, r))
        .collect();
    let mems = plans
        .iter()
        .zip(&cfg.ports)
        .map(|(p, spec)| alloc(p.mem_size(), cfg.hugepages, &spec.name, &mut warnings))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ports = Vec::with_capacity(cfg.ports.len());
    for (i, spec) in cfg.ports.iter().enumerate() {
        let s = &mut sessions[i];
        let (mut p, rx, tx) = PortRt::build(
            &mems[i],
            &plans[i],
            cfg,
            i as u8,
            &spec.name,
            roles[i],
            s.features,
            Kick::IfNeeded,
        )
        .with_context(|| format!("port {}: setting up rings and buffers", spec.name))?;
        p.net
            .set_kick_fds(Some(s.kick[0].try_clone()?), Some(s.kick[1].try_clone()?));
        attach::start(s, &mems[i], &rx, &tx, &spec.name)?;
        // Kick the RX buffers posted before the kick fd was known, if the backend wants it.
        p.net.rx_publish();
        p.info = PortInfo {
            socket: spec.socket.display().to_string(),
            role: format!("{:?}", spec.role).to_lowercase(),
            protocol_features: s.protocol,
            hugepages: mems[i].is_hugetlb(),
            memory_bytes: mems[i].size(),
        };
        ports.push(p);
    }
    let mut engine = Engine::new(cfg, ports, dirs);
    let (wall0, cpu0) = (now_ns(), clock::thread_cpu_ns());
    let rfc = engine.run(&mut || {});
    let cpu_pct = 100.0 * (clock::thread_cpu_ns() - cpu0) as f64 / (now_ns() - wall0).max(1) as f64;
    let mut report = engine.report();
    drop(engine);
    report.generator_cpu_pct = cpu_pct;
    if cpu_pct < 90.0 {
        report.warnings.push(format!(
            "the generator thread got {cpu_pct:.0}% of its core: other processes ran there, the figures understate the backend"
        ));
    }
    if let Some(r) = &rfc {
        report.mpps_per_direction = r.ndr_mpps;
    }
    report.rfc2544 = rfc;
    report.warnings.extend(warnings);
    for (s, spec) in sessions.iter_mut().zip(&cfg.ports) {
        if let Err(e) = attach::stop(s) {
            report
                .warnings
                .push(format!("port {}: stopping the rings: {e:#}", spec.name));
        }
    }
    Ok(report)
}
