//! What confines a container's processes beyond its namespaces: the capability set,
//! `no_new_privs`, and a seccomp profile in Docker's JSON format (moby's
//! `profiles/seccomp/default.json` schema).
//!
//! A profile is data from the user or from [`docker_default_profile`]; [`SeccompProfile::resolve`]
//! turns it into the rules that apply to one container (its capabilities, the machine's
//! architecture and kernel), as Docker does before handing the result to libseccomp. The
//! agent compiles the resolved rules to BPF and installs them; the host resolves a
//! user's profile too, only to refuse a bad one before anything is created.

use serde::{Deserialize, Serialize};

/// Errors in security settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    /// A capability name that Linux does not have.
    #[error("unknown capability: {0:?}")]
    UnknownCapability(String),
    /// The profile is not valid JSON or not a seccomp profile.
    #[error("Decoding seccomp profile failed: {0}")]
    Decode(String),
    /// The profile is larger than [`MAX_PROFILE_LEN`].
    #[error("The seccomp profile is {0} bytes; at most {MAX_PROFILE_LEN} are accepted")]
    TooLarge(usize),
    /// A profile rule is malformed.
    #[error("Invalid seccomp profile: {0}")]
    Invalid(String),
    /// A profile asks for something Arca does not do.
    #[error("Unsupported seccomp profile: {0}")]
    Unsupported(String),
}

/// Largest seccomp profile accepted, in bytes (Docker's default is about 13 KiB).
pub const MAX_PROFILE_LEN: usize = 256 * 1024;

/// Linux capability names, indexed by number.
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A set of capabilities: bit `n` is capability number `n`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(pub u64);

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::container_default()
    }
}

impl Capabilities {
    /// No capability.
    pub const NONE: Capabilities = Capabilities(0);

    /// Every capability Linux has.
    pub fn all() -> Self {
        Self((1u64 << CAPABILITY_NAMES.len()) - 1)
    }

    /// What a container's root gets: Docker's default set without `CAP_MKNOD` (Docker
    /// relies on a device cgroup to make `mknod` harmless; Arca has none, so the
    /// capability goes unless it is added).
    pub fn container_default() -> Self {
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ]
        .iter()
        .fold(Self::NONE, |set, name| {
            set.with(capability_number(name).expect("a known capability"))
        })
    }

    /// This set and capability `n`.
    pub fn with(self, n: u32) -> Self {
        Self(self.0 | (1 << n))
    }

    /// Whether capability `n` is in the set.
    pub fn has(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }

    /// Whether the named capability is in the set (false for an unknown name).
    pub fn has_named(self, name: &str) -> bool {
        capability_number(name).is_some_and(|n| self.has(n))
    }

    /// Names of the capabilities in the set, by number.
    pub fn names(self) -> Vec<&'static str> {
        (0..CAPABILITY_NAMES.len() as u32)
            .filter(|n| self.has(*n))
            .map(|n| CAPABILITY_NAMES[n as usize])
            .collect()
    }

    /// Docker's `--cap-add`/`--cap-drop` on the default set: names with or without
    /// `CAP_`, any case; `ALL` in `add` starts from every capability, `ALL` in `drop` from
    /// none (then `add` applies); otherwise the default set plus `add` minus `drop`.
    pub fn adjusted(add: &[String], drop: &[String]) -> Result<Self, SecurityError> {
        let parse = |list: &[String]| -> Result<(bool, Capabilities), SecurityError> {
            let mut all = false;
            let mut set = Self::NONE;
            for name in list {
                let upper = name.trim().to_ascii_uppercase();
                if upper == "ALL" {
                    all = true;
                    continue;
                }
                let full = if upper.starts_with("CAP_") {
                    upper
                } else {
                    format!("CAP_{upper}")
                };
                let n = capability_number(&full)
                    .ok_or_else(|| SecurityError::UnknownCapability(full.clone()))?;
                set = set.with(n);
            }
            Ok((all, set))
        };
        let (add_all, add) = parse(add)?;
        let (drop_all, drop) = parse(drop)?;
        Ok(if add_all {
            Self(Self::all().0 & !drop.0)
        } else if drop_all {
            add
        } else {
            Self((Self::container_default().0 | add.0) & !drop.0)
        })
    }
}

/// The number of a capability named `CAP_...` (upper case).
pub fn capability_number(name: &str) -> Option<u32> {
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|n| n as u32)
}

