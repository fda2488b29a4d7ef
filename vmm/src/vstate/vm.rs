//! A KVM VM: its fd and its guest memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::kvm::Kvm;
use super::vcpu::{Vcpu, VcpuError};

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

    /// Creates vCPU number `index`.
    pub fn create_vcpu(&self, index: u8) -> Result<Vcpu, VcpuError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(VcpuError::Create)?;
        Ok(Vcpu::new(index, fd))
    }
}
