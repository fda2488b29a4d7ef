//! The helper: `arca-agent __container-init` and `arca-agent __exec`.
//!
//! The agent is multi-threaded, so it cannot safely set up namespaces and fork in its
//! own process. It spawns a fresh copy of itself instead, with the new namespaces
//! already unshared (see [`crate::container`]), and talks to it over a `SOCK_SEQPACKET`
//! socket at fd 3:
//!
//! 1. agent -> helper: [`ToHelper::Init`] or [`ToHelper::Exec`];
//! 2. the helper forks; the child is PID 1 of the new pid namespace (init) or a process
//!    in the container's namespaces (exec). The helper sends [`FromHelper::Pid`], closes
//!    its copy of the socket and stays behind only to wait for the child and end the
//!    same way (exit code, or the same signal), so the agent sees the child's status;
//! 3. init: the child mounts the rootfs and pivots into it, sends
//!    [`FromHelper::Ready`] and waits for [`ToHelper::Start`];
//! 4. the child drops privileges and execs the command. The socket is close-on-exec:
//!    the agent reading end-of-file means the exec succeeded; a [`FromHelper::Failed`]
//!    carries the error (Docker's 126/127 cases included).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use arca_protocol::{
    AgentError, ContainerSpec, ErrorCode, Mount, MountSource, NetworkMode, Platform, ProcessSpec,
    Security, WritableLayer, parse_kernel_version, rlimit_resource_known,
};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

use crate::seccomp::Filters;
use crate::sys::{self, Forked};
use crate::user;

/// Largest helper message.
const MAX_MESSAGE: usize = 1 << 20;

/// Agent to helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    /// Set up a container under `base` (an empty directory the agent made).
    Init {
        /// The container.
        spec: Box<ContainerSpec>,
        /// Private working directory for the rootfs mounts.
        base: String,
        /// `cgroup.procs` of the container's cgroup. The container's PID 1 joins it; the
        /// helper stays out, so it neither counts against the container's limits nor
        /// can be picked by its OOM killer.
        cgroup_procs: Option<String>,
    },
    /// Run a process in the namespaces of `target_pid`.
    Exec {
        /// The container's init, in the agent's pid namespace.
        target_pid: u32,
        /// The process.
        process: ProcessSpec,
        /// The container's hostname, for `HOSTNAME`.
        hostname: String,
        /// `cgroup.procs` of the container's cgroup, which the process joins.
        cgroup_procs: Option<String>,
        /// The container's confinement, which the process gets too.
        security: Box<Security>,
    },
    /// Exec the container's main process.
    Start,
}

/// Helper to agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromHelper {
    /// The forked child, in the agent's pid namespace.
    Pid {
        /// Its pid.
        pid: u32,
    },
    /// The process's terminal: the pty master travels with this message (SCM_RIGHTS).
    /// The pty lives in the container's own devpts, so `tty` inside names it.
    Terminal,
    /// The overlay's upper directory (its descriptor travels with this message): what
    /// the container writes, for `changes`.
    UpperDir,
    /// The image's (lower) directory, likewise.
    LowerDir,
    /// The container's rootfs and namespaces are ready.
    Ready,
    /// Setup or exec failed; the child exits.
    Failed {
        /// Why.
        error: AgentError,
    },
}

/// Sends one message on a seqpacket socket.
pub fn send<T: Serialize>(fd: BorrowedFd<'_>, msg: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "helper message too large",
        ));
    }
    rustix::net::send(fd, &bytes, rustix::net::SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Sends one message with a file descriptor attached.
fn send_with_fd<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage};
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(&bytes)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and any descriptor sent with it; `None` at end of file (the
/// peer closed or exec'd).
pub fn recv_with_fd<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(io::Error::other)?;
    Ok(Some((msg, fd)))
}

/// Receives one message (dropping any descriptor); `None` at end of file.
pub fn recv<T: for<'de> Deserialize<'de>>(fd: BorrowedFd<'_>) -> io::Result<Option<T>> {
    Ok(recv_with_fd(fd)?.map(|(m, _)| m))
}

/// Opens a pty in the (container's) /dev/ptmx, makes its slave our stdin, stdout and
/// stderr, and sends the master to the agent.
fn open_terminal(sync: &OwnedFd) -> Result<(), AgentError> {
    use rustix::fs::{Mode, OFlags};
    let master = rustix::fs::open(
        "/dev/ptmx",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| internal("Cannot open /dev/ptmx", e))?;
    rustix::pty::grantpt(&master).map_err(|e| internal("grantpt", e))?;
    rustix::pty::unlockpt(&master).map_err(|e| internal("unlockpt", e))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| internal("ptsname", e))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| internal("Cannot open the terminal", e))?;
    let ws = rustix::termios::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(&master, ws);
    rustix::stdio::dup2_stdin(&slave)
        .and_then(|()| rustix::stdio::dup2_stdout(&slave))
        .and_then(|()| rustix::stdio::dup2_stderr(&slave))
        .map_err(|e| internal("Cannot attach the terminal", e))?;
    send_with_fd(sync.as_fd(), &FromHelper::Terminal, master.as_fd())
        .map_err(|e| internal("Cannot pass the terminal to the agent", e))
}

fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Entry point of the helper process. Never returns.
pub fn main(mode: &str) -> ! {
    // Docker's (runc's) umask for everything made in and for the container (its
    // /etc/hosts, working directory, processes), whatever the agent inherited: a host
    // `arca` runs with 077 to keep its state private.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let code = match run(mode) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("arca-agent helper: {e}");
            1
        }
    };
    std::process::exit(code)
}

enum Never {}

