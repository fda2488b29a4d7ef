//! What `arca run` was asked ([`RunOptions`], kept as `options.json` for a detached
//! container's monitor), and what the container's process becomes with its image:
//! Docker's rules for the command, environment, user and working directory.

use arca_protocol::{
    Capabilities, HostEntry, Platform, ProcessSpec, Resources, Rlimit, Seccomp, SeccompProfile,
    Security,
};
use serde::{Deserialize, Serialize};

use super::health::HealthConfig;
use super::record::Isolation;
use crate::error::RunError;
use crate::image::store::Image;
use crate::logs::LogOptions;
use crate::ports::PortMapping;

/// What `arca run` was asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunOptions {
    /// Image reference.
    pub image: String,
    /// Arguments after the image (replace the image's Cmd).
    pub args: Vec<String>,
    /// `--entrypoint` (an empty string clears the image's).
    pub entrypoint: Option<String>,
    /// `-e`, in order.
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--init`.
    pub init: bool,
    /// `-i`.
    pub interactive: bool,
    /// `-t`.
    #[serde(default)]
    pub tty: bool,
    /// `--isolation`.
    pub isolation: Isolation,
    /// Container name (a generated one when absent).
    pub name: Option<String>,
    /// `-d`.
    pub detach: bool,
    /// `--rm`.
    pub rm: bool,
    /// `--network`: a network's name, `none` or `host`; the default network if absent.
    #[serde(default)]
    pub network: Option<String>,
    /// `--network-alias`: more names the container answers to on its network.
    #[serde(default)]
    pub network_aliases: Vec<String>,
    /// `-p`.
    #[serde(default)]
    pub publish: Vec<PortMapping>,
    /// `-P`: every exposed port (the image's `EXPOSE` and `--expose`) published on a
    /// free host port.
    #[serde(default)]
    pub publish_all: bool,
    /// `--expose`, as given.
    #[serde(default)]
    pub expose: Vec<String>,
    /// `--log-opt`: how the logs rotate.
    #[serde(default)]
    pub log: LogOptions,
    /// `--guest-console`: keep the microVM's console in `console.log`.
    #[serde(default)]
    pub guest_console: bool,
    /// `--no-snapshot`: boot the microVM cold instead of restoring a template.
    #[serde(default)]
    pub no_snapshot: bool,
    /// `--read-only`: the root filesystem is mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `-v`, `--mount` and `--tmpfs`, as asked (the record has them made).
    #[serde(default)]
    pub mounts: Vec<crate::storage::MountRequest>,
    /// `--volumes-from`: containers whose mounts this one gets (`NAME[:ro|rw]`).
    #[serde(default)]
    pub volumes_from: Vec<String>,
    /// `--storage-opt size=`: the writable layer's size in bytes (microVMs).
    #[serde(default)]
    pub storage_size: Option<u64>,
    /// Capabilities, `no_new_privs`, seccomp and `--privileged` (see [`security`]).
    #[serde(default)]
    pub security: Security,
    /// `--add-host NAME:IP`: extra `/etc/hosts` entries.
    #[serde(default)]
    pub add_hosts: Vec<HostEntry>,
    /// `--dns`: name servers for `/etc/resolv.conf` in place of the host's.
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// `--group-add`: supplementary groups of the container's processes.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// `--ulimit`: rlimits of the container's processes.
    #[serde(default)]
    pub ulimits: Vec<Rlimit>,
    /// `--sysctl`: namespaced kernel parameters of the container.
    #[serde(default)]
    pub sysctls: Vec<arca_protocol::Sysctl>,
    /// `--label` (and the image's labels under them).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--stop-signal`, else the image's `StopSignal`; SIGTERM when absent.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `--stop-timeout`: seconds `stop` waits before SIGKILL when it is not told (10).
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// `--cidfile`: where `run` and `create` write the container's id.
    #[serde(default)]
    pub cidfile: Option<std::path::PathBuf>,
    /// `--pull always|missing|never` (missing when absent).
    #[serde(default)]
    pub pull: Option<String>,
    /// `--sig-proxy=false`: a foreground run does not pass its signals on.
    #[serde(default)]
    pub no_sig_proxy: bool,
    /// `-a`: the streams a foreground run shows (`stdin`, `stdout`, `stderr`; empty is
    /// stdout and stderr, Docker's default). Stdin is open only with `-i`, as Docker's.
    #[serde(default)]
    pub attach: Vec<String>,
    /// `--restart`: what the container's monitor does when it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// `--pids-limit`: `pids.max`, none for 0 or less; absent: the isolation's default
    /// ([`DEFAULT_PROCESS_PIDS_LIMIT`] with process isolation, none in a microVM).
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// `--health-*` and `--no-healthcheck`: the container's own check, over its
    /// image's `HEALTHCHECK` field by field (see [`Self::health`]).
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
}

