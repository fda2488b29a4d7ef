//! `arca attach`: the terminal or stdio of a detached container, from another `arca`.
//!
//! A detached container's monitor serves `<state>/containers/<name>/attach.sock`. Every
//! client that connects gets the container's output from then on (stdout and stderr
//! together, or the terminal), as the logs do, and, when the container was started
//! with `-i`, its bytes go to the container's stdin or terminal. A client whose input
//! ends closes the container's stdin (as `arca run -i` does); with a terminal, Ctrl-P
//! Ctrl-Q detaches instead. The monitor closes every client when the container exits;
//! the client then exits with the container's code.

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_agent_client::AgentAddress;

use crate::container::{ContainerRecord, RunOptions, Status, find};
use crate::error::RunError;
use crate::terminal::{InputEnd, Session, copy_to};

/// The monitor's side: the attached clients.
#[derive(Debug)]
pub struct Hub {
    clients: Mutex<Vec<UnixStream>>,
    path: PathBuf,
}

/// Where the container's input goes: its stdin pipe (closed when a client's input
/// ends) or its terminal.
#[derive(Debug)]
pub enum Input {
    /// `-i` without a terminal.
    Stdin(UnixStream),
    /// A terminal, with or without `-i` (without it, clients only watch).
    Tty(Option<UnixStream>),
    /// No input: clients only watch.
    None,
}

impl Hub {
    /// Listens on `dir/attach.sock` and serves clients from a thread.
    pub fn serve(dir: &Path, input: Input) -> io::Result<Arc<Self>> {
        let path = dir.join("attach.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let hub = Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            path,
        });
        let served = Arc::clone(&hub);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                // Only the container's owner (or root) attaches.
                if !crate::state::peer_is_trusted(&conn) {
                    continue;
                }
                let Ok(copy) = conn.try_clone() else { continue };
                // A client that stops reading must not stall the container's output
                // (and its logs): after this long it is let go.
                let _ = copy.set_write_timeout(Some(CLIENT_STALL));
                served.lock().push(copy);
                let target = match &input {
                    Input::Stdin(s) => s.try_clone().ok().map(|s| (s, true)),
                    Input::Tty(Some(s)) => s.try_clone().ok().map(|s| (s, false)),
                    Input::Tty(None) | Input::None => None,
                };
                if let Some((mut to, close_at_end)) = target {
                    std::thread::spawn(move || {
                        let mut from = conn;
                        let _ = io::copy(&mut from, &mut to);
                        if close_at_end {
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        }
                    });
                }
            }
        });
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<UnixStream>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `bytes` to every client; one that cannot take them is dropped.
    pub fn broadcast(&self, bytes: &[u8]) {
        self.lock().retain_mut(|c| c.write_all(bytes).is_ok());
    }

    /// Waits until a client is attached, at most `timeout`; whether one is.
    pub fn wait_for_client(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !self.lock().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Ends every client's session (the container has exited) and stops listening.
    pub fn close(&self) {
        let _ = std::fs::remove_file(&self.path);
        for c in self.lock().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// How long an attach client may keep the container's output waiting.
const CLIENT_STALL: Duration = Duration::from_secs(2);

/// `arca attach NAME`: returns the container's exit code, or 0 when detached.
pub fn attach(state: &Path, name: &str) -> Result<i32, RunError> {
    let (dir, rec) = find(state, name)?;
    if rec.status != Status::Running {
        return Err(RunError::Invalid(
            "You cannot attach to a stopped container, start it first".into(),
        ));
    }
    if rec.is_paused() {
        return Err(RunError::Invalid(
            "You cannot attach to a paused container, unpause it first".into(),
        ));
    }
    // A container in the foreground of an `arca run` serves no attach socket.
    let opts = RunOptions::load(&dir)
        .ok()
        .filter(|_| dir.join("attach.sock").exists());
    let Some(opts) = opts else {
        return Err(RunError::Invalid(format!(
            "Container {name} runs in the foreground of another arca run: nothing to attach to"
        )));
    };
    let sock = UnixStream::connect(dir.join("attach.sock")).map_err(|e| RunError::Io {
        action: format!("attach to container {name}"),
        source: e,
    })?;
    attach_to(&dir, &opts, rec.key(), sock)
}

/// Runs an attach session on `sock` (a connection to the container's `attach.sock`):
/// input and terminal size to the container, its output here; returns its exit code,
/// or 0 when detached.
pub fn attach_to(
    dir: &Path,
    opts: &RunOptions,
    id: &str,
    sock: UnixStream,
) -> Result<i32, RunError> {
    let rec = ContainerRecord::load(dir)?;
    let session = Session::start(opts.tty && opts.interactive);
    if opts.tty
        && let Some(endpoint) = &rec.agent
    {
        session.follow_size(&AgentAddress::from(endpoint), id, None);
    }
    if opts.interactive {
        let to = sock.try_clone().map_err(|source| RunError::Io {
            action: "attach".into(),
            source,
        })?;
        // The end of our input is the end of the container's (not a terminal's); with
        // a terminal, the detach keys detach.
        let end = if opts.tty {
            InputEnd::Keep
        } else {
            InputEnd::Close
        };
        session.pump_input(to, end, opts.tty);
    }
    copy_to(sock, io::stdout());
    let detached = session.detached();
    drop(session);
    if detached {
        eprintln!("\r\nread escape sequence\r");
        return Ok(0);
    }
    // The monitor closes clients once the container has exited; its record follows.
    for _ in 0..500 {
        if let Ok(r) = ContainerRecord::load(dir)
            && matches!(r.status, Status::Exited | Status::Restarting)
        {
            return Ok(r.exit_code.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(0)
}
