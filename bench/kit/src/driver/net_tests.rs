//! Tests of [`NetDriver`] against the fake device.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fake::{Chain, FakeDevice};
use super::frame;
use super::net::*;
use super::split::{Kick, VIRTQ_DESC_F_WRITE, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use crate::error::{DeviceError, Error};
use crate::memory::{HugePages, SharedMemory};
use crate::sequences::bits::{
    F_VERSION_1, NET_F_MRG_RXBUF, RING_F_EVENT_IDX, RING_F_INDIRECT_DESC,
};

const GPA: u64 = 0x2_0000_0000;

fn memory() -> SharedMemory {
    SharedMemory::new(4 << 20, HugePages::Never)
        .unwrap()
        .with_guest_phys_addr(GPA)
}

fn options(features: u64, tx_layout: TxLayout) -> NetOptions {
    NetOptions {
        features,
        tx_layout,
        ..NetOptions::default()
    }
}

/// A test frame of `size` bytes with sequence number `seq`.
fn test_frame(size: usize, seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; size];
    frame::build(&mut f, frame::BROADCAST, frame::local_mac(1), seq).unwrap();
    f
}

fn device_err<T: std::fmt::Debug>(r: crate::Result<T>) -> DeviceError {
    match r {
        Err(Error::Device(e)) => e,
        other => panic!("expected a device error, got {other:?}"),
    }
}

/// Writes a net header with `num_buffers` and `data` into the chain, completes it with
/// `len` (not published).
fn complete_rx(dev: &mut FakeDevice<'_>, c: &Chain, num_buffers: u16, data: &[u8], len: u32) {
    let mut bytes = vec![0u8; 12];
    bytes[10..].copy_from_slice(&num_buffers.to_le_bytes());
    bytes.extend_from_slice(data);
    dev.write_chain(c, &bytes);
    dev.push_used(u32::from(c.head), len);
}

#[test]
fn drivers_can_move_to_worker_threads() {
    fn send<T: Send>() {}
    send::<NetDriver<'static>>();
    send::<super::split::DriverQueue<'static>>();
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 8, 2048).unwrap();
    let drv = NetDriver::new(&mem, &layout, NetOptions::default()).unwrap();
    let s = format!("{drv:?}");
    assert!(s.len() < 2000, "Debug stays short: {s}");
}

#[test]
fn header_length_follows_features() {
    assert_eq!(net_hdr_len(0), 10);
    assert_eq!(net_hdr_len(F_VERSION_1), 12);
    assert_eq!(net_hdr_len(NET_F_MRG_RXBUF), 12);
    assert_eq!(net_hdr_len(RING_F_EVENT_IDX | RING_F_INDIRECT_DESC), 10);
}

#[test]
fn sent_frames_reach_the_device_in_every_layout_and_are_reclaimed() {
    let sizes = [60usize, 1514, 2036, 2037, 2048, 9000];
    for features in [0, F_VERSION_1, NET_F_MRG_RXBUF] {
        for tx_layout in [
            TxLayout::HeaderInline,
            TxLayout::HeaderSeparate,
            TxLayout::Indirect,
        ] {
            let what = format!("features {features:#x} {tx_layout:?}");
            let mem = memory();
            let layout = NetLayout::new(&mem, 0, 32, 2048).unwrap();
            let opts = options(features | RING_F_INDIRECT_DESC, tx_layout);
            let mut drv = NetDriver::new(&mem, &layout, opts).unwrap();
            // Stale bytes everywhere in the pool: headers must be zeroed by send.
            mem.fill(layout.pool_offset, layout.pool_size(), 0xff)
                .unwrap();
            let hdr = drv.hdr_len();
            assert_eq!(hdr, net_hdr_len(features), "{what}");
            let mut dev = FakeDevice::new(&mem, &layout.tx);
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| test_frame(s, i as u64))
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
            assert_eq!(drv.send(&refs), sizes.len(), "{what}");
            assert_eq!(dev.avail_idx(), sizes.len() as u16);

            let got = dev.consume_tx(hdr);
            assert_eq!(got.len(), sizes.len(), "{what}");
            for ((c, bytes), f) in got.iter().zip(&frames) {
                assert_eq!(bytes, f, "{what}: frame of {} bytes", f.len());
                assert!(c.descs.iter().all(|d| d.flags & VIRTQ_DESC_F_WRITE == 0));
                let lens: Vec<usize> = c.descs.iter().map(|d| d.len as usize).collect();
                let data_bufs = f.len().div_ceil(2048);
                match tx_layout {
                    TxLayout::HeaderInline => {
                        assert!(!c.indirect());
                        assert_eq!(lens.len(), (hdr + f.len()).div_ceil(2048), "{what}");
                        assert_eq!(lens[0], (hdr + f.len()).min(2048), "{what}");
                    }
                    TxLayout::HeaderSeparate | TxLayout::Indirect => {
                        assert_eq!(c.indirect(), tx_layout == TxLayout::Indirect);
                        assert_eq!(lens.len(), 1 + data_bufs, "{what}");
                        assert_eq!(lens[0], hdr, "{what}");
                        assert_eq!(lens[1], f.len().min(2048), "{what}");
                    }
                }
                assert!(lens.iter().all(|&l| l <= 2048));
            }
            assert!(drv.tx_free_buffers() < 32);
            assert_eq!(drv.reclaim_tx().unwrap(), sizes.len(), "{what}");
            assert_eq!(drv.tx_free_buffers(), 32);
            assert_eq!(drv.tx_queue().num_free(), 32);
            assert_eq!(drv.reclaim_tx().unwrap(), 0);
            let c = drv.counters();
            assert_eq!((c.sent, c.tx_reclaimed, c.tx_invalid), (6, 6, 0));
            assert_eq!(c.sent_bytes, sizes.iter().sum::<usize>() as u64);
        }
    }
}

