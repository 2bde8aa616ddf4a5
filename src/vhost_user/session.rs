//! One front-end connection: read requests, let the device handle them, answer.
//!
//! How a refused request is answered (DESIGN §4 rule 3):
//! - REPLY_ACK negotiated and NEED_REPLY set: a NACK (u64 `1`), and the session goes on;
//! - otherwise the front-end could not learn of the refusal, so the connection is closed
//!   (it sees EOF at once, never waits for an answer that will not come). A refused
//!   request that itself solicits a reply (GET_*) is always answered by closing.

use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::FrontendReq;

use super::device::{DeviceConfig, NetDevice, Reply};
use super::violation::Violation;
use super::wire::{self, FramingError, MessageReader, ReadEvent};

/// Requests handled per readiness event before giving other ports a turn.
const MESSAGES_PER_WAKEUP: usize = 64;
const ACK: u64 = 0;
const NACK: u64 = 1;

/// Control-plane counters of one port, kept across connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Front-end connections accepted or made.
    pub connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests refused (NACKed or answered by closing).
    pub rejected: u64,
    /// Of those, answered with a NACK.
    pub nacked: u64,
    /// Connections closed because the framing broke.
    pub framing_errors: u64,
    /// Connections failed because the front-end shrank its memory under the switch.
    pub memory_faults: u64,
}

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The front-end closed the connection.
    PeerClosed,
    /// The byte stream broke the protocol's framing.
    Framing(FramingError),
    /// A refused request that could not be NACKed.
    Rejected(FrontendReq, Violation),
    /// A reply could not be sent (the front-end does not read, or the socket broke).
    ReplyFailed(std::io::Error),
    /// The front-end shrank a memory file under the switch's mapping (accesses faulted).
    MemoryFault(u64),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::PeerClosed => write!(f, "front-end closed the connection"),
            SessionEnd::Framing(e) => write!(f, "framing error: {e}"),
            SessionEnd::Rejected(code, v) => {
                write!(
                    f,
                    "refused {code:?} that cannot be NACKed ({}): {v}",
                    v.rule()
                )
            }
            SessionEnd::ReplyFailed(e) => write!(f, "could not send a reply: {e}"),
            SessionEnd::MemoryFault(n) => write!(
                f,
                "guest memory shrank under its mapping ({n} faulting accesses repaired): port failed"
            ),
        }
    }
}

/// A connected front-end and the device state it built.
#[derive(Debug)]
pub struct Session {
    sock: UnixStream,
    reader: MessageReader,
    device: NetDevice,
}

impl Session {
    /// Starts a session on a connected stream (made nonblocking here).
    pub fn new(sock: UnixStream, cfg: DeviceConfig) -> std::io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Session {
            sock,
            reader: MessageReader::new(cfg.limits.max_fds_per_message),
            device: NetDevice::new(cfg),
        })
    }

    /// The socket, for readiness registration.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The device state.
    pub fn device(&self) -> &NetDevice {
        &self.device
    }

    /// Handles what the socket has. `Err` ends the session.
    pub fn on_readable(&mut self, counters: &mut SessionCounters) -> Result<(), SessionEnd> {
        for _ in 0..MESSAGES_PER_WAKEUP {
            match self.reader.read(&self.sock) {
                Ok(ReadEvent::Request(req)) => {
                    counters.requests += 1;
                    self.dispatch(req, counters)?;
                }
                Ok(ReadEvent::Pending) => return Ok(()),
                Ok(ReadEvent::Closed) => return Err(SessionEnd::PeerClosed),
                Err(e) => {
                    counters.framing_errors += 1;
                    return Err(SessionEnd::Framing(e));
                }
            }
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        mut req: wire::Request,
        counters: &mut SessionCounters,
    ) -> Result<(), SessionEnd> {
        let port = self.device.cfg.port.clone();
        let code = req.code;
        let need_reply = req.need_reply();
        let reply_ack_before = self.device.reply_ack();
        tracing::debug!(port = %port, request = ?code, need_reply, size = req.payload.len(), fds = req.fds.len(), "request");
        match self.device.handle(&mut req) {
            Ok(Reply::Payload(payload)) => self.send(code, &payload),
            Ok(Reply::None) => {
                // A SET_PROTOCOL_FEATURES that negotiates REPLY_ACK answers under the new rule.
                let reply_ack = if code == FrontendReq::SET_PROTOCOL_FEATURES {
                    self.device.reply_ack()
                } else {
                    reply_ack_before
                };
                if need_reply && reply_ack {
                    self.send(code, &ACK.to_ne_bytes())?;
                }
                Ok(())
            }
            Err(violation) => {
                counters.rejected += 1;
                let nack = need_reply && reply_ack_before && !NetDevice::solicits_reply(code);
                tracing::warn!(
                    port = %port,
                    request = ?code,
                    rule = violation.rule(),
                    answer = if nack { "NACK" } else { "close" },
                    "rejected: {violation}"
                );
                if nack {
                    counters.nacked += 1;
                    self.send(code, &NACK.to_ne_bytes())
                } else {
                    Err(SessionEnd::Rejected(code, violation))
                }
            }
        }
    }

    fn send(&self, code: FrontendReq, payload: &[u8]) -> Result<(), SessionEnd> {
        wire::send_reply(&self.sock, code, payload).map_err(SessionEnd::ReplyFailed)
    }
}
