//! `arca exec [-d] [-i] [-t] [-e] [-w] [-u] NAME CMD...`: a new process in a running
//! container, through its agent.

use std::io::{self, Read};
use std::path::Path;

use arca_protocol::{ProcessSpec, StdioStream};

use crate::container::{ContainerRecord, RunOptions, find};
use crate::error::RunError;
use crate::image::store::Store;
use crate::now;
use crate::terminal::{InputEnd, Session, copy_to};

/// What `exec` runs, by Docker's rules: the container's environment (its `run` options
/// over its image's), with `-e` over it, and its working directory, user and groups
/// unless `-w` and `-u` say otherwise.
fn inherit(state: &Path, dir: &Path, rec: &ContainerRecord, mut p: ProcessSpec) -> ProcessSpec {
    let Ok(opts) = RunOptions::load(dir) else {
        return p;
    };
    let Ok(image) = Store::open(state).and_then(|s| s.resolve(&rec.image_id)) else {
        return p;
    };
    let base = opts.process(&image, Vec::new());
    let key = |e: &str| e.split('=').next().unwrap_or_default().to_string();
    let mut env: Vec<String> = base
        .env
        .into_iter()
        .filter(|e| !p.env.iter().any(|x| key(x) == key(e)))
        .collect();
    env.append(&mut p.env);
    p.env = env;
    p.cwd = p.cwd.or(base.cwd);
    p.user = p.user.or(base.user);
    // `--group-add` holds for every process of the container, as with Docker.
    if p.additional_groups.is_empty() {
        p.additional_groups = base.additional_groups;
    }
    if p.rlimits.is_empty() {
        p.rlimits = base.rlimits;
    }
    p
}

/// Runs `process` in container `name`; returns its exit code.
pub fn exec(state: &Path, name: &str, process: ProcessSpec) -> Result<i32, RunError> {
    let (dir, rec) = find(state, name)?;
    // As `run --privileged`: on the host, every capability in a container without a
    // user namespace is root over the host; the operator decides.
    if process.privileged
        && rec.isolation == crate::container::Isolation::Process
        && std::env::var(crate::container::config::ALLOW_PRIVILEGED_PROCESS_ENV).as_deref()
            != Ok("1")
    {
        return Err(RunError::Invalid(format!(
            "exec --privileged in a container with --isolation=process would give the command root over this host; it is refused unless the operator sets {}=1 (in a microVM the command is privileged only inside it)",
            crate::container::config::ALLOW_PRIVILEGED_PROCESS_ENV
        )));
    }
    let process = inherit(state, &dir, &rec, process);
    if rec.is_paused() {
        return Err(RunError::Invalid(format!(
            "Container {} is paused, unpause the container before exec",
            rec.id
        )));
    }
    let mut client = rec.client()?;
    let exec_id = format!("exec-{}-{}", std::process::id(), now());
    let (interactive, tty, detached) = (process.stdin, process.terminal, process.detached);
    let address = client.address().clone();
    client.exec(rec.key(), &exec_id, process)?;
    if detached {
        // Docker's `exec -d`: started is done; nobody waits or reads.
        return Ok(0);
    }
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
