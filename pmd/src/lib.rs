//! The vhost-switch data plane.
//!
//! This crate knows nothing about sockets or vhost-user messages: the control plane
//! (`src/` of the daemon) validates what front-ends send and hands this crate immutable
//! snapshots of guest memory and ring addresses.
//!
//! - [`memory`]: guest memory regions shared by a front-end, mapped and translated.
//! - [`vring`]: split virtqueue layout checks and translation.
//! - [`snapshot`]: what the control plane publishes for a port's rings.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod memory;
mod mmap;
pub mod snapshot;
pub mod vring;
