//! The host side of the agent protocol: connect to `arca-agent` in a microVM (through
//! the VMM's hybrid vsock socket) or on the host (a Unix socket), wait for it to be
//! ready, and drive containers.
//!
//! One [`AgentClient`] is one control connection; requests on it are sequential, so a
//! blocking `wait` belongs on a connection of its own. Stdio streams are separate
//! connections opened with [`AgentAddress::attach`].

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arca_protocol::{
    AgentError, Channel, ContainerInfo, ContainerSpec, ContainerStats, ExitStatus, FrameDecoder,
    Hello, HelloReply, PROTOCOL_VERSION, ProcessInfo, ProcessSpec, Reply, Request, RequestFrame,
    Response, RestoredSandbox, StdioStream, encode_frame,
};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The agent did not answer in time.
    #[error("The agent at {address} was not ready within {waited:?}")]
    NotReady {
        /// Where we tried.
        address: String,
        /// How long.
        waited: Duration,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// The connection failed.
    #[error("Connection to the agent failed")]
    Io(#[from] io::Error),
    /// The agent sent something that is not a valid frame.
    #[error("Bad frame from the agent")]
    Frame(#[from] arca_protocol::FrameError),
    /// The agent closed the connection.
    #[error("The agent closed the connection")]
    Closed,
    /// The agent did not answer a request in time.
    #[error("The agent did not answer {request} within {waited:?}")]
    Timeout {
        /// The request's kind.
        request: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// The agent answered with something unexpected.
    #[error("Unexpected reply from the agent: {0}")]
    Unexpected(String),
    /// The agent refused the request.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent could not make a container's layer (its words), or sent one that is
    /// cut short or larger than allowed.
    #[error("{0}")]
    Layer(String),
    /// The agent's sandbox (VMM or host agent) ended or stopped answering while we
    /// waited; the text says how.
    #[error("{0}")]
    SandboxGone(String),
}

/// Asked while a connection or an answer is awaited: `Some(why)` once the agent's
/// sandbox is known to be gone, which ends the wait with
/// [`AgentClientError::SandboxGone`].
pub type Watch = Box<dyn FnMut() -> Option<String> + Send>;

/// How long the vsock handshake (`CONNECT`, `OK`) may take in all.
const HANDSHAKE: Duration = Duration::from_millis(500);
/// How often a [`Watch`] is asked while an answer is awaited.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// How long a layer stream may stay silent (the agent walks and reads the layer as it
/// sends it: a pause is a slow disk at most).
const LAYER_IDLE: Duration = Duration::from_secs(120);

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// `arca-agent serve --listen PATH` on the host.
    Unix(PathBuf),
    /// In a microVM: the VMM's hybrid vsock socket and the agent's port.
    Vsock {
        /// The VMM's `--vsock uds=` path.
        uds: PathBuf,
        /// The agent's vsock port.
        port: u32,
    },
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddress::Unix(p) => write!(f, "{}", p.display()),
            AgentAddress::Vsock { uds, port } => {
                write!(f, "vsock port {port} via {}", uds.display())
            }
        }
    }
}

