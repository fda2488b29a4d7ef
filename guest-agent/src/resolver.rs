//! The resolver of an Arca network (Docker's embedded DNS, served as Podman's
//! aardvark-dns serves it: on the network's gateway, on the host): `arca-agent __dns
//! ADDRESS PORT NETWORK`, started by the network's `arca __dns`, listening on
//! ADDRESS:PORT, where the network's rules send what containers send to ADDRESS:53. It
//! answers the names of the containers on the network as they are now (the table its
//! parent writes to its stdin whenever the network changes) and forwards everything else
//! to the upstream servers (a container's `--dns`, else the host's).
//!
//! Every query is a container's and hostile. The process that reads them owns nothing
//! worth taking: once its sockets are bound it is `nobody` with no capability and no
//! way to gain one, under a seccomp allow-list without any call that opens a file or
//! makes a process, alone in one thread that never blocks: every socket is non-blocking
//! and every exchange has a deadline. Only clients in NETWORK (the gateway aside) are
//! served; a response is never answered. Forwarded queries go out each from a socket of
//! its own connected to the server, so a reply is taken only from that server, on a port
//! the kernel picked, with the query's id; at most [`MAX_PENDING`] at once, and
//! [`MAX_PENDING_PER_CLIENT`] per client. A TCP client has [`TCP_TIMEOUT`] in all to
//! send its query and take its answer; at most [`MAX_TCP`] at once, and
//! [`MAX_TCP_PER_CLIENT`] per client.

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
/// ... of which one client may have.
const MAX_PENDING_PER_CLIENT: usize = 16;
/// How long a TCP client has in all, to send its query and take its answer (a
/// forwarded one included).
const TCP_TIMEOUT: Duration = Duration::from_secs(4);
/// TCP clients at once, and per client; more are closed at once.
const MAX_TCP: usize = 64;
const MAX_TCP_PER_CLIENT: usize = 4;
/// The largest message read: a UDP datagram, or a TCP message (its length is 16 bits).
const MAX_MESSAGE: usize = 65535;
/// The longest table line the parent sends.
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

/// Who may ask: the network's addresses but its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    subnet: u32,
    mask: u32,
    gateway: Ipv4Addr,
}

impl Served {
    fn allows(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask == self.subnet && a != self.gateway
    }
}

/// A forwarded UDP query.
struct Pending {
    socket: UdpSocket,
    client: SocketAddrV4,
    query: Vec<u8>,
    deadline: Instant,
}

/// A TCP message on a non-blocking stream: what is left to write, then the framed
/// message to read (two bytes of length, then that many).
struct Framed {
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
}

impl Framed {
    fn new(stream: TcpStream, message: Option<&[u8]>) -> Self {
        let mut f = Self {
            stream,
            out: Vec::new(),
            written: 0,
            input: Vec::new(),
        };
        if let Some(m) = message {
            f.send(m);
        }
        f
    }

    fn send(&mut self, message: &[u8]) {
        let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
        self.out = len.to_be_bytes().to_vec();
        self.out.extend_from_slice(&message[..usize::from(len)]);
        self.written = 0;
    }

    /// Whether it waits to write (else to read).
    fn writing(&self) -> bool {
        self.written < self.out.len()
    }

