//! Containers as the agent keeps them: create, start, exec, wait, signal, stats, remove.
//!
//! Each container is a helper process (see [`crate::helper`]) whose child is PID 1 of
//! new mount, pid, uts, ipc and (unless `network: host`) net namespaces, inside the
//! container's own cgroup. The same code serves the guest (the agent is PID 1 of the VM)
//! and the host (`arca-agent serve`, for `--isolation=process`).

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use arca_protocol::{
    AgentError, ContainerInfo, ContainerSpec, ContainerState, ContainerStats, ErrorCode,
    ExitStatus, NetworkMode, ProcessSpec, StdioStream, validate_id,
};

use crate::cgroup::{Cgroup, CgroupError, CgroupParent};
use crate::helper::{self, FromHelper, ToHelper};
use crate::reaper::{ChildExit, ExitSlot, Reaper};
use crate::sys;

fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

fn not_found(id: &str) -> AgentError {
    AgentError::new(ErrorCode::NotFound, format!("No such container: {id}"))
}

/// Host-side ends of a process's stdio, each handed out once to an attaching client.
#[derive(Debug, Default)]
struct StdioEnds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: Option<OwnedFd>,
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
}

impl Process {
    fn running(&self) -> bool {
        self.exit.get().is_none()
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
    started: Mutex<bool>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    fn state(&self) -> ContainerState {
        if !self.main.running() {
            ContainerState::Exited
        } else if *self.started.lock().unwrap_or_else(|e| e.into_inner()) {
            ContainerState::Running
        } else {
            ContainerState::Created
        }
    }

    fn exit_status(&self, exit: ChildExit) -> ExitStatus {
        let mut status = match exit {
            ChildExit::Exited(c) => ExitStatus::exited(c),
            ChildExit::Signaled(s) => ExitStatus::signalled(s),
        };
        status.oom_killed = self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
        status
    }

    fn process(&self, exec: Option<&str>) -> Result<Arc<Process>, AgentError> {
        match exec {
            None => Ok(Arc::clone(&self.main)),
            Some(e) => self
                .execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(e)
                .cloned()
                .ok_or_else(|| {
                    AgentError::new(
                        ErrorCode::NotFound,
                        format!("No such process {e} in container {}", self.spec.id),
                    )
                }),
        }
    }
}

/// Where a [`Runtime`] keeps things.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-container working directories (mount points of the rootfs layers).
    pub run_dir: PathBuf,
    /// Name of the cgroup (under the cgroup2 mount) that holds container cgroups.
    pub cgroup_parent: String,
    /// The agent binary, re-executed as the helper.
    pub helper_exe: PathBuf,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/run/arca/containers"),
            cgroup_parent: "arca".into(),
            helper_exe: PathBuf::from("/proc/self/exe"),
        }
    }
}

/// All containers of this agent.
#[derive(Debug)]
pub struct Runtime {
    config: RuntimeConfig,
    reaper: Reaper,
    cgroups: Result<CgroupParent, String>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl Runtime {
    /// A runtime; starts the reaper thread. A host without usable cgroup v2 still runs
    /// containers without limits (requests with limits get a clear error).
    pub fn new(config: RuntimeConfig, reaper: Reaper) -> Result<Self, AgentError> {
        fs::create_dir_all(&config.run_dir)
            .map_err(|e| internal(&format!("Cannot create {}", config.run_dir.display()), e))?;
        let cgroups = CgroupParent::setup(&config.cgroup_parent).map_err(|e| e.to_string());
        Ok(Self {
            config,
            reaper,
            cgroups,
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// Why containers get no cgroup here, if they do not.
    pub fn cgroup_problem(&self) -> Option<&str> {
        self.cgroups.as_ref().err().map(String::as_str)
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Number of containers.
    pub fn len(&self) -> usize {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// True without containers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        if containers.contains_key(&spec.id) {
            return Err(AgentError::new(
                ErrorCode::AlreadyExists,
                format!("A container named {} already exists", spec.id),
            ));
        }
        let cgroup = self.make_cgroup(&spec)?;
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
            let (process, sync) =
                self.spawn_helper("__container-init", flags, &spec.process, cgroup.as_ref())?;
            let init = ToHelper::Init {
                spec: spec.clone(),
                base: base.display().to_string(),
            };
            if let Err(e) = helper::send(sync.as_fd(), &init) {
                return Err(abort(
                    &process,
                    internal("Cannot talk to the container helper", e),
                ));
            }
            let pid = recv_pid(&sync, &process).map_err(|e| abort(&process, e))?;
            let process = Process { pid, ..process };
            let mut reply = helper::recv_with_fd::<FromHelper>(sync.as_fd());
            if let Ok(Some((FromHelper::Terminal, fd))) = reply {
                process.stdio.lock().unwrap_or_else(|e| e.into_inner()).tty = fd;
                reply = helper::recv_with_fd::<FromHelper>(sync.as_fd());
            }
            match reply.map(|r| r.map(|(m, _)| m)) {
                Ok(Some(FromHelper::Ready)) => Ok((process, sync)),
                Ok(Some(FromHelper::Failed { error })) => {
                    process.exit.wait();
                    Err(error)
                }
                other => {
                    let msg = format!("{other:?}, exit {:?}", process.exit.get());
                    Err(abort(
                        &process,
                        internal("Container setup ended unexpectedly", msg),
                    ))
                }
            }
        })();
        let (process, sync) = match created {
            Ok(x) => x,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.remove();
                }
                let _ = fs::remove_dir(&base);
                return Err(e);
            }
        };
        let pid = process.pid as u32;
        let id = spec.id.clone();
        containers.insert(
            id,
            Arc::new(Container {
                spec,
                cgroup,
                base,
                main: Arc::new(process),
                sync: Mutex::new(Some(sync)),
                started: Mutex::new(false),
                execs: Mutex::new(HashMap::new()),
            }),
        );
        Ok(pid)
    }

