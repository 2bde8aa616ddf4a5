//! `vhost-switch demo`: the switch with two ports and the built-in traffic generator as
//! their front-ends, on embedded defaults (memfd memory, hugepages if there are any, two
//! cores: generator and control on core 0, the PMD on core 1).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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

/// Runs the demo and prints the generator's report and the switch's counters.
pub fn run(args: DemoArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("vhost-switch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let socks = [dir.join("p0.sock"), dir.join("p1.sock")];
    let ctl = dir.join("ctl.sock");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pmd_core = if cpus > 1 { "1" } else { "0" };
    println!(
        "demo: vhost-switch --mode {} with ports p0, p1 (PMD on core {pmd_core}); vhost-pktgen on core 0 \
         drives both ports as guests, {} B frames both ways for {} s",
        args.mode, args.size, args.seconds
    );
    let exe = std::env::current_exe().context("cannot find the vhost-switch executable")?;
    let child = Command::new(exe)
        .args([
            "run",
            "--mode",
            args.mode,
            "--pmd-cores",
            pmd_core,
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
    let stats = crate::ctl::query(&ctl, crate::ctl::Command::Stats)?;
    println!(
        "switch counters (vhost-switch ctl stats):\n{}",
        crate::ctl::render(crate::ctl::Command::Stats, &stats)
    );
    Ok(())
}
