//! vhost-user framing over a unix stream socket, front-end side.
//!
//! A message is a 12-byte header (u32 request, u32 flags, u32 payload size; native endian)
//! followed by the payload; file descriptors ride as `SCM_RIGHTS` on the same `sendmsg`.
//! [`Connection`] sends correct headers ([`Connection::send`]) or exact bytes
//! ([`Connection::send_raw`], for illegal framing), and reads replies with deadlines so that
//! a test never blocks forever.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::error::{Error, Malformed, Result};

/// Size of the vhost-user message header.
pub const HEADER_SIZE: usize = 12;
/// The protocol version (flags bits 0-1).
pub const VERSION: u32 = 0x1;
/// Mask of the version bits in the header flags.
pub const VERSION_MASK: u32 = 0x3;
/// Reply flag (bit 2): set on messages from the backend that answer a request.
pub const FLAG_REPLY: u32 = 0x4;
/// Need-reply flag (bit 3): asks for a REPLY_ACK answer.
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest reply payload [`Connection::recv_reply`] accepts (larger is [`Malformed::TooLarge`]).
pub const MAX_REPLY_PAYLOAD: usize = 0x1000 + HEADER_SIZE;
/// Default send timeout: a backend that stops reading makes `send` fail instead of hang.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most file descriptors accepted on one received message (more is an error).
const MAX_RECV_FDS: usize = 32;

/// Encodes a header (native endian).
pub fn encode_header(request: u32, flags: u32, size: u32) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(&request.to_ne_bytes());
    h[4..8].copy_from_slice(&flags.to_ne_bytes());
    h[8..12].copy_from_slice(&size.to_ne_bytes());
    h
}

/// Decodes a header into (request, flags, size).
pub fn decode_header(h: &[u8; HEADER_SIZE]) -> (u32, u32, u32) {
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    (word(0), word(4), word(8))
}

/// Encodes a complete message: a version-1 header with `flags` OR-ed in, then `payload`.
pub fn encode_message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(HEADER_SIZE + payload.len());
    msg.extend_from_slice(&encode_header(
        request,
        VERSION | flags,
        payload.len() as u32,
    ));
    msg.extend_from_slice(payload);
    msg
}

/// A message received from the backend, not yet checked against any request.
#[derive(Debug)]
pub struct Reply {
    /// Request code of the header.
    pub request: u32,
    /// Header flags as received.
    pub flags: u32,
    /// The payload (exactly the size the header announced).
    pub payload: Vec<u8>,
    /// File descriptors that came with the message (closed on drop).
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// The payload as a u64 when it is exactly 8 bytes.
    pub fn u64_payload(&self) -> Option<u64> {
        let b: [u8; 8] = self.payload.as_slice().try_into().ok()?;
        Some(u64::from_ne_bytes(b))
    }

    /// Whether the reply flag is set.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    /// The version bits of the flags.
    pub fn version(&self) -> u32 {
        self.flags & VERSION_MASK
    }
}

/// A front-end connection to a vhost-user backend.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
}

