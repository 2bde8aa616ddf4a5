//! Interrupts: the eventfds the client hands over in SET_IRQS, per VFIO PCI index.
//!
//! The device signals MSI-X vectors only: the PMDs write a queue's vector eventfd, and the
//! client (QEMU emulates the MSI-X table itself) injects the message. INTx eventfds are
//! accepted and held, because QEMU wires INTx at realize, before the guest enables MSI-X,
//! but the device never raises INTx: a level interrupt needs the ISR byte set by whoever
//! signals, and the PMDs do not touch device registers (see `docs/vfio-user.md`).

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use super::message::{IrqAction, IrqData, SetIrqs};
use super::refusal::Refusal;
use super::wire::Command;
use crate::vhost_user::socket::accept_eventfd;

/// VFIO PCI interrupt indexes.
pub mod index {
    /// Legacy INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// AER error notification.
    pub const ERR: u32 = 3;
    /// Device request notification.
    pub const REQ: u32 = 4;
    /// Number of indexes.
    pub const COUNT: u32 = 5;
}

/// GET_IRQ_INFO flags.
pub mod info_flags {
    /// Signalled through an eventfd.
    pub const EVENTFD: u32 = 1 << 0;
    /// Can be masked.
    pub const MASKABLE: u32 = 1 << 1;
    /// Masked automatically when it fires (level-triggered).
    pub const AUTOMASKED: u32 = 1 << 2;
    /// The count cannot change while enabled.
    pub const NORESIZE: u32 = 1 << 3;
}

/// The eventfds of one connection.
#[derive(Debug)]
pub struct Irqs {
    msix: Vec<Option<Arc<File>>>,
    intx: Option<File>,
    intx_unmask: Option<File>,
}

impl Irqs {
    /// No eventfd yet, `msix_vectors` MSI-X vectors.
    pub fn new(msix_vectors: u16) -> Self {
        Irqs {
            msix: vec![None; usize::from(msix_vectors)],
            intx: None,
            intx_unmask: None,
        }
    }

    /// Interrupts of an index and its GET_IRQ_INFO flags; `None` for an index that does
    /// not exist.
    pub fn info(&self, idx: u32) -> Option<(u32, u32)> {
        use info_flags::*;
        match idx {
            index::INTX => Some((1, EVENTFD | MASKABLE | AUTOMASKED)),
            index::MSI => Some((0, EVENTFD | NORESIZE)),
            index::MSIX => Some((self.msix.len() as u32, EVENTFD | NORESIZE)),
            index::ERR | index::REQ => Some((0, EVENTFD)),
            _ => None,
        }
    }

    /// The eventfd of an MSI-X vector, if one is assigned.
    pub fn msix(&self, vector: u16) -> Option<Arc<File>> {
        self.msix.get(usize::from(vector)).cloned().flatten()
    }

    /// Descriptors held.
    pub fn held_fds(&self) -> usize {
        self.msix.iter().filter(|f| f.is_some()).count()
            + usize::from(self.intx.is_some())
            + usize::from(self.intx_unmask.is_some())
    }

    /// Drops every eventfd (DEVICE_RESET leaves them; a new connection starts without).
    pub fn clear(&mut self) {
        self.msix.iter_mut().for_each(|f| *f = None);
        self.intx = None;
        self.intx_unmask = None;
    }

    /// Applies a SET_IRQS. Returns true when MSI-X eventfds changed (the data plane's
    /// call descriptors must be republished). Nothing changes on `Err`.
    pub fn set(&mut self, req: &SetIrqs, fds: Vec<File>) -> Result<bool, Refusal> {
        let c = Command::DeviceSetIrqs;
        let Some((count, _)) = self.info(req.index) else {
            return Err(Refusal::invalid(
                c,
                format!("interrupt index {}", req.index),
            ));
        };
        let disable_all =
            req.count == 0 && req.data == IrqData::None && req.action == IrqAction::Trigger;
        let end = req.start.checked_add(req.count);
        if !disable_all && end.is_none_or(|e| e > count) {
            return Err(Refusal::invalid(
                c,
                format!(
                    "interrupts {}..+{} of index {} (it has {count})",
                    req.start, req.count, req.index
                ),
            ));
        }
        if req.data != IrqData::Eventfd && !fds.is_empty() {
            return Err(Refusal::FdCount {
                command: c,
                expected: "0 without DATA_EVENTFD",
                got: fds.len(),
            });
        }
        if req.data == IrqData::Eventfd && !fds.is_empty() && fds.len() != req.count as usize {
            return Err(Refusal::FdCount {
                command: c,
                expected: "0 or count",
                got: fds.len(),
            });
        }
        for f in &fds {
            accept_eventfd(f).map_err(|what| {
                Refusal::invalid(
                    c,
                    format!("an interrupt descriptor is {what}, not an eventfd"),
                )
            })?;
        }
        let (start, n) = (req.start as usize, req.count as usize);
        match (req.index, req.action) {
            (index::MSIX, IrqAction::Trigger) => match &req.data {
                IrqData::Eventfd => {
                    let mut fds = fds.into_iter();
                    for slot in &mut self.msix[start..start + n] {
                        // No descriptors: unassign (QEMU's -1 entries).
                        *slot = fds.next().map(Arc::new);
                    }
                    Ok(true)
                }
                IrqData::None if disable_all => {
                    self.msix.iter_mut().for_each(|f| *f = None);
                    Ok(true)
                }
                IrqData::None => {
                    self.msix[start..start + n]
                        .iter()
                        .flatten()
                        .for_each(|f| fire(f));
                    Ok(false)
                }
                IrqData::Bool(fire_it) => {
                    for (slot, yes) in self.msix[start..start + n].iter().zip(fire_it) {
                        if let (Some(f), true) = (slot, yes) {
                            fire(f);
                        }
                    }
                    Ok(false)
                }
            },
            (index::MSIX, _) => Err(Refusal::invalid(
                c,
                "MSI-X vectors are not maskable here (the client emulates the table)",
            )),
            (index::INTX, IrqAction::Trigger) => {
                match &req.data {
                    IrqData::Eventfd => self.intx = fds.into_iter().next(),
                    IrqData::None if disable_all => {
                        self.intx = None;
                        self.intx_unmask = None;
                    }
                    _ => {}
                }
                Ok(false)
            }
            (index::INTX, IrqAction::Unmask) => {
                if req.data == IrqData::Eventfd {
                    self.intx_unmask = fds.into_iter().next();
                }
                Ok(false)
            }
            // INTx is never raised, so there is nothing to mask.
            (index::INTX, IrqAction::Mask) => Ok(false),
            // MSI, ERR and REQ have no interrupts: only "disable all" reaches here.
            _ => Ok(false),
        }
    }
}

