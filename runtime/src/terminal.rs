//! One user's terminal wired to a container's process, the same for `run -it`,
//! `exec -it` and `attach`: this terminal raw while the session lasts (so keys reach
//! the process's terminal), its size followed into the process's terminal, and this
//! process's stdin pumped to the process (with Docker's detach keys where asked).
//! Output is the caller's to copy ([`copy_to`]): `run` tees it into the logs.

use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arca_agent_client::{AgentAddress, AgentClient, StdioConnection};

/// Ctrl-P Ctrl-Q, Docker's detach keys.
pub const DETACH_KEYS: [u8; 2] = [0x10, 0x11];

/// How often the terminal's size is looked at.
const SIZE_POLL: Duration = Duration::from_millis(250);

/// Where the session's input goes: a stdin stream or a terminal socket.
pub trait InputSink: Write + Send + 'static {
    /// No more input: the process reads end-of-file.
    fn close_input(&mut self);
    /// Ends the connection, input and output (the user detached).
    fn hang_up(&mut self);
}

impl InputSink for UnixStream {
    fn close_input(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }

    fn hang_up(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl InputSink for StdioConnection {
    fn close_input(&mut self) {
        let _ = StdioConnection::close_input(self);
    }

    fn hang_up(&mut self) {
        if let Ok(s) = self.socket_clone() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// What the end of this process's stdin does to the process's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEnd {
    /// Closes it (a stdin pipe: the process reads end-of-file).
    Close,
    /// Nothing (a terminal stays open).
    Keep,
}

/// One terminal session; dropping it stops following the size and restores the
/// terminal.
#[derive(Debug)]
pub struct Session {
    raw: Option<RawMode>,
    following: Arc<AtomicBool>,
    detached: Arc<AtomicBool>,
}

impl Session {
    /// Starts a session; with `raw` this terminal goes raw, if stdin is one.
    pub fn start(raw: bool) -> Self {
        Session {
            raw: if raw && io::stdin().is_terminal() {
                RawMode::enter()
            } else {
                None
            },
            following: Arc::new(AtomicBool::new(true)),
            detached: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Follows this terminal's size into the terminal of container `id` (or of its
    /// exec'd `process`) while the session lasts, if stdout is a terminal: the size now
    /// before returning (so the process starts with it), then every change.
    pub fn follow_size(&self, address: &AgentAddress, id: &str, process: Option<&str>) {
        if !io::stdout().is_terminal() {
            return;
        }
        let Ok(mut client) = AgentClient::connect(address, Duration::from_secs(5)) else {
            return;
        };
        let size = || {
            rustix::termios::tcgetwinsize(io::stdout())
                .ok()
                .map(|ws| (ws.ws_row, ws.ws_col))
        };
        let mut last = size();
        if let Some((rows, cols)) = last
            && client.resize(id, process, rows, cols).is_err()
        {
            return;
        }
        let following = self.following.clone();
        let (id, process) = (id.to_string(), process.map(String::from));
        std::thread::spawn(move || {
            while following.load(Ordering::SeqCst) {
                std::thread::sleep(SIZE_POLL);
                let now = size();
                if let Some((rows, cols)) = now.filter(|_| now != last) {
                    if client.resize(&id, process.as_deref(), rows, cols).is_err() {
                        return;
                    }
                    last = now;
                }
            }
        });
    }

    /// Pumps this process's stdin to `to` from a thread of its own; `end` says what
    /// its end does. With `detach_keys`, Ctrl-P Ctrl-Q hangs `to` up instead of passing
    /// the keys on, and [`Self::detached`] says so.
    pub fn pump_input(&self, mut to: impl InputSink, end: InputEnd, detach_keys: bool) {
        let detached = self.detached.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut last = 0u8;
            loop {
                let n = match io::stdin().lock().read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if detach_keys {
                    let pressed = (last == DETACH_KEYS[0] && chunk[0] == DETACH_KEYS[1])
                        || chunk.windows(2).any(|w| w == DETACH_KEYS);
                    if pressed {
                        detached.store(true, Ordering::SeqCst);
                        to.hang_up();
                        return;
                    }
                    last = chunk[n - 1];
                }
                if to.write_all(chunk).is_err() {
                    return;
                }
            }
            if end == InputEnd::Close {
                to.close_input();
            }
        });
    }

    /// Whether the user detached with the detach keys.
    pub fn detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.following.store(false, Ordering::SeqCst);
        self.raw.take();
    }
}

/// This terminal in raw mode until dropped.
#[derive(Debug)]
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(io::stdin(), rustix::termios::OptionalActions::Now, &self.0);
    }
}

/// Reads one line from the terminal on stdin after printing `prompt` to stderr,
/// without echo when `secret` (a password); the line without its newline. `None`
/// when stdin is no terminal.
pub fn prompt(prompt: &str, secret: bool) -> Option<String> {
    let stdin = io::stdin();
    if !rustix::termios::isatty(&stdin) {
        return None;
    }
    eprint!("{prompt}");
    let saved = rustix::termios::tcgetattr(&stdin).ok()?;
    if secret {
        let mut quiet = saved.clone();
        quiet.local_modes &= !rustix::termios::LocalModes::ECHO;
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet).ok()?;
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if secret {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
        eprintln!();
    }
    read.ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Copies until `from` ends or `to` fails, flushing as it goes (a terminal sees output
/// as it comes).
pub fn copy_to(mut from: impl Read, mut to: impl Write) {
    let mut buf = [0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    break;
                }
            }
        }
    }
}
