//! Messages: what travels inside frames.

use serde::{Deserialize, Serialize};

/// First frame of every connection, from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// What this connection is for.
    pub channel: Channel,
}

/// The purpose of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Requests and responses.
    Control,
    /// One stdio stream of one process; raw bytes follow the hello reply.
    Stdio {
        /// Container id.
        container: String,
        /// Exec id, or `None` for the container's main process.
        process: Option<String>,
        /// Which stream.
        stream: StdioStream,
    },
    /// A TCP connection to `port` in the container's network namespace (`-p`): the
    /// agent connects to the container's first interface address (loopback when it has
    /// none) and, once the hello reply says it succeeded, copies raw bytes both ways.
    /// For UDP the connection carries datagrams instead, each as a 2-byte big-endian
    /// length and its payload, both ways, to and from one socket connected to the port.
    Forward {
        /// Container id.
        container: String,
        /// Port in the container.
        port: u16,
        /// TCP (the default) or UDP.
        #[serde(default)]
        protocol: PortProtocol,
    },
    /// The writable layer of a container (`arca build`'s `RUN` steps): once the hello
    /// reply says it is accepted, the agent sends its overlay's upper directory as an
    /// OCI layer tar (whiteouts as `.wh.` files, an opaque directory as
    /// `.wh..wh..opq`), in chunks (see [`crate::LayerChunk`]), and closes.
    Layer {
        /// Container id.
        container: String,
    },
}

/// The transport of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    /// A byte stream.
    #[default]
    Tcp,
    /// Datagrams, framed on the forward connection.
    Udp,
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        })
    }
}

/// The largest UDP payload a forward connection carries (IPv4's limit).
pub const MAX_DATAGRAM: usize = 65507;

/// Writes one datagram to a UDP forward connection: its 2-byte big-endian length, then
/// the payload (at most [`MAX_DATAGRAM`] bytes).
pub fn write_datagram(w: &mut impl std::io::Write, payload: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|n| usize::from(*n) <= MAX_DATAGRAM)
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "datagram too long")
        })?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(payload)
}

/// Reads one datagram from a UDP forward connection into `buf` (which must hold
/// [`MAX_DATAGRAM`] bytes); `None` at the connection's end. A length beyond a datagram
/// is an error.
pub fn read_datagram(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = usize::from(u16::from_be_bytes(len));
    if n > MAX_DATAGRAM || n > buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "datagram longer than UDP allows",
        ));
    }
    r.read_exact(&mut buf[..n])?;
    Ok(Some(n))
}

/// A stdio stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioStream {
    /// Host to process. Half-close the connection to close the process's stdin.
    Stdin,
    /// Process to host; the agent half-closes at end of output.
    Stdout,
    /// Process to host; the agent half-closes at end of output.
    Stderr,
    /// Both ways, for a process started with a terminal.
    Tty,
}

/// The agent's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The agent's protocol version.
    pub version: u32,
    /// Agent name and build version, for logs.
    pub agent: String,
    /// Why the connection is refused; the agent closes it after this reply.
    pub error: Option<AgentError>,
}

/// A request on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client; repeated in the response.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// What the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Set up a container (namespaces, cgroup, rootfs) without running its process.
    Create {
        /// The container.
        spec: Box<ContainerSpec>,
    },
    /// Run the main process of a created container.
    Start {
        /// Container id.
        container: String,
    },
    /// Run another process in a running container.
    Exec {
        /// Container id.
        container: String,
        /// Id for the new process, unique within the container.
        process_id: String,
        /// The process.
        process: ProcessSpec,
    },
    /// Answer once the process has exited.
    Wait {
        /// Container id.
        container: String,
        /// Exec id, or `None` for the main process.
        process: Option<String>,
    },
    /// Send a signal to a process.
    Signal {
        /// Container id.
        container: String,
        /// Exec id, or `None` for the main process.
        process: Option<String>,
        /// Signal number.
        signal: i32,
    },
    /// Set the terminal size of a process started with a terminal.
    ResizeTty {
        /// Container id.
        container: String,
        /// Exec id, or `None` for the main process.
        process: Option<String>,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Resource usage from the container's cgroup.
    Stats {
        /// Container id.
        container: String,
    },
    /// All containers.
    List,
    /// Forget a container and free its cgroup; `force` kills it first if it runs.
    Remove {
        /// Container id.
        container: String,
        /// Kill a running container instead of refusing.
        force: bool,
    },
    /// Kill every container and power the sandbox off (or end a host agent).
    Shutdown,
    /// The processes of a running container (its cgroup's, nested cgroups included).
    Top {
        /// Container id.
        container: String,
    },
    /// Freeze (`frozen`) or thaw every process of a running container through its
    /// cgroup v2 `cgroup.freeze`; answers once the kernel says it is done.
    Freeze {
        /// Container id.
        container: String,
        /// Freeze, or thaw.
        frozen: bool,
    },
    /// What changed in a container's root filesystem against its image (`arca diff`):
    /// its writable layer read by the agent, a page of at most [`CHANGES_PAGE`] entries
    /// sorted by path, starting at entry `from`.
    Changes {
        /// Container id.
        container: String,
        /// The first entry wanted (0 for the first page).
        #[serde(default)]
        from: u32,
    },
    /// The sandbox was restored from a snapshot: the first request after a warm start,
    /// before any container. Every VM restored from one snapshot starts with the same
    /// kernel random state and the clock of the snapshot, its disks were empty
    /// placeholders and its network device had the template's MAC.
    Restored(Box<RestoredSandbox>),
}