impl AgentAddress {
    /// One attempt: a connected stream with the vsock handshake done, before any
    /// hello (for tools that speak the protocol themselves).
    pub fn connect_once(&self) -> io::Result<UnixStream> {
        match self {
            AgentAddress::Unix(p) => UnixStream::connect(p),
            AgentAddress::Vsock { uds, port } => {
                let mut s = UnixStream::connect(uds)?;
                // A guest whose vsock driver is not up yet may not answer at all; one
                // that trickles bytes gets no longer in all.
                let deadline = Instant::now() + HANDSHAKE;
                s.write_all(format!("CONNECT {port}\n").as_bytes())?;
                // Read the "OK <port>" line byte by byte: what follows belongs to the agent.
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while byte[0] != b'\n' {
                    s.set_read_timeout(Some(remaining(deadline)?))?;
                    if s.read(&mut byte)? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            "nothing listens on the agent port yet",
                        ));
                    }
                    line.push(byte[0]);
                    if line.len() > 64 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "bad vsock handshake",
                        ));
                    }
                }
                if !line.starts_with(b"OK ") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad vsock handshake",
                    ));
                }
                s.set_read_timeout(None)?;
                Ok(s)
            }
        }
    }

    /// Connects and exchanges hellos, retrying refused connections until `timeout`
    /// (and, between tries, asking `watch` whether the agent's sandbox is still there).
    fn open(
        &self,
        channel: Channel,
        timeout: Duration,
        watch: &mut dyn FnMut() -> Option<String>,
    ) -> Result<(UnixStream, FrameDecoder), AgentClientError> {
        let start = Instant::now();
        let mut stream = loop {
            match self.connect_once() {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= timeout => {
                    return Err(AgentClientError::NotReady {
                        address: self.to_string(),
                        waited: timeout,
                        source: e,
                    });
                }
                Err(_) => {
                    if let Some(why) = watch() {
                        return Err(AgentClientError::SandboxGone(why));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        stream.write_all(&encode_frame(&Hello {
            version: PROTOCOL_VERSION,
            channel,
        })?)?;
        let mut decoder = FrameDecoder::new();
        // A wedged agent must not hang the host: the hello gets what is left of the
        // timeout (at least a second), in all, however slowly its bytes come.
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        let reply: HelloReply = read_frame(
            &mut stream,
            &mut decoder,
            Instant::now() + left,
            ("the hello", left),
        )?;
        stream.set_read_timeout(None)?;
        if let Some(e) = reply.error {
            return Err(e.into());
        }
        Ok((stream, decoder))
    }

    /// Opens one stdio stream of a process. Output streams end with EOF; shut down the
    /// write side of a stdin stream to close the process's stdin.
    pub fn attach(
        &self,
        container: &str,
        process: Option<&str>,
        stream: StdioStream,
    ) -> Result<StdioConnection, AgentClientError> {
        let channel = Channel::Stdio {
            container: container.into(),
            process: process.map(Into::into),
            stream,
        };
        let (stream, mut decoder) = self.open(channel, Duration::from_secs(5), &mut || None)?;
        Ok(StdioConnection {
            pending: decoder.take_remainder(),
            stream,
        })
    }

    /// Opens a connection to `port` of `container`, which the agent makes inside the
    /// container's network namespace: for TCP what is written and read is the TCP
    /// stream; for UDP, datagrams framed as the protocol says ([`Channel::Forward`]).
    pub fn forward(
        &self,
        container: &str,
        port: u16,
        protocol: arca_protocol::PortProtocol,
    ) -> Result<StdioConnection, AgentClientError> {
        let channel = Channel::Forward {
            container: container.into(),
            port,
            protocol,
        };
        let (stream, mut decoder) = self.open(channel, Duration::from_secs(10), &mut || None)?;
        Ok(StdioConnection {
            pending: decoder.take_remainder(),
            stream,
        })
    }
}

impl AgentAddress {
    /// Copies the writable layer of exited container `container` to `out` as an OCI
    /// layer tar ([`Channel::Layer`]); returns its size. The agent is not trusted: a
    /// layer of more than `limit` bytes, a stream cut short (no end chunk) and a
    /// malformed chunk are errors, and what was written to `out` must then be
    /// discarded.
    pub fn layer(
        &self,
        container: &str,
        out: &mut dyn Write,
        limit: u64,
    ) -> Result<u64, AgentClientError> {
        let channel = Channel::Layer {
            container: container.into(),
        };
        let (stream, mut decoder) = self.open(channel, Duration::from_secs(10), &mut || None)?;
        // A guest that stops sending must not hold the build forever.
        stream.set_read_timeout(Some(LAYER_IDLE))?;
        let mut input = io::Cursor::new(decoder.take_remainder()).chain(stream);
        read_layer(&mut input, out, limit).map_err(|e| match e {
            AgentClientError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                AgentClientError::Layer(format!(
                    "The agent sent nothing of the layer for {} s",
                    LAYER_IDLE.as_secs()
                ))
            }
            e => e,
        })
    }
}

/// Reads a layer connection's chunks ([`Channel::Layer`]) from `input`, the tar's
/// bytes to `out`; the tar's size once the end chunk came. The peer is hostile: more
/// than `limit` bytes, a chunk past its bound, a failure chunk and a stream that ends
/// before the end chunk are errors, and memory stays within one chunk.
pub fn read_layer(
    input: &mut dyn Read,
    out: &mut dyn Write,
    limit: u64,
) -> Result<u64, AgentClientError> {
    use arca_protocol::LayerChunk;
    let cut = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            AgentClientError::Layer("The agent's layer stream was cut short".into())
        } else {
            e.into()
        }
    };
    let mut total = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; 4];
        input.read_exact(&mut header).map_err(cut)?;
        match LayerChunk::parse(header)? {
            LayerChunk::End => return Ok(total),
            LayerChunk::Data(n) => {
                total += n as u64;
                if total > limit {
                    return Err(AgentClientError::Layer(format!(
                        "The layer is larger than {limit} bytes"
                    )));
                }
                buf.resize(n, 0);
                input.read_exact(&mut buf).map_err(cut)?;
                out.write_all(&buf)?;
            }
            LayerChunk::Error => {
                let mut len = [0u8; 4];
                input.read_exact(&mut len).map_err(cut)?;
                let len = u32::from_be_bytes(len).min(arca_protocol::MAX_CHUNK_ERROR);
                let mut why = vec![0u8; len as usize];
                input.read_exact(&mut why).map_err(cut)?;
                // The guest's words, without its control characters (they reach a
                // terminal).
                let why: String = String::from_utf8_lossy(&why)
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                return Err(AgentClientError::Layer(format!(
                    "The agent could not make the layer: {why}"
                )));
            }
        }
    }
}

