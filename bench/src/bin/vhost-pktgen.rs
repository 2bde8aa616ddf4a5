//! `vhost-pktgen`: a vhost-user traffic generator (see `bench::pktgen`).
//!
//! ```text
//! vhost-pktgen --port a=/tmp/pg/p0.sock --port b=/tmp/pg/p1.sock --mode pair --size 64 --duration 5
//! vhost-pktgen selftest [--size 64] [--threads 1]
//! vhost-pktgen probe [--cores 0,1] [--json]
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bench::pktgen::{self, Config, FrameSize, Mode, PortSpec, Progress, Report, Role, Verify};
use clap::{Args, Parser, Subcommand};
use vhost_kit::memory::HugePages;

/// A vhost-user traffic generator: a virtio-net front-end (guest side) that sends,
/// receives, reflects and measures frames through a vhost-user-net backend.
#[derive(Parser, Debug)]
#[command(name = "vhost-pktgen", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The generator's own ceiling: pair mode against an in-process null device that
    /// cross-connects two ports (no backend process). Exits 1 on any loss or corruption.
    Selftest(SelftestArgs),
    /// Core-to-core round trip time (a cache line bounced between two pinned threads).
    Probe(ProbeArgs),
}

/// Settings shared by runs and self-tests.
#[derive(Args, Debug)]
struct Common {
    /// Frame size in bytes (64..9000, FCS excluded) or `imix` (7:4:1 of 64/576/1500).
    #[arg(long, default_value = "64")]
    size: FrameSize,
    /// Flows per stream: source/destination MAC and IP vary over this many flows.
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Seconds of traffic (rfc2544: see --step-duration).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rate limit per direction, packets/s (suffixes k, M: `1.5M`). Default: unlimited
    /// (latency mode: 10k).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Frames per TX burst.
    #[arg(long, default_value_t = 32)]
    burst: u16,
    /// Ring size (power of two).
    #[arg(long, default_value_t = 1024)]
    queue_size: u16,
    /// Core to pin the generator thread to (the switch's PMD uses core 1 on 2-core machines).
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// Do not pin the generator thread.
    #[arg(long)]
    no_pin: bool,
    /// Payload verification beyond the per-frame header check: none, sample (1 in 128),
    /// sample:N, all.
    #[arg(long, default_value = "sample")]
    verify: Verify,
    /// Only from the first port of each pair to the second (default: both ways).
    #[arg(long)]
    unidirectional: bool,
    /// Longest wait for in-flight frames after traffic stops, milliseconds.
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// Use packed virtqueues (VIRTIO_F_RING_PACKED) where the backend offers them (split
    /// rings and a warning elsewhere).
    #[arg(long)]
    packed: bool,
    /// Negotiate VIRTIO_F_IN_ORDER if offered.
    #[arg(long)]
    in_order: bool,
    /// Hugetlb guest memory: try (fall back to 4 KiB pages with a warning), never, require.
    #[arg(long, default_value = "try", value_parser = parse_huge)]
    hugepages: HugePages,
    /// Print one JSON document on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A port: NAME=SOCKET_PATH (repeat; pair mode pairs them 1st-2nd, 3rd-4th...).
    #[arg(long = "port", value_name = "NAME=PATH")]
    ports: Vec<PortSpec>,
    /// Listen on the socket paths and accept client-mode backends (default: connect).
    #[arg(long)]
    server: bool,
    /// txonly, rxonly, loopback, pair, latency, rfc2544.
    #[arg(long, default_value = "pair")]
    mode: Mode,
    /// Seconds to wait for the backend (connect retries, or accept in --server mode).
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX if offered.
    #[arg(long)]
    event_idx: bool,
    /// Negotiate VIRTIO_RING_F_INDIRECT_DESC if offered.
    #[arg(long)]
    indirect: bool,
    /// Loopback: swap the MAC addresses of echoed frames.
    #[arg(long)]
    macswap: bool,
    /// RX buffer size with MRG_RXBUF.
    #[arg(long, default_value_t = 2048)]
    rx_buf_size: u32,
    /// RFC 2544: seconds per trial.
    #[arg(long, default_value_t = 2.0)]
    step_duration: f64,
    /// RFC 2544: PDR loss tolerance, percent.
    #[arg(long, default_value_t = 0.5)]
    pdr_loss: f64,
    /// RFC 2544: search resolution, percent of the maximum rate.
    #[arg(long, default_value_t = 1.0)]
    resolution: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct SelftestArgs {
    /// 1: null device on the generator's thread (its time is measured and subtracted);
    /// 2: null device on a thread of its own (pinned to core + 1).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// pair, latency or rfc2544 (others run as pair).
    #[arg(long, default_value = "pair")]
    mode: Mode,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// The two cores, `A,B`.
    #[arg(long, default_value = "0,1")]
    cores: String,
    /// Round trips to time.
    #[arg(long, default_value_t = 200_000)]
    iterations: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("rate {s:?} is not a number"))?;
    if v > 0.0 && v.is_finite() {
        Ok(v * mult)
    } else {
        Err(format!("rate {s:?} must be positive"))
    }
}

