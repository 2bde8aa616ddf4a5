//! The crate's error type.

use std::io;

/// How a message received from the backend violates the vhost-user framing or the reply
/// expected for the request that was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The header's version bits (0-1) are not 1.
    #[error("bad version in header flags {flags:#x}")]
    BadVersion {
        /// The header flags received.
        flags: u32,
    },
    /// The reply bit (bit 2) is clear, or other reserved bits are set.
    #[error("bad reply flags {flags:#x} for request {request}")]
    BadFlags {
        /// The request code of the reply.
        request: u32,
        /// The header flags received.
        flags: u32,
    },
    /// The reply answers another request than the one sent.
    #[error("reply to request {got}, expected a reply to {expected}")]
    WrongRequest {
        /// The request code sent.
        expected: u32,
        /// The request code in the reply.
        got: u32,
    },
    /// The reply's payload size is not the one the request calls for.
    #[error("reply to request {request} has {got} payload bytes, expected {expected}")]
    WrongSize {
        /// The request code.
        request: u32,
        /// The payload size expected.
        expected: usize,
        /// The payload size received.
        got: usize,
    },
    /// The header announces a payload larger than any legal vhost-user message.
    #[error("header announces a {size}-byte payload")]
    TooLarge {
        /// The announced payload size.
        size: u32,
    },
    /// The message stopped part-way (the deadline passed inside it).
    #[error("truncated message: got {got} of {expected} bytes before the deadline")]
    Truncated {
        /// Bytes expected (header or header + payload).
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The reply carried file descriptors where none were expected.
    #[error("reply carried {count} unexpected file descriptors")]
    UnexpectedFds {
        /// How many descriptors were attached.
        count: usize,
    },
    /// A field of the reply payload does not match the request (e.g. a vring index).
    #[error("reply field {field} is {got}, expected {expected}")]
    WrongField {
        /// The field's name.
        field: &'static str,
        /// The value expected.
        expected: u64,
        /// The value received.
        got: u64,
    },
}

/// How the device (the backend) broke the virtqueue contract, as seen by the driver side
/// ([`crate::driver`]). What the backend writes into shared memory is untrusted: these are
/// reported, never panicked on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// used.idx moved further than the number of chains the driver has published.
    #[error("used.idx {used_idx} is {ahead} past last_used {last_used}, {in_flight} in flight")]
    UsedIdxAhead {
        /// The used.idx read.
        used_idx: u16,
        /// The driver's last consumed used index.
        last_used: u16,
        /// `used_idx - last_used`.
        ahead: u16,
        /// Published chains not yet returned.
        in_flight: u16,
    },
    /// A used entry names a descriptor index outside the queue.
    #[error("used entry id {id} out of range for queue size {queue_size}")]
    IdOutOfRange {
        /// The id written by the device.
        id: u32,
        /// The queue size.
        queue_size: u16,
    },
    /// A used entry names a descriptor that is not the head of an outstanding chain (never
    /// added, already returned, or not yet published).
    #[error("used entry id {id} is not an outstanding published chain head")]
    NotOutstanding {
        /// The id written by the device.
        id: u16,
    },
    /// VIRTIO_F_IN_ORDER: a used entry names a chain further ahead than the used index
    /// (split) or the published chains (packed) allow: the batch it closes would hold
    /// buffers the device did not return.
    #[error(
        "in-order used entry id {id} closes a batch of {batch} buffers, only {returned} returned"
    )]
    InOrderBatchTooLong {
        /// The id written by the device.
        id: u16,
        /// Buffers the batch would hold (the named one included).
        batch: u16,
        /// Buffers the device returned.
        returned: u16,
    },
    /// A used entry's len exceeds the chain's device-writable bytes. The chain is returned
    /// to the driver (its buffers can be recycled through `id`).
    #[error("used entry id {id} has len {len}, larger than the {max} writable bytes")]
    LenTooLarge {
        /// The chain head.
        id: u16,
        /// The len written by the device.
        len: u32,
        /// Writable bytes of the chain.
        max: u32,
    },
    /// A received frame is shorter than the net header plus an Ethernet header.
    #[error("received used len {len} shorter than the {min}-byte minimum")]
    RxTooShort {
        /// Bytes the device wrote (header included, all buffers).
        len: u64,
        /// Net header length + 14.
        min: u64,
    },
    /// The net header's num_buffers is 0 or larger than the used entries available.
    #[error("num_buffers {num_buffers} in the net header, {available} used entries available")]
    BadNumBuffers {
        /// The value read from the header.
        num_buffers: u16,
        /// Used entries published (this frame's first one included).
        available: u16,
    },
    /// A merged frame is longer than the driver accepts.
    #[error("received frame of {len} bytes exceeds the {max}-byte maximum")]
    FrameTooLong {
        /// Bytes gathered so far.
        len: u64,
        /// The maximum frame length.
        max: u64,
    },
}

/// Errors of the front-end library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed the connection (EOF, ECONNRESET or EPIPE).
    #[error("peer closed the connection")]
    Closed,
    /// Nothing (complete) arrived before the deadline.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The peer sent something that is not a valid reply.
    #[error("malformed message: {0}")]
    Malformed(#[from] Malformed),
    /// The backend answered a NEED_REPLY request with a non-zero REPLY_ACK value.
    #[error("backend rejected the request (REPLY_ACK value {0:#x})")]
    Nack(u64),
    /// An access to shared memory falls outside the mapping.
    #[error("access of {len} bytes at offset {offset:#x} is outside the {size:#x}-byte memory")]
    OutOfRange {
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of the memory.
        size: u64,
    },
    /// Hugetlb memory was required but could not be allocated.
    #[error("hugetlb memory unavailable: {0}")]
    HugePages(#[source] io::Error),
    /// The caller asked for something impossible (e.g. a zero-sized ring).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend does not support what the replayed front-end needs (e.g. too few queues).
    #[error("backend does not support it: {0}")]
    Unsupported(String),
    /// GET_STATUS shows FEATURES_OK cleared: the backend refused the acked features.
    #[error("backend refused the features: status {status:#x} lacks FEATURES_OK")]
    FeaturesRejected {
        /// The status returned by GET_STATUS.
        status: u64,
    },
    /// The device (backend) broke the virtqueue contract.
    #[error("device error: {0}")]
    Device(#[from] DeviceError),
    /// Not enough free descriptors (or buffers) for the chain.
    #[error("queue full: {needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors (or buffers) the request needs.
        needed: u16,
        /// Descriptors (or buffers) free.
        free: u16,
    },
    /// Any other I/O error.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for Error {
    /// Maps connection-teardown errors to [`Error::Closed`] and timeouts to
    /// [`Error::Timeout`]; everything else is [`Error::Io`].
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => Error::Closed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            _ => Error::Io(e),
        }
    }
}

impl From<vmm_sys_util::errno::Error> for Error {
    fn from(e: vmm_sys_util::errno::Error) -> Self {
        Error::from(io::Error::from_raw_os_error(e.errno()))
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_closed_and_timeout() {
        let closed = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert!(matches!(Error::from(closed), Error::Closed));
        let pipe = io::Error::from_raw_os_error(libc::EPIPE);
        assert!(matches!(Error::from(pipe), Error::Closed));
        let again = io::Error::from_raw_os_error(libc::EAGAIN);
        assert!(matches!(Error::from(again), Error::Timeout));
        let other = io::Error::from_raw_os_error(libc::EBADF);
        assert!(matches!(Error::from(other), Error::Io(_)));
        let errno = vmm_sys_util::errno::Error::new(libc::EPIPE);
        assert!(matches!(Error::from(errno), Error::Closed));
    }
}