/// The time left before `deadline`, or `TimedOut` once it has passed.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

/// Reads one frame, all of it before `deadline` (however the bytes trickle in); past
/// it, [`AgentClientError::Timeout`] naming `what`.
fn read_frame<T: for<'de> serde::Deserialize<'de>>(
    stream: &mut UnixStream,
    decoder: &mut FrameDecoder,
    deadline: Instant,
    what: (&'static str, Duration),
) -> Result<T, AgentClientError> {
    let mut buf = [0u8; 8192];
    let timeout = || AgentClientError::Timeout {
        request: what.0,
        waited: what.1,
    };
    loop {
        if let Some(m) = decoder.next::<T>()? {
            return Ok(m);
        }
        stream.set_read_timeout(Some(remaining(deadline).map_err(|_| timeout())?))?;
        let n = match stream.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout());
            }
            // A read with a timeout is not restarted after a signal handler (SA_RESTART
            // does not cover SO_RCVTIMEO sockets), and `arca run` forwards signals.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        if n == 0 {
            decoder.finish()?;
            return Err(AgentClientError::Closed);
        }
        decoder.push(&buf[..n]);
    }
}

/// A stdio stream of a process.
#[derive(Debug)]
pub struct StdioConnection {
    pending: Vec<u8>,
    stream: UnixStream,
}

