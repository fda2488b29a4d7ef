//! The commands, as runc has them (its flags are parsed by `liboci-cli` in the
//! binary). Errors are returned; the binary prints them on stderr and exits 1.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use arca_agent_client::{AgentAddress, AgentClient};
use arca_protocol::ProcessSpec;
use arca_runtime::container::pids::{kill_if_same, wait_gone};

use crate::OciError;
use crate::container::{self, Dir, Record, Status, ask_monitor, now_rfc3339};
use crate::spec::{self, Isolation};
use crate::stdio::Attached;

/// How long `create` waits for the monitor to have the container made.
const CREATE_PATIENCE: Duration = Duration::from_secs(60);
/// How long `delete --force` waits for the monitor to end the container.
const DELETE_PATIENCE: Duration = Duration::from_secs(10);
/// How long the agent may take to answer a quick request.
const AGENT_PATIENCE: Duration = Duration::from_secs(10);

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> OciError {
    let action = action.into();
    move |source| OciError::Io { action, source }
}

/// The runtime's root, made private (0700) if it is not there: other local users
/// must not read containers' records or reach their agents' sockets.
fn ensure_root(root: &Path) -> Result<(), OciError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io_err(format!("create {}", root.display())))?;
    // One that was there already: root's own directory, private from now on.
    let m =
        std::fs::symlink_metadata(root).map_err(io_err(format!("inspect {}", root.display())))?;
    if !m.is_dir() || m.uid() != 0 {
        return Err(OciError::Invalid(format!(
            "The runtime's root {} is not a directory of root's",
            root.display()
        )));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("make {} private", root.display())))?;
    }
    Ok(())
}

/// Longest path of a Unix socket (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `create`: the container made and waiting for `start`; its monitor's pid in
/// `pid_file`. Returns the monitor (a child of this process until it exits).
pub fn create(
    root: &Path,
    id: &str,
    bundle: &Path,
    pid_file: Option<&Path>,
    preserve_fds: i32,
) -> Result<Child, OciError> {
    if preserve_fds > 0 {
        return Err(OciError::Invalid(
            "--preserve-fds is not supported by arca-runtime".into(),
        ));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(OciError::Invalid(
            "arca-runtime needs root (namespaces, mounts and cgroups)".into(),
        ));
    }
    let dir = Dir::of(root, id)?;
    let bundle = std::fs::canonicalize(bundle)
        .map_err(io_err(format!("find the bundle {}", bundle.display())))?;
    // Read and checked before anything is made: a refused bundle leaves nothing.
    let config = spec::load(&bundle)?;
    if spec::isolation(&config)? == Isolation::Vm {
        return Err(OciError::Invalid(format!(
            "microVM isolation through arca-runtime is not supported yet: set the annotation {}=process (podman: --annotation {}=process)",
            spec::ISOLATION_ANNOTATION,
            spec::ISOLATION_ANNOTATION
        )));
    }
    let made = spec::translate(&config, &bundle, id)?;
    let socket = dir.control();
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(OciError::Invalid(format!(
            "The container's socket {} would be longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes): use a shorter --root or id",
            socket.display()
        )));
    }
    ensure_root(root)?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir.0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(OciError::Exists(id.to_string()));
        }
        Err(e) => return Err(io_err(format!("create {}", dir.0.display()))(e)),
    }
    let undo = Undo(Some(dir.clone()));
    std::fs::write(
        dir.spec(),
        serde_json::to_vec(&made.spec).expect("a spec serializes"),
    )
    .map_err(io_err("write the container's spec"))?;
    dir.save(&Record {
        id: id.to_string(),
        bundle: bundle.clone(),
        rootfs: PathBuf::from(&made.spec.rootfs.source),
        created: now_rfc3339(),
        annotations: made.annotations,
        isolation: made.isolation,
        status: Status::Creating,
        monitor_pid: None,
        monitor_start: None,
        agent_pid: None,
        agent_start: None,
        container_pid: None,
        cgroup_parent: made.cgroup_parent,
        exit_code: None,
    })?;
    let mut monitor = spawn_and_wait(
        root,
        &["__monitor", id],
        || {
            dir.load()
                .is_ok_and(|r| r.status == Status::Created)
                .then_some(Ok(()))
        },
        || {
            std::fs::read_to_string(dir.monitor_error())
                .unwrap_or_else(|_| "its monitor ended".into())
        },
        format!(
            "container {id} was not created within {} s",
            CREATE_PATIENCE.as_secs()
        ),
    )?;
    if let Some(p) = pid_file
        && let Err(e) = write_pid_file(p, monitor.id())
    {
        let _ = monitor.kill();
        let _ = monitor.wait();
        return Err(e);
    }
    undo.keep();
    Ok(monitor)
}

