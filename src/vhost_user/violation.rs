//! Why a front-end's message was refused, and which rule it broke.
//!
//! Rule numbers refer to DESIGN §4 and to `docs/protocol-compliance.md`.

use pmd::dataplane::AnnounceError;
use pmd::memory::MemoryError;
use pmd::vring::RingError;
use thiserror::Error;

use super::features::MissingDependency;

/// A message the front-end may not send in the current state, or with this content.
#[derive(Debug, Error)]
pub enum Violation {
    /// R1: payload size differs from what the request defines.
    #[error("payload is {got} bytes, the request needs {expected}")]
    PayloadSize {
        /// Bytes the request defines (or the minimum for variable-size payloads).
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// R1: wrong number of file descriptors attached.
    #[error("{got} file descriptors attached, the request carries {expected}")]
    FdCount {
        /// Descriptors the request carries.
        expected: &'static str,
        /// Descriptors received.
        got: usize,
    },
    /// R1/R2: the request depends on a protocol feature that was not negotiated.
    #[error("protocol feature {0} was not negotiated")]
    ProtocolFeatureMissing(&'static str),
    /// R1: a request we do not serve (its feature is never offered, or it is deprecated).
    #[error("request not supported by this backend: {0}")]
    Unsupported(&'static str),
    /// R1: the request changes session state before SET_OWNER.
    #[error("sent before SET_OWNER")]
    NotOwner,
    /// R1: SET_OWNER twice on one connection.
    #[error("SET_OWNER was already sent on this connection")]
    AlreadyOwner,
    /// R2: SET_PROTOCOL_FEATURES with bits that were never offered.
    #[error("protocol features {0:#x} were not offered")]
    UnofferedProtocolFeatures(u64),
    /// R4: SET_FEATURES with bits that were never offered.
    #[error("features {0:#x} were not offered")]
    UnofferedFeatures(u64),
    /// R4: virtio §5.1.3.1 dependency not met.
    #[error("invalid feature combination: {0}")]
    Dependency(MissingDependency),
    /// R4/R5: features may not change now.
    #[error("features are final ({why}); {old:#x} may not change to {new:#x}")]
    FeaturesFinal {
        /// Why they are final.
        why: &'static str,
        /// The features in force.
        old: u64,
        /// The features asked for.
        new: u64,
    },
    /// R6: a ring may not start before SET_FEATURES.
    #[error("ring {0} cannot start: SET_FEATURES has not been sent")]
    FeaturesNotSet(u32),
    /// R5: a ring may not start when FEATURES_OK was refused.
    #[error("ring {0} cannot start: FEATURES_OK was refused for the acked features")]
    FeaturesRefused(u32),
    /// R6/R7: ring index beyond the queues this port has.
    #[error("ring index {index} is out of range (port has {rings} rings)")]
    RingIndex {
        /// The index sent.
        index: u32,
        /// Rings the port has.
        rings: u32,
    },
    /// R6/R7: ring configuration changed while the ring runs.
    #[error("ring {0} is running; stop it with GET_VRING_BASE first")]
    RingRunning(u32),
    /// R7: ring start with part of its configuration missing.
    #[error("ring {index} cannot start: {missing} not set")]
    RingIncomplete {
        /// The ring.
        index: u32,
        /// What is missing.
        missing: &'static str,
    },
    /// R7: queue size, alignment, addresses.
    #[error("ring {index}: {err}")]
    Ring {
        /// The ring.
        index: u32,
        /// What is wrong.
        err: RingError,
    },
    /// R7: SET_VRING_BASE beyond a split ring's 16-bit index, or a packed ring's
    /// position not below its size.
    #[error("ring {index}: base {base:#x} is not a position in this ring ({why})")]
    RingBase {
        /// The ring.
        index: u32,
        /// The value sent.
        base: u32,
        /// What is wrong with it.
        why: &'static str,
    },
    /// R7: a flag we do not support in SET_VRING_ADDR (dirty logging).
    #[error("ring {index}: address flags {flags:#x} not supported (LOG_ALL not offered)")]
    RingAddrFlags {
        /// The ring.
        index: u32,
        /// The flags sent.
        flags: u32,
    },
    /// R7: ring address message before any memory table.
    #[error("no memory table has been set")]
    NoMemory,
    /// R8: memory table content.
    #[error("memory table refused: {0}")]
    Memory(#[from] MemoryError),
    /// R8: region count outside 1..=max.
    #[error("{count} memory regions; 1..={max} allowed")]
    RegionCount {
        /// Regions sent.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// R8: more guest memory than this port may map.
    #[error("{requested} bytes of guest memory exceed this port's limit of {limit}")]
    MemoryLimit {
        /// Bytes the table would map.
        requested: u64,
        /// The limit.
        limit: u64,
    },
    /// R8: REM_MEM_REG of a region that is not mapped.
    #[error("no mapped region matches gpa {gpa:#x} size {size:#x} user {user:#x}")]
    NoSuchRegion {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// User address.
        user: u64,
    },
    /// R8: a memory change would leave a running ring outside memory.
    #[error("ring {index} is running and would be left outside memory: {err}")]
    RingLosesMemory {
        /// The ring.
        index: u32,
        /// What is wrong.
        err: RingError,
    },
    /// R6: SET_VRING_ENABLE after SET_FEATURES without bit 30, or a bad value.
    #[error("SET_VRING_ENABLE: {0}")]
    Enable(&'static str),
    /// R9: GET_CONFIG/SET_CONFIG access outside the config space or read-only field.
    #[error("config access refused: {0}")]
    Config(String),
    /// R5: status value out of range.
    #[error("status {0:#x} is not a virtio status byte")]
    Status(u64),
    /// R11: a kick, call or error descriptor that is not an eventfd (a pipe or a socket
    /// could block the data plane, or make it write into a stream).
    #[error("ring {index}: the {which} descriptor is {found}, not an eventfd")]
    NotAnEventfd {
        /// The ring.
        index: u32,
        /// "kick", "call" or "err".
        which: &'static str,
        /// What it is instead.
        found: String,
    },
    /// R11: memory the front-end could shrink under the mapping, on a switch that
    /// requires sealed memory.
    #[error(
        "region at gpa {gpa:#x} is not a memfd sealed against shrinking (require_sealed_memory)"
    )]
    UnsealedMemory {
        /// The region's guest physical address.
        gpa: u64,
    },
    /// R12: NET_SET_MTU outside what virtio allows a device to report.
    #[error("MTU {0} is outside 68..=65535 (virtio 1.2 §5.1.4.1)")]
    MtuRange(u64),
    /// R12: NET_SET_MTU above the port's `mtu` setting, which the switch will not exceed.
    #[error(
        "MTU {mtu} is larger than this port's mtu setting {setting} (raise the port's mtu, \
         or lower the front-end's: QEMU host_mtu)"
    )]
    MtuAboveSetting {
        /// The MTU sent.
        mtu: u16,
        /// The port's setting.
        setting: u16,
    },
    /// R12: SEND_RARP with a MAC the port may not announce.
    #[error("SEND_RARP refused: {0}")]
    Announce(#[from] AnnounceError),
    /// R11: the connection would make the switch hold more descriptors than allowed.
    #[error(
        "{held} descriptors held and {incoming} more sent exceed this port's limit of {limit}"
    )]
    FdLimit {
        /// Descriptors the switch holds for this connection.
        held: usize,
        /// Descriptors the message carries.
        incoming: usize,
        /// The limit.
        limit: usize,
    },
}

impl Violation {
    /// The rule of DESIGN §4 this violation breaks, for logs and the compliance table.
    pub fn rule(&self) -> &'static str {
        use Violation::*;
        match self {
            PayloadSize { .. } | FdCount { .. } | Unsupported(_) | NotOwner | AlreadyOwner => {
                "R1 message framing"
            }
            ProtocolFeatureMissing(_) | UnofferedProtocolFeatures(_) => "R2 protocol features",
            UnofferedFeatures(_) | Dependency(_) | FeaturesFinal { .. } => "R4 SET_FEATURES",
            FeaturesNotSet(_) | FeaturesRefused(_) | Status(_) => "R5 FEATURES_OK",
            RingIndex { .. } | RingRunning(_) | RingIncomplete { .. } | Enable(_) => {
                "R6 ring state"
            }
            Ring { .. } | RingBase { .. } | RingAddrFlags { .. } | NoMemory => "R7 ring setup",
            Memory(_)
            | RegionCount { .. }
            | NoSuchRegion { .. }
            | RingLosesMemory { .. }
            | MemoryLimit { .. } => "R8 memory table",
            Config(_) => "R9 config space",
            NotAnEventfd { .. } | FdLimit { .. } | UnsealedMemory { .. } => "R11 tenant bounds",
            MtuRange(_) | MtuAboveSetting { .. } | Announce(_) => "R12 net device requests",
        }
    }
}
