//! Split virtqueues, device side: ring views and chain walking.
#![forbid(unsafe_code)]

pub mod chain;
pub mod raw;
