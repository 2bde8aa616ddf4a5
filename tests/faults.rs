//! Fault injection under load (issue: reliability): rings stopped and restarted during
//! traffic, and the switch killed and replaced while its front-ends keep their memory.
//! After each fault traffic resumes, counters conserve, and no frame arrives twice.

mod common;

use std::collections::HashSet;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::guest::*;
use common::*;
use vhost_kit::driver::frame::{self, local_mac};
use vhost_kit::driver::net::NetOptions;
use vhost_kit::frontend::Frontend;

const WAIT: Duration = Duration::from_secs(5);

/// Receives what is there, recording sequence numbers; panics on a duplicate.
fn collect(b: &mut Vm<'_>, seen: &mut HashSet<u64>, want: usize, wait: Duration) {
    for f in b.recv_n(want, wait) {
        let seq = frame::verify(&f).expect("corrupted frame");
        assert!(seen.insert(seq), "frame {seq} delivered twice");
    }
}

#[test]
fn vring_base_stop_start_cycles_during_traffic() {
    let d = Daemon::start(&["p0", "p1"], &["--mode", "xconnect"]);
    let (m0, m1) = (memory(), memory());
    let mut a = attach(&d, "p0", &m0, GUEST_FEATURES, 2048, local_mac(1));
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut seen = HashSet::new();
    let mut seq = 0u64;
    for cycle in 0..20 {
        // Frames queued on p0's TX ring, some taken before the stop, some after the start.
        let frames: Vec<Vec<u8>> = (0..48)
            .map(|i| make_frame(100, b.mac, a.mac, seq + i))
            .collect();
        a.send_all(&frames);
        seq += 48;
        // QEMU stop/cont: GET_VRING_BASE stops both rings, SET_VRING_BASE + KICK restart.
        a.stop_and_restart_rings();
        a.wait_tx_done();
        collect(&mut b, &mut seen, 48, WAIT);
        assert_eq!(
            seen.len() as u64,
            seq,
            "cycle {cycle}: frames lost across the stop"
        );
        // The other way: p0's RX ring must resume where it stopped (GET_VRING_BASE of an
        // RX ring reports its avail position too), not at its first base.
        let back: Vec<Vec<u8>> = (0..16)
            .map(|i| make_frame(80, a.mac, b.mac, 1_000_000 + cycle * 16 + i))
            .collect();
        b.send_all(&back);
        b.wait_tx_done();
        assert_eq!(
            a.recv_n(16, WAIT).len(),
            16,
            "cycle {cycle}: p0 stopped receiving after the restart"
        );
    }
    assert_conservation(&d);
}

/// A front-end that listens (QEMU `server=on`, virtio_user `server=1`) and re-does the
/// handshake on every new connection, resuming its rings at the used index in memory.
struct ServerGuest<'m> {
    listener: UnixListener,
    vm: Option<Vm<'m>>,
}

fn accept(listener: &UnixListener) -> Frontend {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                let mut fe = Frontend::from_stream(s).unwrap();
                fe.set_timeout(TIMEOUT);
                return fe;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("the switch never connected: {e}"),
        }
    }
}

/// Re-attaches an existing guest (memory, rings, driver state) over a new connection.
fn reattach(vm: &mut Vm<'_>, mut fe: Frontend, mem: &vhost_kit::memory::SharedMemory) {
    negotiate(&mut fe, REPLY_ACK | MQ | STATUS, GUEST_FEATURES);
    fe.set_status(ACK_DRIVER | FEATURES_OK, true).unwrap();
    fe.set_mem_table(&[(mem.region(), mem.fd())], true).unwrap();
    // The used index in memory is where the device got to (QEMU sends the same).
    let used_idx = |ring: &vhost_kit::vring::Vring| {
        let mut used = [0u8; 2];
        mem.read(ring.used_offset() + 2, &mut used).unwrap();
        u32::from(u16::from_le_bytes(used))
    };
    let (rx_base, tx_base) = (used_idx(&vm.layout.rx), used_idx(&vm.layout.tx));
    start_rings(&mut fe, &vm.layout, &vm.kicks, &vm.calls, rx_base, tx_base);
    vm.fe = fe;
}

#[test]
fn switch_killed_and_restarted_with_client_ports_front_ends_keep_their_memory() {
    let dir = temp_dir("restart");
    let socks = [dir.join("fe0.sock"), dir.join("fe1.sock")];
    let args: Vec<String> = vec![
        "run".into(),
        "--mode".into(),
        "xconnect".into(),
        "--client".into(),
        format!("c0={}", socks[0].display()),
        "--client".into(),
        format!("c1={}", socks[1].display()),
    ];
    let (m0, m1) = (memory(), memory());
    let mut servers: Vec<ServerGuest<'_>> = socks
        .iter()
        .map(|s| ServerGuest {
            listener: UnixListener::bind(s).unwrap(),
            vm: None,
        })
        .collect();
    let mut seen = HashSet::new();
    let mut seq = 0u64;
    for generation in 0..3 {
        let d = Daemon::spawn(temp_dir(&format!("gen{generation}")), &args);
        for (i, (srv, mem)) in servers.iter_mut().zip([&m0, &m1]).enumerate() {
            let fe = accept(&srv.listener);
            match srv.vm.as_mut() {
                // First connection: a fresh guest.
                None => {
                    let opts = NetOptions {
                        features: GUEST_FEATURES,
                        ..NetOptions::default()
                    };
                    srv.vm = Some(attach_fe(
                        fe,
                        mem,
                        opts,
                        2048,
                        local_mac(i as u32 + 1),
                        true,
                    ));
                }
                // The switch came back: same memory, rings and driver state.
                Some(vm) => reattach(vm, fe, mem),
            }
        }
        let [s0, s1] = servers.as_mut_slice() else {
            unreachable!()
        };
        let (a, b) = (s0.vm.as_mut().unwrap(), s1.vm.as_mut().unwrap());
        // Traffic, then kill the switch in the middle of the next batch.
        for _ in 0..5 {
            let frames: Vec<Vec<u8>> = (0..64)
                .map(|i| make_frame(128, b.mac, a.mac, seq + i))
                .collect();
            a.send_all(&frames);
            seq += 64;
            a.wait_tx_done();
            collect(b, &mut seen, 64, WAIT);
        }
        let frames: Vec<Vec<u8>> = (0..64)
            .map(|i| make_frame(128, b.mac, a.mac, seq + i))
            .collect();
        a.send_all(&frames);
        seq += 64;
        drop(d); // SIGKILL, mid-traffic.
        collect(b, &mut seen, 64, Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        seen.len() as u64 >= seq - 3 * 64,
        "lost more than the batches in flight at the kills"
    );
}