fn run(mode: &str) -> io::Result<Never> {
    let sync = sys::take_inherited_sync_fd()?;
    let msg: ToHelper =
        recv(sync.as_fd())?.ok_or_else(|| io::Error::other("agent closed the helper socket"))?;
    match (mode, msg) {
        (
            "__container-init",
            ToHelper::Init {
                spec,
                base,
                cgroup_procs,
            },
        ) => {
            let cgroup = open_cgroup_procs(cgroup_procs.as_deref())?;
            run_init(sync, *spec, base, cgroup)
        }
        (
            "__exec",
            ToHelper::Exec {
                target_pid,
                process,
                hostname,
                cgroup_procs,
                security,
            },
        ) => {
            // Opened before entering the container's mount namespace, where the cgroup
            // tree is namespaced and read-only.
            let cgroup = open_cgroup_procs(cgroup_procs.as_deref())?;
            run_exec(sync, target_pid, process, hostname, cgroup, *security)
        }
        _ => Err(io::Error::other(
            "unexpected first message for this helper mode",
        )),
    }
}

fn open_cgroup_procs(path: Option<&str>) -> io::Result<Option<fs::File>> {
    path.map(|p| fs::OpenOptions::new().write(true).open(p))
        .transpose()
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open.
fn join_cgroup(procs: Option<&fs::File>) -> Result<(), AgentError> {
    if let Some(mut f) = procs {
        use std::io::Write;
        f.write_all(b"0")
            .map_err(|e| internal("Cannot join the container's cgroup", e))?;
    }
    Ok(())
}

fn run_init(
    sync: OwnedFd,
    spec: ContainerSpec,
    base: String,
    cgroup: Option<fs::File>,
) -> io::Result<Never> {
    let hostname = spec.hostname.clone().unwrap_or_else(|| spec.id.clone());
    fork_child(sync, |slot| {
        join_cgroup(cgroup.as_ref())?;
        init_child(slot, &spec, &base, &hostname)
    })
}

/// Forks the process the helper exists for. The parent reports its pid, lets go of the
/// agent socket and ends as the child does; the child runs `child`, and if that fails
/// it reports the error (while it still holds the socket) and exits with Docker's code.
fn fork_child(
    sync: OwnedFd,
    child: impl FnOnce(&mut Option<OwnedFd>) -> Result<Never, AgentError>,
) -> io::Result<Never> {
    match sys::fork()? {
        Forked::Parent(pid) => {
            send(sync.as_fd(), &FromHelper::Pid { pid: pid as u32 })?;
            drop(sync);
            mirror_child(pid)
        }
        Forked::Child => {
            let mut slot = Some(sync);
            let error = match child(&mut slot) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let code = error.code.docker_exit_code();
            if let Some(sync) = &slot {
                let _ = send(sync.as_fd(), &FromHelper::Failed { error });
            }
            std::process::exit(code);
        }
    }
}

fn error_exit_code() -> i32 {
    125
}

fn init_child(
    sync_slot: &mut Option<OwnedFd>,
    spec: &ContainerSpec,
    base: &str,
    hostname: &str,
) -> Result<Never, AgentError> {
    let sync = sync_slot
        .as_ref()
        .ok_or_else(|| internal("helper", "no agent socket"))?;
    die_with_parent()?;
    // A profile that does not compile fails the create, not the start.
    let confinement = Confinement::new(&spec.security)?;
    set_sysctls(&spec.sysctls)?;
    let layers = setup_rootfs(spec, Path::new(base), hostname)?;
    // The agent reads the container's changes through these (`changes`); from here on
    // neither is reachable by path in the container.
    for (message, fd) in [
        (FromHelper::UpperDir, &layers.upper),
        (FromHelper::LowerDir, &layers.lower),
    ] {
        send_with_fd(sync.as_fd(), &message, fd.as_fd())
            .map_err(|e| internal("Cannot report to the agent", e))?;
    }
    drop(layers);
    if spec.process.terminal {
        open_terminal(sync)?;
    }
    rustix::system::sethostname(hostname.as_bytes())
        .map_err(|e| internal("Cannot set the hostname", e))?;
    if spec.network == NetworkMode::Isolated {
        sys::set_link_up("lo").map_err(|e| internal("Cannot bring up loopback", e))?;
    }
    send(sync.as_fd(), &FromHelper::Ready)
        .map_err(|e| internal("Cannot report to the agent", e))?;
    match recv::<ToHelper>(sync.as_fd()) {
        Ok(Some(ToHelper::Start)) => {}
        // The agent gave up on the container.
        _ => std::process::exit(1),
    }
    // The host moved the container's interfaces in between create and start.
    configure_interfaces(&spec.interfaces)?;
    exec_process(&spec.process, hostname, spec.init, &confinement, sync_slot)
}

/// The container's `--sysctl` parameters, through the sandbox's `/proc` before the
/// container's own is mounted: a parameter file resolves to the namespace of whoever
/// opens it, and this process is in the container's namespaces already. Each was
/// checked to be one of the container's own namespaces' ([`arca_protocol::Sysctl::check`]).
fn set_sysctls(sysctls: &[arca_protocol::Sysctl]) -> Result<(), AgentError> {
    for s in sysctls {
        fs::write(s.proc_path(), &s.value).map_err(|e| {
            let code = if e.kind() == io::ErrorKind::NotFound {
                ErrorCode::BadRequest
            } else {
                ErrorCode::Internal
            };
            AgentError::new(
                code,
                format!("Cannot set sysctl {}={}: {e}", s.name, s.value),
            )
        })?;
    }
    Ok(())
}

/// Addresses, link state and default routes of the container's interfaces, in its
/// network namespace.
fn configure_interfaces(interfaces: &[arca_protocol::Interface]) -> Result<(), AgentError> {
    for i in interfaces {
        sys::configure_interface(&i.name, i.address, i.prefix_len).map_err(|e| {
            AgentError::new(
                ErrorCode::Internal,
                format!(
                    "Cannot configure interface {} as {}/{}: {e}",
                    i.name, i.address, i.prefix_len
                ),
            )
        })?;
        if let Some(gw) = i.gateway {
            sys::add_default_route(gw).map_err(|e| {
                AgentError::new(
                    ErrorCode::Internal,
                    format!("Cannot route through {gw} on {}: {e}", i.name),
                )
            })?;
        }
    }
    Ok(())
}

fn run_exec(
    sync: OwnedFd,
    target: u32,
    process: ProcessSpec,
    hostname: String,
    cgroup: Option<fs::File>,
    security: Security,
) -> io::Result<Never> {
    // Open every namespace before entering any: /proc changes with the mount namespace.
    let kinds = [
        ("cgroup", rustix::thread::LinkNameSpaceType::ControlGroup),
        (
            "ipc",
            rustix::thread::LinkNameSpaceType::InterProcessCommunication,
        ),
        (
            "uts",
            rustix::thread::LinkNameSpaceType::HostNameAndNISDomainName,
        ),
        ("net", rustix::thread::LinkNameSpaceType::Network),
        ("pid", rustix::thread::LinkNameSpaceType::ProcessID),
        ("mnt", rustix::thread::LinkNameSpaceType::Mount),
    ];
    let mut fds = Vec::new();
    for (name, kind) in kinds {
        let path = format!("/proc/{target}/ns/{name}");
        match fs::File::open(&path) {
            Ok(f) => fds.push((f, kind)),
            Err(e) => {
                let error = AgentError::new(
                    ErrorCode::InvalidState,
                    format!("Container is not running ({path}: {e})"),
                );
                send(sync.as_fd(), &FromHelper::Failed { error })?;
                std::process::exit(error_exit_code());
            }
        }
    }
    for (f, kind) in &fds {
        if let Err(e) = rustix::thread::move_into_link_name_space(f.as_fd(), Some(*kind)) {
            let error = internal(
                &format!("Cannot enter the container's {kind:?} namespace"),
                e,
            );
            send(sync.as_fd(), &FromHelper::Failed { error })?;
            std::process::exit(error_exit_code());
        }
    }
    drop(fds);
    fork_child(sync, |slot| {
        let mut confinement = Confinement::new(&security)?;
        // `exec --privileged`: every capability, as Docker's; the container's seccomp
        // filter (resolved for the container's own capabilities) still applies.
        if process.privileged {
            confinement.capabilities = rustix::thread::CapabilitySet::from_bits_retain(
                arca_protocol::Capabilities::all().0,
            );
        }
        join_cgroup(cgroup.as_ref())?;
        die_with_parent()?;
        if process.terminal
            && let Some(sync) = slot.as_ref()
        {
            open_terminal(sync)?;
        }
        exec_process(&process, &hostname, false, &confinement, slot)
    })
}

fn die_with_parent() -> Result<(), AgentError> {
    // The child is in another pid namespace than its parent (getppid() reads 0), so a
    // parent that died before this call cannot be detected here; the agent kills the
    // helper's whole cgroup and pid namespace on removal anyway.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| internal("Cannot set the parent-death signal", e))
}

/// Waits for `pid` and ends this process the same way.
fn mirror_child(pid: i32) -> io::Result<Never> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::other("bad pid"))?;
    let status = loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => break status,
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(code) = status.exit_status() {
        std::process::exit(code);
    }
    let sig = status.terminating_signal().unwrap_or(libc::SIGKILL);
    // No core file of the helper for a child's crash.
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    sys::default_signal_action(sig);
    let _ = sys::unblock_all_signals();
    if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), s);
    }
    std::process::exit(128 + sig)
}