#[test]
fn send_takes_what_fits_and_drops_what_never_can() {
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 4, 2048).unwrap();
    let mut drv = NetDriver::new(&mem, &layout, NetOptions::default()).unwrap();
    let mut dev = FakeDevice::new(&mem, &layout.tx);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| test_frame(64, i)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    assert_eq!(drv.send(&refs), 4, "a 4-entry ring takes 4 frames");
    assert_eq!(drv.send(&refs[4..]), 0);
    assert_eq!(dev.consume_tx(12).len(), 4);
    assert_eq!(drv.reclaim_tx().unwrap(), 4);
    assert_eq!(drv.send(&refs[4..]), 2);

    // Frames no chain can carry are taken and counted, the rest goes on.
    let empty: &[u8] = &[];
    let huge = vec![0u8; MAX_TX_FRAME + 1];
    let jumbo = test_frame(9000, 9); // needs 5 descriptors, the ring has 4
    let small = test_frame(64, 10);
    assert_eq!(drv.send(&[empty, &huge, &jumbo, &small]), 4);
    assert_eq!(drv.counters().tx_invalid, 3);
    assert_eq!(drv.counters().sent, 7);
    let got = dev.consume_tx(12);
    assert_eq!(got.len(), 3);
    assert_eq!(frame::verify(&got[2].1), Ok(10));
}

#[test]
fn single_buffer_frames_are_received_exactly() {
    for features in [0, F_VERSION_1] {
        let mem = memory();
        let layout = NetLayout::new(&mem, 0, 8, 2048).unwrap();
        let mut drv =
            NetDriver::new(&mem, &layout, options(features, TxLayout::default())).unwrap();
        let hdr = drv.hdr_len();
        let mut dev = FakeDevice::new(&mem, &layout.rx);
        assert_eq!(dev.avail_flags(), VRING_AVAIL_F_NO_INTERRUPT, "we poll");
        assert_eq!(drv.fill_rx().unwrap(), 8);
        assert_eq!(drv.fill_rx().unwrap(), 0);
        assert_eq!(dev.pending(), 8);
        let frames = [
            test_frame(60, 1),
            test_frame(1514, 2),
            test_frame(2048 - hdr, 3),
        ];
        for f in &frames {
            assert!(dev.deliver(f, hdr, false));
        }
        let mut out = Vec::new();
        assert_eq!(drv.recv_into(&mut out).unwrap(), 3);
        assert_eq!(out, frames);
        // The buffers went straight back to the ring.
        assert_eq!(drv.rx_free_buffers(), 0);
        assert_eq!(dev.pending(), 8);
        assert_eq!(drv.recv_into(&mut out).unwrap(), 0);
        let c = drv.counters();
        assert_eq!((c.received, c.rx_errors), (3, 0));
        assert_eq!(c.received_bytes, (60 + 1514 + 2048 - hdr) as u64);
    }
}

