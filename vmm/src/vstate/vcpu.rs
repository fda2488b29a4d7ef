//! A vCPU: its registers and its run loop, which hands port and MMIO exits to a bus.

use devices::bus::Bus;

/// Errors of vCPU setup and of `KVM_RUN`.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("Cannot create a vCPU")]
    Create(#[source] kvm_ioctls::Error),
    /// Reading or writing registers failed.
    #[error("Cannot access the registers of vCPU {index}")]
    Registers {
        /// The vCPU's index.
        index: u8,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_RUN` itself failed.
    #[error("KVM_RUN failed on vCPU {index}")]
    Run {
        /// The vCPU's index.
        index: u8,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM could not enter or emulate the guest (`KVM_EXIT_FAIL_ENTRY`,
    /// `KVM_EXIT_INTERNAL_ERROR`, or an exit reason Arca does not handle).
    #[error("vCPU {index} stopped: {reason}")]
    Unhandled {
        /// The vCPU's index.
        index: u8,
        /// The exit, as KVM reported it.
        reason: String,
    },
}

/// Why [`Vcpu::run`] returned: an exit that the VMM, not a device, must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest executed `hlt` with interrupts the VMM does not deliver.
    Halted,
    /// The guest triple-faulted or otherwise shut the CPU down.
    Shutdown,
    /// The guest asked for a reset, power-off or crash report (`KVM_EXIT_SYSTEM_EVENT`).
    SystemEvent(u32),
}

/// The bus a vCPU sends its exits to: one address space for ports, one for MMIO.
#[derive(Debug, Default, Clone)]
pub struct IoBuses {
    /// Port I/O (`in`/`out`).
    pub pio: Bus,
    /// Memory-mapped I/O outside guest RAM.
    pub mmio: Bus,
}

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: kvm_ioctls::VcpuFd,
}

impl Vcpu {
    pub(super) fn new(index: u8, fd: kvm_ioctls::VcpuFd) -> Self {
        Self { index, fd }
    }

    /// This vCPU's index (its APIC ID).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Puts the vCPU in 16-bit real mode with flat segments, starting at `ip`.
    pub fn setup_real_mode(&self, ip: u16) -> Result<(), VcpuError> {
        let err = |source| VcpuError::Registers {
            index: self.index,
            source,
        };
        let mut sregs = self.fd.get_sregs().map_err(err)?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        self.fd.set_sregs(&sregs).map_err(err)?;
        let regs = kvm_bindings::kvm_regs {
            rip: u64::from(ip),
            rflags: 0x2, // bit 1 is reserved and must be set
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(err)
    }

    /// Runs the guest, handing every port and MMIO access to `buses`, until an exit
    /// that needs the VMM. Accesses no device claims read as all ones and are dropped
    /// when written, as on a PC with nothing at that address.
    pub fn run(&mut self, buses: &IoBuses) -> Result<VcpuEvent, VcpuError> {
        use kvm_ioctls::VcpuExit;
        let index = self.index;
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    buses.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !buses.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    buses.mmio.write(addr, data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !buses.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::Hlt) => return Ok(VcpuEvent::Halted),
                Ok(VcpuExit::Shutdown) => return Ok(VcpuEvent::Shutdown),
                Ok(VcpuExit::SystemEvent(kind, _)) => return Ok(VcpuEvent::SystemEvent(kind)),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Err(VcpuError::Unhandled {
                        index,
                        reason: format!(
                            "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"
                        ),
                    });
                }
                Ok(VcpuExit::InternalError) => {
                    return Err(VcpuError::Unhandled {
                        index,
                        reason: "KVM_EXIT_INTERNAL_ERROR (KVM could not emulate an instruction)"
                            .to_owned(),
                    });
                }
                Ok(other) => {
                    return Err(VcpuError::Unhandled {
                        index,
                        reason: format!("{other:?}"),
                    });
                }
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(source) => return Err(VcpuError::Run { index, source }),
            }
        }
    }
}
