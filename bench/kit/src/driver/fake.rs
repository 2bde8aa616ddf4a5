//! A test-only fake device: plays the device side of a split ring on the same shared memory
//! (reads avail, walks descriptors, copies data, writes used entries with `Release`).
//! Panics freely: it is a test fixture, fed by the driver under test.

use std::sync::atomic::Ordering;

use super::split::{Desc, SplitRing, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::memory::SharedMemory;
use crate::vring::Vring;

/// A chain as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub head: u16,
    /// The ring descriptor at the head.
    pub head_desc: Desc,
    /// The buffers (indirect table entries for an indirect chain).
    pub descs: Vec<Desc>,
}

impl Chain {
    pub fn indirect(&self) -> bool {
        self.head_desc.flags & VIRTQ_DESC_F_INDIRECT != 0
    }

    pub fn writable_len(&self) -> u32 {
        self.descs
            .iter()
            .filter(|d| d.flags & VIRTQ_DESC_F_WRITE != 0)
            .map(|d| d.len)
            .sum()
    }
}

pub(crate) struct FakeDevice<'m> {
    pub mem: &'m SharedMemory,
    pub ring: SplitRing<'m>,
    pub last_avail: u16,
    /// Next used index to fill (published by `publish_used`).
    pub used_idx: u16,
}

impl<'m> FakeDevice<'m> {
    pub fn new(mem: &'m SharedMemory, vring: &Vring) -> Self {
        FakeDevice {
            mem,
            ring: SplitRing::new(mem, vring).unwrap(),
            last_avail: 0,
            used_idx: 0,
        }
    }

    fn offset(&self, gpa: u64) -> u64 {
        gpa - self.mem.guest_phys_addr()
    }

    pub fn avail_idx(&self) -> u16 {
        u16::from_le(self.ring.avail_idx.load(Ordering::Acquire))
    }

    pub fn avail_flags(&self) -> u16 {
        u16::from_le(self.ring.avail_flags.load(Ordering::Relaxed))
    }

    pub fn used_event(&self) -> u16 {
        u16::from_le(self.ring.used_event.load(Ordering::Relaxed))
    }

    pub fn set_used_flags(&self, flags: u16) {
        self.ring.used_flags.store(flags.to_le(), Ordering::Relaxed);
    }

    pub fn set_avail_event(&self, event: u16) {
        self.ring
            .avail_event
            .store(event.to_le(), Ordering::Relaxed);
    }

    /// Chains published and not yet taken.
    pub fn pending(&self) -> u16 {
        self.avail_idx().wrapping_sub(self.last_avail)
    }

    /// Takes the next published chain.
    pub fn pop(&mut self) -> Option<Chain> {
        if self.pending() == 0 {
            return None;
        }
        let slot = usize::from(self.last_avail % self.ring.size);
        let head = u16::from_le(self.ring.avail_ring[slot].load(Ordering::Relaxed));
        self.last_avail = self.last_avail.wrapping_add(1);
        let head_desc = self.ring.read_desc(head);
        let mut descs = Vec::new();
        if head_desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            let base = self.offset(head_desc.addr);
            let n = head_desc.len as usize / Desc::SIZE;
            let read = |k: usize| {
                let mut b = [0u8; 16];
                self.mem
                    .read(base + (k * Desc::SIZE) as u64, &mut b)
                    .unwrap();
                Desc::from_bytes(b)
            };
            let mut k = 0;
            loop {
                let d = read(k);
                descs.push(d);
                assert!(descs.len() <= n, "indirect chain longer than its table");
                if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                k = usize::from(d.next);
            }
        } else {
            let mut d = head_desc;
            loop {
                descs.push(d);
                assert!(descs.len() <= usize::from(self.ring.size), "chain loops");
                if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                d = self.ring.read_desc(d.next);
            }
        }
        Some(Chain {
            head,
            head_desc,
            descs,
        })
    }

    /// Undoes the last `n` pops.
    pub fn unpop(&mut self, n: u16) {
        self.last_avail = self.last_avail.wrapping_sub(n);
    }

    /// The readable bytes of a chain, concatenated.
    pub fn read_chain(&self, c: &Chain) -> Vec<u8> {
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
    pub fn write_chain(&self, c: &Chain, data: &[u8]) -> usize {
        let mut rest = data;
        for d in c.descs.iter().filter(|d| d.flags & VIRTQ_DESC_F_WRITE != 0) {
            let n = rest.len().min(d.len as usize);
            self.mem.write(self.offset(d.addr), &rest[..n]).unwrap();
            rest = &rest[n..];
        }
        data.len() - rest.len()
    }

    /// Writes a used entry (not yet published).
    pub fn push_used(&mut self, id: u32, len: u32) {
        let slot = usize::from(self.used_idx % self.ring.size);
        self.ring.used_ring[2 * slot].store(id.to_le(), Ordering::Relaxed);
        self.ring.used_ring[2 * slot + 1].store(len.to_le(), Ordering::Relaxed);
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    /// Publishes the used entries written so far (`Release`).
    pub fn publish_used(&self) {
        self.ring
            .used_idx
            .store(self.used_idx.to_le(), Ordering::Release);
    }

    /// Stores used.idx = `idx` without touching the entries.
    pub fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        self.publish_used();
    }

    /// Consumes every published TX chain: checks the net header is zero, returns the frames
    /// (header stripped) and completes the chains with len 0.
    pub fn consume_tx(&mut self, hdr_len: usize) -> Vec<(Chain, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(c) = self.pop() {
            let bytes = self.read_chain(&c);
            assert!(bytes.len() >= hdr_len, "TX chain shorter than the header");
            assert!(
                bytes[..hdr_len].iter().all(|&b| b == 0),
                "TX header not zeroed: {:?}",
                &bytes[..hdr_len]
            );
            self.push_used(u32::from(c.head), 0);
            out.push((c, bytes[hdr_len..].to_vec()));
        }
        self.publish_used();
        out
    }

    /// Delivers `frame` into posted RX buffers, as a device without MRG_RXBUF (`mrg`
    /// false: one chain, num_buffers 1 if the header has it) or with it (as many chains as
    /// needed, num_buffers in the first). Publishes used.idx once. Returns false (and takes
    /// nothing) when the posted buffers cannot hold it.
    pub fn deliver(&mut self, frame: &[u8], hdr_len: usize, mrg: bool) -> bool {
        let total = hdr_len + frame.len();
        let mut chains = Vec::new();
        let mut room = 0usize;
        while room < total {
            let Some(c) = self.pop() else {
                self.unpop(chains.len() as u16);
                return false;
            };
            room += c.writable_len() as usize;
            chains.push(c);
            if !mrg {
                break;
            }
        }
        if room < total {
            self.unpop(chains.len() as u16);
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
            self.push_used(u32::from(c.head), n as u32);
        }
        self.publish_used();
        true
    }
}
