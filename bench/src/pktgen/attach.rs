//! The vhost-user side of a pktgen port: connect (client) or accept (server), negotiate,
//! then start the rings, in DPDK 22.11 virtio_user's order (`/work/shared/PEERS.md`):
//! SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_VRING_CALL ×2, SET_FEATURES,
//! SET_STATUS(FEATURES_OK) + GET_STATUS, SET_MEM_TABLE, per ring NUM/BASE/ADDR/KICK,
//! SET_VRING_ENABLE 1 ×2, SET_STATUS(DRIVER_OK). Stopping: SET_VRING_ENABLE 0 ×2,
//! GET_VRING_BASE ×2.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{PortSpec, Role};
use crate::frontend::Frontend;
use crate::memory::SharedMemory;
use crate::sequences::bits::*;
use crate::vring::Vring;
use crate::wire::Connection;

/// Protocol features we take when offered.
const WANTED_PROTOCOL: u64 = P::MQ.bits() | P::REPLY_ACK.bits() | P::STATUS.bits();

/// A negotiated vhost-user session of one port.
pub(crate) struct Session {
    pub fe: Frontend,
    pub features: u64,
    pub protocol: u64,
    pub kick: [EventFd; 2],
    /// Call eventfds, kept open for the session (the rings never ask for interrupts).
    _call: [EventFd; 2],
}

impl Session {
    fn has(&self, f: P) -> bool {
        self.protocol & f.bits() == f.bits()
    }
}

fn stopped(stop: Option<&AtomicBool>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::Relaxed))
}

/// Connects to the backend (client role, retrying until `timeout`) or waits for it to
/// connect (server role).
pub(crate) fn connect(
    spec: &PortSpec,
    timeout: Duration,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<Frontend> {
    let path = &spec.socket;
    match spec.role {
        Role::Client => {
            let deadline = Instant::now() + timeout;
            loop {
                match Connection::connect(path) {
                    Ok(c) => return Ok(Frontend::new(c)),
                    Err(e) if Instant::now() >= deadline || stopped(stop) => {
                        return Err(e).with_context(|| {
                            format!(
                                "port {}: no vhost-user backend at {} after {timeout:?}",
                                spec.name,
                                path.display()
                            )
                        })
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Role::Server => {
            if let Ok(md) = std::fs::symlink_metadata(path) {
                if !md.file_type().is_socket() {
                    bail!(
                        "port {}: {} exists and is not a socket",
                        spec.name,
                        path.display()
                    );
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("removing stale {}", path.display()))?;
            }
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
            }
            let listener = UnixListener::bind(path)
                .with_context(|| format!("port {}: listening on {}", spec.name, path.display()))?;
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + timeout;
            let accepted = loop {
                match listener.accept() {
                    Ok((s, _)) => break Ok(s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline || stopped(stop) {
                            break Err(anyhow::anyhow!(
                                "port {}: no backend connected to {} within {timeout:?}",
                                spec.name,
                                path.display()
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => break Err(e).context("accept"),
                }
            };
            // One backend per port: the socket is not needed any more.
            drop(listener);
            let _ = std::fs::remove_file(path);
            Ok(Frontend::from_stream(accepted?)?)
        }
    }
}

/// Negotiates features: VERSION_1, bit 30, MRG_RXBUF and `extra` (EVENT_IDX, INDIRECT_DESC)
/// as far as offered; MQ, REPLY_ACK, STATUS protocol features when offered; FEATURES_OK
/// checked with GET_STATUS when STATUS was negotiated.
pub(crate) fn negotiate(mut fe: Frontend, extra: u64, name: &str) -> anyhow::Result<Session> {
    let ctx = |what: &str| format!("port {name}: {what}");
    fe.set_owner(false).with_context(|| ctx("SET_OWNER"))?;
    let offered = fe.get_features().with_context(|| ctx("GET_FEATURES"))?;
    let mut protocol = 0;
    if offered & PROTOCOL_FEATURES != 0 {
        let p = fe
            .get_protocol_features()
            .with_context(|| ctx("GET_PROTOCOL_FEATURES"))?;
        protocol = p & WANTED_PROTOCOL;
        fe.set_protocol_features(protocol, false)
            .with_context(|| ctx("SET_PROTOCOL_FEATURES"))?;
    }
    let kick = [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?];
    let call = [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?];
    for (i, c) in call.iter().enumerate() {
        fe.set_vring_call(i as u32, Some(c.as_raw_fd()), false)
            .with_context(|| ctx("SET_VRING_CALL"))?;
    }
    let wanted = F_VERSION_1 | NET_F_MRG_RXBUF | PROTOCOL_FEATURES | extra;
    let features = offered & wanted;
    if offered & F_VERSION_1 == 0 {
        tracing::warn!("port {name}: backend does not offer VERSION_1 (features {offered:#x}); using legacy headers");
    }
    fe.set_features(features, false)
        .with_context(|| ctx("SET_FEATURES"))?;
    let mut s = Session {
        fe,
        features,
        protocol,
        kick,
        _call: call,
    };
    if s.has(P::STATUS) {
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        let ack = s.has(P::REPLY_ACK);
        s.fe.set_status(st, ack)
            .with_context(|| ctx("SET_STATUS(FEATURES_OK)"))?;
        let got = s.fe.get_status().with_context(|| ctx("GET_STATUS"))?;
        if got & u64::from(STATUS_FEATURES_OK) == 0 {
            bail!("port {name}: backend refused features {features:#x} (status {got:#x} lacks FEATURES_OK)");
        }
    }
    Ok(s)
}

/// Hands the memory and the rings to the backend and starts them (the driver has
/// initialized the rings and posted its RX buffers).
pub(crate) fn start(
    s: &mut Session,
    mem: &SharedMemory,
    rx: &Vring,
    tx: &Vring,
    name: &str,
) -> anyhow::Result<()> {
    let ctx = |what: &str| format!("port {name}: {what}");
    let ack = s.has(P::REPLY_ACK);
    s.fe.set_mem_table(&[(mem.region(), mem.fd())], ack)
        .with_context(|| ctx("SET_MEM_TABLE"))?;
    for (i, v) in [rx, tx].into_iter().enumerate() {
        let kick = s.kick[i].as_raw_fd();
        s.fe.setup_vring(i as u32, v, 0, 0, Some(kick), None, false)
            .with_context(|| ctx("ring setup"))?;
    }
    if s.features & PROTOCOL_FEATURES != 0 {
        for i in 0..2 {
            s.fe.set_vring_enable(i, true, false)
                .with_context(|| ctx("SET_VRING_ENABLE"))?;
        }
    }
    if s.has(P::STATUS) {
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        s.fe.set_status(st, ack)
            .with_context(|| ctx("SET_STATUS(DRIVER_OK)"))?;
    }
    Ok(())
}

/// Stops the rings (best effort): SET_VRING_ENABLE 0, GET_VRING_BASE. Returns the bases.
pub(crate) fn stop(s: &mut Session) -> anyhow::Result<[u32; 2]> {
    s.fe.set_timeout(Duration::from_secs(1));
    if s.features & PROTOCOL_FEATURES != 0 {
        for i in 0..2 {
            s.fe.set_vring_enable(i, false, false)?;
        }
    }
    Ok([s.fe.get_vring_base(0)?, s.fe.get_vring_base(1)?])
}
