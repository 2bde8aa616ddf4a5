//! QEMU interop (work in progress).
mod common;
#[test]
fn placeholder() {}
