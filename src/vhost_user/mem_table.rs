//! Memory messages: SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG (DESIGN §4 rule 8).
//!
//! Every change builds a new [`GuestMemoryMap`] and swaps it in whole; running rings are
//! re-translated against the new map first, and a change that would strand one is refused.

use std::sync::Arc;

use pmd::memory::{GuestMemoryMap, MappedRegion, RegionPlan, RegionSpec};
use vhost::vhost_user::message::{
    VhostUserMemory, VhostUserMemoryRegion, VhostUserSingleMemoryRegion,
};
use vhost::vhost_user::VhostUserProtocolFeatures as Proto;
use vm_memory::ByteValued;

use super::device::{body, take_fds, NetDevice, Reply};
use super::violation::Violation;
use super::wire::Request;

/// SET_MEM_TABLE carries at most this many regions (VHOST_MEMORY_BASELINE_NREGIONS).
pub const SET_MEM_TABLE_MAX_REGIONS: u32 = 8;

const _: () = assert!(std::mem::size_of::<VhostUserMemory>() == 8);
const _: () = assert!(std::mem::size_of::<VhostUserMemoryRegion>() == 32);
const _: () = assert!(std::mem::size_of::<VhostUserSingleMemoryRegion>() == 40);

fn spec_of(r: &VhostUserMemoryRegion) -> RegionSpec {
    RegionSpec {
        guest_phys_addr: r.guest_phys_addr,
        size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    }
}

