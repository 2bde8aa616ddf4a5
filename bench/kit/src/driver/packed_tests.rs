//! Tests of [`PackedQueue`] against the fake packed device.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fake_packed::FakePackedDevice;
use super::packed::*;
use super::queue::{Kick, Queue, Seg, UsedElem};
use crate::error::{DeviceError, Error};
use crate::memory::{HugePages, SharedMemory};
use crate::vring::{RingLayout, Vring};

const GPA: u64 = 0x2_0000_0000;

fn memory() -> SharedMemory {
    SharedMemory::new(1 << 20, HugePages::Never)
        .unwrap()
        .with_guest_phys_addr(GPA)
}

/// Buffers for tests: anywhere past the rings.
fn buf(i: u64) -> u64 {
    GPA + 0x8_0000 + i * 0x1000
}

fn queue(mem: &SharedMemory, size: u16) -> (PackedQueue<'_>, FakePackedDevice<'_>) {
    let vring = Vring::new_packed(mem, 0, size).unwrap();
    (
        PackedQueue::new(mem, vring).unwrap(),
        FakePackedDevice::new(mem, &vring),
    )
}

fn device_err(r: crate::Result<impl std::fmt::Debug>) -> DeviceError {
    match r {
        Err(Error::Device(e)) => e,
        other => panic!("expected a device error, got {other:?}"),
    }
}

fn poll(q: &mut PackedQueue<'_>) -> Vec<UsedElem> {
    let mut out = [UsedElem::default(); 64];
    let n = q.poll_used(&mut out).unwrap();
    out[..n].to_vec()
}

#[test]
fn chains_fill_consecutive_slots_and_the_burst_head_is_released_last() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 8);
    let segs = [
        Seg::readable(buf(0), 100),
        Seg::readable(buf(1), 50),
        Seg::writable(buf(2), 200),
    ];
    let a = q.add_chain(&segs).unwrap();
    let b = q.add_buf(buf(3), 10, true).unwrap();
    assert_eq!((a, b), (0, 1), "ids come off the free pool in order");
    assert_eq!((q.num_free(), q.in_flight()), (4, 2));
    // Everything but the head's flags is in place; the device sees nothing yet.
    assert_eq!(q.raw_read_desc(0).unwrap().flags, 0);
    assert_eq!(q.raw_read_desc(0).unwrap().addr, buf(0));
    for slot in 1..4 {
        let f = q.raw_read_desc(slot).unwrap().flags;
        assert_eq!(
            f & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED),
            VIRTQ_DESC_F_AVAIL
        );
    }
    assert!(dev.pop().is_none(), "nothing visible before publish");
    q.publish();

    let c = dev.pop().unwrap();
    assert_eq!((c.id, c.slot, c.ndesc), (a, 0, 3));
    let flags: Vec<u16> = c.ring_descs.iter().map(|d| d.flags & 0x7f).collect();
    assert_eq!(
        flags,
        [VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE]
    );
    assert!(
        c.ring_descs.iter().all(|d| d.id == a),
        "the id is in every descriptor of the chain"
    );
    let bufs: Vec<(u64, u32)> = c.descs.iter().map(|d| (d.addr, d.len)).collect();
    assert_eq!(bufs, [(buf(0), 100), (buf(1), 50), (buf(2), 200)]);
    let c2 = dev.pop().unwrap();
    assert_eq!((c2.id, c2.slot, c2.ndesc), (b, 3, 1));
    assert!(dev.pop().is_none());

    // Out of order: b's used descriptor lands in slot 0, a's in slot 1.
    dev.complete(&c2, 7);
    dev.complete(&c, 200);
    assert_eq!(
        poll(&mut q),
        [UsedElem { id: b, len: 7 }, UsedElem { id: a, len: 200 }]
    );
    assert_eq!((q.num_free(), q.in_flight()), (8, 0));
    assert_eq!(q.next_used(), (4, true));
    assert!(poll(&mut q).is_empty());
}

