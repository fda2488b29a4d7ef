//! A vCPU: its boot registers, its saved state (for snapshots), and its run loop, which
//! hands port and MMIO exits to the buses and obeys pause, resume, save and stop
//! requests from other threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use devices::bus::Bus;
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_debugregs,
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_run, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::msr::boot_msrs;
use crate::arch::x86_64::regs::{BootProtocol, boot_fpu, boot_regs, boot_sregs};

/// Errors of vCPU setup and of `KVM_RUN`.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("Cannot create a vCPU")]
    Create(#[source] kvm_ioctls::Error),
    /// A setup ioctl failed.
    #[error("{what} failed on vCPU {index}")]
    Setup {
        /// The vCPU's index.
        index: u8,
        /// The ioctl.
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some of the boot MSRs.
    #[error("KVM set {set} of {wanted} boot MSRs on vCPU {index}")]
    MsrsIncomplete {
        /// The vCPU's index.
        index: u8,
        /// How many KVM set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// KVM restored only some of a snapshot's MSRs.
    #[error(
        "KVM restored {set} of {wanted} saved MSRs on vCPU {index} (first refused: {refused:#x})"
    )]
    MsrsRefused {
        /// The vCPU's index.
        index: u8,
        /// How many KVM took.
        set: usize,
        /// How many there were.
        wanted: usize,
        /// The first MSR KVM refused.
        refused: u32,
    },
    /// The vCPU did not answer a pause or save request in time.
    #[error("vCPU {index} did not {what} within {secs} s")]
    NoAnswer {
        /// The vCPU's index.
        index: u8,
        /// What it was asked.
        what: &'static str,
        /// How long it was given.
        secs: u64,
    },
    /// A CPUID or MSR list does not fit KVM's fixed-size array.
    #[error("Too many CPUID or MSR entries for KVM")]
    TooManyEntries,
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

/// `KVM_SYSTEM_EVENT_SHUTDOWN`.
pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// `KVM_SYSTEM_EVENT_RESET`.
pub const SYSTEM_EVENT_RESET: u32 = 2;
/// `KVM_SYSTEM_EVENT_CRASH`.
pub const SYSTEM_EVENT_CRASH: u32 = 3;

/// Why [`Vcpu::run`] returned: an exit that the VMM, not a device, must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest executed `hlt` and KVM handed it to userspace (no in-kernel LAPIC).
    Halted,
    /// The guest triple-faulted or otherwise shut the CPU down.
    Shutdown,
    /// The guest asked for a reset, power-off or crash report (`KVM_EXIT_SYSTEM_EVENT`).
    SystemEvent(u32),
    /// Another thread asked this vCPU to stop.
    Stopped,
}

/// The bus a vCPU sends its exits to: one address space for ports, one for MMIO.
#[derive(Debug, Default, Clone)]
pub struct IoBuses {
    /// Port I/O (`in`/`out`).
    pub pio: Bus,
    /// Memory-mapped I/O outside guest RAM.
    pub mmio: Bus,
}

impl IoBuses {
    /// Hands a port or MMIO exit to its device; any other exit comes back. Accesses no
    /// device claims read as all ones and are dropped when written, as on a PC with
    /// nothing at that address.
    fn serve<'a>(&self, exit: kvm_ioctls::VcpuExit<'a>) -> Result<(), kvm_ioctls::VcpuExit<'a>> {
        use kvm_ioctls::VcpuExit;
        match exit {
            VcpuExit::IoOut(port, data) => {
                self.pio.write(u64::from(port), data);
            }
            VcpuExit::IoIn(port, data) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                self.mmio.write(addr, data);
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            other => return Err(other),
        }
        Ok(())
    }
}

const STATE_RUN: u8 = 0;
const STATE_PAUSE: u8 = 1;
const STATE_STOP: u8 = 2;

/// The most exits served while completing a paused vCPU's pending I/O.
pub const MAX_COMPLETION_EXITS: usize = 64;

