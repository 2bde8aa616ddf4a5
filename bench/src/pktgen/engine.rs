//! The generator loop: one thread polls every port (RX, TX reclaim, TX generation) in turn,
//! reads the clock once per round, prints progress once a second; phases of traffic are
//! followed by a drain; RFC 2544 runs trials of a binary search.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::clock::now_ns;
use super::frame::WIRE_OVERHEAD;
use super::port::{classes, PortRole, PortRt};
use super::rate::RateLimiter;
use super::report::{DirectionReport, PortReport, Report, Rfc2544Report, Rfc2544Step};
use super::{Config, FrameSize, Mode, Progress};
use vhost_kit::sequences::bits::F_IN_ORDER;

/// Default rate of the latency mode (pps per direction).
pub const LATENCY_DEFAULT_PPS: f64 = 10_000.0;
/// Shortfall (offered − sent) tolerated by the NDR criterion, as a fraction of offered.
const NDR_SHORTFALL: f64 = 0.001;
/// Drain ends when nothing is in flight and nothing arrived for this long.
const QUIET_NS: u64 = 20_000_000;

/// A direction the topology defines: stream `stream` from port `tx` to port `rx`.
#[derive(Debug, Clone)]
pub(crate) struct Direction {
    pub stream: u8,
    pub tx: Option<usize>,
    pub rx: Option<usize>,
}

/// Port roles and directions of a mode over `n` ports.
pub(crate) fn topology(cfg: &Config, n: usize) -> (Vec<PortRole>, Vec<Direction>) {
    let mut roles = vec![PortRole::default(); n];
    let mut dirs = Vec::new();
    match cfg.mode {
        Mode::TxOnly => {
            for (i, r) in roles.iter_mut().enumerate() {
                r.tx_to = Some(u8::MAX);
                dirs.push(Direction {
                    stream: i as u8,
                    tx: Some(i),
                    rx: None,
                });
            }
        }
        Mode::RxOnly => roles.iter_mut().for_each(|r| r.rx = true),
        Mode::Loopback => roles.iter_mut().for_each(|r| {
            r.rx = true;
            r.echo = true;
        }),
        Mode::Pair | Mode::Latency | Mode::Rfc2544 => {
            if n == 1 {
                roles[0] = PortRole {
                    tx_to: Some(0),
                    rx: true,
                    echo: false,
                    closed_loop: false,
                };
                dirs.push(Direction {
                    stream: 0,
                    tx: Some(0),
                    rx: Some(0),
                });
            }
            for a in (0..n.saturating_sub(1)).step_by(2) {
                let b = a + 1;
                roles[a] = PortRole {
                    tx_to: Some(b as u8),
                    rx: true,
                    echo: false,
                    closed_loop: true,
                };
                roles[b] = PortRole {
                    tx_to: cfg.bidirectional.then_some(a as u8),
                    rx: true,
                    echo: false,
                    closed_loop: true,
                };
                dirs.push(Direction {
                    stream: a as u8,
                    tx: Some(a),
                    rx: Some(b),
                });
                if cfg.bidirectional {
                    dirs.push(Direction {
                        stream: b as u8,
                        tx: Some(b),
                        rx: Some(a),
                    });
                }
            }
        }
    }
    (roles, dirs)
}

/// Cumulative counts of one direction at an instant.
#[derive(Debug, Clone, Copy, Default)]
struct DirSnap {
    sent: u64,
    sent_bytes: u64,
    unique: u64,
    rx_bytes: u64,
    holes: u64,
}

/// Live progress: one line per second, rewritten in place on a terminal.
struct Ticker {
    mode: Progress,
    tty: bool,
    last_ns: u64,
    start_ns: u64,
    last: Vec<DirSnap>,
    last_port_rx: Vec<u64>,
    printed: bool,
    width: usize,
}