#[test]
fn wrap_counters_flip_every_lap_on_an_odd_sized_ring() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 5);
    assert_eq!(q.base(), 1 << 15, "a fresh ring starts at index 0, wrap 1");
    let mut next_byte = 0u8;
    let mut laps = 0;
    for round in 0..60u64 {
        // Chains of 1..=3 descriptors, 1..=2 per burst.
        let before = q.next_avail();
        let mut added = Vec::new();
        for k in 0..(1 + round % 2) {
            let n = 1 + ((round + k) % 3) as usize;
            if usize::from(q.num_free()) < n {
                break;
            }
            let segs: Vec<Seg> = (0..n)
                .map(|i| Seg::readable(buf(4 * k + i as u64), 1 + i as u32))
                .collect();
            for s in &segs {
                mem.write(s.gpa - GPA, &[next_byte]).unwrap();
            }
            added.push((q.add_chain(&segs).unwrap(), n as u16, next_byte));
            next_byte = next_byte.wrapping_add(1);
        }
        q.publish();
        for &(id, n, byte) in &added {
            let c = dev.pop().unwrap();
            assert_eq!((c.id, c.ndesc), (id, n));
            assert_eq!(dev.read_chain(&c)[0], byte);
            dev.complete(&c, 0);
        }
        assert!(dev.pop().is_none());
        let got = poll(&mut q);
        assert_eq!(
            got.iter().map(|u| u.id).collect::<Vec<_>>(),
            added.iter().map(|a| a.0).collect::<Vec<_>>()
        );
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.next_used(), q.next_avail(), "used position follows");
        if q.next_avail().1 != before.1 {
            laps += 1;
        }
    }
    assert!(laps >= 10, "only {laps} laps");
    assert_eq!(dev.avail, q.next_avail());
    assert_eq!(
        q.base(),
        crate::vring::packed_base(q.next_avail().0, q.next_avail().1)
    );
}

#[test]
fn a_full_queue_refuses_and_recovers_in_any_completion_order() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 4);
    let two = [Seg::readable(buf(0), 1), Seg::readable(buf(1), 1)];
    let a = q.add_chain(&two).unwrap();
    let b = q.add_buf(buf(2), 1, false).unwrap();
    assert!(matches!(
        q.add_chain(&two),
        Err(Error::QueueFull { needed: 2, free: 1 })
    ));
    let c = q.add_buf(buf(3), 1, false).unwrap();
    assert!(matches!(
        q.add_buf(buf(3), 1, false),
        Err(Error::QueueFull { needed: 1, free: 0 })
    ));
    q.publish();
    let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
    assert_eq!(chains.len(), 3);
    // b, c, then a.
    for i in [1, 2, 0] {
        dev.complete(&chains[i], 0);
    }
    let mut out = [UsedElem::default(); 1];
    assert_eq!(q.poll_used(&mut out).unwrap(), 1);
    assert_eq!(out[0].id, b);
    assert_eq!(q.num_free(), 1);
    assert_eq!(
        q.used_pending().unwrap(),
        2,
        "the rest was seen by the same scan"
    );
    assert_eq!(q.pop_used().unwrap().unwrap().id, c);
    assert_eq!(q.pop_used().unwrap().unwrap().id, a);
    assert_eq!(q.pop_used().unwrap(), None);
    assert_eq!(q.num_free(), 4);
    // The freed ids and slots are reused across the wrap.
    let d = q.add_chain(&two).unwrap();
    q.publish();
    let cd = dev.pop().unwrap();
    assert_eq!((cd.id, cd.slot), (d, 0));
    assert!(!dev.avail.1, "second lap");
}

#[test]
fn in_order_batches_return_every_buffer_up_to_the_named_one() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 8);
    q.set_in_order(true);
    let ids: Vec<u16> = [
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
    // The first buffer alone, then one used descriptor for the next two (id of the
    // third, at the second's slot, skipping both chains' three slots).
    dev.complete(&chains[0], 60);
    dev.push_used(chains[2].id, 25, chains[1].ndesc + chains[2].ndesc);
    assert_eq!(q.used_pending().unwrap(), 3);
    let got: Vec<UsedElem> = std::iter::from_fn(|| q.pop_used().unwrap()).collect();
    assert_eq!(
        got,
        [
            UsedElem {
                id: ids[0],
                len: 60
            },
            UsedElem {
                id: ids[1],
                len: 50
            },
            UsedElem {
                id: ids[2],
                len: 25
            },
        ],
        "skipped buffers come back with their writable length"
    );
    assert_eq!((q.in_flight(), q.num_free()), (1, 7));
    assert_eq!(q.next_used(), (4, true));
    dev.complete(&chains[3], 70);
    assert_eq!(
        poll(&mut q),
        [UsedElem {
            id: ids[3],
            len: 70
        }]
    );
    // A batch over the wrap.
    for lap in 0..3 {
        let ids: Vec<u16> = (0..5)
            .map(|i| q.add_buf(buf(i), 0x100, false).unwrap())
            .collect();
        q.publish();
        let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
        assert_eq!(chains.len(), 5, "lap {lap}");
        dev.push_used(chains[4].id, 0, 5);
        let got: Vec<u16> = poll(&mut q).iter().map(|u| u.id).collect();
        assert_eq!(got, ids, "lap {lap}");
    }
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn without_in_order_a_batch_descriptor_returns_only_its_own_buffer() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 8);
    let a = q.add_buf(buf(0), 10, false).unwrap();
    let b = q.add_buf(buf(1), 10, false).unwrap();
    q.publish();
    let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
    dev.push_used(chains[1].id, 0, 2);
    assert_eq!(poll(&mut q), [UsedElem { id: b, len: 0 }]);
    assert_eq!(q.in_flight(), 1, "{a} is still the device's");
}

