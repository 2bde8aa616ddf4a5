//! What a run measured: per direction, per port, RFC 2544 steps; serializable (JSON) and
//! printable as a table.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::histogram::Percentiles;
use super::Mode;

/// One direction: a stream from a transmitting port, as seen by a receiving port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionReport {
    /// `tx->rx` (port names; `?` for a side outside this generator).
    pub name: String,
    /// Stream id (the transmitting port's index in its generator).
    pub stream: u8,
    /// Transmitting port, if in this generator.
    pub tx_port: Option<String>,
    /// Receiving port, if in this generator.
    pub rx_port: Option<String>,
    /// Frames sent (when the transmitter is in this generator): posted on the TX ring and
    /// taken by the backend.
    pub sent: Option<u64>,
    /// Frames posted but still on the TX ring at the end (the backend never took them;
    /// not counted in `sent`).
    pub not_taken: u64,
    /// Frames received (duplicates included).
    pub received: u64,
    /// Distinct frames received.
    pub unique: u64,
    /// Frames lost: sent − unique when the transmitter is known, else the sequence holes.
    pub lost: u64,
    /// `lost` as a percentage of what was sent (or expected).
    pub loss_pct: f64,
    /// Frames that arrived after a later frame of their flow.
    pub reordered: u64,
    /// Frames received twice.
    pub duplicated: u64,
    /// Frames received damaged (header check, or sampled / full payload verification).
    pub corrupted: u64,
    /// Transmit rate (Mpps).
    pub tx_mpps: Option<f64>,
    /// Receive rate of distinct frames (Mpps).
    pub rx_mpps: f64,
    /// The direction's rate: `rx_mpps` when a receiver is in this generator, else `tx_mpps`.
    pub mpps: f64,
    /// Line rate of `mpps` in Gbit/s, counting 20 bytes of preamble + IFG per frame.
    pub gbps: f64,
    /// Frame bytes only (no preamble, IFG or FCS), Gbit/s.
    pub gbps_l2: f64,
    /// Seconds of traffic the rates are computed over.
    pub duration_s: f64,
    /// Share of TX bursts the ring (or the in-flight window) cut short, percent. High: the
    /// backend set the pace; low with no rate limit: the generator did (it could not keep
    /// the ring full), so the rate is the generator's, not the backend's.
    pub tx_backpressure_pct: Option<f64>,
    /// One-way latency (stamp to poll), when received here.
    pub latency: Option<Percentiles>,
}

/// One port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortReport {
    /// Name.
    pub name: String,
    /// Socket path (empty in-process).
    pub socket: String,
    /// `client` (we connect), `server` (we listen) or `in-process`.
    pub role: String,
    /// Negotiated virtio features.
    pub features: String,
    /// Ring layout in use: `split` or `packed` (VIRTIO_F_RING_PACKED negotiated).
    #[serde(default)]
    pub ring: String,
    /// Whether VIRTIO_F_IN_ORDER was negotiated.
    #[serde(default)]
    pub in_order: bool,
    /// Negotiated protocol features.
    pub protocol_features: String,
    /// Net header length.
    pub hdr_len: usize,
    /// Whether hugetlb pages back the port's memory.
    pub hugepages: bool,
    /// Bytes of guest memory.
    pub memory_bytes: usize,
    /// Ring size.
    pub queue_size: u16,
    /// Frames posted for transmission.
    pub tx_packets: u64,
    /// Their bytes (frames only).
    pub tx_bytes: u64,
    /// Transmitted frames the backend had not taken at the end.
    pub tx_in_flight: usize,
    /// Frames received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Received frames that are not pktgen frames.
    pub rx_foreign: u64,
    /// Damaged pktgen frames whose stream is unknown.
    pub rx_corrupted: u64,
    /// Frames the device returned wrongly (bad num_buffers, lengths).
    pub rx_errors: u64,
    /// Frames fully verified (sampled or all).
    pub verified: u64,
    /// Frames sent back out (loopback).
    pub echoed: u64,
    /// Frames loopback could not send back (TX ring full).
    pub echo_dropped: u64,
    /// Kicks written.
    pub kicks: u64,
    /// The device error that stopped the port, if any.
    pub error: Option<String>,
}

/// One RFC 2544 trial.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rfc2544Step {
    /// `max` (unlimited), `ndr` or `pdr` search.
    pub search: String,
    /// Offered rate per direction (None: unlimited).
    pub rate_pps: Option<f64>,
    /// Frames the rate called for (all directions).
    pub offered: u64,
    /// Frames sent.
    pub sent: u64,
    /// Distinct frames received.
    pub received: u64,
    /// (offered − received) / offered, in percent.
    pub loss_pct: f64,
    /// Whether the step met the search's criterion.
    pub passed: bool,
    /// Received Mpps per direction.
    pub rx_mpps: f64,
}

