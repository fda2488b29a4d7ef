//! The two calls of the jail that Rust cannot make safe: `fork` and `unshare`. Every
//! `unsafe` block of the crate is here.
#![allow(unsafe_code)]

use std::io;

use rustix::process::Pid;
use rustix::thread::UnshareFlags;

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Forked {
    /// The parent, with the child's pid.
    Parent(Pid),
    /// The child.
    Child,
}

/// Forks the calling process, which must be single-threaded (the caller checks).
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: the process is single-threaded (`crate::threads()` was checked by the
    // caller), so the child gets a consistent copy of every lock and allocator state;
    // it returns into ordinary Rust code, as a single-threaded fork child may.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => {
            Ok(Forked::Parent(Pid::from_raw(pid).ok_or_else(|| {
                io::Error::other("fork returned a bad pid")
            })?))
        }
    }
}

/// `unshare(flags)` for namespaces only.
pub(crate) fn unshare_namespaces(flags: UnshareFlags) -> io::Result<()> {
    debug_assert!(!flags.intersects(UnshareFlags::FILES | UnshareFlags::FS));
    // SAFETY: `flags` holds namespace flags only, never CLONE_FILES: no thread ends up
    // with a descriptor table other threads' descriptors are missing from (the
    // hazard `unshare_unsafe` documents). The process is single-threaded anyway.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}
