//! The control socket: `vhost-switch ctl stats|ports|fdb` asks a running switch.
//!
//! Protocol: the client connects, sends one command word and a newline, and reads one
//! JSON document until EOF. The switch answers from its control thread; the socket is
//! created mode 0600 (the counters and the FDB are the operator's business).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pmd::dataplane::Dataplane;
use pmd::stats::DropReason;
use serde_json::{json, Value};

use crate::config::{Role, Transport};
use crate::connection::Connection;
use crate::port::Port;

/// Where `run` listens and `ctl` connects unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vhost-switch/control.sock";
/// How long the switch waits for a client's command line.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// A command the control socket answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Command {
    /// Per-port and per-queue packet counters, drops by reason, PMD cycles.
    Stats,
    /// Connection state, negotiated features and rings of every port.
    Ports,
    /// The learning bridge's forwarding database.
    Fdb,
}

impl Command {
    fn word(self) -> &'static str {
        match self {
            Command::Stats => "stats",
            Command::Ports => "ports",
            Command::Fdb => "fdb",
        }
    }
}

/// Creates the control socket (replacing a stale one; refusing a live one).
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "control socket {} is in use by a running switch",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Mode 0600 before the path appears: no window in which another user may connect.
    let listener = crate::listen::listen_published(path, Some(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers one client. Errors only mean that client is gone.
pub fn serve(stream: UnixStream, ports: &[Port], dataplane: &Dataplane) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(64)).read_line(&mut line)?;
    let answer = match line.trim() {
        "stats" => stats(ports, dataplane),
        "ports" => port_state(ports),
        "fdb" => fdb(dataplane),
        other => json!({ "error": format!("unknown command {other:?}; try stats, ports or fdb") }),
    };
    (&stream).write_all(answer.to_string().as_bytes())
}

fn drops_json(drops: &[u64]) -> Value {
    let map: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .zip(drops)
        .filter(|(_, &n)| n > 0)
        .map(|(r, &n)| (r.name().to_string(), json!(n)))
        .collect();
    Value::Object(map)
}

fn stats(ports: &[Port], dataplane: &Dataplane) -> Value {
    let totals = dataplane.port_totals();
    let ports_json: Vec<Value> = ports
        .iter()
        .zip(&totals)
        .enumerate()
        .map(|(index, (port, t))| {
            let rings: Vec<Value> = t
                .rings
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    json!({
                        "ring": i,
                        "direction": if i % 2 == 1 { "from_guest" } else { "to_guest" },
                        "packets": r.packets,
                        "bytes": r.bytes,
                        "forwarded": r.forwarded,
                        "csum_completed": r.csum_completed,
                        "segmented": r.segmented,
                        "dropped": r.dropped(),
                        "drops": drops_json(&r.drops),
                    })
                })
                .collect();
            let side = |odd: bool| {
                t.rings
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (i % 2 == 1) == odd)
                    .fold((0u64, 0u64, 0u64, 0u64), |acc, (_, r)| {
                        (
                            acc.0 + r.packets,
                            acc.1 + r.bytes,
                            acc.2 + r.dropped(),
                            acc.3 + r.forwarded,
                        )
                    })
            };
            let (rx_p, rx_b, rx_d, fwd) = side(true);
            let (tx_p, tx_b, tx_d, _) = side(false);
            let c = &port.counters;
            let (learned, learn_refused) = dataplane.fdb_port_counts(index);
            json!({
                "name": port.config.name,
                "connected": port.session.is_some(),
                "rx_packets": rx_p, "rx_bytes": rx_b, "rx_forwarded": fwd, "rx_dropped": rx_d,
                "tx_packets": tx_p, "tx_bytes": tx_b, "tx_dropped": tx_d,
                "rings": rings,
                "fdb": { "learned": learned, "learn_refused": learn_refused },
                "control": {
                    "connections": c.connections, "requests": c.requests, "rejected": c.rejected,
                    "nacked": c.nacked, "framing_errors": c.framing_errors,
                    "memory_faults": c.memory_faults,
                },
            })
        })
        .collect();
    let pmds: Vec<Value> = dataplane
        .pmd_totals()
        .into_iter()
        .map(|p| {
            let assigned: Vec<String> = p
                .assigned
                .iter()
                .map(|(n, r)| format!("{n}/ring{r}"))
                .collect();
            json!({
                "core": p.core,
                "queues": assigned,
                "busy_cycles": p.busy_cycles,
                "idle_cycles": p.idle_cycles,
                "max_gap_cycles": p.max_gap_cycles,
                "naps": p.naps,
                "napped_ns": p.napped_ns,
            })
        })
        .collect();
    json!({ "mode": format!("{:?}", dataplane.mode()).to_lowercase(), "ports": ports_json, "pmds": pmds })
}

