//! A port's connected front-end, whichever transport it speaks: the control loop and
//! `ctl` handle both kinds through this one type; the data plane never sees it.

use std::os::unix::net::UnixStream;

use crate::vfio_user;
use crate::vhost_user::session::{Session, SessionCounters, SessionEnd};

/// The session of a connected front-end.
#[derive(Debug)]
pub enum Connection {
    /// A vhost-user front-end.
    VhostUser(Box<Session>),
    /// A vfio-user client driving the emulated PCI device.
    VfioUser(Box<vfio_user::session::Session>),
}

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    /// A vhost-user session ended (or the control loop ended it: reply, memory fault).
    VhostUser(SessionEnd),
    /// A vfio-user session ended.
    VfioUser(vfio_user::session::SessionEnd),
}

impl From<SessionEnd> for End {
    fn from(e: SessionEnd) -> End {
        End::VhostUser(e)
    }
}

impl From<vfio_user::session::SessionEnd> for End {
    fn from(e: vfio_user::session::SessionEnd) -> End {
        End::VfioUser(e)
    }
}

impl End {
    /// The front-end closed the connection (not an error).
    pub fn is_peer_closed(&self) -> bool {
        matches!(
            self,
            End::VhostUser(SessionEnd::PeerClosed)
                | End::VfioUser(vfio_user::session::SessionEnd::PeerClosed)
        )
    }

    /// The front-end shrank its memory under the switch.
    pub fn is_memory_fault(&self) -> bool {
        matches!(self, End::VhostUser(SessionEnd::MemoryFault(_)))
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::VhostUser(e) => e.fmt(f),
            End::VfioUser(e) => e.fmt(f),
        }
    }
}

impl Connection {
    /// The socket, for readiness registration.
    pub fn socket(&self) -> &UnixStream {
        match self {
            Connection::VhostUser(s) => s.socket(),
            Connection::VfioUser(s) => s.socket(),
        }
    }

    /// Handles what the socket has. `Err` ends the session.
    pub fn on_readable(&mut self, counters: &mut SessionCounters) -> Result<(), End> {
        match self {
            Connection::VhostUser(s) => s.on_readable(counters).map_err(End::from),
            Connection::VfioUser(s) => s.on_readable(counters).map_err(End::from),
        }
    }

    /// Faults repaired in the front-end's memory (non-zero: fail the port).
    pub fn memory_faults(&self) -> u64 {
        match self {
            Connection::VhostUser(s) => s.device().memory_faults(),
            Connection::VfioUser(s) => s.device().memory_faults(),
        }
    }
}
