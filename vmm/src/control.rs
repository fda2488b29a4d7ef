//! The VMM's control socket: pause, resume and snapshot requests from the VM's owner.
//!
//! Protocol (one request per connection): the client connects to the Unix socket
//! given by `--control`, sends one line, and reads one line back.
//!
//! | request    | descriptors sent with it (SCM_RIGHTS)        | answer          |
//! |------------|----------------------------------------------|-----------------|
//! | `pause`    | none                                         | `ok` or `error: ...` |
//! | `resume`   | none                                         | `ok` or `error: ...` |
//! | `snapshot` | the state file, then the memory file, both open for writing | `ok` or `error: ...` |
//!
//! `snapshot` needs a paused VM and leaves it paused. The client opens the files, so
//! a jailed VMM, whose root is empty, writes snapshots where its owner chooses and
//! nowhere else. The socket is made mode 0600 in a directory its owner controls; the
//! VMM reads at most [`MAX_REQUEST`] bytes and two descriptors from a connection, and
//! drops a connection that sends more, or no whole line.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use vmm_sys_util::epoll::EventSet;

/// The longest request line read.
pub const MAX_REQUEST: usize = 256;
/// The most descriptors a request carries.
const MAX_FDS: usize = 2;
/// How long a client waits for its answer (a snapshot of a large VM takes a while).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket cannot be made.
    #[error("Cannot listen on the control socket {path}")]
    Bind {
        /// Its path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The client cannot reach the VMM.
    #[error("Cannot reach the VMM's control socket {path}")]
    Connect {
        /// Its path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("The control request failed")]
    Exchange(#[source] std::io::Error),
    /// The VMM refused or failed the request.
    #[error("The VMM refused: {0}")]
    Refused(String),
    /// A snapshot file cannot be opened.
    #[error("Cannot open {path} for the snapshot")]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A request.
#[derive(Debug)]
pub enum Request {
    /// Park every vCPU.
    Pause,
    /// Let them run again.
    Resume,
    /// Save the paused VM to these files.
    Snapshot {
        /// The state file.
        state: std::fs::File,
        /// The memory file.
        memory: std::fs::File,
    },
}

/// Parses a request line with the descriptors that came with it.
pub fn parse_request(line: &str, mut fds: Vec<OwnedFd>) -> Result<Request, String> {
    let request = match line.trim_end_matches(['\r', '\n']) {
        "pause" | "resume" if !fds.is_empty() => {
            return Err("this request takes no file descriptors".to_owned());
        }
        "pause" => Request::Pause,
        "resume" => Request::Resume,
        "snapshot" => {
            if fds.len() != 2 {
                return Err(format!(
                    "snapshot needs two file descriptors (state, memory), {} came",
                    fds.len()
                ));
            }
            let memory = fds.pop().map(std::fs::File::from);
            let state = fds.pop().map(std::fs::File::from);
            match (state, memory) {
                (Some(state), Some(memory)) => Request::Snapshot { state, memory },
                _ => return Err("snapshot needs two file descriptors".to_owned()),
            }
        }
        other => {
            return Err(format!(
                "unknown request {:?}: use pause, resume or snapshot",
                other.chars().take(40).collect::<String>()
            ));
        }
    };
    Ok(request)
}

/// A request read whole, and the connection to answer on.
#[derive(Debug)]
pub struct Pending {
    /// The request, or why it is not one.
    pub request: Result<Request, String>,
    stream: UnixStream,
}

impl Pending {
    /// Answers the client (`Ok` as `ok`, `Err(why)` as `error: why`) and closes.
    pub fn answer(mut self, result: Result<(), String>) {
        let line = match result {
            Ok(()) => "ok\n".to_owned(),
            Err(why) => format!("error: {}\n", why.replace('\n', " ")),
        };
        // One short line always fits an empty socket buffer, so the non-blocking write
        // is whole; a client that went away gets nothing (the VM is not its to stop).
        let _ = self.stream.write_all(line.as_bytes());
    }
}

/// A connection whose request line is not whole yet.
struct Partial {
    stream: UnixStream,
    line: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// The control socket in the event loop: accepts connections, reads their requests, and
/// queues them for the VMM's run loop to act on and answer.
pub struct ControlEvents {
    listener: UnixListener,
    path: PathBuf,
    /// The VMM's effective uid when it bound the socket: its owner's.
    owner: rustix::process::Uid,
    partial: HashMap<RawFd, Partial>,
    ready: Vec<Pending>,
}

impl std::fmt::Debug for ControlEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlEvents")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlEvents {
    /// Listens on `path` (which must not exist), owner-only.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let err = |source| ControlError::Bind {
            path: path.to_owned(),
            source,
        };
        // Owner-only from the start: no client can connect between bind and chmod.
        let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let bound = UnixListener::bind(path);
        rustix::process::umask(umask);
        let listener = bound.map_err(err)?;
        let listening = Self {
            listener,
            path: path.to_owned(),
            owner: rustix::process::geteuid(),
            partial: HashMap::new(),
            ready: Vec::new(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        listening.listener.set_nonblocking(true).map_err(err)?;
        Ok(listening)
    }

    /// The requests read whole since the last call.
    pub fn take_ready(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.ready)
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            // Only the VMM's own user, or root, may control it (the socket's mode says
            // so too; this holds where a directory's or a umask's would not).
            let trusted = rustix::net::sockopt::socket_peercred(&stream)
                .is_ok_and(|cred| cred.uid.is_root() || cred.uid == self.owner);
            if !trusted || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops
                .add(Events::new_raw(fd, EventSet::IN | EventSet::READ_HANG_UP))
                .is_ok()
            {
                self.partial.insert(
                    fd,
                    Partial {
                        stream,
                        line: Vec::new(),
                        fds: Vec::new(),
                    },
                );
            }
        }
    }

    /// Reads what a connection sent; moves it to the ready queue once a line is whole,
    /// drops it if it sends too much or hangs up first.
    fn read(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(partial) = self.partial.get_mut(&fd) else {
            return;
        };
        let done = match receive(partial) {
            Ok(true) => {
                let Partial { stream, line, fds } = match self.partial.remove(&fd) {
                    Some(p) => p,
                    None => return,
                };
                let request = match std::str::from_utf8(&line) {
                    Ok(text) => parse_request(text, fds),
                    Err(_) => Err("the request is not UTF-8".to_owned()),
                };
                self.ready.push(Pending { request, stream });
                true
            }
            Ok(false) => false,
            Err(()) => {
                self.partial.remove(&fd);
                true
            }
        };
        if done {
            let _ = ops.remove(Events::empty_raw(fd));
        }
    }
}

/// Reads from a connection: `Ok(true)` once a whole line is in, `Ok(false)` for more
/// to come, `Err` for a connection to drop (closed early, too long, too many fds).
fn receive(partial: &mut Partial) -> Result<bool, ()> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        partial.stream.as_fd(),
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    );
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            partial.fds.extend(fds);
        }
    }
    let n = match received {
        Ok(msg) if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) => return Err(()),
        Ok(msg) => msg.bytes,
        Err(rustix::io::Errno::AGAIN) => return Ok(false),
        Err(_) => return Err(()),
    };
    if n == 0 || partial.fds.len() > MAX_FDS {
        return Err(());
    }
    partial.line.extend_from_slice(&buf[..n]);
    if let Some(end) = partial.line.iter().position(|&b| b == b'\n') {
        partial.line.truncate(end);
        return Ok(true);
    }
    if partial.line.len() >= MAX_REQUEST {
        return Err(());
    }
    Ok(false)
}