impl NetDevice {
    /// Refuses a table that would make the switch map more than the port's memory limit,
    /// before anything is mapped: what counts is what will be mapped (each region's
    /// page-rounded file window), plus what `kept` regions already map.
    fn check_memory_limit<'a>(
        &self,
        plans: impl Iterator<Item = &'a RegionPlan>,
        kept: u64,
    ) -> Result<(), Violation> {
        let requested = plans.fold(kept, |sum, p| sum.saturating_add(p.window_len));
        if requested > self.cfg.limits.max_memory {
            return Err(Violation::MemoryLimit {
                requested,
                limit: self.cfg.limits.max_memory,
            });
        }
        Ok(())
    }

    /// Maps planned regions, logging whether the front-end can still shrink them.
    fn map_regions(
        &self,
        plans: Vec<RegionPlan>,
        files: &[std::fs::File],
    ) -> Result<Vec<Arc<MappedRegion>>, Violation> {
        if self.cfg.limits.require_sealed_memory {
            if let Some(plan) = plans.iter().find(|p| !p.sealed) {
                return Err(Violation::UnsealedMemory {
                    gpa: plan.spec.guest_phys_addr,
                });
            }
        }
        let mut regions = Vec::with_capacity(plans.len());
        for (plan, file) in plans.into_iter().zip(files) {
            let region = MappedRegion::map_planned(plan, file)?;
            tracing::debug!(
                port = %self.cfg.port,
                gpa = format_args!("{:#x}", plan.spec.guest_phys_addr),
                size = plan.spec.size,
                mapped = plan.window_len,
                page = plan.page,
                sealed = plan.sealed,
                "region mapped"
            );
            regions.push(Arc::new(region));
        }
        Ok(regions)
    }

    fn need_mem_slots(&self) -> Result<(), Violation> {
        if self.protocol_features() & Proto::CONFIGURE_MEM_SLOTS.bits() == 0 {
            return Err(Violation::ProtocolFeatureMissing("CONFIGURE_MEM_SLOTS"));
        }
        Ok(())
    }

    /// Checks that every running ring still translates in `memory`, then swaps it in.
    fn install_memory(&mut self, memory: GuestMemoryMap) -> Result<(), Violation> {
        let layout = self.ring_layout();
        for (index, ring) in self.rings.iter().enumerate() {
            if let (true, Some(size), Some(addrs)) = (ring.started, ring.size, ring.addrs) {
                pmd::vring::translate(&memory, size, addrs, layout).map_err(|err| {
                    Violation::RingLosesMemory {
                        index: index as u32,
                        err,
                    }
                })?;
            }
        }
        self.memory = Arc::new(memory);
        self.republish();
        Ok(())
    }

    pub(super) fn set_mem_table(&mut self, req: &mut Request) -> Result<Reply, Violation> {
        self.need_owner()?;
        let head = std::mem::size_of::<VhostUserMemory>();
        let region_len = std::mem::size_of::<VhostUserMemoryRegion>();
        if req.payload.len() < head {
            return Err(Violation::PayloadSize {
                expected: head,
                got: req.payload.len(),
            });
        }
        let mut table = VhostUserMemory::default();
        table.as_mut_slice().copy_from_slice(&req.payload[..head]);
        let count = table.num_regions;
        let max = SET_MEM_TABLE_MAX_REGIONS.min(self.cfg.limits.max_mem_slots);
        if count == 0 || count > max {
            return Err(Violation::RegionCount { count, max });
        }
        let expected = head + count as usize * region_len;
        if req.payload.len() != expected {
            return Err(Violation::PayloadSize {
                expected,
                got: req.payload.len(),
            });
        }
        let files = take_fds(req, count as usize)?;
        let specs: Vec<RegionSpec> = req.payload[head..]
            .chunks_exact(region_len)
            .map(|chunk| {
                let mut r = VhostUserMemoryRegion::default();
                r.as_mut_slice().copy_from_slice(chunk);
                spec_of(&r)
            })
            .collect();
        pmd::memory::check_disjoint(specs.iter().copied())?;
        let plans = specs
            .into_iter()
            .zip(files.iter())
            .map(|(spec, file)| RegionPlan::new(spec, file))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_memory_limit(plans.iter(), 0)?;
        let regions = self.map_regions(plans, &files)?;
        let hugetlb = regions.iter().filter(|r| r.is_hugetlb()).count();
        let sealed = regions.iter().filter(|r| r.is_sealed()).count();
        let memory = GuestMemoryMap::new(regions, max as usize)?;
        let mapped = memory.mapped_bytes();
        self.install_memory(memory)?;
        tracing::info!(port = %self.cfg.port, regions = count, hugetlb, sealed, mapped, "memory table mapped");
        Ok(Reply::None)
    }

    pub(super) fn add_mem_reg(&mut self, req: &mut Request) -> Result<Reply, Violation> {
        self.need_mem_slots()?;
        self.need_owner()?;
        let msg: VhostUserSingleMemoryRegion = body(req)?;
        let file = take_fds(req, 1)?.remove(0);
        let spec = spec_of(&msg);
        let max = self.cfg.limits.max_mem_slots;
        let count = self.memory.regions().len() as u32 + 1;
        if count > max {
            return Err(Violation::RegionCount { count, max });
        }
        let existing = self.memory.regions().iter().map(|r| *r.spec());
        pmd::memory::check_disjoint(existing.chain(std::iter::once(spec)))?;
        let plan = RegionPlan::new(spec, &file)?;
        self.check_memory_limit(std::iter::once(&plan), self.memory.mapped_bytes())?;
        let mut regions = self.memory.regions().to_vec();
        regions.extend(self.map_regions(vec![plan], std::slice::from_ref(&file))?);
        let memory = GuestMemoryMap::new(regions, max as usize)?;
        self.install_memory(memory)?;
        tracing::info!(port = %self.cfg.port, regions = count, "memory region added");
        Ok(Reply::None)
    }

    pub(super) fn rem_mem_reg(&mut self, req: &mut Request) -> Result<Reply, Violation> {
        self.need_mem_slots()?;
        self.need_owner()?;
        let msg: VhostUserSingleMemoryRegion = body(req)?;
        // QEMU attaches the region's descriptor to REM_MEM_REG as well; it is not needed.
        if req.fds.len() > 1 {
            return Err(Violation::FdCount {
                expected: "0 or 1",
                got: req.fds.len(),
            });
        }
        let spec = spec_of(&msg);
        let regions = self.memory.regions();
        let position = regions.iter().position(|r| {
            let s = r.spec();
            s.guest_phys_addr == spec.guest_phys_addr
                && s.size == spec.size
                && s.user_addr == spec.user_addr
        });
        let Some(position) = position else {
            return Err(Violation::NoSuchRegion {
                gpa: spec.guest_phys_addr,
                size: spec.size,
                user: spec.user_addr,
            });
        };
        let mut kept = regions.to_vec();
        kept.remove(position);
        let memory = GuestMemoryMap::new(kept, self.cfg.limits.max_mem_slots as usize)?;
        self.install_memory(memory)?;
        tracing::info!(port = %self.cfg.port, regions = self.memory.regions().len(), "memory region removed");
        Ok(Reply::None)
    }
}
