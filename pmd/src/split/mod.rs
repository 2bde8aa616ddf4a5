//! Split virtqueues, device side: raw ring access and chain walking.

pub mod chain;
pub mod raw;
