//! The resolver of an Arca network (Docker's embedded DNS, served as Podman's
//! aardvark-dns serves it: on the network's gateway address, on the host): `arca-agent
//! __dns ADDRESS`, started by the network's `arca __dns`. It answers the names of the containers on the network as they are
//! now (the table its parent writes to its stdin whenever the network changes) and
//! forwards everything else to the upstream servers (a container's `--dns`, else the
//! host's).
//!
//! Every query is a container's and hostile. The process that reads them owns nothing
//! worth taking: once its sockets are bound it is `nobody` with no capability and no
//! way to gain one, under a seccomp allow-list without any call that opens a file or
//! makes a process, alone in one thread. Forwarded queries go out each from a socket of
//! its own connected to the server, so a reply is taken only from that server, on a
//! port the kernel picked, with the query's id. A TCP client is served to its end
//! before the next query (two seconds each way at most).

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dns::{self, Decision, Names};

/// How long an upstream server has to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwarded UDP queries awaiting an answer at once; more are answered SERVFAIL.
const MAX_PENDING: usize = 128;
/// How long a TCP client may take to send its query, and upstream to answer it.
const TCP_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest table line the agent sends.
const MAX_TABLE_LINE: usize = 4 << 20;
/// The user the resolver runs as.
const NOBODY: u32 = 65534;

/// One table, as the parent writes it on the resolver's stdin (a JSON line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The names of the containers on the network, each with its address.
    pub entries: Vec<(Ipv4Addr, Vec<String>)>,
    /// Where other names go.
    pub upstream: Vec<Ipv4Addr>,
    /// Containers with upstream servers of their own (`--dns`), by address.
    #[serde(default)]
    pub clients: Vec<(Ipv4Addr, Vec<Ipv4Addr>)>,
}

/// A forwarded UDP query.
struct Pending {
    socket: UdpSocket,
    client: SocketAddrV4,
    query: Vec<u8>,
    deadline: Instant,
}