/// `--add-host NAME:IP` (or `NAME=IP`): an IPv4 address (Arca has no IPv6 yet).
pub fn parse_add_host(text: &str) -> Result<HostEntry, RunError> {
    let bad = || {
        RunError::Invalid(format!(
            "invalid argument {text:?} for \"--add-host\" flag: use NAME:IPV4 (IPv6 and host-gateway are not supported)"
        ))
    };
    let (name, ip) = text.split_once([':', '=']).ok_or_else(bad)?;
    let address = ip.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    if !arca_protocol::valid_host_name(name) {
        return Err(bad());
    }
    Ok(HostEntry {
        address,
        names: vec![name.to_string()],
    })
}

/// `--sysctl NAME=VALUE`, with Docker's rule and words: the IPC namespace's parameters
/// (`kernel.msg*`, `kernel.sem`, `kernel.shm*`, `fs.mqueue.*`) and the network's
/// (`net.*`, not with `--network host`), which belong to the container alone.
pub fn parse_sysctl(text: &str, network: Option<&str>) -> Result<arca_protocol::Sysctl, RunError> {
    let refused = || {
        RunError::Invalid(format!(
            "invalid argument {text:?} for \"--sysctl\" flag: sysctl '{text}' is not allowed"
        ))
    };
    let (name, value) = text.split_once('=').ok_or_else(refused)?;
    let sysctl = arca_protocol::Sysctl {
        name: name.to_string(),
        value: value.to_string(),
    };
    // Docker's CLI does not take `kernel.domainname` (an OCI runtime does).
    if name == "kernel.domainname" {
        return Err(refused());
    }
    sysctl.check().map_err(|_| refused())?;
    sysctl
        .check_network(network == Some("host"))
        .map_err(|e| RunError::Invalid(e.message))?;
    Ok(sysctl)
}