/// Starts `arca-runtime --root ROOT ARGS...` with this process's stdio (the
/// container's, which it keeps) and waits until `ready` says it is (or why it is not),
/// the child ends first (`ended` says why), or [`CREATE_PATIENCE`] passes (`late`; the
/// child is killed). On an error the child is gone.
fn spawn_and_wait(
    root: &Path,
    args: &[&str],
    mut ready: impl FnMut() -> Option<Result<(), OciError>>,
    ended: impl FnOnce() -> String,
    late: String,
) -> Result<Child, OciError> {
    let mut child = Command::new(std::env::current_exe().map_err(io_err("find arca-runtime"))?)
        .arg("--root")
        .arg(root)
        .args(args)
        .spawn()
        .map_err(io_err(format!("start arca-runtime {}", args[0])))?;
    let deadline = Instant::now() + CREATE_PATIENCE;
    let outcome = loop {
        if let Some(r) = ready() {
            break r;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(OciError::Invalid(ended()));
        }
        if Instant::now() >= deadline {
            break Err(OciError::Invalid(late));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if outcome.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome.map(|()| child)
}

/// Removes a container's directory unless kept (a `create` that failed half way).
struct Undo(Option<Dir>);

impl Undo {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            cleanup(dir);
        }
    }
}

/// A pid file, written whole (a reader never sees it half written).
fn write_pid_file(path: &Path, pid: u32) -> Result<(), OciError> {
    // A fresh name, made exclusively (never through a link someone left there).
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{}", std::process::id(), now_nanos()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io_err(format!("write the pid file {}", path.display())))
}

/// `start`: a created container's process runs.
pub fn start(root: &Path, id: &str) -> Result<(), OciError> {
    let dir = Dir::of(root, id)?;
    let r = dir.load()?;
    match r.status {
        Status::Created => ask_monitor(&dir, "start"),
        other => Err(OciError::Invalid(format!(
            "cannot start a container in the {} state",
            other.as_str()
        ))),
    }
}

/// `state`: the OCI state document.
pub fn state(root: &Path, id: &str) -> Result<serde_json::Value, OciError> {
    let dir = Dir::of(root, id)?;
    let r = dir.load()?;
    Ok(state_json(&dir, &r))
}

fn state_json(dir: &Dir, r: &Record) -> serde_json::Value {
    let status = match r.status {
        Status::Running if dir.0.join(PAUSED).exists() => "paused",
        s => s.as_str(),
    };
    let pid = match r.status {
        Status::Stopped => 0,
        _ => r.monitor_pid.unwrap_or(0),
    };
    serde_json::json!({
        "ociVersion": "1.2.0",
        "id": r.id,
        "pid": pid,
        "status": status,
        "bundle": r.bundle,
        "rootfs": r.rootfs,
        "created": r.created,
        "annotations": r.annotations,
        "owner": "",
    })
}

/// The marker of a paused container.
const PAUSED: &str = "paused";

fn client(dir: &Dir) -> Result<AgentClient, OciError> {
    Ok(
        AgentClient::connect(&AgentAddress::Unix(dir.agent_socket()), AGENT_PATIENCE)?
            .with_patience(AGENT_PATIENCE),
    )
}

/// `kill ID SIGNAL [--all]`.
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<(), OciError> {
    let dir = Dir::of(root, id)?;
    let r = dir.load()?;
    let live = matches!(r.status, Status::Created | Status::Running);
    // Signal 0 asks whether it is there, as kill(2)'s.
    if signal.trim() == "0" {
        return if live {
            Ok(())
        } else {
            Err(OciError::Invalid(format!("container {id} is not running")))
        };
    }
    let signal = arca_runtime::container::lifecycle::parse_signal(signal)
        .map_err(|e| OciError::Invalid(e.to_string()))?;
    match r.status {
        // Its process has not run: the stop signals end it as they would have.
        Status::Created if matches!(signal, 9 | 15) => {
            ask_monitor(&dir, &format!("abort {signal}"))
        }
        Status::Created | Status::Running => {
            let sent = client(&dir).and_then(|mut c| Ok(c.signal(id, None, signal)?));
            if all {
                for pid in cgroup_pids(&r) {
                    if let Some(p) = rustix::process::Pid::from_raw(pid as i32)
                        && let Some(s) = rustix::process::Signal::from_named_raw(signal)
                    {
                        let _ = rustix::process::kill_process(p, s);
                    }
                }
            }
            sent
        }
        _ => Err(OciError::Invalid(format!("container {id} is not running"))),
    }
}

