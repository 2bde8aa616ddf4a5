//! vhost-switch control plane: configuration, ports and the vhost-user backend.
//!
//! The binary (`src/main.rs`) wires these together; the data plane lives in the `pmd`
//! crate and receives immutable snapshots from [`vhost_user::device::NetDevice`] and
//! [`vfio_user::device::VirtioNetPci`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod control;
pub mod ctl;
#[cfg(feature = "demo")]
pub mod demo;
pub mod listen;
pub mod port;
pub mod vfio_user;
pub mod vhost_user;
