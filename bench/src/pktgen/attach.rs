//! The vhost-user side of a pktgen port: connect (client) or accept (server), negotiate,
//! then start the rings, in DPDK 22.11 virtio_user's order (`/work/shared/PEERS.md`):
//! SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_VRING_CALL ×2, SET_FEATURES,
//! SET_STATUS(FEATURES_OK) + GET_STATUS, SET_MEM_TABLE, per ring NUM/BASE/ADDR/KICK,
//! SET_VRING_ENABLE 1 ×2, SET_STATUS(DRIVER_OK), then one round trip (GET_STATUS, or
//! GET_FEATURES without STATUS) so that the back-end has acted on DRIVER_OK before traffic
//! starts (virtio_user does not send it). Stopping: SET_VRING_ENABLE 0 ×2,
//! GET_VRING_BASE ×2. Packed rings (RING_PACKED negotiated) go through the same messages:
//! SET_VRING_ADDR carries the descriptor ring and the driver and device event areas,
//! SET_VRING_BASE index 0 with wrap counter 1 (32768), as DPDK's virtio_user sends.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{PortSpec, Role};
use vhost_kit::frontend::Frontend;
use vhost_kit::memory::SharedMemory;
use vhost_kit::sequences::bits::*;
use vhost_kit::vring::Vring;
use vhost_kit::wire::Connection;

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

/// Negotiates features: VERSION_1, bit 30, MRG_RXBUF and `extra` (EVENT_IDX, INDIRECT_DESC,
/// RING_PACKED, IN_ORDER) as far as offered; MQ, REPLY_ACK, STATUS protocol features when offered; FEATURES_OK
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
        s.fe.setup_vring(i as u32, v, v.initial_base(), 0, Some(kick), None, false)
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
    // One more round trip before traffic: a back-end may act on the message that made the
    // device ready after it replied to it (DPDK 22.11 attaches its net_vhost port only
    // then, and drops what it forwards to a port not yet attached); it has finished once
    // it answers the next request.
    if s.has(P::STATUS) {
        let st = s.fe.get_status().with_context(|| ctx("GET_STATUS"))?;
        if st & u64::from(STATUS_DRIVER_OK) == 0 {
            tracing::warn!("port {name}: back-end status {st:#x} lacks DRIVER_OK");
        }
    } else {
        s.fe.get_features().with_context(|| ctx("GET_FEATURES"))?;
    }
    Ok(())
}