impl Ticker {
    fn new(mode: Progress) -> Self {
        let tty = match mode {
            Progress::Off => false,
            Progress::Stdout => std::io::stdout().is_terminal(),
            Progress::Stderr => std::io::stderr().is_terminal(),
        };
        Ticker {
            mode,
            tty,
            last_ns: 0,
            start_ns: 0,
            last: Vec::new(),
            last_port_rx: Vec::new(),
            printed: false,
            width: 0,
        }
    }

    fn start(&mut self, now: u64, snaps: Vec<DirSnap>, port_rx: Vec<u64>) {
        self.start_ns = now;
        self.last_ns = now;
        self.last = snaps;
        self.last_port_rx = port_rx;
    }

    fn emit(&mut self, line: &str) {
        let mut out: Box<dyn Write> = match self.mode {
            Progress::Off => return,
            Progress::Stdout => Box::new(std::io::stdout().lock()),
            Progress::Stderr => Box::new(std::io::stderr().lock()),
        };
        let _ = if self.tty {
            let pad = self.width.saturating_sub(line.len());
            self.width = line.len();
            write!(out, "\r{line}{:pad$}", "")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
        self.printed = true;
    }

    fn tick(&mut self, e: &Engine<'_, '_>, now: u64, label: &str) {
        if self.mode == Progress::Off {
            return;
        }
        let snaps = e.snapshot();
        let port_rx: Vec<u64> = e.ports.iter().map(|p| p.c.rx_packets).collect();
        let dt = (now.saturating_sub(self.last_ns)).max(1) as f64 / 1e9;
        let mut line = format!("[{:5.1}s]{label}", (now - self.start_ns) as f64 / 1e9);
        if e.dirs.is_empty() {
            for (i, p) in e.ports.iter().enumerate() {
                let d = port_rx[i].saturating_sub(*self.last_port_rx.get(i).unwrap_or(&0));
                line += &format!(" | {} rx {:.3} Mpps", p.name, d as f64 / dt / 1e6);
            }
        }
        for (k, d) in e.dirs.iter().enumerate() {
            let (s, l) = (snaps[k], self.last.get(k).copied().unwrap_or_default());
            let (pkts, bytes) = if d.rx.is_some() {
                (
                    s.unique - l.unique.min(s.unique),
                    s.rx_bytes.saturating_sub(l.rx_bytes),
                )
            } else {
                (
                    s.sent.saturating_sub(l.sent),
                    s.sent_bytes.saturating_sub(l.sent_bytes),
                )
            };
            let gbps = (bytes + pkts * WIRE_OVERHEAD) as f64 * 8.0 / dt / 1e9;
            line += &format!(
                " | {} {:.3} Mpps {:.2} Gbps",
                e.dir_name(d),
                pkts as f64 / dt / 1e6,
                gbps
            );
            if d.rx.is_some() {
                line += &format!(" loss {}", s.holes);
            }
        }
        self.emit(&line);
        self.last = snaps;
        self.last_port_rx = port_rx;
        self.last_ns = now;
    }

    fn finish(&mut self) {
        if self.tty && self.printed {
            match self.mode {
                Progress::Stdout => println!(),
                Progress::Stderr => eprintln!(),
                Progress::Off => {}
            }
            self.printed = false;
            self.width = 0;
        }
    }
}

/// The generator over its ports.
pub(crate) struct Engine<'c, 'm> {
    pub cfg: &'c Config,
    pub ports: Vec<PortRt<'m>>,
    pub dirs: Vec<Direction>,
    pub traffic_ns: u64,
    pub drain_ns: u64,
    /// Traffic time spent in rounds that found no work.
    pub idle_ns: u64,
    pub errors: Vec<String>,
}

impl<'c, 'm> Engine<'c, 'm> {
    pub fn new(cfg: &'c Config, ports: Vec<PortRt<'m>>, dirs: Vec<Direction>) -> Self {
        Engine {
            cfg,
            ports,
            dirs,
            traffic_ns: 0,
            drain_ns: 0,
            idle_ns: 0,
            errors: Vec::new(),
        }
    }

