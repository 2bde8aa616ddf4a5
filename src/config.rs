//! Daemon settings: a TOML file (`--config`) merged with command-line flags.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// How packets are switched between ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// L2 learning bridge.
    #[default]
    Learning,
    /// Ports paired in order (p0<->p1, p2<->p3, ...).
    Xconnect,
}

/// Whether the switch listens or connects for a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The switch creates the socket and accepts one front-end at a time.
    Server,
    /// The switch connects to a front-end's server socket, reconnecting with backoff.
    Client,
}

/// How a port's front-end attaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A vhost-user-net backend (QEMU `-netdev vhost-user`, DPDK virtio_user).
    #[default]
    VhostUser,
    /// A vfio-user server emulating a virtio-net PCI device (QEMU `vfio-user-pci`).
    VfioUser,
}

/// One port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Unique name.
    pub name: String,
    /// Unix socket path.
    pub socket: PathBuf,
    /// Server or client mode.
    pub role: Role,
    /// vhost-user or vfio-user.
    pub transport: Transport,
    /// Queue pairs offered (GET_QUEUE_NUM).
    pub queue_pairs: u16,
    /// MAC address in the device config space.
    pub mac: [u8; 6],
    /// MACs pinned to this port in the FDB (never aged, never moved): the `static_macs`
    /// list, and the `mac` when it was configured explicitly (the port owns it).
    pub static_macs: Vec<[u8; 6]>,
    /// Source MACs this port may send from (port security); empty: any.
    pub allowed_macs: Vec<[u8; 6]>,
    /// MACs the FDB may learn on this port at once.
    pub max_learned_macs: u32,
    /// The MTU offered to the port's guest (VIRTIO_NET_F_MTU and the config space's `mtu`)
    /// and enforced on frames delivered to it; `None`: no MTU offered, no limit but
    /// `max_frame_len`.
    pub mtu: Option<u16>,
    /// Offer the checksum and TSO offloads (CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6,
    /// HOST/GUEST_ECN) to the port's guest. On by default; the switch completes checksums
    /// and segments in software for guests without them either way.
    pub offloads: bool,
}

/// Everything the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Ports, in order (xconnect pairs follow this order).
    pub ports: Vec<PortConfig>,
    /// Switching mode.
    pub mode: Mode,
    /// Cores for poll-mode threads.
    pub pmd_cores: Vec<usize>,
    /// Core for the control thread.
    pub control_core: usize,
    /// Memory regions a front-end may map per port.
    pub max_mem_slots: u32,
    /// Seconds a learned MAC stays in the FDB without being seen.
    pub fdb_aging_secs: u64,
    /// Guest memory one front-end may have mapped at once, in MiB.
    pub max_guest_memory_mb: u64,
    /// Ports the switch accepts in its configuration.
    pub max_ports: usize,
    /// Largest frame taken from a guest, in bytes after the virtio-net header.
    pub max_frame_len: u32,
    /// File descriptors one vhost-user message may carry; more closes the connection.
    pub max_fds_per_message: usize,
    /// File descriptors one front-end connection may make the switch hold at once.
    pub max_fds_per_connection: usize,
    /// Seconds a configuration change waits for every PMD before the switch exits.
    pub quiesce_timeout_secs: u64,
    /// Refuse guest memory a front-end can still shrink (only sealed memfds accepted).
    pub require_sealed_memory: bool,
    /// Longest nap of an idle PMD, in microseconds (0: PMDs never nap; see
    /// `pmd::backoff`). At most [`MAX_PMD_SLEEP_US`].
    pub pmd_sleep_max_us: u64,
}

