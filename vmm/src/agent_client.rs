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
    Hello, HelloReply, PROTOCOL_VERSION, ProcessSpec, Reply, Request, RequestFrame, Response,
    StdioStream, encode_frame,
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
}

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
                // A guest whose vsock driver is not up yet may not answer at all.
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                s.write_all(format!("CONNECT {port}\n").as_bytes())?;
                // Read the "OK <port>" line byte by byte: what follows belongs to the agent.
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while byte[0] != b'\n' {
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

    /// Connects and exchanges hellos, retrying refused connections until `timeout`.
    fn open(
        &self,
        channel: Channel,
        timeout: Duration,
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
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        stream.write_all(&encode_frame(&Hello {
            version: PROTOCOL_VERSION,
            channel,
        })?)?;
        let mut decoder = FrameDecoder::new();
        // A wedged agent must not hang the host: the hello gets what is left of the
        // timeout (at least a second).
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        stream.set_read_timeout(Some(left))?;
        let reply: HelloReply = read_frame(&mut stream, &mut decoder)?;
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
        let (stream, mut decoder) = self.open(channel, Duration::from_secs(5))?;
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
        let (stream, mut decoder) = self.open(channel, Duration::from_secs(10))?;
        Ok(StdioConnection {
            pending: decoder.take_remainder(),
            stream,
        })
    }
}

fn read_frame<T: for<'de> serde::Deserialize<'de>>(
    stream: &mut UnixStream,
    decoder: &mut FrameDecoder,
) -> Result<T, AgentClientError> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(m) = decoder.next::<T>()? {
            return Ok(m);
        }
        let n = stream.read(&mut buf)?;
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
#[derive(Debug)]
pub struct AgentClient {
    address: AgentAddress,
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    /// How long a quick request may take; see [`Self::answer_deadline`].
    patience: Duration,
}

/// [`AgentClient`]'s default patience for quick requests.
const QUICK_ANSWER: Duration = Duration::from_secs(30);

impl AgentClient {
    /// Connects, waiting up to `timeout` for the agent to listen (a booting VM).
    pub fn connect(address: &AgentAddress, timeout: Duration) -> Result<Self, AgentClientError> {
        let (stream, decoder) = address.open(Channel::Control, timeout)?;
        Ok(Self {
            address: address.clone(),
            stream,
            decoder,
            next_id: 1,
            patience: QUICK_ANSWER,
        })
    }

    /// Another control connection to the same agent (for a blocking `wait`).
    pub fn reconnect(&self) -> Result<Self, AgentClientError> {
        Self::connect(&self.address, Duration::from_secs(5))
    }

    /// Where the agent is.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// How long the answer to `request` may take: a `wait` blocks as long as the process
    /// runs; requests that make or start processes wait three times the quick patience
    /// (90 s, above the agent's own 60 s handshake timeout); the rest are quick.
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

    /// Sends `request` and waits for its response (see [`Self::answer_deadline`]). After
    /// a timeout the connection stays usable: a late answer is skipped by its id.
    pub fn request(&mut self, request: Request) -> Result<Reply, AgentClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let deadline = self.answer_deadline(&request);
        self.stream
            .write_all(&encode_frame(&RequestFrame { id, request })?)?;
        self.stream.set_read_timeout(deadline.map(|(_, d)| d))?;
        loop {
            let response: Response = match read_frame(&mut self.stream, &mut self.decoder) {
                Err(AgentClientError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let (request, waited) = deadline.unwrap_or(("a request", Duration::ZERO));
                    return Err(AgentClientError::Timeout { request, waited });
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

    /// Appends entries to a running container's `/etc/hosts`.
    pub fn add_hosts(
        &mut self,
        container: &str,
        entries: Vec<arca_protocol::HostEntry>,
    ) -> Result<(), AgentClientError> {
        expect(
            self.request(Request::AddHosts {
                container: container.into(),
                entries,
            })?,
            |r| matches!(r, Reply::HostsAdded).then_some(()),
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

    #[test]
    fn a_silent_agent_times_out_and_its_late_answer_is_skipped() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let mut client = AgentClient {
            address: AgentAddress::Unix(PathBuf::from("/nonexistent")),
            stream: ours,
            decoder: FrameDecoder::new(),
            next_id: 1,
            patience: Duration::from_millis(100),
        };
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
}
