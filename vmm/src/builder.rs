//! The boot recipes: from a checked [`VmConfig`] to a [`Microvm`] whose vCPUs are ready
//! to enter the kernel ([`build_microvm`]), or to go on from a snapshot
//! ([`restore_microvm`]). Each step names what it builds; the devices are made by the
//! same steps in both; the KVM calls are in `vstate`.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::SharedDevice;
use devices::legacy::{
    ConsoleWriter, DebugPort, EventFdTrigger, I8042, Serial, SerialRestoreError, SerialSnapshot,
};
use devices::signals::GuestSignals;
use devices::virtio::VirtioDevice;
use devices::virtio::block::{Block, BlockError};
use devices::virtio::fs::{Fs, FsError};
use devices::virtio::mmio::{MmioTransport, TransportState};
use devices::virtio::net::Net;
use devices::virtio::vsock::Vsock;
use devices::virtio::vsock::backend::{Backend, BackendError};
use event_manager::MutEventSubscriber;
use linux_loader::loader::Cmdline;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::x86_64::layout::ram_regions;
use crate::arch::x86_64::{cpuid, mptable, msr, regs};
use crate::config::{Boot, Console, VmConfig};
use crate::control::{ControlError, ControlEvents};
use crate::device_manager::fs::FsEvents;
use crate::device_manager::net::NetEvents;
use crate::device_manager::tap::{Tap, TapError};
use crate::device_manager::vsock::VsockEvents;
use crate::device_manager::{DeviceManagerError, MmioDeviceManager, QueueEvents};
use crate::kvm_probe::{self, KvmProbeError};
use crate::loader::{self, LoaderError};
use crate::memory::GuestRam;
use crate::microvm::{Microvm, MicrovmParts, PersistParts};
use crate::persist::{SavedMachine, Snapshot};
use crate::vstate::kvm::{Kvm, KvmError};
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
    /// A restore was asked of the boot recipe.
    #[error("This configuration restores a snapshot: it cannot boot a kernel")]
    NotABoot,
    /// A boot was asked of the restore recipe.
    #[error("This configuration boots a kernel: it has no snapshot to restore")]
    NotARestore,
    /// The snapshot's memory file cannot be opened.
    #[error("Cannot open the snapshot's memory file {path}")]
    MemoryFile {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The saved serial port cannot be restored.
    #[error("Cannot restore the serial port")]
    Serial(#[source] SerialRestoreError),
    /// The snapshot has fewer device states than devices.
    #[error("The snapshot has fewer device states than the VM has devices")]
    Layout,
    /// The control socket cannot be made.
    #[error("Cannot set up the control socket")]
    Control(#[source] ControlError),
    /// A device did not fit on its bus.
    #[error("Cannot place a device on the bus")]
    Bus(#[source] devices::bus::BusError),
}

/// Boots a microVM from `config` (a kernel boot); `started` is when the VMM process
/// started, for the boot timeline.
pub fn build_microvm(config: &VmConfig, started: Instant) -> Result<Microvm, BuildError> {
    let Boot::Kernel(boot) = &config.boot else {
        return Err(BuildError::NotABoot);
    };
    // 1. The host's KVM, checked the quick way (no test guest).
    let kvm = open_kvm()?;

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
    let vm = new_vm(&kvm, memory)?;

    // 4. The guest: kernel (mapped from its file), initrd at the top of low RAM.
    let kernel =
        loader::load_kernel(memory, &boot.kernel, boot.protocol).map_err(BuildError::Loader)?;
    let initrd = match &boot.initrd {
        Some(path) => Some(loader::load_initrd(memory, path, &kernel).map_err(BuildError::Loader)?),
        None => None,
    };
    let mut cmdline = loader::build_cmdline(BASE_CMDLINE, None).map_err(BuildError::Loader)?;

    // 5. Legacy devices on the port bus: COM1 (IRQ 4), the i8042 reset line, the
    //    boot debug port.
    let legacy = legacy_devices(&vm, &config.console, None)?;
    let mut buses = legacy.buses.clone();

    // 6. Virtio devices on the MMIO bus, announced on the command line (see
    //    `virtio_devices` for their order).
    let virtio = virtio_devices(&vm, memory, &mut buses, &mut cmdline, config, None)?;

    // 7. Boot information: the command line (the user's part last, so that init
    //    arguments after `--` stay last), PVH start info or zero page, GDT/IDT/page
    //    tables, and the MP table with the CPUs and IOAPIC routing.
    loader::append_cmdline(&mut cmdline, boot.cmdline.as_deref()).map_err(BuildError::Loader)?;
    loader::write_boot_info(memory, &kernel, &cmdline, initrd, mem_size)
        .map_err(BuildError::Loader)?;
    regs::write_boot_tables(memory, kernel.protocol).map_err(BuildError::Regs)?;
    mptable::write_mptable(memory, config.cpus).map_err(BuildError::Mptable)?;

    // 8. vCPUs: CPUID with this VM's topology, boot MSRs, LAPIC wiring, and the boot
    //    processor's registers at the kernel's entry point.
    let supported = kvm.supported_cpuid().map_err(BuildError::Cpuid)?;
    let tsc_deadline = kvm.has_tsc_deadline_timer();
    let saved_msrs = saved_msrs(&kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for index in 0..config.cpus {
        let vcpu = vm
            .create_vcpu(index, saved_msrs.clone())
            .map_err(BuildError::Vcpu)?;
        let mut entries = supported.clone();
        cpuid::normalize(&mut entries, index, config.cpus, tsc_deadline)
            .map_err(BuildError::CpuidFilter)?;
        vcpu.configure(&entries, kernel.protocol, kernel.entry.0)
            .map_err(BuildError::Vcpu)?;
        vcpus.push(vcpu);
    }

    // 9. The control socket, if asked for.
    let control = control_socket(config)?;
    Ok(Microvm::new(MicrovmParts {
        kvm,
        vm: Arc::new(vm),
        ram,
        vcpus,
        buses,
        reset_evt: legacy.reset_evt,
        signals: legacy.signals,
        subscribers: virtio.subscribers,
        started,
        persist: PersistParts {
            machine: SavedMachine::of(config),
            serial: legacy.serial,
            transports: virtio.transports,
            refusal: (!config.fs.is_empty())
                .then_some("a VM with virtio-fs devices cannot be snapshotted (virtiofsd keeps state of its own)"),
        },
        control,
        restored: false,
    }))
}

/// Restores a microVM from `snapshot`, whose memory file `config` names; `config` was
/// made from the snapshot's machine by [`VmConfig::for_restore`]. The guest goes on
/// where it was paused.
pub fn restore_microvm(
    config: &VmConfig,
    snapshot: Snapshot,
    started: Instant,
) -> Result<Microvm, BuildError> {
    let Boot::Restore(files) = &config.boot else {
        return Err(BuildError::NotARestore);
    };
    // 1. The host's KVM.
    let kvm = open_kvm()?;

    // 2. Guest memory: the snapshot's memory file, mapped private (copy on write).
    let regions = ram_regions(config.memory_mib << 20);
    let file = File::open(&files.memory).map_err(|source| BuildError::MemoryFile {
        path: files.memory.clone(),
        source,
    })?;
    let ram = GuestRam::from_snapshot(&regions, file).map_err(|source| BuildError::Memory {
        mib: config.memory_mib,
        source,
    })?;
    let memory = &ram.memory;

    // 3. The VM, then its interrupt controllers, PIT and kvm-clock as saved.
    let vm = new_vm(&kvm, memory)?;
    vm.restore_state(&snapshot.vm).map_err(BuildError::Vm)?;

    // 4. Legacy devices, COM1 with its saved registers.
    let legacy = legacy_devices(&vm, &config.console, Some(&snapshot.serial))?;
    let mut buses = legacy.buses.clone();

    // 5. Virtio devices in the saved order, each transport as saved (the guest found
    //    them on its command line at boot; this one is not used).
    let mut cmdline = loader::build_cmdline(BASE_CMDLINE, None).map_err(BuildError::Loader)?;
    let virtio = virtio_devices(
        &vm,
        memory,
        &mut buses,
        &mut cmdline,
        config,
        Some(&snapshot.devices),
    )?;

    // 6. vCPUs, each given its saved state.
    let saved_msrs = saved_msrs(&kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for (index, state) in (0..config.cpus).zip(&snapshot.vcpus) {
        let vcpu = vm
            .create_vcpu(index, saved_msrs.clone())
            .map_err(BuildError::Vcpu)?;
        vcpu.restore_state(state).map_err(BuildError::Vcpu)?;
        vcpus.push(vcpu);
    }

    // 7. The devices catch up: notifications the guest made just before the snapshot
    //    are served, vsock tells the driver its connections are gone, and pending
    //    interrupts are raised again (into the LAPICs restored above).
    legacy
        .serial
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .resume_after_restore();
    for transport in &virtio.transports {
        transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resume_after_restore();
    }

    // 8. The control socket, if asked for.
    let control = control_socket(config)?;
    Ok(Microvm::new(MicrovmParts {
        kvm,
        vm: Arc::new(vm),
        ram,
        vcpus,
        buses,
        reset_evt: legacy.reset_evt,
        signals: legacy.signals,
        subscribers: virtio.subscribers,
        started,
        persist: PersistParts {
            machine: SavedMachine::of(config),
            serial: legacy.serial,
            transports: virtio.transports,
            refusal: None,
        },
        control,
        restored: true,
    }))
}

fn open_kvm() -> Result<Kvm, BuildError> {
    kvm_probe::open_checked(
        std::path::Path::new("/dev/kvm"),
        std::path::Path::new("/sys"),
    )
    .map_err(BuildError::Kvm)
}

/// A VM with `memory` registered and the x86 platform set up in KVM.
fn new_vm(kvm: &Kvm, memory: &vm_memory::GuestMemoryMmap) -> Result<Vm, BuildError> {
    let vm = Vm::new(kvm).map_err(BuildError::Vm)?;
    vm.register_memory(memory).map_err(BuildError::Vm)?;
    vm.setup_platform().map_err(BuildError::Vm)?;
    Ok(vm)
}

/// The MSRs a snapshot of a vCPU saves, from what KVM can save on this host.
fn saved_msrs(kvm: &Kvm) -> Result<Arc<[u32]>, BuildError> {
    let list = kvm.msr_index_list().map_err(BuildError::Cpuid)?;
    Ok(msr::msrs_to_save(&list).into())
}

fn control_socket(config: &VmConfig) -> Result<Option<ControlEvents>, BuildError> {
    config
        .control
        .as_deref()
        .map(ControlEvents::bind)
        .transpose()
        .map_err(BuildError::Control)
}

/// The legacy devices and what the VM keeps of them.
struct Legacy {
    buses: IoBuses,
    reset_evt: EventFd,
    signals: Arc<GuestSignals>,
    serial: Arc<Mutex<Serial>>,
}

/// COM1 (IRQ 4; with `serial_state`, as saved), the i8042 reset line and the boot debug
/// port, on a fresh port bus.
fn legacy_devices(
    vm: &Vm,
    console: &Console,
    serial_state: Option<&SerialSnapshot>,
) -> Result<Legacy, BuildError> {
    let signals = Arc::new(GuestSignals::default());
    let new_evt = || EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd);
    let serial_irq = new_evt()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(BuildError::Vm)?;
    let console = ConsoleWriter::new(console_output(console)?, signals.clone());
    let trigger = EventFdTrigger::new(serial_irq);
    let serial = match serial_state {
        None => Serial::new(trigger, console),
        Some(state) => Serial::restore(trigger, console, state).map_err(BuildError::Serial)?,
    };
    let serial = Arc::new(Mutex::new(serial));
    let reset_evt = new_evt()?;
    let i8042 = I8042::new(EventFdTrigger::new(
        reset_evt.try_clone().map_err(BuildError::EventFd)?,
    ));
    let mut buses = IoBuses::default();
    let pio: [(SharedDevice, u64, u64); 3] = [
        (serial.clone(), SERIAL_PORT, 8),
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
    Ok(Legacy {
        buses,
        reset_evt,
        signals,
        serial,
    })
}

/// The virtio devices and what the VM keeps of them.
struct Virtio {
    subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// Every transport but virtio-fs's, in order (what a snapshot saves).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// The virtio devices on the MMIO bus: the disks, in the order given (the guest sees
/// /dev/vda, /dev/vdb, ...), then vsock, then the network device, then virtio-fs
/// devices (last, so that adding them moves no other device's slot or IRQ). With
/// `states`, each transport is as saved, in that same order.
fn virtio_devices(
    vm: &Vm,
    memory: &vm_memory::GuestMemoryMmap,
    buses: &mut IoBuses,
    cmdline: &mut Cmdline,
    config: &VmConfig,
    states: Option<&[TransportState]>,
) -> Result<Virtio, BuildError> {
    let mut device_manager = MmioDeviceManager::new();
    let mut subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> = Vec::new();
    let mut transports = Vec::new();
    let mut states = states.map(|s| s.iter());
    let mut add = |device: Box<dyn VirtioDevice>,
                   buses: &mut IoBuses,
                   cmdline: &mut Cmdline|
     -> Result<QueueEvents, BuildError> {
        let state = match states.as_mut() {
            Some(states) => Some(states.next().ok_or(BuildError::Layout)?),
            None => None,
        };
        let events = device_manager
            .add_virtio(vm, memory, buses, cmdline, device, state)
            .map_err(BuildError::Devices)?;
        Ok(events)
    };
    for disk in &config.disks {
        let block = Block::new(disk).map_err(BuildError::Disk)?;
        let events = add(Box::new(block), buses, cmdline)?;
        transports.push(events.transport());
        subscribers.push(Arc::new(Mutex::new(events)));
    }
    //    ...and the vsock device, whose host side listens on its Unix socket from now.
    if let Some(vsock) = &config.vsock {
        let backend = Backend::new(vsock.cid, &vsock.uds).map_err(BuildError::Vsock)?;
        let backend = Arc::new(Mutex::new(backend));
        let events = add(Box::new(Vsock::new(backend.clone())), buses, cmdline)?;
        transports.push(events.transport());
        subscribers.push(Arc::new(Mutex::new(VsockEvents::new(events, backend))));
    }
    //    ...and the network device on its TAP, which the event loop watches.
    if let Some(net) = &config.net {
        let tap = Tap::open(&net.tap).map_err(BuildError::Net)?;
        let tap_fd = tap.watch_fd().map_err(BuildError::Net)?;
        let events = add(Box::new(Net::new(net.mac, Box::new(tap))), buses, cmdline)?;
        transports.push(events.transport());
        subscribers.push(Arc::new(Mutex::new(NetEvents::new(events, tap_fd))));
    }
    //    ...and the virtio-fs devices, each connected to its backend from now.
    for fs in &config.fs {
        let device = Fs::new(fs).map_err(BuildError::Fs)?;
        let calls = device.call_events().map_err(BuildError::Dup)?;
        let socket = device.backend_socket().map_err(BuildError::Dup)?;
        let (health, tag) = (device.health(), device.tag().to_owned());
        let events = add(Box::new(device), buses, cmdline)?;
        subscribers.push(Arc::new(Mutex::new(FsEvents::new(
            events, calls, socket, health, tag,
        ))));
    }
    Ok(Virtio {
        subscribers,
        transports,
    })
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