/// `--ulimit NAME=SOFT[:HARD]`, Docker's format (`unlimited` or -1 for no limit).
pub fn parse_ulimit(text: &str) -> Result<Rlimit, RunError> {
    let bad = |why: &str| {
        RunError::Invalid(format!(
            "invalid argument {text:?} for \"--ulimit\" flag: {why}"
        ))
    };
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| bad("use NAME=SOFT[:HARD]"))?;
    if arca_protocol::rlimit_resource_known(name).is_none() {
        return Err(bad(&format!("invalid ulimit type: {name}")));
    }
    let value = |v: &str| -> Result<u64, RunError> {
        match v {
            "unlimited" | "-1" => Ok(u64::MAX),
            v => v
                .parse()
                .map_err(|_| bad(&format!("invalid ulimit value: {v}"))),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (value(s)?, value(h)?),
        None => (value(values)?, value(values)?),
    };
    if soft > hard {
        return Err(bad(&format!(
            "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        )));
    }
    Ok(Rlimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// Docker's `--restart` policies, carried out by the container's monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "name")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart after a non-zero exit, at most `max_retries` times (0: no limit).
    OnFailure {
        /// The most restarts; 0 for no limit.
        max_retries: u32,
    },
    /// Restart after every exit, unless stopped with `stop` or `kill`.
    Always,
    /// As `always` (Arca has no daemon whose restart would tell them apart).
    UnlessStopped,
}

impl RestartPolicy {
    /// Parses `no`, `on-failure[:N]`, `always` or `unless-stopped`, with Docker's errors.
    pub fn parse(text: &str) -> Result<Self, RunError> {
        let (name, count) = match text.split_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (text, None),
        };
        let policy = match name {
            "" | "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            "on-failure" => RestartPolicy::OnFailure { max_retries: 0 },
            other => {
                return Err(RunError::Invalid(format!(
                    "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
                )));
            }
        };
        match (policy, count) {
            (_, None) => Ok(policy),
            (RestartPolicy::OnFailure { .. }, Some(c)) => c
                .parse::<u32>()
                .map(|max_retries| RestartPolicy::OnFailure { max_retries })
                .map_err(|_| {
                    RunError::Invalid(format!(
                        "invalid restart policy: maximum retry count must be a non-negative integer, not {c:?}"
                    ))
                }),
            (_, Some(_)) => Err(RunError::Invalid(
                "invalid restart policy: maximum retry count can only be used with 'on-failure'"
                    .into(),
            )),
        }
    }

    /// Whether a container that exited with `code`, restarted `restarts` times so far,
    /// goes again (a stop or kill by the user is checked by the caller).
    pub fn restarts(self, code: i32, restarts: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                code != 0 && (max_retries == 0 || restarts < max_retries)
            }
        }
    }

    /// As `docker inspect` names it.
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure { .. } => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }
}

/// `pids.max` of a container run with process isolation without `--pids-limit`: a fork
/// bomb stops there instead of at the host's limit (a microVM's processes are bounded
/// by its memory and never reach the host's).
pub const DEFAULT_PROCESS_PIDS_LIMIT: u64 = 4096;

/// Whether this host's cgroup v2 hierarchy offers the pids controller (a hybrid
/// hierarchy may keep it in v1, where Arca does not look): the default limit applies only
/// where it can; an explicit `--pids-limit` without it is an error.
fn host_has_pids_controller() -> bool {
    arca_jail::cgroup2_mount()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
        .is_some_and(|c| c.split_whitespace().any(|c| c == "pids"))
}

/// The operator's switch that lets `--privileged` run with process isolation.
pub const ALLOW_PRIVILEGED_PROCESS_ENV: &str = "ARCA_ALLOW_PRIVILEGED_PROCESS";

