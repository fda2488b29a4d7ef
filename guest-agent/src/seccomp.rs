//! A container's seccomp profile as BPF: the resolved rules (see
//! [`arca_protocol::SeccompProfile::resolve`]) compiled with seccompiler, then installed on
//! the thread that will exec the container's process.
//!
//! seccompiler builds a filter with one action on match and one on mismatch, where a
//! Docker profile gives each rule its own action. The profile becomes a stack of filters,
//! which the kernel runs in full, taking the most severe verdict (kill, trap, errno,
//! trace, log, allow; between equals the last installed wins):
//! - first, the allow-list: every call some rule names (with that rule's argument
//!   conditions) is allowed, everything else gets the default action;
//! - then, for each other verdict (`clone3` failing with ENOSYS, a rule that kills...),
//!   a filter that gives that verdict to its rules' calls and allows everything else.
//!
//! A call a rule allows passes both; a call with its own verdict gets it (it is more
//! severe than allow, and wins a tie with the default); anything else gets the default.
//! System call names this architecture does not have are skipped, as libseccomp does.
//! The filter covers the native architecture only: a call through another ABI (a 32-bit
//! x86 binary's `int 0x80`) kills the process.

use std::collections::BTreeMap;
use std::str::FromStr;

use arca_protocol::{ResolvedProfile, ScmpArg, ScmpOp, Verdict};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// Errors compiling or installing a container's filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused a rule or the filter.
    #[error("Cannot compile the seccomp profile")]
    Compile(#[source] seccompiler::BackendError),
    /// The architecture has no seccompiler support.
    #[error("Seccomp filters are not supported on {0}")]
    Arch(&'static str),
    /// The filter is longer than the kernel accepts.
    #[error(
        "The seccomp profile compiles to {0} BPF instructions; the kernel accepts at most 4096"
    )]
    TooLong(usize),
    /// The kernel refused the filter.
    #[error("Cannot install the seccomp filter")]
    Install(#[source] std::io::Error),
}

/// The compiled filters of one container, in install order.
pub struct Filters {
    programs: Vec<Vec<libc::sock_filter>>,
    log: bool,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.programs.iter().map(Vec::len).collect();
        f.debug_struct("Filters")
            .field("instructions", &lens)
            .field("log", &self.log)
            .finish()
    }
}

fn action(v: Verdict) -> SeccompAction {
    match v {
        Verdict::Allow => SeccompAction::Allow,
        Verdict::Errno(e) => SeccompAction::Errno(e),
        Verdict::KillThread => SeccompAction::KillThread,
        Verdict::KillProcess => SeccompAction::KillProcess,
        Verdict::Trap => SeccompAction::Trap,
        Verdict::Log => SeccompAction::Log,
        Verdict::Trace(d) => SeccompAction::Trace(d),
    }
}

fn condition(a: &ScmpArg) -> Result<SeccompCondition, SeccompError> {
    let (op, value) = match a.op {
        ScmpOp::Ne => (SeccompCmpOp::Ne, a.value),
        ScmpOp::Lt => (SeccompCmpOp::Lt, a.value),
        ScmpOp::Le => (SeccompCmpOp::Le, a.value),
        ScmpOp::Eq => (SeccompCmpOp::Eq, a.value),
        ScmpOp::Ge => (SeccompCmpOp::Ge, a.value),
        ScmpOp::Gt => (SeccompCmpOp::Gt, a.value),
        ScmpOp::MaskedEq => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
    };
    // Validated profiles have indexes 0..=5.
    let index = u8::try_from(a.index).unwrap_or(u8::MAX);
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(SeccompError::Compile)
}

/// Calls and their rule chains: an empty chain matches the call unconditionally.
/// Rules by system call number, as seccompiler takes them.
pub(crate) type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

fn add(
    map: &mut RuleMap,
    unconditional: &mut Vec<i64>,
    nr: i64,
    args: &[ScmpArg],
) -> Result<(), SeccompError> {
    if args.is_empty() {
        unconditional.push(nr);
        map.entry(nr).or_default();
        return Ok(());
    }
    let conditions = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    let rule = SeccompRule::new(conditions).map_err(SeccompError::Compile)?;
    map.entry(nr).or_default().push(rule);
    Ok(())
}

fn finish(mut map: RuleMap, unconditional: &[i64]) -> RuleMap {
    for nr in unconditional {
        map.insert(*nr, Vec::new());
    }
    map
}