fn mount_err(what: &str, target: &Path, e: impl std::fmt::Display) -> AgentError {
    internal(&format!("Cannot mount {what} on {}", target.display()), e)
}

/// The overlay's directories, opened before the pivot.
struct Layers {
    upper: OwnedFd,
    lower: OwnedFd,
}

fn open_dir(path: &Path) -> Result<OwnedFd, AgentError> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| internal(&format!("Cannot open {}", path.display()), e))
}

/// Mounts the container's root filesystem under `base` and pivots into it; the
/// overlay's upper and lower directories, opened before.
fn setup_rootfs(spec: &ContainerSpec, base: &Path, hostname: &str) -> Result<Layers, AgentError> {
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| internal("Cannot make mounts private", e))?;
    rustix::mount::mount(
        "tmpfs",
        base,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        c"mode=700",
    )
    .map_err(|e| mount_err("tmpfs", base, e))?;
    let lower = base.join("lower");
    let root = base.join("rootfs");
    for d in [&lower, &root] {
        fs::create_dir(d).map_err(|e| internal(&format!("Cannot create {}", d.display()), e))?;
    }
    let source = Path::new(&spec.rootfs.source);
    if !source.exists() {
        return Err(AgentError::new(
            ErrorCode::BadRequest,
            format!("Rootfs image {} does not exist", source.display()),
        ));
    }
    let layers = match spec.rootfs.writable {
        // An OCI bundle's root, written in place as runc writes it: no overlay, no
        // /etc files of the agent's (the caller binds its own over them).
        WritableLayer::InPlace { .. } => {
            rustix::mount::mount_bind_recursive(source, &root)
                .map_err(|e| mount_err("the rootfs directory", &root, e))?;
            Layers {
                upper: open_dir(&root)?,
                lower: open_dir(&root)?,
            }
        }
        _ => overlay_root(spec, base, source, &lower, &root)?,
    };
    mount_inside(&root, spec.security.privileged)?;
    for m in &spec.mounts {
        mount_user(&root, m)?;
    }
    pivot(&root)?;
    mask_paths(&spec.security)?;
    let (in_place, read_only) = match spec.rootfs.writable {
        WritableLayer::InPlace { read_only } => (true, read_only),
        WritableLayer::ReadOnly => (false, true),
        _ => (false, false),
    };
    if !in_place {
        write_etc(spec, hostname);
    }
    if read_only {
        rustix::mount::mount_remount("/", MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(|e| internal("Cannot make the rootfs read-only", e))?;
    }
    Ok(layers)
}