/// Entry of `arca-agent __dns ADDRESS`: serves on ADDRESS port 53, tables on stdin,
/// `r` on stdout once listening. Never returns.
pub fn main(address: Option<&str>) -> ! {
    let code = match address
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| io::Error::other("usage: arca-agent __dns IPV4-ADDRESS"))
        .and_then(serve)
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("arca-agent resolver: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve(address: Ipv4Addr) -> io::Result<()> {
    let udp = UdpSocket::bind((address, 53))?;
    let tcp = TcpListener::bind((address, 53))?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let stdin = io::stdin();
    rustix::io::ioctl_fionbio(stdin.as_fd(), true)?;
    jail()?;
    // Listening: the network's containers may start.
    io::stdout().write_all(b"r")?;
    io::stdout().flush()?;
    let mut table = Table::default();
    let mut names = Names::default();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut lines = LineReader::default();
    let mut rotation = 0usize;
    let mut buf = vec![0u8; 4096];
    loop {
        // What to wait for: the agent, both listeners, each forwarded query's socket.
        let mut fds = vec![
            rustix::event::PollFd::new(&stdin, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&udp, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&tcp, rustix::event::PollFlags::IN),
        ];
        for p in &pending {
            fds.push(rustix::event::PollFd::new(
                &p.socket,
                rustix::event::PollFlags::IN,
            ));
        }
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 500_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        // The parent: a newer table, or its end (the network's resolver is done).
        if ready[0] {
            match lines.read(&mut io::stdin().lock()) {
                Ok(Some(new)) => {
                    names = Names::new(&new.entries);
                    table = new;
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(()),
            }
        }
        // Answers from upstream, and queries that waited too long.
        let now = Instant::now();
        let mut i = 0;
        for was_ready in ready.iter().skip(3) {
            let p = &pending[i];
            let done = if *was_ready {
                match p.socket.recv(&mut buf) {
                    Ok(n) if dns::answers(&buf[..n], &p.query) => {
                        let _ = udp.send_to(&buf[..n], p.client);
                        true
                    }
                    // Not its answer (or an ICMP error): it waits on.
                    _ => false,
                }
            } else {
                false
            };
            if done || now > p.deadline {
                pending.remove(i);
            } else {
                i += 1;
            }
        }
        // Queries.
        if ready[1] {
            for _ in 0..64 {
                let Ok((n, std::net::SocketAddr::V4(client))) = udp.recv_from(&mut buf) else {
                    break;
                };
                let query = buf[..n].to_vec();
                match names.decide(&query) {
                    Decision::Answer(reply) => {
                        if !reply.is_empty() {
                            let _ = udp.send_to(&reply, client);
                        }
                    }
                    Decision::Forward => {
                        let forwarded = (pending.len() < MAX_PENDING)
                            .then(|| upstream(&table, *client.ip(), &mut rotation))
                            .flatten()
                            .and_then(|server| forward_udp(server, &query).ok());
                        match forwarded {
                            Some(socket) => pending.push_back(Pending {
                                socket,
                                client,
                                query,
                                deadline: now + UPSTREAM_TIMEOUT,
                            }),
                            None => {
                                let _ = udp.send_to(&dns::error(&query, dns::SERVFAIL), client);
                            }
                        }
                    }
                }
            }
        }
        if ready[2]
            && let Ok((stream, std::net::SocketAddr::V4(client))) = tcp.accept()
        {
            let server = upstream(&table, *client.ip(), &mut rotation);
            let _ = serve_tcp(stream, &names, server);
        }
    }
}

/// The next upstream server of `client`, in turn.
fn upstream(table: &Table, client: Ipv4Addr, rotation: &mut usize) -> Option<Ipv4Addr> {
    let servers = table
        .clients
        .iter()
        .find(|(c, _)| *c == client)
        .map_or(&table.upstream, |(_, s)| s);
    let server = servers.get(*rotation % servers.len().max(1)).copied();
    *rotation = rotation.wrapping_add(1);
    server
}

/// Sends `query` to `server` from a socket of its own.
fn forward_udp(server: Ipv4Addr, query: &[u8]) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect((server, 53))?;
    socket.set_nonblocking(true)?;
    socket.send(query)?;
    Ok(socket)
}

/// One TCP client: a query (two bytes of length, then the message), answered or
/// forwarded over TCP, within [`TCP_TIMEOUT`] each way.
fn serve_tcp(mut stream: TcpStream, names: &Names, server: Option<Ipv4Addr>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
    stream.set_write_timeout(Some(TCP_TIMEOUT))?;
    let query = read_tcp_message(&mut stream)?;
    let reply = match names.decide(&query) {
        Decision::Answer(reply) => reply,
        Decision::Forward => server
            .and_then(|s| forward_tcp(s, &query).ok())
            .unwrap_or_else(|| dns::error(&query, dns::SERVFAIL)),
    };
    if reply.is_empty() {
        return Ok(());
    }
    write_tcp_message(&mut stream, &reply)
}

fn forward_tcp(server: Ipv4Addr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&(server, 53).into(), TCP_TIMEOUT)?;
    s.set_read_timeout(Some(TCP_TIMEOUT))?;
    s.set_write_timeout(Some(TCP_TIMEOUT))?;
    write_tcp_message(&mut s, query)?;
    let reply = read_tcp_message(&mut s)?;
    if dns::answers(&reply, query) {
        Ok(reply)
    } else {
        Err(io::Error::other("not the answer"))
    }
}

fn read_tcp_message(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut message)?;
    Ok(message)
}

fn write_tcp_message(s: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("too long"))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(message);
    s.write_all(&out)
}

/// The agent's tables, a JSON line each, read as they come (non-blocking).
#[derive(Default)]
struct LineReader {
    partial: Vec<u8>,
}

