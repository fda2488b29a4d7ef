//! `arca run`: one container, in a microVM (`vm`) or on the host (`process`), with the
//! same agent and the same protocol, in the foreground (this process is its monitor)
//! or detached under an `arca __monitor` of its own. The monitor runs the recipe in
//! [`supervise`]: publish its ports, launch its [`Sandbox`], create and start the
//! container, copy its output to the logs (and this terminal, or `arca attach`
//! clients), check its health while it runs, wait for it, and tear down.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_agent_client::{AgentAddress, AgentClient, StdioConnection};
use arca_protocol::StdioStream;

use crate::attach::{self, Hub};
use crate::container::health;
use crate::container::lifecycle::process_leftovers;
use crate::container::names;
use crate::container::pids::start_time;
use crate::container::record::{MANUAL_STOP, NAME_FILE, PAUSED, containers_dir};
use crate::container::{ContainerRecord, Isolation, RunOptions, Status, config};
use crate::error::{RunError, io_err};
use crate::image::store::{Store, StoreError};
use crate::logs::RotatingLog;
use crate::network;
use crate::ports::{self, Forwarders};
use crate::sandbox::Sandbox;
use crate::terminal::{InputEnd, Session, copy_to};
use crate::volume;
use crate::{error_chain, now};

/// Runs a container: in the foreground (returns its exit code) or, with `detach`,
/// under a background monitor (returns 0 once it runs and prints its id).
pub fn run(state: &Path, opts: &RunOptions) -> Result<i32, RunError> {
    let (dir, record) = prepare(state, opts, Status::Starting)?;
    let id = record.key().to_string();
    // As prepared and saved (ports dropped for the host's network, the image's stop
    // signal and labels).
    let opts = &RunOptions::load(&dir).inspect_err(|_| destroy(state, &dir))?;
    if opts.detach {
        let monitor = spawn_monitor(state, &dir, &id).inspect_err(|_| destroy(state, &dir))?;
        wait_running(state, &dir, monitor, OnFailure::Discard)?;
        println!("{}", record.id);
        return Ok(0);
    }
    let result = supervise(state, opts, &dir, record, Output::Terminal, None, None);
    if result.is_err() || opts.rm {
        destroy(state, &dir);
    } else if let Ok(code) = result
        && opts.restart.restarts(code, 0)
        && !dir.join(MANUAL_STOP).exists()
        && let Ok(mut r) = ContainerRecord::load(&dir)
    {
        // The policy outlives this foreground run: a monitor of its own takes over.
        r.status = Status::Restarting;
        r.save(&dir)?;
        spawn_monitor(state, &dir, &id)?;
    }
    result
}

/// `arca create`: the container, its record, options and volumes, without running
/// anything (a microVM boots at `start`); returns its ID.
pub fn create(state: &Path, opts: &RunOptions) -> Result<String, RunError> {
    let (_, record) = prepare(state, opts, Status::Created)?;
    Ok(record.id)
}

/// `arca start [-a]`: runs a created or exited container again under a new monitor,
/// with the same options, writable layer, volumes and logs (appended). Without
/// `attach` it returns 0 once the container runs; with it, the container waits for
/// this process to attach before it starts, and its exit code is returned. A
/// container that already runs is left alone (`attach` attaches to it).
pub fn start(state: &Path, name: &str, attach: bool) -> Result<i32, RunError> {
    let (dir, _) = crate::container::record::find(state, name)?;
    // One start (or restart) of a container at a time.
    let _lock = crate::state::lock_file(
        &dir.join("lifecycle.lock"),
        rustix::fs::FlockOperation::LockExclusive,
    )
    .map_err(|(what, e)| io_err(format!("{what} the container's lifecycle lock"))(e))?;
    let record = ContainerRecord::observe(&dir)?;
    let id = record.key().to_string();
    match record.status {
        Status::Running | Status::Starting if attach => return attach::attach(state, &id),
        Status::Running | Status::Starting | Status::Restarting => return Ok(0),
        Status::Created | Status::Exited => {}
    }
    let opts = RunOptions::load(&dir)?;
    // A sandbox an `arca cp` killed mid-copy left must not share the container's
    // writable layer with the new one (the lock above waits for a copy under way).
    record.end_stale_sandbox();
    clear_last_run(&dir);
    let _ = std::fs::remove_file(dir.join(MANUAL_STOP));
    let mut record = record.for_another_run();
    record.restart_count = 0;
    record.save(&dir)?;
    if attach {
        std::fs::write(dir.join(ATTACH_FIRST), b"")
            .map_err(io_err("mark the container for attaching"))?;
    }
    let monitor = spawn_monitor(state, &dir, &id)?;
    if attach {
        return attach_first(&dir, &opts, &id, monitor);
    }
    wait_running(state, &dir, monitor, OnFailure::Keep)?;
    Ok(0)
}

