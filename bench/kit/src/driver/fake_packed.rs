//! A test-only fake device for packed rings: plays the device side on the same shared
//! memory (reads available descriptors in ring order against its wrap counter, walks
//! chains and indirect tables, copies data, writes used descriptors with `Release`).
//! Panics freely: it is a test fixture, fed by the driver under test.

use std::sync::atomic::Ordering;

use super::packed::{
    event_fields, event_word, is_avail, used_bits, PackedDesc, PackedRing, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use crate::memory::SharedMemory;
use crate::vring::Vring;

/// A chain as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedChain {
    /// Buffer id (from the chain's last ring descriptor).
    pub id: u16,
    /// First ring slot of the chain.
    pub slot: u16,
    /// Ring slots the chain takes.
    pub ndesc: u16,
    /// The ring descriptors, in order.
    pub ring_descs: Vec<PackedDesc>,
    /// The buffers (indirect table entries for an indirect chain).
    pub descs: Vec<PackedDesc>,
}

impl PackedChain {
    pub fn indirect(&self) -> bool {
        self.ring_descs[0].flags & VIRTQ_DESC_F_INDIRECT != 0
    }

    pub fn writable_len(&self) -> u32 {
        self.descs
            .iter()
            .filter(|d| d.flags & VIRTQ_DESC_F_WRITE != 0)
            .map(|d| d.len)
            .sum()
    }
}

pub(crate) struct FakePackedDevice<'m> {
    pub mem: &'m SharedMemory,
    pub ring: PackedRing<'m>,
    /// Next slot to read and the driver's wrap counter expected there.
    pub avail: (u16, bool),
    /// Next slot to write a used descriptor and its wrap counter.
    pub used: (u16, bool),
}

fn advance(pos: (u16, bool), by: u16, size: u16) -> (u16, bool) {
    let p = u32::from(pos.0) + u32::from(by);
    if p >= u32::from(size) {
        ((p - u32::from(size)) as u16, !pos.1)
    } else {
        (p as u16, pos.1)
    }
}

impl<'m> FakePackedDevice<'m> {
    pub fn new(mem: &'m SharedMemory, vring: &Vring) -> Self {
        FakePackedDevice {
            mem,
            ring: PackedRing::new(mem, vring).unwrap(),
            avail: (0, true),
            used: (0, true),
        }
    }

    fn offset(&self, gpa: u64) -> u64 {
        gpa - self.mem.guest_phys_addr()
    }

    /// Whether the slot at the read position holds an available descriptor (`Acquire`).
    pub fn has_avail(&self) -> bool {
        let d = PackedDesc::from_words(0, self.ring.load_word1(self.avail.0));
        is_avail(d.flags, self.avail.1)
    }

