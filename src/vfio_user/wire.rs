//! vfio-user message framing: the 16-byte header, a nonblocking reader and the reply
//! writer.
//!
//! Like the vhost-user reader, [`MessageReader`] is a state machine (header, then body) so
//! that a client that sends half a message and stalls blocks nobody: the control thread
//! serves every port. Descriptors are collected with whatever part of the message they
//! arrive with, and counted against a per-message bound.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::vhost_user::socket::recv_with_fds;

/// Bytes of the message header: id (u16), command (u16), size (u32), flags (u32),
/// error (u32), all little-endian.
pub const HEADER_LEN: usize = 16;
/// The largest data transfer (REGION_READ/WRITE count) the server accepts; advertised as
/// `max_data_xfer_size` in VERSION.
pub const MAX_DATA_XFER: usize = 64 << 10;
/// The largest message accepted, header included: a region write of the largest transfer
/// with its 16-byte access header, or a VERSION with up to 4 KiB of JSON.
pub const MAX_MESSAGE: usize = HEADER_LEN + 16 + MAX_DATA_XFER;

/// Header flag bits (vfio-user spec, "Header").
pub mod flags {
    /// Message type mask: 0 command, 1 reply.
    pub const TYPE_MASK: u32 = 0xf;
    /// A command.
    pub const TYPE_COMMAND: u32 = 0;
    /// A reply.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender expects no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply carries an errno.
    pub const ERROR: u32 = 1 << 5;
}

/// The commands of the protocol (vfio-user spec, "Commands").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Version and capability negotiation.
    Version,
    /// Add a DMA region.
    DmaMap,
    /// Remove DMA regions.
    DmaUnmap,
    /// Device flags and counts.
    DeviceGetInfo,
    /// One region's size, flags and mmap capabilities.
    DeviceGetRegionInfo,
    /// A region's ioeventfds / ioregionfds.
    GetRegionIoFds,
    /// One interrupt index's count and flags.
    DeviceGetIrqInfo,
    /// Interrupt eventfds, triggers and masks.
    DeviceSetIrqs,
    /// Read from a region.
    RegionRead,
    /// Write to a region.
    RegionWrite,
    /// Server to client: read guest memory.
    DmaRead,
    /// Server to client: write guest memory.
    DmaWrite,
    /// Reset the device.
    DeviceReset,
    /// Dirty page logging (migration).
    DirtyPages,
    /// Several region writes in one message.
    RegionWriteMulti,
    /// Device features (migration, DMA logging).
    DeviceFeature,
    /// Migration data read.
    MigDataRead,
    /// Migration data write.
    MigDataWrite,
    /// A command number the protocol does not define.
    Unknown(u16),
}

impl Command {
    /// Decodes a command number.
    pub fn from_u16(code: u16) -> Command {
        use Command as C;
        match code {
            1 => C::Version,
            2 => C::DmaMap,
            3 => C::DmaUnmap,
            4 => C::DeviceGetInfo,
            5 => C::DeviceGetRegionInfo,
            6 => C::GetRegionIoFds,
            7 => C::DeviceGetIrqInfo,
            8 => C::DeviceSetIrqs,
            9 => C::RegionRead,
            10 => C::RegionWrite,
            11 => C::DmaRead,
            12 => C::DmaWrite,
            13 => C::DeviceReset,
            14 => C::DirtyPages,
            15 => C::RegionWriteMulti,
            16 => C::DeviceFeature,
            17 => C::MigDataRead,
            18 => C::MigDataWrite,
            other => C::Unknown(other),
        }
    }

    /// The command number.
    pub fn code(self) -> u16 {
        use Command as C;
        match self {
            C::Version => 1,
            C::DmaMap => 2,
            C::DmaUnmap => 3,
            C::DeviceGetInfo => 4,
            C::DeviceGetRegionInfo => 5,
            C::GetRegionIoFds => 6,
            C::DeviceGetIrqInfo => 7,
            C::DeviceSetIrqs => 8,
            C::RegionRead => 9,
            C::RegionWrite => 10,
            C::DmaRead => 11,
            C::DmaWrite => 12,
            C::DeviceReset => 13,
            C::DirtyPages => 14,
            C::RegionWriteMulti => 15,
            C::DeviceFeature => 16,
            C::MigDataRead => 17,
            C::MigDataWrite => 18,
            C::Unknown(code) => code,
        }
    }
}

/// The message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Chosen by the sender; the reply carries the same id.
    pub id: u16,
    /// The command.
    pub command: Command,
    /// Bytes of the whole message, header included.
    pub size: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Decodes the 16 header bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            id: u16_at(0),
            command: Command::from_u16(u16_at(2)),
            size: u32_at(4),
            flags: u32_at(8),
            error: u32_at(12),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&self.id.to_le_bytes());
        out[2..4].copy_from_slice(&self.command.code().to_le_bytes());
        out[4..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..12].copy_from_slice(&self.flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.error.to_le_bytes());
        out
    }

    /// The sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }
}