    fn stopped(&self) -> bool {
        self.cfg
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn dir_name(&self, d: &Direction) -> String {
        let name = |p: Option<usize>| p.map_or("?".to_string(), |i| self.ports[i].name.clone());
        match d.tx {
            Some(_) => format!("{}->{}", name(d.tx), name(d.rx)),
            None => format!("s{}->{}", d.stream, name(d.rx)),
        }
    }

    fn snapshot(&self) -> Vec<DirSnap> {
        self.dirs
            .iter()
            .map(|d| {
                let mut s = DirSnap::default();
                if let Some(t) = d.tx {
                    if let Some(g) = self.ports[t].tx.as_ref() {
                        // Taken by the backend: posted minus still on the ring.
                        s.sent = g
                            .sent
                            .saturating_sub(self.ports[t].net.tx_in_flight() as u64);
                        s.sent_bytes = g.sent_bytes;
                    }
                }
                if let Some(r) =
                    d.rx.and_then(|r| self.ports[r].dirs[usize::from(d.stream)].as_ref())
                {
                    let c = r.seq.counts();
                    s.unique = c.unique;
                    s.holes = c.holes;
                    s.rx_bytes = r.bytes;
                }
                s
            })
            .collect()
    }

    /// One round over every live port; returns the work done (frames moved).
    #[inline]
    fn poll_all(&mut self, now: u64, hook: &mut dyn FnMut()) -> usize {
        let mut work = 0;
        for p in self.ports.iter_mut() {
            if !p.alive() {
                continue;
            }
            let r = p
                .rx_burst()
                .and_then(|a| Ok(a + p.reclaim()?))
                .and_then(|a| Ok(a + p.tx_burst(now)?));
            match r {
                Ok(w) => work += w,
                Err(e) => {
                    let msg = format!("port {}: {e}; port stopped", p.name);
                    tracing::error!("{msg}");
                    self.errors.push(msg);
                    p.error = Some(e.to_string());
                }
            }
        }
        hook();
        work
    }

    fn set_tx(&mut self, rate: Option<f64>, active: bool) {
        let burst = u32::from(self.cfg.burst);
        for p in &mut self.ports {
            if let Some(g) = p.tx.as_mut() {
                if active {
                    g.limiter = RateLimiter::new(rate, burst);
                }
                g.active = active;
            }
        }
    }

    /// Traffic for `dur` at `rate` per stream; returns the nanoseconds it lasted.
    fn phase(
        &mut self,
        dur: Duration,
        rate: Option<f64>,
        ticker: &mut Ticker,
        label: &str,
        hook: &mut dyn FnMut(),
    ) -> u64 {
        self.set_tx(rate, true);
        let start = now_ns();
        let end = start.saturating_add(dur.as_nanos().min(u128::from(u64::MAX)) as u64);
        let mut tick = start + 1_000_000_000;
        ticker.start(
            start,
            self.snapshot(),
            self.ports.iter().map(|p| p.c.rx_packets).collect(),
        );
        let (mut prev, mut prev_idle) = (start, false);
        loop {
            let now = now_ns();
            if prev_idle {
                // The previous round found nothing to do: the backend (or the rate) set
                // the pace, not the generator.
                self.idle_ns += now - prev;
            }
            prev = now;
            if now >= end || self.stopped() {
                break;
            }
            let work = self.poll_all(now, hook);
            if now >= tick {
                ticker.tick(self, now, label);
                tick += 1_000_000_000;
            }
            prev_idle = work == 0;
            if prev_idle {
                std::hint::spin_loop();
            }
        }
        self.set_tx(None, false);
        let elapsed = now_ns() - start;
        self.traffic_ns += elapsed;
        elapsed
    }

    /// After TX stopped: keeps receiving and reclaiming until everything sent here was
    /// received (or nothing is in flight and nothing arrived for a while), at most the
    /// configured drain time.
    fn drain(&mut self, hook: &mut dyn FnMut()) {
        let start = now_ns();
        let max = self.cfg.drain.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut quiet_since = None;
        loop {
            let now = now_ns();
            let work = self.poll_all(now, hook);
            let in_flight: usize = self
                .ports
                .iter()
                .filter(|p| p.alive())
                .map(|p| p.net.tx_in_flight())
                .sum();
            let snaps = self.snapshot();
            let complete = self
                .dirs
                .iter()
                .zip(&snaps)
                .all(|(d, s)| d.rx.is_none() || s.unique >= s.sent);
            if (in_flight == 0 && complete) || now - start >= max {
                break;
            }
            if in_flight == 0 && work == 0 {
                if now - *quiet_since.get_or_insert(now) >= QUIET_NS.min(max) {
                    break;
                }
            } else {
                quiet_since = None;
            }
        }
        self.drain_ns += now_ns() - start;
    }

    /// Runs the configured mode; returns the RFC 2544 result in that mode.
    pub fn run(&mut self, hook: &mut dyn FnMut()) -> Option<Rfc2544Report> {
        let mut ticker = Ticker::new(self.cfg.progress);
        let out = match self.cfg.mode {
            Mode::Rfc2544 => Some(self.rfc2544(&mut ticker, hook)),
            mode => {
                let rate = match (mode, self.cfg.rate_pps) {
                    (Mode::Latency, None) => Some(LATENCY_DEFAULT_PPS),
                    (_, r) => r,
                };
                self.phase(self.cfg.duration, rate, &mut ticker, "", hook);
                self.drain(hook);
                None
            }
        };
        ticker.finish();
        out
    }

    fn streams(&self) -> usize {
        self.dirs
            .iter()
            .filter(|d| d.tx.is_some() && d.rx.is_some())
            .count()
            .max(1)
    }

    /// One RFC 2544 trial at `rate` per direction.
    fn trial(
        &mut self,
        search: &str,
        rate: Option<f64>,
        ticker: &mut Ticker,
        hook: &mut dyn FnMut(),
    ) -> Rfc2544Step {
        let before = self.snapshot();
        let label = match rate {
            Some(r) => format!(" {search} {:.3} Mpps", r / 1e6),
            None => format!(" {search} unlimited"),
        };
        let ns = self.phase(self.cfg.rfc2544.step_duration, rate, ticker, &label, hook);
        self.drain(hook);
        ticker.finish();
        let after = self.snapshot();
        let (mut sent, mut received) = (0u64, 0u64);
        for ((d, a), b) in self.dirs.iter().zip(&after).zip(&before) {
            if d.tx.is_some() && d.rx.is_some() {
                let s = a.sent - b.sent;
                sent += s;
                received += (a.unique.saturating_sub(b.unique)).min(s);
            }
        }
        let secs = ns as f64 / 1e9;
        let n = self.streams() as f64;
        let offered = rate.map_or(sent, |r| ((r * secs * n) as u64).max(sent));
        let loss = offered.saturating_sub(received);
        let loss_frac = if offered == 0 {
            1.0
        } else {
            loss as f64 / offered as f64
        };
        let passed = match search {
            "pdr" => offered > 0 && loss_frac <= self.cfg.rfc2544.pdr_loss,
            _ => {
                offered > 0
                    && received == sent
                    && (offered - sent) as f64 <= NDR_SHORTFALL * offered as f64
            }
        };
        Rfc2544Step {
            search: search.into(),
            rate_pps: rate,
            offered,
            sent,
            received,
            loss_pct: loss_frac * 100.0,
            passed,
            rx_mpps: received as f64 / secs.max(1e-9) / n / 1e6,
        }
    }

    fn rfc2544(&mut self, ticker: &mut Ticker, hook: &mut dyn FnMut()) -> Rfc2544Report {
        let o = self.cfg.rfc2544.clone();
        let mut steps = Vec::new();
        let first = self.trial("max", self.cfg.rate_pps, ticker, hook);
        let n = self.streams() as f64;
        let secs = o.step_duration.as_secs_f64().max(1e-9);
        let hi0 = self.cfg.rate_pps.unwrap_or(first.sent as f64 / secs / n);
        let first_ndr = first.received == first.sent
            && (first.offered - first.sent) as f64 <= NDR_SHORTFALL * first.offered as f64;
        let first_pdr = first.offered > 0 && first.loss_pct / 100.0 <= o.pdr_loss;
        steps.push(first);
        let mut search = |engine: &mut Self, name: &str, lo0: f64, steps: &mut Vec<Rfc2544Step>| {
            let (mut lo, mut hi) = (lo0, hi0);
            let mut k = 0;
            while hi - lo > o.resolution * hi0 && k < o.max_steps && !engine.stopped() {
                let mid = (lo + hi) / 2.0;
                let st = engine.trial(name, Some(mid), ticker, hook);
                if st.passed {
                    lo = mid;
                } else {
                    hi = mid;
                }
                steps.push(st);
                k += 1;
            }
            lo
        };
        let ndr = if first_ndr {
            hi0
        } else {
            search(self, "ndr", 0.0, &mut steps)
        };
        let pdr = if first_pdr {
            hi0
        } else {
            search(self, "pdr", ndr, &mut steps)
        };
        let frame = self.avg_frame();
        let gbps = |pps: f64| pps * (frame + WIRE_OVERHEAD as f64) * 8.0 / 1e9;
        Rfc2544Report {
            step_duration_s: secs,
            pdr_loss_pct: o.pdr_loss * 100.0,
            resolution_pct: o.resolution * 100.0,
            max_pps: hi0,
            ndr_pps: ndr,
            ndr_mpps: ndr / 1e6,
            ndr_gbps: gbps(ndr),
            pdr_pps: pdr,
            pdr_mpps: pdr / 1e6,
            pdr_gbps: gbps(pdr),
            steps,
        }
    }

    fn avg_frame(&self) -> f64 {
        let (sizes, pattern) = classes(&self.cfg.size);
        pattern
            .iter()
            .map(|&c| sizes[usize::from(c)] as f64)
            .sum::<f64>()
            / pattern.len() as f64
    }

    /// The report of everything so far.
    pub fn report(&self) -> Report {
        let secs = (self.traffic_ns as f64 / 1e9).max(1e-9);
        let mut directions = Vec::new();
        let mut known = vec![[false; 256]; self.ports.len()];
        let one = |d: &Direction| {
            let g = d.tx.and_then(|t| self.ports[t].tx.as_ref());
            let r =
                d.rx.and_then(|r| self.ports[r].dirs[usize::from(d.stream)].as_ref());
            let c = r.map(|r| r.seq.counts()).unwrap_or_default();
            // Frames still on the TX ring were never taken by the backend: not sent.
            let not_taken = match g {
                Some(_) => d.tx.map_or(0, |t| self.ports[t].net.tx_in_flight() as u64),
                None => 0,
            };
            let sent = g.map(|g| g.sent.saturating_sub(not_taken));
            let lost = match (sent, d.rx) {
                (Some(s), Some(_)) => s.saturating_sub(c.unique),
                _ => c.holes,
            };
            let expected = sent.unwrap_or(c.unique + c.holes);
            let tx_mpps = g.map(|g| g.sent as f64 / secs / 1e6);
            let rx_mpps = c.unique as f64 / secs / 1e6;
            let (pkts, bytes) = match (d.rx, g) {
                (Some(_), _) => (c.unique, r.map_or(0, |r| r.bytes)),
                (None, Some(g)) => (g.sent, g.sent_bytes),
                (None, None) => (0, 0),
            };
            let l2 = bytes as f64 * 8.0 / secs / 1e9;
            DirectionReport {
                name: self.dir_name(d),
                stream: d.stream,
                tx_port: d.tx.map(|i| self.ports[i].name.clone()),
                rx_port: d.rx.map(|i| self.ports[i].name.clone()),
                sent,
                not_taken,
                received: c.received,
                unique: c.unique,
                lost,
                loss_pct: if expected == 0 {
                    0.0
                } else {
                    lost as f64 * 100.0 / expected as f64
                },
                reordered: c.reordered,
                duplicated: c.duplicated,
                corrupted: r.map_or(0, |r| r.corrupted),
                tx_mpps,
                rx_mpps,
                mpps: if d.rx.is_some() {
                    rx_mpps
                } else {
                    tx_mpps.unwrap_or(0.0)
                },
                gbps: l2 + (pkts * WIRE_OVERHEAD) as f64 * 8.0 / secs / 1e9,
                gbps_l2: l2,
                duration_s: secs,
                tx_backpressure_pct: g
                    .filter(|g| g.bursts > 0)
                    .map(|g| 100.0 * g.blocked as f64 / g.bursts as f64),
                latency: r.map(|r| r.hist.percentiles()).filter(|l| l.samples > 0),
            }
        };
        for d in &self.dirs {
            directions.push(one(d));
            if let Some(r) = d.rx {
                known[r][usize::from(d.stream)] = true;
            }
        }
        let configured = directions.len();
        for (r, p) in self.ports.iter().enumerate() {
            for (s, d) in p.dirs.iter().enumerate() {
                if d.is_some() && !known[r][s] {
                    let d = Direction {
                        stream: s as u8,
                        tx: None,
                        rx: Some(r),
                    };
                    directions.push(one(&d));
                }
            }
        }
        let main = if configured > 0 {
            &directions[..configured]
        } else {
            &directions[..]
        };
        let total: f64 = main.iter().map(|d| d.mpps).sum();
        let ports = self
            .ports
            .iter()
            .map(|p| PortReport {
                name: p.name.clone(),
                socket: p.info.socket.clone(),
                role: p.info.role.clone(),
                features: format!("{:#x}", p.net.features()),
                ring: p.net.rx_queue().layout().name().to_string(),
                in_order: p.net.features() & F_IN_ORDER != 0,
                protocol_features: format!("{:#x}", p.info.protocol_features),
                hdr_len: p.net.hdr_len(),
                hugepages: p.info.hugepages,
                memory_bytes: p.info.memory_bytes,
                queue_size: self.cfg.queue_size,
                tx_packets: p.c.tx_packets,
                tx_bytes: p.c.tx_bytes,
                tx_in_flight: p.net.tx_in_flight(),
                rx_packets: p.c.rx_packets,
                rx_bytes: p.c.rx_bytes,
                rx_foreign: p.c.rx_foreign,
                rx_corrupted: p.c.rx_corrupt,
                rx_errors: p.c.rx_errors,
                verified: p.c.verified,
                echoed: p.c.echoed,
                echo_dropped: p.c.echo_dropped,
                kicks: p.net.stats().kicks,
                error: p.error.clone(),
            })
            .collect();
        let rate_pps = match (self.cfg.mode, self.cfg.rate_pps) {
            (Mode::Latency, None) => Some(LATENCY_DEFAULT_PPS),
            (_, r) => r,
        };
        Report {
            mode: self.cfg.mode,
            frame_size: match self.cfg.size {
                FrameSize::Fixed(n) => n.to_string(),
                FrameSize::Imix => "imix".into(),
            },
            avg_frame_bytes: self.avg_frame(),
            flows: self.cfg.flows,
            burst: self.cfg.burst,
            queue_size: self.cfg.queue_size,
            rate_pps,
            core: self.cfg.core,
            duration_s: self.traffic_ns as f64 / 1e9,
            drain_s: self.drain_ns as f64 / 1e9,
            generator_cpu_pct: 0.0,
            generator_busy_pct: if self.traffic_ns == 0 {
                0.0
            } else {
                100.0 * (1.0 - self.idle_ns as f64 / self.traffic_ns as f64)
            },
            wire_overhead_bytes: WIRE_OVERHEAD,
            mpps_per_direction: if main.is_empty() {
                0.0
            } else {
                total / main.len() as f64
            },
            total_mpps: total,
            directions,
            ports,
            rfc2544: None,
            selftest: None,
            warnings: Vec::new(),
            errors: self.errors.clone(),
        }
    }
}