/// What a restored sandbox's agent makes its own (see `Request::Restored`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredSandbox {
    /// Fresh entropy from the host, credited to the kernel's pool, which is then
    /// reseeded ([`MIN_ENTROPY`] to [`MAX_ENTROPY`] bytes).
    pub entropy: Vec<u8>,
    /// The host's time (nanoseconds since the Unix epoch), set as the guest's.
    pub time_ns: u64,
    /// The MAC address the guest's `eth0` takes, if it has one.
    pub mac: Option<[u8; 6]>,
    /// Disks whose size the host changed: the agent waits until the guest's block
    /// layer has read each new size.
    pub disks: Vec<DiskSize>,
}

/// The least entropy a restore brings.
pub const MIN_ENTROPY: usize = 32;
/// The most entropy a restore brings.
pub const MAX_ENTROPY: usize = 512;

/// A disk as the guest's block layer should see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSize {
    /// The block device's name (`vda`): lowercase letters and digits, at most 15 bytes.
    pub name: String,
    /// Its size in 512-byte sectors.
    pub sectors: u64,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The outcome.
    pub result: Result<Reply, AgentError>,
}

/// Successful outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to `Ping`.
    Pong,
    /// The container exists; `pid` is its init process as the agent sees it.
    Created {
        /// Process id in the agent's pid namespace.
        pid: u32,
    },
    /// The main process runs.
    Started,
    /// The exec'd process runs.
    ExecStarted {
        /// Process id in the agent's pid namespace.
        pid: u32,
    },
    /// The process has exited.
    Exited {
        /// How.
        status: ExitStatus,
    },
    /// The signal was delivered.
    Signalled,
    /// The terminal was resized.
    Resized,
    /// Cgroup figures.
    Stats {
        /// The figures.
        stats: ContainerStats,
    },
    /// Answer to `List`.
    Containers {
        /// The containers.
        containers: Vec<ContainerInfo>,
    },
    /// The container is gone.
    Removed,
    /// The agent is shutting down.
    ShuttingDown,
    /// The container is frozen (or thawed), as asked.
    FreezeSet,
    /// The restored sandbox made the host's entropy, time, MAC and disks its own.
    RestoreDone,
    /// Answer to `Top`.
    Processes {
        /// By pid.
        processes: Vec<ProcessInfo>,
    },
    /// Answer to `Changes`: a page of them, and whether more follow.
    Changes {
        /// Sorted by path.
        changes: Vec<Change>,
        /// Another page follows.
        more: bool,
    },
}

/// Most entries in one page of `Changes` (a frame must stay under its 1 MiB bound:
/// paths are at most 4096 bytes, most far shorter; the agent makes a page smaller when
/// its paths are long).
pub const CHANGES_PAGE: usize = 2000;

/// One change of a container's root filesystem, as `docker diff` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `A` (added), `C` (changed) or `D` (deleted).
    pub kind: ChangeKind,
    /// Absolute path in the container.
    pub path: String,
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "A")]
    Added,
    #[serde(rename = "C")]
    Changed,
    #[serde(rename = "D")]
    Deleted,
}

impl ChangeKind {
    /// Docker's letter.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One process of a container, as `top` shows it. It comes from the sandbox (a guest's
/// `/proc`): the host prints it only after taking out control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id in the agent's pid namespace (the guest's, or the host's).
    pub pid: u32,
    /// Its parent's.
    pub ppid: u32,
    /// Effective uid.
    pub uid: u32,
    /// When it started, seconds since the epoch.
    pub started: u64,
    /// User and system CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Its controlling terminal as `ps` names it (`pts/0`), or `?`.
    pub tty: String,
    /// Its command line, or `[comm]` for one without (a kernel thread, a zombie).
    pub cmd: String,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code as a shell reports it: the process's own, or 128 + signal.
    pub code: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// The container's cgroup OOM-killed a process during its life.
    pub oom_killed: bool,
}

/// Resource usage of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// `memory.current`, bytes.
    pub memory_bytes: u64,
    /// `memory.max`, bytes, or `None` for no limit.
    pub memory_limit_bytes: Option<u64>,
    /// `usage_usec` from `cpu.stat`.
    pub cpu_usage_usec: u64,
    /// `pids.current`.
    pub pids: u64,
    /// `oom_kill` from `memory.events`.
    pub oom_kills: u64,
    /// `inactive_file` from `memory.stat` (page cache the kernel can take back, which
    /// `docker stats` leaves out of the usage it shows).
    #[serde(default)]
    pub memory_inactive_file_bytes: u64,
    /// `rbytes` from `io.stat`, summed over devices.
    #[serde(default)]
    pub io_read_bytes: u64,
    /// `wbytes` from `io.stat`, summed over devices.
    #[serde(default)]
    pub io_write_bytes: u64,
}

/// Life stage of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Set up, main process not started.
    Created,
    /// Main process running.
    Running,
    /// Main process exited.
    Exited,
}

/// One line of `List`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Stage.
    pub state: ContainerState,
    /// Init pid in the agent's pid namespace.
    pub pid: u32,
    /// Set once exited.
    pub exit: Option<ExitStatus>,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// Machine-readable class.
    pub code: ErrorCode,
    /// One sentence for the user.
    pub message: String,
}

impl AgentError {
    /// An error of class `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Classes of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or invalid.
    BadRequest,
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// No such container or process.
    NotFound,
    /// The container or process id is taken.
    AlreadyExists,
    /// The container is in the wrong state for the request.
    InvalidState,
    /// The command is not in the container (Docker's exit code 127).
    CommandNotFound,
    /// The command cannot be executed (Docker's exit code 126).
    CommandNotExecutable,
    /// The sandbox lacks what the request needs (a cgroup controller, a filesystem).
    Unsupported,
    /// The agent failed; the message says where.
    Internal,
}