/// A configuration that cannot run.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// TOML syntax or schema error.
    #[error("config {path}: {err}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        err: Box<toml::de::Error>,
    },
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    mode: Option<Mode>,
    pmd_cores: Option<Vec<usize>>,
    control_core: Option<usize>,
    max_mem_slots: Option<u32>,
    fdb_aging_secs: Option<u64>,
    max_guest_memory_mb: Option<u64>,
    max_ports: Option<usize>,
    max_frame_len: Option<u32>,
    max_fds_per_message: Option<usize>,
    max_fds_per_connection: Option<usize>,
    max_learned_macs: Option<u32>,
    mtu: Option<u32>,
    offloads: Option<bool>,
    quiesce_timeout_secs: Option<u64>,
    require_sealed_memory: Option<bool>,
    pmd_sleep_max_us: Option<u64>,
    #[serde(default, rename = "port")]
    ports: Vec<FilePort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePort {
    name: String,
    socket: PathBuf,
    #[serde(default)]
    client: bool,
    #[serde(default)]
    transport: Transport,
    queues: Option<u16>,
    mac: Option<String>,
    #[serde(default)]
    static_macs: Vec<String>,
    #[serde(default)]
    allowed_macs: Vec<String>,
    max_learned_macs: Option<u32>,
    mtu: Option<u32>,
    offloads: Option<bool>,
}

/// Settings given on the command line; each overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--port NAME=PATH` (server mode).
    pub server_ports: Vec<(String, PathBuf)>,
    /// `--client NAME=PATH` (client mode).
    pub client_ports: Vec<(String, PathBuf)>,
    /// `--vfio-user-port NAME=PATH` (vfio-user server).
    pub vfio_user_ports: Vec<(String, PathBuf)>,
    /// `--mode`.
    pub mode: Option<Mode>,
    /// `--pmd-cores`.
    pub pmd_cores: Option<Vec<usize>>,
    /// `--control-core`.
    pub control_core: Option<usize>,
    /// `--max-mem-slots`.
    pub max_mem_slots: Option<u32>,
    /// `--fdb-aging`.
    pub fdb_aging_secs: Option<u64>,
    /// `--max-guest-memory-mb`.
    pub max_guest_memory_mb: Option<u64>,
    /// `--max-frame-len`.
    pub max_frame_len: Option<u32>,
    /// `--max-learned-macs` (per port).
    pub max_learned_macs: Option<u32>,
    /// `--mtu` (per port).
    pub mtu: Option<u32>,
    /// `--pmd-sleep-max-us`.
    pub pmd_sleep_max_us: Option<u64>,
    /// `--no-offloads` (per port): `Some(false)`; `None` leaves the file's setting.
    pub offloads: Option<bool>,
}

/// Default cap of guest memory per front-end: 64 GiB.
pub const DEFAULT_MAX_GUEST_MEMORY_MB: u64 = 64 << 10;
/// Longest nap an idle PMD may take: traffic that arrives waits at most this long.
pub const MAX_PMD_SLEEP_US: u64 = 10_000;
/// Default cap of ports.
pub const DEFAULT_MAX_PORTS: usize = 256;
/// Default lifetime of a learned FDB entry, as in most bridges.
pub const DEFAULT_FDB_AGING_SECS: u64 = 300;
/// Default and upper limit of memory regions per port.
pub const DEFAULT_MAX_MEM_SLOTS: u32 = 32;
/// File descriptors one message may carry by default: SET_MEM_TABLE's 8 regions are the
/// most any vhost-user message needs.
pub const DEFAULT_MAX_FDS_PER_MESSAGE: usize = crate::vhost_user::wire::DEFAULT_MAX_FDS_PER_MESSAGE;
/// File descriptors one connection may make the switch hold by default.
pub const DEFAULT_MAX_FDS_PER_CONNECTION: usize = 128;
/// MACs the FDB learns per port by default (the table has 4096 slots).
pub const DEFAULT_MAX_LEARNED_MACS: u32 = pmd::switch::DEFAULT_MAX_LEARNED;
const MAX_QUEUE_PAIRS: u16 = 64;
/// The MTU range virtio allows a device to report (virtio 1.2 §5.1.4.1: at least 68, the
/// smallest IPv4 MTU; the field is 16 bits).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65_535;

