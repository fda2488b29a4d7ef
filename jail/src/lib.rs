//! The jail of an `arca-vmm`: what a VMM that a hostile guest took over still holds.
//!
//! The VMM enters it in two steps, so that nothing the guest controls is ever parsed
//! with privilege and nothing it needs has to be reachable by path afterwards:
//!
//! 1. [`fork`], first thing in `main`: the VM's cgroup v2 is made with its limits
//!    (`memory.max`, `cpu.max`, `pids.max`), the process forks into a new pid
//!    namespace, and the child joins the cgroup (before it maps guest memory, which is
//!    then charged to it) and dies with its parent (`PR_SET_PDEATHSIG`). The parent
//!    stays as a [`Supervisor`]: it waits for the child, removes the cgroup and ends
//!    the way the child ended, so whoever started the VMM sees its exit status.
//! 2. [`lock_down`], once the VM is built (KVM, guest memory, TAP, disks, sockets all
//!    open) and before the first guest instruction runs: new mount, ipc, uts, cgroup and
//!    network namespaces; an empty read-only tmpfs as the root (`pivot_root`, the host's
//!    `/` detached); rlimits; an unprivileged uid and gid with no supplementary groups
//!    and no capabilities in any set (bounding, effective, permitted, inheritable,
//!    ambient); not dumpable; `no_new_privs`. The VMM's seccomp filters come after.
//!
//! Every `unsafe` block is in `sys` (`fork`, `unshare`).
#![deny(unsafe_code)]

mod cgroup;
mod sys;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Pid, Resource, Rlimit, Signal, WaitOptions};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

pub use cgroup::{
    Cgroup, CgroupError, CgroupLimits, cgroup2_mount, kill_and_remove_cgroup, remove_cgroup_dir,
};

/// Errors of entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail would run the VMM as root.
    #[error("The jail's uid and gid must not be 0 (root)")]
    RootIds,
    /// The root is not an empty directory.
    #[error("The jail root {0} is not an empty directory")]
    Root(PathBuf),
    /// The process has more than one thread.
    #[error("The jail is entered by a single-threaded process; this one has {0} threads")]
    Threads(usize),
    /// The VM's cgroup cannot be made or joined.
    #[error("Cannot set up the VM's cgroup")]
    Cgroup(#[source] CgroupError),
    /// The supervisor died before the child was tied to it.
    #[error("The jail's supervisor is gone")]
    SupervisorGone,
    /// A system call of the jail failed.
    #[error("Cannot {0}")]
    Sys(&'static str, #[source] io::Error),
}

fn sys(action: &'static str) -> impl FnOnce(rustix::io::Errno) -> JailError {
    move |e| JailError::Sys(action, e.into())
}

/// The jail of one VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// An empty directory, the mount point of the jail's root (an empty read-only
    /// tmpfs, mounted in the VMM's own mount namespace: the host sees the directory
    /// stay empty).
    pub root: PathBuf,
    /// The uid the VMM runs as (not 0).
    pub uid: u32,
    /// The gid the VMM runs as (not 0).
    pub gid: u32,
    /// The VM's cgroup and limits; `None` leaves the VMM in its parent's cgroup.
    pub cgroup: Option<CgroupLimits>,
    /// `RLIMIT_NOFILE`, soft and hard.
    pub nofile: u64,
}

/// The process that called [`fork`], after it: the supervisor outside the pid
/// namespace, or the child to be jailed.
#[derive(Debug)]
pub enum Fork {
    /// The parent: waits for the child.
    Supervisor(Supervisor),
    /// The child: builds the VM, then calls [`lock_down`].
    Child(Child),
}

/// The parent outside the VMM's pid namespace.
#[derive(Debug)]
pub struct Supervisor {
    child: Pid,
    cgroup: Option<Cgroup>,
    // Its closing (the supervisor dying) is how the child knows, see `Child`.
    _alive: OwnedFd,
}

/// How the jailed child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl Supervisor {
    /// The child's pid (as this side of the pid namespace sees it).
    pub fn child(&self) -> Pid {
        self.child
    }

    /// Waits for the child to end, then removes the VM's cgroup.
    pub fn wait(self) -> Result<Ended, JailError> {
        let status = loop {
            match rustix::process::waitpid(Some(self.child), WaitOptions::empty()) {
                Ok(Some((_, status))) => break status,
                Ok(None) | Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(sys("wait for the jailed VMM")(e)),
            }
        };
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove();
        }
        Ok(match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(sig)) => Ended::Signaled(sig),
            (None, None) => Ended::Exited(1),
        })
    }
}

/// Ends the calling process by signal `sig`, without a core dump, the way a child
/// ended; returns the shell's `128 + sig` for an exit code if the signal did not end
/// it (one that is ignored here).
pub fn die_by_signal(sig: i32) -> u8 {
    let _ = rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    if let Some(signal) = Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), signal);
    }
    (128 + sig).clamp(0, 255) as u8
}

/// The child to be jailed.
#[derive(Debug)]
pub struct Child {
    // End of file here means the supervisor is gone.
    supervisor: OwnedFd,
}