fn parse_huge(s: &str) -> Result<HugePages, String> {
    match s {
        "try" => Ok(HugePages::Try),
        "never" => Ok(HugePages::Never),
        "require" => Ok(HugePages::Require),
        _ => Err(format!("hugepages {s:?}: try, never or require")),
    }
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("{what} {s} is not a duration in seconds"))
}

fn config(c: &Common) -> anyhow::Result<Config> {
    Ok(Config {
        size: c.size,
        flows: c.flows,
        duration: seconds(c.duration, "--duration")?,
        rate_pps: c.rate,
        burst: c.burst,
        queue_size: c.queue_size,
        core: (!c.no_pin).then_some(c.core),
        progress: match (c.quiet, c.json) {
            (true, _) => Progress::Off,
            (false, true) => Progress::Stderr,
            (false, false) => Progress::Stdout,
        },
        bidirectional: !c.unidirectional,
        verify: c.verify,
        drain: Duration::from_millis(c.drain_ms),
        hugepages: c.hugepages,
        packed: c.packed,
        in_order: c.in_order,
        stop: Some(stop_flag()),
        ..Config::default()
    })
}

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(f) = STOP.get() {
        if f.swap(true, Ordering::Relaxed) {
            // Second signal: leave now.
            // SAFETY: _exit is async-signal-safe and takes no pointers.
            unsafe { libc::_exit(130) };
        }
    }
}

/// SIGINT / SIGTERM stop the traffic early (the report is still printed).
fn install_signals() {
    stop_flag();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only performs an atomic
        // swap on an already initialized static (and _exit), which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn print_report(r: &Report, json: bool) {
    if json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.render_table());
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = config(&args.common)?;
    cfg.ports = args.ports;
    if args.server {
        cfg.ports.iter_mut().for_each(|p| p.role = Role::Server);
    }
    cfg.mode = args.mode;
    cfg.connect_timeout = seconds(args.connect_timeout, "--connect-timeout")?;
    cfg.event_idx = args.event_idx;
    cfg.indirect = args.indirect;
    cfg.macswap = args.macswap;
    cfg.rx_buf_size = args.rx_buf_size;
    cfg.rfc2544.step_duration = seconds(args.step_duration, "--step-duration")?;
    cfg.rfc2544.pdr_loss = args.pdr_loss / 100.0;
    cfg.rfc2544.resolution = args.resolution / 100.0;
    let report = pktgen::run(&cfg)?;
    print_report(&report, args.common.json);
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn selftest(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = config(&args.common)?;
    cfg.mode = args.mode;
    let report = pktgen::selftest(&cfg, args.threads)?;
    print_report(&report, args.common.json);
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!("vhost-pktgen selftest: loss, corruption or errors (see above)");
        ExitCode::from(1)
    })
}

fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let (a, b) = args
        .cores
        .split_once(',')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--cores {:?} is not A,B", args.cores))?;
    let rtt = pktgen::probe::round_trip_ns(a, b, args.iterations.max(1), Duration::from_secs(10));
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "round_trip_ns": rtt, "cores": [a, b], "iterations": args.iterations })
        );
    } else {
        match rtt {
            Some(ns) => println!("core {a} <-> core {b}: round trip {ns:.0} ns"),
            None => {
                println!("core {a} <-> core {b}: unavailable (pinning failed or a core stalled)")
            }
        }
    }
    Ok(if rtt.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    install_signals();
    let result = match cli.cmd {
        Some(Cmd::Selftest(a)) => selftest(a),
        Some(Cmd::Probe(a)) => probe(a),
        None => run(cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhost-pktgen: {e:#}");
            ExitCode::from(1)
        }
    }
}