impl ErrorCode {
    /// The exit code `docker run` gives for a container that failed this way.
    pub fn docker_exit_code(self) -> i32 {
        match self {
            ErrorCode::CommandNotFound => 127,
            ErrorCode::CommandNotExecutable => 126,
            _ => 125,
        }
    }
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Id, unique in the sandbox: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128 bytes.
    pub id: String,
    /// Root filesystem.
    pub rootfs: Rootfs,
    /// Main process.
    pub process: ProcessSpec,
    /// Hostname; the id when absent.
    pub hostname: Option<String>,
    /// Cgroup limits.
    #[serde(default)]
    pub resources: Resources,
    /// Network namespace.
    #[serde(default)]
    pub network: NetworkMode,
    /// Run a small init as PID 1 that forwards signals and reaps zombies (Docker's
    /// `--init`); otherwise the command itself is PID 1.
    #[serde(default)]
    pub init: bool,
    /// Interfaces to configure in the container's network namespace before its process
    /// starts (they must exist there by `start`: the host moves them in after `create`,
    /// or they are the sandbox's own with [`NetworkMode::Host`]).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Extra `/etc/hosts` entries (`--add-host`).
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    /// Name servers for `/etc/resolv.conf`; empty leaves the image's file alone.
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Mounts over the root filesystem, in order (a later one may sit inside an earlier
    /// one).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Capabilities, `no_new_privs` and the seccomp filter of every process in it
    /// (Docker's defaults when absent).
    #[serde(default)]
    pub security: crate::Security,
    /// Namespaced kernel parameters (`--sysctl`), set in the container's own
    /// namespaces before its process starts; see [`Sysctl::check`].
    #[serde(default)]
    pub sysctls: Vec<Sysctl>,
}

/// A kernel parameter set for one container (`--sysctl NAME=VALUE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctl {
    /// Dotted, as `sysctl(8)` names it: `net.ipv4.ip_forward`.
    pub name: String,
    pub value: String,
}

/// Most `--sysctl` entries a container may have.
pub const MAX_SYSCTLS: usize = 64;

/// The IPC namespace's parameters (the rest of its are `fs.mqueue.*`).
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

impl Sysctl {
    /// Whether the parameter can belong to the container alone, as Docker's (runc's)
    /// rule has it: the IPC namespace's (`kernel.msg*`, `kernel.sem`, `kernel.shm*`,
    /// `fs.mqueue.*`), the UTS namespace's `kernel.domainname`, and the network
    /// namespace's `net.*` (only where that namespace is the container's or its
    /// sandbox's: see [`Sysctl::needs_own_network`]). A host-wide parameter
    /// (`kernel.pid_max`, `vm.*`) would change the whole sandbox, and is refused. The
    /// name is plain (letters, digits, `_`, `-`, components joined by `.`: nothing
    /// that walks out of `/proc/sys`) and the value one line.
    pub fn check(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::new(ErrorCode::BadRequest, m));
        let n = self.name.as_str();
        let plain = !n.is_empty()
            && n.len() <= 255
            && n.split('.').all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            });
        if !plain {
            return bad(format!("Invalid sysctl name {n:?}"));
        }
        if self.value.len() > 4096 || self.value.contains(['\n', '\0']) {
            return bad(format!("Invalid value for sysctl {n}"));
        }
        if self.needs_own_network()
            || IPC_SYSCTLS.contains(&n)
            || n.starts_with("fs.mqueue.")
            || n == "kernel.domainname"
        {
            return Ok(());
        }
        bad(format!("sysctl {n:?} is not allowed: it is not namespaced"))
    }

    /// A network namespace's parameter: not for a container on the host's network.
    pub fn needs_own_network(&self) -> bool {
        self.name.starts_with("net.")
    }

    /// Refuses a network namespace's parameter for a container on the host's network
    /// (`host_network`), in runc's words.
    pub fn check_network(&self, host_network: bool) -> Result<(), AgentError> {
        if host_network && self.needs_own_network() {
            return Err(AgentError::new(
                ErrorCode::BadRequest,
                format!(
                    "sysctl {:?} not allowed in host network namespace",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Its file under `/proc/sys`.
    pub fn proc_path(&self) -> String {
        format!("/proc/sys/{}", self.name.replace('.', "/"))
    }
}

/// A mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path in the container, without `.` or `..` components. Missing
    /// directories on the way are made; a symlink on the way is refused (the image is
    /// untrusted: it would send the mount outside the container).
    pub target: String,
    /// What is mounted.
    pub source: MountSource,
    /// Mounted read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSource {
    /// A fresh tmpfs (`nosuid,nodev`), lost with the container.
    Tmpfs {
        /// `size=`, bytes; the kernel's default (half of RAM) when absent.
        size: Option<u64>,
        /// `mode=` of its root, octal bits (default 01777, Docker's).
        mode: Option<u32>,
        /// `noexec` (Docker's `--tmpfs` default).
        #[serde(default)]
        noexec: bool,
    },
    /// A bind mount of a path the agent sees (a file or directory), recursive.
    Bind {
        /// Absolute path in the agent's filesystem.
        path: String,
        /// Mounted `nosuid`, `nodev`, `noexec` (as an OCI bundle's mount options ask).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nosuid: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nodev: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        noexec: bool,
    },
    /// A virtio-fs device of the microVM, by its tag (a host directory that the VMM's
    /// virtio-fs backend serves).
    Virtiofs {
        /// The device's tag: 1 to [`MAX_VIRTIOFS_TAG`] bytes, no NUL.
        tag: String,
        /// A file at the share's top to bind on the target instead of the share itself
        /// (a file bind mount: the share is mounted privately, only the file shows): one
        /// plain file name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
}

/// Longest virtio-fs tag (the device's config space holds 36 bytes).
pub const MAX_VIRTIOFS_TAG: usize = 36;

/// Largest number of mounts a container may ask for.
pub const MAX_MOUNTS: usize = 128;

/// Checks a mount target: an absolute path of normal components (no `.`, `..`, empty
/// or NUL-bearing ones) that is not `/` itself, at most 4096 bytes.
pub fn validate_mount_target(target: &str) -> Result<(), AgentError> {
    let ok = target.starts_with('/')
        && target.len() <= 4096
        && !target.contains('\0')
        && target.split('/').skip(1).all(|c| !matches!(c, "." | ".."))
        && target.split('/').any(|c| !c.is_empty());
    if ok {
        Ok(())
    } else {
        Err(AgentError::new(
            ErrorCode::BadRequest,
            format!(
                "Invalid mount target {target:?}: use an absolute path in the container, other than /, without . or .. components"
            ),
        ))
    }
}

/// An IPv4 interface configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (`eth0`), at most 15 bytes.
    pub name: String,
    /// Its address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length of its subnet (1..=32).
    pub prefix_len: u8,
    /// Default route through this gateway, if any.
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// The address.
    pub address: std::net::Ipv4Addr,
    /// Its names.
    pub names: Vec<String>,
}

impl std::fmt::Display for HostEntry {
    /// The line, without its newline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\t{}", self.address, self.names.join(" "))
    }
}

/// Checks `/etc/hosts` entries: at most 1024, each with 1 to 16 valid names.
pub fn validate_host_entries(entries: &[HostEntry]) -> Result<(), AgentError> {
    let bad = |m: String| Err(AgentError::new(ErrorCode::BadRequest, m));
    if entries.len() > 1024 {
        return bad("Too many hosts entries (at most 1024)".into());
    }
    for h in entries {
        if h.names.is_empty() || h.names.len() > 16 {
            return bad(format!("Hosts entry {} needs 1 to 16 names", h.address));
        }
        if let Some(n) = h.names.iter().find(|n| !valid_host_name(n)) {
            return bad(format!("Invalid host name {n:?}"));
        }
    }
    Ok(())
}

/// Whether `name` is a valid host name label sequence (letters, digits, `-`, `.`, `_`),
/// 1 to 253 bytes.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !name.starts_with(['-', '.'])
}

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// The read-only image: a block device or file with a filesystem, or a directory.
    pub source: String,
    /// `ext4`, `erofs`, or `dir` for a directory.
    pub fstype: String,
    /// The writable layer over it.
    #[serde(default)]
    pub writable: WritableLayer,
}