/// Step 1: makes the VM's cgroup and forks into a new pid namespace (see the crate
/// documentation). The calling process must be single-threaded.
pub fn fork(config: &JailConfig) -> Result<Fork, JailError> {
    if config.uid == 0 || config.gid == 0 {
        return Err(JailError::RootIds);
    }
    let empty = std::fs::read_dir(&config.root)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(false);
    if !empty {
        return Err(JailError::Root(config.root.clone()));
    }
    let threads = threads();
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    let cgroup = config
        .cgroup
        .as_ref()
        .map(Cgroup::create)
        .transpose()
        .map_err(JailError::Cgroup)?;
    let (alive_read, alive_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(sys("create a pipe"))?;
    sys::unshare_namespaces(UnshareFlags::NEWPID)
        .map_err(|e| JailError::Sys("create a pid namespace", e))?;
    match sys::fork().map_err(|e| JailError::Sys("fork", e))? {
        sys::Forked::Parent(child) => {
            drop(alive_read);
            Ok(Fork::Supervisor(Supervisor {
                child,
                cgroup,
                _alive: alive_write,
            }))
        }
        sys::Forked::Child => {
            drop(alive_write);
            let child = Child {
                supervisor: alive_read,
            };
            child.die_with_supervisor()?;
            if let Some(cgroup) = &cgroup {
                cgroup.join().map_err(JailError::Cgroup)?;
            }
            Ok(Fork::Child(child))
        }
    }
}

impl Child {
    /// Asks for SIGKILL when the supervisor dies, then checks it has not died already
    /// (its end of the pipe closed). A change of uid clears the request, so this runs
    /// again after it.
    fn die_with_supervisor(&self) -> Result<(), JailError> {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
            .map_err(sys("ask to die with the supervisor"))?;
        let mut fds = [rustix::event::PollFd::new(
            &self.supervisor,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            // Readable or hung up: the only writer is gone.
            Ok(n) if n > 0 => Err(JailError::SupervisorGone),
            Ok(_) => Ok(()),
            Err(e) => Err(sys("watch the supervisor")(e)),
        }
    }
}

/// Whether the file at `path` lives in memory (tmpfs or ramfs): pages written to it
/// are memory, charged to the writer's cgroup and never reclaimed to disk.
pub fn is_memory_backed(path: &Path) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::statfs(path).is_ok_and(|s| {
        let kind = s.f_type as u64;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

/// The number of threads of the calling process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Step 2: jails the calling process, the child of [`fork`], for good (see the crate
/// documentation). Descriptors it holds stay usable; nothing on the host is reachable
/// by path afterwards. It must still be single-threaded.
pub fn lock_down(config: &JailConfig, child: &Child) -> Result<(), JailError> {
    // A thread just joined (a virtio-fs watchdog) may still be listed for a moment.
    let mut threads = threads();
    for _ in 0..100 {
        if threads == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        threads = self::threads();
    }
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    // Namespaces: the network one is empty (the TAP was opened before, in the host's),
    // the cgroup one hides the host's cgroup paths.
    sys::unshare_namespaces(
        UnshareFlags::NEWNS
            | UnshareFlags::NEWIPC
            | UnshareFlags::NEWUTS
            | UnshareFlags::NEWNET
            | UnshareFlags::NEWCGROUP,
    )
    .map_err(|e| JailError::Sys("create the jail's namespaces", e))?;
    enter_empty_root(&config.root)?;
    limit_resources(config.nofile)?;
    drop_privileges(config.uid, config.gid)?;
    child.die_with_supervisor()?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(sys("make the VMM non-dumpable"))?;
    rustix::thread::set_no_new_privs(true).map_err(sys("set no_new_privs"))?;
    Ok(())
}

/// Mounts an empty tmpfs on `root` in this (new, private) mount namespace, makes it
/// the root, detaches the host's and makes the new one read-only.
fn enter_empty_root(root: &Path) -> Result<(), JailError> {
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(sys("make the jail's mounts private"))?;
    let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rustix::mount::mount(
        "arca-jail",
        root,
        "tmpfs",
        hardened,
        c"size=4k,nr_inodes=4,mode=0555",
    )
    .map_err(sys("mount the jail's root"))?;
    rustix::process::chdir(root).map_err(sys("enter the jail's root"))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one, and goes.
    rustix::process::pivot_root(".", ".").map_err(sys("pivot into the jail's root"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(sys("detach the host's root"))?;
    rustix::process::chdir("/").map_err(sys("enter the jail's root"))?;
    rustix::mount::mount_remount("/", hardened | MountFlags::RDONLY, "")
        .map_err(sys("make the jail's root read-only"))?;
    Ok(())
}

/// Open files sized for the VMM (vsock connections), no core dumps.
fn limit_resources(nofile: u64) -> Result<(), JailError> {
    for (resource, value, what) in [
        (Resource::Nofile, nofile, "limit open files"),
        (Resource::Core, 0, "disable core dumps"),
    ] {
        rustix::process::setrlimit(
            resource,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
        .map_err(sys(what))?;
    }
    Ok(())
}

/// Becomes `uid`/`gid` with no supplementary groups and no capabilities left in any
/// set. (The process is single-threaded, so the thread-level id calls are process
/// wide.)
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // The bounding set first: emptying it needs CAP_SETPCAP.
    for cap in CapabilitySet::all().iter() {
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // A capability this kernel does not have.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(sys("empty the capability bounding set")(e)),
        }
    }
    rustix::thread::set_thread_groups(&[]).map_err(sys("drop supplementary groups"))?;
    let gid = rustix::process::Gid::from_raw(gid);
    let uid = rustix::process::Uid::from_raw(uid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(sys("change the gid"))?;
    // From uid 0 to another, the kernel clears the permitted and effective sets.
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(sys("change the uid"))?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(sys("clear capabilities"))?;
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(sys("clear the ambient capabilities")(e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn tmpfs_is_memory_backed_and_proc_is_not() {
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts")
            && let Some(tmpfs) = mounts
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2] == "tmpfs")
        {
            assert!(is_memory_backed(Path::new(tmpfs[1])), "{}", tmpfs[1]);
        }
        assert!(!is_memory_backed(Path::new("/proc")));
    }

    #[test]
    fn root_ids_and_a_non_empty_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = JailConfig {
            root: dir.path().to_path_buf(),
            uid: 0,
            gid: 1000,
            cgroup: None,
            nofile: 64,
        };
        assert!(matches!(fork(&config), Err(JailError::RootIds)));
        std::fs::write(dir.path().join("x"), "").unwrap();
        let config = JailConfig {
            uid: 1000,
            ..config
        };
        assert!(matches!(fork(&config), Err(JailError::Root(_))));
    }

    #[test]
    fn a_multi_threaded_process_cannot_fork_into_the_jail() {
        // The test harness runs tests on threads of their own.
        let dir = tempfile::tempdir().unwrap();
        let config = JailConfig {
            root: dir.path().to_path_buf(),
            uid: 1000,
            gid: 1000,
            cgroup: None,
            nofile: 64,
        };
        assert!(matches!(fork(&config), Err(JailError::Threads(n)) if n > 1));
    }

    /// A hostile VMM tries, from inside the jail: to read or write the host's files,
    /// to regain root or capabilities, to gain privileges through exec. The jail runs
    /// in a forked child of this (multi-threaded) test process, which is
    /// single-threaded as the jail requires; the child reports each check as a bit of
    /// its exit code.
    #[test]
    #[allow(unsafe_code)]
    fn a_jailed_process_holds_no_privilege_and_sees_no_host_file() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("jail");
        std::fs::create_dir(&root).unwrap();
        let config = JailConfig {
            root,
            uid: 64064,
            gid: 64064,
            cgroup: None,
            nofile: 128,
        };
        // SAFETY: the child only makes system calls and allocates (glibc's allocator
        // is fork-safe), then leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match fork(&config) {
                Ok(Fork::Supervisor(s)) => match s.wait() {
                    Ok(Ended::Exited(code)) => code,
                    _ => 255,
                },
                Ok(Fork::Child(child)) => match lock_down(&config, &child) {
                    Ok(()) => jailed_checks(),
                    Err(e) => {
                        eprintln!("lock_down: {e:?}");
                        254
                    }
                },
                Err(e) => {
                    eprintln!("fork: {e:?}");
                    253
                }
            };
            // SAFETY: leaves the forked child at once, running no destructor or
            // handler of the test process.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "failed checks (bits: 1 uid, 2 gid, 4 caps, 8 root not empty, 16 root writable, \
             32 no_new_privs, 64 /etc readable, 128 pid not 1)"
        );
        // The host's view of the jail directory stays empty.
        assert_eq!(std::fs::read_dir(&config.root).unwrap().count(), 0);
    }

    /// What a jailed process checks about itself; 0 when all hold.
    fn jailed_checks() -> i32 {
        let mut failed = 0;
        if rustix::process::getuid().as_raw() != 64064
            || rustix::process::geteuid().as_raw() != 64064
        {
            failed |= 1;
        }
        if rustix::process::getgid().as_raw() != 64064
            || !rustix::process::getgroups().unwrap_or_default().is_empty()
        {
            failed |= 2;
        }
        let caps = rustix::thread::capabilities(None).ok();
        let bounding_empty = CapabilitySet::all()
            .iter()
            .all(|c| rustix::thread::capability_is_in_bounding_set(c) != Ok(true));
        if caps.is_none_or(|c| {
            !c.effective.is_empty() || !c.permitted.is_empty() || !c.inheritable.is_empty()
        }) || !bounding_empty
        {
            failed |= 4;
        }
        if std::fs::read_dir("/").map_or(true, |mut d| d.next().is_some()) {
            failed |= 8;
        }
        if std::fs::write("/x", "x").is_ok() {
            failed |= 16;
        }
        if rustix::thread::no_new_privs() != Ok(true) {
            failed |= 32;
        }
        if std::fs::read("/etc/passwd").is_ok() || std::fs::read("/../etc/passwd").is_ok() {
            failed |= 64;
        }
        if rustix::process::getpid().as_raw_nonzero().get() != 1 {
            failed |= 128;
        }
        failed
    }
}
