//! An OCI bundle's `config.json`, read with `oci-spec` and turned into the agent's
//! [`ContainerSpec`]. Every field Arca applies is mapped; every field it cannot apply is
//! refused by name (an OCI runtime that silently drops a limit or a namespace would
//! run the container with less confinement than its caller asked for). The mapping is
//! pure: it reads no file but `config.json` itself (see [`load`]), so the fuzz target
//! `oci_config` can drive it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arca_protocol::{
    Capabilities, ContainerSpec, Mount, MountSource, NetworkMode, ProcessSpec, Resources, Rlimit,
    Rootfs, Seccomp, SeccompProfile, Security, Sysctl, WritableLayer,
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The annotation that chooses a container's isolation: `vm` or `process`.
pub const ISOLATION_ANNOTATION: &str = "io.arca.isolation";

/// Largest `config.json` read (podman's, with Docker's seccomp profile, is about 20 KiB).
pub const MAX_CONFIG_LEN: u64 = 4 << 20;

/// Errors reading a bundle's configuration.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `config.json` could not be read.
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// It is not an OCI runtime configuration.
    #[error("{path} is not a valid OCI runtime configuration: {message}")]
    Parse { path: PathBuf, message: String },
    /// It asks for something Arca does not do.
    #[error("config.json: {0} is not supported by arca-runtime")]
    Unsupported(String),
    /// It asks for something no runtime could do.
    #[error("config.json: {0}")]
    Invalid(String),
}

/// How a container is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Its own microVM.
    Vm,
    /// Namespaces and cgroups on this host, through a host `arca-agent`.
    Process,
}

/// What a bundle asks for, in the agent's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// The agent's spec (its writable layer is set by the caller, which owns the
    /// container's directory).
    pub spec: ContainerSpec,
    pub isolation: Isolation,
    /// `linux.cgroupsPath`, relative to the cgroup2 mount, if given.
    pub cgroup_parent: Option<String>,
    /// The bundle's annotations, for `state`.
    pub annotations: HashMap<String, String>,
}

/// Reads `BUNDLE/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    use std::io::Read;
    let path = bundle.join("config.json");
    let read = |source| SpecError::Read {
        path: path.clone(),
        source,
    };
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .map_err(read)?
        .take(MAX_CONFIG_LEN + 1)
        .read_to_end(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_CONFIG_LEN {
        return Err(SpecError::Parse {
            path,
            message: format!("larger than {MAX_CONFIG_LEN} bytes"),
        });
    }
    parse(&text).map_err(|message| SpecError::Parse { path, message })
}

/// Parses a `config.json`'s bytes.
pub fn parse(text: &[u8]) -> Result<Spec, String> {
    serde_json::from_slice(text).map_err(|e| e.to_string())
}

/// The mounts the agent makes itself for every container, by destination and type.
const OWN_MOUNTS: [(&str, &str); 7] = [
    ("/proc", "proc"),
    ("/dev", "tmpfs"),
    ("/dev/pts", "devpts"),
    ("/dev/shm", "tmpfs"),
    ("/dev/mqueue", "mqueue"),
    ("/sys", "sysfs"),
    ("/sys/fs/cgroup", "cgroup"),
];

/// Bind mount options taken (the agent binds recursively and privately; `nosuid`,
/// `nodev` and `noexec` are applied).
const BIND_OPTIONS: [&str; 12] = [
    "bind", "rbind", "ro", "rw", "private", "rprivate", "nosuid", "nodev", "noexec", "relatime",
    "z", "Z",
];

/// The isolation the bundle's annotation [`ISOLATION_ANNOTATION`] asks (a microVM
/// without one).
pub fn isolation(spec: &Spec) -> Result<Isolation, SpecError> {
    let asked = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ISOLATION_ANNOTATION));
    match asked.map(String::as_str) {
        None | Some("vm") => Ok(Isolation::Vm),
        Some("process") => Ok(Isolation::Process),
        Some(other) => Err(SpecError::Invalid(format!(
            "annotation {ISOLATION_ANNOTATION}={other:?}: use vm or process"
        ))),
    }
}

