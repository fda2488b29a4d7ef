//! `arca exec [-i] [-t] [-e] [-w] [-u] NAME CMD...`: a new process in a running
//! container, through its agent.

use std::io::{self, Read};
use std::path::Path;

use arca_protocol::{ProcessSpec, StdioStream};

use crate::container::find;
use crate::error::RunError;
use crate::now;
use crate::terminal::{InputEnd, Session, copy_to};

/// Runs `process` in container `name`; returns its exit code.
pub fn exec(state: &Path, name: &str, process: ProcessSpec) -> Result<i32, RunError> {
    let (_, rec) = find(state, name)?;
    if rec.is_paused() {
        return Err(RunError::Invalid(format!(
            "Container {} is paused, unpause the container before exec",
            rec.id
        )));
    }
    let mut client = rec.client()?;
    let exec_id = format!("exec-{}-{}", std::process::id(), now());
    let (interactive, tty) = (process.stdin, process.terminal);
    let address = client.address().clone();
    client.exec(rec.key(), &exec_id, process)?;
    let id = rec.key();
    let exec_id = Some(exec_id.as_str());
    let session = Session::start(tty && interactive);
    let (copies, _session) = if tty {
        let (pending, sock) = address.attach(id, exec_id, StdioStream::Tty)?.into_parts();
        session.follow_size(&address, id, exec_id);
        if interactive && let Ok(to_tty) = sock.try_clone() {
            session.pump_input(to_tty, InputEnd::Keep, false);
        }
        let copy =
            std::thread::spawn(move || copy_to(io::Cursor::new(pending).chain(sock), io::stdout()));
        (vec![copy], session)
    } else {
        let out = address.attach(id, exec_id, StdioStream::Stdout)?;
        let err = address.attach(id, exec_id, StdioStream::Stderr)?;
        if interactive {
            let input = address.attach(id, exec_id, StdioStream::Stdin)?;
            session.pump_input(input, InputEnd::Close, false);
        }
        let copies = vec![
            std::thread::spawn(move || copy_to(out, io::stdout())),
            std::thread::spawn(move || copy_to(err, io::stderr())),
        ];
        (copies, session)
    };
    let status = client.wait(id, exec_id);
    for c in copies {
        let _ = c.join();
    }
    Ok(status?.code)
}
