//! A guest on a switch port: shared memory, the `vhost-kit` virtio-net driver, and the
//! vhost-user handshake that attaches them to the daemon.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vhost_kit::driver::frame;
use vhost_kit::driver::net::{NetDriver, NetLayout, NetOptions};
use vhost_kit::frontend::Frontend;
use vhost_kit::memory::{HugePages, SharedMemory};
use vmm_sys_util::eventfd::EventFd;

use super::*;

pub const INDIRECT: u64 = 1 << 28;
/// What a modern Linux guest acks of what we offer.
pub const GUEST_FEATURES: u64 = VERSION_1 | BIT30 | MRG_RXBUF | EVENT_IDX | INDIRECT;

/// Guest memory for one port.
pub fn memory() -> SharedMemory {
    SharedMemory::new(16 << 20, HugePages::Never).unwrap()
}

/// One attached guest.
pub struct Vm<'m> {
    pub fe: Frontend,
    pub drv: NetDriver<'m>,
    pub layout: NetLayout,
    pub kicks: [EventFd; 2],
    pub calls: [EventFd; 2],
    pub mac: [u8; 6],
}

/// Attaches a guest to port `name` with `features`, RX buffers of `buf_size` bytes,
/// rings enabled (with bit 30) and RX buffers posted.
pub fn attach<'m>(
    d: &Daemon,
    name: &str,
    mem: &'m SharedMemory,
    features: u64,
    buf_size: u32,
    mac: [u8; 6],
) -> Vm<'m> {
    attach_with(
        d,
        name,
        mem,
        NetOptions {
            features,
            ..NetOptions::default()
        },
        buf_size,
        mac,
        true,
    )
}

pub fn attach_with<'m>(
    d: &Daemon,
    name: &str,
    mem: &'m SharedMemory,
    opts: NetOptions,
    buf_size: u32,
    mac: [u8; 6],
    enable: bool,
) -> Vm<'m> {
    attach_fe(d.connect(name), mem, opts, buf_size, mac, enable)
}

/// Attaches a guest over an established connection (e.g. one a client-mode port made).
pub fn attach_fe<'m>(
    mut fe: Frontend,
    mem: &'m SharedMemory,
    opts: NetOptions,
    buf_size: u32,
    mac: [u8; 6],
    enable: bool,
) -> Vm<'m> {
    let features = opts.features;
    // Packed rings when the guest acks RING_PACKED, as a driver lays them out.
    let ring_layout = vhost_kit::vring::RingLayout::for_features(features);
    let layout = NetLayout::new_as(mem, 0, QUEUE_SIZE, buf_size, ring_layout).unwrap();
    let mut drv = NetDriver::new(mem, &layout, opts).unwrap();
    negotiate(&mut fe, REPLY_ACK | MQ | STATUS, features);
    fe.set_status(ACK_DRIVER | FEATURES_OK, true).unwrap();
    fe.set_mem_table(&[(mem.region(), mem.fd())], true).unwrap();
    let kicks = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
    let calls = [
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    for (i, ring) in [layout.rx, layout.tx].iter().enumerate() {
        fe.setup_vring(
            i as u32,
            ring,
            0,
            0,
            Some(kicks[i].as_raw_fd()),
            Some(calls[i].as_raw_fd()),
            true,
        )
        .unwrap();
    }
    if enable && features & BIT30 != 0 {
        fe.set_vring_enable(0, true, true).unwrap();
        fe.set_vring_enable(1, true, true).unwrap();
    }
    drv.fill_rx().unwrap();
    Vm {
        fe,
        drv,
        layout,
        kicks,
        calls,
        mac,
    }
}

/// Configures and starts both rings of a guest over `fe` at the given bases, with its
/// eventfds, and enables them (what a reconnecting or resuming front-end does).
pub fn start_rings(
    fe: &mut Frontend,
    layout: &NetLayout,
    kicks: &[EventFd; 2],
    calls: &[EventFd; 2],
    rx_base: u32,
    tx_base: u32,
) {
    for (i, (ring, base)) in [(layout.rx, rx_base), (layout.tx, tx_base)]
        .into_iter()
        .enumerate()
    {
        fe.setup_vring(
            i as u32,
            &ring,
            base,
            0,
            Some(kicks[i].as_raw_fd()),
            Some(calls[i].as_raw_fd()),
            true,
        )
        .unwrap();
    }
    fe.set_vring_enable(0, true, true).unwrap();
    fe.set_vring_enable(1, true, true).unwrap();
}

