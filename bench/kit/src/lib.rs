//! `vhost-kit`: a scripted vhost-user front-end and guest-side virtio-net driver, the test
//! kit of the integration tests and the base of `vhost-pktgen` (the `bench` crate).
//!
//! It plays the part of QEMU or DPDK's virtio_user against a vhost-user-net backend over a
//! real unix socket. It uses `vhost`'s message definitions but its own framing, so that it
//! can send both the legal sequences real front-ends send ([`sequences`]) and any illegal
//! variant (wrong sizes, fd counts, versions, flags, truncated messages) through
//! [`Connection::send`] / [`Connection::send_raw`].
//!
//! - [`memory`]: memfd-backed shared guest memory ([`SharedMemory`]).
//! - [`wire`]: framing, fd passing, replies with deadlines ([`Connection`], [`Reply`]).
//! - [`payload`]: byte encodings of the request payloads.
//! - [`frontend`]: one method per request ([`Frontend`]).
//! - [`vring`]: split ring layout and eventfds ([`Vring`], [`Ring`]).
//! - [`sequences`]: replays of QEMU 7.2 and DPDK 22.11 handshakes.
//! - [`driver`]: the guest (virtio-net driver) side of split rings ([`NetDriver`], and the
//!   zero-copy [`driver::ZcNet`]).
//! - [`null_backend`]: an in-process device that consumes TX and fills RX (self-tests).
//!
//! Feature `testpeer` (off by default) makes `wire::testpeer` public: a scripted backend
//! on one end of a socketpair, for the unit tests of crates built on this one (`bench`
//! enables it as a dev-dependency). This crate's own tests always have it.
//!
//! No traffic-generator logic lives here: that is `bench::pktgen`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod driver;
pub mod error;
pub mod frontend;
pub mod memory;
pub mod null_backend;
pub mod payload;
pub mod sequences;
pub mod vring;
pub mod wire;

pub use driver::{DriverQueue, NetDriver};
pub use error::{DeviceError, Error, Malformed, Result};
pub use frontend::{Frontend, DEFAULT_REPLY_TIMEOUT};
pub use memory::{HugePages, SharedMemory};
pub use sequences::{DpdkOptions, Negotiated, QemuOptions};
pub use vring::{Ring, Vring};
pub use wire::{Connection, Reply, FLAG_NEED_REPLY, FLAG_REPLY, VERSION};

/// Re-exports of the `vhost` message types the API uses.
pub use vhost::vhost_user::message::{
    FrontendReq, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    VhostUserVringAddr, VhostUserVringAddrFlags,
};
/// Re-export of `vm_memory::ByteValued` (for [`SharedMemory::write_obj`]).
pub use vm_memory::ByteValued;