/// How long a vCPU has to park after a pause request, or to save its state.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What other threads want a vCPU to do: run, pause, save its state while paused, or
/// stop. Requests take effect at the next exit; sending [`kick_signal`] to the vCPU
/// thread forces one.
#[derive(Debug, Default)]
pub struct VcpuControl {
    state: AtomicU8,
    parked: Mutex<Parked>,
    wake: Condvar,
}

/// What the parked side of a [`VcpuControl`] shares with its requesters.
#[derive(Debug, Default)]
struct Parked {
    /// The vCPU is parked in a pause.
    paused: bool,
    /// A save is asked for and not yet done.
    save_wanted: bool,
    /// The last save's result, until taken.
    saved: Option<Result<Box<VcpuState>, VcpuError>>,
}

/// What a parked vCPU is told to do next.
enum Settled {
    Run,
    Save,
    Stop,
}

impl VcpuControl {
    /// A control in the running state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the vCPU to pause at its next exit.
    pub fn request_pause(&self) {
        self.state.store(STATE_PAUSE, Ordering::SeqCst);
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&self) {
        self.set_and_wake(STATE_RUN);
    }

    /// Asks the vCPU to stop for good at its next exit.
    pub fn request_stop(&self) {
        self.set_and_wake(STATE_STOP);
    }

