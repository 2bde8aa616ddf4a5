//! Tests of [`DriverQueue`] against the fake device.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fake::FakeDevice;
use super::split::*;
use crate::error::{DeviceError, Error};
use crate::memory::{HugePages, SharedMemory};
use crate::vring::Vring;

const GPA: u64 = 0x1_0000_0000;

fn memory() -> SharedMemory {
    SharedMemory::new(1 << 20, HugePages::Never)
        .unwrap()
        .with_guest_phys_addr(GPA)
}

/// Buffers for tests: anywhere past the rings.
fn buf(i: u64) -> u64 {
    GPA + 0x8_0000 + i * 0x1000
}

/// Re-initializes `q` and returns a fresh device on its ring.
fn reset<'m>(q: &mut DriverQueue<'m>, mem: &'m SharedMemory, vring: &Vring) -> FakeDevice<'m> {
    q.init().unwrap();
    FakeDevice::new(mem, vring)
}

fn device_err(r: crate::Result<impl std::fmt::Debug>) -> DeviceError {
    match r {
        Err(Error::Device(e)) => e,
        other => panic!("expected a device error, got {other:?}"),
    }
}

#[test]
fn chains_are_written_and_published_once_per_burst() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let mut dev = FakeDevice::new(&mem, &vring);

    let segs = [
        Seg::readable(buf(0), 100),
        Seg::readable(buf(1), 50),
        Seg::writable(buf(2), 200),
    ];
    let head = q.add_chain(&segs).unwrap();
    assert_eq!(head, 0);
    assert_eq!((q.num_free(), q.in_flight()), (5, 1));
    assert_eq!(dev.pending(), 0, "nothing visible before publish");
    let h2 = q.add_chain(&[Seg::writable(buf(3), 10)]).unwrap();
    assert_eq!(h2, 3, "descriptors come off the free list in order");
    q.publish();
    assert_eq!(dev.avail_idx(), 2, "one store for the burst");

    let c = dev.pop().unwrap();
    assert_eq!(c.head, head);
    let flags: Vec<u16> = c.descs.iter().map(|d| d.flags).collect();
    assert_eq!(
        flags,
        [VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE]
    );
    let bufs: Vec<(u64, u32)> = c.descs.iter().map(|d| (d.addr, d.len)).collect();
    assert_eq!(bufs, [(buf(0), 100), (buf(1), 50), (buf(2), 200)]);
    assert_eq!(q.chain(head).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(c.writable_len(), 200);
    let c2 = dev.pop().unwrap();
    assert_eq!((c2.head, c2.descs.len()), (3, 1));
    assert!(dev.pop().is_none());

    dev.push_used(u32::from(c2.head), 7);
    dev.push_used(u32::from(c.head), 200);
    dev.publish_used();
    let mut out = [UsedElem::default(); 4];
    assert_eq!(q.poll_used(&mut out).unwrap(), 2);
    assert_eq!(
        out[..2],
        [UsedElem { id: 3, len: 7 }, UsedElem { id: 0, len: 200 }]
    );
    assert_eq!((q.num_free(), q.in_flight(), q.last_used()), (8, 0, 2));
    assert_eq!(
        q.chain(head).count(),
        0,
        "returned chains are not outstanding"
    );
    assert_eq!(q.poll_used(&mut out).unwrap(), 0);
}

