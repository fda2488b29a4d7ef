//! An arca-runtime container: its directory under the runtime's root (`ROOT/ID/`, mode
//! 0700 under a 0700 root), its record (`state.json`), and the requests other
//! `arca-runtime` processes make of its monitor over `control.sock`.
//!
//! The monitor (`arca-runtime __monitor ID`, see [`crate::monitor`]) is the process an
//! OCI caller waits on: its pid is the one `create --pid-file` writes and `state`
//! reports, it holds the container's stdio (the caller's pipes, inherited from
//! `create`), and it exits with the container's exit code.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arca_runtime::container::pids::alive;
use serde::{Deserialize, Serialize};

use crate::OciError;
use crate::spec::Isolation;

/// Where containers live without `--root`.
pub const DEFAULT_ROOT: &str = "/run/arca-runtime";

/// A container's lifecycle, as the OCI runtime spec names its states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `create` is setting it up.
    Creating,
    /// Made; its process waits for `start`.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended (or its monitor is gone).
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// `ROOT/ID/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub isolation: Isolation,
    pub status: Status,
    /// The monitor, told apart from a later process of its pid by its start time.
    pub monitor_pid: Option<u32>,
    pub monitor_start: Option<u64>,
    /// The host agent serving the container.
    pub agent_pid: Option<u32>,
    pub agent_start: Option<u64>,
    /// The container's first process, as the host sees it (process isolation).
    pub container_pid: Option<u32>,
    /// `linux.cgroupsPath`: the parent of the container's cgroup.
    pub cgroup_parent: Option<String>,
    pub exit_code: Option<i32>,
}

/// A container's directory and files.
#[derive(Debug, Clone)]
pub struct Dir(pub PathBuf);

impl Dir {
    /// Container `id`'s directory under `root` (the id checked first: it names a path).
    pub fn of(root: &Path, id: &str) -> Result<Self, OciError> {
        arca_protocol::validate_id("container", id).map_err(|e| OciError::Invalid(e.message))?;
        Ok(Dir(root.join(id)))
    }
    pub fn record(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    pub fn control(&self) -> PathBuf {
        self.0.join("control.sock")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
    /// What the monitor could not do, for `create` to report.
    pub fn monitor_error(&self) -> PathBuf {
        self.0.join("monitor.err")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.0.join("agent.log")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.0.join("run")
    }

    /// The record, its status as seen now: a container whose monitor is gone is
    /// stopped whatever the record last said.
    pub fn load(&self) -> Result<Record, OciError> {
        let text = match std::fs::read(self.record()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OciError::NotFound(self.id()));
            }
            Err(source) => {
                return Err(OciError::Io {
                    action: format!("read {}", self.record().display()),
                    source,
                });
            }
        };
        let mut r: Record = serde_json::from_slice(&text)
            .map_err(|e| OciError::Invalid(format!("{}: {e}", self.record().display())))?;
        if r.status != Status::Stopped && r.monitor_pid.is_some_and(|p| !alive(p, r.monitor_start))
        {
            r.status = Status::Stopped;
        }
        Ok(r)
    }

    /// Writes the record whole (a reader never sees half of it).
    pub fn save(&self, r: &Record) -> Result<(), OciError> {
        let tmp = self.0.join(".state.json.tmp");
        let io = |source| OciError::Io {
            action: format!("write {}", self.record().display()),
            source,
        };
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(r).expect("a record serializes"),
        )
        .map_err(io)?;
        std::fs::rename(&tmp, self.record()).map_err(io)
    }

    fn id(&self) -> String {
        self.0
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A request to a container's monitor, one line each way: `start`, or `abort` (a
/// created container deleted before it started); the answer is `ok` or the reason.
pub fn ask_monitor(dir: &Dir, request: &str) -> Result<(), OciError> {
    let io = |source| OciError::Io {
        action: format!("ask the monitor of {} to {request}", dir.id()),
        source,
    };
    let mut s = UnixStream::connect(dir.control()).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(130)))
        .map_err(io)?;
    s.write_all(format!("{request}\n").as_bytes()).map_err(io)?;
    let mut answer = String::new();
    io::BufReader::new(s).read_line(&mut answer).map_err(io)?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => Err(OciError::Invalid(format!(
            "The monitor of {} ended before it answered",
            dir.id()
        ))),
        why => Err(OciError::Invalid(why.to_string())),
    }
}

/// Now, in RFC 3339 (UTC, nanoseconds), as runc's `state` prints `created`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = arca_runtime::rfc3339(d.as_secs());
    let whole = seconds.trim_end_matches('Z');
    format!("{whole}.{:09}Z", d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_runtime::container::pids::start_time;

    #[test]
    fn ids_that_would_leave_the_root_are_refused() {
        let root = Path::new("/run/arca-runtime");
        assert_eq!(Dir::of(root, "web-1").unwrap().0, root.join("web-1"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\0b"] {
            assert!(Dir::of(root, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_record_whose_monitor_is_gone_reads_as_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir(tmp.path().to_path_buf());
        let mut r = Record {
            id: "c".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            annotations: HashMap::new(),
            isolation: Isolation::Process,
            status: Status::Running,
            monitor_pid: Some(std::process::id()),
            monitor_start: start_time(std::process::id()),
            agent_pid: None,
            agent_start: None,
            container_pid: None,
            cgroup_parent: None,
            exit_code: None,
        };
        dir.save(&r).unwrap();
        assert_eq!(dir.load().unwrap().status, Status::Running);
        r.monitor_start = r.monitor_start.map(|s| s + 1);
        dir.save(&r).unwrap();
        assert_eq!(dir.load().unwrap().status, Status::Stopped);
    }

    #[test]
    fn rfc3339_dates_are_civil() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 30, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }
}