#[test]
fn mergeable_buffers_carry_a_jumbo_frame_in_three() {
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 8, 4096).unwrap();
    let features = F_VERSION_1 | NET_F_MRG_RXBUF;
    let mut drv = NetDriver::new(&mem, &layout, options(features, TxLayout::default())).unwrap();
    let mut dev = FakeDevice::new(&mem, &layout.rx);
    drv.fill_rx().unwrap();
    let jumbo = test_frame(9000, 77);
    let small = test_frame(64, 78);
    assert!(dev.deliver(&jumbo, 12, true));
    assert_eq!(
        dev.used_idx, 3,
        "12 + 9000 bytes take three 4096-byte buffers"
    );
    assert!(dev.deliver(&small, 12, true));
    let mut seqs = Vec::new();
    let n = drv
        .recv(|f| seqs.push((f.len(), frame::verify(f))))
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(seqs, [(9000, Ok(77)), (64, Ok(78))]);
    assert_eq!(drv.counters().received, 2);
    assert_eq!(dev.pending(), 8, "all four buffers re-posted");
}

#[test]
fn bad_receive_entries_are_errors_and_counted() {
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 8, 2048).unwrap();
    let features = F_VERSION_1 | NET_F_MRG_RXBUF;
    let mut drv = NetDriver::new(&mem, &layout, options(features, TxLayout::default())).unwrap();
    let mut dev = FakeDevice::new(&mem, &layout.rx);
    drv.fill_rx().unwrap();
    let f = test_frame(100, 1);
    let mut out = Vec::new();

    // num_buffers 0.
    let c = dev.pop().unwrap();
    complete_rx(&mut dev, &c, 0, &f, 112);
    dev.publish_used();
    assert_eq!(
        device_err(drv.recv_into(&mut out)),
        DeviceError::BadNumBuffers {
            num_buffers: 0,
            available: 1
        }
    );
    assert_eq!(drv.counters().rx_errors, 1);
    assert_eq!(drv.rx_free_buffers(), 0, "the buffer was recycled");

    // num_buffers larger than the entries published.
    let (c1, c2) = (dev.pop().unwrap(), dev.pop().unwrap());
    complete_rx(&mut dev, &c1, 3, &f, 112);
    dev.push_used(u32::from(c2.head), 10);
    dev.publish_used();
    assert_eq!(
        device_err(drv.recv_into(&mut out)),
        DeviceError::BadNumBuffers {
            num_buffers: 3,
            available: 2
        }
    );
    assert_eq!(drv.counters().rx_errors, 2);
    // The second entry is left; it is taken as a frame start, with a garbage header.
    let _ = drv.recv_into(&mut out);

    // A len larger than the buffer.
    let c = dev.pop().unwrap();
    complete_rx(&mut dev, &c, 1, &f, 2049);
    dev.publish_used();
    assert!(matches!(
        device_err(drv.recv_into(&mut out)),
        DeviceError::LenTooLarge {
            len: 2049,
            max: 2048,
            ..
        }
    ));

    // Shorter than header + Ethernet header.
    let c = dev.pop().unwrap();
    complete_rx(&mut dev, &c, 1, &f, 12 + 13);
    dev.publish_used();
    assert_eq!(
        device_err(drv.recv_into(&mut out)),
        DeviceError::RxTooShort { len: 25, min: 26 }
    );
    let c = dev.pop().unwrap();
    complete_rx(&mut dev, &c, 1, &f, 11);
    dev.publish_used();
    assert!(matches!(
        device_err(drv.recv_into(&mut out)),
        DeviceError::RxTooShort { len: 11, .. }
    ));

    // None of those broke the queue: a good frame still arrives, every buffer is posted.
    assert!(out.is_empty());
    let rx_errors = drv.counters().rx_errors;
    assert!(dev.deliver(&f, 12, true));
    assert_eq!(drv.recv_into(&mut out).unwrap(), 1);
    assert_eq!(out, std::slice::from_ref(&f));
    assert_eq!(drv.rx_free_buffers(), 0);
    assert_eq!(drv.rx_queue().num_free(), 0);

    // An id out of range breaks the RX queue: counted once, reported every time.
    dev.push_used(99, 100);
    dev.publish_used();
    assert!(matches!(
        device_err(drv.recv_into(&mut out)),
        DeviceError::IdOutOfRange { id: 99, .. }
    ));
    assert!(drv.recv_into(&mut out).is_err());
    assert!(drv.fill_rx().is_err());
    assert_eq!(drv.counters().rx_errors, rx_errors + 1);
}

