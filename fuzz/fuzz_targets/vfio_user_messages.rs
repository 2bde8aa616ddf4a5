//! The vfio-user server of a port fed arbitrary byte streams with arbitrary descriptors
//! attached: a real `vfio_user::session::Session` (framing, the emulated virtio-net PCI
//! device, DMA maps, interrupts, replies) on one end of a socketpair.
//!
//! Input: chunks as for `vhost_user_messages` (`shared/stream.rs`); the memfd can be
//! DMA-mapped as guest RAM and the eventfd given as an interrupt. Nothing may panic or
//! hang.
#![no_main]

use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vhost_switch::vfio_user::session::Session;
use vhost_switch::vhost_user::device::{DeviceConfig, Limits};
use vhost_switch::vhost_user::session::SessionCounters;

#[path = "shared/stream.rs"]
mod stream;

fuzz_target!(|data: &[u8]| {
    let (client, server) = UnixStream::pair().unwrap();
    client.set_nonblocking(true).unwrap();
    let cfg = DeviceConfig {
        port: "fuzz".into(),
        mac: [2, 0, 0, 0, 0, 1],
        queue_pairs: 1,
        mtu: Some(1500),
        offloads: true,
        limits: Limits { max_mem_slots: 8, max_memory: 64 << 20, ..Limits::default() },
        dataplane: None,
    };
    let mut session = Session::new(server, cfg).unwrap();
    let mut counters = SessionCounters::default();
    if !stream::feed(data, &client, || session.on_readable(&mut counters).is_ok()) {
        return;
    }
    // The client goes away: the session must notice.
    drop(client);
    assert!(session.on_readable(&mut counters).is_err());
});
