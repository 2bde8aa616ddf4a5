//! Ring messages: SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/ENABLE and GET_VRING_BASE.
//!
//! Started/stopped and enabled/disabled are independent (DESIGN §4 rule 6): a ring starts
//! at SET_VRING_KICK and stops at GET_VRING_BASE; SET_VRING_ENABLE only records the
//! front-end's wish, which counts once bit 30 is acked. Without bit 30 a started ring is
//! enabled.

use std::fs::File;
use std::sync::Arc;

use pmd::queue::{RingFeatures, RingRuntime, RingShared};
use pmd::vring::{self, Layout, RingAddrs};
use vhost::vhost_user::message::{VhostUserU64, VhostUserVringAddr, VhostUserVringState};
use vm_memory::ByteValued;

use super::device::{body, no_fds, take_fds, vring_state, NetDevice, Reply};
use super::features::{bit, mask};
use super::violation::Violation;
use super::wire::Request;

/// Bit of the SET_VRING_KICK/CALL/ERR payload that says "no descriptor: poll".
const INVALID_FD_FLAG: u64 = 1 << 8;
/// Bits of the same payload that hold the ring index.
const INDEX_MASK: u64 = 0xff;

/// Checks a SET_VRING_BASE value against the ring it starts: a 16-bit index for a split
/// ring; for a packed ring a position below the size in bits 0-14 with the wrap counter
/// in bit 15, and in bits 16-31 QEMU's used position, which is not needed (no chain is in
/// flight across a restart, so the device's used position starts at the avail one).
fn check_base(index: u32, base: u32, size: u16, layout: Layout) -> Result<(), Violation> {
    let why = match layout {
        Layout::Split { .. } if base > u32::from(u16::MAX) => "a split ring's index has 16 bits",
        Layout::Packed if base & 0x7fff >= u32::from(size) => {
            "a packed ring's position must be below its size"
        }
        _ => return Ok(()),
    };
    Err(Violation::RingBase { index, base, why })
}

/// One ring's configuration as the front-end set it.
#[derive(Debug, Default)]
pub struct VringState {
    /// Queue size (SET_VRING_NUM).
    pub size: Option<u16>,
    /// Front-end virtual addresses (SET_VRING_ADDR).
    pub addrs: Option<RingAddrs>,
    /// Where the ring starts, as SET_VRING_BASE sent it and GET_VRING_BASE reports it:
    /// the next avail index (split), or position and wrap counter (packed).
    pub base: u32,
    /// Started by SET_VRING_KICK, stopped by GET_VRING_BASE.
    pub started: bool,
    /// What SET_VRING_ENABLE last asked, if it was sent.
    pub enable_request: Option<bool>,
    /// Guest kicks us here; `None` in polling mode.
    pub kick: Option<File>,
    /// We interrupt the guest here (shared with the data plane's snapshots).
    pub call: Option<Arc<File>>,
    /// The data plane's cursor while started.
    pub shared: Option<Arc<RingShared>>,
    /// We report ring errors here.
    pub err: Option<File>,
}

impl VringState {
    /// Whether the ring may carry packets, given whether bit 30 was acked (rule 6).
    pub fn effective_enable(&self, bit30_acked: bool) -> bool {
        if bit30_acked {
            self.enable_request.unwrap_or(false)
        } else {
            true
        }
    }
}

impl NetDevice {
    fn ring_index(&self, index: u64) -> Result<usize, Violation> {
        let rings = self.rings.len() as u32;
        match u32::try_from(index) {
            Ok(i) if i < rings => Ok(i as usize),
            _ => Err(Violation::RingIndex {
                index: index.min(u64::from(u32::MAX)) as u32,
                rings,
            }),
        }
    }

    fn stopped_ring(&self, index: u32) -> Result<usize, Violation> {
        let i = self.ring_index(u64::from(index))?;
        if self.rings[i].started {
            return Err(Violation::RingRunning(index));
        }
        Ok(i)
    }

    pub(super) fn set_vring_num(&mut self, req: &Request) -> Result<Reply, Violation> {
        no_fds(req)?;
        self.need_owner()?;
        let VhostUserVringState { index, num } = vring_state(req)?;
        let i = self.stopped_ring(index)?;
        let size = vring::check_queue_size(num).map_err(|err| Violation::Ring { index, err })?;
        self.rings[i].size = Some(size);
        Ok(Reply::None)
    }

    pub(super) fn set_vring_base(&mut self, req: &Request) -> Result<Reply, Violation> {
        no_fds(req)?;
        self.need_owner()?;
        let VhostUserVringState { index, num } = vring_state(req)?;
        let i = self.stopped_ring(index)?;
        // Checked here for split rings, whose indexes count freely in 16 bits, and again
        // when the ring starts, once the layout and size are final.
        if self.ring_layout() != Layout::Packed && num > u32::from(u16::MAX) {
            return Err(Violation::RingBase {
                index,
                base: num,
                why: "a split ring's index has 16 bits",
            });
        }
        self.rings[i].base = num;
        Ok(Reply::None)
    }

    pub(super) fn set_vring_addr(&mut self, req: &Request) -> Result<Reply, Violation> {
        no_fds(req)?;
        self.need_owner()?;
        let msg: VhostUserVringAddr = body(req)?;
        let (index, flags) = (msg.index, msg.flags);
        let i = self.stopped_ring(index)?;
        if flags != 0 {
            return Err(Violation::RingAddrFlags { index, flags });
        }
        let size = self.rings[i].size.ok_or(Violation::RingIncomplete {
            index,
            missing: "SET_VRING_NUM",
        })?;
        if self.memory.is_empty() {
            return Err(Violation::NoMemory);
        }
        let addrs = RingAddrs {
            desc: msg.descriptor,
            avail: msg.available,
            used: msg.used,
        };
        vring::translate(&self.memory, size, addrs, self.ring_layout())
            .map_err(|err| Violation::Ring { index, err })?;
        self.rings[i].addrs = Some(addrs);
        Ok(Reply::None)
    }