/// Which seccomp profile confines a container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "profile")]
pub enum Seccomp {
    /// Docker's default profile ([`docker_default_profile`]).
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`, `--privileged`).
    Unconfined,
    /// A profile of the user's (`--security-opt seccomp=PROFILE.json`).
    Profile(Box<SeccompProfile>),
}

impl Seccomp {
    /// The profile to resolve, if any.
    pub fn profile(&self) -> Option<std::borrow::Cow<'_, SeccompProfile>> {
        match self {
            Seccomp::Default => Some(std::borrow::Cow::Owned(docker_default_profile())),
            Seccomp::Unconfined => None,
            Seccomp::Profile(p) => Some(std::borrow::Cow::Borrowed(p)),
        }
    }
}

/// Confinement of a container's processes (its main process, every exec, `arca cp`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Security {
    /// The capabilities its root keeps (bounding, effective, permitted, inheritable;
    /// a non-root user keeps none); Docker's default set (without `CAP_MKNOD`) when absent.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Set `no_new_privs`: setuid binaries and file capabilities grant nothing.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// The seccomp filter.
    #[serde(default)]
    pub seccomp: Seccomp,
    /// `--privileged`: no masked or read-only paths under `/proc` and `/sys` (the
    /// capabilities and seccomp fields say the rest).
    #[serde(default)]
    pub privileged: bool,
    /// Paths masked beyond [`MASKED_PATHS`] (an OCI bundle's `maskedPaths`): a file
    /// is hidden under `/dev/null`, a directory under an empty read-only tmpfs; a path
    /// that does not exist is left alone. Not for a privileged container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// Paths made read-only beyond [`READONLY_PATHS`] (an OCI bundle's
    /// `readonlyPaths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
}

/// What the agent masks in every unprivileged container (Docker's list): files
/// under `/dev/null`, directories under an empty read-only tmpfs.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// What the agent makes read-only in every unprivileged container (Docker's list).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What a seccomp rule (or the default) does with a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScmpAction {
    /// Let it run.
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    /// Fail it with `errnoRet` (EPERM when absent).
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    /// Kill the thread.
    #[serde(rename = "SCMP_ACT_KILL", alias = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    /// Kill the process.
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    /// Send SIGSYS.
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    /// Let it run and log it.
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    /// Hand it to a ptrace tracer (ENOSYS without one).
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    /// Hand it to a user-space listener (not supported).
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

/// An argument comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScmpOp {
    /// `arg != value`.
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    /// `arg < value`.
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    /// `arg <= value`.
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    /// `arg == value`.
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    /// `arg >= value`.
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    /// `arg > value`.
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    /// `arg & value == valueTwo`.
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// One argument condition of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScmpArg {
    /// Argument number, 0 to 5.
    pub index: u32,
    /// The value (the mask for `SCMP_CMP_MASKED_EQ`).
    #[serde(default)]
    pub value: u64,
    /// The masked value for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value_two: u64,
    /// The comparison.
    pub op: ScmpOp,
}

/// When a rule applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScmpFilter {
    /// Capabilities (`CAP_...`): includes need every one, excludes any one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<Vec<String>>,
    /// Architectures in Go's names (`amd64`, `arm64`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arches: Option<Vec<String>>,
    /// Oldest kernel (`major.minor`) the rule is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

/// One rule of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScmpRule {
    /// System call names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// One system call name (the older form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The action.
    pub action: Option<ScmpAction>,
    /// The errno of `SCMP_ACT_ERRNO` (or the data of `SCMP_ACT_TRACE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Argument conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<ScmpArg>>,
    /// The rule applies only when these hold.
    #[serde(default)]
    pub includes: ScmpFilter,
    /// The rule does not apply when any of these holds.
    #[serde(default)]
    pub excludes: ScmpFilter,
    /// A comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A seccomp profile in Docker's JSON format. Unknown fields are ignored, as Docker does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    /// What happens to a call no rule names.
    pub default_action: ScmpAction,
    /// The errno of a default `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// libseccomp architecture names the filter covers (informational here: the filter
    /// covers the machine's native architecture only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Filter flags (`SECCOMP_FILTER_FLAG_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// A listener for `SCMP_ACT_NOTIFY` (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    /// The rules.
    #[serde(default)]
    pub syscalls: Vec<ScmpRule>,
}