fn native_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// One filter: `matched` for the calls `rules` name (under their conditions),
/// `mismatch` for the rest, for this architecture, at most 4096 instructions.
pub(crate) fn program(
    rules: RuleMap,
    mismatch: Verdict,
    matched: Verdict,
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let filter = SeccompFilter::new(rules, action(mismatch), action(matched), native_arch()?)
        .map_err(SeccompError::Compile)?;
    let bpf: seccompiler::BpfProgram = filter.try_into().map_err(SeccompError::Compile)?;
    if bpf.len() > 4096 {
        return Err(SeccompError::TooLong(bpf.len()));
    }
    Ok(bpf
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

/// The system call number of `name` on this architecture, if it has one.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls::Sysno::from_str(name).ok().map(|s| s.id() as i64)
}

/// Compiles a resolved profile (see the module documentation for the layout).
pub fn compile(profile: &ResolvedProfile) -> Result<Filters, SeccompError> {
    let mut allow = RuleMap::new();
    let mut allow_always = Vec::new();
    let mut others: BTreeMap<Verdict, (RuleMap, Vec<i64>)> = BTreeMap::new();
    for rule in &profile.rules {
        if rule.verdict == profile.default {
            continue;
        }
        let Some(nr) = syscall_number(&rule.name) else {
            continue;
        };
        if profile.default != Verdict::Allow {
            add(&mut allow, &mut allow_always, nr, &rule.args)?;
        }
        if rule.verdict != Verdict::Allow {
            let (map, always) = others.entry(rule.verdict).or_default();
            add(map, always, nr, &rule.args)?;
        }
    }
    let mut programs = Vec::new();
    if profile.default != Verdict::Allow {
        programs.push(program(
            finish(allow, &allow_always),
            profile.default,
            Verdict::Allow,
        )?);
    }
    for (verdict, (map, always)) in others {
        programs.push(program(finish(map, &always), Verdict::Allow, verdict)?);
    }
    let total: usize = programs.iter().map(Vec::len).sum();
    if total > 4 * 4096 {
        return Err(SeccompError::TooLong(total));
    }
    Ok(Filters {
        programs,
        log: profile.log,
    })
}

impl Filters {
    /// Installs the filters on the calling thread (and so on everything it execs or
    /// forks from now on). Needs `no_new_privs` or `CAP_SYS_ADMIN`.
    pub fn install(&self) -> Result<(), SeccompError> {
        for p in &self.programs {
            crate::sys::install_seccomp_filter(p, self.log).map_err(SeccompError::Install)?;
        }
        Ok(())
    }

    /// Number of filters (0 for a profile that allows everything).
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_protocol::{Capabilities, Platform, SeccompProfile, docker_default_profile};

    fn default_filters(caps: Capabilities) -> Filters {
        let p = docker_default_profile()
            .resolve(caps, Platform::native((6, 12)))
            .unwrap();
        compile(&p).unwrap()
    }

    /// Runs `probe` in a forked child under `filters` (with `no_new_privs`, so no
    /// privilege is needed) and returns its exit code. The child makes only raw system
    /// calls: the test harness is multi-threaded.
    fn in_child(filters: &Filters, probe: fn() -> i32) -> i32 {
        match crate::sys::fork().unwrap() {
            crate::sys::Forked::Child => {
                let code = if rustix::thread::set_no_new_privs(true).is_err() {
                    100
                } else if filters.install().is_err() {
                    101
                } else {
                    probe()
                };
                // SAFETY: `_exit` ends the forked child without running the parent's
                // atexit handlers or destructors.
                unsafe { libc::_exit(code) }
            }
            crate::sys::Forked::Parent(pid) => {
                let mut status = 0;
                // SAFETY: waits for our own child; `status` is a valid out-pointer.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    1000 + libc::WTERMSIG(status)
                }
            }
        }
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    /// A raw system call with integer arguments; its errno (0 on success), read at once.
    fn raw(nr: libc::c_long, args: [libc::c_long; 5]) -> i32 {
        // SAFETY: every probe passes integers or null pointers only; the kernel writes
        // nothing to our memory for any of them.
        errno_of(unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) })
    }

    /// What a hostile container process tries under Docker's default profile: new user
    /// namespaces, the keyring, BPF, mounting, namespace-creating clones, vsock (the
    /// agent's transport): each fails with EPERM (clone3 with ENOSYS, so libcs fall back
    /// to clone), while ordinary calls work. Exit code: the first step that misbehaved.
    fn hostile_probe() -> i32 {
        let ns_clone = (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_long;
        let checks: [(i32, i32); 9] = [
            (
                raw(
                    libc::SYS_unshare,
                    [libc::CLONE_NEWUSER as libc::c_long, 0, 0, 0, 0],
                ),
                libc::EPERM,
            ),
            (raw(libc::SYS_keyctl, [0; 5]), libc::EPERM),
            (raw(libc::SYS_add_key, [0; 5]), libc::EPERM),
            (raw(libc::SYS_bpf, [0; 5]), libc::EPERM),
            (raw(libc::SYS_mount, [0; 5]), libc::EPERM),
            (raw(libc::SYS_clone3, [0; 5]), libc::ENOSYS),
            (
                raw(
                    libc::SYS_socket,
                    [
                        libc::AF_VSOCK as libc::c_long,
                        libc::SOCK_STREAM as libc::c_long,
                        0,
                        0,
                        0,
                    ],
                ),
                libc::EPERM,
            ),
            (raw(libc::SYS_userfaultfd, [0; 5]), libc::EPERM),
            (raw(libc::SYS_clone, [ns_clone, 0, 0, 0, 0]), libc::EPERM),
        ];
        for (i, (errno, want)) in checks.iter().enumerate() {
            if errno != want {
                return 10 + i as i32;
            }
        }
        // SAFETY: socket(2) with integer arguments.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return 30;
        }
        // SAFETY: closes the socket just opened, which nothing else owns.
        unsafe { libc::close(fd) };
        if raw(libc::SYS_getpid, [0; 5]) != 0 {
            return 31;
        }
        0
    }

    #[test]
    fn the_default_profile_stops_what_docker_stops() {
        assert_eq!(
            in_child(
                &default_filters(Capabilities::container_default()),
                hostile_probe
            ),
            0
        );
    }

    fn clone3_probe() -> i32 {
        // SAFETY: clone3 with a zero size fails (EINVAL) once the filter lets it
        // through; nothing is written.
        errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) })
    }

    #[test]
    fn cap_sys_admin_opens_what_it_governs() {
        let f = default_filters(Capabilities::container_default().with(21));
        // clone3 reaches the kernel (which refuses the zero size) instead of ENOSYS.
        assert_eq!(in_child(&f, clone3_probe), libc::EINVAL);
    }

    fn keyctl_probe() -> i32 {
        // SAFETY: a plain system call with integer arguments.
        errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) })
    }

    fn mkdir_probe() -> i32 {
        // SAFETY: mkdir of a nul-terminated static path whose parent does not exist.
        errno_of(unsafe {
            libc::syscall(libc::SYS_mkdir, c"/arca-no-such-dir/probe".as_ptr(), 0o755)
        })
    }

    #[test]
    fn a_users_profile_gives_each_rule_its_own_verdict() {
        let json = br#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["keyctl"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}
            ]
        }"#;
        let p = SeccompProfile::from_json(json)
            .unwrap()
            .resolve(Capabilities::NONE, Platform::native((6, 12)))
            .unwrap();
        let f = compile(&p).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(in_child(&f, mkdir_probe), libc::EACCES);
        assert_eq!(in_child(&f, keyctl_probe), 1000 + libc::SIGSYS);
    }

    #[test]
    fn an_errno_default_with_an_allow_list_denies_the_rest() {
        let json = br#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 95,
            "syscalls": [{"names": ["exit_group", "exit", "mkdir"], "action": "SCMP_ACT_ALLOW"}]}"#;
        let p = SeccompProfile::from_json(json)
            .unwrap()
            .resolve(Capabilities::NONE, Platform::native((6, 12)))
            .unwrap();
        let f = compile(&p).unwrap();
        assert_eq!(in_child(&f, keyctl_probe), libc::EOPNOTSUPP);
        assert_eq!(in_child(&f, mkdir_probe), libc::ENOENT);
    }

    #[test]
    fn unknown_names_are_skipped_and_known_ones_numbered() {
        assert_eq!(syscall_number("read"), Some(libc::SYS_read));
        assert_eq!(syscall_number("keyctl"), Some(libc::SYS_keyctl));
        assert_eq!(syscall_number("chown32"), None);
        assert_eq!(syscall_number("no_such_call"), None);
    }
}
