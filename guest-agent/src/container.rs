//! Containers as the agent keeps them: create, start, exec, wait, signal, stats, remove.
//!
//! Each container is a helper process (see [`crate::helper`]) whose child is PID 1 of
//! new mount, pid, uts, ipc and (unless `network: host`) net namespaces, inside the
//! container's own cgroup. The same code serves the guest (the agent is PID 1 of the VM)
//! and the host (`arca-agent serve`, for `--isolation=process`).
//!
//! Locks are held only for map lookups and updates, never across a helper handshake,
//! so one slow container setup (a slow disk, a hostile image) stalls only its own
//! request; a handshake that takes longer than [`HANDSHAKE_TIMEOUT`] is abandoned and
//! its helper killed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arca_protocol::{
    AgentError, ContainerInfo, ContainerSpec, ContainerState, ContainerStats, ErrorCode,
    ExitStatus, NetworkMode, ProcessInfo, ProcessSpec, StdioStream, validate_id,
};

use crate::cgroup::{Cgroup, CgroupError, CgroupParent};
use crate::helper::{self, FromHelper, ToHelper};
use crate::reaper::{ChildExit, ExitSlot, Reaper};
use crate::sys;

/// Longest a helper may take to set up a container or exec a process.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

fn not_found(id: &str) -> AgentError {
    AgentError::new(ErrorCode::NotFound, format!("No such container: {id}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host-side ends of a process's stdio, each handed out once to an attaching client.
#[derive(Debug, Default)]
struct StdioEnds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: Option<OwnedFd>,
    tty_attached: bool,
}

/// A process of a container: its main process or an exec'd one.
#[derive(Debug)]
pub struct Process {
    /// The process (not its helper), in the agent's pid namespace.
    pid: i32,
    /// The helper's exit, which mirrors the process's.
    exit: Arc<ExitSlot>,
    stdio: Mutex<StdioEnds>,
    terminal: bool,
    /// The cgroup's OOM-kill count when the process started.
    oom_kills_at_start: u64,
}

impl Process {
    fn running(&self) -> bool {
        self.exit.get().is_none()
    }

    /// Signals the process if it still runs (its pid is ours until the helper, which
    /// mirrors it, has been reaped).
    fn kill(&self, signal: i32) {
        if self.running() {
            let _ = sys::kill(self.pid, signal);
        }
    }
}

/// One container.
#[derive(Debug)]
pub struct Container {
    spec: ContainerSpec,
    cgroup: Option<Cgroup>,
    base: PathBuf,
    main: Arc<Process>,
    /// Talks to the container's PID 1 until it execs.
    sync: Mutex<Option<OwnedFd>>,
    started: AtomicBool,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Exec ids whose handshake is in progress.
    pending_execs: Mutex<HashSet<String>>,
    /// Its overlay's upper and lower directories (for `changes`).
    layers: Layers,
}

impl Container {
    fn state(&self) -> ContainerState {
        if !self.main.running() {
            ContainerState::Exited
        } else if self.started.load(Ordering::SeqCst) {
            ContainerState::Running
        } else {
            ContainerState::Created
        }
    }

    fn exit_status(&self, p: &Process, exit: ChildExit) -> ExitStatus {
        let mut status = match exit {
            ChildExit::Exited(c) => ExitStatus::exited(c),
            ChildExit::Signaled(s) => ExitStatus::signalled(s),
        };
        status.oom_killed = self
            .cgroup
            .as_ref()
            .is_some_and(|c| c.oom_kills() > p.oom_kills_at_start);
        status
    }

    fn process(&self, exec: Option<&str>) -> Result<Arc<Process>, AgentError> {
        match exec {
            None => Ok(Arc::clone(&self.main)),
            Some(e) => lock(&self.execs).get(e).cloned().ok_or_else(|| {
                AgentError::new(
                    ErrorCode::NotFound,
                    format!("No such process {e} in container {}", self.spec.id),
                )
            }),
        }
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, Cgroup::oom_kills)
    }
}

/// Where a [`Runtime`] keeps things.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-container working directories (mount points of the rootfs layers).
    pub run_dir: PathBuf,
    /// Name of the cgroup (under the cgroup2 mount) that holds container cgroups.
    pub cgroup_parent: String,
    /// The agent serves on a host (process isolation): the sandbox's network namespace
    /// is the host's, so a container in it may not set its `net.*` parameters.
    pub on_host: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/run/arca/containers"),
            cgroup_parent: "arca".into(),
            on_host: false,
        }
    }
}

