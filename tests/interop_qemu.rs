//! QEMU 7.2 with real Linux guests on the switch. Each guest is the Debian cloud kernel
//! plus a busybox initramfs (`scripts/interop/build-guest.sh`, built once and cached under
//! `scripts/interop/out`) whose /init runs the checks named on its kernel command line
//! (`vs.mode=ping+tcp-send ...`) and reports them as `VS-...` lines on the serial console.
//! Guests run under TCG (see `docs/interop.md` for why) with `vectors=0`, pinned to CPU 0
//! so that the switch's PMD keeps CPU 1.
//!
//! Every case fails on any `rejected:` line in the switch's log, and a failing case puts
//! the switch's log and every guest's serial console and QEMU stderr in its panic message.
//!
//! Skipped (with a printed reason) when `qemu-system-x86_64` is not installed or the guest
//! cannot be built, unless `VHOST_SWITCH_REQUIRE_PEERS=1` (set by `scripts/test.sh`) turns
//! the skip into a failure. The hugepage case also needs hugetlbfs on /dev/hugepages with
//! free pages; `VHOST_SWITCH_REQUIRE_HUGEPAGES=1` makes that a requirement too.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::*;

/// Guests are slow under TCG and share CPU 0: one case at a time.
static PEER: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    PEER.lock().unwrap_or_else(|e| e.into_inner())
}

/// MiB sent over TCP between two guests in the main case (about 21 s under TCG here).
const TCP_MIB: u32 = 64;
/// Guest RAM, MiB.
const GUEST_MEM_MIB: u64 = 256;
/// Keeps a guest attached after its checks; the test quits QEMU itself.
const LINGER: &str = "vs.linger=900";
const MACS: [&str; 3] = [
    "52:54:00:00:00:01",
    "52:54:00:00:00:02",
    "52:54:00:00:00:03",
];

// ---------------------------------------------------------------------------------------
// The guest image and how QEMU runs here

struct Image {
    kernel: PathBuf,
    initrd: PathBuf,
    accel: Vec<&'static str>,
    /// `taskset -c` list for QEMU (CPU 0 when the switch's PMD is on CPU 1).
    pin: Option<&'static str>,
}

fn require(var: &str) -> bool {
    std::env::var_os(var).is_some()
}