/// A complete command from the client.
#[derive(Debug)]
pub struct Request {
    /// Its header.
    pub header: Header,
    /// The bytes after the header, exactly `size - 16` of them.
    pub payload: Vec<u8>,
    /// Descriptors that came with the message.
    pub fds: Vec<File>,
}

/// The stream can no longer be trusted: the connection must be closed.
#[derive(Debug, Error)]
pub enum FramingError {
    /// The size field is smaller than the header.
    #[error("message size {0} is smaller than the 16-byte header")]
    Undersized(u32),
    /// The size field is beyond what the server accepts.
    #[error("message size {0} exceeds the maximum of {max}", max = MAX_MESSAGE)]
    Oversized(u32),
    /// The client sent a reply (the server sends no commands) or an unknown message type.
    #[error("message type {0} (only commands are expected from a client)")]
    NotACommand(u32),
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
    /// A whole command.
    Request(Request),
    /// Nothing more to read now.
    Pending,
    /// The client closed the connection between messages.
    Closed,
}

/// Accumulates one message at a time from a nonblocking stream.
#[derive(Debug)]
pub struct MessageReader {
    header: [u8; HEADER_LEN],
    header_len: usize,
    parsed: Option<Header>,
    body: Vec<u8>,
    body_len: usize,
    fds: Vec<File>,
    max_fds: usize,
}

impl MessageReader {
    /// A reader that closes the connection when one message (however it is split across
    /// reads) carries more than `max_fds` descriptors.
    pub fn new(max_fds: usize) -> Self {
        MessageReader {
            header: [0; HEADER_LEN],
            header_len: 0,
            parsed: None,
            body: Vec::new(),
            body_len: 0,
            fds: Vec::new(),
            max_fds,
        }
    }