    /// Spawns a helper in `mode` with the process's stdio, joined to `cgroup`. The
    /// returned process carries the helper's pid until the helper reports its child.
    fn spawn_helper(
        &self,
        mode: &str,
        unshare_flags: i32,
        spec: &ProcessSpec,
        cgroup: Option<&Cgroup>,
    ) -> Result<(Process, OwnedFd), AgentError> {
        let (ends, child_stdio) = make_stdio(spec)?;
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| internal("Cannot create the helper socket", e))?;
        let mut cmd = Command::new(&self.config.helper_exe);
        cmd.arg(mode).env_clear();
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
        };
        if let Some(cg) = cgroup
            && let Err(e) = cg.join(pid as u32)
        {
            kill_pid(pid, libc::SIGKILL);
            process.exit.wait();
            return Err(internal("Cannot move the container into its cgroup", e));
        }
        Ok((process, ours))
    }

    /// Runs the main process of a created container.
    pub fn start(&self, id: &str) -> Result<(), AgentError> {
        let c = self.get(id)?;
        let sync = c.sync.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(sync) = sync else {
            return Err(AgentError::new(
                ErrorCode::InvalidState,
                format!("Container {id} was already started"),
            ));
        };
        *c.started.lock().unwrap_or_else(|e| e.into_inner()) = true;
        helper::send(sync.as_fd(), &ToHelper::Start)
            .map_err(|e| internal("Cannot start the container", e))?;
        match helper::recv::<FromHelper>(sync.as_fd()) {
            Ok(None) => Ok(()),
            Ok(Some(FromHelper::Failed { error })) => Err(error),
            other => Err(internal(
                "Container start ended unexpectedly",
                format!("{other:?}"),
            )),
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
        let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.contains_key(exec_id) {
            return Err(AgentError::new(
                ErrorCode::AlreadyExists,
                format!("Process {exec_id} already exists in container {id}"),
            ));
        }
        let (helper_process, sync) = self.spawn_helper("__exec", 0, &process, c.cgroup.as_ref())?;
        let hostname = c.spec.hostname.clone().unwrap_or_else(|| c.spec.id.clone());
        let exec = ToHelper::Exec {
            target_pid: c.main.pid as u32,
            process,
            hostname,
        };
        if let Err(e) = helper::send(sync.as_fd(), &exec) {
            return Err(abort(
                &helper_process,
                internal("Cannot talk to the exec helper", e),
            ));
        }
        let pid = match helper::recv::<FromHelper>(sync.as_fd()) {
            Ok(Some(FromHelper::Pid { pid })) => pid as i32,
            Ok(Some(FromHelper::Failed { error })) => {
                helper_process.exit.wait();
                return Err(error);
            }
            other => {
                let e = internal("Exec helper ended unexpectedly", format!("{other:?}"));
                return Err(abort(&helper_process, e));
            }
        };
        let proc_ = Process {
            pid,
            ..helper_process
        };
        let mut reply = helper::recv_with_fd::<FromHelper>(sync.as_fd());
        if let Ok(Some((FromHelper::Terminal, fd))) = reply {
            proc_.stdio.lock().unwrap_or_else(|e| e.into_inner()).tty = fd;
            reply = helper::recv_with_fd::<FromHelper>(sync.as_fd());
        }
        match reply.map(|r| r.map(|(m, _)| m)) {
            Ok(None) => {
                execs.insert(exec_id.to_string(), Arc::new(proc_));
                Ok(pid as u32)
            }
            Ok(Some(FromHelper::Failed { error })) => {
                proc_.exit.wait();
                Err(error)
            }
            other => {
                kill_pid(proc_.pid, libc::SIGKILL);
                Err(internal("Exec ended unexpectedly", format!("{other:?}")))
            }
        }
    }

    /// Blocks until the process exits.
    pub fn wait(&self, id: &str, exec: Option<&str>) -> Result<ExitStatus, AgentError> {
        let c = self.get(id)?;
        let p = c.process(exec)?;
        let exit = p.exit.wait();
        Ok(c.exit_status(exit))
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
        kill_pid(p.pid, signal);
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
        let stdio = p.stdio.lock().unwrap_or_else(|e| e.into_inner());
        let tty = stdio.tty.as_ref().or(None);
        let fd = match (tty, p.terminal) {
            (Some(fd), _) => fd.as_fd(),
            (None, true) => {
                return Err(AgentError::new(
                    ErrorCode::InvalidState,
                    "Attach the terminal before resizing it",
                ));
            }
            (None, false) => {
                return Err(AgentError::new(
                    ErrorCode::BadRequest,
                    "The process has no terminal",
                ));
            }
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
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ContainerInfo> = containers
            .values()
            .map(|c| ContainerInfo {
                id: c.spec.id.clone(),
                state: c.state(),
                pid: c.main.pid as u32,
                exit: c.main.exit.get().map(|e| c.exit_status(e)),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
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
        let mut stdio = p.stdio.lock().unwrap_or_else(|e| e.into_inner());
        let mismatch = p.terminal != (stream == StdioStream::Tty);
        if mismatch {
            let msg = if p.terminal {
                "The process has a terminal: attach its tty stream"
            } else {
                "The process has no terminal: attach stdin, stdout or stderr"
            };
            return Err(AgentError::new(ErrorCode::BadRequest, msg));
        }
        let slot = match stream {
            StdioStream::Stdin => stdio.stdin.take(),
            StdioStream::Stdout => stdio.stdout.take(),
            StdioStream::Stderr => stdio.stderr.take(),
            StdioStream::Tty => stdio
                .tty
                .as_ref()
                .map(|fd| fd.try_clone())
                .transpose()
                .map_err(|e| internal("dup", e))?,
        };
        slot.ok_or_else(|| {
            let why = if stream == StdioStream::Stdin {
                "not open (start it with stdin) or"
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
            ContainerState::Running => kill_pid(c.main.pid, libc::SIGKILL),
            ContainerState::Created => {
                // Its PID 1 waits for "start": closing the socket ends it.
                drop(c.sync.lock().unwrap_or_else(|e| e.into_inner()).take());
                kill_pid(c.main.pid, libc::SIGKILL);
            }
            ContainerState::Exited => {}
        }
        c.main.exit.wait();
        // The pid namespace died with its PID 1; exec helpers follow.
        for p in c.execs.lock().unwrap_or_else(|e| e.into_inner()).values() {
            kill_pid(p.pid, libc::SIGKILL);
            p.exit.wait();
        }
        if let Some(cg) = &c.cgroup {
            for pid in cg.procs() {
                kill_pid(pid, libc::SIGKILL);
            }
            cg.remove()
                .map_err(|e| internal("Cannot remove the container's cgroup", e))?;
        }
        let _ = fs::remove_dir(&c.base);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    /// Kills and removes every container, then the cgroup parent if it is empty.
    pub fn remove_all(&self) {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
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

fn kill_pid(pid: i32, signal: i32) {
    let _ = sys::kill(pid, signal);
}

/// Kills a helper (and with it its child) and waits for it; returns `e`.
fn abort(process: &Process, e: AgentError) -> AgentError {
    kill_pid(process.pid, libc::SIGKILL);
    process.exit.wait();
    e
}

fn recv_pid(sync: &OwnedFd, helper: &Process) -> Result<i32, AgentError> {
    match helper::recv::<FromHelper>(sync.as_fd()) {
        Ok(Some(FromHelper::Pid { pid })) => Ok(pid as i32),
        Ok(Some(FromHelper::Failed { error })) => Err(error),
        other => Err(internal(
            "Container helper ended unexpectedly",
            format!("{other:?}, exit {:?}", helper.exit.get()),
        )),
    }
}

/// Pipes or a pty for a process: our ends, and the child's stdin/stdout/stderr.
fn make_stdio(spec: &ProcessSpec) -> Result<(StdioEnds, [Stdio; 3]), AgentError> {
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| internal("pipe", e))
    };
    if spec.terminal {
        // The helper opens the pty inside the container and sends us the master.
        return Ok((
            StdioEnds::default(),
            [Stdio::null(), Stdio::null(), Stdio::null()],
        ));
    }
    let (stdin_ours, stdin_theirs) = if spec.stdin {
        let (r, w) = pipe()?;
        (Some(w), Stdio::from(r))
    } else {
        (None, Stdio::null())
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok((
        StdioEnds {
            stdin: stdin_ours,
            stdout: Some(out_r),
            stderr: Some(err_r),
            tty: None,
        },
        [stdin_theirs, Stdio::from(out_w), Stdio::from(err_w)],
    ))
}