#[test]
fn a_full_queue_refuses_and_recovers_in_any_completion_order() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 4).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let mut dev = FakeDevice::new(&mem, &vring);
    let two = [Seg::readable(buf(0), 1), Seg::readable(buf(1), 1)];
    let a = q.add_chain(&two).unwrap();
    let b = q.add_chain(&[Seg::readable(buf(2), 1)]).unwrap();
    assert!(matches!(
        q.add_chain(&two),
        Err(Error::QueueFull { needed: 2, free: 1 })
    ));
    let c = q.add_chain(&[Seg::readable(buf(3), 1)]).unwrap();
    assert_eq!(q.num_free(), 0);
    assert!(matches!(
        q.add_chain(&[Seg::readable(buf(3), 1)]),
        Err(Error::QueueFull { needed: 1, free: 0 })
    ));
    q.publish();
    while dev.pop().is_some() {}
    // Complete out of order: b, c, then a.
    for id in [b, c, a] {
        dev.push_used(u32::from(id), 0);
    }
    dev.publish_used();
    let mut out = [UsedElem::default(); 1];
    assert_eq!(q.poll_used(&mut out).unwrap(), 1);
    assert_eq!(out[0].id, b);
    assert_eq!(q.num_free(), 1);
    let mut out = [UsedElem::default(); 8];
    assert_eq!(q.poll_used(&mut out).unwrap(), 2);
    assert_eq!(q.num_free(), 4);
    // The whole ring can be used as one chain again.
    let four: Vec<Seg> = (0..4).map(|i| Seg::readable(buf(i), 1)).collect();
    let h = q.add_chain(&four).unwrap();
    assert_eq!(q.chain(h).count(), 4);
    q.publish();
    assert_eq!(dev.pop().unwrap().descs.len(), 4);
}

#[test]
fn invalid_used_entries_are_errors_not_panics() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let mut out = [UsedElem::default(); 8];

    // Id out of range, including one that does not fit a u16.
    for id in [8u32, 0x1_0000, u32::MAX] {
        let mut dev = reset(&mut q, &mem, &vring);
        q.add_chain(&[Seg::writable(buf(0), 64)]).unwrap();
        q.publish();
        dev.push_used(id, 0);
        dev.publish_used();
        assert_eq!(
            device_err(q.poll_used(&mut out)),
            DeviceError::IdOutOfRange { id, queue_size: 8 }
        );
        // Sticky: the queue is broken until init.
        assert!(q.broken().is_some());
        assert!(matches!(q.poll_used(&mut out), Err(Error::Device(_))));
        assert!(matches!(
            q.add_chain(&[Seg::writable(buf(0), 64)]),
            Err(Error::Device(_))
        ));
    }

    // An id that was never added.
    let mut dev = reset(&mut q, &mem, &vring);
    q.add_chain(&[Seg::writable(buf(0), 64)]).unwrap();
    q.publish();
    dev.push_used(5, 0);
    dev.publish_used();
    assert_eq!(
        device_err(q.poll_used(&mut out)),
        DeviceError::NotOutstanding { id: 5 }
    );

    // The same chain returned twice: the first is good, the second is not outstanding.
    let mut dev = reset(&mut q, &mem, &vring);
    let a = q.add_chain(&[Seg::writable(buf(0), 64)]).unwrap();
    q.add_chain(&[Seg::writable(buf(1), 64)]).unwrap();
    q.publish();
    dev.push_used(u32::from(a), 10);
    dev.push_used(u32::from(a), 10);
    dev.publish_used();
    assert_eq!(q.poll_used(&mut out).unwrap(), 1, "the good entry first");
    assert_eq!(
        device_err(q.poll_used(&mut out)),
        DeviceError::NotOutstanding { id: a }
    );

    // A chain added but not yet published cannot come back.
    let mut dev = reset(&mut q, &mem, &vring);
    q.add_chain(&[Seg::writable(buf(0), 64)]).unwrap();
    q.publish();
    let unpublished = q.add_chain(&[Seg::writable(buf(1), 64)]).unwrap();
    dev.push_used(u32::from(unpublished), 0);
    dev.publish_used();
    assert_eq!(
        device_err(q.poll_used(&mut out)),
        DeviceError::NotOutstanding { id: unpublished }
    );

    // used.idx further than the published chains.
    let mut dev = reset(&mut q, &mem, &vring);
    q.add_chain(&[Seg::writable(buf(0), 64)]).unwrap();
    q.add_chain(&[Seg::writable(buf(1), 64)]).unwrap();
    q.publish();
    dev.set_used_idx(3);
    assert_eq!(
        device_err(q.used_pending()),
        DeviceError::UsedIdxAhead {
            used_idx: 3,
            last_used: 0,
            ahead: 3,
            in_flight: 2
        }
    );
    let mut dev = reset(&mut q, &mem, &vring);
    dev.set_used_idx(0x8000);
    assert!(matches!(
        device_err(q.used_pending()),
        DeviceError::UsedIdxAhead { .. }
    ));
}

