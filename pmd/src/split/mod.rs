//! Split virtqueues, device side: the ring view ([`raw`]), chain walking ([`chain`]) and
//! the [`crate::ring::DeviceRing`] the fast path drives ([`device`]).
#![forbid(unsafe_code)]

pub mod chain;
pub mod device;
pub mod raw;