/// The image (`source`) mounted read-only on `lower`, and the container's root on
/// `root`: an overlay of its writable layer over `lower`.
fn overlay_root(
    spec: &ContainerSpec,
    base: &Path,
    source: &Path,
    lower: &Path,
    root: &Path,
) -> Result<Layers, AgentError> {
    if spec.rootfs.fstype == "dir" {
        rustix::mount::mount_bind_recursive(source, lower)
            .map_err(|e| mount_err("the rootfs directory", lower, e))?;
        rustix::mount::mount_remount(lower, MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(|e| mount_err("the rootfs read-only", lower, e))?;
    } else {
        rustix::mount::mount(
            source,
            lower,
            spec.rootfs.fstype.as_str(),
            MountFlags::RDONLY,
            None,
        )
        .map_err(|e| {
            AgentError::new(
                ErrorCode::BadRequest,
                format!(
                    "Cannot mount rootfs image {} as {}: {e}",
                    source.display(),
                    spec.rootfs.fstype
                ),
            )
        })?;
    }
    let layer = match &spec.rootfs.writable {
        WritableLayer::Dir { path } => PathBuf::from(path),
        WritableLayer::Disk { device, fstype } => {
            let disk = base.join("disk");
            fs::create_dir(&disk)
                .map_err(|e| internal(&format!("Cannot create {}", disk.display()), e))?;
            rustix::mount::mount(
                device.as_str(),
                &disk,
                fstype.as_str(),
                MountFlags::NOSUID | MountFlags::NODEV,
                None,
            )
            .map_err(|e| {
                AgentError::new(
                    ErrorCode::BadRequest,
                    format!("Cannot mount the writable layer {device} as {fstype}: {e}"),
                )
            })?;
            disk
        }
        // A read-only root still gets a small layer for the mount points and files the
        // container needs (Docker makes them too); it is made read-only below.
        WritableLayer::Tmpfs | WritableLayer::ReadOnly | WritableLayer::InPlace { .. } => {
            base.to_path_buf()
        }
    };
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for d in [&upper, &work] {
        fs::create_dir_all(d)
            .map_err(|e| internal(&format!("Cannot create {}", d.display()), e))?;
    }
    // redirect_dir and metacopy off whatever the kernel's defaults: the upper directory
    // must hold every change whole (a renamed directory's content, a file whose mode
    // alone changed), for `arca diff` and for a build step's layer.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    let opts = sys::cstring(&opts).map_err(|e| internal("Bad overlay options", e))?;
    rustix::mount::mount(
        "overlay",
        root,
        "overlay",
        MountFlags::empty(),
        Some(opts.as_c_str()),
    )
    .map_err(|e| mount_err("overlayfs", root, e))?;
    Ok(Layers {
        upper: open_dir(&upper)?,
        lower: open_dir(lower)?,
    })
}

/// Mounts `m` in the container whose root is `root`. The path to its target is walked
/// one component at a time without following links: the image is untrusted, and a
/// symlink on the way would put the mount anywhere in the sandbox. Missing directories
/// are made (a file for a file bind), as Docker does.
fn mount_user(root: &Path, m: &Mount) -> Result<(), AgentError> {
    use rustix::fs::{Mode, OFlags};
    arca_protocol::validate_mount_target(&m.target)?;
    let source_is_file = match &m.source {
        MountSource::Bind { path, .. } => fs::metadata(path)
            .map_err(|e| {
                AgentError::new(
                    ErrorCode::BadRequest,
                    format!("Bind source {path} for {}: {e}", m.target),
                )
            })?
            .is_file(),
        MountSource::Virtiofs { file, .. } => file.is_some(),
        MountSource::Tmpfs { .. } => false,
    };
    let parts: Vec<&str> = m.target.split('/').filter(|c| !c.is_empty()).collect();
    let mut dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| internal("Cannot open the rootfs", e))?;
    let mut seen = PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        seen.push(part);
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir, *part, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                let made = if last && source_is_file {
                    rustix::fs::openat(
                        &dir,
                        *part,
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .map(drop)
                } else {
                    rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755))
                };
                made.map_err(|e| {
                    internal(
                        &format!("Cannot make the mount point {}", seen.display()),
                        e,
                    )
                })?;
                rustix::fs::openat(&dir, *part, flags, Mode::empty())
                    .map_err(|e| internal(&format!("Cannot open {}", seen.display()), e))?
            }
            Err(e) => return Err(internal(&format!("Cannot open {}", seen.display()), e)),
        };
        let kind = rustix::fs::fstat(&fd)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
            .map_err(|e| internal(&format!("Cannot inspect {}", seen.display()), e))?;
        let fits = match kind {
            rustix::fs::FileType::Directory => !(last && source_is_file),
            rustix::fs::FileType::RegularFile => last && source_is_file,
            _ => false,
        };
        if !fits {
            let what = if kind == rustix::fs::FileType::Symlink {
                "a symlink"
            } else {
                "not a directory"
            };
            return Err(AgentError::new(
                ErrorCode::BadRequest,
                format!(
                    "Cannot mount on {}: the image's {} is {what} (a mount point must be a real {} in the container)",
                    m.target,
                    seen.display(),
                    if source_is_file { "file" } else { "directory" },
                ),
            ));
        }
        dir = fd;
    }
    let target = root.join(m.target.trim_start_matches('/'));
    match &m.source {
        MountSource::Tmpfs { size, mode, noexec } => {
            let mut opts = format!("mode={:o}", mode.unwrap_or(0o1777));
            if let Some(size) = size {
                opts.push_str(&format!(",size={size}"));
            }
            let opts = sys::cstring(&opts).map_err(|e| internal("Bad tmpfs options", e))?;
            let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
            if *noexec {
                flags |= MountFlags::NOEXEC;
            }
            if m.readonly {
                flags |= MountFlags::RDONLY;
            }
            rustix::mount::mount("tmpfs", &target, "tmpfs", flags, Some(opts.as_c_str()))
                .map_err(|e| mount_err("tmpfs", &target, e))?;
        }
        MountSource::Virtiofs { tag, file } => {
            let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
            if m.readonly {
                flags |= MountFlags::RDONLY;
            }
            // A file bind: the share goes beside the rootfs, in the helper's private
            // tmpfs (gone from view once it pivots), and only its file is bound in.
            let (at, file) = match file {
                Some(f) => {
                    let base = root.parent().unwrap_or(root);
                    let stage = base.join(format!("share-{tag}"));
                    fs::create_dir(&stage)
                        .map_err(|e| internal(&format!("Cannot create {}", stage.display()), e))?;
                    (stage, Some(f))
                }
                None => (target.clone(), None),
            };
            rustix::mount::mount(tag.as_str(), &at, "virtiofs", flags, None)
                .map_err(|e| mount_err(&format!("virtio-fs {tag}"), &at, e))?;
            if let Some(f) = file {
                let source = at.join(f);
                let is_file = fs::symlink_metadata(&source).is_ok_and(|m| m.is_file());
                if !is_file {
                    return Err(AgentError::new(
                        ErrorCode::BadRequest,
                        format!("virtio-fs {tag} has no file {f} to mount on {}", m.target),
                    ));
                }
                rustix::mount::mount_bind(&source, &target)
                    .map_err(|e| mount_err(&source.display().to_string(), &target, e))?;
                if m.readonly {
                    rustix::mount::mount_remount(
                        &target,
                        MountFlags::BIND
                            | MountFlags::RDONLY
                            | MountFlags::NOSUID
                            | MountFlags::NODEV,
                        "",
                    )
                    .map_err(|e| mount_err(&format!("{f} read-only"), &target, e))?;
                }
            }
        }
        MountSource::Bind {
            path,
            nosuid,
            nodev,
            noexec,
        } => {
            rustix::mount::mount_bind_recursive(path.as_str(), &target)
                .map_err(|e| mount_err(path, &target, e))?;
            let mut flags = MountFlags::empty();
            for (set, flag) in [
                (m.readonly, MountFlags::RDONLY),
                (*nosuid, MountFlags::NOSUID),
                (*nodev, MountFlags::NODEV),
                (*noexec, MountFlags::NOEXEC),
            ] {
                if set {
                    flags |= flag;
                }
            }
            if !flags.is_empty() {
                rustix::mount::mount_remount(&target, MountFlags::BIND | flags, "")
                    .map_err(|e| mount_err(&format!("{path} with its options"), &target, e))?;
            }
        }
    }
    Ok(())
}