#[test]
fn a_used_len_beyond_the_writable_bytes_returns_the_chain_with_an_error() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let mut dev = FakeDevice::new(&mem, &vring);
    let mut out = [UsedElem::default(); 8];
    let rx = q
        .add_chain(&[Seg::readable(buf(0), 12), Seg::writable(buf(1), 100)])
        .unwrap();
    let tx = q.add_chain(&[Seg::readable(buf(2), 60)]).unwrap();
    q.publish();
    dev.push_used(u32::from(rx), 101);
    dev.push_used(u32::from(tx), 60);
    dev.publish_used();
    assert_eq!(
        device_err(q.poll_used(&mut out)),
        DeviceError::LenTooLarge {
            id: rx,
            len: 101,
            max: 100
        }
    );
    assert!(q.broken().is_none(), "a bad len does not break the queue");
    assert_eq!(q.num_free(), 7, "the chain came back");
    // Strict: a read-only chain must come back with len 0.
    assert_eq!(
        device_err(q.pop_used()),
        DeviceError::LenTooLarge {
            id: tx,
            len: 60,
            max: 0
        }
    );
    assert_eq!(q.num_free(), 8);

    // Lenient: a read-only chain may carry any len; writable chains are still checked.
    q.set_strict_len(false);
    let tx = q.add_chain(&[Seg::readable(buf(2), 60)]).unwrap();
    q.publish();
    dev.push_used(u32::from(tx), 60);
    dev.publish_used();
    assert_eq!(q.poll_used(&mut out).unwrap(), 1);
    assert_eq!(out[0], UsedElem { id: tx, len: 60 });
    let rx = q.add_chain(&[Seg::writable(buf(1), 100)]).unwrap();
    q.publish();
    dev.push_used(u32::from(rx), 0xffff_ffff);
    dev.publish_used();
    assert!(matches!(
        device_err(q.poll_used(&mut out)),
        DeviceError::LenTooLarge {
            len: 0xffff_ffff,
            ..
        }
    ));
}

fn kicks(fd: &EventFd) -> u64 {
    fd.read().unwrap_or(0)
}

#[test]
fn kicks_follow_the_mode_and_the_device_suppression() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 16).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let dev = FakeDevice::new(&mem, &vring);
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let one = [Seg::readable(buf(0), 1)];

    // Never: no kick whatever the device says.
    q.add_chain(&one).unwrap();
    q.publish();
    assert!(!q.kick_if_needed(&fd).unwrap());
    assert_eq!(kicks(&fd), 0);

    // IfNeeded without EVENT_IDX: kick unless used.flags has NO_NOTIFY, and only for new
    // publications.
    q.set_kick(Kick::IfNeeded);
    q.add_chain(&one).unwrap();
    q.publish();
    assert!(q.kick_if_needed(&fd).unwrap());
    assert_eq!(kicks(&fd), 1);
    assert!(!q.kick_if_needed(&fd).unwrap(), "nothing new published");
    dev.set_used_flags(VRING_USED_F_NO_NOTIFY);
    q.add_chain(&one).unwrap();
    q.publish();
    assert!(!q.kick_if_needed(&fd).unwrap());
    assert_eq!(kicks(&fd), 0);

    // Always ignores suppression.
    q.set_kick(Kick::Always);
    q.add_chain(&one).unwrap();
    q.publish();
    assert!(q.kick_if_needed(&fd).unwrap());
    assert_eq!(kicks(&fd), 1);

    // EVENT_IDX: kick when avail_event lies in [old, new).
    q.set_kick(Kick::IfNeeded);
    q.set_event_idx(true);
    dev.set_used_flags(0);
    assert_eq!(q.next_avail(), 4);
    dev.set_avail_event(6);
    q.add_chain(&one).unwrap(); // 4 -> 5: avail_event 6 not crossed
    q.publish();
    assert!(!q.kick_if_needed(&fd).unwrap());
    q.add_chain(&one).unwrap();
    q.add_chain(&one).unwrap(); // 5 -> 7: crosses 6
    q.publish();
    assert!(q.kick_if_needed(&fd).unwrap());
    dev.set_avail_event(7);
    q.add_chain(&one).unwrap(); // 7 -> 8: crosses 7 exactly
    q.publish();
    assert!(q.kick_if_needed(&fd).unwrap());
    dev.set_used_flags(VRING_USED_F_NO_NOTIFY);
    dev.set_avail_event(8);
    q.add_chain(&one).unwrap(); // flags are ignored with EVENT_IDX
    q.publish();
    assert!(q.kick_if_needed(&fd).unwrap());
    assert_eq!(kicks(&fd), 3);
    assert_eq!(q.kicks(), 5);
}