/// Turns `spec`, the configuration of bundle `bundle`, into container `id`'s.
pub fn translate(spec: &Spec, bundle: &Path, id: &str) -> Result<Container, SpecError> {
    let unsupported = |what: &str| Err(SpecError::Unsupported(what.to_string()));
    let annotations = spec.annotations().clone().unwrap_or_default();
    let isolation = isolation(spec)?;
    if spec.hooks().as_ref().is_some_and(|h| {
        [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
            h.poststop(),
        ]
        .iter()
        .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
    }) {
        return unsupported("hooks");
    }
    // The root: a directory, its path relative to the bundle unless absolute.
    let Some(root) = spec.root() else {
        return Err(SpecError::Invalid("root is missing".into()));
    };
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::Invalid("process is missing".into()))?;
    let linux = spec
        .linux()
        .clone()
        .ok_or_else(|| SpecError::Invalid("linux is missing".into()))?;

    // Namespaces: the agent makes new pid, mount, ipc and uts namespaces (and a cgroup
    // namespace) for every container, and a network namespace unless the container is
    // on its sandbox's network. Joining an existing one, or sharing the host's pid,
    // ipc, uts or mount namespace, is not something it does.
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let mut network = NetworkMode::Host;
    for ns in &namespaces {
        if let Some(path) = ns.path() {
            return unsupported(&format!(
                "joining the {} namespace at {}",
                ns.typ(),
                path.display()
            ));
        }
        match ns.typ() {
            LinuxNamespaceType::Network => network = NetworkMode::Isolated,
            LinuxNamespaceType::User => return unsupported("a user namespace"),
            LinuxNamespaceType::Time => return unsupported("a time namespace"),
            _ => {}
        }
    }
    for needed in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ] {
        if !namespaces.iter().any(|n| n.typ() == needed) {
            return unsupported(&format!("sharing the host's {needed} namespace"));
        }
    }
    if network == NetworkMode::Host && isolation == Isolation::Vm {
        return unsupported("the host's network namespace for a microVM");
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    {
        return unsupported("uid/gid mappings");
    }
    if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return unsupported("linux.devices (the container gets the standard devices only)");
    }
    for (set, what) in [
        (linux.mount_label().is_some(), "linux.mountLabel"),
        (linux.intel_rdt().is_some(), "linux.intelRdt"),
        (linux.personality().is_some(), "linux.personality"),
        (linux.time_offsets().is_some(), "linux.timeOffsets"),
        (linux.memory_policy().is_some(), "linux.memoryPolicy"),
        (
            linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()),
            "linux.netDevices",
        ),
        (
            linux
                .rootfs_propagation()
                .as_ref()
                .is_some_and(|p| !matches!(p.as_str(), "" | "private" | "rprivate")),
            "linux.rootfsPropagation other than private",
        ),
    ] {
        if set {
            return unsupported(what);
        }
    }

    let resources = resources(&linux)?;
    let mut sysctls = Vec::new();
    for (name, value) in linux.sysctl().clone().unwrap_or_default() {
        let s = Sysctl { name, value };
        s.check()
            .and_then(|()| s.check_network(network == NetworkMode::Host))
            .map_err(|e| SpecError::Invalid(format!("linux.sysctl: {}", e.message)))?;
        sysctls.push(s);
    }
    if let Some(d) = spec.domainname().as_ref().filter(|d| !d.is_empty()) {
        sysctls.push(Sysctl {
            name: "kernel.domainname".into(),
            value: d.clone(),
        });
    }
    sysctls.sort_by(|a, b| a.name.cmp(&b.name));

    let mut security = Security {
        capabilities: capabilities(process)?,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        seccomp: match linux.seccomp() {
            None => Seccomp::Unconfined,
            Some(s) => {
                let json = serde_json::to_value(s)
                    .map_err(|e| SpecError::Invalid(format!("linux.seccomp: {e}")))?;
                let profile: SeccompProfile = serde_json::from_value(json)
                    .map_err(|e| SpecError::Invalid(format!("linux.seccomp: {e}")))?;
                if profile.listener_path.is_some() {
                    return unsupported("linux.seccomp.listenerPath");
                }
                profile
                    .validate()
                    .map_err(|e| SpecError::Invalid(format!("linux.seccomp: {e}")))?;
                Seccomp::Profile(Box::new(profile))
            }
        },
        privileged: false,
        masked_paths: Vec::new(),
        readonly_paths: Vec::new(),
    };
    // The agent masks Docker's paths under /proc and /sys in every unprivileged
    // container, and those the bundle lists beyond them; both lists empty is a
    // privileged container's (podman --privileged), with /proc and /sys unmasked.
    let masked = linux.masked_paths().clone().unwrap_or_default();
    let readonly = linux.readonly_paths().clone().unwrap_or_default();
    security.privileged = masked.is_empty() && readonly.is_empty();
    security.masked_paths = masked
        .into_iter()
        .filter(|p| !arca_protocol::MASKED_PATHS.contains(&p.as_str()))
        .collect();
    // (A path the agent masks is read-only too: podman lists /proc/asound here.)
    security.readonly_paths = readonly
        .into_iter()
        .filter(|p| {
            !arca_protocol::READONLY_PATHS.contains(&p.as_str())
                && !arca_protocol::MASKED_PATHS.contains(&p.as_str())
        })
        .collect();

    let mut mounts = Vec::new();
    for m in spec.mounts().clone().unwrap_or_default() {
        let target = m.destination().display().to_string();
        let typ = m.typ().clone().unwrap_or_default();
        let options = m.options().clone().unwrap_or_default();
        let option = |name: &str| options.iter().any(|o| o == name);
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return unsupported(&format!("an idmapped mount on {target}"));
        }
        if OWN_MOUNTS
            .iter()
            .any(|(d, t)| *d == target && (*t == typ || typ == "bind"))
            && !(target == "/dev/shm" && typ == "bind")
        {
            continue;
        }
        let source = match typ.as_str() {
            "bind" | "" if option("bind") || option("rbind") || typ == "bind" => {
                for o in &options {
                    if !BIND_OPTIONS.contains(&o.as_str()) {
                        return unsupported(&format!("mount option {o:?} on {target}"));
                    }
                }
                let Some(source) = m.source() else {
                    return Err(SpecError::Invalid(format!(
                        "the bind mount on {target} has no source"
                    )));
                };
                if isolation == Isolation::Vm {
                    return unsupported(&format!("bind mounts in a microVM ({target})"));
                }
                MountSource::Bind {
                    path: source.display().to_string(),
                    nosuid: option("nosuid"),
                    nodev: option("nodev"),
                    noexec: option("noexec"),
                }
            }
            "tmpfs" => {
                let mut size = None;
                let mut mode = None;
                for o in &options {
                    if let Some(v) = o.strip_prefix("size=") {
                        size = Some(tmpfs_size(v).ok_or_else(|| {
                            SpecError::Invalid(format!("tmpfs size {v:?} on {target}"))
                        })?);
                    } else if let Some(v) = o.strip_prefix("mode=") {
                        mode = Some(u32::from_str_radix(v, 8).map_err(|_| {
                            SpecError::Invalid(format!("tmpfs mode {v:?} on {target}"))
                        })?);
                    } else if !matches!(
                        o.as_str(),
                        "nosuid" | "nodev" | "noexec" | "exec" | "rw" | "strictatime" | "relatime"
                    ) {
                        return unsupported(&format!("tmpfs option {o:?} on {target}"));
                    }
                }
                MountSource::Tmpfs {
                    size,
                    mode,
                    noexec: option("noexec"),
                }
            }
            other => {
                return unsupported(&format!("a mount of type {other:?} on {target}"));
            }
        };
        mounts.push(Mount {
            target,
            source,
            readonly: option("ro"),
        });
    }

    let process = process_spec(process)?;
    let spec = ContainerSpec {
        id: id.to_string(),
        rootfs: Rootfs {
            source: rootfs.display().to_string(),
            fstype: "dir".into(),
            // Written in place, as runc writes a bundle's root.
            writable: WritableLayer::InPlace {
                read_only: root.readonly().unwrap_or(false),
            },
        },
        process,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        resources,
        network,
        init: false,
        interfaces: Vec::new(),
        hosts: Vec::new(),
        dns: Vec::new(),
        mounts,
        security,
        sysctls,
    };
    spec.validate().map_err(|e| SpecError::Invalid(e.message))?;
    let cgroup_parent = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.display().to_string().trim_matches('/').to_string())
        .filter(|p| !p.is_empty());
    if let Some(p) = &cgroup_parent
        && (p.contains(':') || p.split('/').any(|c| c.is_empty() || c == "." || c == ".."))
    {
        return unsupported(&format!(
            "linux.cgroupsPath {p:?} (a cgroupfs path; the systemd form slice:prefix:name is not supported)"
        ));
    }
    Ok(Container {
        spec,
        isolation,
        cgroup_parent,
        annotations,
    })
}