/// What the filter does with a call, with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Run it.
    Allow,
    /// Fail it with this errno.
    Errno(u32),
    /// Kill the thread.
    KillThread,
    /// Kill the process.
    KillProcess,
    /// Send SIGSYS.
    Trap,
    /// Run it and log it.
    Log,
    /// Hand it to a tracer with this data.
    Trace(u32),
}

/// One rule as it applies to a container: a call (by name), its conditions (all must
/// hold; none is unconditional) and what happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRule {
    /// The system call's name (names this architecture lacks are left to the compiler
    /// to skip, as libseccomp does).
    pub name: String,
    /// Conditions, all of which must hold.
    pub args: Vec<ScmpArg>,
    /// What happens.
    pub verdict: Verdict,
}

/// A profile resolved for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProfile {
    /// What happens to a call no rule matches.
    pub default: Verdict,
    /// The rules that apply, in the profile's order.
    pub rules: Vec<ResolvedRule>,
    /// `SECCOMP_FILTER_FLAG_LOG` was asked for.
    pub log: bool,
}

/// Where a profile is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform<'a> {
    /// Go's name of the architecture (`amd64`).
    pub arch: &'a str,
    /// The kernel's (major, minor) version.
    pub kernel: (u32, u32),
}

impl Platform<'_> {
    /// This build's architecture in Go's names, with `kernel`.
    pub fn native(kernel: (u32, u32)) -> Platform<'static> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform { arch, kernel }
    }
}

/// Parses a kernel release (`6.12.48-arca`, `4.8`) into (major, minor).
pub fn parse_kernel_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

fn verdict(action: ScmpAction, errno: Option<u32>) -> Result<Verdict, SecurityError> {
    Ok(match action {
        ScmpAction::Allow => Verdict::Allow,
        ScmpAction::Errno => Verdict::Errno(errno.unwrap_or(1)),
        ScmpAction::KillThread => Verdict::KillThread,
        ScmpAction::KillProcess => Verdict::KillProcess,
        ScmpAction::Trap => Verdict::Trap,
        ScmpAction::Log => Verdict::Log,
        ScmpAction::Trace => Verdict::Trace(errno.unwrap_or(1)),
        ScmpAction::Notify => {
            return Err(SecurityError::Unsupported(
                "SCMP_ACT_NOTIFY needs a seccomp listener, which Arca does not run".into(),
            ));
        }
    })
}

/// Largest errno a filter may return (the kernel's `MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

