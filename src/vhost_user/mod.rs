//! The vhost-user protocol, backend side, for one net port.
//!
//! - [`wire`]: framing (nonblocking reader, replies) over [`socket`]'s raw calls;
//! - [`device`]: the per-connection state machine enforcing DESIGN §4, with its ring
//!   ([`rings`]) and memory ([`mem_table`]) messages;
//! - [`session`]: one connection: reads, dispatches, answers, NACKs or closes;
//! - [`features`], [`config_space`], [`violation`]: what is offered, served and refused.
//!
//! Message types and payload structs come from the `vhost` crate; its connection and
//! request handler are not used because they are private to the crate (`Endpoint`) or
//! cannot express the rules (no SET/GET_STATUS dispatch, no NACK on a size error).

pub mod config_space;
pub mod device;
pub mod features;
pub mod mem_table;
pub mod rings;
pub mod session;
pub(crate) mod socket;
pub mod violation;
pub mod wire;
