//! The VMM's seccomp filters: one allow-list per thread kind, installed by each thread
//! on itself before the first guest instruction runs (see `Microvm::run`). What a
//! thread may call is what it was seen to call while booting a guest with every device
//! and serving it (blk, vsock, net, virtio-fs, `-p`, `exec`, `cp`), with the argument
//! checks Firecracker makes where the call could do more than that (ioctl numbers,
//! `mmap` and `mprotect` without `PROT_EXEC`, `clone` only for threads, futex
//! operations, signals). Anything else traps: the SIGSYS handler names the thread and
//! the system call on stderr and the process dies by SIGSYS (or, as the init of its
//! pid namespace, where a signal it sends itself is not delivered, exits with
//! [`EXIT_BAD_SYSCALL`], which the jail's supervisor turns back into death by SIGSYS).
//!
//! Threads a thread starts later (virtio-fs watchdogs, started by the vCPU that
//! activates the device) inherit its filter.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The exit code of a VMM whose SIGSYS could not kill it (Firecracker's, too).
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// Errors of the seccomp filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter could not be compiled (a bug in the rules).
    #[error("Cannot build the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// A filter could not be compiled to BPF.
    #[error("Cannot compile the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused a filter.
    #[error("Cannot install the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("Cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// `no_new_privs` could not be set.
    #[error("Cannot set no_new_privs before installing the seccomp filters")]
    NoNewPrivs(#[source] std::io::Error),
}

/// The kinds of VMM threads, each with its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the event loop and every device back-end it runs.
    Main,
    /// A vCPU thread: `KVM_RUN` and the port and MMIO accesses it hands to devices.
    Vcpu,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

/// The compiled filters.
#[derive(Debug, Clone)]
pub struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
    // clone3 fails with ENOSYS so that threads are made with clone(2), whose flags a
    // filter can check (clone3 passes them in memory).
    clone3_enosys: BpfProgram,
}

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// KVM's ioctl type.
const KVMIO: u32 = 0xae;

vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_bindings::kvm_msrs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_bindings::kvm_cpuid2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_VCPU_EVENTS,
    KVMIO,
    0x9f,
    kvm_bindings::kvm_vcpu_events
);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_bindings::kvm_debugregs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_bindings::kvm_xsave);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_bindings::kvm_xcrs);
vmm_sys_util::ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_bindings::kvm_irqchip);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_bindings::kvm_pit_state2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_bindings::kvm_clock_data);

/// What a vCPU thread reads of itself for a snapshot.
fn vcpu_snapshot_ioctls() -> [u64; 11] {
    [
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_GET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_GET_TSC_KHZ(),
    ]
    .map(u64::from)
}

/// What the main thread reads of the VM for a snapshot.
fn vm_snapshot_ioctls() -> [u64; 3] {
    [KVM_GET_IRQCHIP(), KVM_GET_PIT2(), KVM_GET_CLOCK()].map(u64::from)
}

/// The kick signal (see `vstate::vcpu::kick_signal`).
fn kick() -> u64 {
    crate::vstate::vcpu::kick_signal() as u64
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Only the argument index can make `new` fail, and every index below is < 6.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .unwrap_or_else(|e| panic!("bad seccomp condition on argument {arg}: {e}"))
}

fn eq(arg: u8, value: u64) -> SeccompCondition {
    cond(arg, SeccompCmpOp::Eq, value)
}

fn masked(arg: u8, mask: u64, value: u64) -> SeccompCondition {
    cond(arg, SeccompCmpOp::MaskedEq(mask), value)
}

/// The rules of a filter being written: syscall -> alternatives, each a conjunction of
/// argument conditions; no alternative means always.
#[derive(Default)]
struct Rules(BTreeMap<i64, Vec<Vec<SeccompCondition>>>);

impl Rules {
    fn allow(&mut self, syscalls: &[libc::c_long]) -> &mut Self {
        for nr in syscalls {
            self.0.insert(*nr, Vec::new());
        }
        self
    }

    /// Allows `syscall` when one of `alternatives` holds.
    fn when(
        &mut self,
        syscall: libc::c_long,
        alternatives: Vec<Vec<SeccompCondition>>,
    ) -> &mut Self {
        self.0.entry(syscall).or_default().extend(alternatives);
        self
    }

    /// Allows `syscall` when argument `arg` is one of `values`.
    fn one_of(&mut self, syscall: libc::c_long, arg: u8, values: &[u64]) -> &mut Self {
        self.when(syscall, values.iter().map(|v| vec![eq(arg, *v)]).collect())
    }