/// All containers of this agent.
#[derive(Debug)]
pub struct Runtime {
    config: RuntimeConfig,
    reaper: Reaper,
    /// A sealed in-memory copy of the agent binary, executed as the helper: a container
    /// that reaches a helper's `/proc/<pid>/exe` finds this copy, never the file on disk
    /// (CVE-2019-5736).
    helper_exe: OwnedFd,
    cgroups: Result<CgroupParent, String>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Container ids whose creation is in progress.
    creating: Mutex<HashSet<String>>,
    closing: AtomicBool,
}

impl Runtime {
    /// A runtime. A host without usable cgroup v2 still runs containers without limits
    /// (requests with limits get a clear error).
    pub fn new(config: RuntimeConfig, reaper: Reaper) -> Result<Self, AgentError> {
        fs::create_dir_all(&config.run_dir)
            .map_err(|e| internal(&format!("Cannot create {}", config.run_dir.display()), e))?;
        let helper_exe =
            sys::sealed_copy_of_self().map_err(|e| internal("Cannot copy the agent binary", e))?;
        let cgroups = CgroupParent::setup(&config.cgroup_parent).map_err(|e| e.to_string());
        Ok(Self {
            config,
            reaper,
            helper_exe,
            cgroups,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            closing: AtomicBool::new(false),
        })
    }

    /// Why containers get no cgroup here, if they do not.
    pub fn cgroup_problem(&self) -> Option<&str> {
        self.cgroups.as_ref().err().map(String::as_str)
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Number of containers (created or being created).
    pub fn len(&self) -> usize {
        lock(&self.containers).len() + lock(&self.creating).len()
    }

    /// True without containers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses new containers from now on (the sandbox is going away).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    fn make_cgroup(&self, spec: &ContainerSpec) -> Result<Option<Cgroup>, AgentError> {
        let r = &spec.resources;
        let wants_limits =
            r.memory_bytes.is_some() || r.cpu_quota_us.is_some() || r.pids_max.is_some();
        match &self.cgroups {
            Ok(parent) => parent.create(&spec.id, r).map(Some).map_err(|e| match e {
                CgroupError::ControllerMissing { .. } => {
                    AgentError::new(ErrorCode::Unsupported, e.to_string())
                }
                e => internal("Cannot set up the container's cgroup", e),
            }),
            Err(problem) if wants_limits => Err(AgentError::new(
                ErrorCode::Unsupported,
                format!("Resource limits need cgroup v2, which is unusable here: {problem}"),
            )),
            Err(_) => Ok(None),
        }
    }