impl Connection {
    /// Connects to the backend's listening socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_stream(UnixStream::connect(path).map_err(Error::Io)?)
    }

    /// Connects to `path`, retrying until `timeout` passes (the backend may not listen yet).
    pub fn connect_retry(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path.as_ref()) {
                Ok(s) => return Self::from_stream(s),
                Err(e) if Instant::now() >= deadline => return Err(Error::Io(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Wraps an already connected stream (e.g. one end of `UnixStream::pair()`, or a
    /// connection accepted when the backend is the client). Sets the send timeout to
    /// [`DEFAULT_WRITE_TIMEOUT`].
    pub fn from_stream(stream: UnixStream) -> Result<Self> {
        stream.set_nonblocking(false).map_err(Error::Io)?;
        stream
            .set_write_timeout(Some(DEFAULT_WRITE_TIMEOUT))
            .map_err(Error::Io)?;
        Ok(Connection { stream })
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Consumes the connection, returning the stream.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Sets the send timeout (`None` blocks forever: avoid).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_write_timeout(timeout).map_err(Error::Io)
    }

    /// Shuts down the sending half: the backend sees EOF.
    pub fn shutdown_write(&self) -> Result<()> {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(Error::from)
    }

    /// Sends exactly `bytes`, with `fds` attached to the first `sendmsg`.
    ///
    /// Nothing is checked: this is the way to send illegal framing. An empty `bytes` with
    /// fds sends nothing on a stream socket (the kernel needs at least one byte to carry
    /// ancillary data).
    pub fn send_raw(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut sent = self.send_once(bytes, fds)?;
        // A stream socket may take part of the data; the fds went with the first part.
        while sent < bytes.len() {
            sent += self.send_once(&bytes[sent..], &[])?;
        }
        Ok(())
    }

    fn send_once(&self, bytes: &[u8], fds: &[RawFd]) -> Result<usize> {
        loop {
            match self.stream.send_with_fds(&[bytes], fds) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a message with a correct version-1 header: `flags` is OR-ed with [`VERSION`]
    /// (pass [`FLAG_NEED_REPLY`] or 0), the size is `payload.len()`. Header, payload and
    /// `fds` go in one `sendmsg`.
    pub fn send(
        &mut self,
        request: impl Into<u32>,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<()> {
        let msg = encode_message(request.into(), flags, payload);
        self.send_raw(&msg, fds)
    }

    /// Reads one message (header + announced payload) within `timeout`.
    ///
    /// Only the framing is checked here (payload size bound); the request code, version and
    /// reply bit are returned as received (see `Frontend` for checked replies).
    /// EOF or a reset is [`Error::Closed`]; nothing at all before the deadline is
    /// [`Error::Timeout`]; a message cut by the deadline is [`Malformed::Truncated`].
    pub fn recv_reply(&mut self, timeout: Duration) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        let mut fds = Vec::new();
        let mut header = [0u8; HEADER_SIZE];
        self.recv_exact(&mut header, deadline, &mut fds, 0)?;
        let (request, flags, size) = decode_header(&header);
        if size as usize > MAX_REPLY_PAYLOAD {
            return Err(Malformed::TooLarge { size }.into());
        }
        let mut payload = vec![0u8; size as usize];
        self.recv_exact(&mut payload, deadline, &mut fds, HEADER_SIZE)?;
        Ok(Reply {
            request,
            flags,
            payload,
            fds,
        })
    }

    /// Fills `buf` before `deadline`. `before` counts message bytes already received (for
    /// the truncation report).
    fn recv_exact(
        &self,
        buf: &mut [u8],
        deadline: Instant,
        fds: &mut Vec<OwnedFd>,
        before: usize,
    ) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = match self.recv_some(&mut buf[got..], deadline, fds) {
                Ok(n) => n,
                Err(Error::Timeout) if got + before > 0 => {
                    return Err(Malformed::Truncated {
                        expected: before + buf.len(),
                        got: before + got,
                    }
                    .into())
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(Error::Closed);
            }
            got += n;
        }
        Ok(())
    }

    /// One `recvmsg` into `buf` (non-empty) with the remaining time as read timeout.
    /// Returns 0 on EOF.
    fn recv_some(
        &self,
        buf: &mut [u8],
        deadline: Instant,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<usize> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            // A zero read timeout means "block forever" to the kernel; `left` is non-zero.
            self.stream
                .set_read_timeout(Some(left))
                .map_err(Error::Io)?;
            let mut raw = [-1 as RawFd; MAX_RECV_FDS];
            let mut iov = [libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            }];
            // SAFETY: the single iovec points at `buf`, a live, exclusively borrowed byte
            // slice of `iov_len` bytes, so the kernel may write any bytes into it.
            let res = unsafe { self.stream.recv_with_fds(&mut iov, &mut raw) };
            match res {
                Ok((n, nfds)) => {
                    for &fd in &raw[..nfds] {
                        // SAFETY: recv_with_fds hands us ownership of the `nfds` received
                        // descriptors; each is wrapped exactly once.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                    return Ok(n);
                }
                Err(e) if e.errno() == libc::EINTR => continue,
                // More fds than we have room for: the kernel closed them; report it.
                Err(e) if e.errno() == libc::ENOBUFS => {
                    return Err(Malformed::UnexpectedFds {
                        count: MAX_RECV_FDS + 1,
                    }
                    .into())
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits up to `timeout` for the peer to close the connection, reading and discarding
    /// whatever it sends meanwhile. True when the peer closed (EOF or reset).
    pub fn is_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let mut fds = Vec::new();
            match self.recv_some(&mut buf, deadline, &mut fds) {
                Ok(0) | Err(Error::Closed) => return true,
                Ok(_) | Err(Error::Malformed(_)) => continue,
                Err(Error::Timeout) => return false,
                Err(e) => {
                    // Any other socket error means the connection is unusable.
                    tracing::debug!("is_closed: {e}");
                    return true;
                }
            }
        }
    }
}

/// Test helpers: a minimal scripted "backend" side on one end of a socketpair, for this
/// crate's unit tests and (with the `testpeer` feature) those of crates built on it. The
/// helpers panic on any I/O error or surprise: they are for tests only.
#[cfg(any(test, feature = "testpeer"))]
pub mod testpeer {
    use super::*;
    use std::io;

    /// A message as the backend side sees it.
    pub struct Received {
        /// Request code.
        pub request: u32,
        /// Header flags.
        pub flags: u32,
        /// Payload size the header announced.
        pub size: u32,
        /// The payload.
        pub payload: Vec<u8>,
        /// File descriptors that came with the header.
        pub fds: Vec<OwnedFd>,
    }

    /// Reads one message from `s` (blocking, 5 s timeout); `None` on EOF.
    pub fn recv_msg(s: &UnixStream) -> Option<Received> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut header = [0u8; HEADER_SIZE];
        let mut raw = [-1 as RawFd; MAX_RECV_FDS];
        let mut iov = [libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: HEADER_SIZE,
        }];
        // SAFETY: the iovec points at `header`, a live local buffer of HEADER_SIZE bytes.
        let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }.unwrap();
        if n == 0 {
            return None;
        }
        assert_eq!(n, HEADER_SIZE, "header must arrive in one piece");
        let fds = raw[..nfds]
            .iter()
            // SAFETY: we own the received descriptors; each is wrapped once.
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let (request, flags, size) = decode_header(&header);
        let mut payload = vec![0u8; size as usize];
        std::io::Read::read_exact(&mut &*s, &mut payload).unwrap();
        Some(Received {
            request,
            flags,
            size,
            payload,
            fds,
        })
    }

    /// Sends a reply with the REPLY flag and version 1.
    pub fn reply(s: &UnixStream, request: u32, payload: &[u8]) {
        let msg = encode_message(request, FLAG_REPLY, payload);
        std::io::Write::write_all(&mut &*s, &msg).unwrap();
    }

    /// Nothing more is pending on `s` right now.
    pub fn assert_idle(s: &UnixStream) {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = std::io::Read::read(&mut &*s, &mut b);
        s.set_nonblocking(false).unwrap();
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "unexpected pending data: {r:?}"
        );
    }

    /// What the scripted backend saw of one message.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Seen {
        /// Request code.
        pub req: u32,
        /// The NEED_REPLY flag was set.
        pub need_reply: bool,
        /// Payload size the header announced.
        pub size: u32,
        /// File descriptors received with it.
        pub nfds: usize,
        /// The payload.
        pub payload: Vec<u8>,
    }

    /// A scripted backend on one end of a socketpair: answers the GETs a net front-end
    /// sends (GET_VRING_BASE with `vring_base + ring index`), acks NEED_REPLY, keeps the
    /// status it is set (masked with `status_mask`) and records every message.
    pub fn scripted_backend(
        features: u64,
        protocol: u64,
        status_mask: u64,
        vring_base: u32,
    ) -> (UnixStream, std::thread::JoinHandle<Vec<Seen>>) {
        use crate::payload;
        use vhost::vhost_user::message::FrontendReq as R;
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut status = 0u64;
            while let Some(m) = recv_msg(&b) {
                let need_reply = m.flags & FLAG_NEED_REPLY != 0;
                seen.push(Seen {
                    req: m.request,
                    need_reply,
                    size: m.size,
                    nfds: m.fds.len(),
                    payload: m.payload.clone(),
                });
                let answer: Option<Vec<u8>> = match R::try_from(m.request) {
                    Ok(R::GET_FEATURES) => Some(features.to_ne_bytes().to_vec()),
                    Ok(R::GET_PROTOCOL_FEATURES) => Some(protocol.to_ne_bytes().to_vec()),
                    Ok(R::GET_QUEUE_NUM) => Some(1u64.to_ne_bytes().to_vec()),
                    Ok(R::GET_MAX_MEM_SLOTS) => Some(8u64.to_ne_bytes().to_vec()),
                    Ok(R::GET_STATUS) => Some(status.to_ne_bytes().to_vec()),
                    Ok(R::GET_VRING_BASE) => {
                        let idx = payload::read_u32(&m.payload, 0).unwrap();
                        Some(payload::vring_state(idx, vring_base + idx).to_vec())
                    }
                    _ => {
                        if m.request == u32::from(R::SET_STATUS) {
                            status = payload::read_u64(&m.payload, 0).unwrap() & status_mask;
                        }
                        need_reply.then(|| 0u64.to_ne_bytes().to_vec())
                    }
                };
                if let Some(p) = answer {
                    reply(&b, m.request, &p);
                }
            }
            seen
        });
        (a, t)
    }
}

