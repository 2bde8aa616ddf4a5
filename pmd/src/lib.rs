//! The vhost-switch data plane.
//!
//! This crate knows nothing about sockets or vhost-user messages: the control plane
//! (`src/` of the daemon) validates what front-ends send and hands this crate immutable
//! snapshots of guest memory and rings.
//!
//! - [`memory`], [`vring`]: guest memory regions and split-ring layout, checked and mapped;
//! - [`split`]: raw ring access and descriptor-chain walking against a hostile guest;
//! - [`queue`]: a started ring's runtime (cursor, busy flag);
//! - [`forward`]: the burst fast path (dequeue, switch, single copy, enqueue);
//! - [`switch`]: learning bridge FDB and cross-connect;
//! - [`stats`]: single-writer counters and drop reasons;
//! - [`snapshot`], [`dataplane`]: the control-to-data-plane handoff and the PMD threads.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod dataplane;
pub mod forward;
pub mod memory;
mod mmap;
pub mod queue;
pub mod snapshot;
pub mod split;
pub mod stats;
pub mod switch;
pub mod vring;