    /// Creates a container: cgroup, namespaces, rootfs; its process waits for `start`.
    pub fn create(&self, spec: ContainerSpec) -> Result<u32, AgentError> {
        spec.validate()?;
        for s in &spec.sysctls {
            s.check_network(self.config.on_host && spec.network == NetworkMode::Host)?;
        }
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                "The sandbox is shutting down",
            ));
        }
        {
            let containers = lock(&self.containers);
            let mut creating = lock(&self.creating);
            if containers.contains_key(&spec.id) || !creating.insert(spec.id.clone()) {
                return Err(AgentError::new(
                    ErrorCode::AlreadyExists,
                    format!("A container named {} already exists", spec.id),
                ));
            }
        }
        let result = self.create_reserved(spec);
        if let Ok((id, container)) = &result {
            lock(&self.containers).insert(id.clone(), Arc::clone(container));
        }
        // The id stays reserved until the container is in the map (or has failed).
        let id = match &result {
            Ok((id, _)) => id.clone(),
            Err((id, _)) => id.clone(),
        };
        lock(&self.creating).remove(&id);
        result.map(|(_, c)| c.main.pid as u32).map_err(|(_, e)| e)
    }

    #[allow(clippy::type_complexity)]
    fn create_reserved(
        &self,
        spec: ContainerSpec,
    ) -> Result<(String, Arc<Container>), (String, AgentError)> {
        let id = spec.id.clone();
        let fail = |e: AgentError| (id.clone(), e);
        let cgroup = self.make_cgroup(&spec).map_err(fail)?;
        let base = self.config.run_dir.join(&spec.id);
        let mut flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID;
        if spec.network == NetworkMode::Isolated {
            flags |= libc::CLONE_NEWNET;
        }
        let created = (|| {
            let _ = fs::remove_dir(&base);
            fs::create_dir(&base)
                .map_err(|e| internal(&format!("Cannot create {}", base.display()), e))?;
            let (process, sync) = self.spawn_helper("__container-init", flags, &spec.process)?;
            let init = ToHelper::Init {
                spec: Box::new(spec.clone()),
                base: base.display().to_string(),
                cgroup_procs: cgroup.as_ref().map(cgroup_procs),
            };
            if let Err(e) = helper::send(sync.as_fd(), &init) {
                return Err(abort(
                    &process,
                    internal("Cannot talk to the container helper", e),
                ));
            }
            let (process, layers) = handshake(process, &sync, true)?;
            Ok((process, sync, layers))
        })();
        let (process, sync, layers) = match created {
            Ok(x) => x,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.remove();
                }
                let _ = fs::remove_dir(&base);
                return Err(fail(e));
            }
        };
        let container = Arc::new(Container {
            spec,
            cgroup,
            base,
            main: Arc::new(process),
            sync: Mutex::new(Some(sync)),
            started: AtomicBool::new(false),
            execs: Mutex::new(HashMap::new()),
            pending_execs: Mutex::new(HashSet::new()),
            layers,
        });
        Ok((id, container))
    }

    /// Spawns a helper in `mode` with the process's stdio. The returned process carries
    /// the helper's pid until the helper reports its child.
    fn spawn_helper(
        &self,
        mode: &str,
        unshare_flags: i32,
        spec: &ProcessSpec,
    ) -> Result<(Process, OwnedFd), AgentError> {
        let (ends, child_stdio) = make_stdio(spec)?;
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| internal("Cannot create the helper socket", e))?;
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(HANDSHAKE_TIMEOUT),
        )
        .map_err(|e| internal("Cannot set the helper socket timeout", e))?;
        let mut cmd = Command::new(format!("/proc/self/fd/{}", self.helper_exe.as_raw_fd()));
        cmd.arg0("arca-agent").arg(mode).env_clear();
        let [i, o, e] = child_stdio;
        cmd.stdin(i).stdout(o).stderr(e);
        sys::pre_exec_unshare_and_pass_fd(&mut cmd, unshare_flags, theirs.as_raw_fd());
        let (pid, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| internal("Cannot start the container helper", e))?;
        drop(cmd);
        drop(theirs);
        let process = Process {
            pid,
            exit,
            stdio: Mutex::new(ends),
            terminal: spec.terminal,
            oom_kills_at_start: 0,
        };
        Ok((process, ours))
    }

    /// Runs the main process of a created container.
    pub fn start(&self, id: &str) -> Result<(), AgentError> {
        let c = self.get(id)?;
        let Some(sync) = lock(&c.sync).take() else {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} was already started"),
            ));
        };
        helper::send(sync.as_fd(), &ToHelper::Start)
            .map_err(|e| internal("Cannot start the container", e))?;
        c.started.store(true, Ordering::SeqCst);
        match helper::recv::<FromHelper>(sync.as_fd()) {
            Ok(None) => Ok(()),
            Ok(Some(FromHelper::Failed { error })) => Err(error),
            other => {
                c.main.kill(libc::SIGKILL);
                Err(internal(
                    "Container start ended unexpectedly",
                    format!("{other:?}"),
                ))
            }
        }
    }

    /// Runs another process in a running container.
    pub fn exec(&self, id: &str, exec_id: &str, process: ProcessSpec) -> Result<u32, AgentError> {
        validate_id("process", exec_id)?;
        process.validate()?;
        let c = self.get(id)?;
        if c.state() != ContainerState::Running {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} is not running"),
            ));
        }
        {
            let execs = lock(&c.execs);
            let mut pending = lock(&c.pending_execs);
            if execs.contains_key(exec_id) || !pending.insert(exec_id.to_string()) {
                return Err(AgentError::new(
                    ErrorCode::AlreadyExists,
                    format!("Process {exec_id} already exists in container {id}"),
                ));
            }
        }
        let detached = process.detached;
        let result = self.exec_reserved(&c, process);
        if let Ok(p) = &result {
            lock(&c.execs).insert(exec_id.to_string(), Arc::clone(p));
            if detached {
                // Nobody waits for a detached process: forget it once it exits.
                let (c, p, exec_id) = (Arc::clone(&c), Arc::clone(p), exec_id.to_string());
                std::thread::spawn(move || {
                    p.exit.wait();
                    lock(&c.execs).remove(&exec_id);
                });
            }
        }
        lock(&c.pending_execs).remove(exec_id);
        result.map(|p| p.pid as u32)
    }

    fn exec_reserved(
        &self,
        c: &Container,
        process: ProcessSpec,
    ) -> Result<Arc<Process>, AgentError> {
        let (helper_process, sync) = self.spawn_helper("__exec", 0, &process)?;
        let hostname = c.spec.hostname.clone().unwrap_or_else(|| c.spec.id.clone());
        let exec = ToHelper::Exec {
            target_pid: c.main.pid as u32,
            process,
            hostname,
            cgroup_procs: c.cgroup.as_ref().map(cgroup_procs),
            security: Box::new(c.spec.security.clone()),
        };
        if let Err(e) = helper::send(sync.as_fd(), &exec) {
            return Err(abort(
                &helper_process,
                internal("Cannot talk to the exec helper", e),
            ));
        }
        let (mut p, _) = handshake(helper_process, &sync, false)?;
        p.oom_kills_at_start = c.oom_kills();
        Ok(Arc::new(p))
    }

    /// Blocks until the process exits. An exec'd process is forgotten once waited for.
    pub fn wait(&self, id: &str, exec: Option<&str>) -> Result<ExitStatus, AgentError> {
        let c = self.get(id)?;
        let p = c.process(exec)?;
        let exit = p.exit.wait();
        let status = c.exit_status(&p, exit);
        if let Some(e) = exec {
            lock(&c.execs).remove(e);
        }
        Ok(status)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, id: &str, exec: Option<&str>, signal: i32) -> Result<(), AgentError> {
        if !(1..=64).contains(&signal) {
            return Err(AgentError::new(
                ErrorCode::BadRequest,
                format!("Invalid signal {signal}"),
            ));
        }
        let c = self.get(id)?;
        if exec.is_none() && c.state() != ContainerState::Running {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} is not running"),
            ));
        }
        let p = c.process(exec)?;
        if !p.running() {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                "The process has exited",
            ));
        }
        p.kill(signal);
        Ok(())
    }

    /// Sets the terminal size of a process with a terminal.
    pub fn resize(
        &self,
        id: &str,
        exec: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentError> {
        let c = self.get(id)?;
        let p = c.process(exec)?;
        let stdio = lock(&p.stdio);
        let Some(fd) = stdio.tty.as_ref() else {
            return Err(AgentError::new(
                ErrorCode::BadRequest,
                "The process has no terminal",
            ));
        };
        let ws = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(fd, ws).map_err(|e| internal("Cannot resize the terminal", e))
    }

    /// Cgroup figures.
    pub fn stats(&self, id: &str) -> Result<ContainerStats, AgentError> {
        let c = self.get(id)?;
        c.cgroup.as_ref().map(Cgroup::stats).ok_or_else(|| {
            AgentError::new(
                ErrorCode::Unsupported,
                format!(
                    "No cgroup for container {id}: {}",
                    self.cgroup_problem().unwrap_or("unknown")
                ),
            )
        })
    }

    /// Every container.
    pub fn list(&self) -> Vec<ContainerInfo> {
        let containers = lock(&self.containers);
        let mut out: Vec<ContainerInfo> = containers
            .values()
            .map(|c| ContainerInfo {
                id: c.spec.id.clone(),
                state: c.state(),
                pid: c.main.pid as u32,
                exit: c.main.exit.get().map(|e| c.exit_status(&c.main, e)),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The processes of running container `id`: its cgroup's (nested ones included), or,
    /// without a cgroup, its main process and that process's descendants.
    pub fn top(&self, id: &str) -> Result<Vec<ProcessInfo>, AgentError> {
        let c = self.get(id)?;
        if c.state() != ContainerState::Running {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} is not running"),
            ));
        }
        let pids = match &c.cgroup {
            Some(cg) => cg.all_procs(),
            None => crate::procinfo::descendants(c.main.pid),
        };
        Ok(crate::procinfo::describe(&pids))
    }

    /// New descriptors of container `id`'s overlay upper and lower directories (its
    /// layer, for `Channel::Layer`). The container must not run: its layer is taken
    /// once its process has exited (or before it started).
    pub fn layer_dirs(&self, id: &str) -> Result<(OwnedFd, OwnedFd), AgentError> {
        let c = self.get(id)?;
        if c.state() == ContainerState::Running {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} is running: its layer is taken once it has exited"),
            ));
        }
        let (Some(upper), Some(lower)) = (&c.layers.upper, &c.layers.lower) else {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("The layer of container {id} cannot be read"),
            ));
        };
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| internal("Cannot read the container's layer", e))
        };
        Ok((dup(upper)?, dup(lower)?))
    }

    /// What changed in container `id`'s root filesystem against its image, sorted by
    /// path: the page of at most [`arca_protocol::CHANGES_PAGE`] entries (fewer when
    /// paths are long, so the answer fits a frame) from entry `from`, and whether more
    /// follow.
    pub fn changes(
        &self,
        id: &str,
        from: usize,
    ) -> Result<(Vec<arca_protocol::Change>, bool), AgentError> {
        let c = self.get(id)?;
        let (Some(upper), Some(lower)) = (&c.layers.upper, &c.layers.lower) else {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("The changes of container {id} cannot be read"),
            ));
        };
        let mounts: Vec<String> = c.spec.mounts.iter().map(|m| m.target.clone()).collect();
        let all = crate::changes::changes(upper.as_fd(), lower.as_fd(), &mounts)
            .map_err(|e| internal("Cannot read the container's changes", e))?;
        let mut page = Vec::new();
        let mut bytes = 0;
        for ch in all.iter().skip(from) {
            // As encoded: a control character takes six bytes of JSON.
            bytes += serde_json::to_string(ch).map_or(0, |j| j.len()) + 1;
            if page.len() >= arca_protocol::CHANGES_PAGE || bytes > arca_protocol::MAX_FRAME_LEN / 2
            {
                break;
            }
            page.push(ch.clone());
        }
        if page.is_empty() && from < all.len() {
            return Err(internal(
                "Cannot list the container's changes",
                "a path too long for one answer",
            ));
        }
        let more = from + page.len() < all.len();
        Ok((page, more))
    }

    /// Freezes (`frozen`) or thaws every process of running container `id` (`pause`,
    /// `unpause`).
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), AgentError> {
        let c = self.get(id)?;
        if c.state() != ContainerState::Running {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} is not running"),
            ));
        }
        let cg = c.cgroup.as_ref().ok_or_else(|| {
            AgentError::new(
                ErrorCode::Unsupported,
                format!("Container {id} has no cgroup v2 of its own to freeze"),
            )
        })?;
        cg.freeze(frozen).map_err(|e| {
            AgentError::new(
                ErrorCode::Internal,
                format!(
                    "Cannot {} container {id}: {e}",
                    if frozen { "pause" } else { "unpause" }
                ),
            )
        })
    }

    /// Where a forwarded connection to a port of running container `id` goes: its
    /// PID 1, whose network namespace to connect in (none when the container shares
    /// the agent's), and its first interface address, or loopback.
    pub fn forward_target(
        &self,
        id: &str,
    ) -> Result<(Option<i32>, std::net::Ipv4Addr), AgentError> {
        let c = self.get(id)?;
        if c.state() != ContainerState::Running {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} is not running"),
            ));
        }
        let address = c
            .spec
            .interfaces
            .first()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |i| i.address);
        let netns = (c.spec.network == NetworkMode::Isolated).then_some(c.main.pid);
        Ok((netns, address))
    }

    /// Hands out one stdio stream of a process, once.
    pub fn attach(
        &self,
        id: &str,
        exec: Option<&str>,
        stream: StdioStream,
    ) -> Result<OwnedFd, AgentError> {
        let c = self.get(id)?;
        let p = c.process(exec)?;
        if p.terminal != (stream == StdioStream::Tty) {
            let msg = if p.terminal {
                "The process has a terminal: attach its tty stream"
            } else {
                "The process has no terminal: attach stdin, stdout or stderr"
            };
            return Err(AgentError::new(ErrorCode::BadRequest, msg));
        }
        let mut stdio = lock(&p.stdio);
        // The tty master stays here too (for resizing); it is handed out once, as a copy.
        let slot = match stream {
            StdioStream::Stdin => stdio.stdin.take(),
            StdioStream::Stdout => stdio.stdout.take(),
            StdioStream::Stderr => stdio.stderr.take(),
            StdioStream::Tty if stdio.tty_attached => None,
            StdioStream::Tty => {
                let copy = stdio
                    .tty
                    .as_ref()
                    .map(|fd| fd.try_clone().map_err(|e| internal("dup", e)))
                    .transpose()?;
                stdio.tty_attached = copy.is_some();
                copy
            }
        };
        slot.ok_or_else(|| {
            let why = if stream == StdioStream::Stdin {
                "not open (the process was started without stdin) or"
            } else {
                ""
            };
            AgentError::new(
                ErrorCode::InvalidState,
                format!("The {stream:?} stream is {why} already attached"),
            )
        })
    }

    /// Removes a container; `force` kills it first if it runs.
    pub fn remove(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let c = self.get(id)?;
        match c.state() {
            ContainerState::Running if !force => {
                return Err(AgentError::new(
                    ErrorCode::InvalidState,
                    format!("Container {id} is running: stop it first or remove it with force"),
                ));
            }
            ContainerState::Running => c.main.kill(libc::SIGKILL),
            ContainerState::Created => {
                // Its PID 1 waits for "start": closing the socket ends it.
                drop(lock(&c.sync).take());
                c.main.kill(libc::SIGKILL);
            }
            ContainerState::Exited => {}
        }
        c.main.exit.wait();
        // The pid namespace died with its PID 1; exec helpers follow.
        let execs: Vec<Arc<Process>> = lock(&c.execs).values().cloned().collect();
        for p in execs {
            p.kill(libc::SIGKILL);
            p.exit.wait();
        }
        if let Some(cg) = &c.cgroup {
            cg.kill_all();
            cg.remove()
                .map_err(|e| internal("Cannot remove the container's cgroup", e))?;
        }
        let _ = fs::remove_dir(&c.base);
        lock(&self.containers).remove(id);
        Ok(())
    }

    /// Kills and removes every container, then the cgroup parent if it is empty.
    pub fn remove_all(&self) {
        self.close();
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id, true) {
                eprintln!("arca-agent: removing {id}: {e}");
            }
        }
        if let Ok(parent) = &self.cgroups {
            parent.remove_if_empty();
        }
    }
}

