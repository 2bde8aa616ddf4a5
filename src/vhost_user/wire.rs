//! vhost-user message framing: a nonblocking reader and the reply writer.
//!
//! The reader is an explicit state machine (header, then body) so that one control thread
//! can serve every port: a front-end that sends half a message and stalls leaves its
//! reader waiting in [`MessageReader`] and blocks nobody.

use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;

use thiserror::Error;
use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag, MAX_MSG_SIZE};

use super::socket;

/// Size of the vhost-user message header: request, flags, size (u32 each).
pub const HEADER_LEN: usize = 12;
const VERSION: u32 = 1;

/// A complete request from the front-end.
#[derive(Debug)]
pub struct Request {
    /// The request type.
    pub code: FrontendReq,
    /// Raw header flags.
    pub flags: u32,
    /// The payload, exactly as long as the header said.
    pub payload: Vec<u8>,
    /// Descriptors that came with the message.
    pub fds: Vec<File>,
}

impl Request {
    /// The front-end set NEED_REPLY.
    pub fn need_reply(&self) -> bool {
        self.flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0
    }
}

/// The stream can no longer be trusted: the connection must be closed.
#[derive(Debug, Error)]
pub enum FramingError {
    /// Header version is not 1.
    #[error("header version {0} (only 1 exists)")]
    Version(u32),
    /// The reply bit is set on a request.
    #[error("reply flag set on a request")]
    ReplyFlag,
    /// Flags outside version/reply/need_reply.
    #[error("reserved header flags {0:#x} set")]
    ReservedFlags(u32),
    /// Payload size beyond the protocol maximum.
    #[error("payload size {0} exceeds the maximum of {max}", max = MAX_MSG_SIZE)]
    Oversized(u32),
    /// Request code not defined by the protocol.
    #[error("unknown request code {0}")]
    UnknownRequest(u32),
    /// More descriptors than the kernel could deliver were attached.
    #[error("too many file descriptors attached (truncated by the kernel)")]
    FdsTruncated,
    /// One message carried more descriptors than a message may.
    #[error("{got} file descriptors attached to one message; the limit is {max}")]
    TooManyFds {
        /// Descriptors received for the message so far.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The peer closed in the middle of a message.
    #[error("connection closed after {0} bytes of a message")]
    Truncated(usize),
    /// A socket error.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// What a read attempt produced.
#[derive(Debug)]
pub enum ReadEvent {
    /// A whole request.
    Request(Request),
    /// Nothing more to read now.
    Pending,
    /// The front-end closed the connection between messages.
    Closed,
}

#[derive(Debug)]
enum Stage {
    Header,
    Body { code: FrontendReq, flags: u32 },
}

/// Accumulates one message at a time from a nonblocking stream.
#[derive(Debug)]
pub struct MessageReader {
    stage: Stage,
    header: [u8; HEADER_LEN],
    header_len: usize,
    body: Vec<u8>,
    body_len: usize,
    fds: Vec<File>,
    max_fds: usize,
}

impl Default for MessageReader {
    /// A reader that accepts as many descriptors per message as the protocol ever needs.
    fn default() -> Self {
        MessageReader::new(DEFAULT_MAX_FDS_PER_MESSAGE)
    }
}

/// SET_MEM_TABLE's 8 regions: the most descriptors any vhost-user message carries.
pub const DEFAULT_MAX_FDS_PER_MESSAGE: usize = 8;

impl MessageReader {
    /// A reader that closes the connection when one message (however it is split across
    /// reads) carries more than `max_fds` descriptors.
    pub fn new(max_fds: usize) -> Self {
        MessageReader {
            stage: Stage::Header,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: Vec::new(),
            body_len: 0,
            fds: Vec::new(),
            max_fds,
        }
    }

    /// Reads until a message is complete or the socket has nothing more.
    pub fn read(&mut self, sock: &UnixStream) -> Result<ReadEvent, FramingError> {
        loop {
            match self.stage {
                Stage::Header => {
                    let got = match self.recv(sock, Part::Header)? {
                        Some(n) => n,
                        None => return Ok(ReadEvent::Pending),
                    };
                    if got == 0 {
                        if self.header_len == 0 && self.fds.is_empty() {
                            return Ok(ReadEvent::Closed);
                        }
                        return Err(FramingError::Truncated(self.header_len));
                    }
                    self.header_len += got;
                    if self.header_len == HEADER_LEN {
                        self.parse_header()?;
                    }
                }
                Stage::Body { code, flags } => {
                    if self.body_len == self.body.len() {
                        let request = Request {
                            code,
                            flags,
                            payload: std::mem::take(&mut self.body),
                            fds: std::mem::take(&mut self.fds),
                        };
                        *self = MessageReader::new(self.max_fds);
                        return Ok(ReadEvent::Request(request));
                    }
                    let got = match self.recv(sock, Part::Body)? {
                        Some(n) => n,
                        None => return Ok(ReadEvent::Pending),
                    };
                    if got == 0 {
                        return Err(FramingError::Truncated(HEADER_LEN + self.body_len));
                    }
                    self.body_len += got;
                }
            }
        }
    }

    fn recv(&mut self, sock: &UnixStream, part: Part) -> Result<Option<usize>, FramingError> {
        let buf = match part {
            Part::Header => &mut self.header[self.header_len..],
            Part::Body => &mut self.body[self.body_len..],
        };
        match socket::recv_with_fds(sock, buf, &mut self.fds) {
            Ok(r) if r.fds_truncated => Err(FramingError::FdsTruncated),
            // Checked after every read, so a message sent in many small pieces, each with
            // descriptors, cannot make us hold more than one read's worth past the limit.
            Ok(_) if self.fds.len() > self.max_fds => Err(FramingError::TooManyFds {
                got: self.fds.len(),
                max: self.max_fds,
            }),
            Ok(r) => Ok(Some(r.bytes)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // Level-triggered epoll calls again for what is left.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Some(0)),
            Err(e) => Err(e.into()),
        }
    }

    fn parse_header(&mut self) -> Result<(), FramingError> {
        let word = |i: usize| u32::from_ne_bytes(self.header[i * 4..i * 4 + 4].try_into().unwrap());
        let (request, flags, size) = (word(0), word(1), word(2));
        let version = flags & VhostUserHeaderFlag::VERSION.bits();
        if version != VERSION {
            return Err(FramingError::Version(version));
        }
        if flags & VhostUserHeaderFlag::REPLY.bits() != 0 {
            return Err(FramingError::ReplyFlag);
        }
        let reserved = flags & VhostUserHeaderFlag::RESERVED_BITS.bits();
        if reserved != 0 {
            return Err(FramingError::ReservedFlags(reserved));
        }
        if size as usize > MAX_MSG_SIZE {
            return Err(FramingError::Oversized(size));
        }
        let code =
            FrontendReq::try_from(request).map_err(|_| FramingError::UnknownRequest(request))?;
        self.body = vec![0; size as usize];
        self.body_len = 0;
        self.stage = Stage::Body { code, flags };
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Part {
    Header,
    Body,
}

/// Encodes a reply to `code` carrying `payload`.
pub fn encode_reply(code: FrontendReq, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&u32::from(code).to_ne_bytes());
    out.extend_from_slice(&(VERSION | VhostUserHeaderFlag::REPLY.bits()).to_ne_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends a reply without blocking.
pub fn send_reply(sock: &UnixStream, code: FrontendReq, payload: &[u8]) -> io::Result<()> {
    socket::send_nonblocking(sock, &encode_reply(code, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    fn header(code: u32, flags: u32, size: u32) -> Vec<u8> {
        [code, flags, size]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn reads_a_message_split_across_writes() {
        let (mut fe, be) = pair();
        let mut reader = MessageReader::default();
        let mut msg = header(2, 1, 8);
        msg.extend_from_slice(&7u64.to_ne_bytes());
        fe.write_all(&msg[..5]).unwrap();
        assert!(matches!(reader.read(&be).unwrap(), ReadEvent::Pending));
        fe.write_all(&msg[5..15]).unwrap();
        assert!(matches!(reader.read(&be).unwrap(), ReadEvent::Pending));
        fe.write_all(&msg[15..]).unwrap();
        match reader.read(&be).unwrap() {
            ReadEvent::Request(r) => {
                assert_eq!(r.code, FrontendReq::SET_FEATURES);
                assert_eq!(r.payload, 7u64.to_ne_bytes());
            }
            other => panic!("{other:?}"),
        }
        drop(fe);
        assert!(matches!(reader.read(&be).unwrap(), ReadEvent::Closed));
    }

    #[test]
    fn collects_fds_sent_with_the_header() {
        let (fe, be) = pair();
        let file = File::open("/dev/null").unwrap();
        let mut msg = header(13, 1, 8);
        msg.extend_from_slice(&0u64.to_ne_bytes());
        fe.send_with_fds(&[&msg[..]], &[file.as_raw_fd()]).unwrap();
        let mut reader = MessageReader::default();
        match reader.read(&be).unwrap() {
            ReadEvent::Request(r) => assert_eq!(r.fds.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let cases = [
            (header(1, 2, 0), "version"),
            (header(1, 1 | 4, 0), "reply"),
            (header(1, 1 | 0x100, 0), "reserved"),
            (header(1, 1, 4097), "size"),
            (header(9999, 1, 0), "unknown"),
        ];
        for (bytes, what) in cases {
            let (mut fe, be) = pair();
            fe.write_all(&bytes).unwrap();
            let err = MessageReader::default().read(&be).unwrap_err();
            let ok = match what {
                "version" => matches!(err, FramingError::Version(2)),
                "reply" => matches!(err, FramingError::ReplyFlag),
                "reserved" => matches!(err, FramingError::ReservedFlags(0x100)),
                "size" => matches!(err, FramingError::Oversized(4097)),
                _ => matches!(err, FramingError::UnknownRequest(9999)),
            };
            assert!(ok, "{what}: {err}");
        }
    }

    #[test]
    fn truncated_message_is_an_error() {
        let (mut fe, be) = pair();
        fe.write_all(&header(2, 1, 8)).unwrap();
        fe.write_all(&[1, 2]).unwrap();
        drop(fe);
        let err = MessageReader::default().read(&be).unwrap_err();
        assert!(matches!(err, FramingError::Truncated(14)), "{err}");
    }

    #[test]
    fn reply_encoding() {
        let r = encode_reply(FrontendReq::GET_FEATURES, &5u64.to_ne_bytes());
        assert_eq!(&r[..12], &header(1, 1 | 4, 8)[..]);
        assert_eq!(&r[12..], &5u64.to_ne_bytes());
    }
}
