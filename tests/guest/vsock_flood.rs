//! What a hostile guest tries against the VMM's vsock muxer, in the hostile-guest table:
//! `vsock-flood connect COUNT PORT HOLD_SECS`: from inside a microVM, opens COUNT vsock
//! stream connections to the host (CID 2) on PORT, holds those that were accepted for
//! HOLD_SECS, and prints `connected=N refused=M`.
//! `vsock-flood listen PATH`: the host side, a Unix listener at PATH (the VMM forwards a
//! guest's connection to port P to `<vsock socket>_P`) that accepts and holds every
//! connection. Built with `rustc -C target-feature=+crt-static` like udp_echo.rs.

use std::os::unix::net::UnixListener;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const RLIMIT_NOFILE: i32 = 7;

#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

#[repr(C)]
struct Rlimit {
    cur: u64,
    max: u64,
}

unsafe extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn close(fd: i32) -> i32;
    fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
}

fn raise_fd_limit() {
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut r) == 0 {
            r.cur = r.max;
            setrlimit(RLIMIT_NOFILE, &r);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("connect") if args.len() == 5 => {
            let count: usize = args[2].parse().expect("COUNT");
            let port: u32 = args[3].parse().expect("PORT");
            let hold: u64 = args[4].parse().expect("HOLD_SECS");
            raise_fd_limit();
            let addr = SockaddrVm {
                family: AF_VSOCK as u16,
                reserved: 0,
                port,
                cid: 2,
                flags: 0,
                zero: [0; 3],
            };
            let (mut held, mut refused) = (Vec::new(), 0);
            for _ in 0..count {
                // SAFETY: a new socket, connected to a valid address, closed on failure.
                let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) };
                if fd < 0 {
                    refused += 1;
                    continue;
                }
                // SAFETY: as above.
                let rc = unsafe { connect(fd, &addr, std::mem::size_of::<SockaddrVm>() as u32) };
                if rc == 0 {
                    held.push(fd);
                } else {
                    refused += 1;
                    // SAFETY: our own fd.
                    unsafe { close(fd) };
                }
            }
            println!("connected={} refused={refused}", held.len());
            std::thread::sleep(std::time::Duration::from_secs(hold));
        }
        Some("listen") if args.len() == 3 => {
            raise_fd_limit();
            let _ = std::fs::remove_file(&args[2]);
            let listener = UnixListener::bind(&args[2]).expect("bind");
            let mut held = Vec::new();
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => held.push(c),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
        _ => {
            eprintln!("usage: vsock-flood connect COUNT PORT HOLD_SECS | listen PATH");
            std::process::exit(2);
        }
    }
}