/// RFC 2544 throughput search result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rfc2544Report {
    /// Seconds per trial.
    pub step_duration_s: f64,
    /// PDR's loss tolerance, percent.
    pub pdr_loss_pct: f64,
    /// Search resolution, percent of the maximum rate.
    pub resolution_pct: f64,
    /// Highest rate reached unlimited, per direction (pps).
    pub max_pps: f64,
    /// Non-drop rate: the highest rate with zero loss, per direction (pps).
    pub ndr_pps: f64,
    /// NDR in Mpps.
    pub ndr_mpps: f64,
    /// NDR line rate (Gbit/s, 20 B of preamble + IFG per frame).
    pub ndr_gbps: f64,
    /// Partial-drop rate: the highest rate with loss ≤ `pdr_loss_pct` (pps per direction).
    pub pdr_pps: f64,
    /// PDR in Mpps.
    pub pdr_mpps: f64,
    /// PDR line rate (Gbit/s).
    pub pdr_gbps: f64,
    /// Every trial, in order.
    pub steps: Vec<Rfc2544Step>,
}

/// The generator's own cost, measured against the in-process null device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SelftestReport {
    /// 1: generator and null device on one core; 2: the device on a thread of its own.
    pub threads: u32,
    /// Frames received per second, all directions.
    pub packets_per_s: f64,
    /// Wall time of the generator thread per received frame (ns).
    pub total_ns_per_packet: f64,
    /// CPU time of the generator thread / wall time (below 1 when other processes took
    /// the core).
    pub cpu_share: f64,
    /// Null device CPU time per frame, on the generator's thread (ns; 0 with 2 threads).
    pub backend_ns_per_packet: f64,
    /// Generator CPU time per frame: its TX, reclaim and RX work for one frame (ns).
    pub generator_ns_per_packet: f64,
    /// Generator ceiling implied: 1e3 / generator_ns_per_packet (Mpps, TX+RX of one frame).
    pub generator_mpps_ceiling: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Mode.
    pub mode: Mode,
    /// Frame size (`64`, `imix`...), bytes in the virtio buffer without FCS.
    pub frame_size: String,
    /// Mean frame size.
    pub avg_frame_bytes: f64,
    /// Flows per stream.
    pub flows: u32,
    /// Burst size.
    pub burst: u16,
    /// Ring size.
    pub queue_size: u16,
    /// Rate limit per direction (pps), if any.
    pub rate_pps: Option<f64>,
    /// Core the generator ran on.
    pub core: Option<usize>,
    /// Seconds of traffic.
    pub duration_s: f64,
    /// Seconds spent draining after traffic stopped.
    pub drain_s: f64,
    /// CPU time the generator thread got over its wall time, percent (below ~95: other
    /// processes ran on its core and the figures understate what the backend can do).
    pub generator_cpu_pct: f64,
    /// Share of the traffic time the generator spent in rounds that moved frames, percent.
    /// Near 100 the generator itself was the limit; lower, the backend (or `rate`) was.
    pub generator_busy_pct: f64,
    /// Bytes counted per frame on top of the frame for line-rate Gbps (preamble + SFD +
    /// IFG = 20).
    pub wire_overhead_bytes: u64,
    /// Mean over directions of their `mpps` (for rfc2544: the NDR).
    pub mpps_per_direction: f64,
    /// Sum over directions.
    pub total_mpps: f64,
    /// Per direction.
    pub directions: Vec<DirectionReport>,
    /// Per port.
    pub ports: Vec<PortReport>,
    /// RFC 2544 search, in that mode.
    pub rfc2544: Option<Rfc2544Report>,
    /// Self-test cost figures, for `selftest`.
    pub selftest: Option<SelftestReport>,
    /// Things the user should know (hugepage fallback, pinning...).
    pub warnings: Vec<String>,
    /// Errors that stopped a port.
    pub errors: Vec<String>,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

