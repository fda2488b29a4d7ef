//! The protocol server: accepts connections on vsock (guest) or a Unix socket (host),
//! answers control requests and pumps stdio streams.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arca_protocol::{
    AgentError, Channel, ErrorCode, FrameDecoder, Hello, HelloReply, PROTOCOL_VERSION,
    PortProtocol, Reply, Request, RequestFrame, Response, StdioStream, encode_frame,
};

use crate::container::Runtime;
use crate::sys;

/// A connected stream socket (vsock or Unix).
#[derive(Debug)]
pub struct Conn(OwnedFd);

impl Conn {
    /// Wraps a connected socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self(fd)
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }

    fn shutdown_write(&self) {
        let _ = rustix::net::shutdown(&self.0, rustix::net::Shutdown::Write);
    }

    fn shutdown_both(&self) {
        let _ = rustix::net::shutdown(&self.0, rustix::net::Shutdown::Both);
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) {
        let _ = rustix::net::sockopt::set_socket_timeout(
            &self.0,
            rustix::net::sockopt::Timeout::Recv,
            timeout,
        );
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(&self.0, &mut *buf) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.map_err(Into::into),
            }
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match rustix::net::send(&self.0, buf, rustix::net::SendFlags::NOSIGNAL) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.map_err(Into::into),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where connections come from.
#[derive(Debug)]
pub enum Listener {
    /// `AF_VSOCK` listener (in the guest).
    Vsock(OwnedFd),
    /// Unix socket listener (on the host).
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Conn> {
        let fd = match self {
            Listener::Vsock(fd) => {
                let conn = rustix::net::accept_with(fd, rustix::net::SocketFlags::CLOEXEC)?;
                // Only the host may drive the agent: not a container reaching vsock
                // through the guest's loopback transport.
                match crate::sys::vsock_peer_cid(&conn)? {
                    libc::VMADDR_CID_HOST => conn,
                    cid => {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("refused a vsock connection from CID {cid}"),
                        ));
                    }
                }
            }
            Listener::Unix(l) => {
                let conn = l.accept()?.0;
                // On the host, only the user who started the agent (or root) may drive
                // it, even if the socket's directory were reachable.
                let cred = rustix::net::sockopt::socket_peercred(&conn)?;
                let (uid, me) = (cred.uid.as_raw(), rustix::process::geteuid().as_raw());
                if uid != 0 && uid != me {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("refused a connection from uid {uid}"),
                    ));
                }
                OwnedFd::from(conn)
            }
        };
        Ok(Conn(fd))
    }
}

/// What ended the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A `Shutdown` request.
    Requested,
    /// The last container was removed and the sandbox powers off when idle.
    Idle,
}

/// The server state shared by connection threads.
#[derive(Debug)]
pub struct Server {
    runtime: Arc<Runtime>,
    poweroff_when_idle: bool,
    stop: (Mutex<Option<Stop>>, Condvar),
    in_flight: AtomicUsize,
    open_controls: AtomicUsize,
    in_vm: bool,
}

/// Most requests that may block (each on its own thread) in flight at once.
const MAX_IN_FLIGHT: usize = 256;
/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// After an idle power-off decision, how long the host gets to read its last answers
/// and close its connections.
const LINGER: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