    pub(super) fn get_vring_base(&mut self, req: &Request) -> Result<Reply, Violation> {
        no_fds(req)?;
        self.need_owner()?;
        let VhostUserVringState { index, .. } = vring_state(req)?;
        let i = self.ring_index(u64::from(index))?;
        let was_started = self.rings[i].started;
        self.rings[i].started = false;
        self.rings[i].kick = None;
        if was_started {
            // No poller may touch the ring once the front-end has its index back
            // (republish waits for every PMD).
            self.republish();
            let ring = &mut self.rings[i];
            if let Some(shared) = ring.shared.take() {
                ring.base = shared.vring_base();
            }
            tracing::info!(port = %self.cfg.port, ring = index, base = ring.base, "ring stopped");
        }
        let reply = VhostUserVringState::new(index, self.rings[i].base);
        Ok(Reply::Payload(reply.as_slice().to_vec()))
    }

    /// Parses the u64 payload of KICK/CALL/ERR and the descriptor that goes with it, which
    /// must be an eventfd (made non-blocking here).
    fn ring_fd(
        &self,
        req: &mut Request,
        which: &'static str,
    ) -> Result<(usize, Option<File>), Violation> {
        let value = body::<VhostUserU64>(req)?.value;
        let reserved = value & !(INDEX_MASK | INVALID_FD_FLAG);
        if reserved != 0 {
            return Err(Violation::Unsupported(
                "reserved bits set in a KICK/CALL/ERR payload",
            ));
        }
        let i = self.ring_index(value & INDEX_MASK)?;
        let no_fd = value & INVALID_FD_FLAG != 0;
        let mut fds = take_fds(req, if no_fd { 0 } else { 1 })?;
        let fd = fds.pop();
        if let Some(file) = &fd {
            super::socket::accept_eventfd(file).map_err(|found| Violation::NotAnEventfd {
                index: i as u32,
                which,
                found,
            })?;
        }
        Ok((i, fd))
    }

    pub(super) fn set_vring_kick(&mut self, req: &mut Request) -> Result<Reply, Violation> {
        self.need_owner()?;
        let (i, fd) = self.ring_fd(req, "kick")?;
        let index = i as u32;
        let features = self.features_for_start(index)?;
        let ring = &self.rings[i];
        let size = ring.size.ok_or(Violation::RingIncomplete {
            index,
            missing: "SET_VRING_NUM",
        })?;
        let addrs = ring.addrs.ok_or(Violation::RingIncomplete {
            index,
            missing: "SET_VRING_ADDR",
        })?;
        let layout = Layout::from_features(features);
        let translated = vring::translate(&self.memory, size, addrs, layout)
            .map_err(|err| Violation::Ring { index, err })?;
        check_base(index, ring.base, size, layout)?;
        let bit30 = features & mask(bit::PROTOCOL_FEATURES) != 0;
        let ring = &mut self.rings[i];
        ring.kick = fd;
        let restarted = ring.started;
        if !restarted {
            let runtime = RingRuntime::start(
                index as u16,
                ring.base,
                translated,
                self.memory.clone(),
                RingFeatures::from_features(features),
                ring.effective_enable(bit30),
                ring.call.clone(),
            );
            ring.shared = Some(runtime.shared.clone());
        }
        ring.started = true;
        tracing::info!(
            port = %self.cfg.port,
            ring = index,
            size,
            base = ring.base,
            enabled = ring.effective_enable(bit30),
            polling = ring.kick.is_none(),
            restarted,
            "ring started"
        );
        self.republish();
        Ok(Reply::None)
    }

    pub(super) fn set_vring_call(&mut self, req: &mut Request) -> Result<Reply, Violation> {
        self.need_owner()?;
        let (i, fd) = self.ring_fd(req, "call")?;
        self.rings[i].call = fd.map(Arc::new);
        if self.rings[i].started {
            self.republish();
        }
        Ok(Reply::None)
    }

    pub(super) fn set_vring_err(&mut self, req: &mut Request) -> Result<Reply, Violation> {
        self.need_owner()?;
        let (i, fd) = self.ring_fd(req, "err")?;
        self.rings[i].err = fd;
        Ok(Reply::None)
    }

    pub(super) fn set_vring_enable(&mut self, req: &Request) -> Result<Reply, Violation> {
        no_fds(req)?;
        self.need_owner()?;
        let VhostUserVringState { index, num } = vring_state(req)?;
        let i = self.ring_index(u64::from(index))?;
        // QEMU enables rings before SET_FEATURES (rule 10): only a SET_FEATURES that
        // left bit 30 out makes this message illegal.
        if let Some(acked) = self.acked_features() {
            if acked & mask(bit::PROTOCOL_FEATURES) == 0 {
                return Err(Violation::Enable("bit 30 was not acked by SET_FEATURES"));
            }
        }
        let enable = match num {
            0 => false,
            1 => true,
            _ => return Err(Violation::Enable("value is neither 0 nor 1")),
        };
        self.rings[i].enable_request = Some(enable);
        tracing::info!(port = %self.cfg.port, ring = index, enabled = enable, started = self.rings[i].started, "ring enable");
        if self.rings[i].started {
            self.republish();
        }
        Ok(Reply::None)
    }
}