    fn compile(&self, what: &'static str) -> Result<BpfProgram, SeccompError> {
        let mut rules = BTreeMap::new();
        for (nr, alternatives) in &self.0 {
            let alternatives = alternatives
                .iter()
                .map(|conds| SeccompRule::new(conds.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SeccompError::Build(what, e))?;
            rules.insert(*nr, alternatives);
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(what, e))?;
        filter
            .try_into()
            .map_err(|e| SeccompError::Compile(what, e))
    }
}

/// What every VMM thread does: memory, threads, locks, signals, time, exit, writing to
/// its descriptors (stderr, eventfds).
fn common() -> Rules {
    use libc::*;
    let mut r = Rules::default();
    r.allow(&[
        SYS_read,
        SYS_write,
        SYS_readv,
        SYS_writev,
        SYS_close,
        SYS_exit,
        SYS_exit_group,
        SYS_brk,
        SYS_munmap,
        SYS_mremap,
        SYS_rt_sigreturn,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_rseq,
        SYS_set_robust_list,
        SYS_gettid,
        SYS_getpid,
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_getrandom,
        // Made to fail with ENOSYS by the filter stacked on this one.
        SYS_clone3,
    ]);
    // Anonymous private memory only, never executable (the guest's memory was mapped
    // before the filter).
    let no_exec = masked(2, PROT_EXEC as u64, 0);
    let private_anon = masked(
        3,
        (MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS) as u64,
        (MAP_PRIVATE | MAP_ANONYMOUS) as u64,
    );
    r.when(SYS_mmap, vec![vec![no_exec.clone(), private_anon]]);
    r.when(SYS_mprotect, vec![vec![no_exec]]);
    r.one_of(SYS_madvise, 2, &[MADV_DONTNEED as u64]);
    // Threads, not processes.
    r.when(
        SYS_clone,
        vec![vec![masked(0, CLONE_THREAD as u64, CLONE_THREAD as u64)]],
    );
    // Wait and wake, private or not, with either clock.
    let cmd = !((FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME) as u32) as u64;
    r.when(
        SYS_futex,
        [FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET]
            .iter()
            .map(|op| vec![masked(1, cmd, *op as u64)])
            .collect(),
    );
    r.one_of(SYS_prctl, 0, &[PR_SET_NAME as u64]);
    // abort() on a panic, the SIGSYS handler, the vCPU kick.
    r.one_of(SYS_rt_sigaction, 0, &[SIGABRT as u64, SIGSYS as u64]);
    r.one_of(SYS_tgkill, 2, &[SIGABRT as u64, SIGSYS as u64, kick()]);
    // vhost-user exchanges with virtiofsd (activation runs on a vCPU, requests on the
    // event loop), each bounded by a watchdog on a duplicate of the socket.
    r.allow(&[SYS_sendmsg, SYS_recvmsg, SYS_shutdown]);
    r.one_of(
        SYS_fcntl,
        1,
        &[
            F_DUPFD_CLOEXEC as u64,
            F_GETFD as u64,
            F_SETFD as u64,
            F_GETFL as u64,
            F_SETFL as u64,
        ],
    );
    r
}

/// The main thread's filter: the event loop and the device back-ends.
fn main_rules() -> Rules {
    use libc::*;
    let mut r = common();
    r.allow(&[
        SYS_epoll_wait,
        SYS_epoll_pwait,
        SYS_epoll_ctl,
        // vsock: host connections, and guest connections to host ports (a path in the
        // jail's empty root: they fail and the guest gets a reset).
        SYS_recvfrom,
        SYS_sendto,
        SYS_connect,
        SYS_timerfd_settime,
        // Block requests.
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_fsync,
        SYS_fdatasync,
        // The vsock and control sockets' removal at exit (a path in the jail: it
        // fails there).
        SYS_unlink,
        // Snapshots: the files the control client passed are emptied and sized.
        SYS_ftruncate,
    ]);
    r.one_of(SYS_accept4, 3, &[SOCK_CLOEXEC as u64]);
    r.one_of(SYS_socket, 0, &[AF_UNIX as u64]);
    // The control socket checks who connected.
    r.when(
        SYS_getsockopt,
        vec![vec![eq(1, SOL_SOCKET as u64), eq(2, SO_PEERCRED as u64)]],
    );
    let mut ioctls = vec![FIONBIO];
    ioctls.extend(vm_snapshot_ioctls());
    r.one_of(SYS_ioctl, 1, &ioctls);
    r
}

/// A vCPU thread's filter: `KVM_RUN`, what device accesses on it lead to (the TAP's
/// offloads when the guest's driver sets its features, virtio-fs activation), and
/// reading its own state for a snapshot.
fn vcpu_rules() -> Rules {
    use libc::*;
    let mut r = common();
    let mut ioctls = vec![KVM_RUN, TUNSETOFFLOAD, TUNSETVNETHDRSZ];
    ioctls.extend(vcpu_snapshot_ioctls());
    r.one_of(SYS_ioctl, 1, &ioctls);
    r
}

impl Filters {
    /// Compiles the filters.
    pub fn new() -> Result<Self, SeccompError> {
        let clone3_enosys = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build("clone3", e))?
        .try_into()
        .map_err(|e| SeccompError::Compile("clone3", e))?;
        Ok(Filters {
            main: main_rules().compile("main")?,
            vcpu: vcpu_rules().compile("vcpu")?,
            clone3_enosys,
        })
    }

