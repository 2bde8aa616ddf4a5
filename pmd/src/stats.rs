//! Counters. Each PMD writes its own block (single writer: load + store, no locked
//! instruction on the fast path); readers sum the blocks of all PMDs.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped. Every packet taken from a guest TX ring is either forwarded
/// or dropped for exactly one of the source reasons; every copy offered to a guest RX ring
/// is either delivered or dropped for one of the destination reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Source: the chain broke a descriptor rule (loop, outside memory, ...).
    BadDescriptor = 0,
    /// Source: shorter than the net header plus an Ethernet header.
    Runt,
    /// Source: the TX ring is started but disabled (consumed and dropped).
    RingDisabled,
    /// Source: no port to send it to (xconnect peer missing, lone port, own MAC).
    NoDestination,
    /// Destination: the guest posted no RX buffer.
    NoRxBuffer,
    /// Destination: the packet does not fit (no MRG_RXBUF and a buffer too small).
    TooBig,
    /// Destination: RX ring not started, disabled or broken.
    RxRingUnavailable,
    /// Destination: an RX chain broke a descriptor rule.
    RxBadDescriptor,
    /// Source: the frame is longer than the maximum frame length, or the chain holds more
    /// than 2^32 bytes.
    TooLong,
    /// Source: the source MAC is not among the port's allowed sources (port security).
    Spoofed,
    /// Destination: the frame is longer than the destination port's MTU allows (MTU plus
    /// an Ethernet header and one 802.1Q tag, see [`crate::snapshot::PortSnapshot::frame_limit`]).
    OverMtu,
    /// Source: the virtio-net header claims an offload the source never negotiated
    /// (NEEDS_CSUM without CSUM, a GSO type without its HOST_TSO*), or one never offered.
    OffloadNotNegotiated,
    /// Source or destination: the offload the header asks for cannot be honoured (a
    /// checksum position outside the frame, GSO without a segment size, a TSO frame that
    /// is not plain TCP over IPv4/IPv6 or has truncated headers, too many segments).
    BadOffload,
}

/// Number of drop reasons.
pub const DROP_REASONS: usize = 13;

impl DropReason {
    /// All reasons, in counter order.
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::BadDescriptor,
        DropReason::Runt,
        DropReason::RingDisabled,
        DropReason::NoDestination,
        DropReason::NoRxBuffer,
        DropReason::TooBig,
        DropReason::RxRingUnavailable,
        DropReason::RxBadDescriptor,
        DropReason::TooLong,
        DropReason::Spoofed,
        DropReason::OverMtu,
        DropReason::OffloadNotNegotiated,
        DropReason::BadOffload,
    ];

    /// Snake-case name for output.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::BadDescriptor => "bad_descriptor",
            DropReason::Runt => "runt",
            DropReason::RingDisabled => "ring_disabled",
            DropReason::NoDestination => "no_destination",
            DropReason::NoRxBuffer => "no_rx_buffer",
            DropReason::TooBig => "too_big",
            DropReason::RxRingUnavailable => "rx_ring_unavailable",
            DropReason::RxBadDescriptor => "rx_bad_descriptor",
            DropReason::TooLong => "too_long",
            DropReason::Spoofed => "spoofed",
            DropReason::OverMtu => "over_mtu",
            DropReason::OffloadNotNegotiated => "offload_not_negotiated",
            DropReason::BadOffload => "bad_offload",
        }
    }
}

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (only the owning PMD calls this).
    #[inline]
    pub fn add(&self, n: u64) {
        if n != 0 {
            self.0.store(
                self.0.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one ring, as seen by one PMD. For a guest TX ring (odd index) `packets`
/// counts packets taken and `forwarded` those handed to switching; for a guest RX ring
/// (even index) `packets` counts packets delivered into the guest.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Packets taken (TX ring) or delivered (RX ring).
    pub packets: Counter,
    /// Bytes of those packets (frame only, without the net header).
    pub bytes: Counter,
    /// TX ring: packets handed to at least one destination.
    pub forwarded: Counter,
    /// RX ring: frames whose partial checksum the switch completed because this guest did
    /// not negotiate GUEST_CSUM.
    pub csum_completed: Counter,
    /// RX ring: TSO frames the switch cut into segments because this guest did not
    /// negotiate the GUEST_TSO* they needed. `packets` counts such a frame once, when all
    /// of its segments were delivered, so that every frame offered is delivered or dropped
    /// exactly once.
    pub segmented: Counter,
    /// Drops by reason.
    pub drops: [Counter; DROP_REASONS],
}

impl QueueStats {
    /// Counts a drop.
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason as usize].add(1);
    }
}

/// Summed counters of one ring, for output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueTotals {
    /// See [`QueueStats::packets`].
    pub packets: u64,
    /// See [`QueueStats::bytes`].
    pub bytes: u64,
    /// See [`QueueStats::forwarded`].
    pub forwarded: u64,
    /// See [`QueueStats::csum_completed`].
    pub csum_completed: u64,
    /// See [`QueueStats::segmented`].
    pub segmented: u64,
    /// Drops by reason, in [`DropReason::ALL`] order.
    pub drops: [u64; DROP_REASONS],
}

impl QueueTotals {
    /// Adds one PMD's block.
    pub fn add(&mut self, q: &QueueStats) {
        self.packets += q.packets.get();
        self.bytes += q.bytes.get();
        self.forwarded += q.forwarded.get();
        self.csum_completed += q.csum_completed.get();
        self.segmented += q.segmented.get();
        for (t, c) in self.drops.iter_mut().zip(&q.drops) {
            *t += c.get();
        }
    }

    /// Sum of all drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }
}