/// The flags that confine a container, as `arca run` got them.
#[derive(Debug, Clone, Default)]
pub struct SecurityFlags {
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--security-opt`.
    pub security_opt: Vec<String>,
    /// `--privileged`.
    pub privileged: bool,
}

/// Docker's rules for `--cap-add`, `--cap-drop`, `--security-opt seccomp=unconfined|
/// PROFILE.json`, `--security-opt no-new-privileges[=true|false]` and `--privileged`
/// (every capability, no seccomp filter, `/proc` and `/sys` unmasked; refused with process
/// isolation unless the operator set [`ALLOW_PRIVILEGED_PROCESS_ENV`]=1). A profile file is
/// read and checked here, so a bad one fails before anything is created. `apparmor=` and
/// `label=` (AppArmor, SELinux) are refused, except the values that turn them off,
/// which hold already.
pub fn security(flags: &SecurityFlags, isolation: Isolation) -> Result<Security, RunError> {
    let invalid = |m: String| Err(RunError::Invalid(m));
    let none: &[String] = &[];
    for (which, add, drop) in [
        ("CapAdd", &flags.cap_add[..], none),
        ("CapDrop", none, &flags.cap_drop[..]),
    ] {
        Capabilities::adjusted(add, drop)
            .map_err(|e| RunError::Invalid(format!("invalid {which}: {e}")))?;
    }
    let mut out = Security {
        capabilities: Capabilities::adjusted(&flags.cap_add, &flags.cap_drop)
            .map_err(|e| RunError::Invalid(e.to_string()))?,
        ..Security::default()
    };
    for opt in &flags.security_opt {
        // Docker takes `key=value` and the older `key:value`.
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => out.no_new_privileges = true,
            ("no-new-privileges", Some("false")) => out.no_new_privileges = false,
            ("seccomp", Some("unconfined")) => out.seccomp = Seccomp::Unconfined,
            ("seccomp", Some("builtin")) => out.seccomp = Seccomp::Default,
            ("seccomp", Some(path)) if !path.is_empty() => {
                let bytes = std::fs::read(path).map_err(|e| {
                    RunError::Invalid(format!("opening seccomp profile ({path}) failed: {e}"))
                })?;
                let profile = SeccompProfile::from_json(&bytes)
                    .map_err(|e| RunError::Invalid(e.to_string()))?;
                // Resolve once for this machine, as the agent will: a profile that
                // cannot apply fails here.
                profile
                    .resolve(out.capabilities, Platform::native((u32::MAX, u32::MAX)))
                    .map_err(|e| RunError::Invalid(e.to_string()))?;
                out.seccomp = Seccomp::Profile(Box::new(profile));
            }
            ("apparmor", Some("unconfined")) | ("label", Some("disable")) => {}
            ("apparmor" | "label", _) => {
                return invalid(format!(
                    "--security-opt {opt}: Arca applies no AppArmor or SELinux policy (only apparmor=unconfined and label=disable are accepted)"
                ));
            }
            ("systempaths", Some("unconfined")) => {
                return invalid(format!(
                    "--security-opt {opt} is not supported: /proc and /sys are unmasked only with --privileged"
                ));
            }
            _ => return invalid(format!("invalid --security-opt: {opt:?}")),
        }
    }
    if flags.privileged {
        if isolation == Isolation::Process
            && std::env::var(ALLOW_PRIVILEGED_PROCESS_ENV).as_deref() != Ok("1")
        {
            return invalid(format!(
                "--privileged with --isolation=process would give the container root over this host; it is refused unless the operator sets {ALLOW_PRIVILEGED_PROCESS_ENV}=1 (with --isolation=vm the container is privileged only inside its own microVM)"
            ));
        }
        out.capabilities = Capabilities::all();
        out.seccomp = Seccomp::Unconfined;
        out.privileged = true;
    }
    Ok(out)
}

