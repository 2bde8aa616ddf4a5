//! The vhost-user backend of a port fed arbitrary byte streams with arbitrary descriptors
//! attached: a real `Session` (framing, `NetDevice`, replies) on one end of a socketpair.
//!
//! Input: chunks of `[fd count (0..3), length (u16 LE), bytes...]` (`shared/stream.rs`);
//! each chunk is sent in one `sendmsg` with that many descriptors (a memfd and an eventfd,
//! alternating), then the session handles what arrived and its replies are drained.
//! Nothing may panic or hang.
#![no_main]

use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vhost_switch::vhost_user::device::{DeviceConfig, Limits};
use vhost_switch::vhost_user::session::{Session, SessionCounters};

#[path = "shared/stream.rs"]
mod stream;

fuzz_target!(|data: &[u8]| {
    let (fe, be) = UnixStream::pair().unwrap();
    fe.set_nonblocking(true).unwrap();
    let cfg = DeviceConfig {
        port: "fuzz".into(),
        mac: [2, 0, 0, 0, 0, 1],
        queue_pairs: 1,
        // An MTU setting, so that NET_SET_MTU's bound is reached too.
        mtu: Some(9000),
        offloads: true,
        limits: Limits { max_mem_slots: 8, max_memory: 64 << 20, ..Limits::default() },
        dataplane: None,
    };
    let mut session = Session::new(be, cfg).unwrap();
    let mut counters = SessionCounters::default();
    if !stream::feed(data, &fe, || session.on_readable(&mut counters).is_ok()) {
        return;
    }
    // The front-end goes away: the session must notice.
    drop(fe);
    assert!(session.on_readable(&mut counters).is_err());
});
