//! `bench`: the `vhost-pktgen` traffic generator.
//!
//! The engine ([`pktgen`]: [`pktgen::run`], [`pktgen::selftest()`]) and the `vhost-pktgen`
//! binary. The vhost-user front-end it drives the backend with (framing, shared memory,
//! rings, handshakes, the zero-copy virtio-net driver, the null device of the self-test)
//! is the `vhost-kit` crate (`bench/kit/`).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod pktgen;