impl RunOptions {
    /// A build step's container (`arca build`'s `RUN`): `args` as its whole command
    /// in `image`, with exactly `env`, `workdir` and `user` (the build's state, not
    /// the image's), on `network`, removed once done.
    pub fn for_step(
        image: String,
        args: Vec<String>,
        env: Vec<String>,
        workdir: Option<String>,
        user: Option<String>,
        isolation: Isolation,
        network: Option<String>,
    ) -> Result<Self, RunError> {
        Ok(RunOptions {
            image,
            args,
            // Cleared: the command is the step's alone.
            entrypoint: Some(String::new()),
            env,
            workdir,
            user,
            hostname: None,
            memory: None,
            cpus: None,
            init: false,
            interactive: false,
            tty: false,
            isolation,
            name: None,
            detach: false,
            rm: true,
            network,
            network_aliases: Vec::new(),
            publish: Vec::new(),
            publish_all: false,
            expose: Vec::new(),
            log: LogOptions::default(),
            guest_console: false,
            no_snapshot: false,
            read_only: false,
            mounts: Vec::new(),
            volumes_from: Vec::new(),
            storage_size: None,
            // Docker's default confinement, as a plain `arca run`.
            security: security(&SecurityFlags::default(), isolation)?,
            add_hosts: Vec::new(),
            dns: Vec::new(),
            group_add: Vec::new(),
            ulimits: Vec::new(),
            sysctls: Vec::new(),
            labels: Default::default(),
            stop_signal: None,
            stop_timeout: None,
            cidfile: None,
            pull: Some("never".into()),
            no_sig_proxy: true,
            attach: Vec::new(),
            restart: RestartPolicy::No,
            pids_limit: None,
            // A step is never probed, whatever its image's HEALTHCHECK.
            healthcheck: Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            }),
        })
    }

    /// Whether a foreground run shows `stream` (`stdout` or `stderr`) on this terminal
    /// (`-a`; a terminal's single stream shows with either).
    pub fn shows(&self, stream: &str) -> bool {
        self.attach.is_empty()
            || self.attach.iter().any(|a| a == stream)
            || (self.tty && self.attach.iter().any(|a| a != "stdin"))
    }

    /// The options of a plain `run IMAGE` (for a container whose `options.json` is
    /// missing, from an older arca).
    pub fn default_for(image: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "image": image, "args": [], "entrypoint": null, "env": [], "workdir": null,
            "user": null, "hostname": null, "memory": null, "cpus": null, "init": false,
            "interactive": false, "isolation": "vm", "name": null, "detach": false,
            "rm": false,
        }))
        .expect("the default options deserialize")
    }

    /// Reads a container's `options.json`.
    pub fn load(dir: &std::path::Path) -> Result<Self, RunError> {
        let bytes = std::fs::read(dir.join("options.json"))
            .map_err(crate::error::io_err("read the container options"))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            RunError::Invalid(format!(
                "Corrupt container options in {}: {e}",
                dir.display()
            ))
        })
    }

    /// Writes them for the monitor.
    pub fn save(&self, dir: &std::path::Path) -> Result<(), RunError> {
        let bytes = serde_json::to_vec(self).map_err(|e| RunError::Invalid(e.to_string()))?;
        std::fs::write(dir.join("options.json"), bytes)
            .map_err(crate::error::io_err("write the container options"))
    }

    /// The container's check: its own over its image's (Docker's merge), `None` when
    /// it has neither.
    pub fn health(&self, image: &Image) -> Option<HealthConfig> {
        let from_image = image
            .config
            .config
            .healthcheck
            .as_ref()
            .and_then(HealthConfig::from_image);
        HealthConfig::merged(self.healthcheck.as_ref(), from_image.as_ref())
    }

    /// The cgroup limits asked for.
    pub fn resources(&self) -> Resources {
        Resources {
            memory_bytes: self.memory,
            cpu_quota_us: self.cpus.map(|c| (c * 100_000.0).round() as u64),
            cpu_period_us: self.cpus.map(|_| 100_000),
            pids_max: match self.pids_limit {
                Some(n) => u64::try_from(n).ok().filter(|n| *n > 0),
                None if self.isolation == Isolation::Process && host_has_pids_controller() => {
                    Some(DEFAULT_PROCESS_PIDS_LIMIT)
                }
                None => None,
            },
        }
    }

    /// The container's main process: `args` (from [`command_line`]) with the image's
    /// environment, user and working directory under the options'.
    pub fn process(&self, image: &Image, args: Vec<String>) -> ProcessSpec {
        let cfg = &image.config.config;
        ProcessSpec {
            args,
            env: environment(image, &self.env),
            cwd: self
                .workdir
                .clone()
                .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty())),
            user: self
                .user
                .clone()
                .or_else(|| cfg.user.clone().filter(|u| !u.is_empty())),
            stdin: self.interactive && !self.tty,
            terminal: self.tty,
            additional_groups: self.group_add.clone(),
            rlimits: self.ulimits.clone(),
            ..Default::default()
        }
    }
}

