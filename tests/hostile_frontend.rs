//! Hostile front-ends (issue: reliability): every illegal message sequence we derive from
//! the spec, one after the other on port p0, while p1 <-> p2 forward traffic. After each:
//! the daemon is up, its descriptor and mapping counts are back to where they were, p0
//! accepts a well-behaved front-end, the pair still forwards, and no front-end ever waited
//! for a reply REPLY_ACK promised (every NEED_REPLY request is answered or the connection
//! closed within the harness timeout).

mod common;

use std::time::Duration;

use common::guest::*;
use common::*;
use vhost::vhost_user::message::{FrontendReq, VhostUserMemoryRegion};
use vhost_kit::driver::frame::local_mac;
use vhost_kit::error::Error;
use vhost_kit::frontend::Frontend;
use vhost_kit::memory::{HugePages, SharedMemory};

fn header(code: u32, flags: u32, size: u32) -> Vec<u8> {
    [code, flags, size]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

/// The answer to a hostile request: a NACK, or the connection closed. Never a hang.
fn refused<T: std::fmt::Debug>(fe: &mut Frontend, r: vhost_kit::error::Result<T>) {
    match r {
        Err(Error::Nack(_)) => {}
        Err(Error::Closed) => {}
        Ok(v) => {
            // A request without its own reply may be answered by closing only later.
            assert!(fe.conn_mut().is_closed(TIMEOUT), "accepted: {v:?}");
        }
        Err(e) => panic!("neither NACK nor close: {e}"),
    }
}

type Scenario = (&'static str, fn(&mut Frontend, &SharedMemory));

fn ready(fe: &mut Frontend) {
    negotiate(fe, REPLY_ACK | MQ | STATUS, VERSION_1 | BIT30);
}

fn region(gpa: u64, size: u64, user: u64, off: u64) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion::new(gpa, size, user, off)
}

const SCENARIOS: &[Scenario] = &[
    ("wrong payload size", |fe, _| {
        ready(fe);
        let r = fe.request(FrontendReq::SET_VRING_NUM, true, &[0; 5], &[]);
        refused(fe, r);
    }),
    ("wrong fd count", |fe, mem| {
        ready(fe);
        let r = fe.request(
            FrontendReq::SET_FEATURES,
            true,
            &(VERSION_1 | BIT30).to_ne_bytes(),
            &[mem.fd(), mem.fd()],
        );
        refused(fe, r);
    }),
    ("40 fds on one message", |fe, mem| {
        ready(fe);
        let fds = vec![mem.fd(); 40];
        let r = fe.request(FrontendReq::SET_VRING_CALL, true, &0u64.to_ne_bytes(), &fds);
        refused(fe, r);
    }),
    ("messages before SET_OWNER", |fe, mem| {
        fe.set_protocol_features(REPLY_ACK, false).unwrap();
        let r = fe.set_mem_table(&[(mem.region(), mem.fd())], true);
        refused(fe, r);
    }),
    ("overlapping regions", |fe, mem| {
        ready(fe);
        let ua = mem.user_addr();
        let r = fe.set_mem_table(
            &[
                (region(0, 0x10_0000, ua, 0), mem.fd()),
                (region(0x8_0000, 0x10_0000, ua + 0x10_0000, 0), mem.fd()),
            ],
            true,
        );
        refused(fe, r);
    }),
    ("zero-size region", |fe, mem| {
        ready(fe);
        let r = fe.set_mem_table(&[(region(0, 0, mem.user_addr(), 0), mem.fd())], true);
        refused(fe, r);
    }),
    ("wrapping region", |fe, mem| {
        ready(fe);
        let r = fe.set_mem_table(
            &[(
                region(u64::MAX - 0xfff, 0x10_0000, mem.user_addr(), 0),
                mem.fd(),
            )],
            true,
        );
        refused(fe, r);
    }),
    ("ring addresses outside memory", |fe, mem| {
        ready(fe);
        fe.set_mem_table(&[(mem.region(), mem.fd())], true).unwrap();
        fe.set_vring_num(0, 256, true).unwrap();
        let mut addr = vhost_kit::vring::Vring::new(mem, 0, 256)
            .unwrap()
            .addr(0, 0);
        addr.descriptor = 0x10;
        let r = fe.set_vring_addr(&addr, true);
        refused(fe, r);
    }),
    ("ring index 255", |fe, _| {
        ready(fe);
        let r = fe.set_vring_num(255, 256, true);
        refused(fe, r);
    }),
    ("SET_VRING_NUM 0, 3, 65536", |fe, _| {
        ready(fe);
        for n in [0, 3, 65536] {
            let r = fe.set_vring_num(0, n, true);
            refused(fe, r);
        }
    }),
    ("SET_VRING_BASE beyond a split ring", |fe, _| {
        ready(fe);
        let r = fe.set_vring_base(0, 1 << 20, true);
        refused(fe, r);
    }),
    ("GET_VRING_BASE on a never-started ring", |fe, _| {
        ready(fe);
        assert_eq!(fe.get_vring_base(1).unwrap(), 0);
    }),
    ("SET_FEATURES with unknown bits", |fe, _| {
        fe.set_protocol_features(REPLY_ACK, false).unwrap();
        fe.set_owner(true).unwrap();
        let r = fe.set_features(VERSION_1 | (1 << 50), true);
        refused(fe, r);
    }),
    ("SET_FEATURES while running", |fe, mem| {
        let guest = Guest::with_memory(SharedMemory::new(4 << 20, HugePages::Never).unwrap());
        let _ = mem;
        start_device(fe, &guest);
        let r = fe.set_features(VERSION_1, true);
        refused(fe, r);
    }),
    ("truncated message", |fe, _| {
        let mut m = header(2, 1, 8);
        m.extend_from_slice(&[1, 2, 3]);
        fe.conn_mut().send_raw(&m, &[]).unwrap();
        fe.conn_mut().shutdown_write().unwrap();
        assert!(fe.conn_mut().is_closed(TIMEOUT));
    }),
    ("half a message, then stall and leave", |fe, _| {
        fe.conn_mut().send_raw(&header(1, 1, 0)[..6], &[]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }),
    ("unknown request code", |fe, _| {
        fe.conn_mut().send_raw(&header(0xdead, 1, 0), &[]).unwrap();
        assert!(fe.conn_mut().is_closed(TIMEOUT));
    }),
    ("never reads replies", |fe, _| {
        let _ = fe
            .conn_mut()
            .stream()
            .set_write_timeout(Some(Duration::from_secs(2)));
        let m = header(1, 1, 0);
        let many: Vec<u8> = m.iter().copied().cycle().take(m.len() * 20000).collect();
        let _ = fe.conn_mut().send_raw(&many, &[]);
    }),
];

#[test]
fn hostile_front_end_suite() {
    let mut d = Daemon::start(&["p0", "p1", "p2"], &["--mode", "learning"]);
    let (m1, m2) = (memory(), memory());
    let mut b = attach(&d, "p1", &m1, GUEST_FEATURES, 2048, local_mac(2));
    let mut c = attach(&d, "p2", &m2, GUEST_FEATURES, 2048, local_mac(3));
    let mem = SharedMemory::new(4 << 20, HugePages::Never).unwrap();
    let (fds, maps) = (d.fd_count(), d.map_count());
    let mut seq = 0;
    for (name, scenario) in SCENARIOS {
        {
            let mut fe = d.connect("p0");
            scenario(&mut fe, &mem);
        }
        // Back to the baseline: no descriptor or mapping of that front-end survives.
        d.wait_fds(fds);
        d.wait_maps(maps);
        assert!(d.alive(), "{name}: the daemon died");
        // p0 takes a well-behaved front-end again.
        let mut good = d.connect("p0");
        negotiate(&mut good, REPLY_ACK, VERSION_1 | BIT30);
        drop(good);
        d.wait_fds(fds);
        // And the other ports never noticed.
        let frames: Vec<Vec<u8>> = (0..32)
            .map(|i| make_frame(128, c.mac, b.mac, seq + i))
            .collect();
        b.send_all(&frames);
        b.wait_tx_done();
        assert_eq!(
            c.recv_n(32, TIMEOUT).len(),
            32,
            "{name}: p1 -> p2 lost frames"
        );
        seq += 32;
        eprintln!("survived: {name}");
    }
    assert_conservation(&d);
}
