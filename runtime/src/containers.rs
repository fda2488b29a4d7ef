//! Container state and the commands that use it: `ps`, `logs`, `stop`, `kill`, `rm`,
//! `exec`, `wait`.
//!
//! Each container has a directory `<state>/containers/<id>/` holding `state.json` (its
//! record, written atomically by its monitor: the foreground `arca run`, or the
//! `arca __monitor` a detached run starts), `stdout.log` and `stderr.log`, the agent's
//! socket and, for VMs, the console log. The directory's creation is what reserves a
//! name, so two CLIs cannot create the same container. A record that says "running"
//! whose monitor is gone is shown as exited, with the reason.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arca_protocol::{ProcessSpec, StdioStream};
use serde::{Deserialize, Serialize};
use vmm::agent_client::{AgentAddress, AgentClient};

use crate::logs::LogReader;
use crate::run::{Isolation, RunError};

/// Life stage of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its sandbox is being prepared.
    Starting,
    /// Its process runs.
    Running,
    /// It ended (see `exit_code` and `error`).
    Exited,
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
    /// Name.
    pub id: String,
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
    /// Stage.
    pub status: Status,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Why it ended, if not by itself.
    pub error: Option<String>,
    /// The process that runs it.
    pub monitor_pid: u32,
    /// When the monitor started ([`start_time`]), to tell it from a later process that
    /// reuses its pid.
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
    pub ports: Vec<crate::ports::PortMapping>,
}

/// `<state>/containers`.
pub fn containers_dir(state: &Path) -> PathBuf {
    state.join("containers")
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
/// parentheses): field 3 (the state) first.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// A process's start time, in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` is alive (a zombie is not) and, when `start` is known, still the
/// process that started then (pids are reused).
pub(crate) fn alive(pid: u32, start: Option<u64>) -> bool {
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    let state = fields.first().map(String::as_str);
    !matches!(state, Some("Z" | "X" | "x"))
        && start.is_none_or(|s| fields.get(19).and_then(|f| f.parse().ok()) == Some(s))
}

/// Cleans up after containers whose monitor died (killed, or crashed with its host):
/// kills their sandbox and, with process isolation, what was left of the container,
/// and records them as exited with the reason. `ps` and `rm` call it, so any later
/// `arca` command reconciles what a crash left behind.
pub fn reap_crashed(state: &Path) {
    let entries = std::fs::read_dir(containers_dir(state));
    for e in entries.into_iter().flatten().flatten() {
        let dir = e.path();
        let Ok(rec) = ContainerRecord::load(&dir) else {
            continue;
        };
        if rec.status == Status::Exited {
            continue;
        }
        let seen = rec.clone().observed();
        if seen.status != Status::Exited {
            continue;
        }
        end_leftovers(&rec);
        let _ = seen.save(&dir);
    }
}

/// SIGKILLs `pid` if it is still the process that started at `start`.
fn kill_if_same(pid: u32, start: Option<u64>) {
    if alive(pid, start)
        && let Some(p) = rustix::process::Pid::from_raw(pid as i32)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

impl ContainerRecord {
    /// Reads `dir/state.json`.
    pub fn load(dir: &Path) -> Result<Self, RunError> {
        let path = dir.join("state.json");
        let bytes = std::fs::read(&path).map_err(|source| RunError::Io {
            action: format!("read {}", path.display()),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            RunError::Invalid(format!("Corrupt container record {}: {e}", path.display()))
        })
    }

    /// Writes `dir/state.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), RunError> {
        let tmp = dir.join(".state.json.tmp");
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| RunError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, dir.join("state.json")))
            .map_err(|source| RunError::Io {
                action: format!("write the record of container {}", self.id),
                source,
            })
    }

    /// The record as seen now: a running container whose monitor is gone has exited.
    fn observed(mut self) -> Self {
        if self.status != Status::Exited && !alive(self.monitor_pid, self.monitor_start) {
            self.status = Status::Exited;
            self.exit_code.get_or_insert(137);
            self.error.get_or_insert_with(|| {
                "Its monitor died (the arca process that ran it was killed)".into()
            });
        }
        self
    }

    pub(crate) fn client(&self) -> Result<AgentClient, RunError> {
        let endpoint = self
            .agent
            .as_ref()
            .filter(|_| self.status == Status::Running)
            .ok_or_else(|| RunError::Invalid(format!("Container {} is not running", self.id)))?;
        Ok(AgentClient::connect(
            &endpoint.into(),
            Duration::from_secs(5),
        )?)
    }
}

