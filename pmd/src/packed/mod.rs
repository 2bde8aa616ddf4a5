//! Packed virtqueues (virtio 1.2 §2.8), device side: the ring view ([`raw`]) and the
//! [`crate::ring::DeviceRing`] the fast path drives ([`device`]), chain walking included.
#![forbid(unsafe_code)]

pub mod device;
pub mod raw;