fn cgroup_procs(cg: &Cgroup) -> String {
    cg.path().join("cgroup.procs").display().to_string()
}

/// Kills a helper (and with it its child) and waits for it; returns `e`.
fn abort(process: &Process, e: AgentError) -> AgentError {
    let _ = sys::kill(process.pid, libc::SIGKILL);
    process.exit.wait();
    e
}

/// Reads the helper's reports until the process is ready (`init`: `Ready`; exec: the
/// socket's end of file, which its exec causes). Messages may come in any order: the
/// helper's `Pid` races with its child's first report.
fn handshake(helper: Process, sync: &OwnedFd, init: bool) -> Result<(Process, Layers), AgentError> {
    let mut pid = None;
    let mut tty = None;
    let mut ready = false;
    let mut layers = Layers::default();
    // Both the pid and readiness are needed, whichever comes first.
    let pid = loop {
        if let (true, Some(p)) = (ready, pid) {
            break p;
        }
        match helper::recv_with_fd::<FromHelper>(sync.as_fd()) {
            Ok(Some((FromHelper::Pid { pid: p }, _))) => pid = Some(p as i32),
            Ok(Some((FromHelper::Terminal, fd))) => tty = fd,
            Ok(Some((FromHelper::UpperDir, fd))) if init => layers.upper = fd,
            Ok(Some((FromHelper::LowerDir, fd))) if init => layers.lower = fd,
            Ok(Some((FromHelper::Ready, _))) if init => ready = true,
            Ok(None) if !init && pid.is_some() => ready = true,
            Ok(Some((FromHelper::Failed { error }, _))) => {
                helper.exit.wait();
                return Err(error);
            }
            other => {
                let why = match other {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        format!("no answer within {HANDSHAKE_TIMEOUT:?}")
                    }
                    other => format!("{other:?}, exit {:?}", helper.exit.get()),
                };
                return Err(abort(&helper, internal("Container helper failed", why)));
            }
        }
    };
    if tty.is_some() {
        lock(&helper.stdio).tty = tty;
    }
    Ok((Process { pid, ..helper }, layers))
}