#[test]
fn a_merged_frame_longer_than_the_maximum_is_dropped_whole() {
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 8, 16384).unwrap();
    let features = F_VERSION_1 | NET_F_MRG_RXBUF;
    let mut drv = NetDriver::new(&mem, &layout, options(features, TxLayout::default())).unwrap();
    let mut dev = FakeDevice::new(&mem, &layout.rx);
    drv.fill_rx().unwrap();
    let chains: Vec<Chain> = (0..5).map(|_| dev.pop().unwrap()).collect();
    complete_rx(&mut dev, &chains[0], 5, &[0xab; 100], 16384);
    for c in &chains[1..] {
        dev.push_used(u32::from(c.head), 16384);
    }
    dev.publish_used();
    let mut out = Vec::new();
    assert_eq!(
        device_err(drv.recv_into(&mut out)),
        DeviceError::FrameTooLong {
            len: 5 * 16384 - 12,
            max: MAX_RX_FRAME as u64
        }
    );
    // All five entries were consumed: the next frame is read correctly.
    let f = test_frame(1000, 5);
    assert!(dev.deliver(&f, 12, true));
    assert_eq!(drv.recv_into(&mut out).unwrap(), 1);
    assert_eq!(out, [f]);
}

#[test]
fn a_bad_tx_used_entry_is_an_error_and_the_buffers_come_back() {
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 8, 2048).unwrap();
    let mut drv = NetDriver::new(&mem, &layout, NetOptions::default()).unwrap();
    let mut dev = FakeDevice::new(&mem, &layout.tx);
    let f = test_frame(3000, 1);
    assert_eq!(drv.send(&[&f]), 1);
    assert_eq!(drv.tx_free_buffers(), 6);
    let c = dev.pop().unwrap();
    dev.push_used(u32::from(c.head), 3012); // TX len must be 0
    dev.publish_used();
    assert!(matches!(
        device_err(drv.reclaim_tx()),
        DeviceError::LenTooLarge {
            len: 3012,
            max: 0,
            ..
        }
    ));
    assert_eq!(drv.tx_free_buffers(), 8);
    assert_eq!(drv.counters().tx_errors, 1);
    assert_eq!(drv.counters().tx_reclaimed, 1);

    // Lenient mode accepts it.
    let opts = NetOptions {
        strict_tx_len: false,
        ..NetOptions::default()
    };
    let mut drv = NetDriver::new(&mem, &layout, opts).unwrap();
    let mut dev = FakeDevice::new(&mem, &layout.tx);
    assert_eq!(drv.send(&[&f]), 1);
    let c = dev.pop().unwrap();
    dev.push_used(u32::from(c.head), 3012);
    dev.publish_used();
    assert_eq!(drv.reclaim_tx().unwrap(), 1);

    // A chain id the driver never sent breaks the TX queue.
    assert_eq!(drv.send(&[&f]), 1);
    assert_eq!(
        drv.tx_queue()
            .as_split()
            .unwrap()
            .chain(0)
            .collect::<Vec<_>>(),
        [0, 1]
    );
    dev.push_used(1, 0);
    dev.publish_used();
    assert!(matches!(
        device_err(drv.reclaim_tx()),
        DeviceError::NotOutstanding { id: 1 }
    ));
    assert_eq!(drv.send(&[&f]), 0, "a broken queue takes nothing");
    assert_eq!(
        drv.tx_free_buffers(),
        6,
        "the frame in flight keeps its buffers"
    );
    assert_eq!(drv.counters().tx_errors, 1);
}

#[test]
fn kicks_go_to_the_eventfds_when_the_device_wants_them() {
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 8, 2048).unwrap();
    let opts = NetOptions {
        kick: Kick::IfNeeded,
        ..NetOptions::default()
    };
    let mut drv = NetDriver::new(&mem, &layout, opts).unwrap();
    let (rxk, txk) = (
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    );
    drv.set_kick_fds(
        Some(rxk.try_clone().unwrap()),
        Some(txk.try_clone().unwrap()),
    );
    let mut rxdev = FakeDevice::new(&mem, &layout.rx);
    let txdev = FakeDevice::new(&mem, &layout.tx);
    drv.fill_rx().unwrap();
    assert_eq!(rxk.read().unwrap(), 1);
    let f = test_frame(64, 0);
    drv.send(&[&f, &f]);
    assert_eq!(txk.read().unwrap(), 1, "one kick per burst");
    txdev.set_used_flags(VRING_USED_F_NO_NOTIFY);
    drv.send(&[&f]);
    assert!(txk.read().is_err(), "suppressed");
    // Re-posting received buffers kicks too, unless suppressed.
    assert!(rxdev.deliver(&f, 12, false));
    drv.recv(|_| {}).unwrap();
    assert_eq!(rxk.read().unwrap(), 1);
    rxdev.set_used_flags(VRING_USED_F_NO_NOTIFY);
    assert!(rxdev.deliver(&f, 12, false));
    drv.recv(|_| {}).unwrap();
    assert!(rxk.read().is_err(), "suppressed");
    assert_eq!(drv.counters().kick_errors, 0);
    assert_eq!(drv.tx_queue().kicks() + drv.rx_queue().kicks(), 3);
}