impl MutEventSubscriber for ControlEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.listener.as_raw_fd() {
            self.accept(ops);
        } else {
            self.read(events.fd(), ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            eprintln!("arca-vmm: cannot watch the control socket: {e:?}");
        }
    }
}

impl Drop for ControlEvents {
    fn drop(&mut self) {
        // Inside a jail the path is not reachable and this fails; the owner removes it.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `request` (with `fds`) to the VMM listening on `socket` and waits for its
/// answer.
pub fn send(socket: &Path, request: &str, fds: &[RawFd]) -> Result<(), ControlError> {
    let stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(ControlError::Exchange)?;
    let line = format!("{request}\n");
    let borrowed: Vec<_> = fds
        .iter()
        .map(|&fd| {
            // SAFETY: the caller's descriptors stay open for this call; the borrow
            // ends before it returns.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
        })
        .collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(ControlError::Exchange(std::io::Error::other(
            "too many descriptors",
        )));
    }
    rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(line.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| ControlError::Exchange(e.into()))?;
    let mut answer = String::new();
    stream
        .take(4096)
        .read_to_string(&mut answer)
        .map_err(ControlError::Exchange)?;
    match answer.trim_end() {
        "ok" => Ok(()),
        other => Err(ControlError::Refused(
            other.strip_prefix("error: ").unwrap_or(other).to_owned(),
        )),
    }
}

/// Asks the VMM on `socket` for a snapshot into `state` and `memory`, which are made
/// new, owner-only: an existing file (or a symbolic link) there is refused, so that no
/// snapshot is written through a link or over a memory file a restored VM maps.
pub fn snapshot(socket: &Path, state: &Path, memory: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| ControlError::Open {
                path: path.to_owned(),
                source,
            })
    };
    let (state_file, memory_file) = (open(state)?, open(memory)?);
    send(
        socket,
        "snapshot",
        &[state_file.as_raw_fd(), memory_file.as_raw_fd()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_the_descriptors_they_need() {
        assert!(matches!(
            parse_request("pause\n", vec![]),
            Ok(Request::Pause)
        ));
        assert!(matches!(
            parse_request("resume", vec![]),
            Ok(Request::Resume)
        ));
        let fd = || OwnedFd::from(tempfile::tempfile().unwrap());
        assert!(matches!(
            parse_request("snapshot", vec![fd(), fd()]),
            Ok(Request::Snapshot { .. })
        ));
        assert_eq!(
            parse_request("snapshot", vec![fd()]).unwrap_err(),
            "snapshot needs two file descriptors (state, memory), 1 came"
        );
        assert!(parse_request("pause", vec![fd()]).is_err());
        let err = parse_request("reboot", vec![]).unwrap_err();
        assert!(err.contains("unknown request \"reboot\""), "{err}");
    }

    #[test]
    fn a_client_and_the_event_loop_exchange_a_request_and_its_answer() {
        use event_manager::{EventManager, SubscriberOps};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let events = Arc::new(Mutex::new(ControlEvents::bind(&path).unwrap()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
        let mut manager: EventManager<Arc<Mutex<ControlEvents>>> = EventManager::new().unwrap();
        manager.add_subscriber(events.clone());
        let (state, memory) = (dir.path().join("s"), dir.path().join("m"));
        let client = {
            let (path, state, memory) = (path.clone(), state.clone(), memory.clone());
            std::thread::spawn(move || snapshot(&path, &state, &memory))
        };
        let pending = loop {
            manager.run_with_timeout(100).unwrap();
            let mut ready = events.lock().unwrap().take_ready();
            if let Some(p) = ready.pop() {
                break p;
            }
        };
        let Ok(Request::Snapshot { mut state, .. }) = pending.request else {
            panic!("not a snapshot request");
        };
        state.write_all(b"saved").unwrap();
        let pending = Pending {
            request: Ok(Request::Pause),
            stream: pending.stream,
        };
        pending.answer(Err("the VM is not paused".into()));
        let err = client.join().unwrap().unwrap_err();
        assert_eq!(err.to_string(), "The VMM refused: the VM is not paused");
        assert_eq!(std::fs::read(dir.path().join("s")).unwrap(), b"saved");
        let mode = std::fs::metadata(dir.path().join("m"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // An existing file (here a symlink an attacker planted) is refused, not followed.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("planted")).unwrap();
        let err = snapshot(&path, &dir.path().join("planted"), &dir.path().join("m2")).unwrap_err();
        assert!(err.to_string().contains("Cannot open"), "{err}");
        // Hostile: a client that sends an endless line is dropped, not buffered.
        let mut flood = UnixStream::connect(&path).unwrap();
        let _ = flood.write_all(&[b'x'; 4 * MAX_REQUEST]);
        for _ in 0..5 {
            manager.run_with_timeout(100).unwrap();
        }
        assert!(events.lock().unwrap().take_ready().is_empty());
        assert!(events.lock().unwrap().partial.is_empty());
        drop(manager);
        drop(events);
        assert!(!path.exists(), "the socket is removed with the VMM");
    }
}