/// Makes sure a mount point of the image is a real directory. A symlink there would
/// send the mount outside the container's root (the image is untrusted).
fn ensure_dir(path: &Path) -> Result<(), AgentError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(AgentError::new(
                ErrorCode::BadRequest,
                format!(
                    "The image's {} is not a directory (a symlink or file where a mount point must be)",
                    path.display()
                ),
            ));
        }
        Err(_) => {}
    }
    fs::create_dir(path).map_err(|e| {
        AgentError::new(
            ErrorCode::BadRequest,
            format!(
                "The image lacks {} and it cannot be made ({e})",
                path.display()
            ),
        )
    })
}

fn mount_inside(root: &Path, privileged: bool) -> Result<(), AgentError> {
    use MountFlags as F;
    let proc_ = root.join("proc");
    ensure_dir(&proc_)?;
    rustix::mount::mount(
        "proc",
        &proc_,
        "proc",
        F::NOSUID | F::NODEV | F::NOEXEC,
        None,
    )
    .map_err(|e| mount_err("proc", &proc_, e))?;

    let dev = root.join("dev");
    ensure_dir(&dev)?;
    rustix::mount::mount(
        "tmpfs",
        &dev,
        "tmpfs",
        F::NOSUID | F::STRICTATIME,
        c"mode=755,size=65536k",
    )
    .map_err(|e| mount_err("tmpfs", &dev, e))?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        let host = Path::new("/dev").join(node);
        fs::File::create(&target)
            .map_err(|e| internal(&format!("Cannot create {}", target.display()), e))?;
        rustix::mount::mount_bind(&host, &target).map_err(|e| mount_err(node, &target, e))?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(|e| internal("Cannot create /dev/pts", e))?;
    rustix::mount::mount(
        "devpts",
        &pts,
        "devpts",
        F::NOSUID | F::NOEXEC,
        c"newinstance,ptmxmode=0666,mode=0620",
    )
    .map_err(|e| mount_err("devpts", &pts, e))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| internal("Cannot create /dev/shm", e))?;
    rustix::mount::mount(
        "shm",
        &shm,
        "tmpfs",
        F::NOSUID | F::NODEV | F::NOEXEC,
        c"mode=1777,size=65536k",
    )
    .map_err(|e| mount_err("tmpfs", &shm, e))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .map_err(|e| internal("Cannot create /dev links", e))?;
    }

    let sys_ = root.join("sys");
    ensure_dir(&sys_)?;
    // Read-only, as Docker mounts it, unless the container is privileged.
    let ro = if privileged { F::empty() } else { F::RDONLY };
    rustix::mount::mount(
        "sysfs",
        &sys_,
        "sysfs",
        F::NOSUID | F::NODEV | F::NOEXEC | ro,
        None,
    )
    .map_err(|e| mount_err("sysfs", &sys_, e))?;
    // The agent put this process in the container's cgroup: a cgroup namespace makes that
    // the root of the container's view.
    sys::unshare(libc::CLONE_NEWCGROUP)
        .map_err(|e| internal("Cannot create a cgroup namespace", e))?;
    let cg = sys_.join("fs/cgroup");
    if cg.is_dir() {
        rustix::mount::mount(
            "cgroup2",
            &cg,
            "cgroup2",
            F::NOSUID | F::NODEV | F::NOEXEC | ro,
            None,
        )
        .map_err(|e| mount_err("cgroup2", &cg, e))?;
    }

    // Docker's masked and read-only /proc paths (none for a privileged container).
    if privileged {
        return Ok(());
    }
    for p in [
        "kcore",
        "keys",
        "timer_list",
        "timer_stats",
        "sched_debug",
        "latency_stats",
    ] {
        let target = proc_.join(p);
        if target.exists() {
            rustix::mount::mount_bind("/dev/null", &target)
                .map_err(|e| mount_err("/dev/null", &target, e))?;
        }
    }
    for target in [
        proc_.join("acpi"),
        proc_.join("asound"),
        proc_.join("scsi"),
        sys_.join("firmware"),
        sys_.join("devices/virtual/powercap"),
    ] {
        if target.is_dir() {
            rustix::mount::mount("tmpfs", &target, "tmpfs", F::RDONLY, None)
                .map_err(|e| mount_err("an empty tmpfs", &target, e))?;
        }
    }
    for p in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let target = proc_.join(p);
        if target.exists() {
            rustix::mount::mount_bind(&target, &target)
                .map_err(|e| mount_err("itself", &target, e))?;
            rustix::mount::mount_remount(&target, F::BIND | F::RDONLY, "")
                .map_err(|e| mount_err("read-only", &target, e))?;
        }
    }
    Ok(())
}