impl Server {
    /// A server over `runtime`. `in_vm`: the agent is a microVM's (a restore from a
    /// snapshot is its to handle), and before stopping it waits (up to 2 s) for the
    /// host to close its control connections (the VM's end drops queued data).
    pub fn new(runtime: Arc<Runtime>, poweroff_when_idle: bool, in_vm: bool) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            poweroff_when_idle,
            stop: (Mutex::new(None), Condvar::new()),
            in_flight: AtomicUsize::new(0),
            open_controls: AtomicUsize::new(0),
            in_vm,
        })
    }

    /// Accepts connections on a background thread and returns when the server should
    /// stop (containers are already removed then).
    pub fn run(self: &Arc<Self>, listener: Listener) -> Stop {
        let me = Arc::clone(self);
        let accepted = std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                loop {
                    match listener.accept() {
                        Ok(conn) => {
                            let me = Arc::clone(&me);
                            let _ = std::thread::Builder::new()
                                .name("conn".into())
                                .spawn(move || me.serve(conn));
                        }
                        Err(e)
                            if e.raw_os_error() == Some(libc::EMFILE)
                                || e.raw_os_error() == Some(libc::ENFILE) =>
                        {
                            eprintln!("arca-agent: accept: {e}");
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                        Err(e) => eprintln!("arca-agent: accept: {e}"),
                    }
                }
            });
        if let Err(e) = accepted {
            eprintln!("arca-agent: cannot start the accept thread: {e}");
            return Stop::Requested;
        }
        let (stop_lock, cond) = &self.stop;
        let mut stop = lock(stop_lock);
        let why = loop {
            if let Some(s) = *stop {
                break s;
            }
            stop = cond.wait(stop).unwrap_or_else(|e| e.into_inner());
        };
        drop(stop);
        // In a VM, answers still in the guest's vsock queue die with it: give the host
        // time to read them and hang up. (A Unix socket keeps what was written.)
        let deadline = Instant::now() + if self.in_vm { LINGER } else { Duration::ZERO };
        while self.open_controls.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        why
    }

    fn request_stop(&self, why: Stop) {
        let (lock, cond) = &self.stop;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        cond.notify_all();
    }

    fn serve(self: Arc<Self>, conn: Conn) {
        let mut decoder = FrameDecoder::new();
        conn.set_read_timeout(Some(HELLO_TIMEOUT));
        let hello = match read_frame::<Hello>(&conn, &mut decoder) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                eprintln!("arca-agent: bad hello: {e}");
                return;
            }
        };
        conn.set_read_timeout(None);
        let mut reply = HelloReply {
            version: PROTOCOL_VERSION,
            agent: format!("arca-agent {}", env!("CARGO_PKG_VERSION")),
            error: None,
        };
        if hello.version != PROTOCOL_VERSION {
            reply.error = Some(AgentError::new(
                ErrorCode::VersionMismatch,
                format!(
                    "Agent speaks protocol version {PROTOCOL_VERSION}, the host {}",
                    hello.version
                ),
            ));
        }
        let mut forward = None;
        let mut layer = None;
        let stdio = match (&reply.error, hello.channel) {
            (Some(_), _) | (None, Channel::Control) => None,
            (
                None,
                Channel::Stdio {
                    container,
                    process,
                    stream,
                },
            ) => match self.runtime.attach(&container, process.as_deref(), stream) {
                Ok(fd) => Some((fd, stream)),
                Err(e) => {
                    reply.error = Some(e);
                    None
                }
            },
            (
                None,
                Channel::Forward {
                    container,
                    port,
                    protocol,
                },
            ) => {
                match self.connect_forward(&container, port, protocol) {
                    Ok(target) => forward = Some(target),
                    Err(e) => reply.error = Some(e),
                }
                None
            }
            (None, Channel::Layer { container }) => {
                match self.runtime.layer_dirs(&container) {
                    Ok(dirs) => layer = Some(dirs),
                    Err(e) => reply.error = Some(e),
                }
                None
            }
        };
        if write_frame(&conn, &reply).is_err() || reply.error.is_some() {
            return;
        }
        if let Some((upper, lower)) = layer {
            if let Err(e) = crate::layer::send(upper.as_fd(), lower.as_fd(), &conn) {
                eprintln!("arca-agent: the layer was not sent: {e}");
            }
            conn.shutdown_write();
            return;
        }
        match (stdio, forward) {
            (Some((fd, stream)), _) => pump(conn, fd, stream, decoder.take_remainder()),
            (None, Some(Forwarded::Tcp(tcp))) => {
                splice_forward(conn, tcp.into(), &decoder.take_remainder())
            }
            (None, Some(Forwarded::Udp(udp))) => {
                splice_datagrams(conn, udp, &decoder.take_remainder())
            }
            (None, None) => self.control(conn, decoder),
        }
    }

    /// A TCP connection, or a connected UDP socket, to `port` of container `id`, made in
    /// its network namespace.
    fn connect_forward(
        &self,
        id: &str,
        port: u16,
        protocol: PortProtocol,
    ) -> Result<Forwarded, AgentError> {
        let (pid, addr) = self.runtime.forward_target(id)?;
        let made = match protocol {
            PortProtocol::Tcp => {
                sys::connect_in_netns(pid, addr, port, FORWARD_CONNECT_TIMEOUT).map(Forwarded::Tcp)
            }
            PortProtocol::Udp => sys::udp_in_netns(pid, addr, port).map(Forwarded::Udp),
        };
        made.map_err(|e| {
            AgentError::new(
                ErrorCode::InvalidState,
                format!("Cannot connect to {addr}:{port}/{protocol} in container {id}: {e}"),
            )
        })
    }

    fn control(self: Arc<Self>, conn: Conn, mut decoder: FrameDecoder) {
        let writer = match conn.try_clone() {
            Ok(w) => Arc::new(Mutex::new(w)),
            Err(_) => return,
        };
        self.open_controls.fetch_add(1, Ordering::SeqCst);
        let _count = OnDrop(|| {
            self.open_controls.fetch_sub(1, Ordering::SeqCst);
        });
        loop {
            let frame = match read_frame::<RequestFrame>(&conn, &mut decoder) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    let error = AgentError::new(ErrorCode::BadRequest, format!("Bad frame: {e}"));
                    let w = lock(&writer);
                    let _ = write_frame(
                        &w,
                        &Response {
                            id: 0,
                            result: Err(error),
                        },
                    );
                    // Request threads may still hold a copy of the socket: end it now.
                    conn.shutdown_both();
                    return;
                }
            };
            // Quick requests are answered inline; the others (which may block: wait,
            // create, start, exec, remove) on a thread each, up to a bound.
            let quick = matches!(
                frame.request,
                Request::Ping
                    | Request::List
                    | Request::Stats { .. }
                    | Request::Signal { .. }
                    | Request::ResizeTty { .. }
                    | Request::Top { .. }
            );
            if quick {
                let result = self.handle(frame.request);
                let _ = write_frame(
                    &lock(&writer),
                    &Response {
                        id: frame.id,
                        result,
                    },
                );
                continue;
            }
            if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let error = AgentError::new(
                    ErrorCode::Internal,
                    format!("The agent is busy ({MAX_IN_FLIGHT} requests in flight)"),
                );
                let _ = write_frame(
                    &lock(&writer),
                    &Response {
                        id: frame.id,
                        result: Err(error),
                    },
                );
                continue;
            }
            let me = Arc::clone(&self);
            let thread_writer = Arc::clone(&writer);
            let id = frame.id;
            let spawned = std::thread::Builder::new()
                .name("request".into())
                .spawn(move || {
                    let shutdown = matches!(frame.request, Request::Shutdown);
                    let removal = matches!(frame.request, Request::Remove { .. });
                    let result = me.handle(frame.request);
                    let ok = result.is_ok();
                    let _ = write_frame(
                        &lock(&thread_writer),
                        &Response {
                            id: frame.id,
                            result,
                        },
                    );
                    me.in_flight.fetch_sub(1, Ordering::SeqCst);
                    if shutdown {
                        me.runtime.remove_all();
                        me.request_stop(Stop::Requested);
                    } else if removal && ok && me.poweroff_when_idle && me.runtime.is_empty() {
                        me.runtime.close();
                        me.request_stop(Stop::Idle);
                    }
                });
            if let Err(e) = spawned {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let error =
                    AgentError::new(ErrorCode::Internal, format!("Cannot start a thread: {e}"));
                let _ = write_frame(
                    &lock(&writer),
                    &Response {
                        id,
                        result: Err(error),
                    },
                );
            }
        }
    }

    fn handle(&self, request: Request) -> Result<Reply, AgentError> {
        let rt = &self.runtime;
        match request {
            Request::Ping => Ok(Reply::Pong),
            Request::Create { spec } => rt.create(*spec).map(|pid| Reply::Created { pid }),
            Request::Start { container } => rt.start(&container).map(|()| Reply::Started),
            Request::Exec {
                container,
                process_id,
                process,
            } => rt
                .exec(&container, &process_id, process)
                .map(|pid| Reply::ExecStarted { pid }),
            Request::Wait { container, process } => rt
                .wait(&container, process.as_deref())
                .map(|status| Reply::Exited { status }),
            Request::Signal {
                container,
                process,
                signal,
            } => rt
                .signal(&container, process.as_deref(), signal)
                .map(|()| Reply::Signalled),
            Request::ResizeTty {
                container,
                process,
                rows,
                cols,
            } => rt
                .resize(&container, process.as_deref(), rows, cols)
                .map(|()| Reply::Resized),
            Request::Stats { container } => {
                rt.stats(&container).map(|stats| Reply::Stats { stats })
            }
            Request::List => Ok(Reply::Containers {
                containers: rt.list(),
            }),
            Request::Remove { container, force } => {
                rt.remove(&container, force).map(|()| Reply::Removed)
            }
            Request::Shutdown => Ok(Reply::ShuttingDown),
            Request::Top { container } => rt
                .top(&container)
                .map(|processes| Reply::Processes { processes }),
            Request::Changes { container, from } => rt
                .changes(&container, from as usize)
                .map(|(changes, more)| Reply::Changes { changes, more }),
            Request::Freeze { container, frozen } => {
                rt.freeze(&container, frozen).map(|()| Reply::FreezeSet)
            }
            Request::Restored(restored) => {
                if !self.in_vm {
                    return Err(AgentError::new(
                        ErrorCode::BadRequest,
                        "A host agent is never restored from a snapshot",
                    ));
                }
                if !rt.list().is_empty() {
                    return Err(AgentError::new(
                        ErrorCode::InvalidState,
                        "A sandbox is told of its restore before it has containers",
                    ));
                }
                crate::restore::apply(&restored).map(|()| Reply::RestoreDone)
            }
        }
    }
}

