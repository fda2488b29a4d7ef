//! `arca run` in the foreground: one container, in a microVM (`vm`) or on the host
//! (`process`), with the same agent and the same protocol.
//!
//! `process`: an `arca-agent serve` of its own on a Unix socket in the container's
//! state directory. `vm`: an `arca-vmm` booting the guest kernel with the agent
//! initramfs, the image as a read-only ext4 disk and a vsock socket in the container's
//! state directory; the agent powers the VM off once the container is removed.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arca_protocol::{
    ContainerSpec, ErrorCode, NetworkMode, ProcessSpec, Resources, Rootfs, StdioStream,
    WritableLayer,
};
use vmm::agent_client::{AgentAddress, AgentClient, AgentClientError};

use serde::{Deserialize, Serialize};

use crate::attach;
use crate::containers::{ContainerRecord, Status, alive, containers_dir, now, start_time};
use crate::guest;
use crate::image::store::{Image, Store, StoreError};
use crate::logs::{LogOptions, RotatingLog};
use crate::network::{self, Network};
use crate::ports::{self, Forwarders};

/// Errors of `arca run`. All map to exit code 125 except the container's own 126/127.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A needed program or file is missing.
    #[error("{0}")]
    Missing(String),
    /// The agent refused or failed.
    #[error(transparent)]
    Agent(#[from] AgentClientError),
    /// A local operation failed.
    #[error("Cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Building the guest's files failed.
    #[error(transparent)]
    Guest(#[from] guest::GuestError),
    /// The container could not run; Docker's exit code for that.
    #[error("{message}")]
    Failed {
        /// 125, 126 or 127.
        code: i32,
        /// Why.
        message: String,
    },
    /// Pulling a missing image failed.
    #[error(transparent)]
    Pull(#[from] crate::image::pull::PullError),
    /// Setting up the container's network failed.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// The sandbox process (VMM or host agent) ended before its agent answered.
    #[error("{program} ended before the container's agent answered ({status}): {output}")]
    SandboxFailed {
        /// `arca-vmm` or `arca-agent`.
        program: &'static str,
        /// How it ended.
        status: String,
        /// The end of what it wrote to stderr.
        output: String,
    },
}

impl RunError {
    /// Docker's exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Agent(AgentClientError::Agent(a)) => a.code.docker_exit_code(),
            RunError::Failed { code, .. } => *code,
            _ => 125,
        }
    }
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let action = action.into();
    move |source| RunError::Io { action, source }
}

/// Where the container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own KVM microVM.
    Vm,
    /// Namespaces and cgroups on this host.
    Process,
}

/// What `arca run` was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// `-p`.
    #[serde(default)]
    pub publish: Vec<crate::ports::PortMapping>,
    /// `--log-opt`: how the logs rotate.
    #[serde(default)]
    pub log: LogOptions,
    /// `--guest-console`: keep the microVM's console in `console.log`.
    #[serde(default)]
    pub guest_console: bool,
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

