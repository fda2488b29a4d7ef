//! A container's record, `<state>/containers/<id>/state.json`: what it is, where it
//! stands, and the host processes and agent that run it. Its monitor writes it
//! atomically; every other command reads it, and sees a record that says "running"
//! whose monitor is gone as exited, with the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arca_agent_client::{AgentAddress, AgentClient, AgentClientError};
use serde::{Deserialize, Serialize};

use super::health::{Health, HealthStatus};
use super::pids::alive;
use crate::ports::PortMapping;
use crate::storage::MountPoint;

/// Errors finding, reading or writing container records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// No container has that name (or unique prefix).
    #[error("No such container: {0}")]
    NotFound(String),
    /// An ID prefix names more than one container.
    #[error("Multiple IDs found with provided prefix: {0}")]
    Ambiguous(String),
    /// The container is not running, so it has no agent to talk to.
    #[error("Container {0} is not running")]
    NotRunning(String),
    /// `state.json` is not a record.
    #[error("Corrupt container record {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the record failed.
    #[error("Cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The container's agent could not be reached.
    #[error(transparent)]
    Agent(#[from] AgentClientError),
}

/// Where the container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own KVM microVM (the default).
    #[default]
    Vm,
    /// Namespaces and cgroups on this host.
    Process,
}

impl Isolation {
    /// As the CLI and `ps` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Vm => "vm",
            Isolation::Process => "process",
        }
    }
}

/// Life stage of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made by `arca create`, never started: no monitor, no sandbox.
    Created,
    /// Its sandbox is being prepared.
    Starting,
    /// Its process runs.
    Running,
    /// It ended (see `exit_code` and `error`).
    Exited,
    /// It ended and its monitor waits to start it again (`--restart`).
    Restarting,
}

/// How to reach a container's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentEndpoint {
    /// `arca-agent serve` on a Unix socket.
    Unix(PathBuf),
    /// The VMM's hybrid vsock socket and the agent's port.
    Vsock {
        /// The socket.
        uds: PathBuf,
        /// The port.
        port: u32,
    },
}

impl From<AgentAddress> for AgentEndpoint {
    fn from(a: AgentAddress) -> Self {
        match a {
            AgentAddress::Unix(p) => AgentEndpoint::Unix(p),
            AgentAddress::Vsock { uds, port } => AgentEndpoint::Vsock { uds, port },
        }
    }
}