fn port_state(ports: &[Port]) -> Value {
    let list: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({
                "name": p.config.name,
                "socket": p.config.socket,
                "role": match p.config.role { Role::Server => "server", Role::Client => "client" },
                "mac": mac_string(p.config.mac),
                "mtu": p.config.mtu,
                "offloads": p.config.offloads,
                "connected": p.session.is_some(),
                "last_disconnect": p.last_end,
            });
            v["transport"] = json!(match p.config.transport {
                Transport::VhostUser => "vhost-user",
                Transport::VfioUser => "vfio-user",
            });
            if let Some(Connection::VfioUser(s)) = &p.session {
                let d = s.device();
                v["features"] = json!(format!("{:#x}", d.driver_features()));
                v["status"] = json!(d.status());
                v["dma_maps"] = json!(d.dma_maps());
                v["memory_regions"] = json!(d.memory().regions().len());
                v["rings"] = json!(d
                    .started_rings()
                    .iter()
                    .enumerate()
                    .map(|(i, started)| json!({ "ring": i, "started": started }))
                    .collect::<Vec<_>>());
            }
            if let Some(Connection::VhostUser(s)) = &p.session {
                let d = s.device();
                let rings: Vec<Value> = d
                    .rings()
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        json!({
                            "ring": i, "started": r.started, "enable_request": r.enable_request,
                            "size": r.size, "base": r.base,
                            "broken": r.shared.as_ref().map(|s| s.broken() != 0).unwrap_or(false),
                        })
                    })
                    .collect();
                v["features"] = json!(d.acked_features().map(|f| format!("{f:#x}")));
                v["protocol_features"] = json!(format!("{:#x}", d.protocol_features()));
                v["status"] = json!(d.status());
                v["memory_regions"] = json!(d.memory().regions().len());
                // What the data plane enforces: NET_SET_MTU's value, else the setting.
                v["guest_mtu"] = json!(d.mtu());
                v["rings"] = json!(rings);
            }
            v
        })
        .collect();
    json!({ "ports": list })
}