    /// Reads until a message is complete or the socket has nothing more.
    pub fn read(&mut self, sock: &UnixStream) -> Result<ReadEvent, FramingError> {
        loop {
            let Some(header) = self.parsed else {
                let got = match self.recv(sock, false)? {
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
                continue;
            };
            if self.body_len == self.body.len() {
                let request = Request {
                    header,
                    payload: std::mem::take(&mut self.body),
                    fds: std::mem::take(&mut self.fds),
                };
                *self = MessageReader::new(self.max_fds);
                return Ok(ReadEvent::Request(request));
            }
            let got = match self.recv(sock, true)? {
                Some(n) => n,
                None => return Ok(ReadEvent::Pending),
            };
            if got == 0 {
                return Err(FramingError::Truncated(HEADER_LEN + self.body_len));
            }
            self.body_len += got;
        }
    }

    fn recv(&mut self, sock: &UnixStream, body: bool) -> Result<Option<usize>, FramingError> {
        // Never past this message: the next one's descriptors must stay with it.
        let buf = if body {
            &mut self.body[self.body_len..]
        } else {
            &mut self.header[self.header_len..]
        };
        match recv_with_fds(sock, buf, &mut self.fds) {
            Ok(r) if r.fds_truncated => Err(FramingError::FdsTruncated),
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
        let header = Header::parse(&self.header);
        let kind = header.flags & flags::TYPE_MASK;
        if kind != flags::TYPE_COMMAND {
            return Err(FramingError::NotACommand(kind));
        }
        let size = header.size as usize;
        if size < HEADER_LEN {
            return Err(FramingError::Undersized(header.size));
        }
        if size > MAX_MESSAGE {
            return Err(FramingError::Oversized(header.size));
        }
        self.body = vec![0; size - HEADER_LEN];
        self.body_len = 0;
        self.parsed = Some(header);
        Ok(())
    }
}

/// Encodes a successful reply to `request` carrying `payload`.
pub fn encode_reply(request: &Header, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        id: request.id,
        command: request.command,
        size: (HEADER_LEN + payload.len()) as u32,
        flags: flags::TYPE_REPLY,
        error: 0,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

/// Encodes an error reply to `request`: the header alone with ERROR and `errno`.
pub fn encode_error(request: &Header, errno: i32) -> Vec<u8> {
    let header = Header {
        id: request.id,
        command: request.command,
        size: HEADER_LEN as u32,
        flags: flags::TYPE_REPLY | flags::ERROR,
        error: errno as u32,
    };
    header.encode().to_vec()
}

/// Sends an encoded reply and the descriptors that go with it in one `sendmsg` (the
/// client takes descriptors with the header). The socket is nonblocking: a client that
/// does not read its replies fills the buffer, which is reported as `WouldBlock` instead
/// of stalling the control thread.
pub fn send(sock: &UnixStream, bytes: &[u8], fds: &[&File]) -> io::Result<()> {
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = sock
        .send_with_fds(&[bytes], &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "reply only partly sent",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn header(id: u16, command: u16, size: u32, flags: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&command.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn every_command_number_round_trips() {
        for code in 0..=40u16 {
            assert_eq!(Command::from_u16(code).code(), code);
        }
        assert_eq!(Command::from_u16(16), Command::DeviceFeature);
        assert_eq!(Command::from_u16(19), Command::Unknown(19));
    }

    #[test]
    fn reads_a_message_split_across_writes_and_keeps_fds_apart() {
        let (mut client, server) = pair();
        let mut reader = MessageReader::new(4);
        let mut first = header(7, 10, 16 + 20, 0);
        first.extend_from_slice(&[0xab; 20]);
        client.write_all(&first[..5]).unwrap();
        assert!(matches!(reader.read(&server).unwrap(), ReadEvent::Pending));
        client.write_all(&first[5..30]).unwrap();
        assert!(matches!(reader.read(&server).unwrap(), ReadEvent::Pending));
        client.write_all(&first[30..]).unwrap();
        // The next message, with a descriptor, is already queued behind the first.
        let null = File::open("/dev/null").unwrap();
        let second = header(8, 2, 16, 0);
        client
            .send_with_fds(&[&second[..]], &[null.as_raw_fd()])
            .unwrap();
        match reader.read(&server).unwrap() {
            ReadEvent::Request(r) => {
                assert_eq!(r.header.id, 7);
                assert_eq!(r.header.command, Command::RegionWrite);
                assert_eq!(r.payload, vec![0xab; 20]);
                assert!(r.fds.is_empty(), "the next message's fd stays with it");
            }
            other => panic!("{other:?}"),
        }
        match reader.read(&server).unwrap() {
            ReadEvent::Request(r) => {
                assert_eq!(r.header.command, Command::DmaMap);
                assert_eq!(r.fds.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        drop(client);
        assert!(matches!(reader.read(&server).unwrap(), ReadEvent::Closed));
    }

    #[test]
    fn refuses_bad_headers() {
        let cases = [
            (header(0, 1, 8, 0), "undersized"),
            (header(0, 1, (MAX_MESSAGE + 1) as u32, 0), "oversized"),
            (header(0, 1, 16, flags::TYPE_REPLY), "reply"),
            (header(0, 1, 16, 5), "type"),
        ];
        for (bytes, what) in cases {
            let (mut client, server) = pair();
            client.write_all(&bytes).unwrap();
            let err = MessageReader::new(4).read(&server).unwrap_err();
            let ok = match what {
                "undersized" => matches!(err, FramingError::Undersized(8)),
                "oversized" => matches!(err, FramingError::Oversized(_)),
                "reply" => matches!(err, FramingError::NotACommand(1)),
                _ => matches!(err, FramingError::NotACommand(5)),
            };
            assert!(ok, "{what}: {err}");
        }
    }

    #[test]
    fn too_many_fds_and_truncation_close() {
        let (client, server) = pair();
        let null = File::open("/dev/null").unwrap();
        let fds = [null.as_raw_fd(); 3];
        client
            .send_with_fds(&[&header(0, 8, 16, 0)[..]], &fds)
            .unwrap();
        let err = MessageReader::new(2).read(&server).unwrap_err();
        assert!(
            matches!(err, FramingError::TooManyFds { got: 3, max: 2 }),
            "{err}"
        );

        let (mut client, server) = pair();
        client.write_all(&header(0, 9, 32, 0)).unwrap();
        client.write_all(&[1, 2, 3]).unwrap();
        drop(client);
        let err = MessageReader::new(2).read(&server).unwrap_err();
        assert!(matches!(err, FramingError::Truncated(19)), "{err}");
    }

    #[test]
    fn replies_echo_id_and_command() {
        let request = Header::parse(&header(42, 9, 32, 0).try_into().unwrap());
        let ok = encode_reply(&request, &[1, 2, 3]);
        let h = Header::parse(ok[..16].try_into().unwrap());
        assert_eq!(
            (h.id, h.command, h.size, h.flags),
            (42, Command::RegionRead, 19, 1)
        );
        let err = encode_error(&request, libc::ENOTTY);
        let h = Header::parse(err[..16].try_into().unwrap());
        assert_eq!(h.flags, flags::TYPE_REPLY | flags::ERROR);
        assert_eq!(h.error, libc::ENOTTY as u32);

        let (mut client, server) = pair();
        let null = File::open("/dev/null").unwrap();
        send(&server, &ok, &[&null]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fd) = client.recv_with_fd(&mut buf).unwrap();
        assert_eq!(n, 19);
        assert!(fd.is_some());
        assert_eq!(client.set_nonblocking(true).ok(), Some(()));
        assert!(client.read(&mut buf).is_err(), "nothing after the reply");
    }
}