    /// Installs the filter of `kind` on the calling thread (and whatever threads it
    /// starts later). The process must have `no_new_privs` (see [`prepare`]).
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        THREAD_KIND.with(|k| k.set(kind.name()));
        let program = match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
        };
        // The permissive one first: installing the second is a prctl the first allows.
        seccompiler::apply_filter(&self.clone3_enosys)
            .map_err(|e| SeccompError::Install(kind.name(), e))?;
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind.name(), e))
    }
}

/// Readies the process for the filters, before its vCPU threads start: `no_new_privs`
/// (which a filter needs without CAP_SYS_ADMIN, and which the threads inherit) and the
/// SIGSYS handler that reports a violation.
pub fn prepare() -> Result<(), SeccompError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointer and only ever
    // removes privilege.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if ret != 0 {
        return Err(SeccompError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, handle_sigsys)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

thread_local! {
    /// The filter this thread installed, for the SIGSYS report.
    static THREAD_KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// Formats `n` in decimal into the end of `buf`, returning the digits.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Builds the report of a violation into `out`; returns its length. No allocation:
/// this runs in the signal handler.
fn report(kind: &str, syscall: u64, out: &mut [u8; 192]) -> usize {
    let mut digits = [0u8; 20];
    let parts: [&[u8]; 5] = [
        b"arca-vmm: seccomp: the ",
        kind.as_bytes(),
        b" thread made system call ",
        decimal(syscall, &mut digits),
        b", which its filter does not allow; the VMM is killed (SIGSYS)\n",
    ];
    let mut len = 0;
    for part in parts {
        let n = part.len().min(out.len() - len);
        out[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    len
}

/// SIGSYS from a filter: says which thread made which system call, then dies by the
/// signal (its default action) or, where that cannot be (the init of a pid namespace
/// ignores the signals it sends itself), exits with [`EXIT_BAD_SYSCALL`]. Only
/// async-signal-safe calls, all allowed by every filter.
extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `struct siginfo` for SIGSYS (`_sigsys`): after the common header (signo, errno,
    // code: 3 ints, padded to 16 bytes) come `void *call_addr`, `int syscall` and
    // `unsigned int arch`.
    let syscall = if info.is_null() {
        u64::MAX
    } else {
        // SAFETY: the kernel passes a valid 128-byte siginfo to this SA_SIGINFO
        // handler, and `_sigsys` puts `int syscall` 24 bytes in: the offset stays in it.
        let field = unsafe { info.cast::<u8>().add(24) };
        // SAFETY: reads the 4-byte `syscall` field of that valid siginfo.
        let nr = unsafe { field.cast::<libc::c_int>().read_unaligned() };
        nr as u64
    };
    let kind = THREAD_KIND.try_with(|k| k.get()).unwrap_or("unknown");
    let mut out = [0u8; 192];
    let len = report(kind, syscall, &mut out);
    // SAFETY: writes `len` initialized bytes of `out` to stderr; write(2) is
    // async-signal-safe.
    let _ = unsafe { libc::write(libc::STDERR_FILENO, out.as_ptr().cast(), len) };
    // SAFETY: signal(2) with SIG_DFL installs no handler code (async-signal-safe).
    unsafe { libc::signal(libc::SIGSYS, libc::SIG_DFL) };
    // SAFETY: an all-zero sigset_t is a valid (empty) set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to write.
    unsafe { libc::sigaddset(&mut set, libc::SIGSYS) };
    // SAFETY: unblocks SIGSYS (blocked while its handler runs) for this thread; `set`
    // is valid and the old mask is not asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: raise(3) sends SIGSYS, now with its default action, to this thread: the
    // process ends here unless it is a pid namespace's init.
    unsafe { libc::raise(libc::SIGSYS) };
    // SAFETY: _exit(2) ends the process at once; returning would re-run the trapped call.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        let f = Filters::new().unwrap();
        assert!(!f.main.is_empty() && !f.vcpu.is_empty() && !f.clone3_enosys.is_empty());
    }

    #[test]
    fn snapshot_ioctl_numbers_are_the_kernel_headers() {
        // From <linux/kvm.h> on x86_64, as strace prints them.
        assert_eq!(
            vcpu_snapshot_ioctls(),
            [
                0x8090_ae81,
                0x8138_ae83,
                0xc008_ae88,
                0x8400_ae8e,
                0xc008_ae91,
                0x8004_ae98,
                0x8040_ae9f,
                0x8080_aea1,
                0x9000_aea4,
                0x8188_aea6,
                0xaea3,
            ]
        );
        assert_eq!(
            vm_snapshot_ioctls(),
            [0xc208_ae62, 0x8070_ae9f, 0x8030_ae7c]
        );
    }

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        let mut out = [0u8; 192];
        let len = report("vcpu", 41, &mut out);
        assert_eq!(
            std::str::from_utf8(&out[..len]).unwrap(),
            "arca-vmm: seccomp: the vcpu thread made system call 41, which its filter does not allow; the VMM is killed (SIGSYS)\n"
        );
        let mut digits = [0u8; 20];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(decimal(u64::MAX, &mut digits), b"18446744073709551615");
    }

    /// A VMM thread that a guest took over tries a system call outside its filter
    /// (`socket` on a vCPU, `openat` on the main thread, `execve` on both, an
    /// executable mapping, a new process): the process dies by SIGSYS and says which
    /// call it was. Each case runs in a forked child of this test process.
    #[test]
    #[allow(clippy::undocumented_unsafe_blocks)]
    fn a_call_outside_the_filter_kills_the_process_by_sigsys() {
        let filters = Filters::new().unwrap();
        type Attempt = fn();
        let cases: [(ThreadKind, &str, Attempt); 6] = [
            (ThreadKind::Vcpu, "socket", || {
                let _ = std::net::UdpSocket::bind("127.0.0.1:0");
            }),
            (ThreadKind::Main, "openat", || {
                let _ = std::fs::File::open("/etc/passwd");
            }),
            (ThreadKind::Main, "execve", || {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                // SAFETY: a NUL-terminated argv of static strings (expected to trap).
                unsafe { libc::execv(argv[0], argv.as_ptr()) };
            }),
            (ThreadKind::Vcpu, "mmap exec", || {
                // SAFETY: maps a fresh anonymous page (the call is expected to trap).
                unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                }
            }),
            (ThreadKind::Main, "fork", || {
                // SAFETY: a raw fork(2) without CLONE_THREAD (expected to trap).
                unsafe {
                    libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0)
                };
            }),
            (ThreadKind::Vcpu, "ptrace", || {
                // SAFETY: PTRACE_TRACEME takes no pointer (expected to trap).
                unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            }),
        ];
        for (kind, what, attempt) in cases {
            let (read, write) = std::io::pipe().unwrap();
            // SAFETY: the child installs the filter, tries one call and leaves with
            // `_exit`; it only allocates (fork-safe in glibc) and makes system calls.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                use std::os::fd::AsRawFd;
                // The report goes to the pipe.
                unsafe { libc::dup2(write.as_raw_fd(), libc::STDERR_FILENO) };
                if prepare().is_err() || filters.install(kind).is_err() {
                    unsafe { libc::_exit(90) };
                }
                attempt();
                unsafe { libc::_exit(0) };
            }
            drop(write);
            let mut status = 0;
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            let said = std::io::read_to_string(read).unwrap();
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "{what} on {kind:?}: status {status:#x}, said {said:?}"
            );
            assert!(
                said.contains(&format!("the {} thread made system call", kind.name())),
                "{what}: {said:?}"
            );
        }
    }

    /// What the VMM's threads do in their lives passes their filters: threads (through
    /// clone after clone3's ENOSYS), memory, locks, time, eventfd writes.
    #[test]
    #[allow(clippy::undocumented_unsafe_blocks)]
    fn ordinary_work_passes_both_filters() {
        let filters = Filters::new().unwrap();
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                if prepare().is_err() || filters.install(kind).is_err() {
                    unsafe { libc::_exit(90) };
                }
                let data: Vec<u8> = vec![7; 8 << 20];
                let sum =
                    std::thread::spawn(move || data.iter().map(|b| u64::from(*b)).sum::<u64>())
                        .join()
                        .unwrap_or(0);
                let m = std::sync::Arc::new(std::sync::Mutex::new(0));
                let m2 = m.clone();
                std::thread::spawn(move || *m2.lock().unwrap() += 1)
                    .join()
                    .ok();
                std::thread::sleep(std::time::Duration::from_millis(1));
                let ok = sum == 7 * (8 << 20) && *m.lock().unwrap() == 1;
                unsafe { libc::_exit(if ok { 0 } else { 91 }) };
            }
            let mut status = 0;
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "{kind:?}: status {status:#x}"
            );
        }
    }
}