/// The process of a `config.json`, or of `exec --process`: what the agent runs.
pub fn process_spec(process: &oci_spec::runtime::Process) -> Result<ProcessSpec, SpecError> {
    let unsupported = |what: &str| Err(SpecError::Unsupported(what.to_string()));
    let user = process.user();
    if user.umask().is_some_and(|u| u != 0o022) {
        return unsupported("a umask other than 0022");
    }
    for (set, what) in [
        (process.command_line().is_some(), "process.commandLine"),
        (
            process
                .apparmor_profile()
                .as_ref()
                .is_some_and(|p| !p.is_empty()),
            "process.apparmorProfile (Arca applies no AppArmor profile)",
        ),
        (
            process
                .selinux_label()
                .as_ref()
                .is_some_and(|p| !p.is_empty()),
            "process.selinuxLabel",
        ),
        (process.oom_score_adj().is_some(), "process.oomScoreAdj"),
        (process.io_priority().is_some(), "process.ioPriority"),
        (process.scheduler().is_some(), "process.scheduler"),
        (
            process.exec_cpu_affinity().is_some(),
            "process.execCPUAffinity",
        ),
        (
            process.terminal().unwrap_or(false),
            "process.terminal (a console socket)",
        ),
    ] {
        if set {
            return unsupported(what);
        }
    }
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(SpecError::Invalid("process.args is empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::Invalid(format!(
            "process.cwd {} is not absolute",
            process.cwd().display()
        )));
    }
    let mut rlimits = Vec::new();
    for r in process.rlimits().clone().unwrap_or_default() {
        let name = spec_name(&r.typ());
        let name = name.trim_start_matches("RLIMIT_").to_ascii_lowercase();
        if arca_protocol::rlimit_resource_known(&name).is_none() {
            return unsupported(&format!("rlimit {name}"));
        }
        rlimits.push(Rlimit {
            name,
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    Ok(ProcessSpec {
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd: Some(process.cwd().display().to_string()),
        user: Some(format!("{}:{}", user.uid(), user.gid())),
        additional_groups: user
            .additional_gids()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(u32::to_string)
            .collect(),
        terminal: false,
        // The runtime's stdin is the container's, whatever it is.
        stdin: true,
        detached: false,
        privileged: false,
        rlimits,
        builtin: None,
    })
}

/// The capability set root in the container keeps: the bounding set, which must hold
/// the others (the agent gives root one set for all five, and a non-root user none).
pub fn capabilities(process: &oci_spec::runtime::Process) -> Result<Capabilities, SpecError> {
    let Some(caps) = process.capabilities() else {
        return Ok(Capabilities::NONE);
    };
    let set = |list: &Option<oci_spec::runtime::Capabilities>| -> Result<Capabilities, SpecError> {
        let mut out = Capabilities::NONE;
        for c in list.iter().flatten() {
            let name = spec_name(c);
            let n = arca_protocol::capability_number(&name)
                .ok_or_else(|| SpecError::Unsupported(format!("capability {name}")))?;
            out = out.with(n);
        }
        Ok(out)
    };
    // Root keeps its set across exec without them; a non-root user would need them
    // to keep any, and the agent gives a non-root user none.
    if process.user().uid() != 0 && caps.ambient().as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(SpecError::Unsupported(
            "ambient capabilities for a non-root user".into(),
        ));
    }
    let bounding = set(caps.bounding())?;
    // `mknod` is harmless only behind a device filter, which Arca does not have (so
    // `arca run` drops the capability too): with it, the container's root could make
    // a node for a host disk and write to it.
    if bounding.has_named("CAP_MKNOD") {
        return Err(SpecError::Unsupported(
            "CAP_MKNOD (Arca has no device filter to make it harmless)".into(),
        ));
    }
    for (name, other) in [
        ("effective", caps.effective()),
        ("permitted", caps.permitted()),
        ("inheritable", caps.inheritable()),
        ("ambient", caps.ambient()),
    ] {
        let s = set(other)?;
        if s.0 & !bounding.0 != 0 {
            return Err(SpecError::Invalid(format!(
                "process.capabilities.{name} holds capabilities outside the bounding set"
            )));
        }
    }
    Ok(bounding)
}

/// `linux.resources`: memory, CPU quota and pids limits; the device rules are
/// accepted as the agent's `/dev` holds the standard devices only; anything else is
/// refused.
fn resources(linux: &oci_spec::runtime::Linux) -> Result<Resources, SpecError> {
    let mut out = Resources::default();
    let Some(r) = linux.resources() else {
        return Ok(out);
    };
    let unsupported = |what: &str| Err(SpecError::Unsupported(format!("linux.resources.{what}")));
    if let Some(m) = r.memory() {
        if m.reservation().is_some() {
            return unsupported("memory.reservation");
        }
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            return unsupported("memory.kernel");
        }
        if m.swappiness().is_some() {
            return unsupported("memory.swappiness");
        }
        if m.disable_oom_killer() == Some(true) {
            return unsupported("memory.disableOOMKiller");
        }
        out.memory_bytes = m.limit().filter(|l| *l > 0).map(|l| l as u64);
        // The agent allows no swap beside a memory limit (memory.swap.max 0): a swap
        // limit alone would be lost.
        if m.swap().is_some_and(|s| s > 0) && out.memory_bytes.is_none() {
            return unsupported("memory.swap without memory.limit");
        }
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some() {
            return unsupported("cpu.shares");
        }
        if c.cpus().as_ref().is_some_and(|s| !s.is_empty())
            || c.mems().as_ref().is_some_and(|s| !s.is_empty())
        {
            return unsupported("cpu.cpus/mems (cpusets)");
        }
        if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
            return unsupported("cpu.realtime*");
        }
        if c.burst().is_some() || c.idle().is_some() {
            return unsupported("cpu.burst/idle");
        }
        out.cpu_quota_us = c.quota().filter(|q| *q > 0).map(|q| q as u64);
        out.cpu_period_us = c.period();
    }
    if let Some(p) = r.pids() {
        out.pids_max = (p.limit() > 0).then_some(p.limit() as u64);
    }
    for (set, what) in [
        (r.block_io().is_some(), "blockIO"),
        (
            r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()),
            "hugepageLimits",
        ),
        (r.network().is_some(), "network"),
        (r.rdma().as_ref().is_some_and(|h| !h.is_empty()), "rdma"),
        (
            r.unified().as_ref().is_some_and(|h| !h.is_empty()),
            "unified",
        ),
    ] {
        if set {
            return unsupported(what);
        }
    }
    Ok(out)
}

