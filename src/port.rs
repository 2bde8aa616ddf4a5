//! A switch port: its socket (server or client role), the current front-end session and
//! the counters that outlive sessions.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmd::dataplane::Dataplane;
use thiserror::Error;

use crate::config::{PortConfig, Role, Transport};
use crate::connection::{Connection, End};
use crate::vhost_user::device::{DeviceConfig, Limits};
use crate::vhost_user::session::{Session, SessionCounters};

/// First and largest delay between client-mode connection attempts.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Largest delay between client-mode connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A port could not be set up.
#[derive(Debug, Error)]
pub enum PortError {
    /// Something other than a socket is at the path.
    #[error("port {port}: refusing to replace {path}: it is not a socket")]
    NotASocket {
        /// The port.
        port: String,
        /// The path.
        path: PathBuf,
    },
    /// A live backend already listens there.
    #[error("port {port}: {path} is in use by a running backend")]
    InUse {
        /// The port.
        port: String,
        /// The path.
        path: PathBuf,
    },
    /// bind/listen failed.
    #[error("port {port}: cannot listen on {path}: {err}")]
    Listen {
        /// The port.
        port: String,
        /// The path.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
}

/// How the port reaches its front-end.
#[derive(Debug)]
pub enum Endpoint {
    /// We listen; `listener` is the bound socket.
    Server {
        /// The bound, nonblocking listener.
        listener: UnixListener,
    },
    /// We connect, retrying at `next_attempt`.
    Client {
        /// When to try next (None while connected).
        next_attempt: Option<Instant>,
        /// Delay after the next failure.
        backoff: Duration,
    },
}

/// One port of the switch.
#[derive(Debug)]
pub struct Port {
    /// Settings.
    pub config: PortConfig,
    /// Listener or reconnect state.
    pub endpoint: Endpoint,
    /// The connected front-end, if any.
    pub session: Option<Connection>,
    /// Counters kept across sessions.
    pub counters: SessionCounters,
    /// Why the last session ended.
    pub last_end: Option<String>,
    limits: Limits,
    dataplane: Option<(Arc<Dataplane>, usize)>,
}

impl Port {
    /// Creates the port: binds the socket in server role (replacing a stale socket file),
    /// or schedules the first connection attempt in client role.
    /// `dataplane`: where the port's snapshots go, and the port's index there.
    pub fn open(
        config: PortConfig,
        limits: Limits,
        dataplane: Option<(Arc<Dataplane>, usize)>,
    ) -> Result<Port, PortError> {
        let endpoint = match config.role {
            Role::Server => Endpoint::Server {
                listener: listen(&config.name, &config.socket)?,
            },
            Role::Client => Endpoint::Client {
                next_attempt: Some(Instant::now()),
                backoff: RECONNECT_MIN,
            },
        };
        Ok(Port {
            config,
            endpoint,
            session: None,
            counters: SessionCounters::default(),
            last_end: None,
            limits,
            dataplane,
        })
    }

    fn device_config(&self) -> DeviceConfig {
        DeviceConfig {
            port: self.config.name.clone(),
            mac: self.config.mac,
            queue_pairs: self.config.queue_pairs,
            mtu: self.config.mtu,
            offloads: self.config.offloads,
            limits: self.limits,
            dataplane: self.dataplane.clone(),
        }
    }

    /// Starts a session on a new connection.
    pub fn attach(&mut self, stream: UnixStream) -> io::Result<()> {
        let session = match self.config.transport {
            Transport::VhostUser => {
                Connection::VhostUser(Box::new(Session::new(stream, self.device_config())?))
            }
            Transport::VfioUser => Connection::VfioUser(Box::new(
                crate::vfio_user::session::Session::new(stream, self.device_config())?,
            )),
        };
        self.counters.connections += 1;
        self.session = Some(session);
        if let Endpoint::Client {
            next_attempt,
            backoff,
        } = &mut self.endpoint
        {
            *next_attempt = None;
            *backoff = RECONNECT_MIN;
        }
        tracing::info!(port = %self.config.name, "front-end connected");
        Ok(())
    }

    /// Ends the session: rings stop, memory is unmapped, descriptors close; counters stay.
    pub fn detach(&mut self, why: &End) {
        if self.session.take().is_some() {
            if why.is_memory_fault() {
                self.counters.memory_faults += 1;
            }
            if why.is_peer_closed() {
                tracing::info!(port = %self.config.name, "front-end disconnected");
            } else {
                tracing::warn!(port = %self.config.name, "connection closed: {why}");
            }
            self.last_end = Some(why.to_string());
        }
        if let Endpoint::Client { next_attempt, .. } = &mut self.endpoint {
            *next_attempt = Some(Instant::now() + RECONNECT_MIN);
        }
    }

    /// Client role: tries to connect if it is time. Returns true when connected now.
    pub fn try_connect(&mut self, now: Instant) -> bool {
        let Endpoint::Client {
            next_attempt: Some(at),
            backoff,
        } = &mut self.endpoint
        else {
            return false;
        };
        if *at > now {
            return false;
        }
        match UnixStream::connect(&self.config.socket) {
            Ok(stream) => match self.attach(stream) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(port = %self.config.name, "cannot use connection: {e}");
                    false
                }
            },
            Err(e) => {
                tracing::debug!(port = %self.config.name, path = %self.config.socket.display(), "connect failed: {e}; retry in {backoff:?}");
                *at = now + *backoff;
                *backoff = (*backoff * 2).min(RECONNECT_MAX);
                false
            }
        }
    }

    /// When this port next wants to try connecting.
    pub fn next_attempt(&self) -> Option<Instant> {
        match &self.endpoint {
            Endpoint::Client { next_attempt, .. } if self.session.is_none() => *next_attempt,
            _ => None,
        }
    }

    /// Removes the socket file a server port created.
    pub fn remove_socket(&self) {
        if matches!(self.endpoint, Endpoint::Server { .. }) {
            let _ = std::fs::remove_file(&self.config.socket);
        }
    }
}

fn listen(port: &str, path: &Path) -> Result<UnixListener, PortError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(PortError::NotASocket {
                port: port.into(),
                path: path.into(),
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(PortError::InUse {
                port: port.into(),
                path: path.into(),
            });
        }
        tracing::info!(port, path = %path.display(), "replacing stale socket");
        let _ = std::fs::remove_file(path);
    }
    let listen_err = |err| PortError::Listen {
        port: port.into(),
        path: path.into(),
        err,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(listen_err)?;
    }
    let listener = crate::listen::listen_published(path, None).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    Ok(listener)
}