#[test]
fn interrupt_suppression_uses_flags_or_used_event() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let mut dev = FakeDevice::new(&mem, &vring);
    q.set_no_interrupt(true);
    assert_eq!(dev.avail_flags(), VRING_AVAIL_F_NO_INTERRUPT);
    q.set_no_interrupt(false);
    assert_eq!(dev.avail_flags(), 0);

    q.set_event_idx(true);
    q.set_no_interrupt(true);
    assert_eq!(dev.avail_flags(), 0, "flags stay 0 with EVENT_IDX");
    assert_eq!(dev.used_event(), 0xffff, "behind last_used: never reached");
    q.set_no_interrupt(false);
    assert_eq!(dev.used_event(), 0);
    for _ in 0..3 {
        q.add_chain(&[Seg::writable(buf(0), 8)]).unwrap();
    }
    q.publish();
    while let Some(c) = dev.pop() {
        dev.push_used(u32::from(c.head), 0);
    }
    dev.publish_used();
    let mut out = [UsedElem::default(); 8];
    assert_eq!(q.poll_used(&mut out).unwrap(), 3);
    assert_eq!(dev.used_event(), 3, "interrupt on the next entry");
    q.set_no_interrupt(true);
    assert_eq!(dev.used_event(), 2);
    // init re-applies the suppression.
    q.init().unwrap();
    assert_eq!(dev.used_event(), 0xffff);
}