#[test]
fn kicks_follow_the_device_event_suppression_area() {
    let mem = memory();
    let (mut q, dev) = queue(&mem, 8);
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    q.set_kick(Kick::IfNeeded);
    // A zeroed area is ENABLE.
    q.add_buf(buf(0), 1, false).unwrap();
    q.publish();
    assert!(q.kick_if_needed(&fd).unwrap());
    assert!(!q.kick_if_needed(&fd).unwrap(), "nothing new published");
    dev.set_device_event(0, RING_EVENT_FLAGS_DISABLE);
    q.add_buf(buf(1), 1, false).unwrap();
    q.publish();
    assert!(!q.kick_if_needed(&fd).unwrap());
    assert_eq!((q.kicks(), fd.read().unwrap()), (1, 1));

    // DESC without EVENT_IDX negotiated: treated as ENABLE.
    dev.set_device_event(0x8000 | 5, RING_EVENT_FLAGS_DESC);
    q.add_buf(buf(2), 1, false).unwrap();
    q.publish();
    assert!(q.needs_kick());
    // With EVENT_IDX: slots 3.. are published next; the device asks for slot 5 (wrap 1).
    q.set_event_idx(true);
    q.add_buf(buf(3), 1, false).unwrap();
    q.add_buf(buf(4), 1, false).unwrap();
    q.publish();
    assert!(!q.needs_kick(), "slots 3 and 4 do not reach 5");
    q.add_buf(buf(5), 1, false).unwrap();
    q.publish();
    assert!(q.needs_kick(), "slot 5 published");
    // An event in the next lap (slot 1, wrap 0), reached by a burst across the wrap.
    dev.set_device_event(1, RING_EVENT_FLAGS_DESC);
    q.add_buf(buf(6), 1, false).unwrap();
    q.publish();
    assert!(!q.needs_kick(), "slot 6 of lap 1");
    let mut d = FakePackedDevice::new(&mem, q.vring());
    while let Some(c) = d.pop() {
        d.complete(&c, 0);
    }
    poll(&mut q);
    for i in 0..3 {
        q.add_buf(buf(i), 1, false).unwrap();
    }
    assert_eq!(q.next_avail(), (2, false));
    q.publish();
    assert!(
        q.needs_kick(),
        "slots 7, 0, 1 published: 1 of lap 2 reached"
    );
    // An event still in the previous lap (slot 6, wrap 1) once we are in lap 2.
    dev.set_device_event(0x8000 | 6, RING_EVENT_FLAGS_DESC);
    q.add_buf(buf(3), 1, false).unwrap();
    q.publish();
    assert!(!q.needs_kick(), "event behind the published range");

    q.set_kick(Kick::Always);
    assert!(q.needs_kick());
    q.set_kick(Kick::Never);
    q.add_buf(buf(4), 1, false).unwrap();
    q.publish();
    assert!(!q.needs_kick());
}

#[test]
fn the_driver_event_area_asks_for_no_interrupts_or_for_the_next_used_slot() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 4);
    assert_eq!(dev.driver_event(), (0x8000, RING_EVENT_FLAGS_ENABLE));
    q.set_no_interrupt(true);
    assert_eq!(dev.driver_event().1, RING_EVENT_FLAGS_DISABLE);
    q.set_event_idx(true);
    assert_eq!(dev.driver_event().1, RING_EVENT_FLAGS_DISABLE);
    q.set_no_interrupt(false);
    assert_eq!(dev.driver_event(), (0x8000, RING_EVENT_FLAGS_DESC));
    for i in 0..6 {
        q.add_buf(buf(i), 1, false).unwrap();
        q.publish();
        let c = dev.pop().unwrap();
        dev.complete(&c, 0);
        poll(&mut q);
        let (pos, wrap) = q.next_used();
        assert_eq!(
            dev.driver_event(),
            (pos | if wrap { 0x8000 } else { 0 }, RING_EVENT_FLAGS_DESC),
            "refreshed after a drained poll"
        );
    }
    assert!(!q.next_used().1, "the event offset crossed the wrap");
}

