//! `vhost-switch`: the daemon's command line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vmm_sys_util::eventfd::EventFd;

use std::sync::Arc;
use std::time::Duration;

use pmd::dataplane::{Dataplane, DataplaneConfig, PortInfo};
use vhost_switch::config::{self, Config, Mode, Overrides, Role};
use vhost_switch::control::ControlLoop;
use vhost_switch::port::Port;
use vhost_switch::vhost_user::device::Limits;

#[derive(Parser)]
#[command(
    name = "vhost-switch",
    version,
    about = "A poll-mode vhost-user-net backend and software switch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the switch.
    Run(Box<RunArgs>),
    /// Ask a running switch for its counters, ports or FDB.
    Ctl(CtlArgs),
    /// Run the switch with two ports and the built-in traffic generator as their guests,
    /// print throughput and the switch's counters.
    #[cfg_attr(
        not(feature = "demo"),
        command(
            about = "Not in this build (no traffic generator): rebuild with the default `demo` feature"
        )
    )]
    Demo(DemoCli),
}

#[derive(clap::Args)]
// Without the `demo` feature the options are parsed, then refused.
#[cfg_attr(not(feature = "demo"), allow(dead_code))]
struct DemoCli {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Frame size in bytes (64..=9000).
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Switching mode.
    #[arg(long, value_enum, default_value = "xconnect")]
    mode: Mode,
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The switch's control socket.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
    /// What to show.
    #[arg(value_enum)]
    command: vhost_switch::ctl::Command,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A server-mode port: the switch creates SOCKET_PATH and accepts a front-end.
    #[arg(long = "port", value_name = "NAME=SOCKET_PATH", value_parser = config::parse_port_arg)]
    ports: Vec<(String, PathBuf)>,
    /// A client-mode port: the switch connects to a front-end listening on SOCKET_PATH.
    #[arg(long = "client", value_name = "NAME=SOCKET_PATH", value_parser = config::parse_port_arg)]
    clients: Vec<(String, PathBuf)>,
    /// A vfio-user port: the switch creates SOCKET_PATH and serves a virtio-net PCI device
    /// to a VMM (QEMU `-device vfio-user-pci`).
    #[arg(long = "vfio-user-port", value_name = "NAME=SOCKET_PATH", value_parser = config::parse_port_arg)]
    vfio_user_ports: Vec<(String, PathBuf)>,
    /// Switching mode.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Cores for poll-mode threads, e.g. `1` or `2-5,7`.
    #[arg(long, value_name = "LIST")]
    pmd_cores: Option<String>,
    /// Core for the control thread.
    #[arg(long, value_name = "N")]
    control_core: Option<usize>,
    /// Memory regions a front-end may map per port (GET_MAX_MEM_SLOTS).
    #[arg(long, value_name = "N")]
    max_mem_slots: Option<u32>,
    /// Guest memory (MiB) one front-end may have mapped at once.
    #[arg(long, value_name = "MIB")]
    max_guest_memory_mb: Option<u64>,
    /// Seconds a learned MAC stays in the FDB without being seen.
    #[arg(long = "fdb-aging", value_name = "SECS")]
    fdb_aging_secs: Option<u64>,
    /// Largest frame (bytes after the virtio-net header) taken from a guest.
    #[arg(long, value_name = "BYTES")]
    max_frame_len: Option<u32>,
    /// MACs the FDB may learn on one port at once.
    #[arg(long, value_name = "N")]
    max_learned_macs: Option<u32>,
    /// MTU of every port (68..=65535) unless its `[[port]]` sets `mtu`: offered to the
    /// guest (VIRTIO_NET_F_MTU) and enforced on frames delivered to it.
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u32>,
    /// Longest nap of an idle PMD in microseconds (0, the default: never nap, pure
    /// polling; at most 10000). Naps grow from 1 µs while nothing arrives.
    #[arg(long, value_name = "US")]
    pmd_sleep_max_us: Option<u64>,
    /// Offer no checksum or TSO offload to any port's guest unless its `[[port]]` sets
    /// `offloads = true` (offloads are offered by default).
    #[arg(long)]
    no_offloads: bool,
    /// Control socket for `vhost-switch ctl` (default /run/vhost-switch/control.sock).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// TOML file with the same settings; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Ctl(args) => ctl(args),
        Command::Demo(args) => demo(args),
    };
    if let Err(e) = result {
        eprintln!("vhost-switch: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(feature = "demo")]
fn demo(args: DemoCli) -> Result<()> {
    vhost_switch::demo::run(vhost_switch::demo::DemoArgs {
        seconds: args.seconds,
        size: args.size,
        mode: match args.mode {
            Mode::Learning => "learning",
            Mode::Xconnect => "xconnect",
        },
    })
}

/// A build without the `demo` feature keeps the subcommand (and its options, so that the
/// README's command line parses) but has no generator to run it with.
#[cfg(not(feature = "demo"))]
fn demo(_: DemoCli) -> Result<()> {
    anyhow::bail!("this build has no traffic generator: rebuild with the default `demo` feature")
}

fn ctl(args: CtlArgs) -> Result<()> {
    let path = vhost_switch::ctl::socket_path(args.control_socket);
    let answer = vhost_switch::ctl::query(&path, args.command)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", vhost_switch::ctl::render(args.command, &answer));
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(args: RunArgs) -> Result<()> {
    init_logging();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pmd_cores = args
        .pmd_cores
        .as_deref()
        .map(config::parse_core_list)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--pmd-cores: {e}"))?;
    let flags = Overrides {
        server_ports: args.ports,
        client_ports: args.clients,
        vfio_user_ports: args.vfio_user_ports,
        mode: args.mode,
        pmd_cores,
        control_core: args.control_core,
        max_mem_slots: args.max_mem_slots,
        fdb_aging_secs: args.fdb_aging_secs,
        max_guest_memory_mb: args.max_guest_memory_mb,
        max_frame_len: args.max_frame_len,
        max_learned_macs: args.max_learned_macs,
        mtu: args.mtu,
        pmd_sleep_max_us: args.pmd_sleep_max_us,
        offloads: args.no_offloads.then_some(false),
    };
    let config = Config::load(args.config.as_deref(), flags, cpus)?;
    for p in &config.ports {
        // Kick, call and error eventfds for every ring of every queue pair.
        let ring_fds = 6 * usize::from(p.queue_pairs);
        if config.max_fds_per_connection < ring_fds {
            tracing::warn!(
                port = %p.name,
                max_fds_per_connection = config.max_fds_per_connection,
                ring_fds,
                "a front-end that sets kick, call and err for every ring will be refused"
            );
        }
    }
    let shutdown = EventFd::new(libc::EFD_NONBLOCK).context("eventfd")?;
    watch_signals(shutdown.try_clone().context("eventfd")?)?;
    // PMD threads first: a thread inherits its creator's CPU mask, and the control thread
    // is about to restrict its own to the control core.
    let dataplane = Arc::new(Dataplane::start(DataplaneConfig {
        ports: config
            .ports
            .iter()
            .map(|p| PortInfo {
                name: p.name.clone(),
                queue_pairs: p.queue_pairs,
                static_macs: p.static_macs.clone(),
                allowed_sources: p.allowed_macs.clone(),
                max_learned: p.max_learned_macs,
            })
            .collect(),
        mode: match config.mode {
            Mode::Learning => pmd::switch::Mode::Learning,
            Mode::Xconnect => pmd::switch::Mode::Xconnect,
        },
        pmd_cores: config.pmd_cores.clone(),
        fdb_aging_secs: config.fdb_aging_secs,
        max_frame: config.max_frame_len,
        quiesce_timeout: Duration::from_secs(config.quiesce_timeout_secs),
        pmd_sleep_max: Duration::from_micros(config.pmd_sleep_max_us),
    })?);
    pin_control_thread(config.control_core)?;

    let mut ports = Vec::new();
    for (index, port_config) in config.ports.iter().enumerate() {
        // On error, ports opened so far are dropped; remove their sockets too.
        match Port::open(
            port_config.clone(),
            Limits {
                max_mem_slots: config.max_mem_slots,
                max_memory: config.max_guest_memory_mb << 20,
                max_fds_per_message: config.max_fds_per_message,
                max_fds_per_connection: config.max_fds_per_connection,
                require_sealed_memory: config.require_sealed_memory,
            },
            Some((dataplane.clone(), index)),
        ) {
            Ok(port) => ports.push(port),
            Err(e) => {
                ports.iter().for_each(Port::remove_socket);
                return Err(e.into());
            }
        }
    }
    {
        let mut out = std::io::stdout().lock();
        for p in &ports {
            let how = match p.config.role {
                Role::Server => "listening on",
                Role::Client => "connecting to",
            };
            writeln!(
                out,
                "port {}: {how} {}",
                p.config.name,
                p.config.socket.display()
            )?;
        }
        out.flush()?;
    }
    tracing::info!(mode = ?config.mode, pmd_cores = ?config.pmd_cores, "switch running");
    let control_path = vhost_switch::ctl::socket_path(args.control_socket);
    let control_listener = match vhost_switch::ctl::listen(&control_path) {
        Ok(l) => l,
        Err(e) => {
            ports.iter().for_each(Port::remove_socket);
            return Err(anyhow::anyhow!(
                "control socket {}: {e}",
                control_path.display()
            ));
        }
    };
    let mut control = ControlLoop::new(ports, shutdown, dataplane.clone(), Some(control_listener))
        .context("control loop")?;
    control.run().context("control loop")?;
    for port in control.ports() {
        port.remove_socket();
    }
    let _ = std::fs::remove_file(&control_path);
    print_counters(control.ports(), &dataplane);
    Ok(())
}

/// Blocks SIGINT/SIGTERM in every thread and turns them into a write to `shutdown`.
fn watch_signals(shutdown: EventFd) -> Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the mask calls only read it.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    anyhow::ensure!(rc == 0, "cannot block SIGINT/SIGTERM");
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `set` lives in this closure; sigwait writes the signal number into `signal`.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                tracing::info!(signal, "stopping");
                let _ = shutdown.write(1);
            }
        })?;
    Ok(())
}

