//! A built microVM and its run: one thread per vCPU, the event loop on the calling
//! thread, and the outcome the VMM exits with.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::signals::GuestSignals;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::Killable;

use devices::legacy::Serial;
use devices::virtio::mmio::MmioTransport;

use crate::control::{ControlEvents, Request};
use crate::memory::GuestRam;
use crate::persist::{self, SavedMachine, Snapshot};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::vstate::kvm::Kvm;
use crate::vstate::vcpu::{
    ANSWER_TIMEOUT, IoBuses, SYSTEM_EVENT_CRASH, SYSTEM_EVENT_RESET, SYSTEM_EVENT_SHUTDOWN, Vcpu,
    VcpuControl, VcpuEvent, install_kick_handler, kick_signal,
};
use crate::vstate::vm::Vm;

/// Errors of running a microVM (not of the guest: those are [`VmOutcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// A vCPU thread could not be started.
    #[error("Cannot start a vCPU thread")]
    Spawn(#[source] std::io::Error),
    /// The event loop failed.
    #[error("Event loop failed: {0}")]
    EventLoop(String),
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The seccomp filters could not be installed.
    #[error("Cannot confine the VMM")]
    Seccomp(#[source] SeccompError),
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest reset or powered off the machine (its reboot/poweroff).
    Shutdown,
    /// The guest kernel panicked (seen on the console, or reported by KVM).
    Panic,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// Which vCPU.
        vcpu: u8,
    },
    /// A vCPU failed in KVM, or KVM could not run the guest.
    VcpuFailed(String),
}

impl VmOutcome {
    /// The VMM's exit code: 0 clean shutdown, 1 VMM or KVM failure, 2 guest panic,
    /// 3 triple fault.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmOutcome::Shutdown => 0,
            VmOutcome::VcpuFailed(_) => 1,
            VmOutcome::Panic => 2,
            VmOutcome::TripleFault { .. } => 3,
        }
    }

    /// A sentence for the log.
    pub fn describe(&self) -> String {
        match self {
            VmOutcome::Shutdown => "guest shut down".to_owned(),
            VmOutcome::Panic => "guest kernel panicked".to_owned(),
            VmOutcome::TripleFault { vcpu } => {
                format!("vCPU {vcpu} triple-faulted (guest CPU shutdown)")
            }
            VmOutcome::VcpuFailed(why) => format!("vCPU failed: {why}"),
        }
    }
}

/// Timestamps of one boot, relative to VMM process start.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimeline {
    /// First `KVM_RUN` of the boot vCPU.
    pub first_run: Option<Duration>,
    /// The guest's first console byte.
    pub first_output: Option<Duration>,
    /// Guest init's marker on the debug port.
    pub init_reached: Option<Duration>,
    /// `arca-agent`'s ready marker on the debug port.
    pub agent_ready: Option<Duration>,
    /// The VM ended.
    pub ended: Option<Duration>,
}

impl std::fmt::Display for BootTimeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        write!(
            f,
            "boot-timing (ms since VMM start): first-kvm-run {} first-output {} init {} agent-ready {} end {}",
            ms(self.first_run),
            ms(self.first_output),
            ms(self.init_reached),
            ms(self.agent_ready),
            ms(self.ended)
        )
    }
}

/// A VM ready to run.
pub struct Microvm {
    // Kept alive for the VM's lifetime: KVM fds and the memory KVM maps.
    _kvm: Kvm,
    vm: Arc<Vm>,
    vcpus: Vec<Vcpu>,
    buses: IoBuses,
    reset_evt: EventFd,
    signals: Arc<GuestSignals>,
    subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    started: Instant,
    persist: PersistParts,
    control: Option<ControlEvents>,
    restored: bool,
    // Last: devices hold views of guest RAM, so it is unmapped after they are gone.
    ram: GuestRam,
}

/// What a snapshot reads besides KVM: the machine as configured and the devices.
#[derive(Debug)]
pub struct PersistParts {
    /// The machine.
    pub machine: SavedMachine,
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// The virtio transports a snapshot saves, in order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Why this VM cannot be snapshotted, if it cannot.
    pub refusal: Option<&'static str>,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    /// How the VM ended.
    pub outcome: VmOutcome,
    /// When things happened.
    pub timeline: BootTimeline,
}

