//! The vfio-user transport: a port whose client (QEMU `vfio-user-pci`) attaches a whole
//! emulated PCI device, a modern virtio-net (0x1af4:0x1041), instead of speaking
//! vhost-user.
//!
//! - [`wire`]: framing (16-byte header, nonblocking reader, replies with descriptors);
//! - [`message`], [`version`]: command payloads and the VERSION negotiation;
//! - [`device`]: the device of one connection, with its PCI config space ([`pci`]),
//!   virtio common configuration ([`common_cfg`]), DMA maps ([`dma`]), interrupts
//!   ([`irqs`]) and the notification page ([`notify`]), laid out by [`layout`];
//! - [`session`]: one connection: reads, dispatches, answers (or an errno);
//! - [`refusal`]: why a command was refused and the errno it gets.
//!
//! The PMDs cannot tell a vfio-user port from a vhost-user one: the device publishes the
//! same `PortSnapshot` (rings translated in the guest memory its DMA maps make, the MSI-X
//! eventfds as call descriptors). Why the rust-vmm `vfio-user` crate is not used for the
//! server is in `docs/vfio-user.md`.

pub mod common_cfg;
pub mod device;
pub mod dma;
pub mod irqs;
pub mod layout;
pub mod message;
pub mod notify;
pub mod pci;
pub mod refusal;
pub mod session;
pub mod version;
pub mod wire;

#[cfg(test)]
mod session_tests;