/// The writable layer of a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WritableLayer {
    /// An overlay upper layer on tmpfs, lost with the container.
    #[default]
    Tmpfs,
    /// An overlay upper layer on a directory the agent can write (kept after removal).
    Dir {
        /// The directory; `upper` and `work` are made inside it.
        path: String,
    },
    /// An overlay upper layer on a block device holding a filesystem (empty, or the
    /// container's earlier writes; the agent never formats it); `upper` and `work` are
    /// made at its root.
    Disk {
        /// The device, e.g. `/dev/vdb`.
        device: String,
        /// Its filesystem: `ext4`.
        fstype: String,
    },
    /// No writable layer: the root filesystem is read-only (mount points the
    /// container needs are made in a small tmpfs layer first, as Docker does).
    ReadOnly,
    /// The root filesystem directory itself, written in place, as runc uses an OCI
    /// bundle's: no overlay, and the agent writes no `/etc` files (the caller binds
    /// its own). Mount points are made in it; with `read_only` it is remounted
    /// read-only once the mounts are made. Only with `fstype` `dir`.
    InPlace {
        #[serde(default)]
        read_only: bool,
    },
}

/// Cgroup v2 limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// `memory.max` (and `memory.swap.max` = 0), bytes.
    pub memory_bytes: Option<u64>,
    /// `cpu.max`: CPU time in microseconds per period.
    pub cpu_quota_us: Option<u64>,
    /// `cpu.max` period in microseconds (default 100000).
    pub cpu_period_us: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

/// Network namespace of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A new network namespace with loopback only.
    #[default]
    Isolated,
    /// The sandbox's own network namespace.
    Host,
}

/// A process to run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in `PATH` unless it contains a `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries. `PATH`, `HOME` and `HOSTNAME` get Docker's defaults when absent.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (created if missing, as Docker does); `/` when absent.
    pub cwd: Option<String>,
    /// `user[:group]`, names or numbers, looked up in the container's /etc/passwd and
    /// /etc/group; root when absent.
    pub user: Option<String>,
    /// Extra supplementary groups (names or numbers).
    #[serde(default)]
    pub additional_groups: Vec<String>,
    /// Give the process a terminal (one `tty` stream) instead of pipes.
    #[serde(default)]
    pub terminal: bool,
    /// Keep stdin open for a `stdin` stream; otherwise stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Nobody will attach (`exec -d`): stdout and stderr are /dev/null, so that the
    /// process never blocks on a pipe nobody reads.
    #[serde(default)]
    pub detached: bool,
    /// `exec --privileged`: every capability (the container's seccomp filter stays).
    /// Only for an exec'd process.
    #[serde(default)]
    pub privileged: bool,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Run one of the agent's own operations instead of `args` (which may then be
    /// empty), confined exactly as a container process: after the namespaces, cgroup,
    /// credentials and capability limits, in place of the exec.
    #[serde(default)]
    pub builtin: Option<Builtin>,
}

/// An operation the agent runs in a container instead of a command (`arca cp`). It
/// exits 0, or 1 with the reason on stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Builtin {
    /// Print `{"kind": "file|dir|symlink|other", "size": N, "mode": N}` (one line) for
    /// `path`, not following a final symlink unless the path ends with `/` (a symlink's
    /// line adds `"target"`, what it points to); "not found" on stderr and exit 1 when
    /// it does not exist.
    Stat {
        /// Absolute path in the container.
        path: String,
    },
    /// Write a tar of `path` to stdout; its top entry is the path's base name, symlinks
    /// are archived as symlinks.
    TarOut {
        /// Absolute path in the container.
        path: String,
    },
    /// Extract a tar from stdin into the existing directory `dir` (modes kept; owners
    /// only with `keep_owners`, else files belong to the container's root; entries with
    /// `..` or an absolute path are refused).
    TarIn {
        /// Absolute path of a directory in the container.
        dir: String,
        /// Keep the archive's uid and gid (`arca cp -a`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_owners: bool,
    },
    /// Wait until stdin closes, then exit 0: the main process of a stopped container
    /// brought up in a sandbox of its own for `arca cp`, which works in it by execs.
    Hold,
}