/// Stops the rings (best effort): SET_VRING_ENABLE 0, GET_VRING_BASE. Returns the bases.
pub(crate) fn stop(s: &mut Session) -> anyhow::Result<[u32; 2]> {
    s.fe.set_timeout(Duration::from_secs(5));
    if s.features & PROTOCOL_FEATURES != 0 {
        for i in 0..2 {
            s.fe.set_vring_enable(i, false, false)?;
        }
    }
    Ok([s.fe.get_vring_base(0)?, s.fe.get_vring_base(1)?])
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;

    use vhost::vhost_user::message::FrontendReq as R;

    use super::*;
    use vhost_kit::memory::HugePages;
    use vhost_kit::wire::testpeer::scripted_backend;

    /// The shared scripted backend (GET_VRING_BASE answers 7, 8), seen as (request,
    /// NEED_REPLY) pairs.
    fn backend(
        features: u64,
        protocol: u64,
        status_mask: u64,
    ) -> (UnixStream, JoinHandle<Vec<(u32, bool)>>) {
        let (sock, t) = scripted_backend(features, protocol, status_mask, 7);
        let pairs = std::thread::spawn(move || {
            t.join()
                .unwrap()
                .into_iter()
                .map(|m| (m.req, m.need_reply))
                .collect()
        });
        (sock, pairs)
    }

    const OFFERED: u64 =
        F_VERSION_1 | NET_F_MRG_RXBUF | PROTOCOL_FEATURES | RING_F_EVENT_IDX | NET_F_CSUM;
    const PROTOCOL: u64 = P::MQ.bits() | P::REPLY_ACK.bits() | P::STATUS.bits() | P::CONFIG.bits();

    #[test]
    fn handshake_follows_virtio_user_order_and_takes_what_it_needs() {
        let (sock, t) = backend(OFFERED, PROTOCOL, u64::MAX);
        let fe = Frontend::from_stream(sock).unwrap();
        let mut s = negotiate(fe, 0, "t").unwrap();
        assert_eq!(
            s.features,
            F_VERSION_1 | NET_F_MRG_RXBUF | PROTOCOL_FEATURES
        );
        assert_eq!(s.protocol, WANTED_PROTOCOL);
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let rx = Vring::new(&mem, 0, 256).unwrap();
        let tx = Vring::new(&mem, rx.end_offset(), 256).unwrap();
        start(&mut s, &mem, &rx, &tx, "t").unwrap();
        assert_eq!(stop(&mut s).unwrap(), [7, 8]);
        drop(s);
        let seen = t.join().unwrap();
        let mut want = vec![
            (R::SET_OWNER, false),
            (R::GET_FEATURES, false),
            (R::GET_PROTOCOL_FEATURES, false),
            (R::SET_PROTOCOL_FEATURES, false),
            (R::SET_VRING_CALL, false),
            (R::SET_VRING_CALL, false),
            (R::SET_FEATURES, false),
            (R::SET_STATUS, true),
            (R::GET_STATUS, false),
            (R::SET_MEM_TABLE, true),
        ];
        for _ in 0..2 {
            for r in [
                R::SET_VRING_NUM,
                R::SET_VRING_BASE,
                R::SET_VRING_ADDR,
                R::SET_VRING_KICK,
            ] {
                want.push((r, false));
            }
        }
        want.extend([
            (R::SET_VRING_ENABLE, false),
            (R::SET_VRING_ENABLE, false),
            (R::SET_STATUS, true),
            (R::GET_STATUS, false),
            (R::SET_VRING_ENABLE, false),
            (R::SET_VRING_ENABLE, false),
            (R::GET_VRING_BASE, false),
            (R::GET_VRING_BASE, false),
        ]);
        let want: Vec<(u32, bool)> = want.into_iter().map(|(r, n)| (u32::from(r), n)).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn optional_features_and_a_bare_backend() {
        // EVENT_IDX when asked; no bit 30: no protocol features, no enable, no status.
        let (sock, t) = backend(F_VERSION_1 | RING_F_EVENT_IDX, 0, u64::MAX);
        let mut s = negotiate(Frontend::from_stream(sock).unwrap(), RING_F_EVENT_IDX, "t").unwrap();
        assert_eq!(
            (s.features, s.protocol),
            (F_VERSION_1 | RING_F_EVENT_IDX, 0)
        );
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let rx = Vring::new(&mem, 0, 64).unwrap();
        let tx = Vring::new(&mem, rx.end_offset(), 64).unwrap();
        start(&mut s, &mem, &rx, &tx, "t").unwrap();
        drop(s);
        let seen = t.join().unwrap();
        let enable = u32::from(R::SET_VRING_ENABLE);
        let status = u32::from(R::SET_STATUS);
        assert!(
            seen.iter().all(|&(r, _)| r != enable && r != status),
            "{seen:?}"
        );
        // The round trip that ends the start is a GET_FEATURES here.
        assert_eq!(seen.last(), Some(&(u32::from(R::GET_FEATURES), false)));
    }

    #[test]
    fn packed_rings_are_set_up_with_their_areas_and_wrap_counter() {
        let offered = OFFERED | F_RING_PACKED | F_IN_ORDER;
        let (sock, t) = scripted_backend(offered, PROTOCOL, u64::MAX, 7);
        let extra = F_RING_PACKED | F_IN_ORDER;
        let mut s = negotiate(Frontend::from_stream(sock).unwrap(), extra, "t").unwrap();
        assert_eq!(s.features & extra, extra);
        let mem = SharedMemory::new(1 << 20, HugePages::Never).unwrap();
        let rx = Vring::new_packed(&mem, 0, 256).unwrap();
        let tx = Vring::new_packed(&mem, rx.end_offset(), 256).unwrap();
        start(&mut s, &mem, &rx, &tx, "t").unwrap();
        drop(s);
        let seen = t.join().unwrap();
        let payloads = |req: R| -> Vec<Vec<u8>> {
            seen.iter()
                .filter(|m| m.req == u32::from(req))
                .map(|m| m.payload.clone())
                .collect()
        };
        let u64_at = |p: &[u8], at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
        let u32_at = |p: &[u8], at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap());
        let features = payloads(R::SET_FEATURES);
        assert_eq!(u64_at(&features[0], 0) & extra, extra);
        // SET_VRING_BASE: index 0, wrap counter 1 (bit 15), as DPDK's virtio_user sends.
        let bases: Vec<(u32, u32)> = payloads(R::SET_VRING_BASE)
            .iter()
            .map(|p| (u32_at(p, 0), u32_at(p, 4)))
            .collect();
        assert_eq!(bases, [(0, 32768), (1, 32768)]);
        // SET_VRING_ADDR (index, flags, desc, used, avail, log): the descriptor ring, the
        // device event area as "used", the driver event area as "avail".
        let addrs = payloads(R::SET_VRING_ADDR);
        for (p, v) in addrs.iter().zip([&rx, &tx]) {
            assert_eq!(
                (u64_at(p, 8), u64_at(p, 16), u64_at(p, 24)),
                (v.desc_user_addr(), v.used_user_addr(), v.avail_user_addr())
            );
            assert_eq!(v.used_offset(), v.avail_offset() + 4);
        }
    }

    #[test]
    fn refused_features_fail_the_handshake() {
        let (sock, _t) = backend(OFFERED, PROTOCOL, !u64::from(STATUS_FEATURES_OK));
        let e = negotiate(Frontend::from_stream(sock).unwrap(), 0, "t")
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("FEATURES_OK"), "{e:#}");
    }

    #[test]
    fn server_accepts_a_late_backend_and_client_times_out() {
        let dir = std::env::temp_dir().join(format!("pktgen-attach-{}", std::process::id()));
        let path = dir.join("s.sock");
        let spec = PortSpec::server("s", &path);
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..100 {
                if let Ok(s) = UnixStream::connect(&p2) {
                    return Some(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        });
        let fe = connect(&spec, Duration::from_secs(5), None).unwrap();
        assert!(t.join().unwrap().is_some());
        assert!(
            !path.exists(),
            "the socket file is removed once the backend is in"
        );
        drop(fe);
        let client = PortSpec::client("c", dir.join("nobody.sock"));
        let t0 = Instant::now();
        let e = connect(&client, Duration::from_millis(200), None)
            .err()
            .unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert!(format!("{e:#}").contains("nobody.sock"), "{e:#}");
        // A regular file is not replaced.
        std::fs::write(&path, b"x").unwrap();
        assert!(connect(&spec, Duration::from_millis(50), None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
