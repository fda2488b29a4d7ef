//! The few system calls the agent makes outside rustix's safe API. Every `unsafe` block
//! of the agent is in this module.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Result of [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork(2)`. Only for the single-threaded helper process: after a fork in a
/// multi-threaded process the child may only make async-signal-safe calls.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; callers are the
    // single-threaded helper, so the child inherits no lock held by another thread.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Makes `cmd`'s child unshare `unshare_flags` (CLONE_NEW*) and find `sync` at fd 3
/// before it execs.
pub fn pre_exec_unshare_and_pass_fd(cmd: &mut Command, unshare_flags: i32, sync: RawFd) {
    let hook = move || -> io::Result<()> {
        // SAFETY: unshare only takes flags; async-signal-safe.
        if unshare_flags != 0 && unsafe { libc::unshare(unshare_flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: dup2 of an fd the parent keeps open until spawn returns; the new fd 3
        // has no close-on-exec flag, so the helper inherits it. Async-signal-safe.
        if unsafe { libc::dup2(sync, 3) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // Nothing else the agent holds may reach the container: every descriptor above
        // the sync socket closes at exec (the helper binary, open as a close-on-exec
        // memfd, is still reachable by path until then). Kernels before 5.11 lack
        // close_range; the agent opens all its own descriptors close-on-exec anyway.
        // SAFETY: close_range only changes descriptor flags; async-signal-safe.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                4u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if sync == 3 {
            // dup2 to itself leaves FD_CLOEXEC set: clear it.
            // SAFETY: fcntl on fd 3, which is open; async-signal-safe.
            if unsafe { libc::fcntl(3, libc::F_SETFD, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook makes only async-signal-safe system calls (unshare, dup2, fcntl,
    // close_range)
    // and allocates nothing, as a pre-exec hook in a multi-threaded parent must.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Takes ownership of fd 3, which the helper inherits from the agent.
pub fn take_inherited_sync_fd() -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the flags of fd 3 (EBADF if it is not open).
    if unsafe { libc::fcntl(3, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd 3 is open (checked above), was passed to this process for it alone, and
    // nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// A listening `AF_VSOCK` stream socket on `port` of any local CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes only integer arguments.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: addr is a valid sockaddr_vm for the duration of the call and the length
    // passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&fd, 64)?;
    Ok(fd)
}

/// Sets the `IFF_UP` flag of network interface `name` (for loopback).
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags inside `req`, which lives
    // through the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_flags, the union member SIOCGIFFLAGS writes.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `req`, which lives through the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Signals a PID 1 of a container (with `init`) forwards to its child: every signal
/// but SIGCHLD (its own business), SIGKILL and SIGSTOP (which cannot be caught) and the
/// synchronous fault signals, as tini does.
pub fn forwarded_signals() -> Vec<i32> {
    let skip = [
        libc::SIGCHLD,
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGSEGV,
    ];
    let rt = libc::SIGRTMIN()..=libc::SIGRTMAX();
    (1..=libc::SIGRTMAX())
        .filter(|s| !skip.contains(s))
        .filter(|s| *s <= 31 || rt.contains(s))
        .collect()
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&raw mut set) };
    for &s in signals {
        // SAFETY: `set` is initialised; s is a valid signal number.
        unsafe { libc::sigaddset(&raw mut set, s) };
    }
    set
}

/// Blocks `signals` in the calling thread (so `wait_signal` can take them).
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is a valid sigset_t; the old mask is not asked for.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Unblocks every signal in the calling thread.
pub fn unblock_all_signals() -> io::Result<()> {
    let set = sigset(&[]);
    // SAFETY: `set` is a valid (empty) sigset_t.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for one of `signals` (which must be blocked) and returns its number.
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    let set = sigset(signals);
    loop {
        // SAFETY: `set` is valid; the siginfo pointer may be null.
        let sig = unsafe { libc::sigwaitinfo(&raw const set, std::ptr::null_mut()) };
        if sig >= 0 {
            return Ok(sig);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Restores the default action of `signal` (the helper does this before it re-raises
/// the signal that killed its child).
pub fn default_signal_action(signal: i32) {
    // SAFETY: SIG_DFL is always a valid disposition; no handler code is installed.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// `CString` from a string that validation already proved NUL-free.
pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

/// `kill(pid, signal)` for any signal number, real-time ones included.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal a process group",
        ));
    }
    // SAFETY: kill takes only integers; pid > 0 names a single process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unshare(flags)` for namespace flags (CLONE_NEW*) only.
pub fn unshare(flags: i32) -> io::Result<()> {
    const NAMESPACES: i32 = libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET;
    if flags & !NAMESPACES != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a namespace flag",
        ));
    }
    // SAFETY: only namespace flags (checked above): none of them changes what other
    // threads share with this one (no CLONE_FILES/CLONE_FS/CLONE_VM).
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A sealed, close-on-exec memfd holding a copy of this process's executable.
pub fn sealed_copy_of_self() -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "arca-agent",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut exe = std::fs::File::open("/proc/self/exe")?;
    let mut copy = std::fs::File::from(fd);
    io::copy(&mut exe, &mut copy)?;
    let fd = OwnedFd::from(copy);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    // Helpers exec it by its /proc/self/fd path after fd 3 became their sync socket:
    // keep it well above the descriptors the pre-exec hook rearranges.
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 64)?)
}

/// Peeks at an exited child without reaping it: its pid, or `None` if there are no
/// children at all.
pub fn peek_exited_child() -> io::Result<Option<i32>> {
    loop {
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let rc =
            unsafe { libc::waitid(libc::P_ALL, 0, &raw mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            // SAFETY: waitid succeeded with WEXITED, so the kernel filled the SIGCHLD
            // fields of `info`, si_pid among them.
            return Ok(Some(unsafe { info.si_pid() }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// The CID of a connected vsock socket's peer.
pub fn vsock_peer_cid(fd: &OwnedFd) -> io::Result<u32> {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes for the duration of the call and
    // `len` holds the size of `addr`.
    let rc = unsafe { libc::getpeername(fd.as_raw_fd(), (&raw mut addr).cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if i32::from(addr.svm_family) != libc::AF_VSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a vsock peer",
        ));
    }
    Ok(addr.svm_cid)
}

/// Runs `f` on a thread of its own that has moved into the network namespace of process
/// `pid`; sockets it makes stay in that namespace, and the calling thread does not move.
/// Without a `pid`, `f` runs here, in this namespace.
fn in_netns<T: Send + 'static>(
    pid: Option<i32>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let Some(pid) = pid else {
        return f();
    };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f()
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("network namespace thread panicked")))
}

/// Connects to `addr:port` over TCP from the network namespace of process `pid`.
pub fn connect_in_netns(
    pid: Option<i32>,
    addr: std::net::Ipv4Addr,
    port: u16,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    in_netns(pid, move || {
        std::net::TcpStream::connect_timeout(&(addr, port).into(), timeout)
    })
}

/// A UDP socket in the network namespace of process `pid`, connected to `addr:port`.
pub fn udp_in_netns(
    pid: Option<i32>,
    addr: std::net::Ipv4Addr,
    port: u16,
) -> io::Result<std::net::UdpSocket> {
    in_netns(pid, move || {
        let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect((addr, port))?;
        Ok(s)
    })
}

/// A socket for the interface and route ioctls.
fn inet_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?)
}

/// An `ifreq` for interface `name`.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// A `sockaddr` holding an IPv4 address, as the interface ioctls take it.
fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain old data; sockaddr is
    // the generic view of the same bytes the kernel expects.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Gives interface `name` (in this thread's network namespace) `addr/prefix_len` and
/// brings it up.
pub fn configure_interface(name: &str, addr: std::net::Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: SIOCSIFADDR reads `req` (name and address), which lives through the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &raw const req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    req.ifr_ifru.ifru_netmask = sockaddr_in(std::net::Ipv4Addr::from(mask));
    // SAFETY: SIOCSIFNETMASK reads `req` (name and mask), which lives through the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &raw const req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_link_up(name)
}

/// Sets interface `name`'s MAC address.
pub fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: sockaddr is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in addr.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = addr;
    // SAFETY: SIOCSIFHWADDR reads `req` (name and address), which lives through the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &raw const req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Credits `bytes` (from a source the caller trusts) to the kernel's entropy pool and
/// reseeds the kernel's random number generator from it at once.
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")?;
    let len = i32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too much entropy"))?;
    // struct rand_pool_info { int entropy_count (bits); int buf_size (bytes); u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&(len * 8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info: two ints, then buf_size bytes, all
    // inside `info`, which lives through the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the realtime clock to `ns` nanoseconds since the Unix epoch.
pub fn set_time(ns: u64) -> io::Result<()> {
    let when = rustix::time::Timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as _,
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, when)?;
    Ok(())
}

/// Adds a default route through `gateway` (in this thread's network namespace).
pub fn add_default_route(gateway: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    // SAFETY: rtentry is plain old data; all-zero is a valid value (no device name).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    // SAFETY: SIOCADDRT reads `rt`, which lives through the call; rt_dev is null.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &raw const rt) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs a seccomp filter (classic BPF instructions) on the calling thread with
/// `seccomp(SECCOMP_SET_MODE_FILTER)`, without touching `no_new_privs` (unlike
/// seccompiler's `apply_filter`, which sets it): the caller sets it when the container
/// asks for it, and otherwise installs while it still holds `CAP_SYS_ADMIN`.
pub fn install_seccomp_filter(program: &[libc::sock_filter], log: bool) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    let flags: libc::c_ulong = if log {
        libc::SECCOMP_FILTER_FLAG_LOG
    } else {
        0
    };
    // SAFETY: `prog` points at `len` valid instructions that outlive the call; the kernel
    // copies the program and keeps no pointer into our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