#[cfg(test)]
mod tests {
    use super::testpeer::*;
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::message::FrontendReq;
    use vmm_sys_util::eventfd::EventFd;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::from_stream(a).unwrap(), b)
    }

    #[test]
    fn send_builds_a_version_1_header() {
        let (mut c, peer) = pair();
        c.send(
            FrontendReq::SET_FEATURES,
            FLAG_NEED_REPLY,
            &7u64.to_ne_bytes(),
            &[],
        )
        .unwrap();
        let mut raw = [0u8; 20];
        std::io::Read::read_exact(&mut &peer, &mut raw).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&2u32.to_ne_bytes());
        expected.extend_from_slice(&(1u32 | 8).to_ne_bytes());
        expected.extend_from_slice(&8u32.to_ne_bytes());
        expected.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(raw.as_slice(), expected.as_slice());
        assert_idle(&peer);
    }

    #[test]
    fn send_raw_sends_exact_bytes_and_fds_together() {
        let (mut c, peer) = pair();
        let efd = EventFd::new(0).unwrap();
        // Illegal: version 2, announces 8 bytes, carries 3.
        let mut bytes = encode_header(12, 2, 8).to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        c.send_raw(&bytes, &[efd.as_raw_fd(), efd.as_raw_fd()])
            .unwrap();
        let mut buf = [0u8; 64];
        let mut raw = [-1 as RawFd; 4];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points at the live local `buf`.
        let (n, nfds) = unsafe { peer.recv_with_fds(&mut iov, &mut raw) }.unwrap();
        assert_eq!(&buf[..n], bytes.as_slice());
        assert_eq!(nfds, 2);
        for fd in &raw[..2] {
            // SAFETY: received descriptors are ours to close.
            drop(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }

    #[test]
    fn recv_reply_parses_header_payload_and_fds() {
        let (mut c, peer) = pair();
        reply(&peer, 1, &0x1234u64.to_ne_bytes());
        let r = c.recv_reply(Duration::from_secs(1)).unwrap();
        assert_eq!(r.request, 1);
        assert_eq!(r.flags, VERSION | FLAG_REPLY);
        assert!(r.is_reply());
        assert_eq!(r.version(), 1);
        assert_eq!(r.u64_payload(), Some(0x1234));
        assert!(r.fds.is_empty());

        // A reply with a stray fd is returned with the fd, for the caller to judge.
        let efd = EventFd::new(0).unwrap();
        let msg = encode_message(40, FLAG_REPLY, &[5, 0, 0, 0, 0, 0, 0, 0]);
        peer.send_with_fds(&[msg.as_slice()], &[efd.as_raw_fd()])
            .unwrap();
        let r = c.recv_reply(Duration::from_secs(1)).unwrap();
        assert_eq!(r.fds.len(), 1);
        assert_eq!(r.u64_payload(), Some(5));
    }

    #[test]
    fn recv_reply_reassembles_split_messages() {
        let (mut c, peer) = pair();
        let msg = encode_message(15, FLAG_REPLY, &9u64.to_ne_bytes());
        let t = std::thread::spawn(move || {
            for chunk in msg.chunks(5) {
                (&peer).write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            peer
        });
        let r = c.recv_reply(Duration::from_secs(5)).unwrap();
        assert_eq!((r.request, r.u64_payload()), (15, Some(9)));
        drop(t.join().unwrap());
    }

    #[test]
    fn recv_reply_times_out() {
        let (mut c, _peer) = pair();
        let t0 = Instant::now();
        let e = c.recv_reply(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e:?}");
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
    }

    #[test]
    fn recv_reply_reports_truncation_and_oversize() {
        let (mut c, peer) = pair();
        // Header announces 8 bytes, only 3 arrive.
        let mut bytes = encode_header(1, VERSION | FLAG_REPLY, 8).to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        (&peer).write_all(&bytes).unwrap();
        let e = c.recv_reply(Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Malformed(Malformed::Truncated {
                    expected: 20,
                    got: 15
                })
            ),
            "{e:?}"
        );

        let (mut c, peer) = pair();
        (&peer)
            .write_all(&encode_header(1, VERSION | FLAG_REPLY, u32::MAX))
            .unwrap();
        let e = c.recv_reply(Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(e, Error::Malformed(Malformed::TooLarge { size: u32::MAX })),
            "{e:?}"
        );
    }

    #[test]
    fn recv_reply_detects_close() {
        let (mut c, peer) = pair();
        drop(peer);
        let e = c.recv_reply(Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");

        // Close in the middle of a message is also Closed.
        let (mut c, peer) = pair();
        (&peer).write_all(&[1, 0, 0]).unwrap();
        drop(peer);
        let e = c.recv_reply(Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");
    }

    #[test]
    fn is_closed_waits_for_close_and_discards_data() {
        let (mut c, peer) = pair();
        assert!(!c.is_closed(Duration::from_millis(50)));
        let t = std::thread::spawn(move || {
            (&peer).write_all(b"garbage before closing").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            drop(peer);
        });
        assert!(c.is_closed(Duration::from_secs(5)));
        t.join().unwrap();
    }

    #[test]
    fn send_to_closed_peer_is_closed() {
        let (mut c, peer) = pair();
        drop(peer);
        let e = c.send(FrontendReq::SET_OWNER, 0, &[], &[]).unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");
    }

    #[test]
    fn header_round_trip() {
        let h = encode_header(0xdead, 0xbeef, 0x1234_5678);
        assert_eq!(decode_header(&h), (0xdead, 0xbeef, 0x1234_5678));
    }
}
