//! The vhost-switch data plane.
//!
//! This crate knows nothing about sockets or vhost-user messages: the control plane
//! (`src/` of the daemon) validates what front-ends send and hands this crate immutable
//! snapshots of guest memory and rings.
//!
//! - [`memory`]: guest memory, the only way to it: regions mapped (only what they serve,
//!   fenced against SIGBUS), translated into ranges, reached through checked views;
//! - [`vring`]: ring layouts and their translation; [`split`], [`packed`]: ring views and
//!   descriptor-chain walking against a hostile guest, over the shared checks of [`chain`];
//!   [`ring`]: what the fast path needs of a layout;
//! - [`net`]: typed virtio-net and Ethernet header views; [`copy`]: the copy engine;
//!   [`offload`]: checksum and TSO offloads (claims checked, software fallback);
//! - [`queue`]: a started ring's runtime (cursor, busy flag);
//! - [`forward`]: the burst fast path (dequeue, switch, single copy, enqueue);
//! - [`switch`]: learning bridge FDB and cross-connect;
//! - [`stats`]: single-writer counters and drop reasons;
//! - [`snapshot`], [`dataplane`]: the control-to-data-plane handoff and the PMD threads;
//!   [`backoff`]: the optional idle back-off of a PMD;
//!   [`announce`]: frames the switch sends itself (SEND_RARP), delivered by a PMD at a
//!   quiescent point.
//!
//! `unsafe` lives in three files only: `memory/slice.rs` (guest memory accesses), `mmap.rs`
//! (mapping, the SIGBUS fence) and `cpu.rs` (pinning, the cycle counter); every other
//! module is `#![forbid(unsafe_code)]`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod announce;
pub mod backoff;
pub mod chain;
pub mod copy;
pub mod cpu;
pub mod dataplane;
pub mod forward;
pub mod memory;
mod mmap;
pub mod net;
pub mod offload;
pub mod packed;
pub mod queue;
pub mod ring;
pub mod snapshot;
pub mod split;
pub mod stats;
pub mod switch;
pub mod vring;
