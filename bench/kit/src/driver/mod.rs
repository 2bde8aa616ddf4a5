//! The guest side of virtio-net over split or packed virtqueues: what a Linux virtio_net
//! driver or DPDK's virtio PMD does on its side of the rings, so that tests and
//! `vhost-pktgen` can send and receive Ethernet frames through a vhost-user backend.
//!
//! - [`split`]: one split virtqueue, driver side ([`DriverQueue`]), with raw accessors for
//!   hostile tests.
//! - [`packed`]: one packed virtqueue, driver side ([`PackedQueue`]), the same role and
//!   calls for the packed layout (VIRTIO_F_RING_PACKED), with raw accessors too.
//! - [`queue`]: [`Queue`], a queue of either layout (chosen by the ring's
//!   [`RingLayout`](crate::vring::RingLayout)), and what both share ([`Seg`], [`UsedElem`],
//!   [`Kick`]). The net drivers below hold `Queue`s: they run unchanged on both layouts.
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
pub mod packed;
pub mod queue;
mod shm;
pub mod split;
pub mod zerocopy;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod fake_packed;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod split_tests;

pub use net::{NetCounters, NetDriver, NetLayout, NetOptions, TxLayout};
pub use packed::{PackedDesc, PackedQueue};
pub use queue::{Kick, Queue, Seg, UsedElem};
pub use split::{Desc, DriverQueue};
pub use zerocopy::{BufId, RxBatch, RxFrame, ZcNet};