/// A container's overlay directories, as its init helper passed them.
#[derive(Debug, Default)]
struct Layers {
    upper: Option<OwnedFd>,
    lower: Option<OwnedFd>,
}

/// Pipes for a process: our ends, and the child's stdin/stdout/stderr.
fn make_stdio(spec: &ProcessSpec) -> Result<(StdioEnds, [Stdio; 3]), AgentError> {
    if spec.terminal {
        // The helper opens the pty inside the container and sends us the master.
        return Ok((
            StdioEnds::default(),
            [Stdio::null(), Stdio::null(), Stdio::null()],
        ));
    }
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| internal("pipe", e))
    };
    let (stdin_ours, stdin_theirs) = if spec.stdin {
        let (r, w) = pipe()?;
        (Some(w), Stdio::from(r))
    } else {
        (None, Stdio::null())
    };
    if spec.detached {
        return Ok((
            StdioEnds {
                stdin: stdin_ours,
                ..StdioEnds::default()
            },
            [stdin_theirs, Stdio::null(), Stdio::null()],
        ));
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok((
        StdioEnds {
            stdin: stdin_ours,
            stdout: Some(out_r),
            stderr: Some(err_r),
            tty: None,
            tty_attached: false,
        },
        [stdin_theirs, Stdio::from(out_w), Stdio::from(err_w)],
    ))
}