fn random_id() -> String {
    let mut bytes = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A child process killed if still running when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs a container: in the foreground (returns its exit code) or, with `detach`,
/// under a background monitor (returns 0 once it runs and prints its id).
pub fn run(state: &Path, opts: &RunOptions) -> Result<i32, RunError> {
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
    let store = Store::open(state)?;
    let image = match store.resolve(&opts.image) {
        Err(StoreError::NotFound(_)) => {
            // As Docker: a missing image is pulled first.
            eprintln!("Unable to find image '{}' locally", opts.image);
            let (name, _) = crate::image::pull::pull(&store, &opts.image, false, false)?;
            store.resolve(&name)?
        }
        other => other?,
    };
    let args = command_line(&image, opts)?;
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
    let id = match &opts.name {
        Some(n) => {
            arca_protocol::validate_id("container", n).map_err(|e| RunError::Invalid(e.message))?;
            n.clone()
        }
        None => format!("arca-{}", random_id()),
    };
    let dir = containers_dir(state).join(&id);
    std::fs::create_dir_all(containers_dir(state))
        .map_err(io_err("create the container directory"))?;
    if let Err(e) = std::fs::create_dir(&dir) {
        return Err(if e.kind() == io::ErrorKind::AlreadyExists {
            RunError::Invalid(format!(
                "The container name {id:?} is already in use: remove it (arca rm {id}) or choose another name"
            ))
        } else {
            io_err(format!("create {}", dir.display()))(e)
        });
    }
    let record = ContainerRecord {
        id: id.clone(),
        image: opts.image.clone(),
        image_id: image.id.clone(),
        command: args.clone(),
        isolation: opts.isolation,
        created: now(),
        status: Status::Starting,
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
    };
    record.save(&dir)?;
    if opts.detach {
        return detach(state, &dir, opts, &id);
    }
    let result = supervise(
        state,
        &store,
        &image,
        opts,
        args,
        &dir,
        record,
        Output::Terminal,
    );
    if result.is_err() || opts.rm {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Starts `arca __monitor` for a detached container and waits until the container runs.
fn detach(state: &Path, dir: &Path, opts: &RunOptions, id: &str) -> Result<i32, RunError> {
    let options = serde_json::to_vec(opts).map_err(|e| RunError::Invalid(e.to_string()))?;
    std::fs::write(dir.join("options.json"), options)
        .map_err(io_err("write the container options"))?;
    let exe = std::env::current_exe().map_err(io_err("locate arca"))?;
    let monitor = Command::new(exe)
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
        .spawn();
    let mut monitor = match monitor {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            return Err(io_err("start the container monitor")(e));
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rec = ContainerRecord::load(dir).ok();
        match rec.as_ref().map(|r| r.status) {
            Some(Status::Running) | Some(Status::Exited)
                if rec.as_ref().is_some_and(|r| r.error.is_none()) =>
            {
                break;
            }
            Some(Status::Exited) => {
                let (code, message) = rec
                    .map(|r| (r.exit_code.unwrap_or(125), r.error.unwrap_or_default()))
                    .unwrap_or((125, String::new()));
                let _ = monitor.wait();
                let _ = std::fs::remove_dir_all(dir);
                let code = if matches!(code, 126 | 127) { code } else { 125 };
                return Err(RunError::Failed { code, message });
            }
            _ => {}
        }
        if let Ok(Some(status)) = monitor.try_wait() {
            if status.success() {
                // It ran and ended already (and, with --rm, is gone).
                break;
            }
            let _ = std::fs::remove_dir_all(dir);
            return Err(RunError::Invalid(format!(
                "The container monitor ended early ({status})"
            )));
        }
        if std::time::Instant::now() > deadline {
            let _ = monitor.kill();
            let _ = std::fs::remove_dir_all(dir);
            return Err(RunError::Invalid(
                "The container did not start within 120 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{id}");
    Ok(0)
}

/// Entry of `arca __monitor ID`: runs a detached container to its end.
pub fn monitor(state: &Path, id: &str) -> Result<i32, RunError> {
    let dir = containers_dir(state).join(id);
    let bytes =
        std::fs::read(dir.join("options.json")).map_err(io_err("read the container options"))?;
    let opts: RunOptions =
        serde_json::from_slice(&bytes).map_err(|e| RunError::Invalid(e.to_string()))?;
    let mut record = ContainerRecord::load(&dir)?;
    record.monitor_pid = std::process::id();
    record.monitor_start = start_time(std::process::id());
    record.save(&dir)?;
    let result = (|| {
        let store = Store::open(state)?;
        let image = store.resolve(&record.image_id)?;
        supervise(
            state,
            &store,
            &image,
            &opts,
            record.command.clone(),
            &dir,
            record.clone(),
            Output::Logs,
        )
    })();
    if let Err(e) = &result
        && let Ok(mut r) = ContainerRecord::load(&dir)
    {
        r.status = Status::Exited;
        r.exit_code.get_or_insert(e.exit_code());
        r.error.get_or_insert_with(|| vmm::error_chain(e));
        let _ = r.save(&dir);
    }
    if opts.rm && ContainerRecord::load(&dir).is_ok_and(|r| r.error.is_none()) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// How long the output copies may sit idle after the container exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// How often a waiting supervisor checks that the agent still answers, how long each
/// check may take, and how many missed checks in a row mean the sandbox is wedged.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_PATIENCE: Duration = Duration::from_secs(10);
const PINGS_MISSED: u32 = 3;

/// What a supervisor asks while it waits on the agent: whether the sandbox process is
/// still there, and every [`PING_EVERY`] whether its agent still answers a ping on a
/// connection of its own. A dead sandbox, or one whose agent missed [`PINGS_MISSED`]
/// checks in a row (a wedged VMM or guest), ends the wait instead of hanging it.
fn sandbox_watch(
    pid: u32,
    started: Option<u64>,
    address: AgentAddress,
    program: &'static str,
) -> vmm::agent_client::Watch {
    let mut last = std::time::Instant::now();
    let mut missed = 0;
    Box::new(move || {
        if !alive(pid, started) {
            return Some(format!("{program} exited"));
        }
        if last.elapsed() < PING_EVERY {
            return None;
        }
        let answered = AgentClient::connect(&address, PING_PATIENCE)
            .map(|c| c.with_patience(PING_PATIENCE))
            .and_then(|mut c| c.ping())
            .is_ok();
        last = std::time::Instant::now();
        missed = if answered { 0 } else { missed + 1 };
        (missed >= PINGS_MISSED).then(|| {
            format!(
                "{program} stopped answering (its agent missed {missed} liveness checks in a row)"
            )
        })
    })
}

/// What [`log_tail`] says of an empty log.
const NOTHING_SAID: &str = "it said nothing";

/// The last lines of a sandbox's stderr (at most 2 KiB), for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(2048)..];
    let tail = String::from_utf8_lossy(tail);
    let tail = tail.trim();
    if tail.is_empty() {
        NOTHING_SAID.into()
    } else {
        tail.replace('\n', "; ")
    }
}

/// Where a container's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// This terminal, and the logs.
    Terminal,
    /// The logs only.
    Logs,
}

/// Runs the container to its end, keeping its record up to date.
#[allow(clippy::too_many_arguments)]
fn supervise(
    state: &Path,
    store: &Store,
    image: &Image,
    opts: &RunOptions,
    args: Vec<String>,
    dir: &Path,
    mut record: ContainerRecord,
    output: Output,
) -> Result<i32, RunError> {
    let id = record.id.clone();
    let id = id.as_str();
    let cfg = &image.config.config;
    let user = opts
        .user
        .clone()
        .or_else(|| cfg.user.clone().filter(|u| !u.is_empty()));
    let cwd = opts
        .workdir
        .clone()
        .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty()));
    let resources = Resources {
        memory_bytes: opts.memory,
        cpu_quota_us: opts.cpus.map(|c| (c * 100_000.0).round() as u64),
        cpu_period_us: opts.cpus.map(|_| 100_000),
        pids_max: None,
    };
    let process = ProcessSpec {
        args,
        env: environment(image, &opts.env),
        cwd,
        user,
        stdin: opts.interactive && !opts.tty,
        terminal: opts.tty,
        ..Default::default()
    };
    // Host ports first: one in use fails the run before anything starts.
    let listeners = ports::bind(&opts.publish).map_err(RunError::Invalid)?;
    let attachment = Attachment::prepare(state, opts, id)?;
    // What the sandbox says goes to a file of the container's: a VMM that fails at
    // start is reported with its own words.
    let sandbox_log = dir.join("sandbox.log");
    let stderr = || std::fs::File::create(&sandbox_log).map_err(io_err("create the sandbox log"));
    let (address, rootfs, _child) = match opts.isolation {
        Isolation::Process => {
            let sock = dir.join("agent.sock");
            let agent = Command::new(guest::agent_binary()?)
                .args(["serve", "--listen"])
                .arg(&sock)
                .arg("--run-dir")
                .arg(dir.join("run"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr()?)
                .process_group(0)
                .spawn()
                .map_err(io_err("start arca-agent"))?;
            let rootfs = Rootfs {
                source: image.rootfs.display().to_string(),
                fstype: "dir".into(),
                writable: WritableLayer::Tmpfs,
            };
            (AgentAddress::Unix(sock), rootfs, Reaped(agent))
        }
        Isolation::Vm => {
            let kernel = guest::kernel()?;
            let initrd = guest::agent_initramfs(state)?;
            let disk = guest::image_disk(store, image)?;
            let uds = dir.join("vsock.sock");
            // The guest needs room for its kernel, the agent and the container.
            let mem_mib = opts.memory.map_or(256, |m| (m >> 20) + 128).max(128);
            let cpus = opts.cpus.map_or(1, |c| c.ceil().max(1.0) as u32);
            let vmm = Command::new(guest::vmm_binary()?)
                .arg("--kernel")
                .arg(&kernel)
                .arg("--initrd")
                .arg(&initrd)
                .args([
                    "--memory",
                    &mem_mib.to_string(),
                    "--cpus",
                    &cpus.to_string(),
                ])
                .args(["--cmdline", "quiet"])
                .arg("--disk")
                .arg(format!("{},ro", disk.display()))
                .arg("--vsock")
                .arg(format!("cid=3,uds={}", uds.display()))
                // The console is the guest's to fill: off unless asked for (and then
                // capped by the VMM).
                .arg("--console")
                .arg(if opts.guest_console {
                    format!("file:{}", dir.join("console.log").display())
                } else {
                    "none".into()
                })
                .args(
                    attachment
                        .link()
                        .zip(attachment.mac())
                        .map(|((tap, _), mac)| {
                            ["--net".to_string(), format!("tap={tap},mac={mac}")]
                        })
                        .into_iter()
                        .flatten(),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr()?)
                .process_group(0)
                .spawn()
                .map_err(io_err("start arca-vmm"))?;
            let rootfs = Rootfs {
                source: "/dev/vda".into(),
                fstype: "ext4".into(),
                writable: WritableLayer::Tmpfs,
            };
            (AgentAddress::Vsock { uds, port: 1024 }, rootfs, Reaped(vmm))
        }
    };
    let mut child = _child;
    let (pid, started) = (child.0.id(), start_time(child.0.id()));
    record.sandbox_pid = Some(pid);
    record.sandbox_start = started;
    record.save(dir)?;
    let program = match opts.isolation {
        Isolation::Vm => "arca-vmm",
        Isolation::Process => "arca-agent",
    };
    let booting: vmm::agent_client::Watch =
        Box::new(move || (!alive(pid, started)).then(|| format!("{program} exited")));
    let mut client = match AgentClient::connect_watched(&address, Duration::from_secs(30), booting)
    {
        Ok(c) => c,
        Err(AgentClientError::SandboxGone(_)) => {
            let status = child
                .0
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(RunError::SandboxFailed {
                program,
                status,
                output: log_tail(&sandbox_log),
            });
        }
        Err(e) => return Err(e.into()),
    };
    // From now on a sandbox that dies or stops answering ends every wait on it.
    client.set_watch(sandbox_watch(pid, started, address.clone(), program));
    if opts.isolation == Isolation::Vm
        && let Some((tap, bridge)) = attachment.link()
    {
        // The VMM made its TAP before the guest booted; the agent answering means the
        // guest is up. The TAP joins the bridge with its rules.
        attachment.remember_link();
        attachment.guard(|| network::ip(&["link", "set", &tap, "master", &bridge, "up"]))?;
    }
    let spec = ContainerSpec {
        id: id.to_string(),
        rootfs,
        process,
        hostname: opts.hostname.clone(),
        resources,
        network: attachment.mode(opts.isolation),
        init: opts.init,
        interfaces: attachment.interfaces(),
        hosts: attachment.hosts(state, id),
        dns: attachment.dns(),
    };
    let container_pid = client.create(spec)?;
    if opts.isolation == Isolation::Process {
        record.container_pid = Some(container_pid);
        if let (Some((veth, bridge)), Some(mac)) = (attachment.link(), attachment.mac()) {
            // The container's end goes straight into its namespace, named eth0, with
            // the MAC its rules allow; the host end joins the bridge with its rules.
            let pid = container_pid.to_string();
            let linked = attachment.guard(|| {
                network::ip_batch(&[
                    &[
                        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "address",
                        &mac, "netns", &pid,
                    ],
                    &["link", "set", &veth, "master", &bridge, "up"],
                ])
            });
            attachment.remember_link();
            if let Err(e) = linked {
                let _ = client.remove(id, true);
                let _ = client.shutdown();
                return Err(e.into());
            }
        }
    }
    let terminal = output == Output::Terminal;
    let streams = if opts.tty {
        let tty = address.attach(id, None, StdioStream::Tty)?;
        if terminal && let Ok(ws) = rustix::termios::tcgetwinsize(io::stdout()) {
            client.resize(id, None, ws.ws_row, ws.ws_col)?;
        }
        Streams::Tty(tty)
    } else {
        let out = address.attach(id, None, StdioStream::Stdout)?;
        let err = address.attach(id, None, StdioStream::Stderr)?;
        let input = if opts.interactive {
            Some(address.attach(id, None, StdioStream::Stdin)?)
        } else {
            None
        };
        Streams::Pipes { out, err, input }
    };
    if let Err(e) = client.start(id) {
        let _ = client.remove(id, true);
        if opts.isolation == Isolation::Process {
            let _ = client.shutdown();
        }
        return Err(e.into());
    }
    record.status = Status::Running;
    record.sandbox_pid = Some(child.0.id());
    record.sandbox_start = start_time(child.0.id());
    record.agent = Some(address.clone().into());
    record.network = Some(attachment.name());
    record.ip = attachment.address();
    record.ports = listeners.mappings();
    record.save(dir)?;
    let forwarders = Forwarders::start(listeners, &address, id);
    attachment.announce(state, id);
    let log = |name: &str| {
        RotatingLog::create(&dir.join(name), opts.log).map_err(io_err(format!("create the {name}")))
    };
    let (out_log, err_log) = (log("stdout.log")?, log("stderr.log")?);
    let resizing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut _raw = None;
    // A detached container serves `arca attach` clients: its output, and its input.
    let mut hub = None;
    // The container's output sockets, to end the copies if the sandbox never closes them.
    let mut drains = Vec::new();
    let progress = std::sync::Arc::new(Progress::default());
    let (copy_out, copy_err) = match streams {
        Streams::Pipes { out, err, input } => {
            drains.extend(
                [out.socket_clone(), err.socket_clone()]
                    .into_iter()
                    .flatten(),
            );
            match input {
                Some(mut input) if terminal => {
                    std::thread::spawn(move || {
                        let _ = io::copy(&mut io::stdin().lock(), &mut input);
                        let _ = input.close_input();
                    });
                }
                input => {
                    let input = input.map_or(attach::Input::None, |i| {
                        attach::Input::Stdin(i.into_parts().1)
                    });
                    hub = Some(attach::Hub::serve(dir, input).map_err(io_err("serve attach"))?);
                }
            }
            let (h1, h2) = (hub.clone(), hub.clone());
            let (p1, p2) = (progress.clone(), progress.clone());
            (
                std::thread::spawn(move || {
                    copy_to(out, Tee(out_log, terminal.then(io::stdout), h1, p1))
                }),
                std::thread::spawn(move || {
                    copy_to(err, Tee(err_log, terminal.then(io::stderr), h2, p2))
                }),
            )
        }
        Streams::Tty(tty) => {
            let (pending, sock) = tty.into_parts();
            drains.extend(sock.try_clone());
            if !terminal {
                let input = opts.interactive.then(|| sock.try_clone().ok()).flatten();
                hub = Some(
                    attach::Hub::serve(dir, attach::Input::Tty(input))
                        .map_err(io_err("serve attach"))?,
                );
            }
            if opts.interactive && terminal {
                _raw = RawMode::enter();
                if let Ok(mut to_tty) = sock.try_clone() {
                    std::thread::spawn(move || {
                        let _ = io::copy(&mut io::stdin().lock(), &mut to_tty);
                    });
                }
            }
            if terminal {
                // No signal handler for SIGWINCH here: the size is polled.
                let (flag, address, id) = (resizing.clone(), address.clone(), id.to_string());
                std::thread::spawn(move || resize_loop(&flag, &address, &id, None));
            }
            let reader = io::Cursor::new(pending).chain(sock);
            let h = hub.clone();
            let p = progress.clone();
            (
                std::thread::spawn(move || {
                    copy_to(reader, Tee(out_log, terminal.then(io::stdout), h, p))
                }),
                std::thread::spawn(move || drop(err_log)),
            )
        }
    };
    // As `docker run` (sig-proxy): signals sent to arca go to the container.
    if terminal {
        forward_signals(&address, id);
    }
    let waited = client.wait(id, None);
    drop(forwarders);
    resizing.store(false, std::sync::atomic::Ordering::SeqCst);
    let status = match waited {
        Ok(s) => s,
        Err(e) => {
            // The sandbox died under the container (a VMM crash, a killed agent) or
            // stopped answering (a wedged VMM or guest): it goes, and the wait ends.
            let _ = child.0.kill();
            let gone = child.0.wait().ok();
            record.status = Status::Exited;
            record.exit_code = Some(137);
            record.error = Some(match (&e, gone) {
                (AgentClientError::SandboxGone(why), Some(st)) => {
                    format!("The sandbox ended unexpectedly: {why} ({st})")
                }
                (_, Some(st)) => format!(
                    "The sandbox ended unexpectedly ({st}): {}",
                    vmm::error_chain(&e)
                ),
                (_, None) => format!("Lost the agent: {}", vmm::error_chain(&e)),
            });
            // What the VMM or host agent said on its way out belongs with the reason.
            let said = log_tail(&sandbox_log);
            if let Some(error) = record.error.as_mut().filter(|_| said != NOTHING_SAID) {
                error.push_str(&format!("; {program} said: {said}"));
            }
            record.save(dir)?;
            // A host agent's containers outlive it: end what is left of this one.
            if opts.isolation == Isolation::Process {
                crate::containers::process_leftovers(&record);
            }
            if let Some(h) = &hub {
                h.close();
            }
            return Err(e.into());
        }
    };
    // What the container wrote before it ended is still coming, and a slow reader of
    // ours may take its time; a sandbox that keeps its streams open with nothing in
    // them gets OUTPUT_DRAIN of silence, not forever.
    let mut idle_since = std::time::Instant::now();
    let mut moved = progress.moved.load(std::sync::atomic::Ordering::SeqCst);
    while !(copy_out.is_finished() && copy_err.is_finished()) && idle_since.elapsed() < OUTPUT_DRAIN
    {
        std::thread::sleep(Duration::from_millis(10));
        let now_moved = progress.moved.load(std::sync::atomic::Ordering::SeqCst);
        if now_moved != moved || progress.writing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            moved = now_moved;
            idle_since = std::time::Instant::now();
        }
    }
    for s in &drains {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    let _ = copy_out.join();
    let _ = copy_err.join();
    // All output has reached the attached clients: let them go.
    if let Some(h) = &hub {
        h.close();
    }
    record.status = Status::Exited;
    record.exit_code = Some(status.code);
    record.save(dir)?;
    // The container has ended: a teardown problem is worth a warning, not its exit code.
    if let Err(e) = client.remove(id, false) {
        eprintln!(
            "arca: warning: removing {id} from its sandbox: {}",
            vmm::error_chain(&e)
        );
    }
    match opts.isolation {
        Isolation::Process => {
            if let Err(e) = client.shutdown() {
                eprintln!(
                    "arca: warning: stopping the agent of {id}: {}",
                    vmm::error_chain(&e)
                );
            }
        }
        // The agent powers the VM off once its last container is gone.
        Isolation::Vm => {}
    }
    drop(client);
    if child.0.wait().is_ok_and(|s| s.success()) {
        attachment.ended.set(true);
    }
    if status.oom_killed {
        eprintln!("arca: the container was killed for exceeding its memory limit");
    }
    Ok(status.code)
}

/// The container's stdio as attached.
enum Streams {
    /// Separate pipes.
    Pipes {
        out: vmm::agent_client::StdioConnection,
        err: vmm::agent_client::StdioConnection,
        input: Option<vmm::agent_client::StdioConnection>,
    },
    /// One terminal.
    Tty(vmm::agent_client::StdioConnection),
}

/// This terminal in raw mode until dropped (so keys reach the container's terminal).
pub(crate) struct RawMode(rustix::termios::Termios);

impl RawMode {
    pub(crate) fn enter() -> Option<Self> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(io::stdin(), rustix::termios::OptionalActions::Now, &self.0);
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

/// Follows this terminal's size into the container's (or its exec'd `process`'s) while
/// `flag` is set.
pub(crate) fn resize_loop(
    flag: &std::sync::atomic::AtomicBool,
    address: &AgentAddress,
    id: &str,
    process: Option<&str>,
) {
    let Ok(mut client) = AgentClient::connect(address, Duration::from_secs(5)) else {
        return;
    };
    let mut last = None;
    while flag.load(std::sync::atomic::Ordering::SeqCst) {
        if let Ok(ws) = rustix::termios::tcgetwinsize(io::stdout()) {
            let size = (ws.ws_row, ws.ws_col);
            if last != Some(size) {
                if client.resize(id, process, size.0, size.1).is_err() {
                    return;
                }
                last = Some(size);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Writes to a log file and, if present, a terminal stream and `arca attach` clients.
struct Tee<W: Write>(
    RotatingLog,
    Option<W>,
    Option<std::sync::Arc<attach::Hub>>,
    std::sync::Arc<Progress>,
);

/// What the output copies are doing, so that the drain after the container's exit
/// waits on a copy that still moves bytes (or is blocked on a slow reader) and not on
/// one whose sandbox never closes its stream.
#[derive(Debug, Default)]
struct Progress {
    /// Writes under way (a slow terminal or pipe blocks them).
    writing: std::sync::atomic::AtomicUsize,
    /// Bytes copied so far.
    moved: std::sync::atomic::AtomicU64,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::sync::atomic::Ordering::SeqCst;
        self.3.writing.fetch_add(1, SeqCst);
        let done = self.write_all_sinks(buf);
        self.3.moved.fetch_add(buf.len() as u64, SeqCst);
        self.3.writing.fetch_sub(1, SeqCst);
        done
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Tee<W> {
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

/// Copies until `from` ends or `to` fails, flushing as it goes (a terminal sees output
/// as it comes).
pub(crate) fn copy_to(mut from: impl Read, mut to: impl Write) {
    let mut buf = [0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    break;
                }
            }
        }
    }
}

/// `true` when `code` came from the agent refusing to exec (Docker's 126/127).
pub fn is_exec_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::CommandNotFound | ErrorCode::CommandNotExecutable
    )
}

/// A container's place on the network, decided before its sandbox starts: its address
/// is leased and its network's bridge up. Dropping it gives the address back and takes
/// the network down if nothing else uses it.
struct Attachment<'a> {
    state: &'a Path,
    choice: NetChoice,
    /// The index of the host link this container made, once made.
    ifindex: std::cell::Cell<Option<u32>>,
    /// The sandbox ended cleanly, taking the container's link with it.
    ended: std::cell::Cell<bool>,
}

fn link_index(link: &str) -> Option<u32> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(link).join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

enum NetChoice {
    /// `--network none`: loopback only.
    None,
    /// `--network host` (process isolation): the host's own stack.
    Host,
    /// A network: an address on its bridge, through a link named after the container.
    Joined {
        net: Network,
        address: std::net::Ipv4Addr,
        /// The host side of the container's link: a veth or a TAP.
        link: String,
        id: String,
    },
}

impl<'a> Attachment<'a> {
    fn prepare(state: &'a Path, opts: &RunOptions, id: &str) -> Result<Self, RunError> {
        let choice = match opts.network.as_deref() {
            Some("none") => NetChoice::None,
            Some("host") => NetChoice::Host,
            name => {
                let name = name.unwrap_or(network::DEFAULT_NETWORK);
                if !rustix::process::geteuid().is_root() {
                    return Err(RunError::Invalid(format!(
                        "Joining network {name} needs root (it makes bridges and links): run as root, or use --network none (-p still works)"
                    )));
                }
                let (net, address) = network::join(state, name, id)?;
                let kind = match opts.isolation {
                    Isolation::Vm => network::LinkKind::Tap,
                    Isolation::Process => network::LinkKind::Veth,
                };
                let link = network::link_name(kind, id);
                // From here on, dropping the attachment gives the lease back.
                return Ok(Attachment {
                    state,
                    choice: NetChoice::Joined {
                        net,
                        address,
                        link,
                        id: id.to_string(),
                    },
                    ifindex: std::cell::Cell::new(None),
                    ended: std::cell::Cell::new(false),
                });
            }
        };
        Ok(Attachment {
            state,
            choice,
            ifindex: std::cell::Cell::new(None),
            ended: std::cell::Cell::new(false),
        })
    }

    /// Notes which link is ours (by its index: a later container of the same name gets
    /// the same link name), once it exists.
    fn remember_link(&self) {
        if let Some((link, _)) = self.link() {
            self.ifindex.set(link_index(&link));
        }
    }

    /// The host link to make and the bridge it joins.
    fn link(&self) -> Option<(String, String)> {
        match &self.choice {
            NetChoice::Joined { net, link, .. } => Some((link.clone(), net.bridge.clone())),
            _ => None,
        }
    }

    /// The container's MAC address, the only one its link may send from.
    fn mac(&self) -> Option<String> {
        self.address().map(network::mac_address)
    }

    /// Puts the container's link under its anti-spoofing rules, then runs `join`
    /// (which puts the link on the bridge).
    fn guard(
        &self,
        join: impl FnOnce() -> Result<(), network::NetworkError>,
    ) -> Result<(), network::NetworkError> {
        match &self.choice {
            NetChoice::Joined {
                net, address, link, ..
            } => network::guard_link(self.state, net, link, *address, join),
            _ => Ok(()),
        }
    }

    fn name(&self) -> String {
        match &self.choice {
            NetChoice::None => "none".into(),
            NetChoice::Host => "host".into(),
            NetChoice::Joined { net, .. } => net.name.clone(),
        }
    }

    fn address(&self) -> Option<std::net::Ipv4Addr> {
        match &self.choice {
            NetChoice::Joined { address, .. } => Some(*address),
            _ => None,
        }
    }

    /// In a microVM the container shares the guest's stack (the VM is its wall); on
    /// the host it gets a namespace of its own unless `--network host`.
    fn mode(&self, isolation: Isolation) -> NetworkMode {
        match (&self.choice, isolation) {
            (NetChoice::Host, _) | (NetChoice::Joined { .. }, Isolation::Vm) => NetworkMode::Host,
            _ => NetworkMode::Isolated,
        }
    }

    fn interfaces(&self) -> Vec<arca_protocol::Interface> {
        match &self.choice {
            NetChoice::Joined { net, address, .. } => vec![arca_protocol::Interface {
                name: "eth0".into(),
                address: *address,
                prefix_len: net.prefix_len,
                gateway: Some(net.gateway),
            }],
            _ => Vec::new(),
        }
    }

    /// The other containers on its network, by name.
    fn hosts(&self, state: &Path, id: &str) -> Vec<arca_protocol::HostEntry> {
        match &self.choice {
            NetChoice::Joined { net, .. } => network::members(state, net, id)
                .into_iter()
                .filter(|(_, name)| arca_protocol::valid_host_name(name))
                .map(|(address, name)| arca_protocol::HostEntry {
                    address,
                    names: vec![name],
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Tells the containers already running on its network its name (their
    /// `/etc/hosts` got theirs when they started), from a thread nobody waits for: best
    /// effort, a peer that cannot be told keeps resolving the others.
    fn announce(&self, state: &Path, id: &str) {
        let NetChoice::Joined { net, address, .. } = &self.choice else {
            return;
        };
        if !arca_protocol::valid_host_name(id) {
            return;
        }
        let peers = network::members(state, net, id);
        let entry = arca_protocol::HostEntry {
            address: *address,
            names: vec![id.to_string()],
        };
        let state = state.to_path_buf();
        std::thread::spawn(move || {
            for (_, peer) in peers {
                let Ok((_, rec)) = crate::containers::find(&state, &peer) else {
                    continue;
                };
                if let Ok(mut c) = rec.client() {
                    let _ = c.add_hosts(&peer, vec![entry.clone()]);
                }
            }
        });
    }

    fn dns(&self) -> Vec<std::net::Ipv4Addr> {
        match &self.choice {
            NetChoice::Joined { .. } => network::name_servers(),
            _ => Vec::new(),
        }
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        if let NetChoice::Joined {
            net,
            address,
            link,
            id,
        } = &self.choice
        {
            // A veth goes with the container's namespace and a TAP with its VMM (the
            // kernel removes them, a little later). Unless the sandbox ended cleanly,
            // its owner may outlive the container: delete the link if it is still the
            // one this container made.
            if !self.ended.get()
                && self.ifindex.get().is_some()
                && link_index(link) == self.ifindex.get()
            {
                let _ = network::ip(&["link", "del", link]);
            }
            // Its rules, unless a later container of the same name has the link now.
            let made = self.ifindex.get();
            network::unguard_link(self.state, net, link, || {
                let now = link_index(link);
                now.is_none() || (made.is_some() && now == made)
            });
            network::release(self.state, &net.name, *address, id);
            network::reconcile_later(self.state, net);
        }
    }
}