#[test]
fn more_than_65536_frames_loop_through_small_rings() {
    let mem = memory();
    let layout = NetLayout::new(&mem, 0, 8, 256).unwrap();
    let features = F_VERSION_1 | NET_F_MRG_RXBUF | RING_F_EVENT_IDX | RING_F_INDIRECT_DESC;
    let mut drv = NetDriver::new(&mem, &layout, options(features, TxLayout::Indirect)).unwrap();
    let mut tx = FakeDevice::new(&mem, &layout.tx);
    let mut rx = FakeDevice::new(&mem, &layout.rx);
    drv.fill_rx().unwrap();
    const TOTAL: u64 = 70_000;
    let (mut next_seq, mut expect) = (0u64, 0u64);
    let mut buf = [0u8; 300];
    let layouts = [
        TxLayout::HeaderInline,
        TxLayout::HeaderSeparate,
        TxLayout::Indirect,
    ];
    while expect < TOTAL {
        drv.set_tx_layout(layouts[(next_seq % 3) as usize]).unwrap();
        // 60..300 bytes: one or two 256-byte buffers.
        let size = 60 + (next_seq % 241) as usize;
        frame::build(
            &mut buf[..size],
            frame::BROADCAST,
            frame::local_mac(2),
            next_seq,
        )
        .unwrap();
        let sent = next_seq < TOTAL && drv.send(&[&buf[..size]]) == 1;
        if sent {
            next_seq += 1;
        }
        // The device loops the frames back, a few at a time (at most 3 frames of 2 buffers
        // fit the 8 RX buffers), or when the TX ring is full.
        if !sent || next_seq % 3 == 0 {
            for (_, f) in tx.consume_tx(12) {
                assert!(
                    rx.deliver(&f, 12, true),
                    "no RX buffer for frame {}",
                    next_seq
                );
            }
            drv.reclaim_tx().unwrap();
            drv.recv(|f| {
                assert_eq!(frame::verify(f), Ok(expect));
                expect += 1;
            })
            .unwrap();
        }
    }
    let c = *drv.counters();
    assert_eq!((c.sent, c.received, c.tx_reclaimed), (TOTAL, TOTAL, TOTAL));
    assert_eq!((c.rx_errors, c.tx_errors, c.tx_invalid), (0, 0, 0));
    assert_eq!(
        drv.tx_queue().as_split().unwrap().next_avail(),
        (TOTAL % 65536) as u16
    );
    assert_eq!(
        tx.avail_idx(),
        drv.tx_queue().as_split().unwrap().next_avail()
    );
    assert_eq!(
        tx.used_event(),
        drv.tx_queue()
            .as_split()
            .unwrap()
            .last_used()
            .wrapping_sub(1)
    );
}