impl From<&AgentEndpoint> for AgentAddress {
    fn from(e: &AgentEndpoint) -> Self {
        match e {
            AgentEndpoint::Unix(p) => AgentAddress::Unix(p.clone()),
            AgentEndpoint::Vsock { uds, port } => AgentAddress::Vsock {
                uds: uds.clone(),
                port: *port,
            },
        }
    }
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Its 64-hex ID ([`super::names`]; a record made before IDs existed has its name).
    pub id: String,
    /// Its name: kept in the file `name` beside the record, which only `rename`
    /// writes, so a monitor saving its record never undoes a rename.
    #[serde(skip)]
    pub name: String,
    /// Whether the file [`PAUSED`] is beside the record.
    #[serde(skip)]
    pub paused: bool,
    /// Its health (`health.json` beside the record), if it has a check and ran.
    #[serde(skip)]
    pub health: Option<HealthStatus>,
    /// The reference given to `run`.
    pub image: String,
    /// The image id.
    pub image_id: String,
    /// The command.
    pub command: Vec<String>,
    /// `vm` or `process`.
    pub isolation: Isolation,
    /// Seconds since the epoch.
    pub created: u64,
    /// The nanoseconds within that second, to order containers made in one second.
    #[serde(default)]
    pub created_nanos: u32,
    /// Stage.
    pub status: Status,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Why it ended, if not by itself.
    pub error: Option<String>,
    /// The process that runs it.
    pub monitor_pid: u32,
    /// When the monitor started ([`super::pids::start_time`]), to tell it from a later
    /// process that reuses its pid.
    #[serde(default)]
    pub monitor_start: Option<u64>,
    /// The VMM or agent process.
    pub sandbox_pid: Option<u32>,
    /// When the sandbox process started.
    #[serde(default)]
    pub sandbox_start: Option<u64>,
    /// Its agent, once running.
    pub agent: Option<AgentEndpoint>,
    /// With process isolation: the container's PID 1 on this host.
    #[serde(default)]
    pub container_pid: Option<u32>,
    /// Remove when it exits.
    pub rm: bool,
    /// The network it joined (`none`, `host` or a network's name).
    #[serde(default)]
    pub network: Option<String>,
    /// Its address there.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Published ports, with the host ports bound.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Its mounts (bind mounts, volumes, tmpfs), parents first.
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
    /// How often its monitor restarted it (`--restart`).
    #[serde(default)]
    pub restart_count: u32,
    /// When its current (or last) run started, seconds since the epoch.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// When its last run ended.
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// Its labels (`--label`, over the image's).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ContainerRecord {
    /// Ends the sandbox this record names if that process still runs (a sandbox a
    /// killed `arca cp` left), waiting up to 10 s: two sandboxes must never share the
    /// container's writable layer.
    pub fn end_stale_sandbox(&self) {
        if let Some(pid) = self.sandbox_pid {
            super::pids::kill_if_same(pid, self.sandbox_start);
            super::pids::wait_gone(pid, self.sandbox_start, Duration::from_secs(10));
        }
    }

    /// Records a container event (`events`): Docker's attributes, its labels (those
    /// that fit in 16 KiB), the image and name, and `extra` (`exitCode`, `signal`,
    /// `oldName`).
    pub fn event(&self, state: &Path, action: &str, extra: &[(&str, &str)]) {
        // Labels (an image's may be megabytes) up to 16 KiB in all, so that one
        // container cannot flush the events log of everyone else's history.
        let mut room = 16 << 10;
        let mut attributes: Vec<(&str, &str)> = self
            .labels
            .iter()
            .filter(|(k, v)| {
                let size = k.len() + v.len();
                let fits = size <= room;
                if fits {
                    room -= size;
                }
                fits
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        attributes.extend([("image", self.image.as_str()), ("name", self.name.as_str())]);
        attributes.extend_from_slice(extra);
        crate::events::emit(state, "container", action, &self.id, &attributes);
    }
}

/// A file in a container's directory that says the user stopped it (`stop`, `kill`,
/// `rm -f`): its restart policy no longer applies until it is started again.
pub const MANUAL_STOP: &str = "stopped-by-user";

/// The cgroup of container `id`'s jailed VMM: `<cgroup2 mount>/arca-vm/<id>` (made by
/// the VMM, removed by its supervisor, or by `arca` after a supervisor was killed).
pub fn vm_cgroup(id: &str) -> PathBuf {
    arca_jail::cgroup2_mount()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
        .join("arca-vm")
        .join(id)
}

/// Ends what is left in a VM's cgroup `path` (a VMM whose supervisor was killed, still
/// giving back its guest's memory): kills it, waits up to 10 s, removes the cgroup.
pub fn end_vm_cgroup(path: &Path) {
    arca_jail::kill_and_remove_cgroup(path, Duration::from_secs(10));
}

pub use super::names::containers_dir;

pub use super::names::NAME_FILE;

/// A file in a container's directory that says its processes are frozen (`pause`). A
/// new run of the container starts without it; only a running container is paused.
pub const PAUSED: &str = "paused";

impl ContainerRecord {
    /// Reads `dir/state.json`.
    pub fn load(dir: &Path) -> Result<Self, RecordError> {
        let path = dir.join("state.json");
        let bytes = std::fs::read(&path).map_err(|source| RecordError::Io {
            action: format!("read {}", path.display()),
            source,
        })?;
        let mut rec: Self = serde_json::from_slice(&bytes).map_err(|e| RecordError::Corrupt {
            path,
            reason: e.to_string(),
        })?;
        rec.name = std::fs::read_to_string(dir.join(NAME_FILE))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|_| rec.id.clone());
        rec.paused = dir.join(PAUSED).exists();
        rec.health = Health::load(dir).map(|h| h.status);
        Ok(rec)
    }

    /// Whether it runs, frozen by `pause`.
    pub fn is_paused(&self) -> bool {
        self.paused && self.status == Status::Running
    }

    /// Its short ID, which names its directory, its cgroups and its network links (a
    /// record made before IDs existed: its name, which named all those).
    pub fn key(&self) -> &str {
        if self.id.len() == 64 && super::names::is_hex(&self.id) {
            super::names::short(&self.id)
        } else {
            &self.id
        }
    }

    /// Writes `dir/state.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), RecordError> {
        let tmp = dir.join(".state.json.tmp");
        let io = |source| RecordError::Io {
            action: format!("write the record of container {}", self.name),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io(e.into()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, dir.join("state.json")))
            .map_err(io)
    }

