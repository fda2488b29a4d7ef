//! The process that holds an arca-runtime container (`arca-runtime __monitor ID`):
//! started by `create` with the caller's stdio, it starts the container's sandbox (a
//! host `arca-agent serve` with process isolation), creates the container there,
//! connects the container's stdio to its own ([`crate::stdio`]), waits for `start` on its control socket,
//! and then for the container's end, which it reports in the record and as its own
//! exit code (`128 + N` for a container killed by signal N, as a shell reports it).
//!
//! Its own stdout and stderr are the container's, so it never writes there: what goes
//! wrong is written to `monitor.err`, which `create` reports.

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arca_agent_client::{AgentAddress, AgentClient};
use arca_protocol::ContainerSpec;

use crate::OciError;
use crate::container::{Dir, Status};
use crate::stdio::Attached;
use arca_runtime::container::pids::start_time;

/// How long the agent may take to listen.
const AGENT_PATIENCE: Duration = Duration::from_secs(10);
/// How long the agent is given to exit once told to.
const END_PATIENCE: Duration = Duration::from_secs(10);

/// Runs the monitor of container `dir`; returns its exit code.
pub fn run(dir: &Dir) -> i32 {
    match serve(dir) {
        Ok(code) => code,
        Err(e) => {
            let _ = std::fs::write(dir.monitor_error(), arca_runtime::error_chain(&e));
            if let Ok(mut r) = dir.load() {
                r.status = Status::Stopped;
                let _ = dir.save(&r);
            }
            125
        }
    }
}

/// The host agent, killed if the monitor returns without having ended it.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn serve(dir: &Dir) -> Result<i32, OciError> {
    let io = |action: &str| {
        let action = action.to_string();
        move |source| OciError::Io { action, source }
    };
    let mut record = dir.load()?;
    let me = std::process::id();
    (record.monitor_pid, record.monitor_start) = (Some(me), start_time(me));
    let spec: ContainerSpec = serde_json::from_slice(
        &std::fs::read(dir.spec()).map_err(io("read the container's spec"))?,
    )
    .map_err(|e| OciError::Invalid(format!("spec.json: {e}")))?;
    let id = spec.id.clone();

    let mut agent = Command::new(arca_runtime::guest::agent_binary()?);
    agent
        .arg("serve")
        .arg("--listen")
        .arg(dir.agent_socket())
        .arg("--run-dir")
        .arg(dir.run_dir())
        .arg("--cgroup-parent")
        .arg(record.cgroup_parent.as_deref().unwrap_or("arca-runtime"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.agent_log()).map_err(io("create the agent's log"))?)
        .process_group(0);
    let mut agent = Agent(agent.spawn().map_err(io("start arca-agent"))?);
    let agent_pid = agent.0.id();
    (record.agent_pid, record.agent_start) = (Some(agent_pid), start_time(agent_pid));
    dir.save(&record)?;

    let address = AgentAddress::Unix(dir.agent_socket());
    let log = dir.agent_log();
    let mut client = AgentClient::connect_watched(
        &address,
        AGENT_PATIENCE,
        Box::new(move || {
            (!arca_runtime::container::pids::alive(agent_pid, None)).then(|| {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                format!(
                    "arca-agent exited: {}",
                    said.lines().last().unwrap_or("it said nothing")
                )
            })
        }),
    )?;
    let pid = client.create(spec)?;
    record.container_pid = Some(pid);
    let streams = Attached::open(&address, &id, None)?;

    let control = UnixListener::bind(dir.control()).map_err(io("listen on control.sock"))?;
    record.status = Status::Created;
    dir.save(&record)?;

    // Until `start` (or `abort`, a created container deleted).
    loop {
        let (conn, _) = control.accept().map_err(io("accept on control.sock"))?;
        let mut line = String::new();
        let _ = io::BufReader::new(&conn).read_line(&mut line);
        let mut conn = &conn;
        match line.trim_end() {
            "start" => match client.start(&id) {
                Ok(()) => {
                    record.status = Status::Running;
                    dir.save(&record)?;
                    let _ = conn.write_all(b"ok\n");
                    break;
                }
                Err(e) => {
                    let _ = writeln!(conn, "{}", arca_runtime::error_chain(&e));
                    return Err(e.into());
                }
            },
            abort if abort.starts_with("abort") => {
                // Ended by signal N before it ran: 128 + N, as a shell reports it.
                let signal: i32 = abort
                    .strip_prefix("abort ")
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=64).contains(n))
                    .unwrap_or(9);
                let _ = client.remove(&id, true);
                let _ = client.shutdown();
                record.status = Status::Stopped;
                record.exit_code = Some(128 + signal);
                dir.save(&record)?;
                let _ = conn.write_all(b"ok\n");
                let _ = std::fs::remove_file(dir.control());
                return Ok(128 + signal);
            }
            other => {
                let _ = writeln!(conn, "Unknown request {other:?}");
            }
        }
    }
    let _ = std::fs::remove_file(dir.control());
    drop(control);

    let drain = streams.copy(own_fd(1)?, own_fd(2)?, own_fd(0)?);
    let status = client.wait(&id, None)?;
    drain.wait();
    record.status = Status::Stopped;
    record.exit_code = Some(status.code);
    dir.save(&record)?;
    let _ = client.remove(&id, true);
    let _ = client.shutdown();
    drop(client);
    let deadline = Instant::now() + END_PATIENCE;
    while matches!(agent.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(agent);
    Ok(status.code)
}

/// A file of our own for stdio descriptor `fd` (the container's, from the caller).
fn own_fd(fd: i32) -> Result<File, OciError> {
    use std::os::fd::AsFd;
    let copy = match fd {
        0 => io::stdin().as_fd().try_clone_to_owned(),
        1 => io::stdout().as_fd().try_clone_to_owned(),
        _ => io::stderr().as_fd().try_clone_to_owned(),
    };
    copy.map(File::from).map_err(|source| OciError::Io {
        action: format!("take stdio descriptor {fd}"),
        source,
    })
}
