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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};

/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Receive buffer the VMM advertises per connection (guest-to-host direction).
pub const CONN_BUF_SIZE: u32 = 256 << 10;
/// Largest payload the VMM puts in one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Most connections at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
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
    /// Stop watching `fd`; it closes when the loop calls [`Backend::release_closed`].
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

    /// Fd changes the event loop must apply, oldest first.
    pub fn take_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.changes)
    }

    /// Closes the sockets whose removal the event loop has applied.
    pub fn release_closed(&mut self) {
        self.closing.clear();
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

    fn add_conn(&mut self, stream: UnixStream, state: State, local_port: u32, peer_port: u32) {
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
            connect_line: Vec::new(),
        };
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
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropping the stream refuses the client
                    }
                    let local_port = self.alloc_local_port();
                    self.add_conn(stream, State::AwaitingConnectLine, local_port, 0);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // WouldBlock: all accepted. Anything else (EMFILE) would repeat at
                // once; the client waits in the backlog until a connection closes.
                Err(_) => break,
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

    /// A connection socket became readable, writable, or hung up.
    pub fn host_event(&mut self, token: u32, readable: bool, writable: bool) {
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if readable {
            conn.host_readable = true;
        }
        if writable {
            conn.host_writable = true;
        }
        if conn.state == State::AwaitingConnectLine {
            self.read_connect_line(key);
        } else if writable {
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
        while conn.host_writable && !conn.to_host.is_empty() {
            let (front, _) = conn.to_host.as_slices();
            match conn.stream.write(front) {
                Ok(n) => {
                    conn.to_host.drain(..n);
                    conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
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
        if drained && conn.guest_send_done {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        // Tell the guest about freed buffer space once a quarter of it is free again.
        if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_reported) >= CONN_BUF_SIZE / 4 {
            self.queue_control(key, op::CREDIT_UPDATE, 0);
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
                    self.abort(key);
                }
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
                if hdr.flags & SHUTDOWN_RCV != 0 && hdr.flags & SHUTDOWN_SEND != 0 {
                    conn.close_when_drained = true;
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
    fn connect_to_host(&mut self, hdr: &Header) {
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        let stream = if self.conns.len() < MAX_CONNECTIONS {
            connect_nonblocking(&path)
        } else {
            None
        };
        match stream {
            Some(stream) => {
                let key = (hdr.dst_port, hdr.src_port);
                self.add_conn(stream, State::Established, key.0, key.1);
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
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.host_eof = true;
                    conn.fwd_cnt_reported = conn.fwd_cnt;
                    let header = Header {
                        flags: SHUTDOWN_SEND,
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
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
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
        b.host_event(token, true, true);
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
        b.host_event(token, true, false);
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
        b.host_event(token, true, false);
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
        b.host_event(token, true, false);
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
        b.host_event(token, true, false);
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
        b.host_event(token, true, false);
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
}