#[test]
fn indirect_chains_take_one_slot() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 4);
    assert!(q.add_chain_indirect(&[Seg::readable(buf(0), 1)]).is_err());
    let area = 0x4_0000;
    q.set_indirect_area(area, 4).unwrap();
    assert!(
        q.set_indirect_area(area, 5).is_err(),
        "more entries than the queue"
    );
    let segs = [
        Seg::readable(buf(0), 12),
        Seg::readable(buf(1), 100),
        Seg::writable(buf(2), 64),
    ];
    let id = q.add_chain_indirect(&segs).unwrap();
    assert_eq!(q.num_free(), 3);
    q.publish();
    let c = dev.pop().unwrap();
    assert!(c.indirect());
    assert_eq!((c.id, c.ndesc), (id, 1));
    assert_eq!(c.ring_descs[0].len, 48);
    assert_eq!(
        c.ring_descs[0].addr,
        GPA + q.indirect_table_offset(id).unwrap()
    );
    let table: Vec<(u64, u32, u16)> = c.descs.iter().map(|d| (d.addr, d.len, d.flags)).collect();
    assert_eq!(
        table,
        [
            (buf(0), 12, 0),
            (buf(1), 100, 0),
            (buf(2), 64, VIRTQ_DESC_F_WRITE)
        ],
        "no NEXT flags in a packed indirect table"
    );
    dev.complete(&c, 64);
    assert_eq!(poll(&mut q), [UsedElem { id, len: 64 }]);
    assert!(q
        .add_chain_indirect(&[Seg::readable(buf(0), 1); 5])
        .is_err());
}

#[test]
fn a_hostile_device_is_reported_not_trusted() {
    let mem = memory();
    let (mut q, mut dev) = queue(&mem, 8);
    // An id beyond the queue breaks it, for good until init.
    q.add_buf(buf(0), 10, true).unwrap();
    q.publish();
    dev.pop().unwrap();
    dev.push_used(9, 0, 1);
    assert_eq!(
        device_err(q.used_pending()),
        DeviceError::IdOutOfRange {
            id: 9,
            queue_size: 8
        }
    );
    assert!(q.broken().is_some());
    assert!(q.add_buf(buf(0), 1, false).is_err());

    // An id that is free, and one added but not yet published.
    q.init().unwrap();
    let mut dev = FakePackedDevice::new(&mem, q.vring());
    q.add_buf(buf(0), 10, true).unwrap();
    q.publish();
    dev.pop().unwrap();
    dev.push_used(5, 0, 1);
    assert_eq!(
        device_err(q.used_pending()),
        DeviceError::NotOutstanding { id: 5 }
    );
    q.init().unwrap();
    let mut dev = FakePackedDevice::new(&mem, q.vring());
    q.add_buf(buf(0), 10, true).unwrap();
    q.publish();
    let unpublished = q.add_buf(buf(1), 10, true).unwrap();
    dev.pop().unwrap();
    dev.push_used(unpublished, 0, 1);
    assert_eq!(
        device_err(q.used_pending()),
        DeviceError::NotOutstanding { id: unpublished }
    );

    // A len beyond the buffer returns the buffer with an error; good ones before it come
    // first, and the queue goes on.
    q.init().unwrap();
    let mut dev = FakePackedDevice::new(&mem, q.vring());
    let a = q.add_buf(buf(0), 10, true).unwrap();
    let b = q.add_buf(buf(1), 10, true).unwrap();
    q.publish();
    let (ca, cb) = (dev.pop().unwrap(), dev.pop().unwrap());
    dev.complete(&ca, 10);
    dev.complete(&cb, 11);
    let mut out = [UsedElem::default(); 4];
    assert_eq!(q.poll_used(&mut out).unwrap(), 1);
    assert_eq!(out[0], UsedElem { id: a, len: 10 });
    assert_eq!(
        device_err(q.poll_used(&mut out)),
        DeviceError::LenTooLarge {
            id: b,
            len: 11,
            max: 10
        }
    );
    assert!(q.broken().is_none());
    assert_eq!((q.in_flight(), q.num_free()), (0, 8));
    // TX buffers: any len with strict off, none with it on.
    let t = q.add_buf(buf(2), 10, false).unwrap();
    q.publish();
    let ct = dev.pop().unwrap();
    dev.complete(&ct, 3);
    assert_eq!(q.used_pending().unwrap(), 1);
    assert!(matches!(
        device_err(q.pop_used()),
        DeviceError::LenTooLarge { id, .. } if id == t
    ));
    q.set_strict_len(false);
    let t = q.add_buf(buf(2), 10, false).unwrap();
    q.publish();
    let ct = dev.pop().unwrap();
    dev.complete(&ct, 3);
    assert_eq!(poll(&mut q), [UsedElem { id: t, len: 3 }]);

    // A used descriptor the scan has not reached yet is not read: raw garbage further on
    // in the ring is harmless.
    q.raw_write_desc(
        6,
        PackedDesc {
            addr: 0,
            len: 0,
            id: 77,
            flags: VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED,
        },
    )
    .unwrap();
    assert_eq!(q.used_pending().unwrap(), 0);
    assert!(q.raw_write_desc(8, PackedDesc::default()).is_err());
}