#[test]
fn indirect_chains_take_one_ring_descriptor() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let mut dev = FakeDevice::new(&mem, &vring);
    let segs = [
        Seg::readable(buf(0), 12),
        Seg::readable(buf(1), 1000),
        Seg::writable(buf(2), 4),
    ];
    assert!(matches!(
        q.add_chain_indirect(&segs),
        Err(Error::InvalidArgument(_))
    ));
    let area = 0x4_0000;
    q.set_indirect_area(area, 4).unwrap();
    assert!(matches!(
        q.add_chain_indirect(&[Seg::readable(buf(0), 1); 5]),
        Err(Error::InvalidArgument(_))
    ));
    let h = q.add_chain(&[Seg::readable(buf(0), 1)]).unwrap();
    let head = q.add_chain_indirect(&segs).unwrap();
    assert_eq!(q.num_free(), 6);
    assert_eq!(q.chain(head).collect::<Vec<_>>(), [head]);
    q.publish();
    assert!(!dev.pop().unwrap().indirect());
    let c = dev.pop().unwrap();
    assert!(c.indirect());
    let table = q.indirect_table_offset(head).unwrap();
    assert_eq!(table, area + u64::from(head) * 4 * 16);
    assert_eq!(c.head_desc.addr, GPA + table);
    assert_eq!(c.head_desc.len, 48);
    assert_eq!(c.head_desc.flags, VIRTQ_DESC_F_INDIRECT);
    let got: Vec<(u64, u32, u16, u16)> = c
        .descs
        .iter()
        .map(|d| (d.addr, d.len, d.flags, d.next))
        .collect();
    assert_eq!(
        got,
        [
            (buf(0), 12, VIRTQ_DESC_F_NEXT, 1),
            (buf(1), 1000, VIRTQ_DESC_F_NEXT, 2),
            (buf(2), 4, VIRTQ_DESC_F_WRITE, 0)
        ]
    );
    dev.push_used(u32::from(head), 4);
    dev.push_used(u32::from(h), 0);
    dev.publish_used();
    let mut out = [UsedElem::default(); 4];
    assert_eq!(q.poll_used(&mut out).unwrap(), 2);
    assert_eq!(q.num_free(), 8);
    assert!(matches!(
        q.set_indirect_area(area, 9),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        q.set_indirect_area(area + 4, 2),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn raw_accessors_write_anything_into_the_ring() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let dev = FakeDevice::new(&mem, &vring);
    let h = q
        .add_chain(&[Seg::readable(buf(0), 10), Seg::readable(buf(1), 10)])
        .unwrap();
    let second = q.chain(h).nth(1).unwrap();
    // A loop: the second descriptor points back at the head.
    let looping = Desc {
        addr: buf(1),
        len: 0xffff_ffff,
        flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT,
        next: h,
    };
    q.raw_write_desc(second, looping).unwrap();
    assert_eq!(q.raw_read_desc(second).unwrap(), looping);
    assert_eq!(dev.ring.read_desc(second), looping);
    // The driver's own links are untouched.
    assert_eq!(q.chain(h).collect::<Vec<_>>(), [h, second]);
    assert!(q.raw_write_desc(8, looping).is_err());
    assert!(q.raw_read_desc(8).is_err());

    q.raw_write_avail(3, 0xbeef).unwrap();
    assert_eq!(
        u16::from_le(dev.ring.avail_ring[3].load(std::sync::atomic::Ordering::Relaxed)),
        0xbeef
    );
    assert!(q.raw_write_avail(8, 0).is_err());
    q.raw_set_avail_idx(1000);
    assert_eq!(dev.avail_idx(), 1000);
    q.raw_set_avail_flags(0xffff);
    assert_eq!(dev.avail_flags(), 0xffff);

    let dev = reset(&mut q, &mem, &vring);
    q.raw_push_avail(7);
    q.publish();
    assert_eq!(dev.avail_idx(), 1);
    assert_eq!(
        u16::from_le(dev.ring.avail_ring[0].load(std::sync::atomic::Ordering::Relaxed)),
        7
    );

    q.set_indirect_area(0x4_0000, 2).unwrap();
    let nested = Desc {
        addr: GPA,
        len: 16,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
    };
    q.raw_write_indirect(5, 1, nested).unwrap();
    let mut b = [0u8; 16];
    mem.read(q.indirect_table_offset(5).unwrap() + 16, &mut b)
        .unwrap();
    assert_eq!(Desc::from_bytes(b), nested);
    assert_eq!(nested.to_bytes(), b);
    assert!(q.raw_write_indirect(5, 2, nested).is_err());
    assert!(q.raw_write_indirect(8, 0, nested).is_err());
}

#[test]
fn free_running_indexes_wrap_around() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 4).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    let mut dev = FakeDevice::new(&mem, &vring);
    let mut out = [UsedElem::default(); 4];
    let mut total: u64 = 0;
    let mut round = 0u32;
    while total < 70_000 {
        // 1..=3 chains per burst, so that the ring position drifts against the indexes.
        let n = 1 + round % 3;
        for k in 0..n {
            q.add_chain(&[Seg::writable(buf(u64::from(k)), 100)])
                .unwrap();
        }
        q.publish();
        let mut lens = Vec::new();
        while let Some(c) = dev.pop() {
            let len = (total as u32 + lens.len() as u32) % 101;
            dev.push_used(u32::from(c.head), len);
            lens.push(len);
        }
        dev.publish_used();
        assert_eq!(q.poll_used(&mut out).unwrap(), n as usize);
        let got: Vec<u32> = out[..n as usize].iter().map(|u| u.len).collect();
        assert_eq!(got, lens);
        total += u64::from(n);
        round += 1;
        assert_eq!(q.num_free(), 4);
    }
    assert_eq!(q.next_avail(), (total % 65536) as u16);
    assert_eq!(q.last_used(), q.next_avail());
    assert_eq!(dev.avail_idx(), q.next_avail());
}