    /// The record as seen now: a running container whose monitor is gone has exited.
    pub fn observed(mut self) -> Self {
        if matches!(
            self.status,
            Status::Starting | Status::Running | Status::Restarting
        ) && !alive(self.monitor_pid, self.monitor_start)
        {
            self.status = Status::Exited;
            self.exit_code.get_or_insert(137);
            self.error.get_or_insert_with(|| {
                "Its monitor died (the arca process that ran it was killed)".into()
            });
        }
        self
    }

    /// This record made ready for another run of its container: `starting` under the
    /// calling process (until the monitor records itself: never a dead monitor's, which
    /// would make the record look crashed), without what the last run left.
    pub fn for_another_run(mut self) -> Self {
        self.status = Status::Starting;
        (self.exit_code, self.error) = (None, None);
        self.monitor_pid = std::process::id();
        self.monitor_start = super::pids::start_time(std::process::id());
        (self.sandbox_pid, self.sandbox_start) = (None, None);
        (self.agent, self.container_pid) = (None, None);
        (self.network, self.ip) = (None, None);
        self.ports.clear();
        self
    }

    /// A control connection to the agent of this running container.
    pub fn client(&self) -> Result<AgentClient, RecordError> {
        let endpoint = self
            .agent
            .as_ref()
            .filter(|_| self.status == Status::Running)
            .ok_or_else(|| RecordError::NotRunning(self.name.clone()))?;
        Ok(AgentClient::connect(
            &endpoint.into(),
            Duration::from_secs(5),
        )?)
    }

    /// Reads the record in `dir` as seen now ([`Self::observed`]).
    pub fn observe(dir: &Path) -> Result<Self, RecordError> {
        Self::load(dir).map(Self::observed)
    }
}

/// Finds a container as Docker does: by full ID (or short ID), by name, or by an ID
/// prefix that only one container has.
pub fn find(state: &Path, query: &str) -> Result<(PathBuf, ContainerRecord), RecordError> {
    let dir = containers_dir(state);
    let found = |d: PathBuf| ContainerRecord::observe(&d).map(|r| (d, r));
    let key = super::names::short(query);
    let valid = !query.is_empty() && !query.contains('/') && !query.starts_with('.');
    // Docker's order: the whole ID, a name, then an ID prefix.
    if valid && super::names::is_hex(query) && query.len() == 64 {
        let d = dir.join(key);
        if d.join("state.json").is_file()
            && let Ok((d, r)) = found(d)
            && r.id == query
        {
            return Ok((d, r));
        }
    }
    if let Some(k) = super::names::lookup(state, query) {
        return found(dir.join(k));
    }
    // A record made before IDs existed is in a directory named by its name.
    if valid && dir.join(query).join("state.json").is_file() {
        return found(dir.join(query));
    }
    if !super::names::is_hex(query) {
        return Err(RecordError::NotFound(query.into()));
    }
    let matches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(key))
        .map(|e| e.path())
        .filter(|p| {
            // Only IDs are abbreviated, never the names of records made before IDs.
            ContainerRecord::load(p).is_ok_and(|r| r.id.len() == 64 && r.id.starts_with(query))
        })
        .collect();
    match matches.as_slice() {
        [one] => found(one.clone()),
        [] => Err(RecordError::NotFound(query.into())),
        _ => Err(RecordError::Ambiguous(query.into())),
    }
}

