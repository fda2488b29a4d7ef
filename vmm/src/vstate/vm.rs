//! A KVM VM: its fd, its guest memory slots, its in-kernel interrupt controllers and the
//! eventfds wired to them, and the state of those controllers and clocks a snapshot
//! keeps.

use std::sync::Arc;

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::Kvm;
use super::vcpu::{Vcpu, VcpuError};
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors of VM creation and setup.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `KVM_CREATE_VM` failed.
    #[error("Cannot create a KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("Cannot register guest memory slot {slot} at {guest_addr:#x} ({size:#x} bytes)")]
    MemoryRegion {
        /// The slot number.
        slot: u32,
        /// Guest physical address of the region.
        guest_addr: u64,
        /// Size of the region in bytes.
        size: u64,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A saved state is not one this VM can take.
    #[error("Invalid saved VM state: {0}")]
    BadState(String),
    /// A VM setup ioctl failed.
    #[error("{what} failed")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// The VM-wide state KVM holds: the interrupt controllers, the PIT and kvm-clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 timer.
    pub pit: kvm_pit_state2,
    /// kvm-clock: the guest's monotonic clock.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

/// A VM and the memory it has been given.
#[derive(Debug)]
pub struct Vm {
    fd: kvm_ioctls::VmFd,
}

impl Vm {
    /// Creates an empty VM.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.fd().create_vm().map_err(VmError::Create)?;
        Ok(Self { fd })
    }

    /// Gives every region of `memory` to the guest, one KVM slot per region.
    pub fn register_memory(&self, memory: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(memory.iter()) {
            let mem_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range [as_ptr, as_ptr + len) is a live mapping owned by
            // `memory`, whose regions never overlap in guest physical space; the caller
            // keeps `memory` alive for as long as the VM runs.
            unsafe { self.fd.set_user_memory_region(mem_region) }.map_err(|source| {
                VmError::MemoryRegion {
                    slot,
                    guest_addr: mem_region.guest_phys_addr,
                    size: mem_region.memory_size,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Sets up the x86 platform inside KVM: the TSS and identity-map pages KVM needs for
    /// real-mode emulation, the PIC/IOAPIC/LAPIC, and the PIT (with port 0x61 handled in
    /// the kernel). Must come before any vCPU is created.
    pub fn setup_platform(&self) -> Result<(), VmError> {
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))
    }

    /// Makes a write to `evt` raise interrupt line `gsi` in the guest.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("KVM_IRQFD"))
    }

    /// Makes a 4-byte guest write of `datamatch` to MMIO address `addr` signal `evt`
    /// inside KVM, without an exit to the VMM.
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(ioctl("KVM_IOEVENTFD"))
    }

    /// Creates vCPU number `index`; a snapshot saves the MSRs in `saved_msrs`.
    pub fn create_vcpu(&self, index: u8, saved_msrs: Arc<[u32]>) -> Result<Vcpu, VcpuError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(VcpuError::Create)?;
        Ok(Vcpu::new(index, fd, saved_msrs))
    }

    /// Reads the interrupt controllers, the PIT and kvm-clock (with every vCPU paused).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(ioctl("KVM_GET_IRQCHIP"))?;
            Ok(chip)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
        })
    }

    /// Gives a VM set up by [`Vm::setup_platform`] a saved state, before its vCPUs are
    /// created. kvm-clock goes on from the value saved, as the TSC does: the guest's
    /// monotonic clocks do not count the time the snapshot lay on disk (its wall clock
    /// is whoever restores it's to set).
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        self.fd
            .set_pit2(&state.pit)
            .map_err(ioctl("KVM_SET_PIT2"))?;
        // Only the value: the flags describe the host it was read on. (Moving kvm-clock
        // on by the real time passed, would leave it apart from the
        // TSC, which a guest with an invariant TSC takes as its clocksource.)
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
        for (chip, id) in [
            (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&state.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != id {
                return Err(VmError::BadState(format!(
                    "interrupt controller {id} is saved as chip {}",
                    chip.chip_id
                )));
            }
            self.fd
                .set_irqchip(chip)
                .map_err(ioctl("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