impl Builtin {
    /// The path it works on (`/` for [`Builtin::Hold`]).
    pub fn path(&self) -> &str {
        match self {
            Builtin::Stat { path } | Builtin::TarOut { path } => path,
            Builtin::TarIn { dir, .. } => dir,
            Builtin::Hold => "/",
        }
    }
}

/// One rlimit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Name as in `ulimit`/Docker: `nofile`, `nproc`, `core`, `stack`, `memlock`, ...
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Checks an id (container or process): 1-128 bytes of `[A-Za-z0-9_.-]`, starting with
/// a letter or digit.
pub fn validate_id(what: &str, id: &str) -> Result<(), AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::new(
            ErrorCode::BadRequest,
            format!(
                "Invalid {what} id {id:?}: use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
            ),
        ))
    }
}

impl ProcessSpec {
    /// Checks what can be checked without the rootfs.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::new(ErrorCode::BadRequest, m));
        let size: usize = self.args.iter().chain(&self.env).map(|a| a.len() + 1).sum();
        if size > MAX_ARGS_AND_ENV {
            return bad(format!(
                "Arguments and environment take {size} bytes; the limit is {MAX_ARGS_AND_ENV}"
            ));
        }
        if let Some(b) = &self.builtin {
            let p = b.path();
            if !p.starts_with('/') || p.contains('\0') || p.len() > 4096 {
                return bad(format!("Builtin path {p:?} is not an absolute path"));
            }
        } else if self.args.is_empty() || self.args[0].is_empty() {
            return bad("No command given".into());
        }
        if let Some(a) = self.args.iter().find(|a| a.contains('\0')) {
            return bad(format!("Argument {a:?} contains a NUL byte"));
        }
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !e.contains('\0') => {}
                _ => return bad(format!("Environment entry {e:?} is not KEY=value")),
            }
        }
        if let Some(cwd) = &self.cwd
            && (!cwd.starts_with('/') || cwd.contains('\0'))
        {
            return bad(format!("Working directory {cwd:?} is not an absolute path"));
        }
        for r in &self.rlimits {
            if rlimit_resource_known(&r.name).is_none() {
                return bad(format!("Unknown rlimit {:?}", r.name));
            }
            if r.soft > r.hard {
                return bad(format!(
                    "Rlimit {}: soft limit {} above hard limit {}",
                    r.name, r.soft, r.hard
                ));
            }
        }
        Ok(())
    }
}

/// Largest total size of a process's arguments and environment (with a NUL each).
pub const MAX_ARGS_AND_ENV: usize = 128 * 1024;

/// Rlimit names this protocol knows, as `RLIMIT_*` numbers on Linux.
pub fn rlimit_resource_known(name: &str) -> Option<u32> {
    Some(match name {
        "cpu" => 0,
        "fsize" => 1,
        "data" => 2,
        "stack" => 3,
        "core" => 4,
        "rss" => 5,
        "nproc" => 6,
        "nofile" => 7,
        "memlock" => 8,
        "as" => 9,
        "locks" => 10,
        "sigpending" => 11,
        "msgqueue" => 12,
        "nice" => 13,
        "rtprio" => 14,
        "rttime" => 15,
        _ => return None,
    })
}