/// An OCI bundle's masked and read-only paths beyond the agent's own (which
/// [`mount_inside`] made), in the container's root: after the pivot, so that a symlink
/// on the way resolves inside it. A path that does not exist is left alone, as runc
/// leaves it.
fn mask_paths(security: &arca_protocol::Security) -> Result<(), AgentError> {
    if security.privileged {
        return Ok(());
    }
    for p in &security.masked_paths {
        let path = Path::new(p);
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                rustix::mount::mount("tmpfs", path, "tmpfs", MountFlags::RDONLY, None)
                    .map_err(|e| mount_err("an empty tmpfs", path, e))?
            }
            Ok(_) => rustix::mount::mount_bind("/dev/null", path)
                .map_err(|e| mount_err("/dev/null", path, e))?,
            Err(_) => {}
        }
    }
    for p in &security.readonly_paths {
        let path = Path::new(p);
        if path.exists() {
            rustix::mount::mount_bind_recursive(path, path)
                .map_err(|e| mount_err("itself", path, e))?;
            rustix::mount::mount_remount(path, MountFlags::BIND | MountFlags::RDONLY, "")
                .map_err(|e| mount_err("read-only", path, e))?;
        }
    }
    Ok(())
}

/// The container's /etc/hosts: localhost, its own name on its first address, and the
/// entries the host gave (other containers on its networks).
fn hosts_file(spec: &ContainerSpec, hostname: &str) -> String {
    let own = spec
        .interfaces
        .first()
        .map_or_else(|| "127.0.1.1".to_string(), |i| i.address.to_string());
    let mut text = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"
    );
    for h in &spec.hosts {
        text.push_str(&format!("{h}\n"));
    }
    text
}

/// Writes /etc/hostname, /etc/hosts and (when name servers are given) /etc/resolv.conf
/// inside the (pivoted) container. The image decides what those paths are: anything
/// but a regular file or nothing (a symlink, a FIFO, a directory) is left alone, never
/// followed or opened blocking.
fn write_etc(spec: &ContainerSpec, hostname: &str) {
    use rustix::fs::{Mode, OFlags};
    let mut files = vec![
        ("/etc/hostname", format!("{hostname}\n")),
        ("/etc/hosts", hosts_file(spec, hostname)),
    ];
    if !spec.dns.is_empty() {
        let servers: String = spec
            .dns
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        files.push(("/etc/resolv.conf", servers));
    }
    if !fs::symlink_metadata("/etc").is_ok_and(|m| m.is_dir()) {
        return;
    }
    for (path, text) in files {
        if fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
            continue;
        }
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::TRUNC
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644)) else {
            continue;
        };
        let regular = rustix::fs::fstat(&fd).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        });
        if regular {
            let _ = rustix::io::write(&fd, text.as_bytes());
        }
    }
}

