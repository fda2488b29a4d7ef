//! The host side of virtio-vsock, Firecracker-style "hybrid" vsock: guest ports are
//! reached through Unix domain sockets.
//!
//! - Host to guest: connect to the VMM's socket `uds_path` and send `CONNECT <port>\n`;
//!   the VMM opens a connection to guest port `<port>` and answers `OK <host_port>\n`
//!   once the guest accepts it (or closes the socket if it refuses).
//! - Guest to host: a guest connection to CID 2, port `P`, is forwarded to the Unix
//!   socket `<uds_path>_P`, which a host program listens on.
//!
//! Flow control follows the virtio-vsock spec: the VMM never sends the guest more than
//! the guest's advertised buffer space (`buf_alloc - (sent - fwd_cnt)`), stops reading
//! from a host socket while that credit is exhausted, and advertises its own buffer per
//! connection, which the guest respects; data the host socket cannot take yet waits in
//! that buffer. A guest that overruns it gets its connection reset.
//!
//! A hostile guest cannot hold host resources forever (Firecracker's muxer is the
//! model): a REQUEST the guest does not answer within [`REQUEST_TIMEOUT`], and a
//! connection the host side closed that the guest does not reset within
//! [`SHUTDOWN_TIMEOUT`], are reset and their sockets closed; a host client that does not
//! finish its `CONNECT` line within [`CONNECT_LINE_TIMEOUT`] is dropped. The backend
//! reads no clock for expiry: the event loop calls [`Backend::tick`] with the time when
//! [`Backend::next_deadline`] passes. Guest-initiated connections stop at
//! [`MAX_GUEST_CONNECTIONS`] and short of the open-file limit, so host-initiated ones
//! (the runtime's control, stdio and forwarded connections) always find a slot. A
//! listener whose `accept` fails (EMFILE, ENFILE) is unwatched until a connection closes
//! or [`ACCEPT_RETRY`] passes, instead of waking the event loop without end.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};

/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Receive buffer the VMM advertises per connection (guest-to-host direction).
pub const CONN_BUF_SIZE: u32 = 256 << 10;
/// Largest payload the VMM puts in one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Most connections at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connection slots, and file descriptors, that guest-initiated connections may not
/// take: they stay free for host-initiated ones.
pub const RESERVED_FOR_HOST: usize = 64;
/// Most guest-initiated connections at once; more are refused with RST.
pub const MAX_GUEST_CONNECTIONS: usize = MAX_CONNECTIONS - RESERVED_FOR_HOST;
/// How long the guest has to answer a host-initiated REQUEST, counted from when the
/// REQUEST reaches an rx buffer (a booting guest with no buffers yet is not timed).
/// Firecracker's CONN_REQUEST_TIMEOUT_MS; the guest kernel answers at once.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest has to reset a connection once the host side closed it (or once
/// the guest closed it with data still waiting for the host socket).
/// Firecracker's CONN_SHUTDOWN_TIMEOUT_MS.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host client has to send its whole `CONNECT <port>` line.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an unwatched listener (after `accept` failed) waits when no connection
/// closes first.
pub const ACCEPT_RETRY: Duration = Duration::from_secs(1);
/// How long host clients wait after a restore for the guest to handle the
/// transport-reset event (see [`Backend::hold_for_transport_reset`]).
pub const RESET_PATIENCE: Duration = Duration::from_secs(3);
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Most control packets (replies, resets, credit updates) waiting for the guest; a guest
/// that floods us without posting rx buffers loses the excess instead of growing the
/// VMM's memory.
pub const MAX_CONTROL: usize = 4096;
/// Epoll token of the listening socket; connection tokens start above it.
pub const LISTENER_TOKEN: u32 = 16;

/// Errors of setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The listening socket could not be created.
    #[error("Cannot listen on the vsock socket {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A change the event loop must make to its fd set. Connection sockets are watched
/// edge-triggered for both directions; the backend tracks readiness itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdChange {
    /// Start watching `fd` under `token` (level-triggered reads for the listener,
    /// edge-triggered reads and writes for connections).
    Add {
        /// The fd.
        fd: RawFd,
        /// Its token.
        token: u32,
    },
    /// Stop watching `fd`; a connection's socket closes when the loop calls
    /// [`Backend::release_closed`] (the listener stays open, unwatched, until it is
    /// added again).
    Remove {
        /// The fd.
        fd: RawFd,
    },
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Host client accepted; waiting for its `CONNECT <port>` line.
    AwaitingConnectLine,
    /// REQUEST sent to the guest; waiting for RESPONSE or RST.
    Connecting,
    /// Data flows.
    Established,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    token: u32,
    state: State,
    /// The host-side port (ours) and the guest's port.
    local_port: u32,
    peer_port: u32,
    /// Guest-to-host bytes not yet written to the host socket.
    to_host: VecDeque<u8>,
    /// Bytes written to the host socket, which we report as fwd_cnt.
    fwd_cnt: u32,
    fwd_cnt_reported: u32,
    /// Host-to-guest credit bookkeeping.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    sent_to_guest: u32,
    credit_requested: bool,
    /// The host socket may have data (or EOF) we have not read yet.
    host_readable: bool,
    /// The host socket may take more data.
    host_writable: bool,
    /// The host closed its write side and the guest was told.
    host_eof: bool,
    /// The guest will send no more: shut the host socket's write side once drained.
    guest_send_done: bool,
    /// The guest closed: reset and forget the connection once `to_host` is drained.
    close_when_drained: bool,
    /// The host side closed its socket (hung up), not just its write side.
    host_closed: bool,
    /// The guest opened it (to a host listener `<uds>_PORT`).
    guest_initiated: bool,
    /// When it is reset unless something happens first (see `Backend::tick`).
    deadline: Option<Instant>,
    connect_line: Vec<u8>,
}

/// Connects a non-blocking Unix stream socket to `path`; `None` unless it connected
/// at once (Unix sockets never complete a connection later).
fn connect_nonblocking(path: &str) -> Option<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .ok()?;
    let addr = SocketAddrUnix::new(path).ok()?;
    rustix::net::connect(&fd, &addr).ok()?;
    Some(UnixStream::from(fd))
}

