//! One client connection: read commands, let the device handle them, answer.
//!
//! Every command gets exactly one reply unless the client set NO_REPLY (QEMU posts
//! region writes that way): the reply payload, or the header alone with ERROR and an
//! errno when the device refused it. A refusal never closes the connection; a broken
//! stream (framing) does.

use std::os::unix::net::UnixStream;

use super::device::VirtioNetPci;
use super::wire::{self, FramingError, MessageReader, ReadEvent, Request};
use crate::vhost_user::device::DeviceConfig;
use crate::vhost_user::session::SessionCounters;

/// Commands handled per readiness event before other ports get a turn.
const MESSAGES_PER_WAKEUP: usize = 64;

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the connection.
    PeerClosed,
    /// The byte stream broke the protocol's framing.
    Framing(FramingError),
    /// A reply could not be sent (the client does not read, or the socket broke).
    ReplyFailed(std::io::Error),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::PeerClosed => write!(f, "client closed the connection"),
            SessionEnd::Framing(e) => write!(f, "framing error: {e}"),
            SessionEnd::ReplyFailed(e) => write!(f, "could not send a reply: {e}"),
        }
    }
}

/// A connected vfio-user client and the device it drives.
#[derive(Debug)]
pub struct Session {
    sock: UnixStream,
    reader: MessageReader,
    device: VirtioNetPci,
}

impl Session {
    /// Starts a session on a connected stream (made nonblocking here).
    pub fn new(sock: UnixStream, cfg: DeviceConfig) -> std::io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Session {
            sock,
            reader: MessageReader::new(cfg.limits.max_fds_per_message),
            device: VirtioNetPci::new(cfg)?,
        })
    }

    /// The socket, for readiness registration.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The device state.
    pub fn device(&self) -> &VirtioNetPci {
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
        mut req: Request,
        counters: &mut SessionCounters,
    ) -> Result<(), SessionEnd> {
        let header = req.header;
        let port = &self.device.cfg.port;
        tracing::debug!(port = %port, id = header.id, command = ?header.command, size = req.payload.len(), fds = req.fds.len(), no_reply = header.no_reply(), "command");
        let port = port.clone();
        let (bytes, fd) = match self.device.handle(&mut req) {
            Ok(reply) => (wire::encode_reply(&header, &reply.payload), reply.fd),
            Err(refusal) => {
                counters.rejected += 1;
                counters.nacked += 1;
                let errno = refusal.errno();
                tracing::warn!(port = %port, command = ?header.command, errno, "refused: {refusal}");
                (wire::encode_error(&header, errno), None)
            }
        };
        if header.no_reply() {
            return Ok(());
        }
        let fds: Vec<&std::fs::File> = fd.as_deref().into_iter().collect();
        wire::send(&self.sock, &bytes, &fds).map_err(SessionEnd::ReplyFailed)
    }
}
