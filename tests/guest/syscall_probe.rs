//! `syscall-probe NAME...`: makes each named system call the way a hostile container
//! process would and prints `NAME=ok` or `NAME=ERRNO_NAME`, one per line. Built static by
//! `tests/guest/mkrootfs` (plain `rustc`, no crates) into the busybox test image, so the
//! e2e tables can check the container seccomp filter in both isolations.
//!
//! Probes (x86_64 numbers): `unshare` (CLONE_NEWUSER), `keyctl` (get the session
//! keyring), `add_key` (a user key), `request_key`, `bpf` (BPF_MAP_CREATE with a null
//! attribute), `mount` (a tmpfs on /mnt), `userfaultfd`, `clone3` (a zero size),
//! `vsock` (socket(AF_VSOCK)), `ptrace` (PTRACE_TRACEME is harmless), `personality`
//! (PER_LINUX32, allowed), `getpid`.

use std::ffi::{c_char, c_int, c_long};

unsafe extern "C" {
    fn syscall(number: c_long, ...) -> c_long;
    fn __errno_location() -> *mut c_int;
}

const ERRNO_NAMES: &[(c_int, &str)] = &[
    (1, "EPERM"),
    (2, "ENOENT"),
    (9, "EBADF"),
    (12, "ENOMEM"),
    (13, "EACCES"),
    (14, "EFAULT"),
    (16, "EBUSY"),
    (19, "ENODEV"),
    (22, "EINVAL"),
    (38, "ENOSYS"),
    (95, "EOPNOTSUPP"),
    (97, "EAFNOSUPPORT"),
    (126, "ENOKEY"),
];

fn outcome(rc: c_long) -> String {
    if rc >= 0 {
        return "ok".into();
    }
    // SAFETY: glibc's errno location is valid for the calling thread.
    let errno = unsafe { *__errno_location() };
    ERRNO_NAMES
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| format!("E{errno}"))
}

fn probe(name: &str) -> Option<c_long> {
    let s = |t: &[u8]| t.as_ptr() as *const c_char;
    // SAFETY (every call): raw system calls with integer arguments, null pointers or
    // pointers to static nul-terminated strings; none writes to our memory.
    Some(unsafe {
        match name {
            "unshare" => syscall(272, 0x1000_0000 as c_long),
            "keyctl" => syscall(250, 0 as c_long, -3 as c_long, 0 as c_long),
            "add_key" => syscall(248, s(b"user\0"), s(b"probe\0"), s(b"v\0"), 1 as c_long, -3 as c_long),
            "request_key" => syscall(249, s(b"user\0"), s(b"probe\0"), 0 as c_long, -3 as c_long),
            "bpf" => syscall(321, 0 as c_long, 0 as c_long, 0 as c_long),
            "mount" => syscall(165, s(b"probe\0"), s(b"/mnt\0"), s(b"tmpfs\0"), 0 as c_long, 0 as c_long),
            "userfaultfd" => syscall(323, 0 as c_long),
            "clone3" => syscall(435, 0 as c_long, 0 as c_long),
            "vsock" => syscall(41, 40 as c_long, 1 as c_long, 0 as c_long),
            "ptrace" => syscall(101, 0 as c_long, 0 as c_long, 0 as c_long, 0 as c_long),
            "personality" => syscall(135, 0x0008 as c_long),
            "getpid" => syscall(39),
            _ => return None,
        }
    })
}

fn main() {
    let mut bad = false;
    for name in std::env::args().skip(1) {
        match probe(&name) {
            Some(rc) => println!("{name}={}", outcome(rc)),
            None => {
                eprintln!("syscall-probe: unknown probe {name}");
                bad = true;
            }
        }
    }
    std::process::exit(i32::from(bad));
}