fn fdb(dataplane: &Dataplane) -> Value {
    let mut entries = dataplane.fdb();
    entries.sort_by_key(|e| e.0.mac);
    let list: Vec<Value> = entries
        .into_iter()
        .map(|(e, name)| json!({ "mac": mac_string(e.mac), "port": name, "static": e.is_static, "age_secs": e.age_secs }))
        .collect();
    json!({ "mode": format!("{:?}", dataplane.mode()).to_lowercase(), "entries": list })
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Asks a running switch; returns its JSON answer.
pub fn query(path: &Path, command: Command) -> anyhow::Result<Value> {
    use anyhow::Context;
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the switch at {} (is it running? --control-socket)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(stream, "{}", command.word())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let value: Value =
        serde_json::from_str(&text).context("the switch sent something that is not JSON")?;
    if let Some(err) = value.get("error") {
        anyhow::bail!("the switch refused the command: {err}");
    }
    Ok(value)
}

/// Renders an answer as a human table.
pub fn render(command: Command, v: &Value) -> String {
    let mut out = String::new();
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let empty = Vec::new();
    match command {
        Command::Stats => {
            out += &format!("mode: {}\n", s(v, "mode"));
            out += &format!(
                "{:<12} {:>9} {:>12} {:>14} {:>10} {:>12} {:>14} {:>10}\n",
                "port",
                "connected",
                "rx_packets",
                "rx_bytes",
                "rx_drops",
                "tx_packets",
                "tx_bytes",
                "tx_drops"
            );
            let ports = v.get("ports").and_then(Value::as_array).unwrap_or(&empty);
            for p in ports {
                out += &format!(
                    "{:<12} {:>9} {:>12} {:>14} {:>10} {:>12} {:>14} {:>10}\n",
                    s(p, "name"),
                    p.get("connected").and_then(Value::as_bool).unwrap_or(false),
                    u(p, "rx_packets"),
                    u(p, "rx_bytes"),
                    u(p, "rx_dropped"),
                    u(p, "tx_packets"),
                    u(p, "tx_bytes"),
                    u(p, "tx_dropped")
                );
            }
            out += "\ndrops by reason (port ring: reason=count)\n";
            for p in ports {
                for r in p.get("rings").and_then(Value::as_array).unwrap_or(&empty) {
                    if let Some(d) = r
                        .get("drops")
                        .and_then(Value::as_object)
                        .filter(|d| !d.is_empty())
                    {
                        let list: Vec<String> = d.iter().map(|(k, n)| format!("{k}={n}")).collect();
                        out += &format!(
                            "  {} ring{}: {}\n",
                            s(p, "name"),
                            u(r, "ring"),
                            list.join(" ")
                        );
                    }
                }
            }
            let mut offload_lines = String::new();
            for p in ports {
                for r in p.get("rings").and_then(Value::as_array).unwrap_or(&empty) {
                    let (c, g) = (u(r, "csum_completed"), u(r, "segmented"));
                    if c != 0 || g != 0 {
                        offload_lines += &format!(
                            "  {} ring{}: csum_completed={c} segmented={g}\n",
                            s(p, "name"),
                            u(r, "ring")
                        );
                    }
                }
            }
            if !offload_lines.is_empty() {
                out += "\nsoftware offloads (port ring: frames)\n";
                out += &offload_lines;
            }
            out += "\npmd  busy_cycles   idle_cycles         naps   napped_ms   queues\n";
            for m in v.get("pmds").and_then(Value::as_array).unwrap_or(&empty) {
                let queues: Vec<String> = m
                    .get("queues")
                    .and_then(Value::as_array)
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(|q| q.as_str().map(String::from))
                    .collect();
                out += &format!(
                    "{:<4} {:>11} {:>13} {:>12} {:>11}   {}\n",
                    u(m, "core"),
                    u(m, "busy_cycles"),
                    u(m, "idle_cycles"),
                    u(m, "naps"),
                    u(m, "napped_ns") / 1_000_000,
                    queues.join(" ")
                );
            }
        }
        Command::Ports => {
            out += &format!(
                "{:<12} {:<7} {:<10} {:<19} {:<20} {:<8} {:<6} socket\n",
                "port", "role", "connected", "mac", "features", "rings", "mtu"
            );
            for p in v.get("ports").and_then(Value::as_array).unwrap_or(&empty) {
                let rings = p.get("rings").and_then(Value::as_array).map(|r| {
                    r.iter()
                        .filter(|x| x.get("started").and_then(Value::as_bool) == Some(true))
                        .count()
                });
                // The MTU enforced: NET_SET_MTU's while connected, else the setting.
                let mtu = ["guest_mtu", "mtu"]
                    .iter()
                    .find_map(|k| p.get(*k).and_then(Value::as_u64))
                    .map_or_else(|| "-".to_string(), |m| m.to_string());
                out += &format!(
                    "{:<12} {:<7} {:<10} {:<19} {:<20} {:<8} {:<6} {}\n",
                    s(p, "name"),
                    s(p, "role"),
                    p.get("connected").and_then(Value::as_bool).unwrap_or(false),
                    s(p, "mac"),
                    s(p, "features"),
                    rings
                        .map(|n| format!("{n} up"))
                        .unwrap_or_else(|| "-".into()),
                    mtu,
                    s(p, "socket")
                );
            }
        }
        Command::Fdb => {
            out += &format!(
                "mode: {}\n{:<19} {:<12} {:<7} age_secs\n",
                s(v, "mode"),
                "mac",
                "port",
                "static"
            );
            for e in v.get("entries").and_then(Value::as_array).unwrap_or(&empty) {
                out += &format!(
                    "{:<19} {:<12} {:<7} {}\n",
                    s(e, "mac"),
                    s(e, "port"),
                    e.get("static").and_then(Value::as_bool).unwrap_or(false),
                    u(e, "age_secs")
                );
            }
        }
    }
    out
}

/// The control socket path to use.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_table_shows_the_mtu_in_force() {
        let port = |name: &str, mtu: Value, guest_mtu: Value| {
            json!({ "name": name, "role": "server", "connected": true, "mac": "02:00:00:00:00:01",
                    "mtu": mtu, "guest_mtu": guest_mtu, "socket": "/s" })
        };
        let v = json!({ "ports": [
            port("a", json!(9000), json!(1500)),
            port("b", json!(9000), Value::Null),
            port("c", Value::Null, Value::Null),
        ] });
        let out = render(Command::Ports, &v);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains(" mtu "), "{out}");
        let mtu_of = |line: &str| line.split_whitespace().nth(6).unwrap_or("").to_string();
        assert_eq!(mtu_of(lines[1]), "1500", "{out}");
        assert_eq!(mtu_of(lines[2]), "9000", "{out}");
        assert_eq!(mtu_of(lines[3]), "-", "{out}");
    }

    #[test]
    fn stats_text_lists_software_offloads_only_where_there_were_some() {
        let ring = |i: u64, c: u64, g: u64| json!({ "ring": i, "packets": 1, "drops": {}, "csum_completed": c, "segmented": g });
        let v = json!({ "mode": "learning", "ports": [
            { "name": "a", "connected": true, "rings": [ring(0, 3, 2), ring(1, 0, 0)] },
            { "name": "b", "connected": true, "rings": [ring(0, 0, 0), ring(1, 0, 0)] },
        ], "pmds": [] });
        let out = render(Command::Stats, &v);
        assert!(out.contains("software offloads"), "{out}");
        assert!(
            out.contains("  a ring0: csum_completed=3 segmented=2\n"),
            "{out}"
        );
        assert!(!out.contains("b ring0: csum"), "{out}");
        let quiet = json!({ "mode": "learning", "ports": [
            { "name": "b", "connected": true, "rings": [ring(0, 0, 0)] },
        ], "pmds": [] });
        assert!(!render(Command::Stats, &quiet).contains("software offloads"));
    }
}
