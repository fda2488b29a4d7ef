//! The boot recipe: from a checked [`VmConfig`] to a [`Microvm`] whose vCPUs are ready
//! to enter the kernel. Each step names what it builds; the KVM calls are in `vstate`.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::SharedDevice;
use devices::legacy::{ConsoleWriter, DebugPort, EventFdTrigger, I8042, Serial};
use devices::signals::GuestSignals;
use devices::virtio::block::{Block, BlockError};
use devices::virtio::fs::{Fs, FsError};
use devices::virtio::net::Net;
use devices::virtio::vsock::Vsock;
use devices::virtio::vsock::backend::{Backend, BackendError};
use event_manager::MutEventSubscriber;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::x86_64::layout::ram_regions;
use crate::arch::x86_64::{cpuid, mptable, regs};
use crate::config::{Console, VmConfig};
use crate::device_manager::fs::FsEvents;
use crate::device_manager::net::NetEvents;
use crate::device_manager::tap::{Tap, TapError};
use crate::device_manager::vsock::VsockEvents;
use crate::device_manager::{DeviceManagerError, MmioDeviceManager};
use crate::kvm_probe::{self, KvmProbeError};
use crate::loader::{self, LoaderError};
use crate::memory::GuestRam;
use crate::microvm::{Microvm, MicrovmParts};
use crate::vstate::kvm::KvmError;
use crate::vstate::vcpu::{IoBuses, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// COM1.
pub const SERIAL_PORT: u64 = 0x3f8;
/// COM1's interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 data port; the command port is 4 above it.
pub const I8042_PORT: u64 = 0x60;
/// Arca's boot debug port (see `devices::legacy::DebugPort`).
pub const DEBUG_PORT: u64 = 0x3f0;
/// Kernel parameters every Arca guest gets: console on COM1, reset through the i8042 on
/// reboot, reboot at once on panic, and no check that the timer interrupt arrives
/// through the IOAPIC (KVM's does; the check waits for ticks, ~150 ms in the lab).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 no_timer_check";

/// Errors of building a microVM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The host's KVM cannot run the guest.
    #[error("KVM not usable")]
    Kvm(#[source] KvmProbeError),
    /// Reading the host's CPUID support failed.
    #[error("Cannot read the host's CPUID support")]
    Cpuid(#[source] KvmError),
    /// CPUID normalisation failed.
    #[error("Cannot build the guest CPUID")]
    CpuidFilter(#[source] cpuid::CpuidError),
    /// Guest memory could not be mapped.
    #[error("Cannot allocate {mib} MiB of guest memory")]
    Memory {
        /// The size asked for.
        mib: u64,
        /// What vm-memory said.
        #[source]
        source: crate::memory::MemoryError,
    },
    /// VM setup failed.
    #[error("Cannot set up the VM")]
    Vm(#[source] VmError),
    /// vCPU setup failed.
    #[error("Cannot set up the vCPUs")]
    Vcpu(#[source] VcpuError),
    /// Kernel, initrd or boot information failed to load.
    #[error("Cannot load the guest")]
    Loader(#[source] LoaderError),
    /// Writing the GDT or page tables failed.
    #[error("Cannot write the boot tables")]
    Regs(#[source] regs::RegsError),
    /// The MP table could not be written.
    #[error("Cannot write the MP table")]
    Mptable(#[source] mptable::MptableError),
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The console file could not be created.
    #[error("Cannot create the console file {path}")]
    ConsoleFile {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A disk image cannot be used.
    #[error("Cannot attach a disk")]
    Disk(#[source] BlockError),
    /// The vsock device's host socket cannot be set up.
    #[error("Cannot set up vsock")]
    Vsock(#[source] BackendError),
    /// The network device's TAP cannot be attached.
    #[error("Cannot set up the network device")]
    Net(#[source] TapError),
    /// A virtio-fs device's backend cannot be used.
    #[error("Cannot set up a virtio-fs device")]
    Fs(#[source] FsError),
    /// A descriptor could not be duplicated for the event loop.
    #[error("Cannot duplicate a device's descriptor")]
    Dup(#[source] std::io::Error),
    /// A virtio device could not be wired in.
    #[error("Cannot add a virtio device")]
    Devices(#[source] DeviceManagerError),
    /// A device did not fit on its bus.
    #[error("Cannot place a device on the bus")]
    Bus(#[source] devices::bus::BusError),
}

/// Builds a microVM from `config`; `started` is when the VMM process started, for the
/// boot timeline.
pub fn build_microvm(config: &VmConfig, started: Instant) -> Result<Microvm, BuildError> {
    // 1. The host's KVM, checked the quick way (no test guest).
    let kvm = kvm_probe::open_checked(
        std::path::Path::new("/dev/kvm"),
        std::path::Path::new("/sys"),
    )
    .map_err(BuildError::Kvm)?;

    // 2. Guest memory: RAM below the MMIO gap, the rest above 4 GiB, 2 MiB aligned;
    //    a shared memfd when a vhost-user backend (virtiofsd) must map it too.
    let mem_size = config.memory_mib << 20;
    let regions = ram_regions(mem_size);
    let ram = if config.fs.is_empty() {
        GuestRam::new(&regions)
    } else {
        GuestRam::new_shared(&regions)
    }
    .map_err(|source| BuildError::Memory {
        mib: config.memory_mib,
        source,
    })?;
    let memory = &ram.memory;

    // 3. The VM: memory slots, then the in-kernel PIC/IOAPIC/LAPIC and PIT.
    let vm = Vm::new(&kvm).map_err(BuildError::Vm)?;
    vm.register_memory(memory).map_err(BuildError::Vm)?;
    vm.setup_platform().map_err(BuildError::Vm)?;

    // 4. The guest: kernel (mapped from its file), initrd at the top of low RAM.
    let kernel =
        loader::load_kernel(memory, &config.kernel, config.protocol).map_err(BuildError::Loader)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(memory, path, &kernel).map_err(BuildError::Loader)?),
        None => None,
    };
    let mut cmdline = loader::build_cmdline(BASE_CMDLINE, None).map_err(BuildError::Loader)?;

    // 5. Legacy devices on the port bus: COM1 (IRQ 4), the i8042 reset line, the
    //    boot debug port.
    let signals = Arc::new(GuestSignals::default());
    let new_evt = || EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd);
    let serial_irq = new_evt()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(BuildError::Vm)?;
    let console = ConsoleWriter::new(console_output(&config.console)?, signals.clone());
    let serial = Serial::new(EventFdTrigger::new(serial_irq), console);
    let reset_evt = new_evt()?;
    let i8042 = I8042::new(EventFdTrigger::new(
        reset_evt.try_clone().map_err(BuildError::EventFd)?,
    ));
    let mut buses = IoBuses::default();
    let pio: [(SharedDevice, u64, u64); 3] = [
        (Arc::new(Mutex::new(serial)), SERIAL_PORT, 8),
        (Arc::new(Mutex::new(i8042)), I8042_PORT, 5),
        (
            Arc::new(Mutex::new(DebugPort::new(signals.clone()))),
            DEBUG_PORT,
            1,
        ),
    ];
    for (device, base, len) in pio {
        buses
            .pio
            .insert(device, base, len)
            .map_err(BuildError::Bus)?;
    }

    // 6. Virtio devices on the MMIO bus, announced on the command line: the disks, in
    //    the order given (the guest sees /dev/vda, /dev/vdb, ...), then vsock, then
    //    the network device, then virtio-fs devices (last, so that adding them moves
    //    no other device's slot or IRQ).
    let mut device_manager = MmioDeviceManager::new();
    let mut subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> = Vec::new();
    for disk in &config.disks {
        let block = Block::new(disk).map_err(BuildError::Disk)?;
        let events = device_manager
            .add_virtio(&vm, memory, &mut buses, &mut cmdline, Box::new(block))
            .map_err(BuildError::Devices)?;
        subscribers.push(Arc::new(Mutex::new(events)));
    }
    //    ...and the vsock device, whose host side listens on its Unix socket from now.
    if let Some(vsock) = &config.vsock {
        let backend = Backend::new(vsock.cid, &vsock.uds).map_err(BuildError::Vsock)?;
        let backend = Arc::new(Mutex::new(backend));
        let events = device_manager
            .add_virtio(
                &vm,
                memory,
                &mut buses,
                &mut cmdline,
                Box::new(Vsock::new(backend.clone())),
            )
            .map_err(BuildError::Devices)?;
        subscribers.push(Arc::new(Mutex::new(VsockEvents::new(events, backend))));
    }
    //    ...and the network device on its TAP, which the event loop watches.
    if let Some(net) = &config.net {
        let tap = Tap::open(&net.tap).map_err(BuildError::Net)?;
        let tap_fd = tap.watch_fd().map_err(BuildError::Net)?;
        let events = device_manager
            .add_virtio(
                &vm,
                memory,
                &mut buses,
                &mut cmdline,
                Box::new(Net::new(net.mac, Box::new(tap))),
            )
            .map_err(BuildError::Devices)?;
        subscribers.push(Arc::new(Mutex::new(NetEvents::new(events, tap_fd))));
    }
    //    ...and the virtio-fs devices, each connected to its backend from now.
    for fs in &config.fs {
        let device = Fs::new(fs).map_err(BuildError::Fs)?;
        let calls = device.call_events().map_err(BuildError::Dup)?;
        let socket = device.backend_socket().map_err(BuildError::Dup)?;
        let (health, tag) = (device.health(), device.tag().to_owned());
        let events = device_manager
            .add_virtio(&vm, memory, &mut buses, &mut cmdline, Box::new(device))
            .map_err(BuildError::Devices)?;
        subscribers.push(Arc::new(Mutex::new(FsEvents::new(
            events, calls, socket, health, tag,
        ))));
    }

    // 7. Boot information: the command line (the user's part last, so that init
    //    arguments after `--` stay last), PVH start info or zero page, GDT/IDT/page
    //    tables, and the MP table with the CPUs and IOAPIC routing.
    loader::append_cmdline(&mut cmdline, config.cmdline.as_deref()).map_err(BuildError::Loader)?;
    loader::write_boot_info(memory, &kernel, &cmdline, initrd, mem_size)
        .map_err(BuildError::Loader)?;
    regs::write_boot_tables(memory, kernel.protocol).map_err(BuildError::Regs)?;
    mptable::write_mptable(memory, config.cpus).map_err(BuildError::Mptable)?;

    // 8. vCPUs: CPUID with this VM's topology, boot MSRs, LAPIC wiring, and the boot
    //    processor's registers at the kernel's entry point.
    let supported = kvm.supported_cpuid().map_err(BuildError::Cpuid)?;
    let tsc_deadline = kvm.has_tsc_deadline_timer();
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for index in 0..config.cpus {
        let vcpu = vm.create_vcpu(index).map_err(BuildError::Vcpu)?;
        let mut entries = supported.clone();
        cpuid::normalize(&mut entries, index, config.cpus, tsc_deadline)
            .map_err(BuildError::CpuidFilter)?;
        vcpu.configure(&entries, kernel.protocol, kernel.entry.0)
            .map_err(BuildError::Vcpu)?;
        vcpus.push(vcpu);
    }

    Ok(Microvm::new(MicrovmParts {
        kvm,
        vm,
        ram,
        vcpus,
        buses,
        reset_evt,
        signals,
        subscribers,
        started,
    }))
}

fn console_output(console: &Console) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::None => Box::new(std::io::sink()),
        Console::File(path) => Box::new(CappedFile {
            file: File::create(path).map_err(|source| BuildError::ConsoleFile {
                path: path.clone(),
                source,
            })?,
            left: CONSOLE_FILE_CAP,
        }),
    })
}

/// The most a guest may write to a console file: the guest controls what it prints, and
/// the host's disk is not its to fill.
pub const CONSOLE_FILE_CAP: u64 = 1 << 20;

/// A console file that takes [`CONSOLE_FILE_CAP`] bytes, notes the cut, and drops the
/// rest.
struct CappedFile {
    file: File,
    left: u64,
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(buf.len());
        }
        let n = buf.len().min(self.left as usize);
        self.file.write_all(&buf[..n])?;
        self.left -= n as u64;
        if self.left == 0 {
            self.file.write_all(
                b"\n[arca-vmm: console output capped at 1 MiB; the rest is dropped]\n",
            )?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_flooding_a_console_file_fills_at_most_the_cap() {
        // Hostile: a guest that prints without end to its serial console.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut out = console_output(&Console::File(path.clone())).unwrap();
        let line = [b'x'; 4096];
        for _ in 0..1000 {
            assert_eq!(
                out.write(&line).unwrap(),
                line.len(),
                "the guest never blocks"
            );
        }
        out.flush().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            len > CONSOLE_FILE_CAP && len < CONSOLE_FILE_CAP + 100,
            "{len}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("the rest is dropped]\n"));
    }
}