impl SeccompProfile {
    /// Parses a profile file in Docker's format.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SecurityError> {
        if bytes.len() > MAX_PROFILE_LEN {
            return Err(SecurityError::TooLarge(bytes.len()));
        }
        let profile: SeccompProfile =
            serde_json::from_slice(bytes).map_err(|e| SecurityError::Decode(e.to_string()))?;
        profile.validate()?;
        Ok(profile)
    }

    /// Checks what does not depend on the container: names, argument indexes,
    /// errno values, flags.
    pub fn validate(&self) -> Result<(), SecurityError> {
        let invalid = |m: String| Err(SecurityError::Invalid(m));
        if self.listener_path.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(SecurityError::Unsupported(
                "listenerPath: Arca runs no seccomp listener".into(),
            ));
        }
        verdict(self.default_action, self.default_errno_ret)?;
        for flag in self.flags.iter().flatten() {
            if !matches!(
                flag.as_str(),
                "SECCOMP_FILTER_FLAG_LOG"
                    | "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
                    | "SECCOMP_FILTER_FLAG_TSYNC"
            ) {
                return Err(SecurityError::Unsupported(format!(
                    "the filter flag {flag:?}"
                )));
            }
        }
        if self.syscalls.len() > 4096 {
            return invalid(format!("{} rules (at most 4096)", self.syscalls.len()));
        }
        for (i, rule) in self.syscalls.iter().enumerate() {
            let which = format!("rule {}", i + 1);
            if rule.names.is_empty() && rule.name.is_none() {
                return invalid(format!("{which} names no system call"));
            }
            if rule.names.len() > 1024 {
                return invalid(format!("{which} names more than 1024 system calls"));
            }
            for name in rule.names.iter().chain(&rule.name) {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return invalid(format!("{which}: bad system call name {name:?}"));
                }
            }
            let Some(action) = rule.action else {
                return invalid(format!("{which} has no action"));
            };
            verdict(action, rule.errno_ret)?;
            if rule.errno_ret.is_some_and(|e| e > MAX_ERRNO) {
                return invalid(format!("{which}: errnoRet above {MAX_ERRNO}"));
            }
            let args = rule.args.as_deref().unwrap_or_default();
            if args.len() > 6 {
                return invalid(format!("{which} has more than 6 argument conditions"));
            }
            if let Some(a) = args.iter().find(|a| a.index > 5) {
                return invalid(format!(
                    "{which}: argument index {} (system calls have arguments 0 to 5)",
                    a.index
                ));
            }
            for caps in [&rule.includes.caps, &rule.excludes.caps]
                .into_iter()
                .flatten()
            {
                if let Some(c) = caps.iter().find(|c| capability_number(c).is_none()) {
                    return invalid(format!("{which}: unknown capability {c:?}"));
                }
            }
            for v in [&rule.includes.min_kernel, &rule.excludes.min_kernel]
                .into_iter()
                .flatten()
            {
                if parse_kernel_version(v).is_none() {
                    return invalid(format!("{which}: bad minKernel {v:?}"));
                }
            }
        }
        if self.default_errno_ret.is_some_and(|e| e > MAX_ERRNO) {
            return invalid(format!("defaultErrnoRet above {MAX_ERRNO}"));
        }
        Ok(())
    }

    /// The rules that apply to a container with `caps` on `platform`, as Docker selects
    /// them: a rule is skipped when its excludes name a capability the container has or
    /// this architecture, or its includes name a capability it lacks, only other
    /// architectures, or a newer kernel.
    pub fn resolve(
        &self,
        caps: Capabilities,
        platform: Platform<'_>,
    ) -> Result<ResolvedProfile, SecurityError> {
        self.validate()?;
        let default = verdict(self.default_action, self.default_errno_ret)?;
        let mut rules = Vec::new();
        for rule in &self.syscalls {
            let ex = &rule.excludes;
            if ex.caps.iter().flatten().any(|c| caps.has_named(c))
                || ex.arches.iter().flatten().any(|a| a == platform.arch)
                || ex
                    .min_kernel
                    .as_deref()
                    .and_then(parse_kernel_version)
                    .is_some_and(|k| platform.kernel >= k)
            {
                continue;
            }
            let inc = &rule.includes;
            if inc.caps.iter().flatten().any(|c| !caps.has_named(c))
                || inc
                    .arches
                    .as_ref()
                    .is_some_and(|a| !a.is_empty() && !a.iter().any(|a| a == platform.arch))
                || inc
                    .min_kernel
                    .as_deref()
                    .and_then(parse_kernel_version)
                    .is_some_and(|k| platform.kernel < k)
            {
                continue;
            }
            let verdict = verdict(rule.action.expect("validated"), rule.errno_ret)?;
            for name in rule.names.iter().chain(&rule.name) {
                rules.push(ResolvedRule {
                    name: name.clone(),
                    args: rule.args.clone().unwrap_or_default(),
                    verdict,
                });
            }
        }
        let log = self
            .flags
            .iter()
            .flatten()
            .any(|f| f == "SECCOMP_FILTER_FLAG_LOG");
        Ok(ResolvedProfile {
            default,
            rules,
            log,
        })
    }
}

fn rule(names: &[&str], action: ScmpAction) -> ScmpRule {
    ScmpRule {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: Some(action),
        ..ScmpRule::default()
    }
}

fn strings(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|s| s.to_string()).collect())
}

fn with_caps(mut r: ScmpRule, caps: &[&str]) -> ScmpRule {
    r.includes.caps = strings(caps);
    r
}

fn with_arches(mut r: ScmpRule, arches: &[&str]) -> ScmpRule {
    r.includes.arches = strings(arches);
    r
}

fn arg(index: u32, op: ScmpOp, value: u64) -> ScmpArg {
    ScmpArg {
        index,
        value,
        value_two: 0,
        op,
    }
}