impl ContainerSpec {
    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::new(ErrorCode::BadRequest, m));
        validate_id("container", &self.id)?;
        self.process.validate()?;
        if self.process.privileged {
            return bad(
                "A container's process takes its capabilities from its security, not privileged (which is for exec)".into(),
            );
        }
        if !matches!(self.rootfs.fstype.as_str(), "ext4" | "erofs" | "dir") {
            return bad(format!(
                "Unsupported rootfs type {:?} (use ext4, erofs or dir)",
                self.rootfs.fstype
            ));
        }
        if !self.rootfs.source.starts_with('/') {
            return bad(format!(
                "Rootfs source {:?} is not an absolute path",
                self.rootfs.source
            ));
        }
        if matches!(self.rootfs.writable, WritableLayer::InPlace { .. })
            && self.rootfs.fstype != "dir"
        {
            return bad("A root filesystem used in place must be a directory".into());
        }
        if let WritableLayer::Disk { device, fstype } = &self.rootfs.writable {
            if !device.starts_with("/dev/") || device.contains('\0') || device.contains("..") {
                return bad(format!(
                    "Writable layer device {device:?} is not a path under /dev"
                ));
            }
            if fstype != "ext4" {
                return bad(format!(
                    "Unsupported writable layer filesystem {fstype:?} (use ext4)"
                ));
            }
        }
        if self.mounts.len() > MAX_MOUNTS {
            return bad(format!("More than {MAX_MOUNTS} mounts"));
        }
        if self.security.capabilities.0 & !crate::Capabilities::all().0 != 0 {
            return bad(format!(
                "Unknown capability bits {:#x}",
                self.security.capabilities.0 & !crate::Capabilities::all().0
            ));
        }
        for path in self
            .security
            .masked_paths
            .iter()
            .chain(&self.security.readonly_paths)
        {
            validate_mount_target(path)?;
        }
        if self.security.masked_paths.len() + self.security.readonly_paths.len() > MAX_MOUNTS {
            return bad(format!("More than {MAX_MOUNTS} masked and read-only paths"));
        }
        if let crate::Seccomp::Profile(p) = &self.security.seccomp {
            p.validate()
                .map_err(|e| AgentError::new(ErrorCode::BadRequest, e.to_string()))?;
        }
        for m in &self.mounts {
            validate_mount_target(&m.target)?;
            match &m.source {
                MountSource::Tmpfs { mode, .. } => {
                    if mode.is_some_and(|m| m > 0o7777) {
                        return bad(format!(
                            "Invalid tmpfs mode {:o} for {}",
                            mode.unwrap_or_default(),
                            m.target
                        ));
                    }
                }
                MountSource::Bind { path, .. } => {
                    if !path.starts_with('/') || path.contains('\0') {
                        return bad(format!(
                            "Bind source {path:?} for {} is not an absolute path",
                            m.target
                        ));
                    }
                }
                MountSource::Virtiofs { tag, file } => {
                    if tag.is_empty() || tag.len() > MAX_VIRTIOFS_TAG || tag.contains('\0') {
                        return bad(format!("Invalid virtio-fs tag {tag:?} for {}", m.target));
                    }
                    if let Some(f) = file
                        && (f.is_empty()
                            || f.len() > 255
                            || matches!(f.as_str(), "." | "..")
                            || f.contains(['/', '\0']))
                    {
                        return bad(format!("Invalid virtio-fs file {f:?} for {}", m.target));
                    }
                }
            }
        }
        if self.sysctls.len() > MAX_SYSCTLS {
            return bad(format!("More than {MAX_SYSCTLS} sysctls"));
        }
        for s in &self.sysctls {
            s.check()?;
        }
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 64
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
            if !ok {
                return bad(format!("Invalid hostname {h:?}"));
            }
        }
        let r = &self.resources;
        if r.memory_bytes.is_some_and(|m| m < 4 << 20) {
            return bad("Memory limit below the 4 MiB minimum".into());
        }
        if r.cpu_period_us
            .is_some_and(|p| !(1000..=1_000_000).contains(&p))
        {
            return bad("CPU period must be between 1000 and 1000000 microseconds".into());
        }
        if r.cpu_quota_us.is_some_and(|q| q < 1000) {
            return bad("CPU quota must be at least 1000 microseconds".into());
        }
        if r.pids_max == Some(0) {
            return bad("Pids limit must be at least 1".into());
        }
        if self.interfaces.len() > 8 {
            return bad("More than 8 interfaces".into());
        }
        for i in &self.interfaces {
            if i.name.is_empty()
                || i.name.len() > 15
                || !i
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return bad(format!("Invalid interface name {:?}", i.name));
            }
            if !(1..=32).contains(&i.prefix_len) {
                return bad(format!(
                    "Invalid prefix length /{} for {}",
                    i.prefix_len, i.name
                ));
            }
        }
        if self.dns.len() > 3 {
            return bad("Too many name servers (at most 3)".into());
        }
        validate_host_entries(&self.hosts)
    }
}

impl ExitStatus {
    /// A normal exit.
    pub fn exited(code: i32) -> Self {
        Self {
            code,
            signal: None,
            oom_killed: false,
        }
    }