impl LineReader {
    /// The newest whole table read now, if any; `Err` at the end of input (of a
    /// `WouldBlock` kind while more may come).
    fn read(&mut self, input: &mut impl BufRead) -> io::Result<Option<Table>> {
        let mut newest = None;
        loop {
            let chunk = match input.fill_buf() {
                Ok([]) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(c) => c.to_vec(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            input.consume(chunk.len());
            for &b in &chunk {
                if b == b'\n' {
                    if let Ok(t) = serde_json::from_slice::<Table>(&self.partial) {
                        newest = Some(t);
                    }
                    self.partial.clear();
                } else if self.partial.len() < MAX_TABLE_LINE {
                    self.partial.push(b);
                }
            }
        }
        Ok(newest)
    }
}

/// Becomes `nobody` with no capability, no way back, and only the calls serving needs.
fn jail() -> io::Result<()> {
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(
        rustix::process::Gid::from_raw(NOBODY),
        rustix::process::Gid::from_raw(NOBODY),
        rustix::process::Gid::from_raw(NOBODY),
    )?;
    rustix::thread::set_thread_res_uid(
        rustix::process::Uid::from_raw(NOBODY),
        rustix::process::Uid::from_raw(NOBODY),
        rustix::process::Uid::from_raw(NOBODY),
    )?;
    rustix::thread::set_no_new_privs(true)?;
    let program = filter().map_err(io::Error::other)?;
    crate::sys::install_seccomp_filter(&program, false)
}

/// The calls the resolver makes once jailed: sockets of the IPv4 family only, I/O on
/// descriptors it has, memory, time, and exiting. Anything else kills it.
fn filter() -> Result<Vec<libc::sock_filter>, seccompiler::BackendError> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_accept4,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        libc::SYS_getsockname,
        libc::SYS_ioctl,
        libc::SYS_fcntl,
        libc::SYS_close,
        libc::SYS_ppoll,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_poll,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_clock_gettime,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_getrandom,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]
    .into_iter()
    .map(|n| (n, Vec::new()))
    .collect();
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_INET as u64,
        )?])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )?;
    let program: seccompiler::BpfProgram = filter.try_into()?;
    Ok(program
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_arrive_as_lines_and_the_newest_whole_one_wins() {
        let t = |n: u8| Table {
            entries: vec![(Ipv4Addr::new(10, 0, 0, n), vec![format!("c{n}")])],
            upstream: vec![Ipv4Addr::new(8, 8, 8, 8)],
            clients: vec![],
        };
        let mut text = Vec::new();
        for n in [1, 2] {
            text.extend(serde_json::to_vec(&t(n)).unwrap());
            text.push(b'\n');
        }
        text.extend_from_slice(b"{\"entries\":[");
        let mut r = LineReader::default();
        // The reader ends at the end of input: the newest whole table is what it saw.
        let mut input = io::Cursor::new(text);
        assert!(r.read(&mut input).is_err());
        let mut r = LineReader::default();
        let mut text = serde_json::to_vec(&t(2)).unwrap();
        text.extend_from_slice(b"\nnot json\n");
        struct Blocking(io::Cursor<Vec<u8>>);
        impl Read for Blocking {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                match self.0.read(b)? {
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                }
            }
        }
        let mut input = io::BufReader::new(Blocking(io::Cursor::new(text)));
        assert_eq!(r.read(&mut input).unwrap(), Some(t(2)));
        assert_eq!(r.read(&mut input).unwrap(), None);
    }

    #[test]
    fn the_filter_compiles() {
        assert!(!filter().unwrap().is_empty());
    }

    #[test]
    fn upstreams_take_turns_and_a_clients_own_come_first() {
        let own = Ipv4Addr::new(10, 0, 0, 9);
        let t = Table {
            entries: vec![],
            upstream: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)],
            clients: vec![(own, vec![Ipv4Addr::new(10, 0, 0, 53)])],
        };
        let other = Ipv4Addr::new(10, 0, 0, 2);
        let mut r = 0;
        let got: Vec<_> = (0..3)
            .map(|_| upstream(&t, other, &mut r).unwrap())
            .collect();
        assert_eq!(got[0], got[2]);
        assert_ne!(got[0], got[1]);
        assert_eq!(upstream(&t, own, &mut r), Some(Ipv4Addr::new(10, 0, 0, 53)));
        assert_eq!(upstream(&Table::default(), other, &mut r), None);
    }
}