#[test]
fn bad_arguments_are_refused() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 6).unwrap();
    assert!(matches!(
        DriverQueue::new(&mem, vring),
        Err(Error::InvalidArgument(_))
    ));
    let vring = Vring::new(&mem, 0, 4).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    assert!(matches!(q.add_chain(&[]), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        q.add_chain(&[Seg::writable(buf(0), 1), Seg::readable(buf(1), 1)]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        q.add_chain(&[Seg::readable(buf(0), 1); 5]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        q.add_chain(&[Seg::writable(buf(0), u32::MAX), Seg::writable(buf(1), 1)]),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(q.num_free(), 4, "refused chains take nothing");
    assert!(matches!(
        q.set_indirect_area(0x1000, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        q.set_indirect_area(mem.size() as u64 - 16, 4),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn init_zeroes_the_ring() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let len = vring.end_offset() - vring.desc_offset();
    mem.fill(vring.desc_offset(), len, 0xff).unwrap();
    let q = DriverQueue::new(&mem, vring).unwrap();
    let mut bytes = vec![0xaau8; len as usize];
    mem.read(vring.desc_offset(), &mut bytes).unwrap();
    assert!(bytes.iter().all(|&b| b == 0));
    assert_eq!((q.num_free(), q.next_avail(), q.last_used()), (8, 0, 0));
}

#[test]
fn in_order_batches_return_every_chain_up_to_the_named_one() {
    let mem = memory();
    let vring = Vring::new(&mem, 0, 8).unwrap();
    let mut q = DriverQueue::new(&mem, vring).unwrap();
    q.set_in_order(true);
    let mut dev = FakeDevice::new(&mem, &vring);
    let heads: Vec<u16> = [
        vec![Seg::writable(buf(0), 100)],
        vec![Seg::readable(buf(1), 10), Seg::writable(buf(2), 50)],
        vec![Seg::writable(buf(3), 30)],
        vec![Seg::writable(buf(4), 70)],
    ]
    .iter()
    .map(|segs| q.add_chain(segs).unwrap())
    .collect();
    q.publish();
    let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
    assert_eq!(chains.len(), 4);
    // The first alone, then one entry (the third's id) for the second and third: used.idx
    // moves by the batch size, the second slot is left as it was.
    dev.push_used(u32::from(chains[0].head), 60);
    dev.push_used(u32::from(chains[2].head), 25);
    dev.used_idx = dev.used_idx.wrapping_add(1);
    dev.publish_used();
    let mut out = [UsedElem::default(); 8];
    assert_eq!(q.poll_used(&mut out).unwrap(), 3);
    assert_eq!(
        out[..3],
        [
            UsedElem {
                id: heads[0],
                len: 60
            },
            UsedElem {
                id: heads[1],
                len: 50
            },
            UsedElem {
                id: heads[2],
                len: 25
            },
        ],
        "the skipped chain comes back with its writable length"
    );
    assert_eq!((q.in_flight(), q.num_free(), q.last_used()), (1, 7, 3));
    dev.push_used(u32::from(chains[3].head), 70);
    dev.publish_used();
    assert_eq!(q.poll_used(&mut out).unwrap(), 1);
    assert_eq!(
        out[0],
        UsedElem {
            id: heads[3],
            len: 70
        }
    );

    // A batch whose last chain lies beyond used.idx is a device error.
    for i in 0..3 {
        q.add_chain(&[Seg::readable(buf(i), 1)]).unwrap();
    }
    q.publish();
    let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
    dev.push_used(u32::from(chains[2].head), 0);
    dev.publish_used();
    assert_eq!(
        device_err(q.poll_used(&mut out)),
        DeviceError::InOrderBatchTooLong {
            id: chains[2].head,
            batch: 3,
            returned: 1
        }
    );
    assert!(q.broken().is_some());
}