/// Whether the container whose directory is `key` has a record that has not exited
/// (one being set up counts).
pub fn is_live(state: &Path, key: &str) -> bool {
    !key.is_empty()
        && !key.contains('/')
        && ContainerRecord::observe(&containers_dir(state).join(key)).is_ok_and(|r| {
            matches!(
                r.status,
                Status::Starting | Status::Running | Status::Restarting
            )
        })
}

/// All containers, newest first.
pub fn list(state: &Path) -> Vec<ContainerRecord> {
    let mut out: Vec<ContainerRecord> = std::fs::read_dir(containers_dir(state))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| ContainerRecord::observe(&e.path()).ok())
        .collect();
    out.sort_by(|a, b| {
        (b.created, b.created_nanos)
            .cmp(&(a.created, a.created_nanos))
            .then(a.id.cmp(&b.id))
    });
    out
}

/// Waits until the container's record in `dir` says exited, or restarting after an
/// exit (or `timeout` passes).
pub fn wait_exited(dir: &Path, timeout: Duration) -> Option<ContainerRecord> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match ContainerRecord::observe(dir) {
            Ok(r) if matches!(r.status, Status::Exited | Status::Restarting) => return Some(r),
            Err(_) => return None,
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of container `id` named `name`, saved under `state`.
    fn saved(state: &Path, id: &str, name: &str) -> ContainerRecord {
        let mut rec: ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": id, "image": "busybox", "image_id": "ab", "command": ["true"],
            "isolation": "process", "created": 1, "status": "exited", "exit_code": 0,
            "error": null, "monitor_pid": 0, "sandbox_pid": null, "agent": null, "rm": false,
        }))
        .unwrap();
        rec.name = name.into();
        let dir = containers_dir(state).join(rec.key());
        std::fs::create_dir_all(&dir).unwrap();
        rec.save(&dir).unwrap();
        std::fs::write(dir.join(NAME_FILE), name).unwrap();
        super::super::names::reserve(state, name, rec.key()).unwrap();
        rec
    }

    #[test]
    fn containers_are_found_by_id_name_or_unique_prefix_as_dockers_are() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path();
        let a = saved(state, &format!("abc1{}", "0".repeat(60)), "web");
        let b = saved(state, &format!("abc2{}", "1".repeat(60)), "db");
        let name_of = |q: &str| find(state, q).map(|(_, r)| r.name);
        assert_eq!(name_of(&a.id).unwrap(), "web");
        assert_eq!(name_of(a.key()).unwrap(), "web");
        assert_eq!(name_of("db").unwrap(), "db");
        assert_eq!(name_of("abc2").unwrap(), "db");
        assert_eq!(name_of(&b.id[..20]).unwrap(), "db");
        assert!(matches!(find(state, "abc"), Err(RecordError::Ambiguous(_))));
        assert!(matches!(find(state, "abd"), Err(RecordError::NotFound(_))));
        assert!(matches!(find(state, "../x"), Err(RecordError::NotFound(_))));
        // A record made before IDs existed keeps its name as its key.
        let old = saved(state, "my-old-container-name", "my-old-container-name");
        assert_eq!(old.key(), "my-old-container-name");
        assert_eq!(
            name_of("my-old-container-name").unwrap(),
            "my-old-container-name"
        );
    }
}
