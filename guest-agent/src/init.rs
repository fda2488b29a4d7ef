//! PID 1 duties in the guest: the usual mounts, console, hostname, loopback, readiness
//! marker and power-off.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use rustix::mount::MountFlags;

/// Errors of PID 1 setup.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("Cannot mount {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another setup step failed.
    #[error("Cannot {what}")]
    Step {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Boot debug-port value for "init runs" (see the VMM's debug port).
pub const BOOT_MARKER_INIT: u8 = 0x01;
/// Boot debug-port value the agent writes once it listens.
pub const BOOT_MARKER_AGENT_READY: u8 = 0x02;
const DEBUG_PORT: u64 = 0x3f0;

fn mount(
    fstype: &'static str,
    target: &'static str,
    flags: MountFlags,
    data: Option<&std::ffi::CStr>,
) -> Result<(), InitError> {
    let _ = fs::create_dir_all(target);
    match rustix::mount::mount(fstype, target, fstype, flags, data) {
        Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(InitError::Mount {
            fstype,
            target,
            source: e.into(),
        }),
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and cgroup2, and points stdio at
/// the console.
pub fn setup_pid1() -> Result<(), InitError> {
    use MountFlags as F;
    leave_rootfs().map_err(|source| InitError::Step {
        what: "move off the initramfs root",
        source,
    })?;
    mount("devtmpfs", "/dev", F::NOSUID, None)?;
    if let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let duped = rustix::stdio::dup2_stdin(console.as_fd())
            .and_then(|()| rustix::stdio::dup2_stdout(console.as_fd()))
            .and_then(|()| rustix::stdio::dup2_stderr(console.as_fd()));
        if let Err(e) = duped {
            eprintln!("arca-agent: cannot attach the console: {e}");
        }
        // Without an initial console the open may itself have landed on fd 0-2: keep it.
        if console.as_raw_fd() <= 2 {
            std::mem::forget(console);
        }
    }
    mount("proc", "/proc", F::NOSUID | F::NODEV | F::NOEXEC, None)?;
    mount("sysfs", "/sys", F::NOSUID | F::NODEV | F::NOEXEC, None)?;
    mount(
        "devpts",
        "/dev/pts",
        F::NOSUID | F::NOEXEC,
        Some(c"ptmxmode=0666,mode=0620"),
    )?;
    mount(
        "tmpfs",
        "/dev/shm",
        F::NOSUID | F::NODEV,
        Some(c"mode=1777"),
    )?;
    mount("tmpfs", "/run", F::NOSUID | F::NODEV, Some(c"mode=755"))?;
    mount("tmpfs", "/tmp", F::NOSUID | F::NODEV, Some(c"mode=1777"))?;
    mount(
        "cgroup2",
        "/sys/fs/cgroup",
        F::NOSUID | F::NODEV | F::NOEXEC,
        None,
    )?;
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    crate::sys::set_link_up("lo").map_err(|source| InitError::Step {
        what: "bring up loopback",
        source,
    })?;
    Ok(())
}

/// Makes our root a bind mount of the initramfs instead of the initramfs itself.
///
/// The kernel's initial rootfs has no parent mount, so `pivot_root` cannot leave it:
/// containers could not pivot into their rootfs. A bind mount of it, moved over `/`
/// and chrooted into, is an ordinary mount with a parent, and costs no copying.
fn leave_rootfs() -> io::Result<()> {
    let stage = "/.arca-root";
    fs::create_dir_all(stage)?;
    rustix::mount::mount_bind("/", stage)?;
    rustix::process::chdir(stage)?;
    rustix::mount::mount_move(".", "/")?;
    rustix::process::chroot(".")?;
    rustix::process::chdir("/")?;
    Ok(())
}

/// Sets the sandbox's hostname.
pub fn set_hostname(name: &str) -> Result<(), InitError> {
    rustix::system::sethostname(name.as_bytes()).map_err(|e| InitError::Step {
        what: "set the hostname",
        source: e.into(),
    })
}

/// Writes a boot marker to the VMM's debug port. Best effort: a VMM without the port
/// ignores the write.
pub fn mark(marker: u8) {
    if let Ok(port) = fs::OpenOptions::new().write(true).open("/dev/port") {
        let _ = rustix::io::pwrite(&port, &[marker], DEBUG_PORT);
    }
}

/// Syncs and ends the VM (`reboot=k`: the VMM sees the reset and exits 0).
pub fn power_off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    // reboot(2) does not return on success.
    loop {
        std::thread::park();
    }
}