    /// Changes the state under the lock `settle` checks it under, so that a parked
    /// vCPU cannot miss the wake-up between its check and its wait.
    fn set_and_wake(&self, state: u8) {
        let _parked = self.lock();
        self.state.store(state, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// Whether the vCPU is parked in a pause.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Waits until the vCPU is parked in the pause asked for, at most `timeout`.
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut parked = self.lock();
        while !parked.paused {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.state.load(Ordering::SeqCst) != STATE_PAUSE {
                return false;
            }
            parked = self
                .wake
                .wait_timeout(parked, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Has the paused vCPU save its state and waits for it, at most `timeout`; `None`
    /// when it did not answer in time.
    pub fn save(&self, timeout: Duration) -> Option<Result<Box<VcpuState>, VcpuError>> {
        let deadline = Instant::now() + timeout;
        let mut parked = self.lock();
        parked.saved = None;
        parked.save_wanted = true;
        self.wake.notify_all();
        loop {
            if let Some(saved) = parked.saved.take() {
                return Some(saved);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                parked.save_wanted = false;
                return None;
            }
            parked = self
                .wake
                .wait_timeout(parked, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Hands a save's result to the requester.
    fn saved(&self, result: Result<Box<VcpuState>, VcpuError>) {
        let mut parked = self.lock();
        parked.saved = Some(result);
        self.wake.notify_all();
    }

    /// Blocks while the state is "pause" and no save is wanted; says what to do next.
    fn settle(&self) -> Settled {
        let mut parked = self.lock();
        loop {
            match self.state.load(Ordering::SeqCst) {
                STATE_STOP => {
                    parked.paused = false;
                    return Settled::Stop;
                }
                STATE_PAUSE if parked.save_wanted => {
                    parked.save_wanted = false;
                    return Settled::Save;
                }
                STATE_PAUSE => {
                    if !parked.paused {
                        parked.paused = true;
                        self.wake.notify_all();
                    }
                    parked = self.wake.wait(parked).unwrap_or_else(|p| p.into_inner());
                }
                _ => {
                    parked.paused = false;
                    return Settled::Run;
                }
            }
        }
    }

    fn wants_attention(&self) -> bool {
        self.state.load(Ordering::SeqCst) != STATE_RUN
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run` page, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN_PTR.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was taken from this thread's live VcpuFd mapping right
        // before its run loop and is cleared when the loop ends, so it points to a
        // mapped `kvm_run`; taking a field's address creates no reference. (While the
        // run loop hands exit data to a device, kvm-ioctls holds a reference to the
        // exit's part of the page; `immediate_exit` lies outside it, and this is how
        // Firecracker and Cloud Hypervisor kick vCPUs too.)
        let field = unsafe { &raw mut (*run).immediate_exit };
        // SAFETY: `field` is a valid, aligned byte of that mapping, which KVM reads at
        // entry; a volatile store from a signal handler on the owning thread is sound.
        unsafe { std::ptr::write_volatile(field, 1) };
    }
}

/// Installs the kick signal handler (once per process, before vCPU threads start).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
}

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: kvm_ioctls::VcpuFd,
    /// The MSRs a snapshot saves (see `msr::msrs_to_save`).
    saved_msrs: Arc<[u32]>,
}

/// Everything KVM holds of one vCPU, as a snapshot keeps it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest sees.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every saveable MSR KVM could read.
    pub msrs: Vec<kvm_msr_entry>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC.
    pub lapic: kvm_lapic_state,
    /// Running, halted, or waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// The TSC's frequency the guest calibrated against, when KVM could say.
    #[serde(default)]
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("cpuid", &self.cpuid.len())
            .field("msrs", &self.msrs.len())
            .field("mp_state", &self.mp_state.mp_state)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    pub(super) fn new(index: u8, fd: kvm_ioctls::VcpuFd, saved_msrs: Arc<[u32]>) -> Self {
        Self {
            index,
            fd,
            saved_msrs,
        }
    }

    /// This vCPU's index (its APIC ID).
    pub fn index(&self) -> u8 {
        self.index
    }

    fn setup_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Setup {
            index,
            what,
            source,
        }
    }

    /// Gives the vCPU its CPUID, boot MSRs, LAPIC LINT wiring and, for the boot
    /// processor, the registers to enter the kernel at `entry` with `protocol`.
    /// (Application processors wait for INIT/SIPI in the in-kernel LAPIC.)
    pub fn configure(
        &self,
        cpuid: &[kvm_cpuid_entry2],
        protocol: BootProtocol,
        entry: u64,
    ) -> Result<(), VcpuError> {
        let cpuid = CpuId::from_entries(cpuid).map_err(|_| VcpuError::TooManyEntries)?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.setup_err("KVM_SET_CPUID2"))?;
        let entries = boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::TooManyEntries)?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.setup_err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::MsrsIncomplete {
                index: self.index,
                set,
                wanted: entries.len(),
            });
        }
        if self.index == 0 {
            self.fd
                .set_regs(&boot_regs(protocol, entry))
                .map_err(self.setup_err("KVM_SET_REGS"))?;
            self.fd
                .set_fpu(&boot_fpu())
                .map_err(self.setup_err("KVM_SET_FPU"))?;
            let sregs = self
                .fd
                .get_sregs()
                .map_err(self.setup_err("KVM_GET_SREGS"))?;
            self.fd
                .set_sregs(&boot_sregs(sregs, protocol))
                .map_err(self.setup_err("KVM_SET_SREGS"))?;
        }
        self.setup_lint()
    }

    /// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as on a PC.
    fn setup_lint(&self) -> Result<(), VcpuError> {
        const APIC_LVT0: usize = 0x350;
        const APIC_LVT1: usize = 0x360;
        const MODE_NMI: u32 = 0x4;
        const MODE_EXTINT: u32 = 0x7;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.setup_err("KVM_GET_LAPIC"))?;
        for (offset, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                lapic.regs[offset + i] = b as libc::c_char;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(self.setup_err("KVM_SET_LAPIC"))
    }

    /// Completes an I/O exit the run loop has answered but KVM has not yet taken in (a
    /// port or MMIO read's data goes into the guest's registers only at the next
    /// `KVM_RUN`): entries with `immediate_exit` set do that and return at once. An
    /// instruction that needs more exits to finish (a `rep ins`, an access split across
    /// pages) gets them served through `buses`, at most [`MAX_COMPLETION_EXITS`].
    fn complete_pending_io(&mut self, buses: &IoBuses) -> Result<(), VcpuError> {
        let index = self.index;
        self.fd.set_kvm_immediate_exit(1);
        let mut result = Err(VcpuError::Unhandled {
            index,
            reason: format!(
                "I/O still pending after {MAX_COMPLETION_EXITS} exits while saving its state"
            ),
        });
        for _ in 0..MAX_COMPLETION_EXITS {
            match self.fd.run() {
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    result = Ok(());
                    break;
                }
                Err(source) => {
                    result = Err(VcpuError::Run { index, source });
                    break;
                }
                Ok(exit) => {
                    if let Err(exit) = buses.serve(exit) {
                        result = Err(VcpuError::Unhandled {
                            index,
                            reason: format!("{exit:?} while completing I/O to save the state"),
                        });
                        break;
                    }
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        result
    }

    /// Reads the vCPU's whole state (after completing any pending I/O through
    /// `buses`).
    pub fn save_state(&mut self, buses: &IoBuses) -> Result<VcpuState, VcpuError> {
        self.complete_pending_io(buses)?;
        let get = |what| self.setup_err(what);
        let mp_state = self.fd.get_mp_state().map_err(get("KVM_GET_MP_STATE"))?;
        let regs = self.fd.get_regs().map_err(get("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(get("KVM_GET_SREGS"))?;
        let xsave = self.fd.get_xsave().map_err(get("KVM_GET_XSAVE"))?;
        let xcrs = self.fd.get_xcrs().map_err(get("KVM_GET_XCRS"))?;
        let debug_regs = self.fd.get_debug_regs().map_err(get("KVM_GET_DEBUGREGS"))?;
        let lapic = self.fd.get_lapic().map_err(get("KVM_GET_LAPIC"))?;
        let cpuid = self
            .fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(get("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = self.read_msrs()?;
        let events = self
            .fd
            .get_vcpu_events()
            .map_err(get("KVM_GET_VCPU_EVENTS"))?;
        let tsc_khz = self.fd.get_tsc_khz().ok().filter(|&khz| khz > 0);
        Ok(VcpuState {
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            events,
            tsc_khz,
        })
    }

    /// Reads every MSR in the save list that KVM can read: `KVM_GET_MSRS` stops at the
    /// first it cannot (KVM lists some a given host does not back), which is skipped.
    fn read_msrs(&self) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let mut out = Vec::with_capacity(self.saved_msrs.len());
        let mut rest: &[u32] = &self.saved_msrs;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::TooManyEntries)?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(self.setup_err("KVM_GET_MSRS"))?;
            out.extend_from_slice(&msrs.as_slice()[..read.min(chunk.len())]);
            // Past the ones read, and past the one that failed, if one did.
            let next = if read < chunk.len() { read + 1 } else { read };
            rest = &rest[next..];
        }
        Ok(out)
    }

    /// Gives the vCPU a saved state, in the order KVM needs: CPUID first (it decides
    /// which MSRs and XSAVE features exist), MSRs after the registers and LAPIC (the
    /// TSC deadline last of them), pending events last.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuError> {
        let set = |what| self.setup_err(what);
        // The guest calibrated its delays and clocks against this frequency: a host
        // whose TSC runs at another has KVM scale it, or the restore is refused.
        if let Some(khz) = state.tsc_khz
            && self.fd.get_tsc_khz().ok() != Some(khz)
        {
            self.fd
                .set_tsc_khz(khz)
                .map_err(set("KVM_SET_TSC_KHZ (the snapshot's TSC frequency)"))?;
        }
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::TooManyEntries)?;
        self.fd.set_cpuid2(&cpuid).map_err(set("KVM_SET_CPUID2"))?;
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(set("KVM_SET_MP_STATE"))?;
        self.fd.set_regs(&state.regs).map_err(set("KVM_SET_REGS"))?;
        self.fd
            .set_sregs(&state.sregs)
            .map_err(set("KVM_SET_SREGS"))?;
        // SAFETY: `xsave` is a whole `kvm_xsave` as KVM_GET_XSAVE filled it (4 KiB, no
        // trailing extension: the snapshot never holds an XSAVE2 buffer), which is what
        // KVM_SET_XSAVE reads.
        unsafe { self.fd.set_xsave(&state.xsave) }.map_err(set("KVM_SET_XSAVE"))?;
        self.fd.set_xcrs(&state.xcrs).map_err(set("KVM_SET_XCRS"))?;
        self.fd
            .set_debug_regs(&state.debug_regs)
            .map_err(set("KVM_SET_DEBUGREGS"))?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(set("KVM_SET_LAPIC"))?;
        for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuError::TooManyEntries)?;
            let done = self.fd.set_msrs(&msrs).map_err(set("KVM_SET_MSRS"))?;
            if done != chunk.len() {
                return Err(VcpuError::MsrsRefused {
                    index: self.index,
                    set: done,
                    wanted: chunk.len(),
                    refused: chunk[done].index,
                });
            }
        }
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(set("KVM_SET_VCPU_EVENTS"))?;
        // The guest was paused: a guest on kvm-clock is told so, and does not take the
        // time it lay on disk for a soft lockup. (Fails harmlessly on a guest that has
        // not set kvm-clock up.)
        let _ = self.fd.kvmclock_ctrl();
        Ok(())
    }

    /// Puts the vCPU in 16-bit real mode with flat segments, starting at `ip`.
    pub fn setup_real_mode(&self, ip: u16) -> Result<(), VcpuError> {
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(self.setup_err("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        self.fd
            .set_sregs(&sregs)
            .map_err(self.setup_err("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: u64::from(ip),
            rflags: 0x2, // bit 1 is reserved and must be set
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(self.setup_err("KVM_SET_REGS"))
    }

    /// Runs the guest without outside control (see [`Vcpu::run_controlled`]).
    pub fn run(&mut self, buses: &IoBuses) -> Result<VcpuEvent, VcpuError> {
        self.run_controlled(buses, &VcpuControl::default())
    }

    /// Runs the guest, handing every port and MMIO access to `buses`, until an exit that
    /// needs the VMM or a stop request on `control`. Pause requests park the thread here
    /// until resumed. Accesses no device claims read as all ones and are dropped when
    /// written, as on a PC with nothing at that address.
    pub fn run_controlled(
        &mut self,
        buses: &IoBuses,
        control: &VcpuControl,
    ) -> Result<VcpuEvent, VcpuError> {
        KVM_RUN_PTR.with(|p| p.set(self.fd.get_kvm_run()));
        let result = self.run_loop(buses, control);
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        result
    }

    fn run_loop(&mut self, buses: &IoBuses, control: &VcpuControl) -> Result<VcpuEvent, VcpuError> {
        use kvm_ioctls::VcpuExit;
        let index = self.index;
        loop {
            while control.wants_attention() {
                match control.settle() {
                    Settled::Run => break,
                    Settled::Stop => return Ok(VcpuEvent::Stopped),
                    Settled::Save => {
                        let saved = self.save_state(buses).map(Box::new);
                        control.saved(saved);
                    }
                }
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(source) => return Err(VcpuError::Run { index, source }),
            };
            let Err(exit) = buses.serve(exit) else {
                continue;
            };
            return match exit {
                VcpuExit::Hlt => Ok(VcpuEvent::Halted),
                VcpuExit::Shutdown => Ok(VcpuEvent::Shutdown),
                VcpuExit::SystemEvent(kind, _) => Ok(VcpuEvent::SystemEvent(kind)),
                VcpuExit::FailEntry(reason, cpu) => Err(VcpuError::Unhandled {
                    index,
                    reason: format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"),
                }),
                VcpuExit::InternalError => Err(VcpuError::Unhandled {
                    index,
                    reason: "KVM_EXIT_INTERNAL_ERROR (KVM could not emulate an instruction)"
                        .to_owned(),
                }),
                other => Err(VcpuError::Unhandled {
                    index,
                    reason: format!("{other:?}"),
                }),
            };
        }
    }
}