fn pivot(root: &Path) -> Result<(), AgentError> {
    rustix::process::chdir(root).map_err(|e| internal("Cannot enter the rootfs", e))?;
    rustix::process::pivot_root(".", ".").map_err(|e| {
        if e == rustix::io::Errno::INVAL {
            internal("pivot_root failed (is the agent's root an initramfs? run it from a real root filesystem)", e)
        } else {
            internal("pivot_root failed", e)
        }
    })?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| internal("Cannot detach the old root", e))?;
    rustix::process::chdir("/").map_err(|e| internal("Cannot enter the new root", e))?;
    Ok(())
}

fn rlimit_resource(name: &str) -> Option<rustix::process::Resource> {
    use rustix::process::Resource as R;
    rlimit_resource_known(name)?;
    Some(match name {
        "cpu" => R::Cpu,
        "fsize" => R::Fsize,
        "data" => R::Data,
        "stack" => R::Stack,
        "core" => R::Core,
        "rss" => R::Rss,
        "nproc" => R::Nproc,
        "nofile" => R::Nofile,
        "memlock" => R::Memlock,
        "as" => R::As,
        "locks" => R::Locks,
        "sigpending" => R::Sigpending,
        "msgqueue" => R::Msgqueue,
        "nice" => R::Nice,
        "rtprio" => R::Rtprio,
        "rttime" => R::Rttime,
        _ => return None,
    })
}

/// Applies the process's user, directory, limits and terminal, then execs it. In `init`
/// mode this process stays as a signal-forwarding, zombie-reaping PID 1 and a child
/// execs the command.
fn exec_process(
    process: &ProcessSpec,
    hostname: &str,
    init: bool,
    confinement: &Confinement,
    sync: &mut Option<OwnedFd>,
) -> Result<Never, AgentError> {
    let bad = |m: String| AgentError::new(ErrorCode::BadRequest, m);
    // The container's own files, read as hostile (see `user::read_file`).
    let root = user::own_root().map_err(|e| bad(e.to_string()))?;
    let passwd = user::read_file(root.as_fd(), "etc/passwd").map_err(|e| bad(e.to_string()))?;
    let group = user::read_file(root.as_fd(), "etc/group").map_err(|e| bad(e.to_string()))?;
    drop(root);
    let creds = user::resolve(
        process.user.as_deref(),
        &process.additional_groups,
        &passwd,
        &group,
    )
    .map_err(|e| bad(e.to_string()))?;
    let env = user::process_env(&process.env, hostname, &creds.home, process.terminal);
    if let Some(cwd) = &process.cwd {
        if !Path::new(cwd).is_dir() {
            fs::create_dir_all(cwd)
                .map_err(|e| bad(format!("Cannot create working directory {cwd}: {e}")))?;
            let _ = rustix::fs::chown(
                cwd.as_str(),
                Some(rustix::fs::Uid::from_raw(creds.uid)),
                Some(rustix::fs::Gid::from_raw(creds.gid)),
            );
        }
        rustix::process::chdir(cwd.as_str())
            .map_err(|e| bad(format!("Cannot change to working directory {cwd}: {e}")))?;
    }
    for r in &process.rlimits {
        let res =
            rlimit_resource(&r.name).ok_or_else(|| bad(format!("Unknown rlimit {}", r.name)))?;
        rustix::process::setrlimit(
            res,
            rustix::process::Rlimit {
                current: Some(r.soft),
                maximum: Some(r.hard),
            },
        )
        .map_err(|e| bad(format!("Cannot set rlimit {}: {e}", r.name)))?;
    }
    if process.terminal {
        rustix::process::setsid().map_err(|e| internal("setsid failed", e))?;
        rustix::process::ioctl_tiocsctty(std::io::stdin())
            .map_err(|e| internal("Cannot take the terminal", e))?;
    }
    if init {
        let mut watched: Vec<i32> = sys::forwarded_signals();
        watched.push(libc::SIGCHLD);
        sys::block_signals(&watched).map_err(|e| internal("Cannot block signals", e))?;
        match sys::fork().map_err(|e| internal("fork failed", e))? {
            Forked::Parent(child) => {
                // The init is as confined by seccomp as the container's processes (it
                // needs only waits, signals and exit).
                let confined = set_no_new_privs().and_then(|()| confinement.seccomp());
                // Only the command's process reports to the agent; its exec closes the
                // socket, which tells the agent it runs.
                drop(sync.take());
                if let Err(e) = confined {
                    eprintln!("arca-agent: init: {}", e.message);
                    let _ = sys::kill(child, libc::SIGKILL);
                }
                mini_init(child, &watched)
            }
            Forked::Child => {}
        }
    }
    // As runc: without no_new_privs installing a filter needs CAP_SYS_ADMIN, so it goes
    // on now, while the process still has every capability (the calls below are ones
    // Docker's profile allows); with it, last before the exec.
    if !confinement.no_new_privs {
        confinement.seccomp()?;
    }
    drop_bounding_capabilities(confinement.capabilities)?;
    let groups: Vec<rustix::fs::Gid> = creds
        .groups
        .iter()
        .map(|g| rustix::fs::Gid::from_raw(*g))
        .collect();
    rustix::thread::set_thread_groups(&groups).map_err(|e| internal("setgroups failed", e))?;
    let gid = rustix::fs::Gid::from_raw(creds.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| internal("setgid failed", e))?;
    let uid = rustix::fs::Uid::from_raw(creds.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| internal("setuid failed", e))?;
    // A credential change clears the parent-death signal: arm it again.
    die_with_parent()?;
    limit_capabilities(confinement.capabilities)?;
    if confinement.no_new_privs {
        set_no_new_privs()?;
        confinement.seccomp()?;
    }
    sys::unblock_all_signals().map_err(|e| internal("Cannot unblock signals", e))?;
    if let Some(b) = &process.builtin {
        // No exec will close the socket: closing it here tells the agent the process
        // runs. From here on this process is as confined as the container's own.
        drop(sync.take());
        std::process::exit(crate::builtin::run(b));
    }
    Err(exec_command(&process.args, &env))
}