/// `arca restart -t N`: stop (SIGTERM, SIGKILL after `grace`) if it runs, then start.
pub fn restart(state: &Path, name: &str, grace: Option<Duration>) -> Result<(), RunError> {
    crate::container::lifecycle::stop(state, name, grace)?;
    start(state, name, false)?;
    if let Ok((_, rec)) = crate::container::record::find(state, name) {
        rec.event(state, "restart", &[]);
    }
    Ok(())
}

/// Removes what the last run of the container in `dir` left: its sockets (a VMM binds
/// its vsock socket anew).
fn clear_last_run(dir: &Path) {
    crate::sandbox::clear_sockets(dir);
    for stale in ["attach.sock", crate::container::lifecycle::PAUSED] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
}

/// The first wait of a restart policy; it doubles after each restart, up to
/// [`RESTART_BACKOFF_MAX`], and starts over after a run of [`RESTART_RESET_AFTER`].
const RESTART_BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest wait between restarts.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(10);

/// Sleeps `wait`, unless the user stops the container or removes it meanwhile; whether
/// the full wait passed.
fn sleep_unless_stopped(dir: &Path, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if dir.join(MANUAL_STOP).exists() || !dir.join("state.json").exists() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(wait));
    }
    !dir.join(MANUAL_STOP).exists() && dir.join("state.json").exists()
}

/// A file in a container's directory that tells its monitor to wait for an attach
/// client before it starts the container (`start -a`).
const ATTACH_FIRST: &str = "attach-first";

/// How long a monitor asked to wait for an attach client waits.
const ATTACH_FIRST_WAIT: Duration = Duration::from_secs(30);