    /// Writes and reads what it can now; the message read once whole.
    fn progress(&mut self) -> io::Result<Option<Vec<u8>>> {
        while self.writing() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let mut buf = [0u8; 4096];
        loop {
            let want = match self.input.len() {
                n if n < 2 => 2 - n,
                n => 2 + usize::from(u16::from_be_bytes([self.input[0], self.input[1]])) - n,
            };
            if want == 0 {
                let message = self.input.split_off(2);
                self.input.clear();
                return Ok(Some(message));
            }
            match self.stream.read(&mut buf[..want.min(4096)]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A TCP client: its query read, maybe forwarded upstream, its answer written.
struct TcpClient {
    peer: Ipv4Addr,
    client: Framed,
    upstream: Option<(Framed, Vec<u8>)>,
    deadline: Instant,
}

/// Entry of `arca-agent __dns ADDRESS PORT NETWORK`. Never returns.
pub fn main(args: &[String]) -> ! {
    let parsed = (|| {
        let [address, port, network] = args else {
            return None;
        };
        let (subnet, len) = network.split_once('/')?;
        let len: u32 = len.parse().ok().filter(|l| (8..=30).contains(l))?;
        let mask = u32::MAX << (32 - len);
        let gateway: Ipv4Addr = address.parse().ok()?;
        Some((
            gateway,
            port.parse::<u16>().ok()?,
            Served {
                subnet: u32::from(subnet.parse::<Ipv4Addr>().ok()?) & mask,
                mask,
                gateway,
            },
        ))
    })();
    let code = match parsed
        .ok_or_else(|| io::Error::other("usage: arca-agent __dns ADDRESS PORT SUBNET/LEN"))
        .and_then(|(address, port, served)| serve(address, port, served))
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("arca-agent resolver: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve(address: Ipv4Addr, port: u16, served: Served) -> io::Result<()> {
    let udp = UdpSocket::bind((address, port))?;
    let tcp = TcpListener::bind((address, port))?;
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
    let mut clients: Vec<TcpClient> = Vec::new();
    let mut lines = LineReader::default();
    let mut rotation = 0usize;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        // What to wait for: the parent, both listeners, each forwarded query's socket,
        // each TCP exchange.
        use rustix::event::{PollFd, PollFlags};
        let mut fds = vec![
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::new(&udp, PollFlags::IN),
            PollFd::new(&tcp, PollFlags::IN),
        ];
        for p in &pending {
            fds.push(PollFd::new(&p.socket, PollFlags::IN));
        }
        for c in &clients {
            let f = c.upstream.as_ref().map_or(&c.client, |(u, _)| u);
            let flags = if f.writing() {
                PollFlags::OUT
            } else {
                PollFlags::IN
            };
            fds.push(PollFd::new(&f.stream, flags));
        }
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
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
        let now = Instant::now();
        // Answers from upstream, and queries that waited too long.
        let (from_pending, from_tcp) = ready[3..].split_at(pending.len());
        let mut i = 0;
        for was_ready in from_pending {
            let p = &pending[i];
            let done = *was_ready
                && match p.socket.recv(&mut buf) {
                    Ok(n) if dns::answers(&buf[..n], &p.query) => {
                        let _ = udp.send_to(&buf[..n], p.client);
                        true
                    }
                    // Not its answer (or an ICMP error): it waits on.
                    _ => false,
                };
            if done || now > p.deadline {
                pending.remove(i);
            } else {
                i += 1;
            }
        }
        // TCP exchanges that can go on, and those out of time.
        let mut i = 0;
        for was_ready in from_tcp {
            let keep = now <= clients[i].deadline
                && (!*was_ready || tcp_step(&mut clients[i], &names, &table, &mut rotation));
            if keep {
                i += 1;
            } else {
                clients.remove(i);
            }
        }
        // Queries.
        if ready[1] {
            for _ in 0..64 {
                let Ok((n, std::net::SocketAddr::V4(client))) = udp.recv_from(&mut buf) else {
                    break;
                };
                if !served.allows(*client.ip()) {
                    continue;
                }
                let query = buf[..n].to_vec();
                match names.decide(&query) {
                    Decision::Answer(reply) => {
                        if !reply.is_empty() {
                            let _ = udp.send_to(&reply, client);
                        }
                    }
                    Decision::Forward => {
                        let theirs = pending
                            .iter()
                            .filter(|p| p.client.ip() == client.ip())
                            .count();
                        let forwarded = (pending.len() < MAX_PENDING
                            && theirs < MAX_PENDING_PER_CLIENT)
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
        if ready[2] {
            for _ in 0..16 {
                let Ok((stream, std::net::SocketAddr::V4(peer))) = tcp.accept() else {
                    break;
                };
                let peer = *peer.ip();
                let theirs = clients.iter().filter(|c| c.peer == peer).count();
                if !served.allows(peer)
                    || clients.len() >= MAX_TCP
                    || theirs >= MAX_TCP_PER_CLIENT
                    || stream.set_nonblocking(true).is_err()
                {
                    continue;
                }
                clients.push(TcpClient {
                    peer,
                    client: Framed::new(stream, None),
                    upstream: None,
                    deadline: now + TCP_TIMEOUT,
                });
            }
        }
    }
}

/// Moves a TCP exchange on; whether it goes on.
fn tcp_step(c: &mut TcpClient, names: &Names, table: &Table, rotation: &mut usize) -> bool {
    if let Some((up, query)) = &mut c.upstream {
        match up.progress() {
            Ok(None) => return true,
            Ok(Some(reply)) => {
                let reply = if dns::answers(&reply, query) {
                    reply
                } else {
                    dns::error(query, dns::SERVFAIL)
                };
                c.client.send(&reply);
                c.upstream = None;
            }
            Err(_) => {
                let failed = dns::error(query, dns::SERVFAIL);
                c.client.send(&failed);
                c.upstream = None;
            }
        }
    }
    match c.client.progress() {
        // Reading its query, or writing its answer; done once that is written whole.
        Ok(None) => c.client.writing() || c.client.out.is_empty(),
        Ok(Some(query)) => match names.decide(&query) {
            Decision::Answer(reply) if reply.is_empty() => false,
            Decision::Answer(reply) => {
                c.client.send(&reply);
                c.client.progress().is_ok() && c.client.writing()
            }
            Decision::Forward => {
                match upstream(table, c.peer, rotation).and_then(|s| connect_tcp(s).ok()) {
                    Some(stream) => {
                        c.upstream = Some((Framed::new(stream, Some(&query)), query));
                        true
                    }
                    None => {
                        c.client.send(&dns::error(&query, dns::SERVFAIL));
                        c.client.progress().is_ok() && c.client.writing()
                    }
                }
            }
        },
        Err(_) => false,
    }
}

/// A non-blocking TCP connection to `server`:53, under way.
fn connect_tcp(server: Ipv4Addr) -> io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&fd, &std::net::SocketAddr::from((server, 53))) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e.into()),
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

/// The parent's tables, a JSON line each, read as they come (non-blocking).
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
fn filter() -> Result<Vec<libc::sock_filter>, crate::seccomp::SeccompError> {
    use arca_protocol::Verdict;
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let compile = crate::seccomp::SeccompError::Compile;
    let mut rules: crate::seccomp::RuleMap = [
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
    let inet = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_INET as u64,
    )
    .map_err(compile)?;
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![inet]).map_err(compile)?],
    );
    crate::seccomp::program(rules, Verdict::KillProcess, Verdict::Allow)
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
    fn only_the_networks_containers_are_served() {
        let s = Served {
            subnet: u32::from(Ipv4Addr::new(10, 89, 1, 0)),
            mask: u32::MAX << 8,
            gateway: Ipv4Addr::new(10, 89, 1, 1),
        };
        assert!(s.allows(Ipv4Addr::new(10, 89, 1, 7)));
        assert!(!s.allows(Ipv4Addr::new(10, 89, 1, 1)), "the host itself");
        assert!(!s.allows(Ipv4Addr::new(10, 89, 2, 7)), "another network");
        assert!(!s.allows(Ipv4Addr::new(192, 168, 0, 7)), "outside");
    }

    #[test]
    fn tcp_messages_come_in_pieces_and_go_out_framed_without_blocking() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut f = Framed::new(ours, None);
        assert!(f.progress().unwrap().is_none(), "nothing yet: no block");
        peer.write_all(&[0, 5, b'h']).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(f.progress().unwrap().is_none(), "a piece");
        peer.write_all(b"ello").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(f.progress().unwrap(), Some(b"hello".to_vec()));
        f.send(b"hi");
        assert!(f.progress().unwrap().is_none());
        assert!(!f.writing());
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, &[0, 2, b'h', b'i']);
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        assert!(f.progress().is_err(), "the client went away");
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