/// A header for `conn`, carrying our credit for it.
fn conn_header(guest_cid: u64, conn: &Conn, op: u16) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: conn.local_port,
        dst_port: conn.peer_port,
        len: 0,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: CONN_BUF_SIZE,
        fwd_cnt: conn.fwd_cnt,
    }
}

impl Conn {
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.sent_to_guest.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// A packet for a guest rx buffer: a header, and a payload for RW.
#[derive(Debug, PartialEq, Eq)]
pub struct RxPacket {
    /// The header.
    pub header: Header,
    /// The payload.
    pub data: Vec<u8>,
}

/// All host-side vsock state of one VM.
#[derive(Debug)]
pub struct Backend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: BTreeMap<(u32, u32), Conn>,
    tokens: HashMap<u32, (u32, u32)>,
    next_token: u32,
    next_local_port: u32,
    /// Control packets for the guest, in order.
    control: VecDeque<Header>,
    changes: Vec<FdChange>,
    closing: Vec<UnixStream>,
    /// Every connection deadline, soonest first.
    deadlines: BTreeSet<(Instant, (u32, u32))>,
    /// Open guest-initiated connections.
    guest_conns: usize,
    /// The process's soft open-file limit, read at start.
    fd_limit: u64,
    /// `accept` failed: the listener is unwatched until a connection closes or this
    /// time passes.
    accept_retry: Option<Instant>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl Backend {
    /// Listens on `uds_path` (which must not exist) for host connections to guest
    /// `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, BackendError> {
        let listen_err = |source| BackendError::Listen {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let changes = vec![FdChange::Add {
            fd: listener.as_raw_fd(),
            token: LISTENER_TOKEN,
        }];
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            conns: BTreeMap::new(),
            tokens: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            changes,
            closing: Vec::new(),
            deadlines: BTreeSet::new(),
            guest_conns: 0,
            fd_limit: rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX),
            accept_retry: None,
        })
    }

    /// The guest's context ID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// When [`Backend::tick`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conn = self.deadlines.first().map(|&(at, _)| at);
        conn.into_iter().chain(self.accept_retry).min()
    }

    /// The time is `now`: connections past their deadline are reset (a host client
    /// that never finished its line is just closed), and a listener unwatched for
    /// [`ACCEPT_RETRY`] is watched again.
    pub fn tick(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.deadline = None;
            if conn.state == State::AwaitingConnectLine {
                self.remove_conn(key);
            } else {
                self.abort(key);
            }
        }
        if self.accept_retry.is_some_and(|at| at <= now) {
            self.watch_listener();
        }
    }

    fn set_deadline(&mut self, key: (u32, u32), deadline: Option<Instant>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(old) = conn.deadline.take() {
            self.deadlines.remove(&(old, key));
        }
        if let Some(at) = deadline {
            conn.deadline = Some(at);
            self.deadlines.insert((at, key));
        }
    }

    /// Stops watching the listener after `accept` failed.
    fn unwatch_listener(&mut self) {
        self.unwatch_listener_for(ACCEPT_RETRY);
    }

    fn unwatch_listener_for(&mut self, patience: Duration) {
        if self.accept_retry.is_none() {
            self.accept_retry = Some(Instant::now() + patience);
            self.changes.push(FdChange::Remove {
                fd: self.listener.as_raw_fd(),
            });
        }
    }

    /// Watches the listener again (level-triggered: clients waiting in its backlog
    /// wake the loop at once).
    fn watch_listener(&mut self) {
        if self.accept_retry.take().is_some() {
            self.changes.push(FdChange::Add {
                fd: self.listener.as_raw_fd(),
                token: LISTENER_TOKEN,
            });
        }
    }

    /// Fd changes the event loop must apply, oldest first.
    pub fn take_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.changes)
    }

    /// Closes the sockets whose removal the event loop has applied.
    pub fn release_closed(&mut self) {
        self.closing.clear();
    }

    /// After a snapshot restore, once the transport-reset event is in the guest's
    /// queue: host clients wait in the listener's backlog until the guest has handled
    /// it ([`Backend::transport_reset_seen`]), or [`RESET_PATIENCE`] passes. The driver
    /// resets every connected socket it has when it handles the event: a connection
    /// made before that would be reset with the old ones.
    pub fn hold_for_transport_reset(&mut self) {
        self.unwatch_listener_for(RESET_PATIENCE);
    }

    /// The guest handled the transport-reset event (it gave its event buffer back):
    /// host clients are served again.
    pub fn transport_reset_seen(&mut self) {
        self.watch_listener();
    }

    /// Forgets every connection (the guest reset the device).
    pub fn reset(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        self.control.clear();
    }

    fn queue_reset(&mut self, local_port: u32, peer_port: u32) {
        if self.control.len() >= MAX_CONTROL {
            return;
        }
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    fn queue_control(&mut self, key: (u32, u32), op: u16, flags: u32) {
        let guest_cid = self.guest_cid;
        if self.control.len() >= MAX_CONTROL {
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.fwd_cnt_reported = conn.fwd_cnt;
            self.control.push_back(Header {
                flags,
                ..conn_header(guest_cid, conn, op)
            });
        }
    }

    fn add_conn(
        &mut self,
        stream: UnixStream,
        state: State,
        (local_port, peer_port): (u32, u32),
        guest_initiated: bool,
    ) {
        let token = self.next_token;
        self.next_token = self.next_token.checked_add(1).unwrap_or(LISTENER_TOKEN + 1);
        let conn = Conn {
            stream,
            token,
            state,
            local_port,
            peer_port,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_reported: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            sent_to_guest: 0,
            credit_requested: false,
            host_readable: false,
            host_writable: true,
            host_eof: false,
            guest_send_done: false,
            close_when_drained: false,
            host_closed: false,
            guest_initiated,
            deadline: None,
            connect_line: Vec::new(),
        };
        if guest_initiated {
            self.guest_conns += 1;
        }
        self.changes.push(FdChange::Add {
            fd: conn.stream.as_raw_fd(),
            token,
        });
        self.tokens.insert(token, (local_port, peer_port));
        self.conns.insert((local_port, peer_port), conn);
    }

    fn remove_conn(&mut self, key: (u32, u32)) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.remove(&conn.token);
            if let Some(at) = conn.deadline {
                self.deadlines.remove(&(at, key));
            }
            if conn.guest_initiated {
                self.guest_conns -= 1;
            }
            // A descriptor frees: a listener that ran out of them may accept again.
            self.watch_listener();
            self.changes.push(FdChange::Remove {
                fd: conn.stream.as_raw_fd(),
            });
            // The close waits for the event loop to drop the fd from its epoll set; the
            // host client must hear the end now (a device reset may come with no event
            // after it).
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            self.closing.push(conn.stream);
        }
    }

    /// Resets a connection: RST to the guest, socket closed.
    fn abort(&mut self, key: (u32, u32)) {
        self.queue_reset(key.0, key.1);
        self.remove_conn(key);
    }

    /// The listening socket is readable: accept host clients.
    pub fn accept(&mut self) {
        if self.accept_retry.is_some() {
            return; // unwatched; a stale event
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropping the stream refuses the client
                    }
                    let local_port = self.alloc_local_port();
                    self.add_conn(stream, State::AwaitingConnectLine, (local_port, 0), false);
                    let deadline = Some(Instant::now() + CONNECT_LINE_TIMEOUT);
                    self.set_deadline((local_port, 0), deadline);
                }
                Err(e) => {
                    if !self.accept_failed(&e) {
                        break;
                    }
                }
            }
        }
    }

    /// Handles an error from `accept` on the listener; whether to try again at once.
    /// WouldBlock means all are accepted. An error that would repeat at once (EMFILE,
    /// ENFILE, ENOBUFS, ...) unwatches the level-triggered listener, which would
    /// otherwise wake the event loop without end; the clients wait in its backlog until
    /// a connection closes or [`ACCEPT_RETRY`] passes.
    pub fn accept_failed(&mut self, error: &std::io::Error) -> bool {
        match error.kind() {
            ErrorKind::Interrupted | ErrorKind::ConnectionAborted => true,
            ErrorKind::WouldBlock => false,
            _ => {
                self.unwatch_listener();
                false
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == port) {
                return port;
            }
        }
    }

    /// A connection socket became readable, writable, or `closed` (hung up: the host
    /// side closed it whole, not only its write side).
    pub fn host_event(&mut self, token: u32, readable: bool, writable: bool, closed: bool) {
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if readable || closed {
            conn.host_readable = true;
        }
        if writable || closed {
            conn.host_writable = true;
        }
        match conn.state {
            State::AwaitingConnectLine => return self.read_connect_line(key),
            // The client gave up before the guest answered.
            State::Connecting if closed => return self.abort(key),
            State::Connecting => {}
            State::Established if closed && !conn.host_closed => {
                conn.host_closed = true;
                if conn.host_eof {
                    // The guest heard SHUTDOWN(SEND) already; now it hears the rest.
                    self.queue_control(key, op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                }
                // What is left in the socket goes to the guest, which then has to
                // reset the connection; a guest that grants no credit or never resets
                // loses it at the deadline.
                self.set_deadline(key, Some(Instant::now() + SHUTDOWN_TIMEOUT));
            }
            State::Established => {}
        }
        if writable || closed {
            self.flush_to_host(key);
        }
    }

    fn read_connect_line(&mut self, key: (u32, u32)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut byte = [0u8; 1];
        // One byte at a time: whatever follows the line is data for the guest and must
        // stay in the socket until the connection is established.
        loop {
            match conn.stream.read(&mut byte) {
                Ok(0) => return self.remove_conn(key),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if conn.connect_line.len() < MAX_CONNECT_LINE => {
                    conn.connect_line.push(byte[0])
                }
                Ok(_) => return self.remove_conn(key),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    conn.host_readable = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.remove_conn(key),
            }
        }
        let port = std::str::from_utf8(&conn.connect_line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(port) = port else {
            let _ = conn.stream.write_all(b"ERROR expected CONNECT <port>\n");
            return self.remove_conn(key);
        };
        // Re-key under the guest port now that it is known (a clash with a guest
        // connection on the same ports refuses this one).
        if self.conns.contains_key(&(key.0, port)) {
            return self.remove_conn(key);
        }
        self.set_deadline(key, None);
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        conn.peer_port = port;
        conn.state = State::Connecting;
        conn.connect_line = Vec::new();
        let new_key = (conn.local_port, port);
        self.tokens.insert(conn.token, new_key);
        self.conns.insert(new_key, conn);
        self.queue_control(new_key, op::REQUEST, 0);
    }

    /// Writes queued guest data to the host socket.
    fn flush_to_host(&mut self, key: (u32, u32)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut progressed = false;
        while conn.host_writable && !conn.to_host.is_empty() {
            let (front, _) = conn.to_host.as_slices();
            match conn.stream.write(front) {
                Ok(n) => {
                    conn.to_host.drain(..n);
                    conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                    progressed |= n > 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => conn.host_writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.abort(key),
            }
        }
        let drained = conn.to_host.is_empty();
        if drained && conn.close_when_drained {
            return self.abort(key);
        }
        // A slow reader that still takes the guest's last bytes keeps them: the
        // shutdown deadline counts from the last progress, not from the close.
        let extend = progressed && conn.close_when_drained && !conn.host_closed;
        if drained && conn.guest_send_done {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        // Tell the guest about freed buffer space once a quarter of it is free again.
        if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_reported) >= CONN_BUF_SIZE / 4 {
            self.queue_control(key, op::CREDIT_UPDATE, 0);
        }
        if extend {
            self.set_deadline(key, Some(Instant::now() + SHUTDOWN_TIMEOUT));
        }
    }

    /// Handles a packet the guest sent.
    pub fn from_guest(&mut self, hdr: &Header, data: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.kind != TYPE_STREAM || hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            if hdr.op != op::RST {
                self.queue_reset(hdr.dst_port, hdr.src_port);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.peer_buf_alloc = hdr.buf_alloc;
            conn.peer_fwd_cnt = hdr.fwd_cnt;
            if conn.peer_credit() > 0 {
                conn.credit_requested = false;
            }
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (hdr.op, state) {
            (op::REQUEST, None) => self.connect_to_host(hdr),
            (op::RESPONSE, Some(State::Connecting)) => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                conn.state = State::Established;
                let line = format!("OK {}\n", conn.local_port);
                if conn.stream.write_all(line.as_bytes()).is_err() {
                    return self.abort(key);
                }
                self.set_deadline(key, None);
            }
            (op::RW, Some(State::Established)) => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                if conn.guest_send_done || conn.to_host.len() + data.len() > CONN_BUF_SIZE as usize
                {
                    // The guest ignored the credit we gave it.
                    return self.abort(key);
                }
                conn.to_host.extend(data);
                self.flush_to_host(key);
            }
            (op::CREDIT_UPDATE, Some(_)) => {}
            (op::CREDIT_REQUEST, Some(_)) => self.queue_control(key, op::CREDIT_UPDATE, 0),
            (op::SHUTDOWN, Some(_)) => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    conn.guest_send_done = true;
                }
                let closes = hdr.flags & SHUTDOWN_RCV != 0 && hdr.flags & SHUTDOWN_SEND != 0;
                if closes && !conn.close_when_drained {
                    conn.close_when_drained = true;
                    // A host socket that does not take the rest in time is not waited
                    // for without end.
                    if conn.deadline.is_none() {
                        self.set_deadline(key, Some(Instant::now() + SHUTDOWN_TIMEOUT));
                    }
                }
                self.flush_to_host(key);
            }
            (op::RST, Some(_)) => self.remove_conn(key),
            (op::RST, None) => {}
            _ => self.abort(key),
        }
    }

    /// A packet the guest sent that could not be read whole: its connection, if any,
    /// is reset, so that neither side waits for bytes that will never come.
    pub fn reject(&mut self, hdr: &Header) {
        if hdr.op != op::RST {
            self.abort((hdr.dst_port, hdr.src_port));
        }
    }

    /// A guest connection to host port `dst_port`: connect to `<uds_path>_<port>`,
    /// without blocking (a listener with a full backlog gets the guest a RST, never
    /// stalls the event loop).
    /// A guest may hold at most [`MAX_GUEST_CONNECTIONS`], and none that leaves fewer than
    /// [`RESERVED_FOR_HOST`] descriptors under the open-file limit: the rest is kept for
    /// host-initiated connections.
    fn connect_to_host(&mut self, hdr: &Header) {
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        let stream =
            if self.guest_conns < MAX_GUEST_CONNECTIONS && self.conns.len() < MAX_CONNECTIONS {
                connect_nonblocking(&path)
            } else {
                None
            };
        // Descriptors are handed out lowest first: this one's number is how many are in
        // use below it.
        let fd_limit = self.fd_limit;
        let stream = stream
            .filter(|s| (s.as_raw_fd() as u64).saturating_add(RESERVED_FOR_HOST as u64) < fd_limit);
        match stream {
            Some(stream) => {
                let key = (hdr.dst_port, hdr.src_port);
                self.add_conn(stream, State::Established, key, true);
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.peer_buf_alloc = hdr.buf_alloc;
                    conn.peer_fwd_cnt = hdr.fwd_cnt;
                }
                self.queue_control(key, op::RESPONSE, 0);
            }
            None => self.queue_reset(hdr.dst_port, hdr.src_port),
        }
    }

    /// Whether [`Backend::next_rx`] may have something.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty()
            || self
                .conns
                .values()
                .any(|c| c.state == State::Established && c.host_readable && !c.host_eof)
    }

    /// The next packet for the guest, carrying at most `max_payload` bytes of data.
    pub fn next_rx(&mut self, max_payload: usize) -> Option<RxPacket> {
        if let Some(header) = self.control.pop_front() {
            if header.op == op::REQUEST {
                // The guest has it now: its answer is timed from here.
                let key = (header.src_port, header.dst_port);
                self.set_deadline(key, Some(Instant::now() + REQUEST_TIMEOUT));
            }
            return Some(RxPacket {
                header,
                data: Vec::new(),
            });
        }
        let ready: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Established && c.host_readable && !c.host_eof)
            .map(|(k, _)| *k)
            .collect();
        let guest_cid = self.guest_cid;
        for key in ready {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let credit = conn.peer_credit() as usize;
            if credit == 0 {
                if !conn.credit_requested {
                    conn.credit_requested = true;
                    let header = conn_header(guest_cid, conn, op::CREDIT_REQUEST);
                    return Some(RxPacket {
                        header,
                        data: Vec::new(),
                    });
                }
                continue;
            }
            let mut buf = vec![0u8; max_payload.min(credit).min(MAX_PAYLOAD)];
            if buf.is_empty() {
                return None;
            }
            // A signal must not leave readable data behind: the edge is spent.
            let read = loop {
                match conn.stream.read(&mut buf) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match read {
                Ok(0) => {
                    conn.host_eof = true;
                    conn.fwd_cnt_reported = conn.fwd_cnt;
                    let header = Header {
                        flags: if conn.host_closed {
                            SHUTDOWN_RCV | SHUTDOWN_SEND
                        } else {
                            SHUTDOWN_SEND
                        },
                        ..conn_header(guest_cid, conn, op::SHUTDOWN)
                    };
                    return Some(RxPacket {
                        header,
                        data: Vec::new(),
                    });
                }
                Ok(n) => {
                    buf.truncate(n);
                    conn.sent_to_guest = conn.sent_to_guest.wrapping_add(n as u32);
                    conn.fwd_cnt_reported = conn.fwd_cnt;
                    let header = Header {
                        len: n as u32,
                        ..conn_header(guest_cid, conn, op::RW)
                    };
                    return Some(RxPacket { header, data: buf });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => conn.host_readable = false,
                Err(_) => {
                    self.abort(key);
                    return self.control.pop_front().map(|header| RxPacket {
                        header,
                        data: Vec::new(),
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use super::*;

    const GUEST: u64 = 3;

    fn backend() -> (tempfile::TempDir, Backend) {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::new(GUEST, &dir.path().join("v.sock")).unwrap();
        (dir, b)
    }

    fn guest(op: u16, src_port: u32, dst_port: u32, buf_alloc: u32, len: u32) -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt: 0,
        }
    }

    fn new_token(b: &mut Backend) -> u32 {
        b.take_changes()
            .into_iter()
            .filter_map(|c| match c {
                FdChange::Add { token, .. } if token != LISTENER_TOKEN => Some(token),
                _ => None,
            })
            .next_back()
            .expect("a new connection")
    }

    /// Host client connected and established with guest port 52; returns the client,
    /// its token and the host-side port.
    fn host_initiated(b: &mut Backend, dir: &Path, guest_buf: u32) -> (UnixStream, u32, u32) {
        let mut client = UnixStream::connect(dir.join("v.sock")).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        b.accept();
        let token = new_token(b);
        b.host_event(token, true, true, false);
        let req = b.next_rx(4096).unwrap().header;
        assert_eq!(
            (req.op, req.dst_port, req.dst_cid, req.buf_alloc),
            (op::REQUEST, 52, GUEST, CONN_BUF_SIZE)
        );
        b.from_guest(&guest(op::RESPONSE, 52, req.src_port, guest_buf, 0), &[]);
        let mut line = String::new();
        std::io::BufReader::new(client.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {}\n", req.src_port));
        (client, token, req.src_port)
    }

    #[test]
    fn host_connects_to_a_guest_port_and_data_flows_both_ways() {
        let (dir, mut b) = backend();
        let (mut client, token, local) = host_initiated(&mut b, dir.path(), 1 << 20);
        client.write_all(b"ping").unwrap();
        b.host_event(token, true, false, false);
        let pkt = b.next_rx(4096).unwrap();
        assert_eq!(
            (pkt.header.op, pkt.header.len, pkt.data.as_slice()),
            (op::RW, 4, &b"ping"[..])
        );
        b.from_guest(&guest(op::RW, 52, local, 1 << 20, 4), b"pong");
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        // Host half-close: the guest hears SHUTDOWN(SEND).
        client.shutdown(std::net::Shutdown::Write).unwrap();
        b.host_event(token, true, false, false);
        let pkt = b.next_rx(4096).unwrap();
        assert_eq!(
            (pkt.header.op, pkt.header.flags),
            (op::SHUTDOWN, SHUTDOWN_SEND)
        );
        // Guest closes: the host socket is closed and the guest gets its RST.
        b.from_guest(
            &Header {
                flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                ..guest(op::SHUTDOWN, 52, local, 0, 0)
            },
            &[],
        );
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);
        assert_eq!(b.connections(), 0);
        b.take_changes();
        b.release_closed();
        assert_eq!(client.read(&mut got).unwrap(), 0, "host sees EOF");
    }

    #[test]
    fn guest_connects_to_a_host_listener_or_is_refused() {
        let (dir, mut b) = backend();
        let listener = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        b.from_guest(&guest(op::REQUEST, 1111, 5000, 1 << 16, 0), &[]);
        let resp = b.next_rx(4096).unwrap().header;
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port),
            (op::RESPONSE, 5000, 1111)
        );
        let (mut server, _) = listener.accept().unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        b.from_guest(&guest(op::RW, 1111, 5000, 1 << 16, 5), b"hello");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        b.from_guest(&guest(op::REQUEST, 2222, 6000, 1 << 16, 0), &[]);
        let rst = b.next_rx(4096).unwrap().header;
        assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 6000, 2222));
    }

    #[test]
    fn host_to_guest_data_respects_the_guest_credit() {
        let (dir, mut b) = backend();
        let (mut client, token, local) = host_initiated(&mut b, dir.path(), 4);
        client.write_all(b"0123456789").unwrap();
        b.host_event(token, true, false, false);
        let pkt = b.next_rx(4096).unwrap();
        assert_eq!(pkt.data, b"0123");
        let ask = b.next_rx(4096).unwrap().header;
        assert_eq!(ask.op, op::CREDIT_REQUEST);
        assert!(
            b.next_rx(4096).is_none(),
            "no credit, one request is enough"
        );
        // The guest consumed 4 bytes: 4 more may go.
        b.from_guest(
            &Header {
                fwd_cnt: 4,
                ..guest(op::CREDIT_UPDATE, 52, local, 4, 0)
            },
            &[],
        );
        assert_eq!(b.next_rx(4096).unwrap().data, b"4567");
        // And the guest's buffer size caps each packet too.
        b.from_guest(
            &Header {
                fwd_cnt: 8,
                ..guest(op::CREDIT_UPDATE, 52, local, 1 << 20, 0)
            },
            &[],
        );
        assert_eq!(b.next_rx(1).unwrap().data, b"8");
    }

    #[test]
    fn a_guest_that_overruns_our_buffer_is_reset() {
        let (dir, mut b) = backend();
        let listener = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        b.from_guest(&guest(op::REQUEST, 9, 7, 1 << 16, 0), &[]);
        b.next_rx(4096).unwrap();
        let _server = listener.accept().unwrap(); // never reads
        let chunk = vec![0u8; MAX_PAYLOAD];
        let mut reset = false;
        for _ in 0..(4 * CONN_BUF_SIZE as usize / MAX_PAYLOAD + 64) {
            b.from_guest(&guest(op::RW, 9, 7, 1 << 16, chunk.len() as u32), &chunk);
            if b.connections() == 0 {
                reset = true;
                break;
            }
        }
        assert!(
            reset,
            "the connection must be reset once the guest ignores its credit"
        );
        assert!(std::iter::from_fn(|| b.next_rx(4096)).any(|p| p.header.op == op::RST));
    }

    #[test]
    fn hostile_packets_get_a_reset_and_bad_connect_lines_are_closed() {
        let (dir, mut b) = backend();
        b.from_guest(
            &Header {
                src_cid: 99,
                ..guest(op::REQUEST, 1, 2, 0, 0)
            },
            &[],
        );
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);
        b.from_guest(
            &Header {
                kind: 2,
                ..guest(op::REQUEST, 1, 2, 0, 0)
            },
            &[],
        );
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);
        b.from_guest(&guest(op::RW, 1, 2, 0, 3), b"abc");
        assert_eq!(
            b.next_rx(4096).unwrap().header.op,
            op::RST,
            "data for no connection"
        );
        b.from_guest(&guest(op::RST, 1, 2, 0, 0), &[]);
        assert!(b.next_rx(4096).is_none(), "a RST is never answered");
        b.from_guest(&guest(99, 1, 2, 0, 0), &[]);
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);

        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        client.write_all(b"HELLO 52\n").unwrap();
        b.accept();
        let token = new_token(&mut b);
        b.host_event(token, true, false, false);
        b.take_changes();
        b.release_closed();
        let mut reply = String::new();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        client.read_to_string(&mut reply).unwrap_or_default();
        assert!(reply.starts_with("ERROR"), "{reply:?}");
        assert_eq!(b.connections(), 0);
    }

    #[test]
    fn a_flood_of_stray_packets_queues_at_most_max_control_replies() {
        let (_dir, mut b) = backend();
        for port in 0..(MAX_CONTROL as u32 + 500) {
            b.from_guest(&guest(op::RW, port, 1, 0, 0), &[]);
        }
        assert_eq!(std::iter::from_fn(|| b.next_rx(4096)).count(), MAX_CONTROL);
    }

    #[test]
    fn a_packet_the_device_could_not_read_whole_resets_its_connection() {
        let (dir, mut b) = backend();
        let listener = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        b.from_guest(&guest(op::REQUEST, 9, 7, 1 << 16, 0), &[]);
        b.next_rx(4096).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        b.reject(&guest(op::RW, 9, 7, 1 << 16, 100_000));
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);
        assert_eq!(b.connections(), 0);
        b.take_changes();
        b.release_closed();
        assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0, "host side closed");
    }

    #[test]
    fn a_device_reset_ends_host_connections_without_waiting_for_the_event_loop() {
        let (dir, mut b) = backend();
        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        b.accept();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let token = new_token(&mut b);
        b.host_event(token, true, false, false);
        b.reset();
        // No release_closed(): the client still hears EOF at once.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn the_socket_file_goes_away_with_the_backend() {
        let (dir, b) = backend();
        assert!(dir.path().join("v.sock").exists());
        drop(b);
        assert!(!dir.path().join("v.sock").exists());
        assert!(matches!(
            Backend::new(GUEST, Path::new("/nonexistent/dir/v.sock")),
            Err(BackendError::Listen { .. })
        ));
    }

    const MS: Duration = Duration::from_millis(1);

    /// Runs `f` and returns the times just before and just after it: a deadline `f`
    /// set from the clock lies between `before + timeout` and `after + timeout`.
    fn timed<T>(f: impl FnOnce() -> T) -> (Instant, T, Instant) {
        let before = Instant::now();
        let out = f();
        (before, out, Instant::now())
    }

    fn read_to_eof(client: &mut UnixStream) -> Vec<u8> {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        rest
    }

    #[test]
    fn a_guest_that_never_answers_a_request_is_reset_at_the_request_timeout() {
        // The guest takes the REQUEST and sits on it, holding the host client and a
        // slot. The REQUEST is timed from its delivery (a booting guest with no rx
        // buffers yet is not), and the connection is reset at REQUEST_TIMEOUT.
        let (dir, mut b) = backend();
        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        b.accept();
        let token = new_token(&mut b);
        b.host_event(token, true, false, false);
        assert_eq!(b.next_deadline(), None, "not timed before the guest has it");
        let (before, req, after) = timed(|| b.next_rx(4096).unwrap().header);
        assert_eq!(req.op, op::REQUEST);
        b.tick(before + REQUEST_TIMEOUT - MS);
        assert_eq!(b.connections(), 1, "not before the deadline");
        assert!(
            b.next_deadline()
                .is_some_and(|d| d <= after + REQUEST_TIMEOUT)
        );
        b.tick(after + REQUEST_TIMEOUT);
        assert_eq!(b.connections(), 0);
        let rst = b.next_rx(4096).unwrap().header;
        assert_eq!(
            (rst.op, rst.src_port, rst.dst_port),
            (op::RST, req.src_port, 52)
        );
        assert_eq!(b.next_deadline(), None);
        b.take_changes();
        b.release_closed();
        assert!(read_to_eof(&mut client).is_empty(), "no OK line, just EOF");
        // A RESPONSE coming late is for no connection: the guest gets a RST.
        b.from_guest(&guest(op::RESPONSE, 52, req.src_port, 4096, 0), &[]);
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);
    }

    #[test]
    fn an_answered_request_is_not_timed() {
        let (dir, mut b) = backend();
        let (_client, _token, _local) = host_initiated(&mut b, dir.path(), 4096);
        assert_eq!(b.next_deadline(), None);
        b.tick(Instant::now() + Duration::from_secs(3600));
        assert_eq!(b.connections(), 1);
    }

    #[test]
    fn a_guest_that_never_resets_after_the_host_closed_is_reset_at_the_shutdown_timeout() {
        // The host client is done and closes; the guest hears SHUTDOWN(RCV|SEND) and
        // ignores it, to keep the connection (and a slot and a descriptor) forever.
        let (dir, mut b) = backend();
        let (mut client, token, local) = host_initiated(&mut b, dir.path(), 4096);
        client.write_all(b"bye").unwrap();
        drop(client);
        let (before, (), after) = timed(|| b.host_event(token, true, true, true));
        assert_eq!(
            b.next_rx(4096).unwrap().data,
            b"bye",
            "what was sent arrives"
        );
        let shut = b.next_rx(4096).unwrap().header;
        assert_eq!(
            (shut.op, shut.flags),
            (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
        );
        b.tick(before + SHUTDOWN_TIMEOUT - MS);
        assert_eq!(b.connections(), 1, "not before the deadline");
        b.tick(after + SHUTDOWN_TIMEOUT);
        assert_eq!(b.connections(), 0);
        let rst = b.next_rx(4096).unwrap().header;
        assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, local, 52));
    }

    #[test]
    fn a_guest_that_grants_no_credit_after_the_host_closed_still_loses_the_connection() {
        // With no credit the VMM never reads to the EOF, so the guest never hears the
        // SHUTDOWN it would have to answer; the deadline runs from the hang-up anyway.
        let (dir, mut b) = backend();
        let (mut client, token, _local) = host_initiated(&mut b, dir.path(), 0);
        client.write_all(b"unread").unwrap();
        drop(client);
        let (_, (), after) = timed(|| b.host_event(token, true, true, true));
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::CREDIT_REQUEST);
        assert!(b.next_rx(4096).is_none());
        b.tick(after + SHUTDOWN_TIMEOUT);
        assert_eq!(b.connections(), 0);
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);
    }

    #[test]
    fn a_host_half_close_is_not_timed_but_the_full_close_after_it_is() {
        // `arca exec` closes stdin and keeps reading output: the guest may take as long
        // as it likes. Only a host side that closed for good starts the clock.
        let (dir, mut b) = backend();
        let (mut client, token, local) = host_initiated(&mut b, dir.path(), 4096);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        b.host_event(token, true, false, false);
        let shut = b.next_rx(4096).unwrap().header;
        assert_eq!((shut.op, shut.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
        assert_eq!(b.next_deadline(), None);
        b.tick(Instant::now() + Duration::from_secs(3600));
        b.from_guest(&guest(op::RW, 52, local, 4096, 6), b"output");
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"output");
        drop(client);
        let (_, (), after) = timed(|| b.host_event(token, true, true, true));
        let shut = b.next_rx(4096).unwrap().header;
        assert_eq!(
            (shut.op, shut.flags),
            (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
        );
        b.tick(after + SHUTDOWN_TIMEOUT);
        assert_eq!(b.connections(), 0);
    }

    #[test]
    fn a_client_that_gives_up_before_the_guest_answers_is_forgotten_at_once() {
        let (dir, mut b) = backend();
        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        b.accept();
        let token = new_token(&mut b);
        b.host_event(token, true, false, false);
        drop(client);
        b.host_event(token, true, true, true);
        assert_eq!(b.connections(), 0);
        let ops: Vec<u16> = std::iter::from_fn(|| b.next_rx(4096))
            .map(|p| p.header.op)
            .collect();
        assert_eq!(ops, [op::REQUEST, op::RST]);
    }

    #[test]
    fn a_host_client_that_never_finishes_its_connect_line_is_dropped() {
        // A client that connects and trickles (or sends nothing) holds a slot and a
        // descriptor until CONNECT_LINE_TIMEOUT; the guest never hears of it.
        let (dir, mut b) = backend();
        let mut client = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        client.write_all(b"CONNECT 5").unwrap();
        let (before, (), after) = timed(|| b.accept());
        let token = new_token(&mut b);
        b.host_event(token, true, false, false);
        b.tick(before + CONNECT_LINE_TIMEOUT - MS);
        assert_eq!(b.connections(), 1, "not before the deadline");
        b.tick(after + CONNECT_LINE_TIMEOUT);
        assert_eq!(b.connections(), 0);
        assert!(b.next_rx(4096).is_none(), "nothing for the guest");
        b.take_changes();
        b.release_closed();
        assert!(read_to_eof(&mut client).is_empty());
    }

    #[test]
    fn a_guest_close_with_data_the_host_socket_will_not_take_is_reset_at_the_shutdown_timeout() {
        let (dir, mut b) = backend();
        let listener = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        b.from_guest(&guest(op::REQUEST, 9, 7, 1 << 16, 0), &[]);
        b.next_rx(4096).unwrap();
        let _server = listener.accept().unwrap(); // never reads
        let chunk = vec![0u8; MAX_PAYLOAD];
        for _ in 0..CONN_BUF_SIZE as usize / MAX_PAYLOAD {
            b.from_guest(&guest(op::RW, 9, 7, 1 << 16, chunk.len() as u32), &chunk);
        }
        assert!(
            b.conns.values().any(|c| !c.to_host.is_empty()),
            "the socket is full and data waits"
        );
        let closing = Header {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..guest(op::SHUTDOWN, 9, 7, 1 << 16, 0)
        };
        let (_, (), after) = timed(|| b.from_guest(&closing, &[]));
        assert_eq!(b.connections(), 1, "the buffered data gets its chance");
        b.tick(after + SHUTDOWN_TIMEOUT);
        assert_eq!(b.connections(), 0);
    }

    #[test]
    fn a_slow_host_reader_after_a_guest_close_keeps_the_guest_s_last_bytes() {
        // `arca run ... | slow-consumer`: the guest sent its output and closed; the host
        // takes it slowly. Each bit of progress moves the deadline, so nothing is cut.
        let (dir, mut b) = backend();
        let listener = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        b.from_guest(&guest(op::REQUEST, 9, 7, 1 << 16, 0), &[]);
        b.next_rx(4096).unwrap();
        let token = new_token(&mut b);
        let (mut server, _) = listener.accept().unwrap();
        // A small socket buffer, so that most of the guest's data waits in ours.
        let ours = &b.conns.values().next().unwrap().stream;
        rustix::net::sockopt::set_socket_send_buffer_size(ours, 4096).unwrap();
        let chunk = vec![7u8; MAX_PAYLOAD];
        for _ in 0..CONN_BUF_SIZE as usize / MAX_PAYLOAD {
            b.from_guest(&guest(op::RW, 9, 7, 1 << 16, chunk.len() as u32), &chunk);
        }
        let closing = Header {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..guest(op::SHUTDOWN, 9, 7, 1 << 16, 0)
        };
        let (_, (), closed_at) = timed(|| b.from_guest(&closing, &[]));
        std::thread::sleep(Duration::from_millis(20));
        // The reader takes a little; the socket has room again, for some of the rest.
        let waiting = |b: &Backend| b.conns.values().map(|c| c.to_host.len()).sum::<usize>();
        let before = waiting(&b);
        let mut buf = vec![0u8; 64 << 10];
        assert!(server.read(&mut buf).unwrap() > 0);
        b.host_event(token, false, true, false);
        let after = waiting(&b);
        assert!(after < before && after > 0, "{before} -> {after}");
        b.tick(closed_at + SHUTDOWN_TIMEOUT);
        assert_eq!(b.connections(), 1, "progress moved the deadline");
        // A reader that then takes nothing more still loses it, later.
        b.tick(Instant::now() + SHUTDOWN_TIMEOUT);
        assert_eq!(b.connections(), 0);
    }

    fn listener_changes(b: &mut Backend) -> Vec<FdChange> {
        let fd = b.listener.as_raw_fd();
        b.take_changes()
            .into_iter()
            .filter(|c| matches!(c, FdChange::Add { fd: f, .. } | FdChange::Remove { fd: f } if *f == fd))
            .collect()
    }

    #[test]
    fn a_listener_out_of_descriptors_is_unwatched_until_a_connection_closes() {
        // A guest that fills the fd table makes accept fail with EMFILE; the listener
        // is level-triggered and its client still waits, so watching it would spin the
        // event loop. It is unwatched, and watched again when a descriptor frees.
        let (dir, mut b) = backend();
        let fd = b.listener.as_raw_fd();
        let server = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        b.from_guest(&guest(op::REQUEST, 9, 7, 1 << 16, 0), &[]);
        b.next_rx(4096).unwrap();
        let _peer = server.accept().unwrap();
        b.take_changes();

        let emfile = std::io::Error::from(rustix::io::Errno::MFILE);
        let (_, again, after) = timed(|| b.accept_failed(&emfile));
        assert!(!again, "no retry at once");
        assert_eq!(listener_changes(&mut b), [FdChange::Remove { fd }]);
        assert!(!b.accept_failed(&std::io::Error::from(rustix::io::Errno::NFILE)));
        assert!(listener_changes(&mut b).is_empty(), "unwatched once");
        assert!(b.next_deadline().is_some_and(|d| d <= after + ACCEPT_RETRY));
        // A stale event for the listener accepts nothing while it is unwatched.
        let _waiting = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        b.accept();
        assert_eq!(b.connections(), 1);

        // A connection closes: the listener is watched again and the client accepted.
        b.from_guest(&guest(op::RST, 9, 7, 0, 0), &[]);
        assert_eq!(
            listener_changes(&mut b),
            [FdChange::Add {
                fd,
                token: LISTENER_TOKEN
            }]
        );
        assert_eq!(b.next_deadline(), None);
        b.accept();
        assert_eq!(b.connections(), 1, "the waiting client");
    }

    #[test]
    fn an_unwatched_listener_is_watched_again_after_accept_retry_without_a_close() {
        let (_dir, mut b) = backend();
        let fd = b.listener.as_raw_fd();
        b.take_changes();
        let (before, _, after) =
            timed(|| b.accept_failed(&std::io::Error::from(rustix::io::Errno::NOBUFS)));
        assert_eq!(listener_changes(&mut b), [FdChange::Remove { fd }]);
        b.tick(before + ACCEPT_RETRY - MS);
        assert!(listener_changes(&mut b).is_empty());
        b.tick(after + ACCEPT_RETRY);
        assert_eq!(
            listener_changes(&mut b),
            [FdChange::Add {
                fd,
                token: LISTENER_TOKEN
            }]
        );
        // WouldBlock ends an accept round; EINTR and an aborted client try again.
        let kind = |k: ErrorKind| std::io::Error::from(k);
        assert!(!b.accept_failed(&kind(ErrorKind::WouldBlock)));
        assert!(b.accept_failed(&kind(ErrorKind::Interrupted)));
        assert!(b.accept_failed(&kind(ErrorKind::ConnectionAborted)));
        assert!(listener_changes(&mut b).is_empty());
    }

    /// Lets this test process open a few thousand descriptors where the hard limit
    /// allows.
    fn raise_fd_limit() {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        let want = limit.maximum.map_or(4096, |max| max.min(4096));
        if limit.current.is_some_and(|cur| cur < want) {
            limit.current = Some(want);
            let _ = setrlimit(Resource::Nofile, limit);
        }
    }

    #[test]
    fn a_guest_flooding_connections_cannot_take_the_slots_kept_for_the_host() {
        // The guest opens connections to a host listener until refused; the runtime's
        // control connection must still get through.
        raise_fd_limit();
        let (dir, mut b) = backend();
        if b.fd_limit < (MAX_CONNECTIONS + 2 * RESERVED_FOR_HOST) as u64 {
            eprintln!("skipped: the open-file limit is too low for this test");
            return;
        }
        let server = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut port = 0;
        loop {
            b.from_guest(&guest(op::REQUEST, port, 7, 1 << 16, 0), &[]);
            let reply = b.next_rx(4096).unwrap().header;
            while server.accept().is_ok() {} // keep the backlog empty
            if reply.op == op::RST {
                break;
            }
            assert_eq!(reply.op, op::RESPONSE);
            port += 1;
        }
        assert_eq!(port as usize, MAX_GUEST_CONNECTIONS, "refused at the cap");
        assert_eq!(b.connections(), MAX_GUEST_CONNECTIONS);
        b.take_changes();
        // Host-initiated connections still find a slot.
        let (_client, _token, _local) = host_initiated(&mut b, dir.path(), 4096);
        assert_eq!(b.connections(), MAX_GUEST_CONNECTIONS + 1);
        // And a guest connection that closes frees a guest slot.
        b.from_guest(&guest(op::RST, 0, 7, 0, 0), &[]);
        b.from_guest(&guest(op::REQUEST, 100_000, 7, 1 << 16, 0), &[]);
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RESPONSE);
    }

    #[test]
    fn a_guest_cannot_take_the_descriptors_kept_for_the_host() {
        // Under a low open-file limit the cap on connections is not what runs out
        // first: guest connections stop RESERVED_FOR_HOST descriptors short of it.
        let (dir, mut b) = backend();
        let _server = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        b.fd_limit = RESERVED_FOR_HOST as u64;
        b.from_guest(&guest(op::REQUEST, 9, 7, 1 << 16, 0), &[]);
        assert_eq!(b.next_rx(4096).unwrap().header.op, op::RST);
        assert_eq!(b.connections(), 0);
        let (_client, _token, _local) = host_initiated(&mut b, dir.path(), 4096);
        assert_eq!(
            b.connections(),
            1,
            "host-initiated connections are not held back"
        );
    }
}