/// Parses `NAME=PATH`.
pub fn parse_port_arg(arg: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = arg
        .split_once('=')
        .ok_or_else(|| format!("'{arg}' is not NAME=SOCKET_PATH"))?;
    if path.is_empty() {
        return Err(format!("'{arg}': empty socket path"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Parses a core list such as `1`, `1,3` or `2-5`.
pub fn parse_core_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("'{part}' in core list '{list}' is not N or N-M");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cores.is_empty() {
        return Err(format!("core list '{list}' is empty"));
    }
    Ok(cores)
}

/// Checks a port's MTU setting against [`MTU_RANGE`].
fn mtu_setting(port: &str, mtu: Option<u32>) -> Result<Option<u16>, ConfigError> {
    match mtu {
        None => Ok(None),
        Some(m) if MTU_RANGE.contains(&m) => Ok(Some(m as u16)),
        Some(m) => Err(invalid(format!(
            "port '{port}': mtu {m} is outside {}..={} (virtio 1.2 §5.1.4.1)",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        ))),
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || {
        invalid(format!(
            "MAC '{text}' is not six hex bytes like 02:00:00:00:00:01"
        ))
    };
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(invalid(format!("MAC '{text}' is a multicast address")));
    }
    Ok(mac)
}

/// A locally administered MAC unique to the port's position.
fn default_mac(index: usize) -> [u8; 6] {
    let i = index as u32 + 1;
    [0x02, 0x00, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

impl Config {
    /// Reads the optional file, applies the flags and validates the result against a
    /// machine with `cpus` cores.
    pub fn load(file: Option<&Path>, flags: Overrides, cpus: usize) -> Result<Config, ConfigError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
                    path: path.into(),
                    err,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|err| ConfigError::Parse {
                    path: path.into(),
                    err: Box::new(err),
                })?
            }
            None => FileConfig::default(),
        };
        Self::build(parsed, flags, cpus)
    }

    /// Parses TOML text (for tests and embedded defaults).
    pub fn from_toml(text: &str, flags: Overrides, cpus: usize) -> Result<Config, ConfigError> {
        let parsed = toml::from_str::<FileConfig>(text).map_err(|err| ConfigError::Parse {
            path: "<inline>".into(),
            err: Box::new(err),
        })?;
        Self::build(parsed, flags, cpus)
    }

    fn build(file: FileConfig, flags: Overrides, cpus: usize) -> Result<Config, ConfigError> {
        let max_learned_default = flags
            .max_learned_macs
            .or(file.max_learned_macs)
            .unwrap_or(DEFAULT_MAX_LEARNED_MACS);
        // Like max_learned_macs: the flag or the file's top level gives every port's
        // default, a port's own setting wins.
        let mtu_default = flags.mtu.or(file.mtu);
        let offloads_default = flags.offloads.or(file.offloads).unwrap_or(true);
        let mut ports: Vec<PortConfig> = Vec::new();
        for p in file.ports {
            let mac = p.mac.as_deref().map(parse_mac).transpose()?;
            let mut static_macs: Vec<[u8; 6]> = p
                .static_macs
                .iter()
                .map(|m| parse_mac(m))
                .collect::<Result<_, _>>()?;
            // A configured MAC belongs to its port: nobody else's traffic may move it.
            if let Some(mac) = mac {
                if !static_macs.contains(&mac) {
                    static_macs.push(mac);
                }
            }
            let allowed_macs = p
                .allowed_macs
                .iter()
                .map(|m| parse_mac(m))
                .collect::<Result<_, _>>()?;
            let mtu = mtu_setting(&p.name, p.mtu.or(mtu_default))?;
            ports.push(PortConfig {
                name: p.name,
                socket: p.socket,
                role: if p.client { Role::Client } else { Role::Server },
                transport: p.transport,
                queue_pairs: p.queues.unwrap_or(1),
                mac: mac.unwrap_or([0; 6]),
                static_macs,
                allowed_macs,
                max_learned_macs: p.max_learned_macs.unwrap_or(max_learned_default),
                mtu,
                offloads: p.offloads.unwrap_or(offloads_default),
            });
        }
        let flag_ports = flags
            .server_ports
            .into_iter()
            .map(|p| (p, Role::Server, Transport::VhostUser))
            .chain(
                flags
                    .client_ports
                    .into_iter()
                    .map(|p| (p, Role::Client, Transport::VhostUser)),
            )
            .chain(
                flags
                    .vfio_user_ports
                    .into_iter()
                    .map(|p| (p, Role::Server, Transport::VfioUser)),
            );
        let mut from_flags = HashSet::new();
        for ((name, socket), role, transport) in flag_ports {
            if !from_flags.insert(name.clone()) {
                return Err(invalid(format!(
                    "port name '{name}' is used twice on the command line"
                )));
            }
            match ports.iter_mut().find(|p| p.name == name) {
                Some(p) => {
                    p.socket = socket;
                    p.role = role;
                    p.transport = transport;
                }
                None => ports.push(PortConfig {
                    name: name.clone(),
                    socket,
                    role,
                    transport,
                    static_macs: Vec::new(),
                    allowed_macs: Vec::new(),
                    max_learned_macs: max_learned_default,
                    queue_pairs: 1,
                    mac: [0; 6],
                    mtu: mtu_setting(&name, mtu_default)?,
                    offloads: offloads_default,
                }),
            }
        }
        for (i, p) in ports.iter_mut().enumerate() {
            if p.mac == [0; 6] {
                p.mac = default_mac(i);
            }
        }
        let default_pmd = if cpus > 1 { vec![1] } else { vec![0] };
        let config = Config {
            ports,
            mode: flags.mode.or(file.mode).unwrap_or_default(),
            pmd_cores: flags.pmd_cores.or(file.pmd_cores).unwrap_or(default_pmd),
            control_core: flags.control_core.or(file.control_core).unwrap_or(0),
            max_mem_slots: flags
                .max_mem_slots
                .or(file.max_mem_slots)
                .unwrap_or(DEFAULT_MAX_MEM_SLOTS),
            fdb_aging_secs: flags
                .fdb_aging_secs
                .or(file.fdb_aging_secs)
                .unwrap_or(DEFAULT_FDB_AGING_SECS),
            max_guest_memory_mb: flags
                .max_guest_memory_mb
                .or(file.max_guest_memory_mb)
                .unwrap_or(DEFAULT_MAX_GUEST_MEMORY_MB),
            max_ports: file.max_ports.unwrap_or(DEFAULT_MAX_PORTS),
            max_frame_len: flags
                .max_frame_len
                .or(file.max_frame_len)
                .unwrap_or(pmd::forward::DEFAULT_MAX_FRAME),
            max_fds_per_message: file
                .max_fds_per_message
                .unwrap_or(DEFAULT_MAX_FDS_PER_MESSAGE),
            max_fds_per_connection: file
                .max_fds_per_connection
                .unwrap_or(DEFAULT_MAX_FDS_PER_CONNECTION),
            quiesce_timeout_secs: file
                .quiesce_timeout_secs
                .unwrap_or(pmd::dataplane::DEFAULT_QUIESCE_TIMEOUT.as_secs()),
            require_sealed_memory: file.require_sealed_memory.unwrap_or(false),
            pmd_sleep_max_us: flags
                .pmd_sleep_max_us
                .or(file.pmd_sleep_max_us)
                .unwrap_or(0),
        };
        config.validate(cpus)?;
        Ok(config)
    }

    fn validate(&self, cpus: usize) -> Result<(), ConfigError> {
        if self.ports.is_empty() {
            return Err(invalid("no ports: give --port NAME=SOCKET_PATH, --client NAME=SOCKET_PATH or [[port]] in --config"));
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for p in &self.ports {
            let name_ok = !p.name.is_empty()
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(format!(
                    "port name '{}' must be letters, digits, '-' or '_'",
                    p.name
                )));
            }
            if !names.insert(&p.name) {
                return Err(invalid(format!("port name '{}' is used twice", p.name)));
            }
            if !paths.insert(&p.socket) {
                return Err(invalid(format!(
                    "socket {} is used by two ports",
                    p.socket.display()
                )));
            }
            if p.transport == Transport::VfioUser && (p.role == Role::Client || p.queue_pairs != 1)
            {
                return Err(invalid(format!(
                    "port '{}': a vfio-user port is a server with one queue pair",
                    p.name
                )));
            }
            if let Some(mtu) = p.mtu {
                let frame = u32::from(mtu) + pmd::snapshot::MTU_OVERHEAD as u32;
                if frame > self.max_frame_len {
                    return Err(invalid(format!(
                        "port '{}': mtu {mtu} needs frames of {frame} bytes, longer than \
                         max_frame_len {} (raise max_frame_len or lower mtu)",
                        p.name, self.max_frame_len
                    )));
                }
            }
            if p.queue_pairs == 0 || p.queue_pairs > MAX_QUEUE_PAIRS {
                return Err(invalid(format!(
                    "port '{}': queues must be 1..={MAX_QUEUE_PAIRS}",
                    p.name
                )));
            }
        }
        if self.mode == Mode::Xconnect && !self.ports.len().is_multiple_of(2) {
            return Err(invalid(format!(
                "xconnect pairs ports in order and needs an even number of ports, got {}",
                self.ports.len()
            )));
        }
        for &core in self
            .pmd_cores
            .iter()
            .chain(std::iter::once(&self.control_core))
        {
            if core >= cpus {
                return Err(invalid(format!(
                    "core {core} does not exist (this machine has cores 0..{})",
                    cpus - 1
                )));
            }
        }
        if cpus > 1 && self.pmd_cores.contains(&self.control_core) {
            return Err(invalid(format!(
                "control core {} is also a PMD core; the control thread never runs on a PMD core",
                self.control_core
            )));
        }
        if self.ports.len() > self.max_ports {
            return Err(invalid(format!(
                "{} ports exceed max_ports = {}",
                self.ports.len(),
                self.max_ports
            )));
        }
        if self.max_guest_memory_mb == 0 {
            return Err(invalid("max_guest_memory_mb must be at least 1"));
        }
        if self.fdb_aging_secs == 0 {
            return Err(invalid("fdb_aging_secs must be at least 1"));
        }
        if self.max_frame_len < 60 {
            return Err(invalid(format!(
                "max_frame_len {} is shorter than a minimal Ethernet frame (60)",
                self.max_frame_len
            )));
        }
        if !(1..=253).contains(&self.max_fds_per_message) {
            return Err(invalid(format!(
                "max_fds_per_message {} is outside 1..=253",
                self.max_fds_per_message
            )));
        }
        if self.max_fds_per_connection < self.max_fds_per_message {
            return Err(invalid(format!(
                "max_fds_per_connection {} is smaller than max_fds_per_message {}",
                self.max_fds_per_connection, self.max_fds_per_message
            )));
        }
        for p in &self.ports {
            if p.max_learned_macs == 0 {
                return Err(invalid(format!(
                    "port '{}': max_learned_macs must be at least 1",
                    p.name
                )));
            }
        }
        if self.pmd_sleep_max_us > MAX_PMD_SLEEP_US {
            return Err(invalid(format!(
                "pmd_sleep_max_us {} is above {MAX_PMD_SLEEP_US}",
                self.pmd_sleep_max_us
            )));
        }
        if self.quiesce_timeout_secs == 0 {
            return Err(invalid("quiesce_timeout_secs must be at least 1"));
        }
        if self.max_mem_slots == 0 || self.max_mem_slots > 509 {
            return Err(invalid(format!(
                "max_mem_slots {} is outside 1..=509",
                self.max_mem_slots
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_with(ports: &[(&str, &str)]) -> Overrides {
        Overrides {
            server_ports: ports
                .iter()
                .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_override_the_file() {
        let toml = r#"
            mode = "xconnect"
            pmd_cores = [1]
            [[port]]
            name = "a"
            socket = "/tmp/a.sock"
            mac = "02:00:00:00:00:aa"
            [[port]]
            name = "b"
            socket = "/tmp/b.sock"
            client = true
        "#;
        let mut flags = flags_with(&[("b", "/tmp/b2.sock")]);
        flags.mode = Some(Mode::Learning);
        let c = Config::from_toml(toml, flags, 2).unwrap();
        assert_eq!(c.mode, Mode::Learning);
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].mac, [2, 0, 0, 0, 0, 0xaa]);
        assert_eq!(c.ports[1].socket, PathBuf::from("/tmp/b2.sock"));
        assert_eq!(c.ports[1].role, Role::Server);
        assert_eq!(c.ports[1].mac, default_mac(1));
    }

    #[test]
    fn vfio_user_ports_from_flags_and_file() {
        let toml = r#"
            [[port]]
            name = "vm"
            socket = "/tmp/vm.sock"
            transport = "vfio-user"
        "#;
        let mut flags = flags_with(&[("a", "/tmp/a.sock")]);
        flags.vfio_user_ports = vec![("b".into(), PathBuf::from("/tmp/b.sock"))];
        let c = Config::from_toml(toml, flags, 2).unwrap();
        let kinds: Vec<_> = c
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.transport))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("vm", Transport::VfioUser),
                ("a", Transport::VhostUser),
                ("b", Transport::VfioUser)
            ]
        );
        let client = r#"
            [[port]]
            name = "vm"
            socket = "/tmp/vm.sock"
            transport = "vfio-user"
            client = true
        "#;
        let err = Config::from_toml(client, Overrides::default(), 2).unwrap_err();
        assert!(
            err.to_string().contains("vfio-user port is a server"),
            "{err}"
        );
        let mq = client.replace("client = true", "queues = 2");
        assert!(Config::from_toml(&mq, Overrides::default(), 2).is_err());
        let unknown = client
            .replace("client = true", "")
            .replace("vfio-user", "tap");
        assert!(Config::from_toml(&unknown, Overrides::default(), 2).is_err());
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let two = flags_with(&[("a", "/x"), ("a", "/y")]);
        assert!(Config::from_toml("", two, 2)
            .unwrap_err()
            .to_string()
            .contains("used twice"));
        assert!(Config::from_toml("", Overrides::default(), 2)
            .unwrap_err()
            .to_string()
            .contains("no ports"));
        let mut odd = flags_with(&[("a", "/x")]);
        odd.mode = Some(Mode::Xconnect);
        assert!(Config::from_toml("", odd, 2)
            .unwrap_err()
            .to_string()
            .contains("even"));
        let mut core = flags_with(&[("a", "/x")]);
        core.pmd_cores = Some(vec![7]);
        assert!(Config::from_toml("", core, 2)
            .unwrap_err()
            .to_string()
            .contains("core 7"));
        let mut same = flags_with(&[("a", "/x")]);
        same.pmd_cores = Some(vec![0]);
        assert!(Config::from_toml("", same, 2)
            .unwrap_err()
            .to_string()
            .contains("control core"));
        let many = "max_ports = 1\n[[port]]\nname = \"a\"\nsocket = \"/a\"\n[[port]]\nname = \"b\"\nsocket = \"/b\"\n";
        assert!(Config::from_toml(many, Overrides::default(), 2)
            .unwrap_err()
            .to_string()
            .contains("exceed max_ports"));
        let unknown = "[[port]]\nname = \"a\"\nsocket = \"/x\"\ncolour = 1\n";
        assert!(matches!(
            Config::from_toml(unknown, Overrides::default(), 2),
            Err(ConfigError::Parse { .. })
        ));
        let naps = "pmd_sleep_max_us = 10001\n[[port]]\nname = \"a\"\nsocket = \"/x\"\n";
        assert!(Config::from_toml(naps, Overrides::default(), 2)
            .unwrap_err()
            .to_string()
            .contains("pmd_sleep_max_us 10001 is above 10000"));
        let mut flag = flags_with(&[("a", "/x")]);
        flag.pmd_sleep_max_us = Some(250);
        let naps_ok = "pmd_sleep_max_us = 10000\n";
        assert_eq!(
            Config::from_toml(naps_ok, flag, 2)
                .unwrap()
                .pmd_sleep_max_us,
            250,
            "the flag wins"
        );
        let mac = "[[port]]\nname = \"a\"\nsocket = \"/x\"\nmac = \"01:00:00:00:00:01\"\n";
        assert!(Config::from_toml(mac, Overrides::default(), 2)
            .unwrap_err()
            .to_string()
            .contains("multicast"));
    }

    #[test]
    fn offloads_on_by_default_off_per_port_or_for_all() {
        let toml = r#"
            [[port]]
            name = "a"
            socket = "/tmp/a.sock"
            offloads = false
            [[port]]
            name = "b"
            socket = "/tmp/b.sock"
        "#;
        let c = Config::from_toml(toml, flags_with(&[("c", "/tmp/c.sock")]), 2).unwrap();
        let on: Vec<bool> = c.ports.iter().map(|p| p.offloads).collect();
        assert_eq!(on, [false, true, true]);
        let all_off = format!("offloads = false\n{toml}");
        let c = Config::from_toml(&all_off, Overrides::default(), 2).unwrap();
        assert!(c.ports.iter().all(|p| !p.offloads));
        let mut flags = flags_with(&[("c", "/tmp/c.sock")]);
        flags.offloads = Some(false);
        let c = Config::from_toml("", flags, 2).unwrap();
        assert!(!c.ports[0].offloads, "--no-offloads");
    }

    #[test]
    fn mtu_per_port_with_a_default_from_the_flag_or_the_file() {
        let toml = r#"
            mtu = 1500
            [[port]]
            name = "a"
            socket = "/tmp/a.sock"
            mtu = 9000
            [[port]]
            name = "b"
            socket = "/tmp/b.sock"
        "#;
        let c = Config::from_toml(toml, Overrides::default(), 2).unwrap();
        assert_eq!(c.ports[0].mtu, Some(9000));
        assert_eq!(c.ports[1].mtu, Some(1500));
        let mut flags = flags_with(&[("c", "/tmp/c.sock")]);
        flags.mtu = Some(4000);
        let c = Config::from_toml(toml, flags, 2).unwrap();
        assert_eq!(c.ports[0].mtu, Some(9000), "a port's own setting wins");
        assert_eq!(c.ports[1].mtu, Some(4000));
        assert_eq!(c.ports[2].mtu, Some(4000));
        let c = Config::from_toml("", flags_with(&[("c", "/tmp/c.sock")]), 2).unwrap();
        assert_eq!(c.ports[0].mtu, None);
        for bad in [67, 65_536] {
            let mut flags = flags_with(&[("c", "/tmp/c.sock")]);
            flags.mtu = Some(bad);
            let err = Config::from_toml("", flags, 2).unwrap_err().to_string();
            assert!(
                err.contains(&format!("mtu {bad} is outside 68..=65535")),
                "{err}"
            );
        }
        let mut short = flags_with(&[("c", "/tmp/c.sock")]);
        short.mtu = Some(9000);
        short.max_frame_len = Some(1518);
        let err = Config::from_toml("", short, 2).unwrap_err().to_string();
        assert!(err.contains("longer than max_frame_len 1518"), "{err}");
        let vfio =
            "[[port]]\nname = \"v\"\nsocket = \"/v\"\ntransport = \"vfio-user\"\nmtu = 1500\n";
        let c = Config::from_toml(vfio, Overrides::default(), 2).unwrap();
        assert_eq!(
            c.ports[0].mtu,
            Some(1500),
            "vfio-user ports have an MTU too"
        );
    }

    #[test]
    fn core_lists_and_port_args() {
        assert_eq!(parse_core_list("1,3-5"), Ok(vec![1, 3, 4, 5]));
        assert!(parse_core_list("5-3").is_err());
        assert!(parse_core_list("x").is_err());
        assert_eq!(
            parse_port_arg("p0=/tmp/s"),
            Ok(("p0".into(), PathBuf::from("/tmp/s")))
        );
        assert!(parse_port_arg("p0").is_err());
    }
}