fn read_frame<T: for<'de> serde::Deserialize<'de>>(
    conn: &Conn,
    decoder: &mut FrameDecoder,
) -> io::Result<Option<T>> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(m) = decoder.next::<T>().map_err(io::Error::other)? {
            return Ok(Some(m));
        }
        let n = (&*conn).read(&mut buf)?;
        if n == 0 {
            decoder.finish().map_err(io::Error::other)?;
            return Ok(None);
        }
        decoder.push(&buf[..n]);
    }
}

fn write_frame<T: serde::Serialize>(conn: &Conn, msg: &T) -> io::Result<()> {
    let bytes = encode_frame(msg).map_err(io::Error::other)?;
    (&*conn).write_all(&bytes)
}

fn copy_fd_to_conn(fd: &OwnedFd, conn: &Conn) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rustix::io::read(fd, &mut buf[..]) {
            Ok(0) => break,
            Ok(n) => {
                if (&*conn).write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            // EIO: the terminal's last holder closed it.
            Err(_) => break,
        }
    }
    conn.shutdown_write();
}

fn write_all_fd(fd: &OwnedFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

fn copy_conn_to_fd(conn: &Conn, fd: &OwnedFd, first: &[u8]) {
    if !write_all_fd(fd, first) {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match (&*conn).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !write_all_fd(fd, &buf[..n]) {
                    return;
                }
            }
        }
    }
}