    /// Death by a signal.
    pub fn signalled(signal: i32) -> Self {
        Self {
            code: 128 + signal,
            signal: Some(signal),
            oom_killed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameDecoder, encode_frame};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "web-1".into(),
            rootfs: Rootfs {
                source: "/dev/vdb".into(),
                fstype: "ext4".into(),
                writable: WritableLayer::Tmpfs,
            },
            process: ProcessSpec {
                args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["A=1".into()],
                ..Default::default()
            },
            hostname: None,
            resources: Resources {
                memory_bytes: Some(64 << 20),
                ..Default::default()
            },
            network: NetworkMode::Isolated,
            init: false,
            interfaces: Vec::new(),
            hosts: Vec::new(),
            dns: Vec::new(),
            mounts: Vec::new(),
            security: Default::default(),
            sysctls: Vec::new(),
        }
    }

    #[test]
    fn only_the_containers_own_sysctls_pass() {
        let sysctl = |name: &str, value: &str| Sysctl {
            name: name.into(),
            value: value.into(),
        };
        let mut s = spec();
        for ok in [
            "net.ipv4.ping_group_range",
            "net.ipv4.conf.all.forwarding",
            "kernel.shmmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "kernel.domainname",
        ] {
            s.sysctls = vec![sysctl(ok, "0 0")];
            s.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(
            sysctl("net.ipv4.ip_forward", "1").proc_path(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert!(sysctl("net.core.somaxconn", "1").needs_own_network());
        assert!(!sysctl("kernel.sem", "1").needs_own_network());
        // Host-wide parameters: a hostile user would change the whole sandbox (with
        // process isolation, the host) for all.
        for (name, value) in [
            ("kernel.pid_max", "1"),
            ("vm.swappiness", "1"),
            ("kernel.hostname", "x"),
            // Names that would walk out of /proc/sys/net, or into another file.
            ("net.ipv4../../kernel.pid_max", "1"),
            ("net.ipv4/../../kernel/pid_max", "1"),
            ("net..ipv4", "1"),
            ("net.", "1"),
            ("", "1"),
            ("net.ipv4.ip_forward", "1\n2"),
            ("net.ipv4.ip_forward", "1\0"),
        ] {
            s.sysctls = vec![sysctl(name, value)];
            assert!(s.validate().is_err(), "{name:?}={value:?} passed");
        }
        s.sysctls = vec![sysctl("kernel.sem", "1"); MAX_SYSCTLS + 1];
        assert!(s.validate().is_err());
        // An older host's spec has none.
        let mut json = serde_json::to_value(spec()).unwrap();
        json.as_object_mut().unwrap().remove("sysctls");
        let back: ContainerSpec = serde_json::from_value(json).unwrap();
        assert!(back.sysctls.is_empty());
    }

    #[test]
    fn builtins_are_tagged_validated_and_optional() {
        let p = ProcessSpec {
            builtin: Some(Builtin::TarIn {
                dir: "/tmp".into(),
                keep_owners: false,
            }),
            stdin: true,
            ..Default::default()
        };
        p.validate().unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json["builtin"],
            serde_json::json!({"kind": "tar_in", "dir": "/tmp"})
        );
        let old: ProcessSpec =
            serde_json::from_str(r#"{"args": ["sh"], "cwd": null, "user": null}"#).unwrap();
        assert_eq!(old.builtin, None);
        for bad in ["tmp", "/a\0b", ""] {
            let p = ProcessSpec {
                builtin: Some(Builtin::Stat { path: bad.into() }),
                ..Default::default()
            };
            assert!(p.validate().is_err(), "{bad:?}");
        }
        let out: Builtin = serde_json::from_str(r#"{"kind": "tar_out", "path": "/etc"}"#).unwrap();
        assert_eq!(
            out,
            Builtin::TarOut {
                path: "/etc".into()
            }
        );
    }

    #[test]
    fn every_message_kind_round_trips_through_a_frame() {
        let requests = vec![
            Request::Ping,
            Request::Create {
                spec: Box::new(spec()),
            },
            Request::Start {
                container: "c".into(),
            },
            Request::Exec {
                container: "c".into(),
                process_id: "e1".into(),
                process: spec().process,
            },
            Request::Wait {
                container: "c".into(),
                process: Some("e1".into()),
            },
            Request::Signal {
                container: "c".into(),
                process: None,
                signal: 15,
            },
            Request::ResizeTty {
                container: "c".into(),
                process: None,
                rows: 24,
                cols: 80,
            },
            Request::Stats {
                container: "c".into(),
            },
            Request::List,
            Request::Top {
                container: "c".into(),
            },
            Request::Freeze {
                container: "c".into(),
                frozen: true,
            },
            Request::Changes {
                container: "c".into(),
                from: 2000,
            },
            Request::Remove {
                container: "c".into(),
                force: true,
            },
            Request::Shutdown,
            Request::Restored(Box::new(RestoredSandbox {
                entropy: vec![7; 32],
                time_ns: 1_700_000_000_000_000_000,
                mac: Some([2, 0, 0, 0, 0, 1]),
                disks: vec![DiskSize {
                    name: "vda".into(),
                    sectors: 2048,
                }],
            })),
        ];
        let mut d = FrameDecoder::new();
        for (id, request) in requests.into_iter().enumerate() {
            let f = RequestFrame {
                id: id as u64,
                request,
            };
            d.push(&encode_frame(&f).unwrap());
            assert_eq!(d.next::<RequestFrame>().unwrap(), Some(f));
        }
        let responses = vec![
            Ok(Reply::Exited {
                status: ExitStatus::signalled(9),
            }),
            Err(AgentError::new(
                ErrorCode::CommandNotFound,
                "no such command",
            )),
            Ok(Reply::Containers {
                containers: vec![ContainerInfo {
                    id: "c".into(),
                    state: ContainerState::Exited,
                    pid: 7,
                    exit: Some(ExitStatus::exited(1)),
                }],
            }),
            Ok(Reply::Processes {
                processes: vec![ProcessInfo {
                    pid: 1,
                    ppid: 0,
                    uid: 1000,
                    started: 1_796_526_123,
                    cpu_ms: 20,
                    tty: "?".into(),
                    cmd: "sleep 1000".into(),
                }],
            }),
        ];
        for (id, result) in responses.into_iter().enumerate() {
            let r = Response {
                id: id as u64,
                result,
            };
            d.push(&encode_frame(&r).unwrap());
            assert_eq!(d.next::<Response>().unwrap(), Some(r));
        }
        let hello = Hello {
            version: crate::PROTOCOL_VERSION,
            channel: Channel::Stdio {
                container: "c".into(),
                process: None,
                stream: StdioStream::Tty,
            },
        };
        d.push(&encode_frame(&hello).unwrap());
        assert_eq!(d.next::<Hello>().unwrap(), Some(hello));
    }

    fn iface(name: &str, prefix_len: u8) -> Interface {
        Interface {
            name: name.into(),
            address: std::net::Ipv4Addr::new(10, 0, 0, 2),
            prefix_len,
            gateway: Some(std::net::Ipv4Addr::new(10, 0, 0, 1)),
        }
    }

    #[test]
    fn specs_with_bad_fields_are_refused_with_the_field_named() {
        assert!(spec().validate().is_ok());
        type Mutation = fn(&mut ContainerSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.id = "../etc".into(), "container id"),
            (|s| s.id = String::new(), "container id"),
            (|s| s.process.args.clear(), "No command"),
            (|s| s.process.env.push("NOEQUALS".into()), "NOEQUALS"),
            (
                |s| s.process.cwd = Some("relative".into()),
                "Working directory",
            ),
            (|s| s.rootfs.fstype = "ntfs".into(), "ntfs"),
            (|s| s.rootfs.source = "disk.img".into(), "absolute"),
            (|s| s.hostname = Some("bad host".into()), "hostname"),
            (
                |s| {
                    s.process
                        .env
                        .push(format!("BIG={}", "x".repeat(MAX_ARGS_AND_ENV)))
                },
                "limit",
            ),
            (|s| s.resources.memory_bytes = Some(1024), "Memory limit"),
            (|s| s.resources.pids_max = Some(0), "Pids"),
            (
                |s| {
                    s.process.rlimits.push(Rlimit {
                        name: "nofile".into(),
                        soft: 10,
                        hard: 5,
                    })
                },
                "soft limit",
            ),
            (
                |s| {
                    s.process.rlimits.push(Rlimit {
                        name: "bogus".into(),
                        soft: 1,
                        hard: 1,
                    })
                },
                "bogus",
            ),
            (
                |s| s.interfaces.push(iface("eth0; rm -rf /", 24)),
                "interface name",
            ),
            (
                |s| s.interfaces.push(iface("averyveryverylongname", 24)),
                "interface name",
            ),
            (|s| s.interfaces.push(iface("eth0", 33)), "/33"),
            (|s| s.interfaces.push(iface("eth0", 0)), "/0"),
            (
                |s| {
                    s.hosts.push(HostEntry {
                        address: std::net::Ipv4Addr::new(10, 0, 0, 2),
                        names: vec!["web\n10.0.0.9 bank".into()],
                    })
                },
                "host name",
            ),
            (
                |s| {
                    s.hosts.push(HostEntry {
                        address: std::net::Ipv4Addr::new(10, 0, 0, 2),
                        names: vec![],
                    })
                },
                "1 to 16 names",
            ),
        ];
        let mut ok = spec();
        ok.interfaces.push(iface("eth0", 24));
        ok.hosts.push(HostEntry {
            address: std::net::Ipv4Addr::new(10, 0, 0, 2),
            names: vec!["web".into(), "web.arca".into()],
        });
        assert!(ok.validate().is_ok());
        for (mutate, needle) in cases {
            let mut s = spec();
            mutate(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(
                e.message.contains(needle),
                "{:?} lacks {needle:?}",
                e.message
            );
        }
    }

    #[test]
    fn datagrams_round_trip_and_oversized_ones_are_refused() {
        let mut wire = Vec::new();
        write_datagram(&mut wire, b"hello").unwrap();
        write_datagram(&mut wire, b"").unwrap();
        assert_eq!(&wire[..2], &[0, 5]);
        let mut r = wire.as_slice();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        assert_eq!(read_datagram(&mut r, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(read_datagram(&mut r, &mut buf).unwrap(), Some(0));
        assert_eq!(read_datagram(&mut r, &mut buf).unwrap(), None);
        assert!(write_datagram(&mut Vec::new(), &vec![0u8; MAX_DATAGRAM + 1]).is_err());
        // A hostile length is refused, not trusted.
        let mut r: &[u8] = &[0xff, 0xff, 1, 2, 3];
        assert!(read_datagram(&mut r, &mut buf).is_err());
        // A frame cut short is an error, not a datagram.
        let mut r: &[u8] = &[0, 9, 1];
        assert!(read_datagram(&mut r, &mut buf).is_err());
    }

    #[test]
    fn exec_errors_map_to_docker_exit_codes() {
        assert_eq!(ErrorCode::CommandNotFound.docker_exit_code(), 127);
        assert_eq!(ErrorCode::CommandNotExecutable.docker_exit_code(), 126);
        assert_eq!(ErrorCode::NotFound.docker_exit_code(), 125);
        assert_eq!(ExitStatus::signalled(9).code, 137);
    }

    /// A hostile client (or a bug) asks for mounts that climb out of the container, sit
    /// on its root or point the writable layer at a host file: refused before anything
    /// is mounted.
    #[test]
    fn hostile_mounts_and_writable_layers_are_refused() {
        for target in [
            "",
            "/",
            "//",
            "rel",
            "/a/../../etc",
            "/a/./b",
            "/..",
            "/a\0b",
        ] {
            let mut s = spec();
            s.mounts.push(Mount {
                target: target.into(),
                source: MountSource::Tmpfs {
                    size: None,
                    mode: None,
                    noexec: false,
                },
                readonly: false,
            });
            let err = s.validate().unwrap_err();
            assert!(
                err.message.contains("Invalid mount target"),
                "{target:?}: {err:?}"
            );
        }
        let mut s = spec();
        s.mounts.push(Mount {
            target: "/data/x".into(),
            source: MountSource::Bind {
                path: "relative".into(),
                nosuid: false,
                nodev: false,
                noexec: false,
            },
            readonly: true,
        });
        assert!(s.validate().is_err());
        for tag in ["", "a\0b", &"t".repeat(MAX_VIRTIOFS_TAG + 1)] {
            let mut s = spec();
            s.mounts.push(Mount {
                target: "/data".into(),
                source: MountSource::Virtiofs {
                    tag: tag.into(),
                    file: None,
                },
                readonly: false,
            });
            let err = s.validate().unwrap_err();
            assert!(err.message.contains("Invalid virtio-fs tag"), "{err:?}");
        }
        for file in ["", ".", "..", "a/b", "../../etc/passwd"] {
            let mut s = spec();
            s.mounts.push(Mount {
                target: "/etc/app.conf".into(),
                source: MountSource::Virtiofs {
                    tag: "arca0".into(),
                    file: Some(file.into()),
                },
                readonly: false,
            });
            let err = s.validate().unwrap_err();
            assert!(err.message.contains("Invalid virtio-fs file"), "{err:?}");
        }
        let mut s = spec();
        s.mounts.push(Mount {
            target: "/tmp".into(),
            source: MountSource::Tmpfs {
                size: Some(1 << 20),
                mode: Some(0o1777),
                noexec: true,
            },
            readonly: false,
        });
        s.validate().unwrap();
        for device in ["/etc/passwd", "/dev/../etc/passwd", "vdb"] {
            let mut s = spec();
            s.rootfs.writable = WritableLayer::Disk {
                device: device.into(),
                fstype: "ext4".into(),
            };
            assert!(s.validate().is_err(), "{device}");
        }
        let mut s = spec();
        s.mounts = (0..=MAX_MOUNTS)
            .map(|i| Mount {
                target: format!("/m{i}"),
                source: MountSource::Tmpfs {
                    size: None,
                    mode: None,
                    noexec: false,
                },
                readonly: false,
            })
            .collect();
        assert!(s.validate().is_err());
    }
}