/// The guest, built on first use; `None` (after printing why) when QEMU interop cannot run.
fn image() -> Option<&'static Image> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    match IMAGE.get_or_init(prepare) {
        Ok(image) => Some(image),
        Err(reason) => {
            if require("VHOST_SWITCH_REQUIRE_PEERS") {
                panic!("QEMU interop is required (VHOST_SWITCH_REQUIRE_PEERS is set): {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

fn prepare() -> Result<Image, String> {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !qemu.is_ok_and(|s| s.success()) {
        return Err("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/interop/build-guest.sh");
    let t0 = Instant::now();
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "building the guest failed ({}; {}):\n{stdout}{}",
            out.status,
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!(
        "guest image ready in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        stdout.lines().next().unwrap_or("")
    );
    let path = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|p| PathBuf::from(p.trim()))
            .ok_or_else(|| format!("build-guest.sh printed no {key:?} line:\n{stdout}"))
    };
    // /dev/kvm may be a nested PVM hypervisor on which Debian kernels hang: TCG there.
    let kvm_usable = !Path::new("/sys/module/kvm_pvm").exists()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    let accel = if kvm_usable {
        vec!["-accel", "kvm", "-cpu", "host"]
    } else {
        vec!["-accel", "tcg"]
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Ok(Image {
        kernel: path("kernel:")?,
        initrd: path("initrd:")?,
        accel,
        pin: (cpus > 1 && taskset).then_some("0"),
    })
}

/// Whether hugetlbfs on /dev/hugepages has room for `guests` guests' RAM; false (after
/// printing why) when not and not required.
fn hugepages_available(guests: u64) -> bool {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let page_kib = field("Hugepagesize:").max(1);
    let need = guests * GUEST_MEM_MIB * 1024 / page_kib;
    let free = field("HugePages_Free:");
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/dev/hugepages") && f.get(2) == Some(&"hugetlbfs")
        });
    if mounted && free >= need {
        return true;
    }
    let reason = format!(
        "hugepages: need hugetlbfs on /dev/hugepages (mounted: {mounted}) with {need} free \
         {page_kib} KiB pages (free: {free}); e.g. scripts/setup-hugepages.sh 512"
    );
    if require("VHOST_SWITCH_REQUIRE_HUGEPAGES") {
        panic!("VHOST_SWITCH_REQUIRE_HUGEPAGES is set: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

// ---------------------------------------------------------------------------------------
// One QEMU guest

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// `path=SOCK`: QEMU connects once; the switch listens (`--port`).
    Client,
    /// `path=SOCK,reconnect=1`: QEMU reconnects every second after the backend goes away.
    Reconnect,
    /// `path=SOCK,server=on,wait=off`: QEMU listens; the switch connects (`--client`).
    Server,
}

struct VmSpec {
    name: String,
    sock: PathBuf,
    role: Role,
    mac: &'static str,
    hugepages: bool,
    monitor: bool,
    /// `packed=on`: the guest drives packed rings.
    packed: bool,
    /// `host_mtu=N`: QEMU offers the guest VIRTIO_NET_F_MTU with N and sends NET_SET_MTU.
    host_mtu: Option<u32>,
    args: Vec<String>,
}

impl VmSpec {
    fn new(name: &str, sock: PathBuf, mac: &'static str, args: &[&str]) -> VmSpec {
        VmSpec {
            name: name.into(),
            sock,
            role: Role::Client,
            mac,
            hugepages: false,
            monitor: false,
            packed: false,
            host_mtu: None,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn role(mut self, role: Role) -> VmSpec {
        self.role = role;
        self
    }
    fn hugepages(mut self) -> VmSpec {
        self.hugepages = true;
        self
    }
    fn monitor(mut self) -> VmSpec {
        self.monitor = true;
        self
    }
    fn packed(mut self, packed: bool) -> VmSpec {
        self.packed = packed;
        self
    }
    fn host_mtu(mut self, mtu: u32) -> VmSpec {
        self.host_mtu = Some(mtu);
        self
    }
}

struct Vm {
    name: String,
    child: RefCell<Option<Child>>,
    status: RefCell<Option<ExitStatus>>,
    serial: PathBuf,
    stderr: PathBuf,
    monitor: Option<PathBuf>,
    command: String,
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./=:,@%+-".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Vm {
    fn boot(image: &Image, dir: &Path, spec: &VmSpec) -> Vm {
        let serial = dir.join(format!("{}.serial", spec.name));
        let stderr = dir.join(format!("{}.qemu.err", spec.name));
        let monitor = spec
            .monitor
            .then(|| dir.join(format!("{}.monitor", spec.name)));
        let mem = if spec.hugepages {
            format!(
                "memory-backend-file,id=mem,size={GUEST_MEM_MIB}M,mem-path=/dev/hugepages,share=on"
            )
        } else {
            format!("memory-backend-memfd,id=mem,size={GUEST_MEM_MIB}M,share=on")
        };
        let chardev = format!(
            "socket,id=c0,path={}{}",
            spec.sock.display(),
            match spec.role {
                Role::Client => "",
                Role::Reconnect => ",reconnect=1",
                Role::Server => ",server=on,wait=off",
            }
        );
        let mut argv: Vec<String> = Vec::new();
        if let Some(cpus) = image.pin {
            argv.extend(["taskset".into(), "-c".into(), cpus.into()]);
        }
        argv.push("qemu-system-x86_64".into());
        argv.extend(image.accel.iter().map(|s| s.to_string()));
        let monitor_arg = match &monitor {
            Some(p) => format!("unix:{},server=on,wait=off", p.display()),
            None => "none".into(),
        };
        argv.extend(
            [
                "-nodefaults",
                "-nographic",
                "-monitor",
                &monitor_arg,
                "-no-reboot",
                "-m",
                &format!("{GUEST_MEM_MIB}M"),
                "-smp",
                "1",
                "-object",
                &mem,
                "-numa",
                "node,memdev=mem",
                "-kernel",
                &image.kernel.display().to_string(),
                "-initrd",
                &image.initrd.display().to_string(),
                "-append",
                &format!("console=ttyS0 panic=-1 quiet {}", spec.args.join(" ")),
                "-chardev",
                &chardev,
                "-netdev",
                "vhost-user,id=n0,chardev=c0",
                "-device",
                // vectors=0: QEMU 7.2 under TCG segfaults at DRIVER_OK with MSI-X here.
                &format!(
                    "virtio-net-pci,netdev=n0,mac={},vectors=0,romfile={}{}",
                    spec.mac,
                    if spec.packed { ",packed=on" } else { "" },
                    spec.host_mtu
                        .map_or(String::new(), |m| format!(",host_mtu={m}"))
                ),
                "-serial",
                &format!("file:{}", serial.display()),
            ]
            .map(String::from),
        );
        let command = argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        let err = std::fs::File::create(&stderr).unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(err.try_clone().unwrap())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        Vm {
            name: spec.name.clone(),
            child: RefCell::new(Some(child)),
            status: RefCell::new(None),
            serial,
            stderr,
            monitor,
            command,
        }
    }

    /// The serial console so far, carriage returns removed.
    fn console(&self) -> String {
        let bytes = std::fs::read(&self.serial).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// Complete lines with `tag` ("VS-PING "...), from the tag on.
    fn lines(&self, tag: &str) -> Vec<String> {
        tagged_serial_lines(&self.serial, tag)
    }

    /// Exit status once QEMU has exited.
    fn exited(&self) -> Option<ExitStatus> {
        if let Some(child) = self.child.borrow_mut().as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                *self.status.borrow_mut() = Some(status);
            }
        }
        *self.status.borrow()
    }

    fn pid(&self) -> Option<u32> {
        self.child.borrow().as_ref().map(Child::id)
    }

    /// Quits QEMU the way an operator would (SIGTERM: QEMU stops the device and exits).
    fn quit(&self) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet
            // (exited() just saw it running and only we reap it).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.exited().is_none() {
            if Instant::now() > deadline {
                // Hung: SIGKILL (Drop reaps it).
                if let Some(child) = self.child.borrow_mut().as_mut() {
                    let _ = child.kill();
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A human monitor command (`stop`, `cont`, ...); returns once QEMU prompts again.
    fn hmp(&self, command: &str) {
        let path = self.monitor.as_ref().expect("VM booted without a monitor");
        let mut s = UnixStream::connect(path).expect("connect to the QEMU monitor");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let prompt = |s: &mut UnixStream| {
            let mut text = String::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(20);
            while !text.contains("(qemu) ") && Instant::now() < deadline {
                if let Ok(n) = s.read(&mut buf) {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        };
        prompt(&mut s);
        writeln!(s, "{command}").unwrap();
        prompt(&mut s);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.borrow_mut().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `key=value` words of a `VS-...` line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// A case: the switch (and the logs of earlier switch processes), the guests, and a panic
// message with everything when something goes wrong.

struct Case {
    title: String,
    t0: Instant,
    image: &'static Image,
    dir: PathBuf,
    // Guests before the switch: dropping a case kills the guests first.
    vms: Vec<Vm>,
    switch: Option<Daemon>,
    earlier_switch_logs: Vec<String>,
}

impl Case {
    fn new(title: &str, image: &'static Image, switch: Daemon) -> Case {
        eprintln!("== {title}");
        Case {
            title: title.into(),
            t0: Instant::now(),
            image,
            dir: switch.dir.clone(),
            vms: Vec::new(),
            switch: Some(switch),
            earlier_switch_logs: Vec::new(),
        }
    }

    /// A case whose guests start before the switch (QEMU as server).
    fn without_switch(title: &str, image: &'static Image, dir: PathBuf) -> Case {
        eprintln!("== {title}");
        Case {
            title: title.into(),
            t0: Instant::now(),
            image,
            dir,
            vms: Vec::new(),
            switch: None,
            earlier_switch_logs: Vec::new(),
        }
    }

    fn elapsed(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn switch(&self) -> &Daemon {
        self.switch
            .as_ref()
            .unwrap_or_else(|| self.fail("no switch running"))
    }

    fn sock(&self, port: &str) -> PathBuf {
        self.dir.join(format!("{port}.sock"))
    }

    fn dump(&self) -> String {
        let mut out = format!(
            "\n===== case {:?}, {:.1} s in, files in {} =====\n",
            self.title,
            self.elapsed(),
            self.dir.display()
        );
        for (i, log) in self.earlier_switch_logs.iter().enumerate() {
            out += &format!(
                "----- switch log (process {}, killed) -----\n{log}\n",
                i + 1
            );
        }
        if let Some(d) = &self.switch {
            out += &format!("----- switch log (current process) -----\n{}\n", d.log());
        }
        for vm in &self.vms {
            out += &format!(
                "----- {} (exit: {:?}) command -----\n{}\n----- {} serial console -----\n{}\n----- {} QEMU stderr -----\n{}\n",
                vm.name,
                vm.exited(),
                vm.command,
                vm.name,
                vm.console(),
                vm.name,
                std::fs::read_to_string(&vm.stderr).unwrap_or_default()
            );
        }
        out
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{}: {msg}{}", self.title, self.dump())
    }

    fn ensure(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    /// Polls `done` until it holds; fails with everything after `secs`.
    fn wait(&self, what: &str, secs: u64, mut done: impl FnMut(&Case) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(self) {
            if Instant::now() > deadline {
                self.fail(format!("timed out after {secs} s waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn boot(&mut self, spec: VmSpec) -> usize {
        let vm = Vm::boot(self.image, &self.dir, &spec);
        eprintln!("{:6.1} s  boot {}: {}", self.elapsed(), vm.name, vm.command);
        self.vms.push(vm);
        self.vms.len() - 1
    }

    fn note(&self, what: impl std::fmt::Display) {
        eprintln!("{:6.1} s  {what}", self.elapsed());
    }

    /// Waits for guest `vm`'s VS-RESULT line of `step`; fails on a failed step or when the
    /// guest is gone without it.
    fn result(&self, vm: usize, step: &str, secs: u64) -> HashMap<String, String> {
        let v = &self.vms[vm];
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            for line in v.lines("VS-RESULT ") {
                let f = fields(&line);
                if f.get("ok").map(String::as_str) != Some("1") {
                    self.fail(format!("{} failed a step: {line}", v.name));
                }
                if f.get("mode").map(String::as_str) == Some(step) {
                    self.note(format!("{}: {line}", v.name));
                    return f;
                }
            }
            if let Some(status) = v.exited() {
                // The file may have got its last line just before QEMU exited.
                if v.lines("VS-RESULT ")
                    .iter()
                    .any(|l| l.contains(&format!("mode={step} ")))
                {
                    continue;
                }
                self.fail(format!(
                    "{} exited ({status}) without a {step} result",
                    v.name
                ));
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "timed out after {secs} s waiting for {}'s {step} result",
                    v.name
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ready(&self, vm: usize, secs: u64) {
        let name = self.vms[vm].name.clone();
        self.wait(&format!("{name} VS-READY"), secs, |c| {
            !c.vms[vm].lines("VS-READY ").is_empty() || c.vms[vm].exited().is_some()
        });
        let line = self.vms[vm].lines("VS-READY ").pop().unwrap_or_default();
        self.ensure(line.contains("carrier=1"), || {
            format!("{name} came up without carrier: {line:?}")
        });
        self.note(format!("{name}: {line}"));
    }

    /// The `ctl stats` entry of `port`.
    fn port_stats(&self, port: &str) -> serde_json::Value {
        let stats = self.switch().ctl("stats");
        stats["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["name"] == port).cloned())
            .unwrap_or_else(|| self.fail(format!("no port {port} in ctl stats: {stats}")))
    }

    fn counter(&self, port: &str, key: &str) -> u64 {
        self.port_stats(port)[key].as_u64().unwrap_or(0)
    }

    /// Every (MAC, port) is in the FDB.
    fn check_fdb(&self, expected: &[(&str, &str)]) {
        let fdb = self.switch().ctl("fdb");
        let entries = fdb["entries"].as_array().cloned().unwrap_or_default();
        for (mac, port) in expected {
            let found = entries
                .iter()
                .any(|e| e["mac"] == *mac && e["port"] == *port);
            self.ensure(found, || format!("ctl fdb lacks {mac} on {port}: {fdb:#}"));
        }
        self.note(format!("fdb: {}", serde_json::Value::Array(entries)));
    }

    fn all_logs(&self) -> Vec<String> {
        let mut logs = self.earlier_switch_logs.clone();
        if let Some(d) = &self.switch {
            logs.push(d.log());
        }
        logs
    }

    fn check_no_rejection(&self) {
        let rejected: Vec<String> = self
            .all_logs()
            .iter()
            .flat_map(|l| {
                l.lines()
                    .filter(|l| l.contains("rejected:"))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        self.ensure(rejected.is_empty(), || {
            format!("the switch rejected messages:\n{}", rejected.join("\n"))
        });
    }

    /// The vhost-user requests QEMU sent on `port`, in order (from the debug log).
    fn requests(&self, port: &str) -> Vec<String> {
        let needle = format!("request port={port} request=");
        self.switch()
            .log()
            .lines()
            .filter_map(|l| l.split(&needle).nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(String::from)
            .collect()
    }

    /// QEMU's own order of messages reached the switch on `port` and none was refused:
    /// SET_VRING_CALL/ERR and SET_VRING_ENABLE 1 before the memory table, SET_FEATURES and
    /// SET_STATUS at device start, GET_VRING_BASE for both rings at stop.
    fn check_qemu_sequence(&self, port: &str) {
        let reqs = self.requests(port);
        let first = |name: &str| reqs.iter().position(|r| r == name);
        let mem = first("SET_MEM_TABLE")
            .into_iter()
            .chain(first("ADD_MEM_REG"))
            .min();
        let show = || format!("requests on {port}: {}", reqs.join(" "));
        let Some(mem) = mem else {
            self.fail(format!("no memory table: {}", show()))
        };
        for early in [
            "SET_VRING_CALL",
            "SET_VRING_ERR",
            "SET_VRING_ENABLE",
            "SET_FEATURES",
        ] {
            self.ensure(first(early).is_some_and(|i| i < mem), || {
                format!("expected {early} before the memory table; {}", show())
            });
        }
        self.ensure(first("SET_STATUS").is_some(), || {
            format!("no SET_STATUS; {}", show())
        });
        self.ensure(
            reqs.iter().filter(|r| *r == "GET_VRING_BASE").count() >= 2,
            || format!("no GET_VRING_BASE for both rings at stop; {}", show()),
        );
        let log = self.switch().log();
        self.ensure(
            log.contains(&format!(
                "ring enable port={port} ring=0 enabled=true started=false"
            )),
            || format!("SET_VRING_ENABLE 1 on an unconfigured ring was not seen on {port}"),
        );
        self.check_no_rejection();
    }

    /// Waits until the switch's log holds `needle` `n` times.
    fn wait_log(&self, needle: &str, n: usize) {
        self.wait(&format!("{n} x {needle:?} in the switch's log"), 30, |c| {
            c.switch().log().matches(needle).count() >= n
        });
    }

    /// Both sides of a TCP transfer saw the same bytes.
    fn check_md5(&self, send: &HashMap<String, String>, recv: &HashMap<String, String>) {
        self.ensure(
            recv.contains_key("md5") && recv.get("md5") == send.get("md5"),
            || format!("md5 differs: sent {send:?}, received {recv:?}"),
        );
    }

    /// SIGKILL to the switch; keeps its log for the dump.
    fn kill_switch(&mut self) {
        let d = self
            .switch
            .take()
            .unwrap_or_else(|| self.fail("no switch to kill"));
        // SAFETY: kill(2) on the daemon's pid, our child, not reaped yet (stop() below
        // reaps it).
        unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
        let (code, _, log) = d.stop();
        self.note(format!("switch killed (SIGKILL; exit code {code:?})"));
        self.earlier_switch_logs.push(log);
    }

    fn start_switch(&mut self, args: &[String]) {
        let d = Daemon::spawn(self.dir.clone(), args);
        self.switch = Some(d);
        self.note(format!("switch started: vhost-switch {}", args.join(" ")));
    }

    /// Quits every guest still running, checks that nothing was rejected, stops the
    /// switch and removes the files.
    fn finish(mut self) {
        for vm in &self.vms {
            vm.quit();
        }
        self.check_no_rejection();
        if let Some(d) = self.switch.take() {
            let (code, _, log) = d.stop();
            if code != Some(0) {
                self.earlier_switch_logs.push(log);
                self.fail(format!("the switch exited with {code:?} on SIGTERM"));
            }
        }
        eprintln!("== {}: passed in {:.1} s", self.title, self.elapsed());
        let dir = self.dir.clone();
        self.vms.clear();
        drop(self);
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        // Guests first, so that the switch does not see them reconnect as it goes.
        self.vms.clear();
    }
}

fn ping_lines(vm: &Vm) -> Vec<HashMap<String, String>> {
    vm.lines("VS-PING ").iter().map(|l| fields(l)).collect()
}

fn is(f: &HashMap<String, String>, key: &str, value: &str) -> bool {
    f.get(key).map(String::as_str) == Some(value)
}

fn uptime(f: &HashMap<String, String>) -> f64 {
    f.get("uptime").and_then(|u| u.parse().ok()).unwrap_or(0.0)
}

fn switch_args(mode: &str, ports: &[(&str, &str, &Path)]) -> Vec<String> {
    let mut args = vec!["run".to_string(), "--mode".into(), mode.into()];
    for (flag, name, sock) in ports {
        args.push((*flag).into());
        args.push(format!("{name}={}", sock.display()));
    }
    args
}

// ---------------------------------------------------------------------------------------
// The cases

/// Two guests on two ports of a learning bridge: each pings the other, then 64 MiB cross
/// over TCP with the same md5 on both sides; the FDB holds both MACs on the right ports;
/// QEMU's whole message sequence (start and stop) is accepted.
#[test]
fn qemu_two_guests_ping_both_ways_and_tcp_transfer() {
    two_guests_case(
        "two guests: ping both ways, TCP transfer, FDB",
        [false, false],
    );
}

/// A guest on packed rings and one on split rings: the switch copies between the layouts.
#[test]
fn qemu_packed_guest_and_split_guest_ping_and_tcp() {
    two_guests_case(
        "a packed-ring guest and a split-ring guest: ping, TCP transfer",
        [true, false],
    );
}

/// Whether the features a port's front-end acked hold RING_PACKED, from the switch's log.
fn acked_packed(c: &Case, port: &str) -> Option<bool> {
    let needle = format!("port={port}");
    c.switch()
        .log()
        .lines()
        .rev()
        .filter(|l| l.contains("features acked") && l.contains(&needle))
        .filter_map(|l| l.split("features=0x").nth(1))
        .find_map(|v| u64::from_str_radix(v.split_whitespace().next().unwrap_or(""), 16).ok())
        .map(|f| f & (1 << 34) != 0)
}

fn two_guests_case(title: &str, packed: [bool; 2]) {
    let _serial = serial();
    let Some(image) = image() else { return };
    let d = Daemon::start(&["p0", "p1"], &["--mode", "learning"]);
    let mut c = Case::new(title, image, d);
    let size = format!("vs.size={TCP_MIB}");
    let a = c.boot(
        VmSpec::new(
            "vm-a",
            c.sock("p0"),
            MACS[0],
            &[
                "vs.mode=ping+tcp-recv",
                "vs.ip=10.0.0.1/24",
                "vs.peer=10.0.0.2",
                &size,
                "vs.timeout=300",
                LINGER,
            ],
        )
        .packed(packed[0]),
    );
    let b = c.boot(
        VmSpec::new(
            "vm-b",
            c.sock("p1"),
            MACS[1],
            &[
                "vs.mode=ping+tcp-send",
                "vs.ip=10.0.0.2/24",
                "vs.peer=10.0.0.1",
                &size,
                "vs.timeout=300",
                LINGER,
            ],
        )
        .packed(packed[1]),
    );
    for vm in [a, b] {
        let r = c.result(vm, "ping", 180);
        c.ensure(is(&r, "received", "3/3"), || format!("lost pings: {r:?}"));
    }
    let recv = c.result(a, "tcp-recv", 400);
    let send = c.result(b, "tcp-send", 60);
    let bytes = (u64::from(TCP_MIB) << 20).to_string();
    c.ensure(
        is(&recv, "bytes", &bytes) && is(&send, "bytes", &bytes),
        || format!("expected {bytes} bytes: sent {send:?}, received {recv:?}"),
    );
    c.check_md5(&send, &recv);
    c.note(format!(
        "{TCP_MIB} MiB in {} s (guest clock)",
        recv.get("secs").map_or("?", String::as_str)
    ));
    c.check_fdb(&[(MACS[0], "p0"), (MACS[1], "p1")]);
    for (port, packed) in [("p0", packed[0]), ("p1", packed[1])] {
        let acked = acked_packed(&c, port);
        c.ensure(acked == Some(packed), || {
            format!("{port}: RING_PACKED acked {acked:?}, the guest asked packed={packed}")
        });
    }
    let frames = c.counter("p0", "tx_packets");
    c.ensure(frames >= u64::from(TCP_MIB) * 1024 * 1024 / 1514, || {
        format!("p0 delivered only {frames} frames for {TCP_MIB} MiB")
    });
    c.note(format!("p0: {}", c.port_stats("p0")));
    c.note(format!("p1: {}", c.port_stats("p1")));
    for vm in &c.vms {
        vm.quit();
    }
    c.wait_log("front-end disconnected port=p0", 1);
    c.wait_log("front-end disconnected port=p1", 1);
    c.check_qemu_sequence("p0");
    c.check_qemu_sequence("p1");
    c.finish();
}

/// MTU and RARP with QEMU. Both guests on `host_mtu=9000` devices, on ports whose `mtu`
/// is 9000 (VIRTIO_NET_F_MTU offered): QEMU sends NET_SET_MTU 9000 before the rings start
/// and the guests' eth0 come up with MTU 9000; pings of 8972 bytes (9014-byte frames)
/// cross both ways in one frame each (no IPv4 fragment made or reassembled), none counted
/// over the MTU. Then HMP `announce_self` on A: QEMU hands each RARP it would send to the
/// back-end as SEND_RARP; the switch learns A's MAC on p0 and delivers every announcement
/// into B's RX ring.
#[test]
fn qemu_host_mtu_9000_jumbo_ping_and_announce_self_rarp() {
    let _serial = serial();
    let Some(image) = image() else { return };
    let d = Daemon::start(&["p0", "p1"], &["--mode", "learning", "--mtu", "9000"]);
    let mut c = Case::new(
        "host_mtu=9000: jumbo ping; announce_self: SEND_RARP",
        image,
        d,
    );
    let a = c.boot(
        VmSpec::new(
            "vm-a",
            c.sock("p0"),
            MACS[0],
            &["vs.mode=link", "vs.ip=10.0.0.1/24", "vs.mtu=9000", LINGER],
        )
        .host_mtu(9000)
        .monitor(),
    );
    let b = c.boot(
        VmSpec::new(
            "vm-b",
            c.sock("p1"),
            MACS[1],
            &[
                "vs.mode=ping",
                "vs.ip=10.0.0.2/24",
                "vs.peer=10.0.0.1",
                "vs.psize=8972",
                "vs.mtu=9000",
                "vs.timeout=300",
                LINGER,
            ],
        )
        .host_mtu(9000),
    );
    for vm in [a, b] {
        c.ready(vm, 180);
        let line = c.vms[vm].lines("VS-READY ").pop().unwrap_or_default();
        c.ensure(line.contains(" mtu=9000 "), || {
            format!("guest MTU is not 9000: {line}")
        });
    }
    let r = c.result(b, "ping", 300);
    c.ensure(
        is(&r, "received", "3/3")
            && is(&r, "fragments_made", "0")
            && is(&r, "fragments_reassembled", "0"),
        || format!("jumbo pings lost or fragmented: {r:?}"),
    );
    for port in ["p0", "p1"] {
        c.wait_log(
            &format!("guest MTU set by NET_SET_MTU port={port} mtu=9000"),
            1,
        );
        let rx = c.port_stats(port)["rings"][0].clone();
        c.ensure(rx["drops"].get("over_mtu").is_none(), || {
            format!("{port}: frames counted over the MTU: {rx}")
        });
    }
    let bytes = c.counter("p1", "rx_bytes");
    c.ensure(bytes >= 3 * 9014, || {
        format!("p1 sent only {bytes} bytes for three 9014-byte frames")
    });

    let delivered = |c: &Case| {
        c.port_stats("p1")["rings"][0]["packets"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = delivered(&c);
    c.vms[a].hmp("announce_self");
    c.wait_log("SEND_RARP: MAC learned on this port", 1);
    // QEMU announces in rounds (5 by default, 50 to 550 ms apart): let them all come.
    std::thread::sleep(Duration::from_secs(3));
    let rarps = c
        .switch()
        .log()
        .matches("SEND_RARP: MAC learned on this port, RARP announcement sent port=p0 mac=52:54:00:00:00:01 ports=1")
        .count() as u64;
    let after = delivered(&c);
    c.ensure(rarps >= 1 && after - before >= rarps, || {
        format!(
            "{rarps} SEND_RARP, but p1's RX ring got {} frames",
            after - before
        )
    });
    c.note(format!(
        "announce_self: {rarps} SEND_RARP, {} frames to vm-b",
        after - before
    ));
    c.check_fdb(&[(MACS[0], "p0"), (MACS[1], "p1")]);
    for vm in &c.vms {
        vm.quit();
    }
    c.wait_log("front-end disconnected port=p0", 1);
    c.wait_log("front-end disconnected port=p1", 1);
    c.note(format!("requests on p0: {}", c.requests("p0").join(" ")));
    for request in ["request=NET_SET_MTU", "request=SEND_RARP"] {
        let log = c.switch().log();
        let line = log.lines().find(|l| l.contains(request)).unwrap_or("");
        c.note(format!("first {request}: {}", line.trim()));
    }
    c.check_qemu_sequence("p0");
    c.check_qemu_sequence("p1");
    c.finish();
}

/// Three guests: the ARP request of A's ping (a broadcast) reaches B and C; the TCP stream
/// from A to B (unicast) reaches B only: C's port delivers the broadcast and nothing more.
#[test]
fn qemu_three_guests_broadcast_floods_unicast_does_not() {
    let _serial = serial();
    let Some(image) = image() else { return };
    let d = Daemon::start(&["p0", "p1", "p2"], &["--mode", "learning"]);
    let mut c = Case::new("three guests: broadcast to all, unicast to one", image, d);
    let vc = c.boot(VmSpec::new(
        "vm-c",
        c.sock("p2"),
        MACS[2],
        &["vs.mode=link", "vs.ip=10.0.0.3/24", LINGER],
    ));
    let vb = c.boot(VmSpec::new(
        "vm-b",
        c.sock("p1"),
        MACS[1],
        &[
            "vs.mode=tcp-recv",
            "vs.ip=10.0.0.2/24",
            "vs.size=8",
            "vs.timeout=300",
            LINGER,
        ],
    ));
    c.ready(vc, 180);
    c.ready(vb, 180);
    // IPv6 is off in the guests: until A talks, nothing is flooded.
    let c_before = c.counter("p2", "tx_packets");
    let b_before = c.counter("p1", "tx_packets");
    let va = c.boot(VmSpec::new(
        "vm-a",
        c.sock("p0"),
        MACS[0],
        &[
            "vs.mode=ping+tcp-send",
            "vs.ip=10.0.0.1/24",
            "vs.peer=10.0.0.2",
            "vs.size=8",
            "vs.timeout=300",
            LINGER,
        ],
    ));
    c.result(va, "ping", 180);
    let c_after_arp = c.counter("p2", "tx_packets");
    c.ensure(c_after_arp > c_before, || {
        format!("A's ARP request (broadcast) never reached C: p2 tx_packets {c_before} -> {c_after_arp}")
    });
    let recv = c.result(vb, "tcp-recv", 300);
    let send = c.result(va, "tcp-send", 60);
    c.check_md5(&send, &recv);
    let c_end = c.counter("p2", "tx_packets");
    let b_end = c.counter("p1", "tx_packets");
    let unicast = b_end - b_before;
    c.note(format!(
        "to C: {} frames (broadcast; {} of them during A's ping), to B: {unicast} frames",
        c_end - c_before,
        c_after_arp - c_before
    ));
    // 8 MiB is at least 5,500 full frames to B. C sees A's ARP request (one frame here)
    // and perhaps a re-resolution, but none of the stream.
    c.ensure(unicast >= 8 * 1024 * 1024 / 1514, || {
        format!("B got only {unicast} frames")
    });
    c.ensure(c_end - c_before <= 4, || {
        format!(
            "C's port delivered {} frames while A sent {unicast} unicast frames to B: unicast was flooded\nstats: {}",
            c_end - c_before,
            c.switch().ctl("stats")
        )
    });
    c.check_fdb(&[(MACS[0], "p0"), (MACS[1], "p1")]);
    c.finish();
}

/// QEMU quits (SIGTERM) and starts again on the same socket: the port takes the new
/// connection and the restarted guest pings again; the other guest never noticed.
#[test]
fn qemu_guest_restart_on_the_same_port() {
    let _serial = serial();
    let Some(image) = image() else { return };
    let d = Daemon::start(&["p0", "p1"], &["--mode", "learning"]);
    let mut c = Case::new("QEMU restarts a guest on the same socket", image, d);
    let a = c.boot(VmSpec::new(
        "vm-a",
        c.sock("p0"),
        MACS[0],
        &["vs.mode=link", "vs.ip=10.0.0.1/24", LINGER],
    ));
    let b_args = [
        "vs.mode=ping",
        "vs.ip=10.0.0.2/24",
        "vs.peer=10.0.0.1",
        LINGER,
    ];
    let b1 = c.boot(VmSpec::new("vm-b-first", c.sock("p1"), MACS[1], &b_args));
    let r = c.result(b1, "ping", 180);
    c.ensure(is(&r, "received", "3/3"), || format!("lost pings: {r:?}"));
    c.vms[b1].quit();
    c.note("vm-b-first quit");
    c.wait_log("front-end disconnected port=p1", 1);
    // The same guest again (same MAC), this time powering itself off when done.
    let b2 = c.boot(VmSpec::new(
        "vm-b-second",
        c.sock("p1"),
        MACS[1],
        &["vs.mode=ping", "vs.ip=10.0.0.2/24", "vs.peer=10.0.0.1"],
    ));
    let r = c.result(b2, "ping", 180);
    c.ensure(is(&r, "received", "3/3"), || {
        format!("lost pings after the restart: {r:?}")
    });
    c.wait("vm-b-second to power off", 60, |c| {
        c.vms[b2].exited().is_some()
    });
    c.wait_log("front-end disconnected port=p1", 2);
    let stats = c.port_stats("p1");
    let control = &stats["control"];
    c.ensure(control["connections"] == 2, || {
        format!("expected 2 connections on p1: {control}")
    });
    c.ensure(
        c.vms[a].lines("VS-BOOT").len() == 1 && c.vms[a].exited().is_none(),
        || "vm-a rebooted or died".into(),
    );
    c.check_qemu_sequence("p1");
    c.finish();
}

/// The switch dies (SIGKILL) under a guest pinging another and comes back on the same
/// sockets; both guests keep running (no reboot) and the pings resume.
fn switch_restart_case(qemu_server: bool, packed: bool) {
    let _serial = serial();
    let Some(image) = image() else { return };
    let (mut c, args) = if qemu_server {
        let dir = temp_dir("qemu-server");
        let c = Case::without_switch(
            "QEMU as server (server=on), switch --client: switch killed and restarted",
            image,
            dir.clone(),
        );
        let args = switch_args(
            "learning",
            &[
                ("--client", "c0", &dir.join("vm-a.sock")),
                ("--client", "c1", &dir.join("vm-b.sock")),
            ],
        );
        (c, args)
    } else {
        let d = Daemon::start(&["p0", "p1"], &["--mode", "learning"]);
        let args = switch_args(
            "learning",
            &[
                ("--port", "p0", &d.sock("p0")),
                ("--port", "p1", &d.sock("p1")),
            ],
        );
        let c = Case::new(
            "QEMU as client (reconnect=1): switch killed and restarted",
            image,
            d,
        );
        (c, args)
    };
    let (role, socks, ports) = if qemu_server {
        (
            Role::Server,
            [c.dir.join("vm-a.sock"), c.dir.join("vm-b.sock")],
            ["c0", "c1"],
        )
    } else {
        (Role::Reconnect, [c.sock("p0"), c.sock("p1")], ["p0", "p1"])
    };
    let a = c.boot(
        VmSpec::new(
            "vm-a",
            socks[0].clone(),
            MACS[0],
            &["vs.mode=link", "vs.ip=10.0.0.1/24", LINGER],
        )
        .role(role)
        .packed(packed),
    );
    let b = c.boot(
        VmSpec::new(
            "vm-b",
            socks[1].clone(),
            MACS[1],
            &[
                "vs.mode=ping-loop",
                "vs.ip=10.0.0.2/24",
                "vs.peer=10.0.0.1",
                "vs.count=100000",
                "vs.timeout=120",
            ],
        )
        .role(role)
        .packed(packed),
    );
    if qemu_server {
        c.wait("QEMU's sockets", 30, |_| socks.iter().all(|s| s.exists()));
        c.start_switch(&args);
    }
    let oks = |c: &Case, from: usize| {
        ping_lines(&c.vms[b])
            .iter()
            .skip(from)
            .filter(|f| is(f, "ok", "1"))
            .count()
    };
    c.wait("3 replies to vm-b's pings", 240, |c| oks(c, 0) >= 3);
    let before = ping_lines(&c.vms[b]);
    c.note(format!(
        "vm-b: {} probes, {} replies; killing the switch",
        before.len(),
        oks(&c, 0)
    ));
    c.kill_switch();
    c.wait(
        "vm-b to see the link drop (a lost probe with carrier=0)",
        60,
        |c| {
            ping_lines(&c.vms[b])
                .iter()
                .skip(before.len())
                .any(|f| is(f, "ok", "0") && is(f, "carrier", "0"))
        },
    );
    let gap_start = ping_lines(&c.vms[b]).len();
    // (As server, the new switch replaces the dead one's stale socket files; QEMU retries
    // every second.)
    c.start_switch(&args);
    c.wait("3 replies after the switch came back", 120, |c| {
        oks(c, gap_start) >= 3
    });
    let probes = ping_lines(&c.vms[b]);
    // The last reply before the kill and the first after the restart, on the guest clock.
    let last_ok = before
        .iter()
        .rev()
        .find(|f| is(f, "ok", "1"))
        .map(uptime)
        .unwrap_or(0.0);
    let first_ok_after = probes
        .iter()
        .skip(before.len())
        .find(|f| is(f, "ok", "1"))
        .map(uptime)
        .unwrap_or(0.0);
    let lost = probes
        .iter()
        .skip(before.len())
        .filter(|f| is(f, "ok", "0"))
        .count();
    c.note(format!(
        "vm-b: {} probes; replies before the kill {}, lost {lost}, replies after {}; \
         no reply for {:.1} s of guest time",
        probes.len(),
        oks(&c, 0) - oks(&c, before.len()),
        oks(&c, before.len()),
        first_ok_after - last_ok
    ));
    // No reboot: one boot each, QEMU still running, the probe loop never restarted.
    for vm in &c.vms {
        c.ensure(
            vm.lines("VS-BOOT").len() == 1 && vm.exited().is_none(),
            || format!("{} rebooted or died", vm.name),
        );
    }
    let numbers: Vec<u64> = probes
        .iter()
        .filter_map(|f| f.get("n").and_then(|n| n.parse().ok()))
        .collect();
    c.ensure(
        numbers.iter().enumerate().all(|(i, &n)| n == i as u64 + 1),
        || format!("vm-b's probe loop restarted: {numbers:?}"),
    );
    c.ensure(c.vms[a].lines("VS-RESULT ").len() == 1, || {
        "vm-a ran its steps twice".into()
    });
    // The new switch process got the whole handshake again, resuming vm-b's TX ring.
    let log = c.switch().log();
    for port in ports {
        c.ensure(
            log.contains(&format!("ring started port={port} ring=1")),
            || format!("port {port}'s rings never started after the restart"),
        );
    }
    if let Some(line) = log
        .lines()
        .find(|l| l.contains(&format!("ring started port={} ring=1", ports[1])))
    {
        c.note(format!(
            "after the restart: {}",
            line.split("ring started").nth(1).unwrap_or("")
        ));
    }
    c.check_no_rejection();
    c.finish();
}

#[test]
fn qemu_client_reconnects_after_switch_restart() {
    switch_restart_case(false, false);
}

#[test]
fn qemu_server_is_reconnected_by_restarted_switch() {
    switch_restart_case(true, false);
}

/// Packed rings resume at the position and wrap counter QEMU kept across the restart.
#[test]
fn qemu_packed_guests_reconnect_after_switch_restart() {
    switch_restart_case(false, true);
}

/// Guest RAM on hugetlbfs (memory-backend-file on /dev/hugepages): the switch maps it,
/// guests ping each other and move 16 MiB over TCP.
#[test]
fn qemu_guests_on_hugepages() {
    let _serial = serial();
    let Some(image) = image() else { return };
    if !hugepages_available(2) {
        return;
    }
    let d = Daemon::start(&["p0", "p1"], &["--mode", "learning"]);
    let mut c = Case::new("two guests with hugepage memory", image, d);
    let common = ["vs.size=16", "vs.timeout=300", LINGER];
    let mut a_args = vec![
        "vs.mode=ping+tcp-recv",
        "vs.ip=10.0.0.1/24",
        "vs.peer=10.0.0.2",
    ];
    a_args.extend(common);
    let mut b_args = vec![
        "vs.mode=ping+tcp-send",
        "vs.ip=10.0.0.2/24",
        "vs.peer=10.0.0.1",
    ];
    b_args.extend(common);
    let a = c.boot(VmSpec::new("vm-a", c.sock("p0"), MACS[0], &a_args).hugepages());
    let b = c.boot(VmSpec::new("vm-b", c.sock("p1"), MACS[1], &b_args).hugepages());
    for vm in [a, b] {
        let r = c.result(vm, "ping", 180);
        c.ensure(is(&r, "received", "3/3"), || format!("lost pings: {r:?}"));
    }
    let recv = c.result(a, "tcp-recv", 300);
    let send = c.result(b, "tcp-send", 60);
    c.check_md5(&send, &recv);
    // The switch maps QEMU's hugetlbfs files (unlinked, hence "(deleted)").
    let maps =
        std::fs::read_to_string(format!("/proc/{}/maps", c.switch().pid())).unwrap_or_default();
    let huge = maps
        .lines()
        .filter(|l| l.contains("/dev/hugepages/"))
        .count();
    c.ensure(huge >= 2, || {
        format!("the switch maps {huge} hugetlbfs files, expected both guests':\n{maps}")
    });
    c.check_fdb(&[(MACS[0], "p0"), (MACS[1], "p1")]);
    for vm in &c.vms {
        vm.quit();
    }
    c.wait_log("front-end disconnected port=p0", 1);
    c.wait_log("front-end disconnected port=p1", 1);
    c.check_qemu_sequence("p0");
    c.finish();
}

/// `stop` / `cont` in the QEMU monitor (what a snapshot or the start of a migration does):
/// QEMU reads each ring's index with GET_VRING_BASE and hands it back with SET_VRING_BASE.
/// Pings must resume after `cont`.
#[test]
fn qemu_pause_and_resume_keeps_traffic() {
    pause_resume_case("QEMU monitor stop/cont under pings", false);
}

/// GET_VRING_BASE and SET_VRING_BASE carry a packed ring's position and wrap counter.
#[test]
fn qemu_packed_pause_and_resume_keeps_traffic() {
    pause_resume_case("QEMU monitor stop/cont under pings, packed rings", true);
}

fn pause_resume_case(title: &str, packed: bool) {
    let _serial = serial();
    let Some(image) = image() else { return };
    let d = Daemon::start(&["p0", "p1"], &["--mode", "learning"]);
    let mut c = Case::new(title, image, d);
    c.boot(
        VmSpec::new(
            "vm-a",
            c.sock("p0"),
            MACS[0],
            &["vs.mode=link", "vs.ip=10.0.0.1/24", LINGER],
        )
        .packed(packed),
    );
    let b = c.boot(
        VmSpec::new(
            "vm-b",
            c.sock("p1"),
            MACS[1],
            &[
                "vs.mode=ping-loop",
                "vs.ip=10.0.0.2/24",
                "vs.peer=10.0.0.1",
                "vs.count=100000",
            ],
        )
        .monitor()
        .packed(packed),
    );
    let oks = |c: &Case, from: usize| {
        ping_lines(&c.vms[b])
            .iter()
            .skip(from)
            .filter(|f| is(f, "ok", "1"))
            .count()
    };
    c.wait("3 replies to vm-b's pings", 240, |c| oks(c, 0) >= 3);
    c.vms[b].hmp("stop");
    c.note("monitor: stop");
    c.wait_log("ring stopped port=p1 ring=1", 1);
    std::thread::sleep(Duration::from_secs(1));
    let n = ping_lines(&c.vms[b]).len();
    c.vms[b].hmp("cont");
    c.note("monitor: cont");
    c.wait("3 replies after cont", 30, |c| oks(c, n) >= 3);
    let ports = c.switch().ctl("ports");
    c.ensure(!ports.to_string().contains("\"broken\":true"), || {
        format!("a ring is broken after cont: {ports:#}")
    });
    c.check_no_rejection();
    c.finish();
}