#[test]
fn the_queue_enum_picks_the_rings_layout() {
    let mem = memory();
    let packed = Vring::new_packed(&mem, 0, 16).unwrap();
    let split = Vring::new(&mem, 0x1000, 16).unwrap();
    let mut p = Queue::new(&mem, packed).unwrap();
    let s = Queue::new(&mem, split).unwrap();
    assert_eq!(
        (p.layout(), s.layout()),
        (RingLayout::Packed, RingLayout::Split)
    );
    assert!(p.as_packed().is_some() && p.as_split().is_none());
    assert!(s.as_split().is_some() && s.as_packed().is_none());
    assert!(PackedQueue::new(&mem, split).is_err(), "a split layout");
    let id = p.add_buf(buf(0), 64, true).unwrap();
    p.publish();
    let mut dev = FakePackedDevice::new(&mem, &packed);
    let c = dev.pop().unwrap();
    dev.complete(&c, 64);
    assert_eq!(p.pop_used().unwrap(), None, "nothing counted yet");
    assert_eq!(p.used_pending().unwrap(), 1);
    assert_eq!(p.pop_used().unwrap(), Some(UsedElem { id, len: 64 }));
}

#[test]
fn in_order_switched_on_with_chains_outstanding_takes_them_in_their_order() {
    use super::fake::FakeDevice;
    let mem = memory();
    // Packed: ids handed out 0, 1, 2, then 1 freed and reused: add order is 0, 2, 1.
    let (mut q, mut dev) = queue(&mem, 8);
    let ids: Vec<u16> = (0..3)
        .map(|i| q.add_buf(buf(i), 10, false).unwrap())
        .collect();
    q.publish();
    let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
    dev.complete(&chains[1], 0);
    assert_eq!(poll(&mut q), [UsedElem { id: ids[1], len: 0 }]);
    let again = q.add_buf(buf(3), 10, false).unwrap();
    assert_eq!(again, ids[1]);
    q.publish();
    let last = dev.pop().unwrap();
    q.set_in_order(true);
    dev.push_used(last.id, 0, 3);
    let got: Vec<u16> = poll(&mut q).iter().map(|u| u.id).collect();
    assert_eq!(got, [ids[0], ids[2], again]);

    // Split: the same through the avail positions.
    let vring = Vring::new(&mem, 0x1_0000, 8).unwrap();
    let mut q = Queue::new(&mem, vring).unwrap();
    let mut dev = FakeDevice::new(&mem, &vring);
    let heads: Vec<u16> = (0..3)
        .map(|i| q.add_buf(buf(i), 10, false).unwrap())
        .collect();
    q.publish();
    let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
    q.set_in_order(true);
    dev.push_used(u32::from(chains[2].head), 0);
    dev.used_idx = dev.used_idx.wrapping_add(2);
    dev.publish_used();
    let mut out = [UsedElem::default(); 8];
    let n = q.poll_used(&mut out).unwrap();
    let got: Vec<u16> = out[..n].iter().map(|u| u.id).collect();
    assert_eq!(got, heads);
}