/// The container end of a forward connection.
enum Forwarded {
    Tcp(std::net::TcpStream),
    Udp(std::net::UdpSocket),
}

/// Carries datagrams between a forward connection (framed: 2-byte big-endian length,
/// payload) and a UDP socket connected to the container's port, until the host hangs
/// up. A frame longer than a datagram can be ends the connection.
fn splice_datagrams(conn: Conn, udp: std::net::UdpSocket, first: &[u8]) {
    let (Ok(up_conn), Ok(up_udp)) = (conn.try_clone(), udp.try_clone()) else {
        return;
    };
    let first = first.to_vec();
    let upstream = std::thread::Builder::new()
        .name("forward-udp-in".into())
        .spawn(move || {
            let mut reader = std::io::Cursor::new(first).chain(&up_conn);
            let mut buf = vec![0u8; arca_protocol::MAX_DATAGRAM];
            while let Ok(Some(n)) = arca_protocol::read_datagram(&mut reader, &mut buf) {
                // A refused datagram (nothing listening yet) is UDP's own business.
                let _ = up_udp.send(&buf[..n]);
            }
            // Wakes the receiving side below, which then ends.
            let _ = rustix::net::shutdown(&up_udp, rustix::net::Shutdown::Read);
        });
    let mut buf = vec![0u8; arca_protocol::MAX_DATAGRAM];
    loop {
        match udp.recv(&mut buf) {
            Ok(n) => {
                if upstream.as_ref().is_ok_and(|t| t.is_finished()) {
                    break;
                }
                if arca_protocol::write_datagram(&mut &conn, &buf[..n]).is_err() {
                    break;
                }
            }
            // ECONNREFUSED from an earlier send: nothing listens (yet); go on.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if upstream.as_ref().is_ok_and(|t| t.is_finished()) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    conn.shutdown_both();
    if let Ok(t) = upstream {
        let _ = t.join();
    }
}

/// How long a forwarded connection may take to reach the container's port.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Copies a forwarded connection both ways until each side has finished: a half-close
/// on one side is passed on to the other.
fn splice_forward(conn: Conn, tcp: OwnedFd, first: &[u8]) {
    let (Ok(up_conn), Ok(up_tcp)) = (conn.try_clone(), tcp.try_clone()) else {
        return;
    };
    let first = first.to_vec();
    let upstream = std::thread::Builder::new()
        .name("forward-in".into())
        .spawn(move || {
            copy_conn_to_fd(&up_conn, &up_tcp, &first);
            let _ = rustix::net::shutdown(&up_tcp, rustix::net::Shutdown::Write);
        });
    copy_fd_to_conn(&tcp, &conn);
    if let Ok(t) = upstream {
        let _ = t.join();
    }
}

/// Moves bytes between a stdio connection and the process's pipe or terminal.
fn pump(conn: Conn, fd: OwnedFd, stream: StdioStream, first: Vec<u8>) {
    match stream {
        StdioStream::Stdout | StdioStream::Stderr => copy_fd_to_conn(&fd, &conn),
        // Dropping the pipe's write end is the process's end of input.
        StdioStream::Stdin => copy_conn_to_fd(&conn, &fd, &first),
        StdioStream::Tty => {
            let (Ok(input_conn), Ok(input_fd)) = (conn.try_clone(), fd.try_clone()) else {
                return;
            };
            let input = std::thread::Builder::new()
                .name("tty-in".into())
                .spawn(move || copy_conn_to_fd(&input_conn, &input_fd, &first));
            copy_fd_to_conn(&fd, &conn);
            drop(input);
        }
    }
    let _ = fd.as_fd();
}
