//! Split virtqueues, device side: the ring view ([`raw`]) and chain walking ([`chain`]).
#![forbid(unsafe_code)]

pub mod chain;
pub mod raw;