/// The name the runtime spec gives `value` (`CAP_KILL`, `RLIMIT_NOFILE`): its JSON.
fn spec_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A tmpfs `size=` value: bytes, or with a k, m or g suffix.
fn tmpfs_size(v: &str) -> Option<u64> {
    let (digits, unit) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&v[..i], 1 << 20),
        (i, 'g' | 'G') => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const PODMAN: &str = include_str!("testdata/podman.json");
    const RUNC_SPEC: &str = include_str!("testdata/runc-spec.json");

    /// podman's `config.json` for `run --rm --network none busybox echo hi`, with
    /// process isolation, edited by `edit`.
    fn podman(edit: impl FnOnce(&mut Value)) -> Result<Container, SpecError> {
        let mut v: Value = serde_json::from_str(PODMAN).unwrap();
        v["annotations"][ISOLATION_ANNOTATION] = json!("process");
        edit(&mut v);
        let spec = parse(v.to_string().as_bytes()).map_err(SpecError::Invalid)?;
        translate(&spec, Path::new("/bundle"), "c1")
    }

    fn refused(r: Result<Container, SpecError>, words: &str) {
        match r {
            Err(e) => assert!(e.to_string().contains(words), "{e} (wanted {words:?})"),
            Ok(c) => panic!("accepted, wanted a refusal naming {words:?}: {c:?}"),
        }
    }

    #[test]
    fn podmans_configuration_maps_field_by_field() {
        let c = podman(|_| {}).unwrap();
        assert_eq!(c.isolation, Isolation::Process);
        let s = &c.spec;
        assert_eq!(s.id, "c1");
        assert_eq!(s.rootfs.fstype, "dir");
        assert!(
            s.rootfs
                .source
                .starts_with("/var/lib/containers/storage/vfs/dir/")
        );
        assert_eq!(s.process.args, ["echo", "hi"]);
        assert!(s.process.env.contains(&"container=podman".to_string()));
        assert_eq!(s.process.cwd.as_deref(), Some("/"));
        assert_eq!(s.process.user.as_deref(), Some("0:0"));
        assert!(s.process.stdin && !s.process.terminal);
        let nofile = s
            .process
            .rlimits
            .iter()
            .find(|r| r.name == "nofile")
            .unwrap();
        assert_eq!((nofile.soft, nofile.hard), (1048576, 1048576));
        assert_eq!(s.resources.pids_max, Some(2048));
        assert_eq!(s.network, NetworkMode::Isolated);
        assert_eq!(s.hostname.as_deref(), Some("ffbcf1a15fa6"));
        assert_eq!(
            s.sysctls,
            [Sysctl {
                name: "net.ipv4.ping_group_range".into(),
                value: "0 0".into()
            }]
        );
        let targets: Vec<&str> = s.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/etc/hostname",
                "/etc/hosts",
                "/dev/shm",
                "/run/.containerenv"
            ]
        );
        assert!(
            s.mounts
                .iter()
                .all(|m| matches!(m.source, MountSource::Bind { .. }) && !m.readonly)
        );
        let shm = s.mounts.iter().find(|m| m.target == "/dev/shm").unwrap();
        assert_eq!(
            shm.source,
            MountSource::Bind {
                path: "/var/lib/containers/storage/vfs-containers/ffbcf1a15fa669c5421fa5fc1e57e8800d0985740d2be8581cea30945f033a27/userdata/shm".into(),
                nosuid: true,
                nodev: true,
                noexec: true
            }
        );
        assert_eq!(
            s.rootfs.writable,
            WritableLayer::InPlace { read_only: false }
        );
        // podman's lists are Docker's, but for two the agent masks on top of its own.
        assert_eq!(
            s.security.masked_paths,
            ["/sys/fs/selinux", "/sys/dev/block"]
        );
        assert!(s.security.readonly_paths.is_empty());
        assert!(matches!(s.security.seccomp, Seccomp::Profile(_)));
        assert!(!s.security.privileged);
        assert!(s.security.capabilities.has_named("CAP_SYS_CHROOT"));
        assert!(!s.security.capabilities.has_named("CAP_NET_RAW"));
        assert_eq!(
            c.cgroup_parent.as_deref(),
            Some(
                "libpod_parent/libpod-ffbcf1a15fa669c5421fa5fc1e57e8800d0985740d2be8581cea30945f033a27"
            )
        );
        assert_eq!(
            c.annotations
                .get("io.container.manager")
                .map(String::as_str),
            Some("libpod")
        );
    }

    #[test]
    fn a_microvm_is_the_default_and_takes_no_host_binds() {
        refused(
            podman(|v| {
                v["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove(ISOLATION_ANNOTATION);
            }),
            "bind mounts in a microVM",
        );
        refused(
            podman(|v| v["annotations"][ISOLATION_ANNOTATION] = json!("container")),
            "use vm or process",
        );
    }

    #[test]
    fn runcs_default_spec_maps_once_it_has_no_terminal() {
        let parse_runc = |edit: &dyn Fn(&mut Value)| {
            let mut v: Value = serde_json::from_str(RUNC_SPEC).unwrap();
            v["annotations"] = json!({ISOLATION_ANNOTATION: "process"});
            edit(&mut v);
            translate(
                &parse(v.to_string().as_bytes()).unwrap(),
                Path::new("/b"),
                "c",
            )
        };
        refused(parse_runc(&|_| {}), "process.terminal");
        let c = parse_runc(&|v| v["process"]["terminal"] = json!(false)).unwrap();
        assert_eq!(c.spec.rootfs.source, "/b/rootfs");
        assert_eq!(
            c.spec.rootfs.writable,
            WritableLayer::InPlace { read_only: true }
        );
        assert!(c.spec.security.no_new_privileges);
        assert_eq!(c.spec.security.capabilities.names().len(), 3);
        // No seccomp section: no filter, as runc runs it.
        assert_eq!(c.spec.security.seccomp, Seccomp::Unconfined);
        assert!(c.spec.mounts.is_empty(), "{:?}", c.spec.mounts);
        // Without masked and read-only paths: privileged, as podman --privileged asks.
        let c = parse_runc(&|v| {
            v["process"]["terminal"] = json!(false);
            v["linux"]["maskedPaths"] = json!([]);
            v["linux"]["readonlyPaths"] = json!([]);
        })
        .unwrap();
        assert!(c.spec.security.privileged);
    }

    /// What a hostile or careless bundle asks that Arca cannot honour is refused by
    /// name, never dropped: the container would run with less confinement (or another
    /// namespace's view) than asked.
    #[test]
    fn what_arca_cannot_apply_is_refused_by_name() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "joining the net namespace at /proc/1/ns/net",
                Box::new(|v| {
                    v["linux"]["namespaces"][1] =
                        json!({"type": "network", "path": "/proc/1/ns/net"})
                }),
            ),
            (
                "a user namespace",
                Box::new(|v| {
                    v["linux"]["namespaces"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"type": "user"}))
                }),
            ),
            (
                "sharing the host's pid namespace",
                Box::new(|v| {
                    v["linux"]["namespaces"].as_array_mut().unwrap().remove(0);
                }),
            ),
            (
                "uid/gid mappings",
                Box::new(|v| {
                    v["linux"]["uidMappings"] =
                        json!([{"containerID": 0, "hostID": 100000, "size": 65536}])
                }),
            ),
            (
                "hooks",
                Box::new(|v| v["hooks"] = json!({"prestart": [{"path": "/bin/true"}]})),
            ),
            (
                "not namespaced",
                Box::new(|v| v["linux"]["sysctl"] = json!({"kernel.pid_max": "10"})),
            ),
            (
                "Invalid sysctl name",
                Box::new(|v| v["linux"]["sysctl"] = json!({"net/../../kernel/pid_max": "10"})),
            ),
            (
                "not allowed in host network namespace",
                Box::new(|v| {
                    v["linux"]["namespaces"].as_array_mut().unwrap().remove(1);
                }),
            ),
            (
                "a mount of type \"nfs\"",
                Box::new(|v| {
                    v["mounts"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"destination": "/n", "type": "nfs", "source": "h:/x"}))
                }),
            ),
            (
                "mount option \"rshared\"",
                Box::new(|v| {
                    v["mounts"].as_array_mut().unwrap().push(
                        json!({"destination": "/x", "type": "bind", "source": "/", "options": ["rbind", "rshared"]}),
                    )
                }),
            ),
            (
                "linux.cgroupsPath",
                Box::new(|v| v["linux"]["cgroupsPath"] = json!("/a/../../etc")),
            ),
            (
                "linux.cgroupsPath",
                Box::new(|v| v["linux"]["cgroupsPath"] = json!("machine.slice:libpod:abc")),
            ),
            (
                "linux.resources.memory.reservation",
                Box::new(|v| v["linux"]["resources"]["memory"] = json!({"reservation": 1 << 20})),
            ),
            (
                "linux.resources.cpu.shares",
                Box::new(|v| v["linux"]["resources"]["cpu"] = json!({"shares": 512})),
            ),
            (
                "umask",
                Box::new(|v| v["process"]["user"]["umask"] = json!(0o077)),
            ),
            (
                "process.apparmorProfile",
                Box::new(|v| v["process"]["apparmorProfile"] = json!("containers-default")),
            ),
            (
                "linux.seccomp.listenerPath",
                Box::new(|v| v["linux"]["seccomp"]["listenerPath"] = json!("/run/notify.sock")),
            ),
            (
                "linux.devices",
                Box::new(|v| {
                    v["linux"]["devices"] =
                        json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}])
                }),
            ),
            (
                "process.cwd work is not absolute",
                Box::new(|v| v["process"]["cwd"] = json!("work")),
            ),
            (
                "process.args is empty",
                Box::new(|v| v["process"]["args"] = json!([])),
            ),
            (
                "outside the bounding set",
                Box::new(|v| {
                    v["process"]["capabilities"]["effective"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!("CAP_SYS_ADMIN"))
                }),
            ),
            (
                "ambient capabilities for a non-root user",
                Box::new(|v| {
                    v["process"]["user"]["uid"] = json!(1000);
                    v["process"]["capabilities"]["ambient"] = json!(["CAP_KILL"]);
                }),
            ),
            (
                "Invalid hostname",
                Box::new(|v| v["hostname"] = json!("bad/host")),
            ),
            // With CAP_MKNOD and no device filter, root in the container could make a
            // node for a host disk (containerd's default spec has the capability).
            (
                "CAP_MKNOD",
                Box::new(|v| {
                    for set in ["bounding", "effective", "permitted"] {
                        v["process"]["capabilities"][set]
                            .as_array_mut()
                            .unwrap()
                            .push(json!("CAP_MKNOD"))
                    }
                }),
            ),
            (
                "memory.swap without memory.limit",
                Box::new(|v| v["linux"]["resources"]["memory"] = json!({"swap": 1 << 30})),
            ),
            (
                "Invalid mount target",
                Box::new(|v| v["linux"]["maskedPaths"] = json!(["/proc/../etc/shadow"])),
            ),
        ];
        for (words, edit) in cases {
            refused(podman(edit), words);
        }
    }

    #[test]
    fn tmpfs_mounts_keep_their_size_mode_and_noexec() {
        let c = podman(|v| {
            v["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "noexec", "size=8m", "mode=700"]
            }))
        })
        .unwrap();
        let m = c.spec.mounts.last().unwrap();
        assert_eq!(m.target, "/scratch");
        assert_eq!(
            m.source,
            MountSource::Tmpfs {
                size: Some(8 << 20),
                mode: Some(0o700),
                noexec: true
            }
        );
        assert_eq!(tmpfs_size("65536k"), Some(65536 << 10));
        assert_eq!(tmpfs_size("x"), None);
        assert_eq!(tmpfs_size("99999999999999g"), None);
    }

    #[test]
    fn domainname_is_the_uts_namespaces_sysctl() {
        let c = podman(|v| v["domainname"] = json!("example.org")).unwrap();
        assert!(
            c.spec
                .sysctls
                .iter()
                .any(|s| s.name == "kernel.domainname" && s.value == "example.org")
        );
    }

    /// Bytes flipped, cut and repeated in a real configuration never panic the mapping
    /// (the fuzz target `oci_config` goes further).
    #[test]
    fn mutated_configurations_never_panic() {
        let base = PODMAN.as_bytes();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut b = base.to_vec();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[i] = next() as u8,
                    1 => {
                        b.truncate(i);
                    }
                    _ => {
                        let j = (next() as usize) % b.len();
                        let chunk: Vec<u8> = b[i.min(j)..i.max(j)].to_vec();
                        b.splice(i..i, chunk);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            if let Ok(spec) = parse(&b) {
                let _ = translate(&spec, Path::new("/b"), "c");
            }
        }
    }
}