fn fire(f: &File) {
    // Non-blocking eventfd: a full counter already means "pending".
    let _ = (&*f).write(&1u64.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::message::IrqAction;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn eventfd() -> File {
        // SAFETY: eventfd returns a new descriptor or -1 (checked).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        unsafe { File::from_raw_fd(fd) }
    }

    fn req(index: u32, data: IrqData, action: IrqAction, start: u32, count: u32) -> SetIrqs {
        SetIrqs {
            data,
            action,
            index,
            start,
            count,
        }
    }

    fn count(f: &File) -> u64 {
        let mut b = [0u8; 8];
        match (&*f).read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    #[test]
    fn msix_eventfds_are_assigned_fired_and_unassigned() {
        let mut irqs = Irqs::new(3);
        let (a, b) = (eventfd(), eventfd());
        let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let set = req(index::MSIX, IrqData::Eventfd, IrqAction::Trigger, 1, 2);
        assert!(irqs.set(&set, vec![a, b]).unwrap());
        assert!(irqs.msix(0).is_none() && irqs.msix(1).is_some() && irqs.msix(2).is_some());
        assert!(irqs.msix(7).is_none());
        let fire = req(
            index::MSIX,
            IrqData::Bool(vec![false, true]),
            IrqAction::Trigger,
            1,
            2,
        );
        irqs.set(&fire, vec![]).unwrap();
        assert_eq!((count(&a2), count(&b2)), (0, 1));
        // QEMU unassigns with count n and no descriptors.
        let unassign = req(index::MSIX, IrqData::Eventfd, IrqAction::Trigger, 2, 1);
        irqs.set(&unassign, vec![]).unwrap();
        assert!(irqs.msix(2).is_none() && irqs.msix(1).is_some());
        let off = req(index::MSIX, IrqData::None, IrqAction::Trigger, 0, 0);
        irqs.set(&off, vec![]).unwrap();
        assert_eq!(irqs.held_fds(), 0);
    }

    #[test]
    fn refuses_bad_ranges_counts_and_non_eventfds() {
        let mut irqs = Irqs::new(3);
        let past = req(index::MSIX, IrqData::Eventfd, IrqAction::Trigger, 2, 2);
        assert!(irqs.set(&past, vec![eventfd(), eventfd()]).is_err());
        let wrap = req(index::MSIX, IrqData::None, IrqAction::Trigger, u32::MAX, 2);
        assert!(irqs.set(&wrap, vec![]).is_err());
        let short = req(index::MSIX, IrqData::Eventfd, IrqAction::Trigger, 0, 2);
        assert!(irqs.set(&short, vec![eventfd()]).is_err());
        let null = File::open("/dev/null").unwrap();
        let one = req(index::MSIX, IrqData::Eventfd, IrqAction::Trigger, 0, 1);
        assert!(irqs.set(&one, vec![null]).is_err());
        assert!(irqs
            .set(&req(9, IrqData::None, IrqAction::Trigger, 0, 0), vec![])
            .is_err());
        assert!(irqs
            .set(
                &req(index::MSIX, IrqData::None, IrqAction::Mask, 0, 1),
                vec![]
            )
            .is_err());
        let stray = req(index::INTX, IrqData::None, IrqAction::Unmask, 0, 1);
        assert!(irqs.set(&stray, vec![eventfd()]).is_err());
        assert_eq!(irqs.held_fds(), 0, "nothing kept from refusals");
    }

    #[test]
    fn intx_is_held_as_qemu_wires_it() {
        let mut irqs = Irqs::new(3);
        let trigger = req(index::INTX, IrqData::Eventfd, IrqAction::Trigger, 0, 1);
        assert!(!irqs.set(&trigger, vec![eventfd()]).unwrap());
        let unmask = req(index::INTX, IrqData::Eventfd, IrqAction::Unmask, 0, 1);
        irqs.set(&unmask, vec![eventfd()]).unwrap();
        irqs.set(
            &req(index::INTX, IrqData::None, IrqAction::Mask, 0, 1),
            vec![],
        )
        .unwrap();
        assert_eq!(irqs.held_fds(), 2);
        irqs.set(
            &req(index::INTX, IrqData::None, IrqAction::Trigger, 0, 0),
            vec![],
        )
        .unwrap();
        assert_eq!(irqs.held_fds(), 0);
        assert_eq!(
            irqs.info(index::MSIX),
            Some((3, info_flags::EVENTFD | info_flags::NORESIZE))
        );
        assert_eq!(irqs.info(index::COUNT), None);
    }
}
