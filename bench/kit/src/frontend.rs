//! A scripted vhost-user front-end: one method per request the net device uses.
//!
//! Methods taking `need_reply` set NEED_REPLY and then wait for the REPLY_ACK answer
//! ([`Frontend::ack`]); they do not check that REPLY_ACK was negotiated (a test may want to
//! see what happens when it was not). GET_* methods check the reply: version 1, reply bit,
//! same request code, expected payload size, no fds. For anything else use
//! [`Frontend::conn_mut`].

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{FrontendReq, VhostUserMemoryRegion, VhostUserVringAddr};

use crate::error::{Error, Malformed, Result};
use crate::payload;
use crate::vring::Vring;
use crate::wire::{Connection, Reply, FLAG_NEED_REPLY, FLAG_REPLY, VERSION, VERSION_MASK};

/// Default time to wait for a reply.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A vhost-user front-end over a [`Connection`].
#[derive(Debug)]
pub struct Frontend {
    conn: Connection,
    timeout: Duration,
}

impl Frontend {
    /// Wraps a connection; replies are awaited for [`DEFAULT_REPLY_TIMEOUT`].
    pub fn new(conn: Connection) -> Self {
        Frontend {
            conn,
            timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// Connects to the backend socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Connection::connect(path)?))
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: UnixStream) -> Result<Self> {
        Ok(Self::new(Connection::from_stream(stream)?))
    }

    /// The raw connection.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The raw connection, to send anything.
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Consumes the front-end, returning the connection.
    pub fn into_connection(self) -> Connection {
        self.conn
    }

    /// How long replies are awaited.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets how long replies are awaited.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `request` with a correct header (NEED_REPLY if `need_reply`), `payload` and
    /// `fds`; with `need_reply`, then waits for the REPLY_ACK answer.
    pub fn request(
        &mut self,
        request: FrontendReq,
        need_reply: bool,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<()> {
        let flags = if need_reply { FLAG_NEED_REPLY } else { 0 };
        tracing::trace!(
            ?request,
            need_reply,
            len = payload.len(),
            nfds = fds.len(),
            "send"
        );
        self.conn.send(request, flags, payload, fds)?;
        if need_reply {
            self.ack(request)?;
        }
        Ok(())
    }

    /// Reads a REPLY_ACK answer to `request`: Ok when its u64 is 0, [`Error::Nack`] with the
    /// value otherwise.
    pub fn ack(&mut self, request: FrontendReq) -> Result<()> {
        let r = self.expect_reply(request, 8)?;
        match r.u64_payload() {
            Some(0) => Ok(()),
            Some(v) => Err(Error::Nack(v)),
            None => Err(Malformed::WrongSize {
                request: request.into(),
                expected: 8,
                got: r.payload.len(),
            }
            .into()),
        }
    }

    /// Reads one reply and checks it answers `request`: exact flags version 1 + REPLY,
    /// same request code, payload of `size` bytes, no fds.
    pub fn expect_reply(&mut self, request: FrontendReq, size: usize) -> Result<Reply> {
        let r = self.conn.recv_reply(self.timeout)?;
        check_reply(&r, request.into(), size)?;
        Ok(r)
    }

    /// Sends a bodiless GET request and returns its u64 answer.
    fn get_u64(&mut self, request: FrontendReq) -> Result<u64> {
        self.request(request, false, &[], &[])?;
        let r = self.expect_reply(request, 8)?;
        // expect_reply checked the size.
        Ok(r.u64_payload().unwrap_or_default())
    }

    fn set_u64(&mut self, request: FrontendReq, value: u64, need_reply: bool) -> Result<()> {
        self.request(request, need_reply, &value.to_ne_bytes(), &[])
    }

    /// GET_FEATURES: the virtio features the backend offers.
    pub fn get_features(&mut self) -> Result<u64> {
        self.get_u64(FrontendReq::GET_FEATURES)
    }

    /// SET_FEATURES with `features`.
    pub fn set_features(&mut self, features: u64, need_reply: bool) -> Result<()> {
        self.set_u64(FrontendReq::SET_FEATURES, features, need_reply)
    }

    /// GET_PROTOCOL_FEATURES: the protocol features the backend offers.
    pub fn get_protocol_features(&mut self) -> Result<u64> {
        self.get_u64(FrontendReq::GET_PROTOCOL_FEATURES)
    }

    /// SET_PROTOCOL_FEATURES with `features`.
    pub fn set_protocol_features(&mut self, features: u64, need_reply: bool) -> Result<()> {
        self.set_u64(FrontendReq::SET_PROTOCOL_FEATURES, features, need_reply)
    }

    /// SET_OWNER (no payload).
    pub fn set_owner(&mut self, need_reply: bool) -> Result<()> {
        self.request(FrontendReq::SET_OWNER, need_reply, &[], &[])
    }

    /// RESET_OWNER (no payload; deprecated but still sent by old front-ends).
    pub fn reset_owner(&mut self, need_reply: bool) -> Result<()> {
        self.request(FrontendReq::RESET_OWNER, need_reply, &[], &[])
    }

    /// GET_QUEUE_NUM: how many queue pairs the backend supports.
    pub fn get_queue_num(&mut self) -> Result<u64> {
        self.get_u64(FrontendReq::GET_QUEUE_NUM)
    }

    /// GET_MAX_MEM_SLOTS: how many regions ADD_MEM_REG may install.
    pub fn get_max_mem_slots(&mut self) -> Result<u64> {
        self.get_u64(FrontendReq::GET_MAX_MEM_SLOTS)
    }

    /// SET_MEM_TABLE: payload `8 + 32 n` bytes, one fd per region, in order.
    pub fn set_mem_table(
        &mut self,
        regions: &[(VhostUserMemoryRegion, RawFd)],
        need_reply: bool,
    ) -> Result<()> {
        let body = payload::mem_table(regions.iter().map(|(r, _)| r));
        let fds: Vec<RawFd> = regions.iter().map(|(_, fd)| *fd).collect();
        self.request(FrontendReq::SET_MEM_TABLE, need_reply, &body, &fds)
    }

    /// ADD_MEM_REG: 40-byte payload, one fd.
    pub fn add_mem_reg(
        &mut self,
        region: &VhostUserMemoryRegion,
        fd: RawFd,
        need_reply: bool,
    ) -> Result<()> {
        let body = payload::single_region(region);
        self.request(FrontendReq::ADD_MEM_REG, need_reply, &body, &[fd])
    }

    /// REM_MEM_REG: 40-byte payload, no fd.
    pub fn rem_mem_reg(&mut self, region: &VhostUserMemoryRegion, need_reply: bool) -> Result<()> {
        let body = payload::single_region(region);
        self.request(FrontendReq::REM_MEM_REG, need_reply, &body, &[])
    }

    /// SET_VRING_NUM: ring `index` has `num` entries.
    pub fn set_vring_num(&mut self, index: u32, num: u32, need_reply: bool) -> Result<()> {
        let body = payload::vring_state(index, num);
        self.request(FrontendReq::SET_VRING_NUM, need_reply, &body, &[])
    }

    /// SET_VRING_BASE: ring `index` starts at avail index `base` (packed: bit 15 = wrap).
    pub fn set_vring_base(&mut self, index: u32, base: u32, need_reply: bool) -> Result<()> {
        let body = payload::vring_state(index, base);
        self.request(FrontendReq::SET_VRING_BASE, need_reply, &body, &[])
    }

    /// SET_VRING_ADDR with `addr` (index, flags, desc, used, avail, log).
    pub fn set_vring_addr(&mut self, addr: &VhostUserVringAddr, need_reply: bool) -> Result<()> {
        let body = payload::vring_addr(addr);
        self.request(FrontendReq::SET_VRING_ADDR, need_reply, &body, &[])
    }

    /// GET_VRING_BASE: stops ring `index`; returns the next avail index. Checks that the
    /// reply names the same ring.
    pub fn get_vring_base(&mut self, index: u32) -> Result<u32> {
        let req = FrontendReq::GET_VRING_BASE;
        self.request(req, false, &payload::vring_state(index, 0), &[])?;
        let r = self.expect_reply(req, payload::VRING_STATE_SIZE)?;
        let got = payload::read_u32(&r.payload, 0).unwrap_or_default();
        if got != index {
            return Err(Malformed::WrongField {
                field: "vring index",
                expected: index.into(),
                got: got.into(),
            }
            .into());
        }
        Ok(payload::read_u32(&r.payload, 4).unwrap_or_default())
    }

    fn vring_file(
        &mut self,
        request: FrontendReq,
        index: u32,
        fd: Option<RawFd>,
        need_reply: bool,
    ) -> Result<()> {
        let value = payload::vring_file(index, fd.is_some());
        let fds: &[RawFd] = match &fd {
            Some(fd) => std::slice::from_ref(fd),
            None => &[],
        };
        self.request(request, need_reply, &value.to_ne_bytes(), fds)
    }

    /// SET_VRING_KICK: `fd` attached, or `None`: bit 8 set, no fd (polling mode).
    /// `index` is masked to 8 bits; send a custom u64 with [`Frontend::request`] otherwise.
    pub fn set_vring_kick(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
        need_reply: bool,
    ) -> Result<()> {
        self.vring_file(FrontendReq::SET_VRING_KICK, index, fd, need_reply)
    }

    /// SET_VRING_CALL: `fd` attached, or `None`: bit 8 set, no fd.
    pub fn set_vring_call(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
        need_reply: bool,
    ) -> Result<()> {
        self.vring_file(FrontendReq::SET_VRING_CALL, index, fd, need_reply)
    }

    /// SET_VRING_ERR: `fd` attached, or `None`: bit 8 set, no fd.
    pub fn set_vring_err(&mut self, index: u32, fd: Option<RawFd>, need_reply: bool) -> Result<()> {
        self.vring_file(FrontendReq::SET_VRING_ERR, index, fd, need_reply)
    }

    /// SET_VRING_ENABLE: ring `index` enabled (num 1) or disabled (num 0).
    pub fn set_vring_enable(&mut self, index: u32, enable: bool, need_reply: bool) -> Result<()> {
        let body = payload::vring_state(index, u32::from(enable));
        self.request(FrontendReq::SET_VRING_ENABLE, need_reply, &body, &[])
    }

    /// GET_CONFIG: `size` bytes of config space from `offset` (payload: offset, size,
    /// flags, then `size` zero bytes). The reply must be `12 + size` bytes; returns the data.
    pub fn get_config(&mut self, offset: u32, size: u32, flags: u32) -> Result<Vec<u8>> {
        let req = FrontendReq::GET_CONFIG;
        let mut body = payload::config_header(offset, size, flags).to_vec();
        body.resize(payload::CONFIG_HEADER_SIZE + size as usize, 0);
        self.request(req, false, &body, &[])?;
        let r = self.expect_reply(req, body.len())?;
        Ok(r.payload[payload::CONFIG_HEADER_SIZE..].to_vec())
    }

    /// SET_CONFIG: writes `data` at `offset` of the config space.
    pub fn set_config(
        &mut self,
        offset: u32,
        flags: u32,
        data: &[u8],
        need_reply: bool,
    ) -> Result<()> {
        let mut body = payload::config_header(offset, data.len() as u32, flags).to_vec();
        body.extend_from_slice(data);
        self.request(FrontendReq::SET_CONFIG, need_reply, &body, &[])
    }

    /// SET_STATUS with the virtio device status byte (sent as u64).
    pub fn set_status(&mut self, status: u8, need_reply: bool) -> Result<()> {
        self.set_u64(FrontendReq::SET_STATUS, status.into(), need_reply)
    }

    /// GET_STATUS: the device status as the backend sees it.
    pub fn get_status(&mut self) -> Result<u64> {
        self.get_u64(FrontendReq::GET_STATUS)
    }

    /// SET_BACKEND_REQ_FD: hands the backend one end of a socket for its own requests.
    pub fn set_backend_req_fd(&mut self, fd: RawFd, need_reply: bool) -> Result<()> {
        self.request(FrontendReq::SET_BACKEND_REQ_FD, need_reply, &[], &[fd])
    }

    /// SEND_RARP with `mac` (u64 payload, MAC in the first 6 bytes).
    pub fn send_rarp(&mut self, mac: [u8; 6], need_reply: bool) -> Result<()> {
        let mut body = [0u8; 8];
        body[..6].copy_from_slice(&mac);
        self.request(FrontendReq::SEND_RARP, need_reply, &body, &[])
    }

    /// NET_SET_MTU with `mtu` (u64 payload).
    pub fn net_set_mtu(&mut self, mtu: u64, need_reply: bool) -> Result<()> {
        self.set_u64(FrontendReq::NET_SET_MTU, mtu, need_reply)
    }

    /// Sets up ring `index` in DPDK's order: SET_VRING_NUM, SET_VRING_BASE(`base`),
    /// SET_VRING_ADDR (user addresses, log `log`), SET_VRING_KICK(`kick`; `None` = no fd),
    /// then SET_VRING_CALL(`call`) only when `call` is `Some` (QEMU's order).
    #[allow(clippy::too_many_arguments)]
    pub fn setup_vring(
        &mut self,
        index: u32,
        vring: &Vring,
        base: u32,
        log: u64,
        kick: Option<RawFd>,
        call: Option<RawFd>,
        need_reply: bool,
    ) -> Result<()> {
        self.set_vring_num(index, vring.queue_size().into(), need_reply)?;
        self.set_vring_base(index, base, need_reply)?;
        self.set_vring_addr(&vring.addr(index, log), need_reply)?;
        self.set_vring_kick(index, kick, need_reply)?;
        if let Some(call) = call {
            self.set_vring_call(index, Some(call), need_reply)?;
        }
        Ok(())
    }
}

/// Checks that `r` is a well-formed reply to `request` with a `size`-byte payload.
pub fn check_reply(r: &Reply, request: u32, size: usize) -> Result<()> {
    if r.flags & VERSION_MASK != VERSION {
        return Err(Malformed::BadVersion { flags: r.flags }.into());
    }
    if r.flags != VERSION | FLAG_REPLY {
        return Err(Malformed::BadFlags {
            request: r.request,
            flags: r.flags,
        }
        .into());
    }
    if r.request != request {
        return Err(Malformed::WrongRequest {
            expected: request,
            got: r.request,
        }
        .into());
    }
    if r.payload.len() != size {
        return Err(Malformed::WrongSize {
            request,
            expected: size,
            got: r.payload.len(),
        }
        .into());
    }
    if !r.fds.is_empty() {
        return Err(Malformed::UnexpectedFds { count: r.fds.len() }.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{HugePages, SharedMemory};
    use crate::wire::encode_message;
    use crate::wire::testpeer::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    fn pair() -> (Frontend, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let mut fe = Frontend::from_stream(a).unwrap();
        fe.set_timeout(Duration::from_secs(2));
        (fe, b)
    }

    fn req(r: FrontendReq) -> u32 {
        r.into()
    }

    #[test]
    fn set_mem_table_sends_8_plus_32n_bytes_and_n_fds() {
        let (mut fe, peer) = pair();
        let m1 = SharedMemory::new(1 << 16, HugePages::Never).unwrap();
        let m2 = SharedMemory::new(1 << 17, HugePages::Never)
            .unwrap()
            .with_guest_phys_addr(1 << 20);
        fe.set_mem_table(&[(m1.region(), m1.fd()), (m2.region(), m2.fd())], false)
            .unwrap();
        let m = recv_msg(&peer).unwrap();
        assert_eq!(m.request, req(FrontendReq::SET_MEM_TABLE));
        assert_eq!(m.flags, 1);
        assert_eq!(m.size, 8 + 32 * 2);
        assert_eq!(m.payload.len(), 72);
        assert_eq!(m.fds.len(), 2);
        assert_eq!(payload::read_u32(&m.payload, 0), Some(2));
        assert_eq!(payload::read_u32(&m.payload, 4), Some(0));
        // Second region: gpa, size, user address, mmap offset.
        assert_eq!(payload::read_u64(&m.payload, 40), Some(1 << 20));
        assert_eq!(payload::read_u64(&m.payload, 48), Some(1 << 17));
        assert_eq!(payload::read_u64(&m.payload, 56), Some(m2.user_addr()));
        assert_eq!(payload::read_u64(&m.payload, 64), Some(0));
        assert_idle(&peer);
    }

    #[test]
    fn add_and_rem_mem_reg_payloads() {
        let (mut fe, peer) = pair();
        let m = SharedMemory::new(1 << 16, HugePages::Never).unwrap();
        fe.add_mem_reg(&m.region(), m.fd(), false).unwrap();
        fe.rem_mem_reg(&m.region(), false).unwrap();
        let a = recv_msg(&peer).unwrap();
        assert_eq!(
            (a.request, a.size, a.fds.len()),
            (req(FrontendReq::ADD_MEM_REG), 40, 1)
        );
        assert_eq!(payload::read_u64(&a.payload, 0), Some(0), "padding");
        assert_eq!(payload::read_u64(&a.payload, 16), Some(1 << 16));
        let r = recv_msg(&peer).unwrap();
        assert_eq!(
            (r.request, r.size, r.fds.len()),
            (req(FrontendReq::REM_MEM_REG), 40, 0)
        );
        assert_eq!(a.payload, r.payload);
    }

    #[test]
    fn kick_without_fd_sets_bit_8_and_sends_no_fd() {
        let (mut fe, peer) = pair();
        fe.set_vring_kick(1, None, false).unwrap();
        let efd = EventFd::new(0).unwrap();
        fe.set_vring_call(0, Some(efd.as_raw_fd()), false).unwrap();
        fe.set_vring_err(1, Some(efd.as_raw_fd()), false).unwrap();
        let k = recv_msg(&peer).unwrap();
        assert_eq!(k.request, req(FrontendReq::SET_VRING_KICK));
        assert_eq!(k.size, 8);
        assert_eq!(payload::read_u64(&k.payload, 0), Some(0x101));
        assert!(k.fds.is_empty());
        let c = recv_msg(&peer).unwrap();
        assert_eq!(c.request, req(FrontendReq::SET_VRING_CALL));
        assert_eq!(payload::read_u64(&c.payload, 0), Some(0));
        assert_eq!(c.fds.len(), 1);
        let e = recv_msg(&peer).unwrap();
        assert_eq!(e.request, req(FrontendReq::SET_VRING_ERR));
        assert_eq!(payload::read_u64(&e.payload, 0), Some(1));
        assert_eq!(e.fds.len(), 1);
    }

    #[test]
    fn setup_vring_sends_num_base_addr_kick_call() {
        let (mut fe, peer) = pair();
        let mem = SharedMemory::new(1 << 16, HugePages::Never).unwrap();
        let v = Vring::new(&mem, 0, 256).unwrap();
        let kick = EventFd::new(0).unwrap();
        let call = EventFd::new(0).unwrap();
        fe.setup_vring(
            1,
            &v,
            7,
            0,
            Some(kick.as_raw_fd()),
            Some(call.as_raw_fd()),
            false,
        )
        .unwrap();
        let order: Vec<_> = (0..5).map(|_| recv_msg(&peer).unwrap()).collect();
        let codes: Vec<u32> = order.iter().map(|m| m.request).collect();
        assert_eq!(
            codes,
            [
                FrontendReq::SET_VRING_NUM,
                FrontendReq::SET_VRING_BASE,
                FrontendReq::SET_VRING_ADDR,
                FrontendReq::SET_VRING_KICK,
                FrontendReq::SET_VRING_CALL
            ]
            .map(req)
        );
        assert_eq!(order[0].payload, payload::vring_state(1, 256));
        assert_eq!(order[1].payload, payload::vring_state(1, 7));
        let a = &order[2].payload;
        assert_eq!(a.len(), 40);
        assert_eq!(payload::read_u32(a, 0), Some(1));
        assert_eq!(payload::read_u64(a, 8), Some(v.desc_user_addr()));
        assert_eq!(payload::read_u64(a, 16), Some(v.used_user_addr()));
        assert_eq!(payload::read_u64(a, 24), Some(v.avail_user_addr()));
        assert_eq!(order[3].fds.len(), 1);
        assert_eq!(order[4].fds.len(), 1);
        assert_idle(&peer);
    }

    #[test]
    fn get_features_checks_the_reply() {
        let (mut fe, peer) = pair();
        reply(
            &peer,
            req(FrontendReq::GET_FEATURES),
            &0xabcdu64.to_ne_bytes(),
        );
        assert_eq!(fe.get_features().unwrap(), 0xabcd);
        let m = recv_msg(&peer).unwrap();
        assert_eq!((m.request, m.flags, m.size), (1, 1, 0));

        // Wrong request code in the reply.
        reply(&peer, req(FrontendReq::GET_QUEUE_NUM), &1u64.to_ne_bytes());
        let e = fe.get_features().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Malformed(Malformed::WrongRequest {
                    expected: 1,
                    got: 17
                })
            ),
            "{e:?}"
        );
        // Wrong size.
        reply(&peer, req(FrontendReq::GET_FEATURES), &[0u8; 4]);
        let e = fe.get_features().unwrap_err();
        assert!(
            matches!(e, Error::Malformed(Malformed::WrongSize { .. })),
            "{e:?}"
        );
        // Reply bit missing.
        let msg = encode_message(1, 0, &[0u8; 8]);
        (&peer).write_all(&msg).unwrap();
        let e = fe.get_features().unwrap_err();
        assert!(
            matches!(e, Error::Malformed(Malformed::BadFlags { .. })),
            "{e:?}"
        );
        // Bad version.
        let mut msg = encode_message(1, FLAG_REPLY, &[0u8; 8]);
        msg[4] = 0x6;
        (&peer).write_all(&msg).unwrap();
        let e = fe.get_features().unwrap_err();
        assert!(
            matches!(e, Error::Malformed(Malformed::BadVersion { flags: 6 })),
            "{e:?}"
        );
    }

    #[test]
    fn need_reply_waits_for_ack_and_reports_nack() {
        let (mut fe, peer) = pair();
        reply(&peer, req(FrontendReq::SET_OWNER), &0u64.to_ne_bytes());
        fe.set_owner(true).unwrap();
        let m = recv_msg(&peer).unwrap();
        assert_eq!(m.flags, 1 | 8);

        reply(&peer, req(FrontendReq::SET_FEATURES), &22u64.to_ne_bytes());
        let e = fe.set_features(1, true).unwrap_err();
        assert!(matches!(e, Error::Nack(22)), "{e:?}");

        // No ack at all: timeout, not a hang.
        fe.set_timeout(Duration::from_millis(50));
        let e = fe.set_vring_enable(0, true, true).unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e:?}");
    }

    #[test]
    fn get_vring_base_checks_index() {
        let (mut fe, peer) = pair();
        reply(
            &peer,
            req(FrontendReq::GET_VRING_BASE),
            &payload::vring_state(1, 42),
        );
        assert_eq!(fe.get_vring_base(1).unwrap(), 42);
        let m = recv_msg(&peer).unwrap();
        assert_eq!(m.payload, payload::vring_state(1, 0));
        reply(
            &peer,
            req(FrontendReq::GET_VRING_BASE),
            &payload::vring_state(0, 42),
        );
        let e = fe.get_vring_base(1).unwrap_err();
        assert!(
            matches!(e, Error::Malformed(Malformed::WrongField { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn get_config_sends_header_and_zeros() {
        let (mut fe, peer) = pair();
        let mut body = payload::config_header(0, 6, 0).to_vec();
        body.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        reply(&peer, req(FrontendReq::GET_CONFIG), &body);
        assert_eq!(fe.get_config(0, 6, 0).unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let m = recv_msg(&peer).unwrap();
        assert_eq!(m.size, 12 + 6);
        assert_eq!(&m.payload[..12], &payload::config_header(0, 6, 0));
        assert_eq!(&m.payload[12..], &[0; 6]);
        // A short (error) reply is malformed.
        reply(
            &peer,
            req(FrontendReq::GET_CONFIG),
            &payload::config_header(0, 6, 0),
        );
        assert!(fe.get_config(0, 6, 0).is_err());
    }

    #[test]
    fn status_and_misc_payloads() {
        let (mut fe, peer) = pair();
        fe.set_status(0x0b, false).unwrap();
        fe.send_rarp([1, 2, 3, 4, 5, 6], false).unwrap();
        fe.net_set_mtu(1500, false).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        fe.set_backend_req_fd(a.as_raw_fd(), false).unwrap();
        reply(&peer, req(FrontendReq::GET_STATUS), &0x0bu64.to_ne_bytes());
        assert_eq!(fe.get_status().unwrap(), 0x0b);
        let s = recv_msg(&peer).unwrap();
        assert_eq!((s.request, s.size), (39, 8));
        assert_eq!(payload::read_u64(&s.payload, 0), Some(0x0b));
        let r = recv_msg(&peer).unwrap();
        assert_eq!(r.payload, [1, 2, 3, 4, 5, 6, 0, 0]);
        let mtu = recv_msg(&peer).unwrap();
        assert_eq!(payload::read_u64(&mtu.payload, 0), Some(1500));
        let b = recv_msg(&peer).unwrap();
        assert_eq!((b.request, b.size, b.fds.len()), (21, 0, 1));
        let g = recv_msg(&peer).unwrap();
        assert_eq!((g.request, g.size), (40, 0));
    }
}