    /// Takes the next available chain.
    pub fn pop(&mut self) -> Option<PackedChain> {
        if !self.has_avail() {
            return None;
        }
        let slot = self.avail.0;
        let mut ring_descs = Vec::new();
        loop {
            let w1 = self.ring.load_word1(self.avail.0);
            let mut d = PackedDesc::from_words(0, w1);
            d.addr = self.ring.read_desc(self.avail.0).addr;
            assert!(
                is_avail(d.flags, self.avail.1),
                "chain continues into a slot that is not available: {d:?}"
            );
            ring_descs.push(d);
            assert!(
                ring_descs.len() <= usize::from(self.ring.size),
                "chain loops"
            );
            self.avail = advance(self.avail, 1, self.ring.size);
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
        }
        let last = *ring_descs.last().unwrap();
        let descs = if last.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            let base = self.offset(last.addr);
            (0..last.len as usize / PackedDesc::SIZE)
                .map(|k| {
                    let mut b = [0u8; 16];
                    self.mem
                        .read(base + (k * PackedDesc::SIZE) as u64, &mut b)
                        .unwrap();
                    PackedDesc::from_bytes(b)
                })
                .collect()
        } else {
            ring_descs.clone()
        };
        Some(PackedChain {
            id: last.id,
            slot,
            ndesc: ring_descs.len() as u16,
            ring_descs,
            descs,
        })
    }

    /// The readable bytes of a chain, concatenated.
    pub fn read_chain(&self, c: &PackedChain) -> Vec<u8> {
        let mut out = Vec::new();
        for d in c.descs.iter().filter(|d| d.flags & VIRTQ_DESC_F_WRITE == 0) {
            let start = out.len();
            out.resize(start + d.len as usize, 0);
            self.mem
                .read(self.offset(d.addr), &mut out[start..])
                .unwrap();
        }
        out
    }

    /// Writes `data` across the chain's writable buffers; returns the bytes written.
    pub fn write_chain(&self, c: &PackedChain, data: &[u8]) -> usize {
        let mut rest = data;
        for d in c.descs.iter().filter(|d| d.flags & VIRTQ_DESC_F_WRITE != 0) {
            let n = rest.len().min(d.len as usize);
            self.mem.write(self.offset(d.addr), &rest[..n]).unwrap();
            rest = &rest[n..];
        }
        data.len() - rest.len()
    }

    /// Writes a used descriptor (`id`, `len`) at the used position (one `Release` store of
    /// its second word) and skips `ndesc` slots.
    pub fn push_used(&mut self, id: u16, len: u32, ndesc: u16) {
        let flags = used_bits(self.used.1) | if len > 0 { VIRTQ_DESC_F_WRITE } else { 0 };
        let w = 2 * usize::from(self.used.0) + 1;
        let d = PackedDesc {
            addr: 0,
            len,
            id,
            flags,
        };
        self.ring.desc[w].store(d.word1().to_le(), Ordering::Release);
        self.used = advance(self.used, ndesc, self.ring.size);
    }

    /// Returns `c` with `len` bytes written.
    pub fn complete(&mut self, c: &PackedChain, len: u32) {
        self.push_used(c.id, len, c.ndesc);
    }

    /// Writes the device event suppression area.
    pub fn set_device_event(&self, off_wrap: u16, flags: u16) {
        self.ring
            .device_event
            .store(event_word(off_wrap, flags), Ordering::Relaxed);
    }

    /// The driver event suppression area: (off_wrap, flags).
    pub fn driver_event(&self) -> (u16, u16) {
        event_fields(self.ring.driver_event.load(Ordering::Relaxed))
    }

    /// Consumes every available TX chain: checks the net header is zero, returns the frames
    /// (header stripped) and completes the chains with len 0.
    pub fn consume_tx(&mut self, hdr_len: usize) -> Vec<(PackedChain, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(c) = self.pop() {
            let bytes = self.read_chain(&c);
            assert!(bytes.len() >= hdr_len, "TX chain shorter than the header");
            assert!(
                bytes[..hdr_len].iter().all(|&b| b == 0),
                "TX header not zeroed: {:?}",
                &bytes[..hdr_len]
            );
            self.complete(&c, 0);
            out.push((c, bytes[hdr_len..].to_vec()));
        }
        out
    }

    /// Delivers `frame` into available RX buffers, without MRG_RXBUF (`mrg` false: one
    /// chain) or with it (as many chains as needed, num_buffers in the first). Returns
    /// false (and takes nothing) when the available buffers cannot hold it.
    pub fn deliver(&mut self, frame: &[u8], hdr_len: usize, mrg: bool) -> bool {
        let saved = self.avail;
        let total = hdr_len + frame.len();
        let mut chains = Vec::new();
        let mut room = 0usize;
        while room < total {
            let Some(c) = self.pop() else {
                self.avail = saved;
                return false;
            };
            room += c.writable_len() as usize;
            chains.push(c);
            if !mrg {
                break;
            }
        }
        if room < total {
            self.avail = saved;
            return false;
        }
        let mut hdr = vec![0u8; hdr_len];
        if hdr_len == 12 {
            hdr[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        }
        let data: Vec<u8> = hdr.into_iter().chain(frame.iter().copied()).collect();
        let mut rest = &data[..];
        for c in &chains {
            let n = self.write_chain(c, rest);
            rest = &rest[n..];
            self.complete(c, n as u32);
        }
        true
    }
}
