//! A container process's stdio, connected to the caller's: its output copied to the
//! caller's descriptors as it comes, the caller's input to it (closed at its end). The
//! container's main process (the monitor) and an `exec` use it alike.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arca_agent_client::{AgentAddress, StdioConnection};
use arca_protocol::StdioStream;
use arca_runtime::terminal::copy_to;

use crate::OciError;

/// How long output may keep coming after the process exited (a child of it holding the
/// pipe open) before the copies are left behind.
pub const DRAIN: Duration = Duration::from_secs(10);

/// A process's three streams, attached (before it starts, for a container's main
/// process: nothing it writes is lost).
#[derive(Debug)]
pub struct Attached {
    out: StdioConnection,
    err: StdioConnection,
    input: StdioConnection,
}

impl Attached {
    /// The streams of `process` (the main process when `None`) of `container`.
    pub fn open(
        address: &AgentAddress,
        container: &str,
        process: Option<&str>,
    ) -> Result<Self, OciError> {
        Ok(Attached {
            out: address.attach(container, process, StdioStream::Stdout)?,
            err: address.attach(container, process, StdioStream::Stderr)?,
            input: address.attach(container, process, StdioStream::Stdin)?,
        })
    }

    /// Copies the output to `out` and `err` and `input` to the process. The input's
    /// copy is not waited for: the caller's input may never end.
    pub fn copy(
        self,
        out: impl Write + Send + 'static,
        err: impl Write + Send + 'static,
        input: impl Read + Send + 'static,
    ) -> Drain {
        let (done, drained) = mpsc::channel();
        let (o, e) = (self.out, self.err);
        for copy in [
            Box::new(move || copy_to(o, out)) as Box<dyn FnOnce() + Send>,
            Box::new(move || copy_to(e, err)),
        ] {
            let done = done.clone();
            std::thread::spawn(move || {
                copy();
                let _ = done.send(());
            });
        }
        let mut to = self.input;
        std::thread::spawn(move || {
            copy_to(input, &mut to);
            let _ = to.close_input();
        });
        Drain(drained)
    }
}

/// The end of the output copies.
#[derive(Debug)]
pub struct Drain(mpsc::Receiver<()>);

impl Drain {
    /// Waits until both output copies ended, or [`DRAIN`] passed.
    pub fn wait(self) {
        let deadline = Instant::now() + DRAIN;
        for _ in 0..2 {
            if self
                .0
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                break;
            }
        }
    }
}