#[test]
fn layouts_and_options_are_checked() {
    let mem = memory();
    assert!(matches!(
        NetLayout::new(&mem, 0, 8, 63),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        NetLayout::new(&mem, 0, 8, MAX_BUF_SIZE + 1),
        Err(Error::InvalidArgument(_))
    ));
    let layout = NetLayout::new(&mem, 0, 8, 2048).unwrap();
    assert_eq!(layout.pool_offset % 64, 0);
    assert!(layout.pool_offset >= layout.tx.end_offset());
    assert!(layout.pool_size() >= 16 * 2048);
    assert!(matches!(
        NetDriver::new(&mem, &layout, options(F_VERSION_1, TxLayout::Indirect)),
        Err(Error::InvalidArgument(_))
    ));
    let mut drv = NetDriver::new(&mem, &layout, NetOptions::default()).unwrap();
    assert!(drv.set_tx_layout(TxLayout::Indirect).is_err());
    assert!(drv.set_tx_layout(TxLayout::HeaderSeparate).is_ok());
    let small = SharedMemory::new(64 << 10, HugePages::Never).unwrap();
    let layout = NetLayout::new(&small, 0, 8, 4096).unwrap();
    assert!(matches!(
        NetDriver::new(&small, &layout, NetOptions::default()),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn the_driver_runs_unchanged_on_packed_rings() {
    use super::fake_packed::FakePackedDevice;
    use crate::sequences::bits::{F_IN_ORDER, F_RING_PACKED};
    use crate::vring::RingLayout;

    let sizes = [60usize, 1514, 2037, 9000];
    for tx_layout in [
        TxLayout::HeaderInline,
        TxLayout::HeaderSeparate,
        TxLayout::Indirect,
    ] {
        let mem = memory();
        let layout = NetLayout::new_as(&mem, 0, 16, 2048, RingLayout::Packed).unwrap();
        let features = F_VERSION_1 | NET_F_MRG_RXBUF | RING_F_INDIRECT_DESC | F_RING_PACKED;
        let mut drv = NetDriver::new(&mem, &layout, options(features, tx_layout)).unwrap();
        assert!(drv.tx_queue().as_packed().is_some());
        let mut tx = FakePackedDevice::new(&mem, &layout.tx);
        let mut rx = FakePackedDevice::new(&mem, &layout.rx);
        assert_eq!(drv.fill_rx().unwrap(), 16);
        // Several rounds: both rings wrap.
        let mut tx_slots = 0;
        for round in 0..6u64 {
            let frames: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| test_frame(s, round * 10 + i as u64))
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
            assert_eq!(drv.send(&refs), sizes.len(), "{tx_layout:?}");
            let got = tx.consume_tx(12);
            tx_slots += got.iter().map(|(c, _)| u32::from(c.ndesc)).sum::<u32>();
            let sent: Vec<&Vec<u8>> = got.iter().map(|(_, b)| b).collect();
            assert_eq!(sent, frames.iter().collect::<Vec<_>>(), "{tx_layout:?}");
            assert_eq!(
                got.iter().all(|(c, _)| c.indirect()),
                tx_layout == TxLayout::Indirect
            );
            assert_eq!(drv.reclaim_tx().unwrap(), sizes.len());
            // The same frames come back through RX, merged over 2048-byte buffers.
            for f in &frames[..2] {
                assert!(rx.deliver(f, 12, true));
            }
            let mut back = Vec::new();
            assert_eq!(drv.recv_into(&mut back).unwrap(), 2);
            assert_eq!(back, frames[..2].to_vec());
        }
        assert!(tx_slots > 16, "the TX ring wrapped: {tx_slots} slots");
        assert_eq!(drv.tx_free_buffers(), 16);
        assert_eq!(drv.counters().rx_errors + drv.counters().tx_errors, 0);
    }

    // A split layout with RING_PACKED negotiated (or the reverse) is refused.
    let mem = memory();
    let split = NetLayout::new(&mem, 0, 16, 2048).unwrap();
    let packed_features = options(F_VERSION_1 | F_RING_PACKED, TxLayout::HeaderInline);
    assert!(NetDriver::new(&mem, &split, packed_features).is_err());
    let packed = NetLayout::new_as(&mem, 0, 16, 2048, RingLayout::Packed).unwrap();
    assert!(NetDriver::new(&mem, &packed, NetOptions::default()).is_err());

    // IN_ORDER: TX chains come back in batches of one used descriptor.
    let features = F_VERSION_1 | F_RING_PACKED | F_IN_ORDER;
    let mut drv = NetDriver::new(&mem, &packed, options(features, TxLayout::HeaderInline)).unwrap();
    let mut tx = FakePackedDevice::new(&mem, &packed.tx);
    for round in 0..5u64 {
        let frames: Vec<Vec<u8>> = (0..5).map(|i| test_frame(64, round * 5 + i)).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        assert_eq!(drv.send(&refs), 5);
        let chains: Vec<_> = std::iter::from_fn(|| tx.pop()).collect();
        let slots: u16 = chains.iter().map(|c| c.ndesc).sum();
        tx.push_used(chains[4].id, 0, slots);
        assert_eq!(drv.reclaim_tx().unwrap(), 5, "round {round}");
    }
    assert_eq!(drv.tx_queue().in_flight(), 0);
}