/// What the builder hands over to make a [`Microvm`].
pub struct MicrovmParts {
    /// The KVM system handle.
    pub kvm: Kvm,
    /// The VM.
    pub vm: Arc<Vm>,
    /// Guest RAM.
    pub ram: GuestRam,
    /// Configured vCPUs.
    pub vcpus: Vec<Vcpu>,
    /// The port and MMIO buses with their devices.
    pub buses: IoBuses,
    /// The i8042's reset line.
    pub reset_evt: EventFd,
    /// What devices observed of the guest.
    pub signals: Arc<GuestSignals>,
    /// Device back-ends the event loop runs.
    pub subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// When the VMM process started.
    pub started: Instant,
    /// What snapshots read.
    pub persist: PersistParts,
    /// The control socket, if any.
    pub control: Option<ControlEvents>,
    /// Whether the VM was restored from a snapshot (not booted).
    pub restored: bool,
}

impl std::fmt::Debug for Microvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microvm")
            .field("vcpus", &self.vcpus.len())
            .field("buses", &self.buses)
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MicrovmParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrovmParts")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Microvm {
    pub(crate) fn new(parts: MicrovmParts) -> Self {
        Self {
            _kvm: parts.kvm,
            vm: parts.vm,
            vcpus: parts.vcpus,
            buses: parts.buses,
            reset_evt: parts.reset_evt,
            signals: parts.signals,
            subscribers: parts.subscribers,
            started: parts.started,
            persist: parts.persist,
            control: parts.control,
            restored: parts.restored,
            ram: parts.ram,
        }
    }

    /// Runs the VM until the guest shuts down, panics or fails. With `filters`, every
    /// vCPU thread installs the vCPU filter on itself and this thread the main one
    /// before any vCPU enters the guest.
    pub fn run(mut self, filters: Option<&Filters>) -> Result<RunReport, RunError> {
        install_kick_handler().map_err(RunError::KickHandler)?;
        if filters.is_some() {
            crate::seccomp::prepare().map_err(RunError::Seccomp)?;
        }
        let exit_evt = EventFd::new(EFD_NONBLOCK).map_err(RunError::EventFd)?;
        let first_outcome: Arc<Mutex<Option<VmOutcome>>> = Arc::default();
        let first_run: Arc<Mutex<Option<Instant>>> = Arc::default();

        // Everything that can fail is set up before the first vCPU runs.
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(|e| RunError::EventLoop(format!("{e:?}")))?;
        let watcher = Arc::new(Mutex::new(ExitWatcher {
            reset_evt: self.reset_evt.try_clone().map_err(RunError::EventFd)?,
            exit_evt: exit_evt.try_clone().map_err(RunError::EventFd)?,
            reset: false,
            done: false,
        }));
        manager.add_subscriber(watcher.clone());
        for subscriber in self.subscribers.drain(..) {
            manager.add_subscriber(subscriber);
        }
        let control = self.control.take().map(|c| Arc::new(Mutex::new(c)));
        if let Some(control) = &control {
            manager.add_subscriber(control.clone());
        }
        let mut thread_evts = Vec::with_capacity(self.vcpus.len());
        for _ in &self.vcpus {
            thread_evts.push(exit_evt.try_clone().map_err(RunError::EventFd)?);
        }

        // Every vCPU thread confines itself, then waits at the gate until this thread
        // has too.
        let gate = Arc::new(StartGate::default());

        // From here on the guard stops, kicks and joins every started vCPU thread on
        // every path out, so guest RAM is never unmapped under a running vCPU.
        let mut threads = VcpuThreads(Vec::new());
        for (mut vcpu, exit_evt) in self.vcpus.drain(..).zip(thread_evts) {
            let control = VcpuControl::new();
            let buses = self.buses.clone();
            let outcome = first_outcome.clone();
            let first_run = first_run.clone();
            let thread_control = control.clone();
            let filters = filters.cloned();
            let thread_gate = gate.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index()))
                .spawn(move || {
                    let confined = filters.map_or(Ok(()), |f| f.install(ThreadKind::Vcpu));
                    let go = thread_gate.arrive(confined.is_ok());
                    if let Err(e) = confined {
                        let failed = VmOutcome::VcpuFailed(crate::error_chain(&e));
                        outcome
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(failed);
                        let _ = exit_evt.write(1);
                    }
                    if !go {
                        return;
                    }
                    if vcpu.index() == 0 {
                        *first_run.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    }
                    let result = vcpu.run_controlled(&buses, &thread_control);
                    let ended = match result {
                        Ok(VcpuEvent::Stopped) => None,
                        Ok(event) => Some(outcome_of(vcpu.index(), event)),
                        Err(err) => Some(VmOutcome::VcpuFailed(crate::error_chain(&err))),
                    };
                    if let Some(ended) = ended {
                        outcome
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(ended);
                        let _ = exit_evt.write(1);
                    }
                })
                .map_err(|e| {
                    // The threads already started must not wait for this one.
                    gate.cancel();
                    RunError::Spawn(e)
                })?;
            threads.0.push((control, Some(handle)));
        }
        // This thread's filter, then the vCPUs go (unless one could not confine
        // itself: it has reported why and ends the loop below).
        let confined = filters.map_or(Ok(()), |f| f.install(ThreadKind::Main));
        gate.open(threads.0.len(), confined.is_ok());
        confined.map_err(RunError::Seccomp)?;

        // The event loop: wait for the guest's reset line or a vCPU's exit, and act on
        // control requests between events.
        let mut paused = false;
        while !watcher.lock().unwrap_or_else(|p| p.into_inner()).done {
            manager
                .run()
                .map_err(|e| RunError::EventLoop(format!("{e:?}")))?;
            let Some(control) = &control else { continue };
            let ready = control
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take_ready();
            for pending in ready {
                let result = match &pending.request {
                    Ok(request) => self.serve(request, &threads, &mut paused),
                    Err(why) => Err(why.clone()),
                };
                pending.answer(result);
            }
        }
        threads.stop_and_join();
        let ended = Instant::now();

        let reset = watcher.lock().unwrap_or_else(|p| p.into_inner()).reset;
        let vcpu_outcome = first_outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let outcome = match (vcpu_outcome, reset) {
            (Some(outcome), _) => outcome,
            (None, true) => VmOutcome::Shutdown,
            (None, false) => {
                VmOutcome::VcpuFailed("the event loop stopped with no cause".to_owned())
            }
        };
        // A panic message on the console turns a reset into a panic: with `panic=-1`
        // the kernel resets through the same i8042 line as a clean reboot.
        let outcome = if outcome == VmOutcome::Shutdown && self.signals.panicked() {
            VmOutcome::Panic
        } else {
            outcome
        };
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.started));
        let first_run = *first_run.lock().unwrap_or_else(|p| p.into_inner());
        let timeline = BootTimeline {
            first_run: since(first_run),
            first_output: since(self.signals.first_output()),
            init_reached: since(self.signals.init_reached()),
            agent_ready: since(self.signals.agent_ready()),
            ended: since(Some(ended)),
        };
        Ok(RunReport { outcome, timeline })
    }
}

