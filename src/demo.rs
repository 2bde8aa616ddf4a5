//! `vhost-switch demo`: the switch with two ports and the built-in traffic generator as
//! their front-ends, on embedded defaults (memfd memory, hugepages if there are any, two
//! cores: generator and control on core 0, the PMD on core 1). It prints the placement it
//! ran in: the two cores' round trip, which on a VM changes from run to run as the host
//! moves the vCPUs, and with it the throughput (~2x between near and far).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::pktgen::probe::{self, Placement, NEAR_BELOW_NS};
use bench::pktgen::{self, Config, FrameSize, Mode, PortSpec};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoArgs {
    /// Traffic time.
    pub seconds: u64,
    /// Frame size in bytes.
    pub size: u32,
    /// Switching mode of the switch.
    pub mode: &'static str,
}

struct Switch {
    child: Child,
    dir: PathBuf,
}

impl Drop for Switch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(path: &Path, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the switch exited before creating {}: {status}",
                path.display()
            );
        }
        if Instant::now() > deadline {
            bail!("the switch did not create {} within 10 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The round trip between the generator's core (0) and the PMD's and its class, as a phrase.
/// Measured before the switch starts: once its PMD spins on its core, a probe thread there
/// would time the PMD's time slices, not the host's placement.
fn measure_placement(pmd_core: usize) -> String {
    if pmd_core == 0 {
        return "not measured (one core: the generator and the PMD share it)".into();
    }
    // The probe pins the thread it runs on (to core 0): a thread of its own, so that neither
    // this one nor the switch it spawns next, which would inherit the mask, is left pinned.
    let rtt = std::thread::spawn(move || {
        probe::round_trip_ns(0, pmd_core, 200_000, Duration::from_secs(5))
    })
    .join()
    .ok()
    .flatten();
    match rtt {
        Some(ns) => {
            let class = Placement::of(ns);
            let rule = match class {
                Placement::Near => "<",
                Placement::Far => ">=",
            };
            format!(
                "core 0 <-> core {pmd_core} round trip {ns:.0} ns, {} ({rule} {NEAR_BELOW_NS:.0} ns)",
                class.name()
            )
        }
        None => "not measured (the probe could not pin both cores, or one stalled)".into(),
    }
}

/// Runs the demo and prints the generator's report and the switch's counters.
pub fn run(args: DemoArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("vhost-switch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let socks = [dir.join("p0.sock"), dir.join("p1.sock")];
    let ctl = dir.join("ctl.sock");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pmd_core = usize::from(cpus > 1);
    println!(
        "demo: vhost-switch --mode {} with ports p0, p1 (PMD on core {pmd_core}); vhost-pktgen on core 0 \
         drives both ports as guests, {} B frames both ways for {} s",
        args.mode, args.size, args.seconds
    );
    let placement = measure_placement(pmd_core);
    println!(
        "demo: placement: {placement}; the host moves the vCPUs between near and far, and far \
         can halve throughput"
    );
    let exe = std::env::current_exe().context("cannot find the vhost-switch executable")?;
    let child = Command::new(exe)
        .args([
            "run",
            "--mode",
            args.mode,
            "--pmd-cores",
            &pmd_core.to_string(),
            "--control-core",
            "0",
        ])
        .arg("--port")
        .arg(format!("p0={}", socks[0].display()))
        .arg("--port")
        .arg(format!("p1={}", socks[1].display()))
        .arg("--control-socket")
        .arg(&ctl)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the switch")?;
    let mut switch = Switch {
        child,
        dir: dir.clone(),
    };
    for s in &socks {
        wait_for(s, &mut switch.child)?;
    }
    wait_for(&ctl, &mut switch.child)?;
    let cfg = Config {
        ports: socks
            .iter()
            .zip(["a", "b"])
            .map(|(s, n)| PortSpec::client(n, s))
            .collect(),
        mode: Mode::Pair,
        size: FrameSize::Fixed(args.size as usize),
        duration: Duration::from_secs(args.seconds),
        core: Some(0),
        ..Config::default()
    };
    let report = pktgen::run(&cfg).context("the traffic generator failed")?;
    println!("\n{}", report.render_table());
    println!("placement (measured just before the traffic): {placement}\n");
    let stats = crate::ctl::query(&ctl, crate::ctl::Command::Stats)?;
    println!(
        "switch counters (vhost-switch ctl stats):\n{}",
        crate::ctl::render(crate::ctl::Command::Stats, &stats)
    );
    Ok(())
}