impl Report {
    /// One JSON document (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Whether the run ended without a port error, loss, or corruption.
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
            && self
                .directions
                .iter()
                .all(|d| d.lost == 0 && d.corrupted == 0)
            && self
                .ports
                .iter()
                .all(|p| p.rx_corrupted == 0 && p.rx_errors == 0)
    }

    /// A human-readable summary: one block per direction, one line per port.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let rate = self.rate_pps.map_or_else(
            || "unlimited".to_string(),
            |r| format!("{r:.0} pps/direction"),
        );
        let _ = writeln!(
            s,
            "vhost-pktgen {}: {} B frames (mean {:.1}), {} flow(s), burst {}, ring {}, rate {}, {:.2} s (+{:.2} s drain), generator CPU {:.0}% busy {:.0}%",
            self.mode,
            self.frame_size,
            self.avg_frame_bytes,
            self.flows,
            self.burst,
            self.queue_size,
            rate,
            self.duration_s,
            self.drain_s,
            self.generator_cpu_pct,
            self.generator_busy_pct
        );
        if !self.directions.is_empty() {
            let _ = writeln!(
                s,
                "{:<14} {:>12} {:>12} {:>10} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>5}",
                "direction",
                "sent",
                "received",
                "lost",
                "loss%",
                "reordered",
                "dup",
                "corrupted",
                "Mpps",
                "Gbps",
                "Gbps-L2",
                "bp%"
            );
            for d in &self.directions {
                let _ = writeln!(
                    s,
                    "{:<14} {:>12} {:>12} {:>10} {:>8.4} {:>9} {:>9} {:>9} {:>8.3} {:>8.3} {:>8.3} {:>5}",
                    d.name,
                    opt(d.sent),
                    d.received,
                    d.lost,
                    d.loss_pct,
                    d.reordered,
                    d.duplicated,
                    d.corrupted,
                    d.mpps,
                    d.gbps,
                    d.gbps_l2,
                    d.tx_backpressure_pct
                        .map_or_else(|| "-".into(), |b| format!("{b:.0}"))
                );
            }
            let _ = writeln!(
                s,
                "  (Gbps counts 20 B of preamble + IFG per frame; frame sizes exclude the 4 B FCS; Mpps over {:.2} s;\n   bp% = TX bursts cut short by a full ring: low with no rate limit means the generator, not the backend, set the rate)",
                self.duration_s
            );
            let not_taken: u64 = self.directions.iter().map(|d| d.not_taken).sum();
            if not_taken > 0 {
                let _ = writeln!(
                    s,
                    "  ({not_taken} frames were still on the TX rings at the end: the backend never took them; not counted as sent)"
                );
            }
            let lat: Vec<_> = self
                .directions
                .iter()
                .filter_map(|d| d.latency.map(|l| (d, l)))
                .filter(|(_, l)| l.samples > 0)
                .collect();
            if !lat.is_empty() {
                let _ = writeln!(
                    s,
                    "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}   (one-way latency, µs)",
                    "direction", "min", "mean", "p50", "p99", "p99.9", "max"
                );
                for (d, l) in lat {
                    let us = |ns: u64| ns as f64 / 1e3;
                    let _ = writeln!(
                        s,
                        "{:<14} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                        d.name,
                        us(l.min_ns),
                        l.mean_ns / 1e3,
                        us(l.p50_ns),
                        us(l.p99_ns),
                        us(l.p999_ns),
                        us(l.max_ns)
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "{:<8} {:>12} {:>12} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>10}  features",
            "port",
            "tx",
            "rx",
            "inflight",
            "foreign",
            "rx-err",
            "corrupt",
            "verified",
            "huge",
            "kicks"
        );
        for p in &self.ports {
            let _ = writeln!(
                s,
                "{:<8} {:>12} {:>12} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>10}  {} {}{} ({})",
                p.name,
                p.tx_packets,
                p.rx_packets,
                p.tx_in_flight,
                p.rx_foreign,
                p.rx_errors,
                p.rx_corrupted,
                p.verified,
                if p.hugepages { "yes" } else { "no" },
                p.kicks,
                p.features,
                p.ring,
                if p.in_order { " in-order" } else { "" },
                p.role
            );
        }
        if let Some(r) = &self.rfc2544 {
            let _ = writeln!(
                s,
                "RFC 2544 ({:.1} s trials, resolution {:.2}%): max {:.3} Mpps, NDR {:.3} Mpps ({:.3} Gbps), PDR({}%) {:.3} Mpps ({:.3} Gbps) per direction",
                r.step_duration_s,
                r.resolution_pct,
                r.max_pps / 1e6,
                r.ndr_mpps,
                r.ndr_gbps,
                r.pdr_loss_pct,
                r.pdr_mpps,
                r.pdr_gbps
            );
            for st in &r.steps {
                let _ = writeln!(
                    s,
                    "  {:<4} rate {:>14} sent {:>11} received {:>11} loss {:>8.4}% {}",
                    st.search,
                    st.rate_pps
                        .map_or_else(|| "unlimited".into(), |r| format!("{r:.0} pps")),
                    st.sent,
                    st.received,
                    st.loss_pct,
                    if st.passed { "pass" } else { "fail" }
                );
            }
        }
        if let Some(t) = &self.selftest {
            let _ = writeln!(
                s,
                "self-test ({} thread(s)): {:.3} Mpps received in all, {:.1} ns/packet wall (CPU share {:.0}%); CPU per packet: null device {:.1} ns, generator {:.1} ns (TX+reclaim+RX) => generator ceiling ~{:.1} Mpps on one core",
                t.threads,
                t.packets_per_s / 1e6,
                t.total_ns_per_packet,
                t.cpu_share * 100.0,
                t.backend_ns_per_packet,
                t.generator_ns_per_packet,
                t.generator_mpps_ceiling
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }
}