fn pin_control_thread(core: usize) -> Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|c| c.id == core)
        .with_context(|| format!("control core {core} is not available to this process"))?;
    anyhow::ensure!(
        core_affinity::set_for_current(id),
        "cannot pin the control thread to core {core}"
    );
    Ok(())
}

fn print_counters(ports: &[Port], dataplane: &Dataplane) {
    println!(
        "{:<12} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10}",
        "port", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_drops", "tx_drops"
    );
    for t in dataplane.port_totals() {
        let (mut rx, mut tx) = (
            pmd::stats::QueueTotals::default(),
            pmd::stats::QueueTotals::default(),
        );
        for (i, ring) in t.rings.iter().enumerate() {
            let side = if i % 2 == 1 { &mut rx } else { &mut tx };
            side.packets += ring.packets;
            side.bytes += ring.bytes;
            for (a, b) in side.drops.iter_mut().zip(ring.drops) {
                *a += b;
            }
        }
        println!(
            "{:<12} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10}",
            t.name,
            rx.packets,
            rx.bytes,
            tx.packets,
            tx.bytes,
            rx.dropped(),
            tx.dropped()
        );
    }
    println!(
        "{:<12} {:>11} {:>9} {:>9} {:>7} {:>8}  last disconnect",
        "port", "connections", "requests", "rejected", "nacked", "framing"
    );
    for p in ports {
        let c = &p.counters;
        println!(
            "{:<12} {:>11} {:>9} {:>9} {:>7} {:>8}  {}",
            p.config.name,
            c.connections,
            c.requests,
            c.rejected,
            c.nacked,
            c.framing_errors,
            p.last_end.as_deref().unwrap_or("-")
        );
    }
}