impl StdioConnection {
    /// Ends the process's input (for stdin and tty streams).
    pub fn close_input(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// Another handle on the socket (to shut it down from elsewhere).
    pub fn socket_clone(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// Reads everything until the process closes the stream.
    pub fn read_to_end_vec(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The socket, for callers that poll it (bytes already buffered come first through
    /// [`Read`]; call this after draining them).
    pub fn into_parts(self) -> (Vec<u8>, UnixStream) {
        (self.pending, self.stream)
    }
}

impl Read for StdioConnection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.pending.is_empty() {
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

impl Write for StdioConnection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A control connection.
pub struct AgentClient {
    address: AgentAddress,
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    /// How long a quick request may take; see [`Self::answer_deadline`].
    patience: Duration,
    /// Asked while answers are awaited (see [`Watch`]).
    watch: Option<Watch>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("address", &self.address)
            .field("next_id", &self.next_id)
            .field("patience", &self.patience)
            .field("watched", &self.watch.is_some())
            .finish()
    }
}

/// [`AgentClient`]'s default patience for quick requests.
const QUICK_ANSWER: Duration = Duration::from_secs(30);

impl AgentClient {
    /// Connects, waiting up to `timeout` for the agent to listen (a booting VM).
    pub fn connect(address: &AgentAddress, timeout: Duration) -> Result<Self, AgentClientError> {
        Self::connect_watched(address, timeout, Box::new(|| None))
    }

    /// As [`Self::connect`], but gives up as soon as `watch` reports the sandbox gone
    /// (a VMM that exits at start fails the connection at once, with its reason), and
    /// keeps asking it while answers are awaited.
    pub fn connect_watched(
        address: &AgentAddress,
        timeout: Duration,
        mut watch: Watch,
    ) -> Result<Self, AgentClientError> {
        let (stream, decoder) = address.open(Channel::Control, timeout, &mut watch)?;
        Ok(Self {
            address: address.clone(),
            stream,
            decoder,
            next_id: 1,
            patience: QUICK_ANSWER,
            watch: Some(watch),
        })
    }

    /// Replaces what is asked while answers are awaited.
    pub fn set_watch(&mut self, watch: Watch) {
        self.watch = Some(watch);
    }

    /// Sets how long a quick request may take in all (slow ones get three times as
    /// long); callers with their own deadline (`stop`, `rm -f`) shorten it.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Another control connection to the same agent (for a blocking `wait`).
    pub fn reconnect(&self) -> Result<Self, AgentClientError> {
        Self::connect(&self.address, Duration::from_secs(5))
    }

    /// Another handle on the connection's socket (to shut it down from elsewhere, and
    /// so end a request that waits on it).
    pub fn socket_clone(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// Where the agent is.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// How long the answer to `request` may take in all: a `wait` blocks as long as the
    /// process runs (its end is watched instead); requests that make or start
    /// processes wait three times the quick patience (90 s, above the agent's own 60 s
    /// handshake timeout); the rest are quick.
    fn answer_deadline(&self, request: &Request) -> Option<(&'static str, Duration)> {
        let slow = self.patience * 3;
        match request {
            Request::Wait { .. } => None,
            Request::Create { .. } => Some(("create", slow)),
            Request::Start { .. } => Some(("start", slow)),
            Request::Exec { .. } => Some(("exec", slow)),
            Request::Remove { .. } => Some(("remove", slow)),
            _ => Some(("a request", self.patience)),
        }
    }

    /// Sends `request` and waits for its response: all of it within the request's
    /// deadline (see [`Self::answer_deadline`]), however slowly its bytes come, and only
    /// while the watch (if any) does not report the sandbox gone. After a timeout the
    /// connection stays usable: a late answer is skipped by its id.
    pub fn request(&mut self, request: Request) -> Result<Reply, AgentClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let limit = self.answer_deadline(&request);
        let deadline = limit.map(|(_, d)| Instant::now() + d);
        let what = limit.unwrap_or(("wait", Duration::ZERO));
        // An agent that reads nothing must not block the write either.
        self.stream.set_write_timeout(Some(self.patience))?;
        self.stream
            .write_all(&encode_frame(&RequestFrame { id, request })?)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => AgentClientError::Timeout {
                    request: what.0,
                    waited: self.patience,
                },
                _ => e.into(),
            })?;
        loop {
            // Read in slices, asking the watch between them.
            let slice = Instant::now() + WATCH_INTERVAL;
            let until = deadline.map_or(slice, |d| d.min(slice));
            let response: Response =
                match read_frame(&mut self.stream, &mut self.decoder, until, what) {
                    Err(AgentClientError::Timeout { .. })
                        if deadline.is_none_or(|d| Instant::now() < d) =>
                    {
                        if let Some(why) = self.watch.as_mut().and_then(|w| w()) {
                            return Err(AgentClientError::SandboxGone(why));
                        }
                        continue;
                    }
                    other => other?,
                };
            if response.id == id {
                return Ok(response.result?);
            }
            if response.id == 0 {
                // The agent reports a broken request stream with id 0.
                return Err(response
                    .result
                    .err()
                    .map_or(AgentClientError::Closed, Into::into));
            }
        }
    }

    /// Liveness.
    pub fn ping(&mut self) -> Result<(), AgentClientError> {
        expect(self.request(Request::Ping)?, |r| {
            matches!(r, Reply::Pong).then_some(())
        })
    }

    /// Creates a container; returns its init pid as the agent sees it.
    pub fn create(&mut self, spec: ContainerSpec) -> Result<u32, AgentClientError> {
        expect(
            self.request(Request::Create {
                spec: Box::new(spec),
            })?,
            |r| match r {
                Reply::Created { pid } => Some(pid),
                _ => None,
            },
        )
    }

    /// Starts a created container's main process.
    pub fn start(&mut self, container: &str) -> Result<(), AgentClientError> {
        expect(
            self.request(Request::Start {
                container: container.into(),
            })?,
            |r| matches!(r, Reply::Started).then_some(()),
        )
    }

    /// Runs another process in a running container.
    pub fn exec(
        &mut self,
        container: &str,
        process_id: &str,
        process: ProcessSpec,
    ) -> Result<u32, AgentClientError> {
        let req = Request::Exec {
            container: container.into(),
            process_id: process_id.into(),
            process,
        };
        expect(self.request(req)?, |r| match r {
            Reply::ExecStarted { pid } => Some(pid),
            _ => None,
        })
    }

    /// Waits for a process to exit.
    pub fn wait(
        &mut self,
        container: &str,
        process: Option<&str>,
    ) -> Result<ExitStatus, AgentClientError> {
        let req = Request::Wait {
            container: container.into(),
            process: process.map(Into::into),
        };
        expect(self.request(req)?, |r| match r {
            Reply::Exited { status } => Some(status),
            _ => None,
        })
    }

    /// Sends a signal.
    pub fn signal(
        &mut self,
        container: &str,
        process: Option<&str>,
        signal: i32,
    ) -> Result<(), AgentClientError> {
        let req = Request::Signal {
            container: container.into(),
            process: process.map(Into::into),
            signal,
        };
        expect(self.request(req)?, |r| {
            matches!(r, Reply::Signalled).then_some(())
        })
    }

    /// Resizes a process's terminal.
    pub fn resize(
        &mut self,
        container: &str,
        process: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentClientError> {
        let req = Request::ResizeTty {
            container: container.into(),
            process: process.map(Into::into),
            rows,
            cols,
        };
        expect(self.request(req)?, |r| {
            matches!(r, Reply::Resized).then_some(())
        })
    }

    /// Cgroup figures.
    pub fn stats(&mut self, container: &str) -> Result<ContainerStats, AgentClientError> {
        expect(
            self.request(Request::Stats {
                container: container.into(),
            })?,
            |r| match r {
                Reply::Stats { stats } => Some(stats),
                _ => None,
            },
        )
    }

    /// All containers.
    pub fn list(&mut self) -> Result<Vec<ContainerInfo>, AgentClientError> {
        expect(self.request(Request::List)?, |r| match r {
            Reply::Containers { containers } => Some(containers),
            _ => None,
        })
    }

    /// A running container's processes.
    pub fn top(&mut self, container: &str) -> Result<Vec<ProcessInfo>, AgentClientError> {
        expect(
            self.request(Request::Top {
                container: container.into(),
            })?,
            |r| match r {
                Reply::Processes { processes } => Some(processes),
                _ => None,
            },
        )
    }

    /// Tells a sandbox restored from a snapshot to make itself its own (see
    /// `Request::Restored`): the first request after a warm start.
    pub fn restored(&mut self, restored: RestoredSandbox) -> Result<(), AgentClientError> {
        expect(self.request(Request::Restored(Box::new(restored)))?, |r| {
            matches!(r, Reply::RestoreDone).then_some(())
        })
    }

    /// What changed in a container's root filesystem against its image, sorted by
    /// path (every page of them).
    pub fn changes(
        &mut self,
        container: &str,
    ) -> Result<Vec<arca_protocol::Change>, AgentClientError> {
        let mut all = Vec::new();
        loop {
            let (page, more) = expect(
                self.request(Request::Changes {
                    container: container.into(),
                    from: u32::try_from(all.len()).unwrap_or(u32::MAX),
                })?,
                |r| match r {
                    Reply::Changes { changes, more } => Some((changes, more)),
                    _ => None,
                },
            )?;
            if page.is_empty() && more {
                return Err(AgentClientError::Closed);
            }
            all.extend(page);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Freezes (`frozen`) or thaws a running container's processes.
    pub fn freeze(&mut self, container: &str, frozen: bool) -> Result<(), AgentClientError> {
        expect(
            self.request(Request::Freeze {
                container: container.into(),
                frozen,
            })?,
            |r| matches!(r, Reply::FreezeSet).then_some(()),
        )
    }

    /// Forgets a container (`force`: kills it first if it runs).
    pub fn remove(&mut self, container: &str, force: bool) -> Result<(), AgentClientError> {
        expect(
            self.request(Request::Remove {
                container: container.into(),
                force,
            })?,
            |r| matches!(r, Reply::Removed).then_some(()),
        )
    }

    /// Kills everything and ends the agent (and its VM).
    pub fn shutdown(&mut self) -> Result<(), AgentClientError> {
        expect(self.request(Request::Shutdown)?, |r| {
            matches!(r, Reply::ShuttingDown).then_some(())
        })
    }
}

fn expect<T>(reply: Reply, pick: impl FnOnce(Reply) -> Option<T>) -> Result<T, AgentClientError> {
    let text = format!("{reply:?}");
    pick(reply).ok_or(AgentClientError::Unexpected(text))
}

/// Reads lines until EOF (for small outputs in tests and tools).
pub fn read_lines(conn: StdioConnection) -> io::Result<Vec<String>> {
    io::BufReader::new(conn).lines().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(stream: &mut UnixStream, id: u64) {
        let frame = encode_frame(&Response {
            id,
            result: Ok(Reply::Pong),
        })
        .unwrap();
        stream.write_all(&frame).unwrap();
    }

    fn client(stream: UnixStream, patience: Duration) -> AgentClient {
        AgentClient {
            address: AgentAddress::Unix(PathBuf::from("/nonexistent")),
            stream,
            decoder: FrameDecoder::new(),
            next_id: 1,
            patience,
            watch: None,
        }
    }

    #[test]
    fn an_agent_trickling_its_answer_byte_by_byte_is_cut_off_at_the_deadline() {
        // Hostile: each byte arrives well within a per-read timeout, so only an overall
        // deadline ends the request.
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let mut client = client(ours, Duration::from_millis(300));
        let frame = encode_frame(&Response {
            id: 1,
            result: Ok(Reply::Pong),
        })
        .unwrap();
        let trickle = std::thread::spawn(move || {
            for b in frame {
                if agent.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        let got = client.ping();
        assert!(
            matches!(got, Err(AgentClientError::Timeout { .. })),
            "{got:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        drop(client);
        trickle.join().unwrap();
    }

    #[test]
    fn a_wait_ends_when_the_watch_reports_the_sandbox_gone() {
        // A wedged or dead VMM never answers a wait: the watch ends it.
        let (ours, _agent) = UnixStream::pair().unwrap();
        let mut client = client(ours, Duration::from_secs(30));
        let mut asked = 0;
        client.set_watch(Box::new(move || {
            asked += 1;
            (asked == 3).then(|| "arca-vmm exited (exit status: 1)".to_string())
        }));
        let start = Instant::now();
        match client.wait("c", None) {
            Err(AgentClientError::SandboxGone(why)) => assert!(why.contains("exited"), "{why}"),
            other => panic!("expected SandboxGone, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_connection_to_a_sandbox_that_died_fails_at_once_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let address = AgentAddress::Unix(dir.path().join("never.sock"));
        let start = Instant::now();
        let got = AgentClient::connect_watched(
            &address,
            Duration::from_secs(30),
            Box::new(|| Some("arca-vmm exited: bad disk".into())),
        );
        match got {
            Err(AgentClientError::SandboxGone(why)) => assert_eq!(why, "arca-vmm exited: bad disk"),
            other => panic!("expected SandboxGone, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_silent_agent_times_out_and_its_late_answer_is_skipped() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let mut client = client(ours, Duration::from_millis(100));
        match client.ping() {
            Err(AgentClientError::Timeout { waited, .. }) => {
                assert_eq!(waited, Duration::from_millis(100));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        // The answer to the first ping comes late, then the second's.
        answer(&mut agent, 1);
        answer(&mut agent, 2);
        client.ping().expect("the second ping is answered");
        // An agent that hangs up is told apart from one that is slow.
        drop(agent);
        let gone = client.ping();
        assert!(
            matches!(
                gone,
                Err(AgentClientError::Closed | AgentClientError::Io(_))
            ),
            "{gone:?}"
        );
    }

    /// The host's layer reader against a hostile agent (the `layer_chunks` fuzz
    /// target's properties, on mutations of a real chunk stream, for where cargo-fuzz
    /// is missing): a whole stream reads back; one cut short, over the limit, failing
    /// or mutated never succeeds without an end chunk or passes on more than the limit.
    #[test]
    fn layer_chunks_from_a_hostile_agent() {
        use arca_protocol::{chunk_header, error_chunk};
        let mut good = Vec::new();
        for part in [&b"abc"[..], &[7u8; 300][..]] {
            good.extend_from_slice(&chunk_header(part.len()));
            good.extend_from_slice(part);
        }
        good.extend_from_slice(&chunk_header(0));
        let mut out = Vec::new();
        assert_eq!(
            read_layer(&mut good.as_slice(), &mut out, 1000).unwrap(),
            303
        );
        assert_eq!(out.len(), 303);
        // Cut short anywhere before the end chunk: an error.
        for cut in 0..good.len() - 4 {
            let mut out = Vec::new();
            let e = read_layer(&mut &good[..cut], &mut out, 1000).unwrap_err();
            assert!(e.to_string().contains("cut short"), "{cut}: {e}");
        }
        // Over the limit.
        let e = read_layer(&mut good.as_slice(), &mut Vec::new(), 100).unwrap_err();
        assert!(e.to_string().contains("larger than 100 bytes"), "{e}");
        // A failure chunk after data.
        let mut failing = good[..7].to_vec();
        failing.extend_from_slice(&error_chunk("disk on fire"));
        let e = read_layer(&mut failing.as_slice(), &mut Vec::new(), 1000).unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        // Mutations: a byte changed, in 3000 ways.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = good.clone();
            let at = (seed as usize) % m.len();
            m[at] = (seed >> 32) as u8;
            let limit = (seed >> 40) % 400;
            let mut out = Vec::new();
            if let Ok(n) = read_layer(&mut m.as_slice(), &mut out, limit) {
                assert_eq!(n, out.len() as u64);
            }
            assert!(out.len() as u64 <= limit);
        }
    }
}
