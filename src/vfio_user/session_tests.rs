//! A scripted client drives a real [`Session`] over a socketpair: the whole bring-up a
//! Linux guest behind QEMU performs, and the answers a client must get for what is
//! refused.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::irqs::index;
use super::layout::*;
use super::message::*;
use super::session::Session;
use super::wire::{flags, Command, Header, HEADER_LEN};
use crate::vhost_user::device::{status, DeviceConfig, Limits};
use crate::vhost_user::features::{bit, mask};
use crate::vhost_user::session::SessionCounters;

struct Client {
    sock: UnixStream,
    session: Session,
    counters: SessionCounters,
    id: u16,
}

struct Answer {
    header: Header,
    payload: Vec<u8>,
    fd: Option<File>,
}

fn memfd(len: u64) -> File {
    // SAFETY: memfd_create returns a new descriptor or -1 (checked).
    let fd = unsafe { libc::memfd_create(c"session-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

fn eventfd() -> File {
    // SAFETY: eventfd returns a new descriptor or -1 (checked).
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { File::from_raw_fd(fd) }
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl Client {
    fn new() -> Client {
        Client::with_mtu(None)
    }

    /// A client of a port with `mtu` as its setting.
    fn with_mtu(mtu: Option<u16>) -> Client {
        let (sock, server) = UnixStream::pair().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let cfg = DeviceConfig {
            port: "vfu".into(),
            mac: [2, 0, 0, 0, 0, 7],
            queue_pairs: 1,
            mtu,
            offloads: true,
            limits: Limits {
                max_mem_slots: 4,
                max_memory: 64 << 20,
                ..Limits::default()
            },
            dataplane: None,
        };
        Client {
            sock,
            session: Session::new(server, cfg).unwrap(),
            counters: SessionCounters::default(),
            id: 0,
        }
    }

    fn post(&mut self, command: u16, payload: &[u8], fds: &[RawFd], extra_flags: u32) {
        let header = Header {
            id: self.id,
            command: Command::from_u16(command),
            size: (HEADER_LEN + payload.len()) as u32,
            flags: extra_flags,
            error: 0,
        };
        self.id = self.id.wrapping_add(1);
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(payload);
        self.sock.send_with_fds(&[&bytes[..]], fds).unwrap();
        self.session.on_readable(&mut self.counters).unwrap();
    }

    fn call_with(&mut self, command: Command, payload: &[u8], fds: &[RawFd]) -> Answer {
        self.post(command.code(), payload, fds, 0);
        let mut buf = vec![0u8; 4096];
        let (n, fd) = self.sock.recv_with_fd(&mut buf).unwrap();
        assert!(n >= HEADER_LEN, "short reply");
        let header = Header::parse(buf[..HEADER_LEN].try_into().unwrap());
        assert_eq!(header.size as usize, n, "one reply, one message");
        assert_eq!(header.id, self.id.wrapping_sub(1));
        assert_eq!(header.command, command);
        assert_eq!(header.flags & flags::TYPE_MASK, flags::TYPE_REPLY);
        Answer {
            header,
            payload: buf[HEADER_LEN..n].to_vec(),
            fd,
        }
    }

    fn call(&mut self, command: Command, payload: &[u8]) -> Answer {
        self.call_with(command, payload, &[])
    }

    fn errno(&mut self, command: Command, payload: &[u8]) -> u32 {
        let a = self.call(command, payload);
        assert_ne!(
            a.header.flags & flags::ERROR,
            0,
            "{command:?} should be refused"
        );
        a.header.error
    }

    fn ok(&mut self, command: Command, payload: &[u8], fds: &[RawFd]) -> Answer {
        let a = self.call_with(command, payload, fds);
        assert_eq!(
            a.header.flags & flags::ERROR,
            0,
            "{command:?} refused: errno {}",
            a.header.error
        );
        a
    }

    fn version(&mut self) {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(br#"{"capabilities":{"max_msg_fds":16,"pgsizes":4096}}"#);
        p.push(0);
        let a = self.ok(Command::Version, &p, &[]);
        assert_eq!(&a.payload[..4], &[0, 0, 0, 0]);
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend_from_slice(&words(&[region, data.len() as u32]));
        p.extend_from_slice(data);
        self.ok(Command::RegionWrite, &p, &[]);
    }

    fn read(&mut self, region: u32, offset: u64, count: u32) -> Vec<u8> {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend_from_slice(&words(&[region, count]));
        let a = self.ok(Command::RegionRead, &p, &[]);
        assert_eq!(&a.payload[..16], &p[..]);
        a.payload[16..].to_vec()
    }

    fn dma_map(&mut self, iova: u64, size: u64, flags: u32, fd: Option<&File>) -> Answer {
        let mut p = words(&[32, flags]);
        for v in [0u64, iova, size] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        let fds: Vec<RawFd> = fd.map(|f| f.as_raw_fd()).into_iter().collect();
        self.call_with(Command::DmaMap, &p, &fds)
    }

    fn common(&mut self, off: u64, v: u64, len: usize) {
        self.write(VIRTIO_BAR, COMMON_OFFSET + off, &v.to_le_bytes()[..len]);
    }

    /// What Linux's virtio_pci + virtio_net do, in order.
    fn bring_up(&mut self, features: u64) -> u8 {
        let st = |s: u8| u64::from(s);
        self.common(0x14, 0, 1);
        self.common(0x14, st(status::ACKNOWLEDGE), 1);
        self.common(0x14, st(status::ACKNOWLEDGE | status::DRIVER), 1);
        for (sel, half) in [(0u64, features & 0xffff_ffff), (1, features >> 32)] {
            self.common(0x08, sel, 4);
            self.common(0x0c, half, 4);
        }
        self.common(
            0x14,
            st(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
            1,
        );
        self.read(VIRTIO_BAR, COMMON_OFFSET + 0x14, 1)[0]
    }

    fn set_up_queue(&mut self, q: u16, base: u64) {
        self.common(0x16, u64::from(q), 2);
        self.common(0x18, 256, 2);
        self.common(0x1a, u64::from(q), 2);
        for (off, addr) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
            self.common(off, addr & 0xffff_ffff, 4);
            self.common(off + 4, addr >> 32, 4);
        }
        self.common(0x1c, 1, 2);
    }
}

#[test]
fn a_port_with_an_mtu_offers_virtio_net_f_mtu_and_serves_it_in_the_device_config() {
    let mtu = mask(bit::MTU);
    let features = mask(bit::VERSION_1) | mask(bit::MRG_RXBUF);
    let mut plain = Client::new();
    plain.version();
    let offered = plain.read(VIRTIO_BAR, COMMON_OFFSET + 0x04, 4);
    assert_eq!(u64::from(offered[0]) & mtu, 0);
    assert_eq!(plain.bring_up(features | mtu) & status::FEATURES_OK, 0);

    let mut c = Client::with_mtu(Some(9000));
    c.version();
    let offered = c.read(VIRTIO_BAR, COMMON_OFFSET + 0x04, 4);
    assert_ne!(u64::from(offered[0]) & mtu, 0);
    // `mtu` at offset 10 of struct virtio_net_config, little-endian.
    assert_eq!(
        c.read(VIRTIO_BAR, DEVICE_OFFSET + 10, 2),
        9000u16.to_le_bytes()
    );
    assert_ne!(c.bring_up(features | mtu) & status::FEATURES_OK, 0);
}

#[test]
fn a_linux_like_bring_up_starts_both_rings_with_msix_call_fds() {
    let mut c = Client::new();
    assert_eq!(
        c.errno(Command::DeviceGetInfo, &words(&[16, 0, 0, 0])),
        libc::EINVAL as u32,
        "before VERSION"
    );
    c.version();
    assert_eq!(
        c.errno(Command::Version, &[0, 0, 0, 0, 0]),
        libc::EINVAL as u32,
        "VERSION twice"
    );

    let info = c.ok(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]), &[]);
    assert_eq!(info.payload, words(&[16, 3, NUM_REGIONS, index::COUNT]));

    // BAR0's info: a short argsz learns the size, the full one gets the cap and the fd.
    let q = |argsz: u32, i: u32| {
        let mut p = words(&[argsz, 0, i, 0]);
        p.extend_from_slice(&[0; 16]);
        p
    };
    let short = c.ok(Command::DeviceGetRegionInfo, &q(32, VIRTIO_BAR), &[]);
    assert_eq!(short.payload.len(), 32);
    assert!(short.fd.is_none());
    assert_eq!(
        short.payload[4] & 0b1000,
        0,
        "no CAPS flag without the capability"
    );
    let needed = u32::from_le_bytes(short.payload[..4].try_into().unwrap());
    let full = c.ok(Command::DeviceGetRegionInfo, &q(needed, VIRTIO_BAR), &[]);
    let fd = full.fd.expect("the BAR's memfd");
    assert_eq!(fd.metadata().unwrap().len(), VIRTIO_BAR_SIZE);
    let p = &full.payload;
    assert_eq!(
        u32::from_le_bytes(p[4..8].try_into().unwrap()) & 0b1111,
        0b1111,
        "read, write, mmap, caps"
    );
    assert_eq!(
        u64::from_le_bytes(p[16..24].try_into().unwrap()),
        VIRTIO_BAR_SIZE
    );
    let cap = u32::from_le_bytes(p[12..16].try_into().unwrap()) as usize;
    assert_eq!(&p[cap..cap + 4], &[1, 0, 1, 0], "sparse mmap, version 1");
    assert_eq!(
        u32::from_le_bytes(p[cap + 8..cap + 12].try_into().unwrap()),
        1
    );
    assert_eq!(
        u64::from_le_bytes(p[cap + 16..cap + 24].try_into().unwrap()),
        NOTIFY_OFFSET
    );
    assert_eq!(
        u64::from_le_bytes(p[cap + 24..cap + 32].try_into().unwrap()),
        NOTIFY_LEN
    );
    let config = c.ok(Command::DeviceGetRegionInfo, &q(32, CONFIG_REGION), &[]);
    assert_eq!(
        u64::from_le_bytes(config.payload[16..24].try_into().unwrap()),
        CONFIG_SPACE_LEN
    );
    assert_eq!(
        c.errno(Command::DeviceGetRegionInfo, &q(32, NUM_REGIONS)),
        libc::EINVAL as u32
    );

    let space = c.read(CONFIG_REGION, 0, 256);
    assert_eq!(&space[..4], &[0xf4, 0x1a, 0x41, 0x10]);
    let mac = c.read(VIRTIO_BAR, DEVICE_OFFSET, 6);
    assert_eq!(mac, vec![2, 0, 0, 0, 0, 7]);

    // Memory: QEMU's BIOS ROM without a file, then RAM.
    let ram = memfd(1 << 20);
    c.dma_map(0xfffc_0000, 0x4_0000, DMA_READ, None);
    let a = c.dma_map(0, 1 << 20, DMA_READ | DMA_WRITE, Some(&ram));
    assert_eq!(a.header.flags & flags::ERROR, 0);

    let features = mask(bit::VERSION_1) | mask(bit::MRG_RXBUF) | mask(bit::EVENT_IDX);
    assert_ne!(c.bring_up(features) & status::FEATURES_OK, 0);
    c.set_up_queue(0, 0x1_0000);
    c.set_up_queue(1, 0x2_0000);
    // MSI-X: enable in config space, then hand over one eventfd per vector.
    c.write(
        CONFIG_REGION,
        super::pci::CAP_MSIX_AT as u64 + 2,
        &0x8000u16.to_le_bytes(),
    );
    let efds = [eventfd(), eventfd(), eventfd()];
    let raw: Vec<RawFd> = efds.iter().map(|f| f.as_raw_fd()).collect();
    let set = words(&[20, IRQ_DATA_EVENTFD | IRQ_ACTION_TRIGGER, index::MSIX, 0, 3]);
    c.ok(Command::DeviceSetIrqs, &set, &raw);
    let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    c.common(0x14, u64::from(all), 1);
    let dev = c.session.device();
    assert_eq!(dev.started_rings(), vec![true, true]);
    let snap = dev.snapshot().expect("published");
    assert_eq!(snap.features, features);
    assert!(snap
        .rings
        .iter()
        .all(|r| r.as_ref().is_some_and(|r| r.call.is_some())));
    // The PMD asks the driver not to kick (EVENT_IDX: avail_event kept behind).
    assert_eq!(dev.held_fds(), 3);

    // Unmapping the RAM under running rings stops them before the answer.
    let mut unmap = words(&[24, 0]);
    unmap.extend_from_slice(&0u64.to_le_bytes());
    unmap.extend_from_slice(&(1u64 << 20).to_le_bytes());
    let a = c.ok(Command::DmaUnmap, &unmap, &[]);
    assert_eq!(a.payload, unmap);
    assert_eq!(c.session.device().started_rings(), vec![false, false]);
    assert!(c.session.device().snapshot().is_none());

    c.ok(Command::DeviceReset, &[], &[]);
    assert_eq!(c.session.device().status(), 0);
    assert_eq!(c.counters.framing_errors, 0);
}

#[test]
fn every_command_is_answered_and_refusals_keep_the_session() {
    let mut c = Client::new();
    c.version();
    assert_eq!(
        c.errno(Command::DeviceFeature, &[0; 8]),
        libc::ENOTTY as u32
    );
    assert_eq!(c.errno(Command::from_u16(99), &[]), libc::EOPNOTSUPP as u32);
    assert_eq!(
        c.errno(Command::DirtyPages, &[0; 8]),
        libc::EOPNOTSUPP as u32
    );
    assert_eq!(c.errno(Command::DmaRead, &[0; 24]), libc::EOPNOTSUPP as u32);
    let mut read = (VIRTIO_BAR_SIZE - 2).to_le_bytes().to_vec();
    read.extend_from_slice(&words(&[VIRTIO_BAR, 4]));
    assert_eq!(
        c.errno(Command::RegionRead, &read),
        libc::EINVAL as u32,
        "past the BAR"
    );
    let mut straddle = (ISR_OFFSET - 2).to_le_bytes().to_vec();
    straddle.extend_from_slice(&words(&[VIRTIO_BAR, 4]));
    assert_eq!(
        c.errno(Command::RegionRead, &straddle),
        libc::EINVAL as u32,
        "two structures"
    );
    let mut cfg = 255u64.to_le_bytes().to_vec();
    cfg.extend_from_slice(&words(&[CONFIG_REGION, 2]));
    assert_eq!(c.errno(Command::RegionRead, &cfg), libc::EINVAL as u32);
    assert_eq!(
        c.errno(Command::DeviceGetIrqInfo, &words(&[16, 0, 9, 0])),
        libc::EINVAL as u32
    );
    let msix = c.ok(
        Command::DeviceGetIrqInfo,
        &words(&[16, 0, index::MSIX, 0]),
        &[],
    );
    assert_eq!(
        u32::from_le_bytes(msix.payload[12..16].try_into().unwrap()),
        u32::from(MSIX_VECTORS)
    );
    let io = c.ok(
        Command::GetRegionIoFds,
        &words(&[16, 0, VIRTIO_BAR, 0]),
        &[],
    );
    assert_eq!(io.payload, words(&[16, 0, VIRTIO_BAR, 0]), "no ioeventfds");
    // Descriptors where none belong are refused, and closed.
    let null = File::open("/dev/null").unwrap();
    let a = c.call_with(
        Command::DeviceGetInfo,
        &words(&[16, 0, 0, 0]),
        &[null.as_raw_fd()],
    );
    assert_eq!(a.header.error, libc::EINVAL as u32);
    // A DMA map whose file is too short for it.
    let small = memfd(4096);
    let a = c.dma_map(0, 0x2000, DMA_READ | DMA_WRITE, Some(&small));
    assert_eq!(a.header.error, libc::EINVAL as u32);
    // Five maps with a limit of four.
    for i in 0..4u64 {
        assert_eq!(c.dma_map(i << 20, 4096, DMA_READ, None).header.error, 0);
    }
    assert_eq!(
        c.dma_map(8 << 20, 4096, DMA_READ, None).header.error,
        libc::ENOSPC as u32
    );
    assert_eq!(c.session.device().dma_maps(), 4);

    // A posted write (NO_REPLY) is applied and not answered.
    let mut w = (COMMON_OFFSET + 0x16).to_le_bytes().to_vec();
    w.extend_from_slice(&words(&[VIRTIO_BAR, 2]));
    w.extend_from_slice(&1u16.to_le_bytes());
    c.post(Command::RegionWrite.code(), &w, &[], flags::NO_REPLY);
    c.sock.set_nonblocking(true).unwrap();
    assert!(
        c.sock.read(&mut [0u8; 64]).is_err(),
        "no reply to a posted write"
    );
    c.sock.set_nonblocking(false).unwrap();
    assert_eq!(c.read(VIRTIO_BAR, COMMON_OFFSET + 0x16, 2), vec![1, 0]);
    assert_eq!(c.counters.framing_errors, 0);
}

#[test]
fn framing_errors_end_the_session() {
    let mut c = Client::new();
    let reply = Header {
        id: 0,
        command: Command::Version,
        size: 16,
        flags: flags::TYPE_REPLY,
        error: 0,
    };
    c.sock.send_with_fds(&[&reply.encode()[..]], &[]).unwrap();
    assert!(c.session.on_readable(&mut c.counters).is_err());
    assert_eq!(c.counters.framing_errors, 1);
}