/// Finds a container by name or unique prefix.
pub fn find(state: &Path, name: &str) -> Result<(PathBuf, ContainerRecord), RunError> {
    let dir = containers_dir(state);
    let exact = dir.join(name);
    if !name.is_empty() && !name.contains('/') && exact.join("state.json").is_file() {
        return Ok((exact.clone(), ContainerRecord::load(&exact)?.observed()));
    }
    // Names must be exact; only generated names (arca-<hex>) may be abbreviated.
    if !name.starts_with("arca-") || name.len() < 7 {
        return Err(RunError::Invalid(format!("No such container: {name}")));
    }
    let matches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| !name.is_empty() && e.file_name().to_string_lossy().starts_with(name))
        .map(|e| e.path())
        .filter(|p| p.join("state.json").is_file())
        .collect();
    match matches.as_slice() {
        [one] => Ok((one.clone(), ContainerRecord::load(one)?.observed())),
        [] => Err(RunError::Invalid(format!("No such container: {name}"))),
        _ => Err(RunError::Invalid(format!(
            "Container name {name:?} is ambiguous"
        ))),
    }
}

/// Whether container `id` has a record that has not exited (one being set up counts).
pub fn is_live(state: &Path, id: &str) -> bool {
    !id.is_empty()
        && !id.contains('/')
        && ContainerRecord::load(&containers_dir(state).join(id))
            .is_ok_and(|r| r.observed().status != Status::Exited)
}

/// All containers.
pub fn list(state: &Path) -> Vec<ContainerRecord> {
    let mut out: Vec<ContainerRecord> = std::fs::read_dir(containers_dir(state))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| ContainerRecord::load(&e.path()).ok())
        .map(ContainerRecord::observed)
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    out
}

/// `arca ps`.
pub fn ps(state: &Path, all: bool, quiet: bool) {
    let rows: Vec<ContainerRecord> = list(state)
        .into_iter()
        .filter(|r| all || r.status != Status::Exited)
        .collect();
    if quiet {
        for r in rows {
            println!("{}", r.id);
        }
        return;
    }
    println!(
        "{:<20} {:<24} {:<24} {:<28} {:<8}",
        "CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "ISOLATION"
    );
    for r in rows {
        let full = r.command.join(" ");
        let cmd = if full.chars().count() > 20 {
            format!("\"{}…\"", full.chars().take(19).collect::<String>())
        } else {
            format!("\"{full}\"")
        };
        let status = match (r.status, r.exit_code) {
            (Status::Starting, _) => "Created".to_string(),
            (Status::Running, _) => format!("Up {} s", now().saturating_sub(r.created)),
            (Status::Exited, code) => format!("Exited ({})", code.unwrap_or(-1)),
        };
        let iso = match r.isolation {
            Isolation::Vm => "vm",
            Isolation::Process => "process",
        };
        println!(
            "{:<20} {:<24} {:<24} {:<28} {:<8}",
            r.id, r.image, cmd, status, iso
        );
        if let Some(e) = r.error.filter(|_| r.status == Status::Exited) {
            println!("{:<20} └ {e}", "");
        }
    }
}