/// What confines a container's processes, compiled once per container or exec before
/// anything of the container runs.
struct Confinement {
    capabilities: rustix::thread::CapabilitySet,
    no_new_privs: bool,
    filters: Option<Filters>,
}

impl Confinement {
    /// Resolves the seccomp profile for the container's capabilities, this machine's
    /// architecture and kernel (as Docker does), and compiles it.
    fn new(security: &Security) -> Result<Self, AgentError> {
        let bad = |m: String| AgentError::new(ErrorCode::BadRequest, m);
        let filters = match security.seccomp.profile() {
            None => None,
            Some(profile) => {
                let uname = rustix::system::uname();
                let kernel =
                    parse_kernel_version(&uname.release().to_string_lossy()).unwrap_or((0, 0));
                let resolved = profile
                    .resolve(security.capabilities, Platform::native(kernel))
                    .map_err(|e| bad(e.to_string()))?;
                let filters = crate::seccomp::compile(&resolved).map_err(|e| {
                    bad(format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ))
                })?;
                Some(filters)
            }
        };
        Ok(Self {
            capabilities: rustix::thread::CapabilitySet::from_bits_retain(security.capabilities.0),
            no_new_privs: security.no_new_privileges,
            filters,
        })
    }

    /// Installs the seccomp filters (if any) on this thread.
    fn seccomp(&self) -> Result<(), AgentError> {
        match &self.filters {
            Some(f) => f.install().map_err(|e| {
                internal(
                    "Cannot install the seccomp filter",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                )
            }),
            None => Ok(()),
        }
    }
}

fn set_no_new_privs() -> Result<(), AgentError> {
    rustix::thread::set_no_new_privs(true).map_err(|e| internal("Cannot set no_new_privs", e))
}

/// Removes every other capability from the bounding set (needs CAP_SETPCAP, so before
/// the uid changes).
fn drop_bounding_capabilities(keep: rustix::thread::CapabilitySet) -> Result<(), AgentError> {
    let drop = rustix::thread::CapabilitySet::all() - keep;
    for cap in drop.iter() {
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // A capability this kernel does not have.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(internal("Cannot drop capabilities", e)),
        }
    }
    Ok(())
}

/// Limits the effective, permitted and inheritable sets to the container's (a non-root
/// user has none left after setuid) and clears the ambient set.
fn limit_capabilities(keep: rustix::thread::CapabilitySet) -> Result<(), AgentError> {
    let current =
        rustix::thread::capabilities(None).map_err(|e| internal("Cannot read capabilities", e))?;
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: current.effective & keep,
            permitted: current.permitted & keep,
            inheritable: current.inheritable & keep,
        },
    )
    .map_err(|e| internal("Cannot set capabilities", e))?;
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => Ok(()),
        Err(e) => Err(internal("Cannot clear ambient capabilities", e)),
    }
}

/// `execvp` with Docker's error wording: 127 for a missing command, 126 for one that
/// cannot run.
fn exec_command(args: &[String], env: &[String]) -> AgentError {
    let prog = &args[0];
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let candidates: Vec<PathBuf> = if prog.contains('/') {
        vec![PathBuf::from(prog)]
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(prog))
            .collect()
    };
    let mut denied = None;
    for c in &candidates {
        let err = Command::new(c)
            .arg0(prog)
            .args(&args[1..])
            .env_clear()
            .envs(env.iter().filter_map(|e| e.split_once('=')))
            .exec();
        match err.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => {}
            // As Go's LookPath (runc, Docker): a PATH entry that cannot run is skipped;
            // only an explicit path reports 126.
            Some(libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR)
                if prog.contains('/') =>
            {
                denied.get_or_insert((c.clone(), err));
            }
            Some(libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR) => {}
            _ => return internal(&format!("exec {}", c.display()), err),
        }
    }
    match denied {
        Some((c, e)) => AgentError::new(
            ErrorCode::CommandNotExecutable,
            format!("exec: {:?}: {}", c.display().to_string(), io_reason(&e)),
        ),
        None if prog.contains('/') => AgentError::new(
            ErrorCode::CommandNotFound,
            format!("exec: {prog:?}: no such file or directory"),
        ),
        None => AgentError::new(
            ErrorCode::CommandNotFound,
            format!("exec: {prog:?}: executable file not found in $PATH"),
        ),
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => "permission denied".into(),
        Some(libc::ENOEXEC) => "exec format error".into(),
        Some(libc::EISDIR) => "is a directory".into(),
        _ => e.to_string(),
    }
}

/// PID 1 of a container run with `init`: forwards signals to `child`, reaps every
/// zombie, and exits as `child` did.
fn mini_init(child: i32, watched: &[i32]) -> ! {
    loop {
        let sig = match sys::wait_signal(watched) {
            Ok(s) => s,
            Err(_) => std::process::exit(125),
        };
        if sig == libc::SIGCHLD {
            while let Ok(Some((pid, status))) =
                rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG)
            {
                if pid.as_raw_nonzero().get() == child {
                    let code = status
                        .exit_status()
                        .unwrap_or_else(|| 128 + status.terminating_signal().unwrap_or(0));
                    std::process::exit(code);
                }
            }
        } else {
            let _ = sys::kill(child, sig);
        }
    }
}