/// Guests on ports p0, p1, ... (one per memory), modern features, 2 KiB RX buffers, MACs
/// `local_mac(1)`, `local_mac(2)`, ...
pub fn attach_ports<'m, M: std::borrow::Borrow<SharedMemory>>(
    d: &Daemon,
    mems: &'m [M],
) -> Vec<Vm<'m>> {
    mems.iter()
        .enumerate()
        .map(|(i, m)| {
            attach(
                d,
                &format!("p{i}"),
                m.borrow(),
                GUEST_FEATURES,
                2048,
                vhost_kit::driver::frame::local_mac(i as u32 + 1),
            )
        })
        .collect()
}

/// `n` test frames of `len` bytes from `src` to `dst`, sequence numbers from `first_seq`.
pub fn frames(n: usize, len: usize, dst: [u8; 6], src: [u8; 6], first_seq: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| make_frame(len, dst, src, first_seq + i as u64))
        .collect()
}

/// Sends `n` frames of `len` bytes from `a` to `b` and checks each arrives intact, in order.
/// Frames go in chunks no larger than `b`'s posted RX buffers, each chunk drained before
/// the next, so a slow receiver cannot turn into drops.
pub fn exchange(a: &mut Vm<'_>, b: &mut Vm<'_>, n: usize, len: usize, first_seq: u64) {
    const CHUNK: usize = 64;
    let sent = frames(n, len, b.mac, a.mac, first_seq);
    let mut got = Vec::with_capacity(n);
    for chunk in sent.chunks(CHUNK) {
        a.send_all(chunk);
        a.wait_tx_done();
        got.extend(b.recv_n(chunk.len(), TIMEOUT));
    }
    assert_eq!(
        got.len(),
        n,
        "{} of {n} frames of {len} bytes arrived",
        got.len()
    );
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f.len(), len);
        let seq = vhost_kit::driver::frame::verify(f).unwrap();
        assert_eq!(
            seq,
            first_seq + i as u64,
            "frame {i} corrupted or reordered"
        );
        assert_eq!(f, &sent[i]);
    }
}

/// A test frame of `len` bytes from `src` to `dst` carrying `seq`.
pub fn make_frame(len: usize, dst: [u8; 6], src: [u8; 6], seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; len];
    frame::build(&mut f, dst, src, seq).unwrap();
    f
}

impl Vm<'_> {
    /// QEMU's stop/cont: GET_VRING_BASE stops both rings, which restart where they stopped.
    pub fn stop_and_restart_rings(&mut self) {
        let tx_base = self.fe.get_vring_base(1).unwrap();
        let rx_base = self.fe.get_vring_base(0).unwrap();
        start_rings(
            &mut self.fe,
            &self.layout,
            &self.kicks,
            &self.calls,
            rx_base,
            tx_base,
        );
    }

    /// Sends every frame (retrying while the TX ring is full), reclaiming as it goes.
    pub fn send_all(&mut self, frames: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut sent = 0;
        let deadline = Instant::now() + TIMEOUT;
        while sent < refs.len() {
            sent += self.drv.send(&refs[sent..]);
            self.drv.reclaim_tx().unwrap();
            assert!(
                Instant::now() < deadline,
                "could only send {sent} of {} frames",
                refs.len()
            );
            if sent < refs.len() {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Receives until `n` frames arrived or `wait` passed; returns what arrived.
    pub fn recv_n(&mut self, n: usize, wait: Duration) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + wait;
        while got.len() < n && Instant::now() < deadline {
            if self.drv.recv_into(&mut got).unwrap() == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
            let _ = self.drv.fill_rx();
        }
        got
    }

    /// Waits until the switch has taken every frame this guest sent.
    pub fn wait_tx_done(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.drv.tx_queue().in_flight() > 0 {
            self.drv.reclaim_tx().unwrap();
            assert!(
                Instant::now() < deadline,
                "the switch never consumed {} TX chains",
                self.drv.tx_queue().in_flight()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Per-port counters from `ctl stats`.
pub fn port_stats(d: &Daemon, name: &str) -> serde_json::Value {
    let stats = d.ctl("stats");
    stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap()
}

/// A drop counter of a port's ring.
pub fn drops(d: &Daemon, port: &str, ring: usize, reason: &str) -> u64 {
    port_stats(d, port)["rings"][ring]["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// Every port conserves: taken = forwarded + dropped.
pub fn assert_conservation(d: &Daemon) {
    for p in d.ctl("stats")["ports"].as_array().unwrap() {
        let g = |k: &str| p[k].as_u64().unwrap();
        assert_eq!(g("rx_packets"), g("rx_forwarded") + g("rx_dropped"), "{p}");
    }
}
