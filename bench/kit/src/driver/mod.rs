//! The guest side of virtio-net over split virtqueues: what a Linux virtio_net driver or
//! DPDK's virtio PMD does on its side of the rings, so that tests and `vhost-pktgen` can
//! send and receive Ethernet frames through a vhost-user backend.
//!
//! - [`split`]: one split virtqueue, driver side ([`DriverQueue`]), with raw accessors for
//!   hostile tests.
//! - [`net`]: a net driver over a receive and a transmit queue and a buffer pool
//!   ([`NetDriver`]).
//! - [`frame`]: test frames with a sequence number and a checksum.
//! - [`zerocopy`]: buffers posted and returned by id, frames peeked in place
//!   ([`ZcNet`], for `vhost-pktgen`).
//! - `shm`: the module's only `unsafe` (atomic views of shared ring memory).
//!
//! Ring index convention: ring 0 = receiveq (the driver posts writable buffers), ring 1 =
//! transmitq (the driver posts readable buffers holding net header + frame).

pub mod frame;
pub mod net;
mod shm;
pub mod split;
pub mod zerocopy;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod split_tests;

pub use net::{NetCounters, NetDriver, NetLayout, NetOptions, TxLayout};
pub use split::{Desc, DriverQueue, Kick, Seg, UsedElem};
pub use zerocopy::{BufId, RxBatch, RxFrame, ZcNet};
