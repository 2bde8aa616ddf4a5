//! The control thread: one epoll loop over every port's listener and session.
//!
//! Every message of every port is handled here, in order, never blocking: sockets are
//! nonblocking, replies are sent without waiting, and a client-mode port's reconnect is
//! a deadline, not a sleep.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmd::dataplane::Dataplane;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::port::{Endpoint, Port};
use crate::vhost_user::session::SessionEnd;

const KIND_SHUTDOWN: u64 = 0;
const KIND_LISTENER: u64 = 1;
const KIND_SESSION: u64 = 2;
const KIND_CONTROL: u64 = 3;
/// How often expired FDB entries are swept.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often the memory of every front-end is checked for faults (a shrunk file).
const FAULT_CHECK: Duration = Duration::from_millis(100);

fn token(kind: u64, port: usize) -> u64 {
    (kind << 32) | port as u64
}

/// The control loop and the ports it owns.
pub struct ControlLoop {
    epoll: Epoll,
    ports: Vec<Port>,
    shutdown: EventFd,
    dataplane: Arc<Dataplane>,
    control: Option<UnixListener>,
    next_housekeeping: Instant,
}

impl ControlLoop {
    /// Registers the ports and the control socket; `shutdown` ends [`ControlLoop::run`]
    /// when written.
    pub fn new(
        ports: Vec<Port>,
        shutdown: EventFd,
        dataplane: Arc<Dataplane>,
        control: Option<UnixListener>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        add(&epoll, shutdown.as_raw_fd(), token(KIND_SHUTDOWN, 0))?;
        if let Some(listener) = &control {
            add(&epoll, listener.as_raw_fd(), token(KIND_CONTROL, 0))?;
        }
        for (i, port) in ports.iter().enumerate() {
            if let Endpoint::Server { listener } = &port.endpoint {
                add(&epoll, listener.as_raw_fd(), token(KIND_LISTENER, i))?;
            }
        }
        Ok(ControlLoop {
            epoll,
            ports,
            shutdown,
            dataplane,
            control,
            next_housekeeping: Instant::now() + HOUSEKEEPING,
        })
    }

    /// The ports (for final counters after `run`).
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// Runs until the shutdown eventfd is written.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            if Instant::now() >= self.next_housekeeping {
                self.dataplane.expire_fdb();
                self.next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            self.fail_faulted_ports();
            self.connect_clients();
            let timeout = self.timeout_ms();
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for event in &events[..n] {
                let (kind, index) = (event.data() >> 32, (event.data() & 0xffff_ffff) as usize);
                match kind {
                    KIND_SHUTDOWN => {
                        let _ = self.shutdown.read();
                        return Ok(());
                    }
                    KIND_LISTENER => self.accept(index),
                    KIND_CONTROL => self.answer_control(),
                    _ => self.serve(index, event.event_set()),
                }
            }
        }
    }

    fn timeout_ms(&self) -> i32 {
        let now = Instant::now();
        self.ports
            .iter()
            .filter_map(Port::next_attempt)
            .chain(std::iter::once(self.next_housekeeping))
            .map(|at| {
                let wait = at.saturating_duration_since(now).min(FAULT_CHECK);
                wait.as_millis() as i32 + 1
            })
            .min()
            .unwrap_or(-1)
    }

    fn answer_control(&mut self) {
        let Some(listener) = &self.control else {
            return;
        };
        while let Ok((stream, _)) = listener.accept() {
            if let Err(e) = crate::ctl::serve(stream, &self.ports, &self.dataplane) {
                tracing::debug!("control client went away: {e}");
            }
        }
    }

    fn connect_clients(&mut self) {
        let now = Instant::now();
        for i in 0..self.ports.len() {
            if self.ports[i].try_connect(now) {
                self.register_session(i);
            }
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let port = &mut self.ports[index];
            let Endpoint::Server { listener } = &port.endpoint else {
                return;
            };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(port = %port.config.name, "accept failed: {e}");
                    return;
                }
            };
            if port.session.is_some() {
                // The current front-end may have closed without us having read its EOF
                // yet: drain it first, so a reconnect is not mistaken for a second one.
                self.serve(index, EventSet::IN);
            }
            let port = &mut self.ports[index];
            if port.session.is_some() {
                // One front-end at a time: the second one sees EOF at once, not a hang.
                tracing::warn!(port = %port.config.name, "refused a second front-end: the port already has one");
                continue;
            }
            match port.attach(stream) {
                Ok(()) => self.register_session(index),
                Err(e) => tracing::warn!(port = %port.config.name, "cannot use connection: {e}"),
            }
        }
    }

    fn register_session(&mut self, index: usize) {
        let fd = match &self.ports[index].session {
            Some(s) => s.socket().as_raw_fd(),
            None => return,
        };
        if let Err(e) = add(&self.epoll, fd, token(KIND_SESSION, index)) {
            tracing::error!(port = %self.ports[index].config.name, "cannot watch connection: {e}");
            self.ports[index].detach(&SessionEnd::ReplyFailed(e).into());
        }
    }

    /// Disconnects every front-end whose memory faulted (it shrank a file under our
    /// mapping): the fence kept the PMDs alive, and the port is reset for the next one.
    fn fail_faulted_ports(&mut self) {
        for port in &mut self.ports {
            let faults = port.session.as_ref().map_or(0, |s| s.memory_faults());
            if faults == 0 {
                continue;
            }
            if let Some(session) = &port.session {
                let fd = session.socket().as_raw_fd();
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            port.detach(&SessionEnd::MemoryFault(faults).into());
        }
    }

    fn serve(&mut self, index: usize, events: EventSet) {
        let port = &mut self.ports[index];
        let Some(session) = port.session.as_mut() else {
            return;
        };
        let fd = session.socket().as_raw_fd();
        let mut result = session.on_readable(&mut port.counters);
        if result.is_ok()
            && events.intersects(EventSet::HANG_UP | EventSet::ERROR)
            && !events.contains(EventSet::IN)
        {
            result = Err(SessionEnd::PeerClosed.into());
        }
        if let Err(end) = result {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            port.detach(&end);
        }
    }
}

fn add(epoll: &Epoll, fd: RawFd, data: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, data),
    )
}