/// `start -a`: attaches as soon as the new monitor serves, which lets the container
/// start; returns its exit code.
fn attach_first(
    dir: &Path,
    opts: &RunOptions,
    id: &str,
    mut monitor: std::process::Child,
) -> Result<i32, RunError> {
    let deadline = Instant::now() + ATTACH_FIRST_WAIT;
    loop {
        if let Ok(sock) = UnixStream::connect(dir.join("attach.sock")) {
            let code = attach::attach_to(dir, opts, id, sock)?;
            let _ = monitor.wait();
            if let Ok(r) = ContainerRecord::load(dir)
                && let Some(e) = r.error.filter(|_| r.status == Status::Exited)
            {
                return Err(RunError::Failed {
                    code: r.exit_code.unwrap_or(125),
                    message: e,
                });
            }
            return Ok(code);
        }
        if let Ok(Some(_)) = monitor.try_wait() {
            let r = ContainerRecord::load(dir)?;
            return Err(RunError::Failed {
                code: r.exit_code.unwrap_or(125),
                message: r
                    .error
                    .unwrap_or_else(|| "The container monitor ended early".into()),
            });
        }
        if Instant::now() > deadline {
            let _ = monitor.kill();
            return Err(RunError::Invalid(format!(
                "Container {id} did not get ready to attach within {} s",
                ATTACH_FIRST_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything `run` and `create` do before anything runs: the image (pulled if
/// missing), the network's existence, the container's directory and record (in
/// `status`), its volumes, and its options (which `start` and the monitor read).
fn prepare(
    state: &Path,
    opts: &RunOptions,
    status: Status,
) -> Result<(std::path::PathBuf, ContainerRecord), RunError> {
    // With the host's network the container's ports are the host's: as Docker, `-p`
    // is discarded, with a warning.
    let without_ports;
    let opts = if opts.network.as_deref() == Some("host") && !opts.publish.is_empty() {
        eprintln!("WARNING: Published ports are discarded when using host network mode");
        without_ports = RunOptions {
            publish: Vec::new(),
            ..opts.clone()
        };
        &without_ports
    } else {
        opts
    };
    if let Some(path) = &opts.cidfile
        && path.exists()
    {
        return Err(RunError::Invalid(format!(
            "Container ID file found, make sure the other container isn't running or delete {}",
            path.display()
        )));
    }
    let store = Store::open(state)?;
    let found = match opts.pull.as_deref() {
        Some("always") => {
            crate::image::pull::pull(&store, &opts.image, false, false)?;
            store.resolve(&opts.image)
        }
        _ => store.resolve(&opts.image),
    };
    let image = match found {
        Err(StoreError::NotFound(_)) if opts.pull.as_deref() == Some("never") => {
            return Err(RunError::Invalid(format!("No such image: {}", opts.image)));
        }
        Err(StoreError::NotFound(_)) => {
            // As Docker: a missing image is pulled first.
            eprintln!("Unable to find image '{}' locally", opts.image);
            let (name, _) = crate::image::pull::pull(&store, &opts.image, false, false)?;
            store.resolve(&name)?
        }
        other => other?,
    };
    let args = config::command_line(&image, opts)?;
    // `-P`: the image's exposed ports and `--expose`'s, each on a free host port (with
    // the host's network there is nothing to publish, as for `-p`); worked out before
    // anything is made.
    let mut published_all = Vec::new();
    if opts.publish_all && opts.network.as_deref() != Some("host") {
        let mut exposed: Vec<String> = image
            .config
            .config
            .exposed_ports
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        for e in &opts.expose {
            let keys = ports::expose_keys(e, Some(1024))
                .map_err(|why| RunError::Invalid(format!("Invalid --expose {e:?}: {why}")))?;
            exposed.extend(keys);
        }
        published_all = ports::publish_all(&exposed, &opts.publish).map_err(RunError::Invalid)?;
    }
    // The network must exist before anything is made.
    match (opts.network.as_deref(), opts.isolation) {
        (Some("host"), Isolation::Vm) => {
            return Err(RunError::Invalid(
                "--network host is not possible with --isolation=vm: a microVM has its own network stack (use -p to publish ports)".into(),
            ));
        }
        (Some("none" | "host"), _) => {}
        (name, _) => {
            network::get(state, name.unwrap_or(network::DEFAULT_NETWORK))?;
        }
    }
    if let Some(n) = &opts.name {
        names::validate(n)?;
    }
    std::fs::create_dir_all(containers_dir(state))
        .map_err(io_err("create the container directory"))?;
    // A new ID whose short form no other container has: its directory's creation
    // reserves it.
    let (id, dir) = loop {
        let id = names::new_id();
        let dir = containers_dir(state).join(names::short(&id));
        match std::fs::create_dir(&dir) {
            Ok(()) => break (id, dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("create {}", dir.display()))(e)),
        }
    };
    let key = names::short(&id).to_string();
    let name = match opts
        .name
        .as_deref()
        .map(|n| n.strip_prefix('/').unwrap_or(n))
    {
        Some(n) => names::reserve(state, n, &key).map(|()| n.to_string()),
        None => names::reserve_generated(state, &key),
    }
    .and_then(|name| {
        std::fs::write(dir.join(NAME_FILE), &name)
            .map(|()| name)
            .map_err(|source| names::NameError::Io {
                action: format!("write {}", dir.join(NAME_FILE).display()),
                source,
            })
    })
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    let cfg = &image.config.config;
    let mut labels = opts.labels.clone();
    for (k, v) in cfg.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut record = ContainerRecord {
        id: id.clone(),
        name,
        paused: false,
        health: None,
        image: opts.image.clone(),
        image_id: image.id.clone(),
        command: args.clone(),
        isolation: opts.isolation,
        created: created.as_secs(),
        created_nanos: created.subsec_nanos(),
        status,
        exit_code: None,
        error: None,
        monitor_pid: std::process::id(),
        monitor_start: start_time(std::process::id()),
        sandbox_pid: None,
        sandbox_start: None,
        agent: None,
        container_pid: None,
        rm: opts.rm,
        network: None,
        ip: None,
        ports: Vec::new(),
        mounts: Vec::new(),
        restart_count: 0,
        started_at: None,
        finished_at: None,
        labels: labels.clone(),
    };
    // Its volumes are made and named in its record under the volumes' lock: a
    // `volume rm` sees them in use from then on.
    let claimed = volume::lock(state).and_then(|lock| {
        record.mounts = volume::resolve(state, &lock, &image, &opts.mounts, &opts.volumes_from)?;
        record
            .save(&dir)
            .map_err(|e| volume::VolumeError::Mount(e.to_string()))
    });
    if let Err(e) = claimed {
        discard(state, &dir);
        return Err(e.into());
    }
    let mut saved = opts.clone();
    saved.publish.extend(published_all);
    if saved.stop_signal.is_none() {
        saved.stop_signal = cfg.stop_signal.clone().filter(|s| !s.is_empty());
    }
    saved.labels = labels;
    saved.save(&dir).inspect_err(|_| discard(state, &dir))?;
    if let Some(path) = &opts.cidfile {
        std::fs::write(path, &id)
            .map_err(io_err(format!(
                "write the container ID file {}",
                path.display()
            )))
            .inspect_err(|_| discard(state, &dir))?;
    }
    record.event(state, "create", &[]);
    Ok((dir, record))
}

/// A build's interruption: SIGINT, SIGTERM and SIGHUP sent to arca (one handler for
/// the whole build, registered before anything is made) mark it interrupted and kill
/// the step container that runs, if any; the build stops at its next check.
#[derive(Debug, Default)]
pub struct Interrupt {
    flag: AtomicBool,
    step: std::sync::Mutex<Option<(AgentAddress, String)>>,
}

impl Interrupt {
    /// Registers the handler; `None` if signals cannot be handled here.
    pub fn install() -> Option<Arc<Self>> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).ok()?;
        let me = Arc::new(Interrupt::default());
        let seen = me.clone();
        std::thread::Builder::new()
            .name("interrupt".into())
            .spawn(move || {
                for _ in signals.forever() {
                    seen.flag.store(true, Ordering::SeqCst);
                    seen.kill();
                }
            })
            .ok()?;
        Some(me)
    }

    /// Whether the build was interrupted.
    pub fn interrupted(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Step container `id` runs (killed at once if the build was interrupted already).
    fn running(&self, address: &AgentAddress, id: &str) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((address.clone(), id.to_string()));
        if self.interrupted() {
            self.kill();
        }
    }

    /// The step container ended.
    fn done(&self) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn kill(&self) {
        let step = self.step.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((address, id)) = step
            && let Ok(mut c) = AgentClient::connect(&address, Duration::from_secs(5))
        {
            let _ = c.signal(&id, None, signal_hook::consts::SIGKILL);
        }
    }
}

/// A build step's output: the writer for its stdout (`false`) or stderr (`true`).
pub type StepOutput = Arc<dyn Fn(bool) -> Box<dyn Write + Send> + Send + Sync>;

/// What a build step does with its container once it exited 0, before it is removed
/// (`arca build` takes its layer): given the agent's address and the container's key.
pub type StepDone<'a> = &'a mut dyn FnMut(&AgentAddress, &str) -> Result<(), RunError>;

/// Runs one container of a build step (`arca build`'s `RUN`) in the foreground: its
/// output to `output`, its exit code returned. Once it exited 0, `done` is given its
/// agent while the container is still in its sandbox; then the container goes, as
/// with `--rm` (and on any failure).
pub fn run_step(
    state: &Path,
    opts: &RunOptions,
    output: StepOutput,
    done: StepDone<'_>,
    interrupt: &Interrupt,
) -> Result<i32, RunError> {
    let (dir, record) = prepare(state, opts, Status::Starting)?;
    let opts = &RunOptions::load(&dir).inspect_err(|_| destroy(state, &dir))?;
    let result = supervise(
        state,
        opts,
        &dir,
        record,
        Output::Step(output),
        Some(done),
        Some(interrupt),
    );
    destroy(state, &dir);
    result
}

/// Removes a container's directory and the anonymous volumes made for it (a failed
/// run, or one with `--rm`).
fn discard(state: &Path, dir: &Path) {
    let rec = ContainerRecord::load(dir).ok();
    let anonymous = rec
        .as_ref()
        .map(|r| volume::anonymous_of(&r.mounts))
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    if let Some(r) = rec {
        names::release(state, &r.name, r.key());
    }
    volume::remove_anonymous(state, &anonymous);
}

/// [`discard`] for a container made (its `create` event recorded): Docker's `destroy`
/// event too.
fn destroy(state: &Path, dir: &Path) {
    if let Ok(rec) = ContainerRecord::load(dir) {
        discard(state, dir);
        rec.event(state, "destroy", &[]);
    } else {
        discard(state, dir);
    }
}

/// What a start that fails leaves: nothing (`run -d`), or the container, exited with
/// the reason (`start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFailure {
    Discard,
    Keep,
}

/// Starts `arca __monitor` for the container in `dir`.
fn spawn_monitor(state: &Path, dir: &Path, id: &str) -> Result<std::process::Child, RunError> {
    let exe = std::env::current_exe().map_err(io_err("locate arca"))?;
    Command::new(exe)
        .arg("--state-dir")
        .arg(state)
        .args(["__monitor", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("monitor.log"))
                .map_err(io_err("create the monitor log"))?,
        )
        // Out of the terminal's process group: a Ctrl-C there does not reach it.
        .process_group(0)
        .spawn()
        .map_err(io_err("start the container monitor"))
}

/// Waits until the container `monitor` runs is running (or ran and ended already).
fn wait_running(
    state: &Path,
    dir: &Path,
    mut monitor: std::process::Child,
    on_failure: OnFailure,
) -> Result<(), RunError> {
    let fail = |dir: &Path, e: RunError| {
        match on_failure {
            OnFailure::Discard => destroy(state, dir),
            OnFailure::Keep => {
                // The record says why, for `ps -a`.
                if let Ok(mut r) = ContainerRecord::load(dir)
                    && r.status != Status::Exited
                {
                    r.status = Status::Exited;
                    r.exit_code.get_or_insert(125);
                    r.error.get_or_insert_with(|| e.to_string());
                    let _ = r.save(dir);
                }
            }
        }
        Err(e)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rec = ContainerRecord::load(dir).ok();
        match rec.as_ref().map(|r| r.status) {
            Some(Status::Running) | Some(Status::Exited)
                if rec.as_ref().is_some_and(|r| r.error.is_none()) =>
            {
                return Ok(());
            }
            Some(Status::Exited) => {
                let (code, message) = rec
                    .map(|r| (r.exit_code.unwrap_or(125), r.error.unwrap_or_default()))
                    .unwrap_or((125, String::new()));
                let _ = monitor.wait();
                let code = if matches!(code, 126 | 127) { code } else { 125 };
                return fail(dir, RunError::Failed { code, message });
            }
            _ => {}
        }
        if let Ok(Some(status)) = monitor.try_wait() {
            if status.success() {
                // It ran and ended already (and, with --rm, is gone).
                return Ok(());
            }
            return fail(
                dir,
                RunError::Invalid(format!("The container monitor ended early ({status})")),
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = monitor.kill();
            return fail(
                dir,
                RunError::Invalid("The container did not start within 120 s".into()),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Entry of `arca __monitor ID`: runs a detached container to its end, and again and
/// again as its restart policy says (Docker's backoff: 100 ms doubling to a minute,
/// starting over after a run of 10 s), until the user stops it.
pub fn monitor(state: &Path, id: &str) -> Result<i32, RunError> {
    let dir = containers_dir(state).join(id);
    let opts = RunOptions::load(&dir)?;
    let mut record = ContainerRecord::load(&dir)?;
    let mut backoff = RESTART_BACKOFF_START;
    if record.status == Status::Restarting {
        // A foreground run handed its policy over.
        record.monitor_pid = std::process::id();
        record.monitor_start = start_time(std::process::id());
        record.restart_count += 1;
        record.save(&dir)?;
        if !sleep_unless_stopped(&dir, backoff) {
            return stopped_while_restarting(&dir, 0);
        }
        clear_last_run(&dir);
        let count = record.restart_count;
        record = record.for_another_run();
        record.restart_count = count;
    }
    record.monitor_pid = std::process::id();
    record.monitor_start = start_time(std::process::id());
    record.save(&dir)?;
    loop {
        let began = Instant::now();
        let result = supervise(state, &opts, &dir, record, Output::Logs, None, None);
        if let Err(e) = &result
            && let Ok(mut r) = ContainerRecord::load(&dir)
        {
            r.status = Status::Exited;
            r.exit_code.get_or_insert(e.exit_code());
            r.error.get_or_insert_with(|| error_chain(e));
            let _ = r.save(&dir);
        }
        let code = match &result {
            Ok(code) => *code,
            Err(e) => e.exit_code(),
        };
        let Ok(mut r) = ContainerRecord::load(&dir) else {
            return result;
        };
        if opts.rm
            || dir.join(MANUAL_STOP).exists()
            || !opts.restart.restarts(code, r.restart_count)
        {
            if opts.rm && r.error.is_none() {
                destroy(state, &dir);
            }
            return result;
        }
        if began.elapsed() >= RESTART_RESET_AFTER {
            backoff = RESTART_BACKOFF_START;
        }
        r.status = Status::Restarting;
        r.restart_count += 1;
        r.save(&dir)?;
        if !sleep_unless_stopped(&dir, backoff) {
            return stopped_while_restarting(&dir, code);
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        clear_last_run(&dir);
        let count = r.restart_count;
        record = r.for_another_run();
        record.restart_count = count;
        record.save(&dir)?;
        // A stop that saw `restarting` just before: it waits for this monitor to end.
        if dir.join(MANUAL_STOP).exists() {
            return stopped_while_restarting(&dir, code);
        }
    }
}

/// The user stopped (or removed) a container while its monitor waited to restart it.
fn stopped_while_restarting(dir: &Path, code: i32) -> Result<i32, RunError> {
    if let Ok(mut r) = ContainerRecord::load(dir) {
        r.status = Status::Exited;
        let _ = r.save(dir);
    }
    Ok(code)
}

/// How long the output copies may sit idle after the container exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);

/// Where a container's output goes.
#[derive(Clone)]
enum Output {
    /// This terminal, and the logs.
    Terminal,
    /// The logs (and `arca attach` clients) only.
    Logs,
    /// A build step's writers, and the logs.
    Step(StepOutput),
}

impl Output {
    fn terminal(&self) -> bool {
        matches!(self, Output::Terminal)
    }

    /// Where stream `stderr` (else stdout) is shown besides the logs, if anywhere.
    fn sink(&self, opts: &RunOptions, stderr: bool) -> Option<Box<dyn Write + Send>> {
        match self {
            Output::Terminal if stderr && opts.shows("stderr") => Some(Box::new(io::stderr())),
            Output::Terminal if !stderr && opts.shows("stdout") => Some(Box::new(io::stdout())),
            Output::Step(f) => Some(f(stderr)),
            _ => None,
        }
    }
}

/// Runs the container of `record` to its end, keeping its record up to date: the boot
/// recipe of a container, from its ports to its sandbox's teardown.
fn supervise(
    state: &Path,
    opts: &RunOptions,
    dir: &Path,
    mut record: ContainerRecord,
    output: Output,
    done: Option<StepDone<'_>>,
    interrupt: Option<&Interrupt>,
) -> Result<i32, RunError> {
    let store = Store::open(state)?;
    let image = store.resolve(&record.image_id)?;
    let id = record.key().to_string();
    let id = id.as_str();
    // Host ports first: one in use fails the run before anything starts.
    let listeners = ports::bind(&opts.publish).map_err(RunError::Invalid)?;
    let mut sandbox = Sandbox::launch(state, &store, &image, opts, &record.mounts, dir, id)?;
    let (pid, started) = sandbox.pid();
    (record.sandbox_pid, record.sandbox_start) = (Some(pid), started);
    record.save(dir)?;
    let mut client = sandbox.connect()?;
    let process = opts.process(&image, record.command.clone());
    let spec = sandbox.container_spec(dir, id, &image, opts, process);
    let container_pid = client.create(spec)?;
    if opts.isolation == Isolation::Process {
        record.container_pid = Some(container_pid);
    }
    sandbox.link_container(&mut client, id, container_pid)?;
    let address = sandbox.address().clone();
    let terminal = output.terminal();
    let probe = opts.health(&image).and_then(|config| {
        let shell = image.config.config.shell.clone().unwrap_or_default();
        let mut process = opts.process(&image, config.command(&shell)?);
        (process.stdin, process.terminal) = (false, false);
        Some((config, process))
    });
    let session = Session::start(terminal && opts.tty && opts.interactive);
    let streams = Streams::open(&address, id, opts)?;
    if terminal && opts.tty {
        session.follow_size(&address, id, None);
    }
    // Before the record says running: `arca attach` may come at once.
    let copies = Copies::start(streams, dir, opts, output, &session)?;
    // `start -a` attaches before the container starts, so it misses nothing.
    if std::fs::remove_file(dir.join(ATTACH_FIRST)).is_ok()
        && let Some(hub) = &copies.hub
    {
        hub.wait_for_client(ATTACH_FIRST_WAIT);
    }
    if let Err(e) = client.start(id) {
        sandbox.abort(&mut client, id);
        copies.close_clients();
        return Err(e.into());
    }
    // A new run's health starts over before anyone reads the record as running.
    if probe.is_some() {
        let _ = health::reset(dir);
    }
    record.status = Status::Running;
    (record.started_at, record.finished_at) = (Some(now()), None);
    record.agent = Some(address.clone().into());
    record.network = Some(sandbox.network().name());
    record.ip = sandbox.network().address();
    record.ports = listeners.mappings();
    // Recorded before the record says so: a CLI waiting on the record logs after it.
    record.event(state, "start", &[]);
    record.save(dir)?;
    let forwarders = Forwarders::start(listeners, &address, id);
    // Its health check, run through its agent while it runs.
    let checker = probe.and_then(|(config, process)| {
        let (who, state, paused) = (record.clone(), state.to_path_buf(), dir.join(PAUSED));
        let watched = health::Watched {
            dir: dir.to_path_buf(),
            address: address.clone(),
            container: id.to_string(),
            process,
            paused: Box::new(move || paused.exists()),
            changed: Box::new(move |status| {
                who.event(&state, &format!("health_status: {}", status.as_str()), &[]);
            }),
        };
        health::Checker::start(config, watched)
            .map_err(|e| eprintln!("arca: cannot start the health check: {e}"))
            .ok()
    });

    // As `docker run` (sig-proxy): signals sent to arca go to the container.
    if terminal && !opts.no_sig_proxy {
        forward_signals(&address, id);
    }
    // A build step is ended by the build's interruption (a Ctrl-C kills it).
    if let Some(i) = interrupt {
        i.running(&address, id);
    }
    let waited = client.wait(id, None);
    if let Some(i) = interrupt {
        i.done();
    }
    drop(checker);
    drop(forwarders);
    let status = match waited {
        Ok(s) => s,
        Err(e) => {
            // The sandbox died under the container (a VMM crash, a killed agent) or
            // stopped answering (a wedged VMM or guest): it goes, and the wait ends.
            record.status = Status::Exited;
            record.finished_at = Some(now());
            record.exit_code = Some(137);
            record.error = Some(sandbox.lost(&e));
            record.event(state, "die", &[("exitCode", "137")]);
            // A host agent's containers outlive it: end what is left of this one.
            if opts.isolation == Isolation::Process {
                process_leftovers(&record);
            }
            // Its address given back before the record says exited (see below).
            drop(sandbox);
            record.save(dir)?;
            copies.close_clients();
            return Err(e.into());
        }
    };
    copies.drain();
    record.status = Status::Exited;
    record.finished_at = Some(now());
    record.exit_code = Some(status.code);
    if status.oom_killed {
        record.event(state, "oom", &[]);
    }
    record.event(state, "die", &[("exitCode", &status.code.to_string())]);
    if let Some(done) = done
        && status.code == 0
        && let Err(e) = done(&address, id)
    {
        sandbox.finish(client, id, true);
        record.save(dir)?;
        return Err(e);
    }
    // The record says exited once the sandbox is gone and its address given back, as
    // `docker stop` returns: a container started next may take the address at once.
    sandbox.finish(client, id, opts.rm);
    record.save(dir)?;
    drop(session);
    if status.oom_killed {
        eprintln!("arca: the container was killed for exceeding its memory limit");
    }
    Ok(status.code)
}

/// The container's stdio as attached.
enum Streams {
    /// Separate pipes.
    Pipes {
        out: StdioConnection,
        err: StdioConnection,
        input: Option<StdioConnection>,
    },
    /// One terminal.
    Tty(StdioConnection),
}

impl Streams {
    /// Attaches to the container's stdio before it starts, so nothing it writes is lost.
    fn open(address: &AgentAddress, id: &str, opts: &RunOptions) -> Result<Self, RunError> {
        if opts.tty {
            return Ok(Streams::Tty(address.attach(id, None, StdioStream::Tty)?));
        }
        Ok(Streams::Pipes {
            out: address.attach(id, None, StdioStream::Stdout)?,
            err: address.attach(id, None, StdioStream::Stderr)?,
            input: if opts.interactive {
                Some(address.attach(id, None, StdioStream::Stdin)?)
            } else {
                None
            },
        })
    }
}

/// The container's output on its way to the logs and to this terminal or the
/// `arca attach` clients a detached container serves (which also get its input).
struct Copies {
    threads: Vec<JoinHandle<()>>,
    /// The output sockets, to end the copies if the sandbox never closes them.
    drains: Vec<UnixStream>,
    progress: Arc<Progress>,
    hub: Option<Arc<Hub>>,
}

impl Copies {
    fn start(
        streams: Streams,
        dir: &Path,
        opts: &RunOptions,
        output: Output,
        session: &Session,
    ) -> Result<Self, RunError> {
        let terminal = output.terminal();
        let log = |name: &str| {
            RotatingLog::create(&dir.join(name), opts.log)
                .map_err(io_err(format!("create the {name}")))
        };
        let (out_log, err_log) = (log("stdout.log")?, log("stderr.log")?);
        let serve = |input| Hub::serve(dir, input).map_err(io_err("serve attach"));
        let progress = Arc::new(Progress::default());
        let mut copies = Copies {
            threads: Vec::new(),
            drains: Vec::new(),
            progress: progress.clone(),
            hub: None,
        };
        match streams {
            Streams::Pipes { out, err, input } => {
                copies.drains.extend(
                    [out.socket_clone(), err.socket_clone()]
                        .into_iter()
                        .flatten(),
                );
                match input {
                    Some(input) if terminal => session.pump_input(input, InputEnd::Close, false),
                    input => {
                        let input = input.map_or(attach::Input::None, |i| {
                            attach::Input::Stdin(i.into_parts().1)
                        });
                        copies.hub = Some(serve(input)?);
                    }
                }
                let (h1, h2) = (copies.hub.clone(), copies.hub.clone());
                let p2 = progress.clone();
                // `-a`: the streams not attached still reach the logs.
                let (show_out, show_err) = (output.sink(opts, false), output.sink(opts, true));
                copies.threads.push(std::thread::spawn(move || {
                    copy_to(out, Tee(out_log, show_out, h1, progress))
                }));
                copies.threads.push(std::thread::spawn(move || {
                    copy_to(err, Tee(err_log, show_err, h2, p2))
                }));
            }
            Streams::Tty(tty) => {
                let (pending, sock) = tty.into_parts();
                copies.drains.extend(sock.try_clone());
                if !terminal {
                    let input = opts.interactive.then(|| sock.try_clone().ok()).flatten();
                    copies.hub = Some(serve(attach::Input::Tty(input))?);
                } else if opts.interactive
                    && let Ok(to_tty) = sock.try_clone()
                {
                    session.pump_input(to_tty, InputEnd::Keep, false);
                }
                drop(err_log);
                let reader = io::Cursor::new(pending).chain(sock);
                let hub = copies.hub.clone();
                let show = output.sink(opts, false);
                copies.threads.push(std::thread::spawn(move || {
                    copy_to(reader, Tee(out_log, show, hub, progress))
                }));
            }
        }
        Ok(copies)
    }

    /// After the container exited: what it wrote is still coming, and a slow reader
    /// of ours may take its time; a sandbox that keeps its streams open with nothing in
    /// them gets [`OUTPUT_DRAIN`] of silence, not forever. Then every client goes.
    fn drain(self) {
        let mut idle_since = Instant::now();
        let mut moved = self.progress.moved.load(Ordering::SeqCst);
        while !self.threads.iter().all(JoinHandle::is_finished)
            && idle_since.elapsed() < OUTPUT_DRAIN
        {
            std::thread::sleep(Duration::from_millis(10));
            let now_moved = self.progress.moved.load(Ordering::SeqCst);
            if now_moved != moved || self.progress.writing.load(Ordering::SeqCst) > 0 {
                moved = now_moved;
                idle_since = Instant::now();
            }
        }
        for s in &self.drains {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let hub = self.hub.clone();
        for t in self.threads {
            let _ = t.join();
        }
        // All output has reached the attached clients: let them go.
        if let Some(h) = hub {
            h.close();
        }
    }

    /// Ends every `arca attach` client's session (the container has exited).
    fn close_clients(&self) {
        if let Some(h) = &self.hub {
            h.close();
        }
    }
}

/// Writes to a log file and, if present, a terminal stream and `arca attach` clients.
struct Tee(
    RotatingLog,
    Option<Box<dyn Write + Send>>,
    Option<Arc<Hub>>,
    Arc<Progress>,
);

/// What the output copies are doing, so that the drain after the container's exit
/// waits on a copy that still moves bytes (or is blocked on a slow reader) and not on
/// one whose sandbox never closes its stream.
#[derive(Debug, Default)]
struct Progress {
    /// Writes under way (a slow terminal or pipe blocks them).
    writing: AtomicUsize,
    /// Bytes copied so far.
    moved: AtomicU64,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.3.writing.fetch_add(1, Ordering::SeqCst);
        let done = self.write_all_sinks(buf);
        self.3.moved.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.3.writing.fetch_sub(1, Ordering::SeqCst);
        done
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Tee {
    fn write_all_sinks(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        if let Some(t) = &mut self.1 {
            // A closed terminal must not stop the log.
            if t.write_all(buf).and_then(|()| t.flush()).is_err() {
                self.1 = None;
            }
        }
        if let Some(h) = &self.2 {
            h.broadcast(buf);
        }
        Ok(buf.len())
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 that arca receives to
/// the container's main process, from a thread of its own.
fn forward_signals(address: &AgentAddress, id: &str) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    let Ok(mut signals) =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])
    else {
        return;
    };
    let (address, id) = (address.clone(), id.to_string());
    std::thread::spawn(move || {
        let mut client = None;
        for sig in signals.forever() {
            if client.is_none() {
                client = AgentClient::connect(&address, Duration::from_secs(5)).ok();
            }
            if let Some(c) = client.as_mut()
                && c.signal(&id, None, sig).is_err()
            {
                client = None;
            }
        }
    });
}