/// The system calls Docker's default profile allows every container.
const ALWAYS_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// The clone flags that make namespaces (`CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|
/// NEWPID|NEWNET`): without `CAP_SYS_ADMIN`, `clone` may not set any of them.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Docker's default seccomp profile, rule for rule (moby `profiles/seccomp/default.json`):
/// deny with EPERM what is not listed; allow the usual calls; allow the calls a
/// capability governs only with that capability (`mount`, `unshare`, `bpf` with
/// `CAP_SYS_ADMIN`, `ptrace` family, `reboot`, modules, clock setting...); `clone` without
/// namespace flags and `clone3` failing with ENOSYS (so libcs fall back to `clone`) unless
/// the container has `CAP_SYS_ADMIN`; `socket` for every family but `AF_VSOCK`;
/// `personality` only for the harmless personas. `keyctl`, `add_key`, `request_key`,
/// `userfaultfd`, `kexec_*`, `open_by_handle_at` (without `CAP_DAC_READ_SEARCH`) and the
/// rest stay denied.
pub fn docker_default_profile() -> SeccompProfile {
    use ScmpAction::Allow;
    let mut syscalls = vec![rule(ALWAYS_ALLOWED, Allow)];
    let mut ptrace = rule(&["process_vm_readv", "process_vm_writev", "ptrace"], Allow);
    ptrace.includes.min_kernel = Some("4.8".into());
    syscalls.push(ptrace);
    let mut socket = rule(&["socket"], Allow);
    socket.args = Some(vec![arg(0, ScmpOp::Ne, 40)]); // AF_VSOCK
    syscalls.push(socket);
    for persona in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        let mut r = rule(&["personality"], Allow);
        r.args = Some(vec![arg(0, ScmpOp::Eq, persona)]);
        syscalls.push(r);
    }
    syscalls.push(with_arches(
        rule(&["sync_file_range2", "swapcontext"], Allow),
        &["ppc64le"],
    ));
    syscalls.push(with_arches(
        rule(
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            Allow,
        ),
        &["arm", "arm64"],
    ));
    syscalls.push(with_arches(rule(&["arch_prctl"], Allow), &["amd64", "x32"]));
    syscalls.push(with_arches(
        rule(&["modify_ldt"], Allow),
        &["amd64", "x32", "x86"],
    ));
    syscalls.push(with_arches(
        rule(
            &[
                "s390_pci_mmio_read",
                "s390_pci_mmio_write",
                "s390_runtime_instr",
            ],
            Allow,
        ),
        &["s390", "s390x"],
    ));
    syscalls.push(with_arches(
        rule(&["riscv_flush_icache"], Allow),
        &["riscv64"],
    ));
    syscalls.push(with_caps(
        rule(&["open_by_handle_at"], Allow),
        &["CAP_DAC_READ_SEARCH"],
    ));
    syscalls.push(with_caps(
        rule(
            &[
                "bpf",
                "clone",
                "clone3",
                "fanotify_init",
                "fsconfig",
                "fsmount",
                "fsopen",
                "fspick",
                "lookup_dcookie",
                "mount",
                "mount_setattr",
                "move_mount",
                "open_tree",
                "perf_event_open",
                "quotactl",
                "quotactl_fd",
                "setdomainname",
                "sethostname",
                "setns",
                "syslog",
                "umount",
                "umount2",
                "unshare",
            ],
            Allow,
        ),
        &["CAP_SYS_ADMIN"],
    ));
    let mut clone = rule(&["clone"], Allow);
    clone.args = Some(vec![arg(0, ScmpOp::MaskedEq, CLONE_NAMESPACE_FLAGS)]);
    clone.excludes.caps = strings(&["CAP_SYS_ADMIN"]);
    clone.excludes.arches = strings(&["s390", "s390x"]);
    syscalls.push(clone);
    let mut clone_s390 = rule(&["clone"], Allow);
    clone_s390.args = Some(vec![arg(1, ScmpOp::MaskedEq, CLONE_NAMESPACE_FLAGS)]);
    clone_s390.includes.arches = strings(&["s390", "s390x"]);
    clone_s390.excludes.caps = strings(&["CAP_SYS_ADMIN"]);
    syscalls.push(clone_s390);
    let mut clone3 = rule(&["clone3"], ScmpAction::Errno);
    clone3.errno_ret = Some(38); // ENOSYS
    clone3.excludes.caps = strings(&["CAP_SYS_ADMIN"]);
    syscalls.push(clone3);
    for (names, cap) in [
        (&["reboot"][..], "CAP_SYS_BOOT"),
        (&["chroot"], "CAP_SYS_CHROOT"),
        (
            &["delete_module", "init_module", "finit_module"],
            "CAP_SYS_MODULE",
        ),
        (&["acct"], "CAP_SYS_PACCT"),
        (
            &[
                "kcmp",
                "pidfd_getfd",
                "process_madvise",
                "process_vm_readv",
                "process_vm_writev",
                "ptrace",
            ],
            "CAP_SYS_PTRACE",
        ),
        (&["iopl", "ioperm"], "CAP_SYS_RAWIO"),
        (
            &["settimeofday", "stime", "clock_settime", "clock_settime64"],
            "CAP_SYS_TIME",
        ),
        (&["vhangup"], "CAP_SYS_TTY_CONFIG"),
        (
            &[
                "get_mempolicy",
                "mbind",
                "set_mempolicy",
                "set_mempolicy_home_node",
            ],
            "CAP_SYS_NICE",
        ),
        (&["syslog"], "CAP_SYSLOG"),
        (&["bpf"], "CAP_BPF"),
        (&["perf_event_open"], "CAP_PERFMON"),
    ] {
        syscalls.push(with_caps(rule(names, Allow), &[cap]));
    }
    SeccompProfile {
        default_action: ScmpAction::Errno,
        default_errno_ret: Some(1),
        architectures: None,
        flags: None,
        listener_path: None,
        syscalls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform<'static> {
        Platform {
            arch: "amd64",
            kernel: (6, 12),
        }
    }

    fn allowed<'a>(p: &'a ResolvedProfile, name: &str) -> Vec<&'a ResolvedRule> {
        p.rules
            .iter()
            .filter(|r| r.name == name && r.verdict == Verdict::Allow)
            .collect()
    }

    #[test]
    fn capability_adjustments_follow_docker() {
        let none: Vec<String> = vec![];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Capabilities::adjusted(&none, &none).unwrap(),
            Capabilities::container_default()
        );
        assert!(!Capabilities::container_default().has_named("CAP_MKNOD"));
        assert!(!Capabilities::container_default().has_named("CAP_SYS_ADMIN"));
        let c =
            Capabilities::adjusted(&s(&["net_admin", "CAP_SYS_PTRACE"]), &s(&["chown"])).unwrap();
        assert!(c.has_named("CAP_NET_ADMIN") && c.has_named("CAP_SYS_PTRACE"));
        assert!(!c.has_named("CAP_CHOWN") && c.has_named("CAP_KILL"));
        let c = Capabilities::adjusted(&s(&["NET_BIND_SERVICE"]), &s(&["ALL"])).unwrap();
        assert_eq!(c.names(), vec!["CAP_NET_BIND_SERVICE"]);
        let c = Capabilities::adjusted(&s(&["all"]), &s(&["SYS_ADMIN"])).unwrap();
        assert!(c.has_named("CAP_BPF") && !c.has_named("CAP_SYS_ADMIN"));
        assert_eq!(
            Capabilities::adjusted(&s(&["FOO"]), &none),
            Err(SecurityError::UnknownCapability("CAP_FOO".into()))
        );
        assert_eq!(Capabilities::all().names().len(), 41);
    }

    #[test]
    fn the_default_profile_denies_what_docker_denies() {
        let p = docker_default_profile()
            .resolve(Capabilities::container_default(), amd64())
            .unwrap();
        assert_eq!(p.default, Verdict::Errno(1));
        for denied in [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "mount",
            "unshare",
            "setns",
            "userfaultfd",
            "kexec_load",
            "perf_event_open",
            "open_by_handle_at",
            "reboot",
            "init_module",
            "ptrace_foo",
            "iopl",
            "clock_settime",
            "arm_fadvise64_64",
        ] {
            assert!(allowed(&p, denied).is_empty(), "{denied} is allowed");
        }
        // ptrace needs no capability since 4.8, as in Docker.
        assert_eq!(allowed(&p, "ptrace").len(), 1);
        assert!(allowed(&p, "ptrace")[0].args.is_empty());
        // clone only without namespace flags; clone3 fails with ENOSYS.
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args[0].op, ScmpOp::MaskedEq);
        assert_eq!(clone[0].args[0].value, CLONE_NAMESPACE_FLAGS);
        assert!(
            p.rules
                .iter()
                .any(|r| r.name == "clone3" && r.verdict == Verdict::Errno(38))
        );
        // socket for every family but AF_VSOCK.
        assert_eq!(allowed(&p, "socket")[0].args, vec![arg(0, ScmpOp::Ne, 40)]);
        assert_eq!(allowed(&p, "personality").len(), 5);
        assert_eq!(allowed(&p, "arch_prctl").len(), 1);
        assert_eq!(allowed(&p, "chroot").len(), 1);
    }

    #[test]
    fn capabilities_open_the_calls_they_govern() {
        let sys_admin = Capabilities::container_default().with(21);
        let p = docker_default_profile()
            .resolve(sys_admin, amd64())
            .unwrap();
        for name in ["mount", "unshare", "setns", "bpf", "clone3"] {
            assert_eq!(allowed(&p, name).len(), 1, "{name}");
        }
        // The unconditional clone rule, not the flag-checking one.
        assert!(allowed(&p, "clone")[0].args.is_empty());
        assert!(!p.rules.iter().any(|r| r.verdict == Verdict::Errno(38)));
        let none = docker_default_profile()
            .resolve(Capabilities::NONE, amd64())
            .unwrap();
        assert!(allowed(&none, "chroot").is_empty());
        // An old kernel loses the capability-free ptrace rule.
        let old = docker_default_profile()
            .resolve(
                Capabilities::container_default(),
                Platform {
                    arch: "amd64",
                    kernel: (4, 4),
                },
            )
            .unwrap();
        assert!(allowed(&old, "ptrace").is_empty());
    }

    #[test]
    fn the_default_profile_round_trips_docker_json() {
        let p = docker_default_profile();
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(SeccompProfile::from_json(&json).unwrap(), p);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains("\"defaultAction\":\"SCMP_ACT_ERRNO\""));
        assert!(text.contains("\"op\":\"SCMP_CMP_MASKED_EQ\""));
    }

    #[test]
    fn user_profiles_in_docker_format_parse_and_resolve() {
        let json = br#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"name": "chmod", "action": "SCMP_ACT_KILL"},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 255, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["s390_only"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["s390x"]}}
            ],
            "someFutureField": 1
        }"#;
        let p = SeccompProfile::from_json(json)
            .unwrap()
            .resolve(Capabilities::NONE, amd64())
            .unwrap();
        assert_eq!(p.default, Verdict::Allow);
        let names: Vec<_> = p.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mkdir", "mkdirat", "chmod", "personality"]);
        assert_eq!(p.rules[0].verdict, Verdict::Errno(13));
        assert_eq!(p.rules[2].verdict, Verdict::KillThread);
        assert_eq!(p.rules[3].args[0].value_two, 8);
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let bad = |json: &str| SeccompProfile::from_json(json.as_bytes()).unwrap_err();
        assert!(matches!(bad("{"), SecurityError::Decode(_)));
        assert!(matches!(bad("[]"), SecurityError::Decode(_)));
        assert!(matches!(
            bad(r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#),
            SecurityError::Decode(_)
        ));
        let e = bad(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(e.to_string().contains("argument index 6"), "{e}");
        let e = bad(r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}"#);
        assert!(e.to_string().contains("rule 1 has no action"), "{e}");
        let e = bad(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(e.to_string().contains("names no system call"), "{e}");
        let e = bad(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
        assert!(matches!(e, SecurityError::Unsupported(_)));
        let e = bad(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_NOPE"]}}]}"#,
        );
        assert!(e.to_string().contains("CAP_NOPE"), "{e}");
        let big = vec![b' '; MAX_PROFILE_LEN + 1];
        assert!(matches!(
            SeccompProfile::from_json(&big),
            Err(SecurityError::TooLarge(_))
        ));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.12.48-arca"), Some((6, 12)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("5.10+"), Some((5, 10)));
        assert_eq!(parse_kernel_version("six"), None);
    }

    #[test]
    fn security_defaults_to_dockers_confinement() {
        let s: Security = serde_json::from_str("{}").unwrap();
        assert_eq!(s.capabilities, Capabilities::container_default());
        assert_eq!(s.seccomp, Seccomp::Default);
        assert!(!s.no_new_privileges && !s.privileged);
        let json = serde_json::to_string(&Security {
            seccomp: Seccomp::Unconfined,
            ..Security::default()
        })
        .unwrap();
        assert!(
            json.contains(r#""seccomp":{"kind":"unconfined"}"#),
            "{json}"
        );
    }
}