/// The container's cgroup (`linux.cgroupsPath`, else `arca-runtime`, then its id),
/// under the cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
/// host).
fn cgroup_dir(r: &Record) -> PathBuf {
    arca_jail::cgroup2_mount()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
        .join(r.cgroup_parent.as_deref().unwrap_or("arca-runtime"))
        .join(&r.id)
}

/// The host pids in the container's cgroup.
fn cgroup_pids(r: &Record) -> Vec<u32> {
    std::fs::read_to_string(cgroup_dir(r).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `delete [--force]`: the container's files and processes gone.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), OciError> {
    let dir = Dir::of(root, id)?;
    let r = dir.load()?;
    // A `create` killed before its monitor ran left a record and nothing running.
    let gone =
        r.status == Status::Stopped || (r.status == Status::Creating && r.monitor_pid.is_none());
    if !gone {
        if !force {
            return Err(OciError::Invalid(format!(
                "cannot delete container {id} that is not stopped: {}",
                r.status.as_str()
            )));
        }
        let _ = match r.status {
            Status::Created => ask_monitor(&dir, "abort 9"),
            _ => client(&dir).and_then(|mut c| Ok(c.signal(id, None, 9)?)),
        };
        if let Some(pid) = r.monitor_pid
            && !wait_gone(pid, r.monitor_start, DELETE_PATIENCE)
        {
            kill_if_same(pid, r.monitor_start);
        }
    }
    cleanup(&dir);
    Ok(())
}

/// Whatever is left of a container: its agent, its processes, its directory.
fn cleanup(dir: &Dir) {
    if let Ok(r) = dir.load() {
        if let Some(pid) = r.agent_pid {
            kill_if_same(pid, r.agent_start);
        }
        // Every process left in it, sub-cgroups included (cgroup.kill), then the
        // cgroup itself once the kernel has emptied it.
        let cgroup = cgroup_dir(&r);
        arca_jail::kill_and_remove_cgroup(&cgroup, DELETE_PATIENCE);
        // The caller's `cgroupsPath` was made for this container (runc removes it on
        // delete too); the shared default parent stays.
        if r.cgroup_parent.is_some()
            && let Some(parent) = cgroup.parent()
        {
            let _ = std::fs::remove_dir(parent);
        }
    }
    let _ = std::fs::remove_dir_all(&dir.0);
}

/// `run`: `create`, `start`, and (unless `detach`) the container's exit code.
pub fn run(
    root: &Path,
    id: &str,
    bundle: &Path,
    pid_file: Option<&Path>,
    detach: bool,
    keep: bool,
) -> Result<i32, OciError> {
    let mut monitor = create(root, id, bundle, pid_file, 0)?;
    if let Err(e) = start(root, id) {
        let _ = delete(root, id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let status = monitor
        .wait()
        .map_err(io_err("wait for the container's monitor"))?;
    let dir = Dir::of(root, id)?;
    let code = dir
        .load()
        .ok()
        .and_then(|r| r.exit_code)
        .or(status.code())
        .unwrap_or(137);
    if !keep {
        delete(root, id, true)?;
    }
    Ok(code)
}

/// `ps [--format table|json]`: the container's host pids.
pub fn ps(root: &Path, id: &str, format: &str) -> Result<String, OciError> {
    let dir = Dir::of(root, id)?;
    let r = dir.load()?;
    let pids = cgroup_pids(&r);
    match format {
        "json" => Ok(serde_json::to_string(&pids).expect("pids serialize")),
        "table" => Ok(std::iter::once("PID".to_string())
            .chain(pids.iter().map(u32::to_string))
            .collect::<Vec<_>>()
            .join("\n")),
        other => Err(OciError::Invalid(format!(
            "invalid format option {other:?}"
        ))),
    }
}

/// `list [--format table|json] [-q]`.
pub fn list(root: &Path, format: &str, quiet: bool) -> Result<String, OciError> {
    let mut rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Ok(dir) = Dir::of(root, &id)
                && let Ok(r) = dir.load()
            {
                rows.push(state_json(&dir, &r));
            }
        }
    }
    rows.sort_by_key(|r| r["id"].as_str().unwrap_or_default().to_string());
    if quiet {
        return Ok(rows
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n"));
    }
    match format {
        "json" => Ok(serde_json::to_string(&rows).expect("rows serialize")),
        "table" => {
            let mut out = String::from("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
            for r in &rows {
                out.push_str(&format!(
                    "\n{}\t{}\t{}\t{}\t{}\troot",
                    r["id"].as_str().unwrap_or_default(),
                    r["pid"],
                    r["status"].as_str().unwrap_or_default(),
                    r["bundle"].as_str().unwrap_or_default(),
                    r["created"].as_str().unwrap_or_default(),
                ));
            }
            Ok(out)
        }
        other => Err(OciError::Invalid(format!(
            "invalid format option {other:?}"
        ))),
    }
}

/// `pause` and `resume`: the container's cgroup frozen or thawed.
pub fn freeze(root: &Path, id: &str, frozen: bool) -> Result<(), OciError> {
    let dir = Dir::of(root, id)?;
    let r = dir.load()?;
    if r.status != Status::Running {
        return Err(OciError::Invalid(format!("container {id} is not running")));
    }
    client(&dir)?.freeze(id, frozen)?;
    let marker = dir.0.join(PAUSED);
    if frozen {
        std::fs::write(&marker, b"").map_err(io_err("mark the container paused"))?;
    } else {
        let _ = std::fs::remove_file(&marker);
    }
    Ok(())
}

/// `exec`: `process` runs in the container; its exit code, or 0 once started when
/// `detach` (then `pid_file` names the process that waits for it, which the caller
/// may wait on, as it would on runc's).
pub fn exec(
    root: &Path,
    id: &str,
    process: ExecProcess,
    pid_file: Option<&Path>,
    detach: bool,
) -> Result<i32, OciError> {
    let dir = Dir::of(root, id)?;
    let r = dir.load()?;
    if r.status != Status::Running {
        return Err(OciError::Invalid(format!(
            "cannot exec in a container that is {}",
            if r.status == Status::Stopped {
                "stopped"
            } else {
                "not running"
            }
        )));
    }
    if dir.0.join(PAUSED).exists() {
        return Err(OciError::Invalid(format!(
            "cannot exec in container {id}: it is paused"
        )));
    }
    let process = resolve_exec(&dir, process)?;
    if !detach {
        if let Some(p) = pid_file {
            write_pid_file(p, std::process::id())?;
        }
        return exec_in(&dir, id, process, None);
    }
    // The process that waits for it keeps this one's stdio, as the monitor does.
    let n = format!("exec-{}-{}", std::process::id(), now_nanos());
    let spec_path = dir.0.join(format!("{n}.json"));
    let ready = dir.0.join(format!("{n}.ready"));
    std::fs::write(
        &spec_path,
        serde_json::to_vec(&process).expect("a process serializes"),
    )
    .map_err(io_err("write the exec's process"))?;
    let outcome = spawn_and_wait(
        root,
        &["__exec", id, &n],
        || {
            let text = std::fs::read_to_string(&ready)
                .ok()
                .filter(|t| !t.is_empty())?;
            Some(if text == "ok" {
                Ok(())
            } else {
                Err(OciError::Invalid(text))
            })
        },
        || std::fs::read_to_string(&ready).unwrap_or_else(|_| "the exec ended".into()),
        "the exec did not start".into(),
    );
    let _ = std::fs::remove_file(&ready);
    let child = outcome?;
    if let Some(p) = pid_file {
        write_pid_file(p, child.id())?;
    }
    Ok(0)
}

/// What `exec` runs.
#[derive(Debug)]
pub enum ExecProcess {
    /// `--process FILE`: an OCI process, whole.
    Oci(Box<oci_spec::runtime::Process>),
    /// A command and runc's flags, over the container's own process: its environment
    /// (with `env` over it), working directory, user and groups unless given.
    Command {
        args: Vec<String>,
        env: Vec<String>,
        cwd: Option<String>,
        user: Option<String>,
        additional_gids: Vec<u32>,
        no_new_privs: bool,
    },
}

/// The agent's process for `process`. Every exec runs under the container's
/// confinement: one that asks for other capabilities, or for `no_new_privs` the
/// container lacks, is refused rather than run otherwise.
fn resolve_exec(dir: &Dir, process: ExecProcess) -> Result<ProcessSpec, OciError> {
    let text = std::fs::read(dir.spec()).map_err(io_err("read the container's spec"))?;
    let container: arca_protocol::ContainerSpec =
        serde_json::from_slice(&text).map_err(|e| OciError::Invalid(format!("spec.json: {e}")))?;
    let security = &container.security;
    let nnp_refused = || {
        OciError::Invalid(
            "exec with no_new_privs in a container without it is not supported by arca-runtime (every exec gets the container's confinement)".into(),
        )
    };
    match process {
        ExecProcess::Oci(p) => {
            if p.capabilities().is_some() && spec::capabilities(&p)? != security.capabilities {
                return Err(OciError::Invalid(
                    "exec with capabilities other than the container's is not supported by arca-runtime".into(),
                ));
            }
            if p.no_new_privileges() == Some(true) && !security.no_new_privileges {
                return Err(nnp_refused());
            }
            Ok(spec::process_spec(&p)?)
        }
        ExecProcess::Command {
            args,
            env,
            cwd,
            user,
            additional_gids,
            no_new_privs,
        } => {
            if no_new_privs && !security.no_new_privileges {
                return Err(nnp_refused());
            }
            let base = container.process;
            let key = |e: &str| e.split('=').next().unwrap_or_default().to_string();
            let mut merged: Vec<String> = base
                .env
                .into_iter()
                .filter(|e| !env.iter().any(|x| key(x) == key(e)))
                .collect();
            merged.extend(env);
            Ok(ProcessSpec {
                args,
                env: merged,
                cwd: cwd.or(base.cwd),
                user: user.or(base.user),
                additional_groups: if additional_gids.is_empty() {
                    base.additional_groups
                } else {
                    additional_gids.iter().map(u32::to_string).collect()
                },
                stdin: true,
                rlimits: base.rlimits,
                ..ProcessSpec::default()
            })
        }
    }
}

/// Entry of `arca-runtime __exec ID N`: runs the process written to `N.json`, says
/// `ok` (or why not) in `N.ready` once it started, and exits with its code.
pub fn exec_monitor(root: &Path, id: &str, n: &str) -> i32 {
    let Ok(dir) = Dir::of(root, id) else {
        return 125;
    };
    // Named by `exec` itself: `exec-PID-NANOS`, nothing that leaves the directory.
    if !n.starts_with("exec-") || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return 125;
    }
    let ready = dir.0.join(format!("{n}.ready"));
    let spec_path = dir.0.join(format!("{n}.json"));
    let process = std::fs::read(&spec_path)
        .ok()
        .and_then(|t| serde_json::from_slice::<ProcessSpec>(&t).ok());
    let _ = std::fs::remove_file(&spec_path);
    let Some(process) = process else {
        let _ = std::fs::write(&ready, "the exec's process could not be read");
        return 125;
    };
    match exec_in(&dir, id, process, Some(&ready)) {
        Ok(code) => code,
        Err(e) => {
            let _ = std::fs::write(&ready, arca_runtime::error_chain(&e));
            125
        }
    }
}

/// Runs `process` in the container, its stdio this process's; `ready` gets `ok` once
/// it started.
fn exec_in(
    dir: &Dir,
    id: &str,
    process: ProcessSpec,
    ready: Option<&Path>,
) -> Result<i32, OciError> {
    let mut client = client(dir)?;
    let address = client.address().clone();
    let exec_id = format!("exec-{}-{}", std::process::id(), now_nanos());
    client.exec(id, &exec_id, process)?;
    let streams = Attached::open(&address, id, Some(&exec_id))?;
    if let Some(r) = ready {
        std::fs::write(r, "ok").map_err(io_err("report the exec started"))?;
    }
    let drain = streams.copy(io::stdout(), io::stderr(), io::stdin());
    let status = client.wait(id, Some(&exec_id))?;
    // Output may go on while a child of the process holds it open: not for long.
    drain.wait();
    Ok(status.code)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// `features`: what this runtime does, in the OCI features document's form.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec",
            "private", "rprivate", "relatime", "strictatime", "mode", "size"],
        "linux": {
            "namespaces": ["pid", "mount", "ipc", "uts", "network", "cgroup"],
            "capabilities": arca_protocol::CAPABILITY_NAMES.to_vec(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
                    "SCMP_ACT_LOG", "SCMP_ACT_TRACE"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                    "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": ["SCMP_ARCH_X86_64"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            spec::ISOLATION_ANNOTATION: "process",
        },
    })
}

/// What `container` exposes to the binary.
pub use container::DEFAULT_ROOT;