/// `arca logs [-f]`: the stdout log to stdout, the stderr log to stderr, each from its
/// oldest rotated file on; with `follow`, until the container exits, across rotations.
pub fn logs(state: &Path, name: &str, follow: bool) -> Result<i32, RunError> {
    let (dir, _) = find(state, name)?;
    let mut out = LogReader::open(&dir.join("stdout.log"));
    let mut err = LogReader::open(&dir.join("stderr.log"));
    loop {
        // A closed stdout (`arca logs | head`) ends the command quietly.
        let any = out.drain(&mut io::stdout().lock()).unwrap_or(false)
            | err.drain(&mut io::stderr().lock()).unwrap_or(false);
        let _ = io::stdout().flush();
        if !follow {
            return Ok(0);
        }
        let done = ContainerRecord::load(&dir)
            .map(ContainerRecord::observed)
            .map_or(true, |r| r.status == Status::Exited);
        if done && !any {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Signal numbers by Docker's names (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(text: &str) -> Result<i32, RunError> {
    let t = text.trim().to_ascii_uppercase();
    let t = t.strip_prefix("SIG").unwrap_or(&t);
    let n = match t {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "ALRM" => 14,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        other => other.parse().unwrap_or(0),
    };
    if (1..=64).contains(&n) {
        Ok(n)
    } else {
        Err(RunError::Invalid(format!("Invalid signal: {text}")))
    }
}

/// Waits until the container's record says exited (or `timeout` passes).
fn wait_exited(dir: &Path, timeout: Duration) -> Option<ContainerRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        match ContainerRecord::load(dir).map(ContainerRecord::observed) {
            Ok(r) if r.status == Status::Exited => return Some(r),
            Err(_) => return None,
            _ => {}
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `arca kill -s SIG`.
pub fn kill(state: &Path, name: &str, signal: i32) -> Result<(), RunError> {
    let (_, rec) = find(state, name)?;
    rec.client()?.signal(&rec.id, None, signal)?;
    Ok(())
}

/// `arca stop -t N`: SIGTERM, then SIGKILL after `grace`.
pub fn stop(state: &Path, name: &str, grace: Duration) -> Result<(), RunError> {
    let (dir, rec) = find(state, name)?;
    if rec.status == Status::Exited {
        return Ok(());
    }
    // An agent that does not answer (a wedged or hostile guest) costs at most
    // SIGNAL_PATIENCE per signal; the grace period runs either way.
    let mut client = rec.client().map(|c| c.with_patience(SIGNAL_PATIENCE));
    if let Ok(c) = client.as_mut() {
        let _ = c.signal(&rec.id, None, libc_sigterm());
    }
    // A record that vanished belonged to a `--rm` container that ended.
    if wait_exited(&dir, grace).is_none() && dir.exists() {
        if let Ok(c) = client.as_mut() {
            let _ = c.signal(&rec.id, None, 9);
        }
        if wait_exited(&dir, SIGKILL_GRACE).is_none() && dir.exists() {
            // The container outlived SIGKILL (its guest ignores the agent, or the
            // agent is gone): the sandbox itself goes, which its monitor sees.
            if let Some(pid) = rec.sandbox_pid {
                kill_if_same(pid, rec.sandbox_start);
            }
            if wait_exited(&dir, Duration::from_secs(10)).is_none() && dir.exists() {
                return Err(RunError::Invalid(format!(
                    "Container {} did not stop",
                    rec.id
                )));
            }
        }
    }
    Ok(())
}

/// How long `stop` and `rm -f` give the agent to answer a signal request.
const SIGNAL_PATIENCE: Duration = Duration::from_secs(5);
/// How long `stop` waits after SIGKILL before it kills the sandbox.
const SIGKILL_GRACE: Duration = Duration::from_secs(5);

const fn libc_sigterm() -> i32 {
    15
}

/// `arca rm [-f]`.
pub fn rm(state: &Path, name: &str, force: bool) -> Result<(), RunError> {
    let (dir, rec) = find(state, name)?;
    if rec.status != Status::Exited {
        if !force {
            return Err(RunError::Invalid(format!(
                "You cannot remove a running container {}: stop it first or remove it with -f",
                rec.id
            )));
        }
        // At once, as `docker rm -f`: SIGKILL, then make sure the sandbox is gone.
        if let Ok(c) = rec.client() {
            let _ = c.with_patience(SIGNAL_PATIENCE).signal(&rec.id, None, 9);
        }
        if wait_exited(&dir, Duration::from_secs(10)).is_none() {
            if let Some(pid) = rec.sandbox_pid {
                kill_if_same(pid, rec.sandbox_start);
            }
            kill_if_same(rec.monitor_pid, rec.monitor_start);
        }
    }
    // Let the monitor finish its teardown (it records "exited" before it removes the
    // container from its sandbox) before the directory goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(rec.monitor_pid, rec.monitor_start)
        && rec.monitor_pid != std::process::id()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !alive(rec.monitor_pid, rec.monitor_start) {
        // A monitor that died left its VMM or agent behind, and a host agent's death
        // leaves its container's processes.
        end_leftovers(&rec);
    } else if rec.isolation == Isolation::Process {
        process_leftovers(&rec);
    }
    // A killed VMM still has to give back its guest's memory: `rm -f` returns once
    // the sandbox is gone, as `docker rm -f` returns once the container is.
    if force && let Some(pid) = rec.sandbox_pid {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid, rec.sandbox_start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RunError::Io {
            action: format!("remove {}", dir.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// What a container whose monitor died leaves: its sandbox (VMM or host agent) and,
/// with process isolation, its processes and cgroup.
fn end_leftovers(rec: &ContainerRecord) {
    if let Some(pid) = rec.sandbox_pid {
        kill_if_same(pid, rec.sandbox_start);
    }
    if rec.isolation == Isolation::Process {
        process_leftovers(rec);
    }
}

/// After a host agent died: the container's processes (its pid namespace goes with
/// its PID 1) and its cgroup, which nothing else would remove.
pub(crate) fn process_leftovers(rec: &ContainerRecord) {
    let marker = format!("/arca/{}", rec.id);
    if let Some(pid) = rec.container_pid {
        // Only if that pid is still this container's (pids are reused).
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.ends_with(&marker)));
        if ours && let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    });
    if let Some(root) = cgroup2 {
        let cg = root.join(marker.trim_start_matches('/'));
        if cg.is_dir() {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
            for _ in 0..200 {
                if std::fs::remove_dir(&cg).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `arca wait`: blocks until the container exits; returns its exit code.
pub fn wait(state: &Path, name: &str) -> Result<i32, RunError> {
    let (dir, _) = find(state, name)?;
    let rec = wait_exited(&dir, Duration::from_secs(u64::MAX / 4))
        .ok_or_else(|| RunError::Invalid(format!("Container {name} went away")))?;
    Ok(rec.exit_code.unwrap_or(-1))
}

/// `arca exec [-i] [-t] [-e] [-w] [-u] NAME CMD...`: returns the process's exit code.
pub fn exec(state: &Path, name: &str, process: ProcessSpec) -> Result<i32, RunError> {
    let (_, rec) = find(state, name)?;
    let mut client = rec.client()?;
    let exec_id = format!("exec-{}-{}", std::process::id(), now());
    let interactive = process.stdin;
    let tty = process.terminal;
    let address = client.address().clone();
    client.exec(&rec.id, &exec_id, process)?;
    if tty {
        return exec_terminal(client, &rec.id, &exec_id, interactive);
    }
    let out = address.attach(&rec.id, Some(&exec_id), StdioStream::Stdout)?;
    let err = address.attach(&rec.id, Some(&exec_id), StdioStream::Stderr)?;
    if interactive {
        let mut input = address.attach(&rec.id, Some(&exec_id), StdioStream::Stdin)?;
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut input);
            let _ = input.close_input();
        });
    }
    let o = std::thread::spawn(move || {
        let mut out = out;
        let _ = io::copy(&mut out, &mut io::stdout());
    });
    let e = std::thread::spawn(move || {
        let mut err = err;
        let _ = io::copy(&mut err, &mut io::stderr());
    });
    let status = client.wait(&rec.id, Some(&exec_id))?;
    let _ = o.join();
    let _ = e.join();
    Ok(status.code)
}

/// The terminal half of `exec -t`: the process's tty to this terminal (raw while `-i`),
/// its size following this one's.
fn exec_terminal(
    mut client: AgentClient,
    id: &str,
    exec_id: &str,
    interactive: bool,
) -> Result<i32, RunError> {
    use std::io::IsTerminal;
    let address = client.address().clone();
    let tty = address.attach(id, Some(exec_id), StdioStream::Tty)?;
    let terminal = io::stdout().is_terminal();
    if terminal && let Ok(ws) = rustix::termios::tcgetwinsize(io::stdout()) {
        client.resize(id, Some(exec_id), ws.ws_row, ws.ws_col)?;
    }
    let (pending, sock) = tty.into_parts();
    let mut _raw = None;
    if interactive {
        if io::stdin().is_terminal() {
            _raw = crate::run::RawMode::enter();
        }
        if let Ok(mut to_tty) = sock.try_clone() {
            std::thread::spawn(move || {
                let _ = io::copy(&mut io::stdin().lock(), &mut to_tty);
            });
        }
    }
    let resizing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(terminal));
    if terminal {
        let (flag, address, id, exec_id) = (
            resizing.clone(),
            address.clone(),
            id.to_string(),
            exec_id.to_string(),
        );
        std::thread::spawn(move || {
            crate::run::resize_loop(&flag, &address, &id, Some(&exec_id));
        });
    }
    let copy = std::thread::spawn(move || {
        crate::run::copy_to(io::Cursor::new(pending).chain(sock), io::stdout());
    });
    let status = client.wait(id, Some(exec_id));
    resizing.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = copy.join();
    Ok(status?.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_taken_for_the_process_recorded() {
        let me = std::process::id();
        let started = start_time(me).expect("our own start time");
        assert!(alive(me, Some(started)));
        assert!(alive(me, None));
        // Same pid, another start time: a different process now holds the pid.
        assert!(!alive(me, Some(started + 1)));
        // A process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let child_start = start_time(pid);
        child.wait().unwrap();
        assert!(!alive(pid, child_start));
    }
}
