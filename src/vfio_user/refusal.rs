//! Why a command was refused, and the errno the client is answered with.
//!
//! Every command gets a reply (unless the client set NO_REPLY): a refusal is an error
//! reply carrying an errno, and the device state is unchanged. Only a broken stream
//! (framing) closes the connection.

use thiserror::Error;

use super::wire::Command;

/// A refused command.
#[derive(Debug, Error)]
pub enum Refusal {
    /// The payload is not the size the command defines.
    #[error("{command:?}: payload of {got} bytes, expected {expected}")]
    PayloadSize {
        /// The command.
        command: Command,
        /// What it should have been.
        expected: &'static str,
        /// What came.
        got: usize,
    },
    /// A field holds a value the command does not allow.
    #[error("{command:?}: {why}")]
    Invalid {
        /// The command.
        command: Command,
        /// What is wrong.
        why: String,
    },
    /// Descriptors where the command takes none, or the wrong number of them.
    #[error("{command:?}: {got} file descriptors attached, expected {expected}")]
    FdCount {
        /// The command.
        command: Command,
        /// What it takes.
        expected: &'static str,
        /// What came.
        got: usize,
    },
    /// A command that must come after VERSION came first, or VERSION came twice.
    #[error("{0:?} before version negotiation (or a second VERSION)")]
    OutOfOrder(Command),
    /// A command the server does not implement (migration, dirty pages, DMA through
    /// messages, unknown numbers).
    #[error("{0:?} is not supported by this device")]
    Unsupported(Command),
    /// DEVICE_FEATURE: no device feature (migration, DMA logging) exists here.
    #[error("DEVICE_FEATURE: the device has no optional features (migration, DMA logging)")]
    NoDeviceFeature,
    /// A DMA map would exceed the number of maps allowed.
    #[error("DMA_MAP: {limit} maps already held (max_dma_maps)")]
    TooManyMaps {
        /// The limit.
        limit: usize,
    },
    /// A DMA map would exceed the guest memory the switch maps for one client.
    #[error("DMA_MAP: {wanted} bytes mapped would exceed the limit of {limit}")]
    MemoryLimit {
        /// Bytes that would be mapped.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
    /// A DMA map overlaps one already held.
    #[error("DMA_MAP: [{iova:#x}, +{size:#x}) overlaps a map already held")]
    Overlap {
        /// Start of the new map.
        iova: u64,
        /// Its size.
        size: u64,
    },
    /// The map's file cannot be mapped (too short, not a file, mmap failed).
    #[error("DMA_MAP: {0}")]
    Memory(#[from] pmd::memory::MemoryError),
}

impl Refusal {
    /// The errno sent back: what the equivalent VFIO ioctl would return.
    pub fn errno(&self) -> i32 {
        match self {
            Refusal::PayloadSize { .. }
            | Refusal::Invalid { .. }
            | Refusal::FdCount { .. }
            | Refusal::OutOfOrder(_) => libc::EINVAL,
            Refusal::Unsupported(_) => libc::EOPNOTSUPP,
            Refusal::NoDeviceFeature => libc::ENOTTY,
            Refusal::TooManyMaps { .. } => libc::ENOSPC,
            Refusal::MemoryLimit { .. } => libc::ENOMEM,
            Refusal::Overlap { .. } => libc::EEXIST,
            Refusal::Memory(_) => libc::EINVAL,
        }
    }

    /// A refusal for a field value.
    pub fn invalid(command: Command, why: impl Into<String>) -> Refusal {
        Refusal::Invalid {
            command,
            why: why.into(),
        }
    }
}