impl Microvm {
    /// Acts on a control request.
    fn serve(
        &self,
        request: &Request,
        threads: &VcpuThreads,
        paused: &mut bool,
    ) -> Result<(), String> {
        match request {
            Request::Pause if *paused => Err("the VM is paused already".to_owned()),
            Request::Pause => {
                threads.pause().inspect_err(|_| threads.resume())?;
                *paused = true;
                Ok(())
            }
            Request::Resume if !*paused => Err("the VM is not paused".to_owned()),
            Request::Resume => {
                threads.resume();
                *paused = false;
                Ok(())
            }
            Request::Snapshot { .. } if !*paused => {
                Err("the VM is not paused: pause it first".to_owned())
            }
            Request::Snapshot { state, memory } => {
                if let Some(why) = self.persist.refusal {
                    return Err(why.to_owned());
                }
                let snapshot = self.snapshot(threads).map_err(|e| e.to_string())?;
                persist::write_memory(memory, &self.ram.memory)
                    .and_then(|()| snapshot.write(state))
                    .map_err(|e| crate::error_chain(&e))
            }
        }
    }

    /// Reads the paused VM's state: KVM's, every vCPU's (each on its own thread), and
    /// the devices'.
    fn snapshot(&self, threads: &VcpuThreads) -> Result<Snapshot, String> {
        let vm = self.vm.save_state().map_err(|e| crate::error_chain(&e))?;
        let mut vcpus = Vec::with_capacity(threads.0.len());
        for (index, (control, _)) in threads.0.iter().enumerate() {
            match control.save(ANSWER_TIMEOUT) {
                Some(Ok(state)) => vcpus.push(*state),
                Some(Err(e)) => return Err(crate::error_chain(&e)),
                None => {
                    return Err(format!(
                        "vCPU {index} did not save its state within {} s",
                        ANSWER_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        let lock =
            |t: &Arc<Mutex<MmioTransport>>| t.lock().unwrap_or_else(|p| p.into_inner()).state();
        Ok(Snapshot {
            format: persist::FORMAT.to_owned(),
            version: persist::VERSION,
            machine: self.persist.machine.clone(),
            vm,
            vcpus,
            serial: self
                .persist
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state(),
            devices: self.persist.transports.iter().map(lock).collect(),
        })
    }

    /// Whether the VM was restored from a snapshot.
    pub fn is_restored(&self) -> bool {
        self.restored
    }
}

/// Where vCPU threads wait, each confined by its filter, until the main thread is too:
/// no guest instruction runs before every thread of the VMM has its filter.
#[derive(Debug, Default)]
struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    failed: bool,
    go: Option<bool>,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A vCPU thread is here (`ok`: it confined itself); returns whether to run.
    fn arrive(&self, ok: bool) -> bool {
        let mut state = self.lock();
        state.arrived += 1;
        state.failed |= !ok;
        self.changed.notify_all();
        loop {
            if let Some(go) = state.go {
                return go;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The main thread (`ok`: it confined itself) opens the gate once all `threads`
    /// arrived: they run if every thread is confined.
    fn open(&self, threads: usize, ok: bool) {
        let mut state = self.lock();
        while state.arrived < threads {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.go = Some(ok && !state.failed);
        self.changed.notify_all();
    }

    /// Nobody runs.
    fn cancel(&self) {
        self.lock().go = Some(false);
        self.changed.notify_all();
    }
}

/// The running vCPU threads; dropping the set stops and joins them.
struct VcpuThreads(Vec<(Arc<VcpuControl>, Option<JoinHandle<()>>)>);

impl VcpuThreads {
    /// Parks every vCPU: flag, kick out of `KVM_RUN`, wait until each is parked.
    fn pause(&self) -> Result<(), String> {
        for (control, _) in &self.0 {
            control.request_pause();
        }
        for (_, handle) in &self.0 {
            if let Some(handle) = handle {
                let _ = handle.kill(kick_signal());
            }
        }
        for (index, (control, _)) in self.0.iter().enumerate() {
            if !control.wait_paused(ANSWER_TIMEOUT) {
                return Err(format!(
                    "vCPU {index} did not pause within {} s",
                    ANSWER_TIMEOUT.as_secs()
                ));
            }
        }
        Ok(())
    }

    /// Lets every vCPU run again.
    fn resume(&self) {
        for (control, _) in &self.0 {
            control.resume();
        }
    }

    /// Stops every vCPU: flag, then kick out of `KVM_RUN`, then join.
    fn stop_and_join(&mut self) {
        for (control, _) in &self.0 {
            control.request_stop();
        }
        for (_, handle) in &self.0 {
            if let Some(handle) = handle {
                let _ = handle.kill(kick_signal());
            }
        }
        for (_, handle) in &mut self.0 {
            if let Some(handle) = handle.take() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn outcome_of(vcpu: u8, event: VcpuEvent) -> VmOutcome {
    match event {
        VcpuEvent::Shutdown => VmOutcome::TripleFault { vcpu },
        VcpuEvent::SystemEvent(SYSTEM_EVENT_SHUTDOWN | SYSTEM_EVENT_RESET) | VcpuEvent::Halted => {
            VmOutcome::Shutdown
        }
        VcpuEvent::SystemEvent(SYSTEM_EVENT_CRASH) => VmOutcome::Panic,
        VcpuEvent::SystemEvent(other) => {
            VmOutcome::VcpuFailed(format!("unknown KVM system event {other}"))
        }
        VcpuEvent::Stopped => VmOutcome::Shutdown,
    }
}

/// Ends the event loop when the guest pulses the reset line or a vCPU thread stops.
struct ExitWatcher {
    reset_evt: EventFd,
    exit_evt: EventFd,
    reset: bool,
    done: bool,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        if events.fd() == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.reset = true;
        } else {
            let _ = self.exit_evt.read();
        }
        self.done = true;
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.reset_evt, &self.exit_evt] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                // Without these fds the loop could never end: give up at once.
                eprintln!("arca-vmm: cannot watch an exit event: {e:?}");
                self.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_distinct_exit_codes() {
        assert_eq!(VmOutcome::Shutdown.exit_code(), 0);
        assert_eq!(VmOutcome::VcpuFailed(String::new()).exit_code(), 1);
        assert_eq!(VmOutcome::Panic.exit_code(), 2);
        assert_eq!(VmOutcome::TripleFault { vcpu: 1 }.exit_code(), 3);
    }

    #[test]
    fn kvm_exits_map_to_outcomes() {
        assert_eq!(
            outcome_of(1, VcpuEvent::Shutdown),
            VmOutcome::TripleFault { vcpu: 1 }
        );
        assert_eq!(
            outcome_of(0, VcpuEvent::SystemEvent(SYSTEM_EVENT_RESET)),
            VmOutcome::Shutdown
        );
        assert_eq!(
            outcome_of(0, VcpuEvent::SystemEvent(SYSTEM_EVENT_CRASH)),
            VmOutcome::Panic
        );
        assert!(matches!(
            outcome_of(0, VcpuEvent::SystemEvent(99)),
            VmOutcome::VcpuFailed(_)
        ));
    }
}