/// Docker's rules: `--entrypoint` replaces the image's Entrypoint and drops its Cmd;
/// arguments replace Cmd; the command is Entrypoint + Cmd.
pub fn command_line(image: &Image, opts: &RunOptions) -> Result<Vec<String>, RunError> {
    let cfg = &image.config.config;
    let (entrypoint, default_cmd) = match &opts.entrypoint {
        Some(e) if e.is_empty() => (vec![], vec![]),
        Some(e) => (vec![e.clone()], vec![]),
        None => (
            cfg.entrypoint.clone().unwrap_or_default(),
            cfg.cmd.clone().unwrap_or_default(),
        ),
    };
    let cmd = if opts.args.is_empty() {
        default_cmd
    } else {
        opts.args.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(RunError::Invalid(format!(
            "No command specified: image {} has no Entrypoint or Cmd; give one after the image name",
            opts.image
        )));
    }
    Ok(argv)
}

/// The image's Env with `-e` entries overriding by key (`-e KEY` alone takes the
/// value from this environment, as Docker does, and is dropped if unset).
pub fn environment(image: &Image, overrides: &[String]) -> Vec<String> {
    let mut env: Vec<String> = image.config.config.env.clone().unwrap_or_default();
    for e in overrides {
        let entry = match e.split_once('=') {
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = entry
            .split_once('=')
            .map_or(entry.as_str(), |(k, _)| k)
            .to_string();
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        env.push(entry);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(opts: &[&str]) -> SecurityFlags {
        SecurityFlags {
            security_opt: opts.iter().map(|s| s.to_string()).collect(),
            ..SecurityFlags::default()
        }
    }

    fn err(f: &SecurityFlags, isolation: Isolation) -> String {
        security(f, isolation).unwrap_err().to_string()
    }

    #[test]
    fn add_host_and_ulimit_parse_as_docker() {
        let h = parse_add_host("db:10.0.0.5").unwrap();
        assert_eq!(
            (h.names[0].as_str(), h.address.to_string().as_str()),
            ("db", "10.0.0.5")
        );
        assert!(parse_add_host("db=10.0.0.5").is_ok());
        assert!(parse_add_host("db").is_err());
        assert!(parse_add_host("db:::1").is_err());
        assert!(parse_add_host("-bad:1.2.3.4").is_err());
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        assert_eq!(parse_ulimit("core=0").unwrap().hard, 0);
        assert_eq!(parse_ulimit("stack=unlimited").unwrap().soft, u64::MAX);
        assert!(
            parse_ulimit("nofile=2048:1024")
                .unwrap_err()
                .to_string()
                .contains("soft limit")
        );
        assert!(
            parse_ulimit("bogus=1")
                .unwrap_err()
                .to_string()
                .contains("invalid ulimit type: bogus")
        );
        assert!(parse_ulimit("nofile").is_err());
    }

    #[test]
    fn restart_policies_parse_as_docker_and_decide() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        assert_eq!(
            RestartPolicy::parse("always").unwrap(),
            RestartPolicy::Always
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            RestartPolicy::OnFailure { max_retries: 3 }
        );
        let e = RestartPolicy::parse("sometimes").unwrap_err().to_string();
        assert!(e.contains("unknown policy 'sometimes'"), "{e}");
        assert!(RestartPolicy::parse("always:2").is_err());
        assert!(RestartPolicy::parse("on-failure:-1").is_err());
        let p = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(p.restarts(1, 0) && p.restarts(1, 1) && !p.restarts(1, 2) && !p.restarts(0, 0));
        assert!(RestartPolicy::OnFailure { max_retries: 0 }.restarts(5, 1000));
        assert!(RestartPolicy::Always.restarts(0, 7) && !RestartPolicy::No.restarts(1, 0));
    }

    #[test]
    fn sysctls_follow_dockers_rule_and_words() {
        let s = parse_sysctl("net.ipv4.ip_forward=1", None).unwrap();
        assert_eq!(
            (s.name.as_str(), s.value.as_str()),
            ("net.ipv4.ip_forward", "1")
        );
        assert_eq!(
            parse_sysctl("kernel.sem=1 2 3 4", None).unwrap().value,
            "1 2 3 4"
        );
        assert_eq!(
            parse_sysctl("fs.mqueue.msg_max=20", Some("host"))
                .unwrap()
                .value,
            "20"
        );
        for (text, network, words) in [
            (
                "vm.swappiness=1",
                None,
                "invalid argument \"vm.swappiness=1\" for \"--sysctl\" flag: sysctl 'vm.swappiness=1' is not allowed",
            ),
            (
                "net.ipv4.ip_forward",
                None,
                "sysctl 'net.ipv4.ip_forward' is not allowed",
            ),
            // Docker's CLI does not take it (an OCI runtime does).
            ("kernel.domainname=x", None, "is not allowed"),
            ("net.ipv4/../../kernel/pid_max=1", None, "is not allowed"),
            (
                "net.ipv4.ip_forward=1",
                Some("host"),
                "sysctl \"net.ipv4.ip_forward\" not allowed in host network namespace",
            ),
        ] {
            let e = parse_sysctl(text, network).unwrap_err().to_string();
            assert!(e.contains(words), "{text}: {e}");
        }
    }

    #[test]
    fn security_opts_follow_docker() {
        let s = security(&flags(&[]), Isolation::Vm).unwrap();
        assert_eq!(s, Security::default());
        let s = security(
            &flags(&["seccomp=unconfined", "no-new-privileges"]),
            Isolation::Vm,
        )
        .unwrap();
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        assert!(s.no_new_privileges);
        let s = security(
            &flags(&["no-new-privileges:true", "no-new-privileges=false"]),
            Isolation::Vm,
        )
        .unwrap();
        assert!(!s.no_new_privileges);
        assert!(
            security(
                &flags(&["apparmor=unconfined", "label=disable"]),
                Isolation::Vm
            )
            .is_ok()
        );
        assert!(err(&flags(&["apparmor=docker-default"]), Isolation::Vm).contains("AppArmor"));
        assert_eq!(
            err(&flags(&["bogus"]), Isolation::Vm),
            "invalid --security-opt: \"bogus\""
        );
        assert!(
            err(&flags(&["seccomp=/no/such/profile.json"]), Isolation::Vm)
                .starts_with("opening seccomp profile (/no/such/profile.json) failed:")
        );
    }

    #[test]
    fn a_profile_file_is_read_and_checked_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let s = security(
            &flags(&[&format!("seccomp={}", good.display())]),
            Isolation::Process,
        )
        .unwrap();
        assert!(matches!(s.seccomp, Seccomp::Profile(_)));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = err(
            &flags(&[&format!("seccomp={}", bad.display())]),
            Isolation::Vm,
        );
        assert!(e.starts_with("Decoding seccomp profile failed"), "{e}");
    }

    #[test]
    fn capabilities_and_privileged() {
        let f = SecurityFlags {
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["chown".into()],
            ..SecurityFlags::default()
        };
        let s = security(&f, Isolation::Vm).unwrap();
        assert!(s.capabilities.has_named("CAP_NET_ADMIN"));
        assert!(!s.capabilities.has_named("CAP_CHOWN"));
        let f = SecurityFlags {
            cap_add: vec!["FOO".into()],
            ..SecurityFlags::default()
        };
        assert_eq!(
            err(&f, Isolation::Vm),
            "invalid CapAdd: unknown capability: \"CAP_FOO\""
        );
        let f = SecurityFlags {
            cap_drop: vec!["BAR".into()],
            ..SecurityFlags::default()
        };
        assert!(err(&f, Isolation::Vm).starts_with("invalid CapDrop"));
        let p = SecurityFlags {
            privileged: true,
            security_opt: vec!["seccomp=builtin".into()],
            ..SecurityFlags::default()
        };
        let s = security(&p, Isolation::Vm).unwrap();
        assert_eq!(s.capabilities, Capabilities::all());
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        assert!(s.privileged);
        // The operator's switch is read from the environment; without it, refused.
        if std::env::var(ALLOW_PRIVILEGED_PROCESS_ENV).is_err() {
            assert!(err(&p, Isolation::Process).contains(ALLOW_PRIVILEGED_PROCESS_ENV));
        }
    }
}
