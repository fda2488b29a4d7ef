//! The lifecycle commands: `stop`, `kill`, `rm`, `wait`, and cleaning up after
//! containers whose monitor died.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::pids::{alive, kill_if_same, wait_gone};
use super::record::{
    ContainerRecord, Isolation, MANUAL_STOP, Status, containers_dir, find, wait_exited,
};
use crate::error::RunError;

/// Cleans up after containers whose monitor died (killed, or crashed with its host):
/// kills their sandbox and, with process isolation, what was left of the container,
/// and records them as exited with the reason. `ps` and `rm` call it, so any later
/// `arca` command reconciles what a crash left behind.
pub fn reap_crashed(state: &Path) {
    let entries = std::fs::read_dir(containers_dir(state));
    for e in entries.into_iter().flatten().flatten() {
        let dir = e.path();
        let Ok(rec) = ContainerRecord::load(&dir) else {
            continue;
        };
        if matches!(rec.status, Status::Exited | Status::Created) {
            continue;
        }
        let seen = rec.clone().observed();
        if seen.status != Status::Exited {
            continue;
        }
        end_leftovers(&rec);
        if seen.save(&dir).is_ok() {
            let code = seen.exit_code.unwrap_or(137).to_string();
            seen.event(state, "die", &[("exitCode", &code)]);
        }
    }
}

/// Signal numbers by Docker's names (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(text: &str) -> Result<i32, RunError> {
    let t = text.trim().to_ascii_uppercase();
    let t = t.strip_prefix("SIG").unwrap_or(&t);
    let n = match t {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "ALRM" => 14,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        other => other.parse().unwrap_or(0),
    };
    if (1..=64).contains(&n) {
        Ok(n)
    } else {
        Err(RunError::Invalid(format!("Invalid signal: {text}")))
    }
}

/// `arca kill -s SIG`.
pub fn kill(state: &Path, name: &str, signal: i32) -> Result<(), RunError> {
    let (dir, rec) = find(state, name)?;
    // Killing it with the stop signals is stopping it, for its restart policy.
    if matches!(signal, 9 | 15) && rec.status == Status::Running {
        mark_stopped(&dir);
    }
    let mut client = rec.client()?;
    client.signal(rec.key(), None, signal)?;
    rec.event(state, "kill", &[("signal", &signal.to_string())]);
    // A frozen container gets its signal once thawed, as with Docker.
    thaw_if_paused(&dir, &rec);
    Ok(())
}

pub use super::record::PAUSED;

/// `arca pause`: freezes every process of the container (its cgroup's `cgroup.freeze`,
/// by its agent: in a microVM the guest's cgroup; the vCPUs stay, idle).
pub fn pause(state: &Path, name: &str) -> Result<(), RunError> {
    let (dir, rec) = find(state, name)?;
    if rec.status != Status::Running {
        return Err(RunError::Invalid(format!(
            "Container {} is not running",
            rec.id
        )));
    }
    if rec.is_paused() {
        return Err(RunError::Invalid(format!(
            "Container {} is already paused",
            rec.id
        )));
    }
    rec.client()?.freeze(rec.key(), true)?;
    std::fs::write(dir.join(PAUSED), b"").map_err(|source| RunError::Io {
        action: format!("mark container {} paused", rec.name),
        source,
    })?;
    rec.event(state, "pause", &[]);
    Ok(())
}

/// `arca unpause`.
pub fn unpause(state: &Path, name: &str) -> Result<(), RunError> {
    let (dir, rec) = find(state, name)?;
    if !rec.is_paused() {
        return Err(RunError::Invalid(format!(
            "Container {} is not paused",
            rec.id
        )));
    }
    rec.client()?.freeze(rec.key(), false)?;
    let _ = std::fs::remove_file(dir.join(PAUSED));
    rec.event(state, "unpause", &[]);
    Ok(())
}

/// Thaws a paused container (a signal sent to it waits for that); best effort.
fn thaw_if_paused(dir: &Path, rec: &ContainerRecord) {
    if rec.is_paused()
        && let Ok(c) = rec.client()
        && c.with_patience(SIGNAL_PATIENCE)
            .freeze(rec.key(), false)
            .is_ok()
    {
        let _ = std::fs::remove_file(dir.join(PAUSED));
    }
}

/// `arca stop [-t N]`: the container's stop signal (`--stop-signal`, the image's
/// `StopSignal`, else SIGTERM), then SIGKILL after `grace` (else its `--stop-timeout`,
/// else 10 s).
pub fn stop(state: &Path, name: &str, grace: Option<Duration>) -> Result<(), RunError> {
    let (dir, rec) = find(state, name)?;
    let opts = super::RunOptions::load(&dir).ok();
    let grace = grace
        .or_else(|| opts.as_ref()?.stop_timeout.map(Duration::from_secs))
        .unwrap_or(Duration::from_secs(10));
    let stop_signal = opts
        .as_ref()
        .and_then(|o| o.stop_signal.as_deref())
        .and_then(|s| parse_signal(s).ok())
        .unwrap_or(libc_sigterm());
    // An exited container whose monitor still runs may be about to restart (its
    // policy): it is marked too.
    let monitor_alive = alive(rec.monitor_pid, rec.monitor_start);
    if rec.status == Status::Created || (rec.status == Status::Exited && !monitor_alive) {
        return Ok(());
    }
    mark_stopped(&dir);
    // The stop signal, then SIGKILL after the grace time, each sent once the container
    // runs (one still starting, or waiting to restart, is watched until it does or its
    // monitor, seeing the marker, ends it). An agent that does not answer (a wedged or
    // hostile guest) costs at most SIGNAL_PATIENCE per signal.
    let stopped = |signal: i32, within: Duration| -> bool {
        // The time runs from when the container runs: one still starting (a microVM
        // booting on a busy host) or waiting to restart gets up to START_PATIENCE first.
        let mut deadline = Instant::now() + within;
        let give_up = Instant::now() + START_PATIENCE;
        let mut sent = false;
        loop {
            // A record that vanished belonged to a `--rm` container that ended.
            let Ok(now) = ContainerRecord::observe(&dir) else {
                return true;
            };
            match now.status {
                Status::Exited | Status::Created => return true,
                // Its monitor saw the marker or will before the next run.
                Status::Restarting if !alive(now.monitor_pid, now.monitor_start) => return true,
                Status::Starting | Status::Restarting if Instant::now() < give_up => {
                    deadline = deadline.max(Instant::now() + within);
                }
                Status::Running if !sent => {
                    if let Ok(c) = now.client() {
                        let _ = c
                            .with_patience(SIGNAL_PATIENCE)
                            .signal(now.key(), None, signal);
                    }
                    now.event(state, "kill", &[("signal", &signal.to_string())]);
                    thaw_if_paused(&dir, &now);
                    sent = true;
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Docker's events for a stop: kill (each signal sent), die (from the monitor), stop.
    if !stopped(stop_signal, grace) && !stopped(9, SIGKILL_GRACE) {
        // The container outlived SIGKILL (its guest ignores the agent, or the agent is
        // gone): the sandbox itself goes, which its monitor sees.
        if let Ok(now) = ContainerRecord::load(&dir)
            && let Some(pid) = now.sandbox_pid
        {
            kill_if_same(pid, now.sandbox_start);
        }
        if !stopped(9, Duration::from_secs(10)) {
            return Err(RunError::Invalid(format!(
                "Container {} did not stop",
                rec.id
            )));
        }
    }
    rec.event(state, "stop", &[]);
    Ok(())
}

/// Tells the container's monitor not to restart it (see [`MANUAL_STOP`]).
fn mark_stopped(dir: &Path) {
    let _ = std::fs::write(dir.join(MANUAL_STOP), b"");
}

/// How long `stop` waits for a starting (or restarting) container to run before its
/// grace time starts anyway: the start's own limit.
const START_PATIENCE: Duration = Duration::from_secs(120);

/// How long `stop` and `rm -f` give the agent to answer a signal request.
const SIGNAL_PATIENCE: Duration = Duration::from_secs(5);
/// How long `stop` waits after SIGKILL before it kills the sandbox.
const SIGKILL_GRACE: Duration = Duration::from_secs(5);

const fn libc_sigterm() -> i32 {
    15
}

/// `arca rm [-f]`; returns the removed container's record (its volumes, for `rm -v`).
pub fn rm(state: &Path, name: &str, force: bool) -> Result<ContainerRecord, RunError> {
    let (dir, rec) = find(state, name)?;
    if matches!(
        rec.status,
        Status::Starting | Status::Running | Status::Restarting
    ) {
        if !force {
            let what = if rec.status == Status::Restarting {
                "restarting"
            } else {
                "running"
            };
            return Err(RunError::Invalid(format!(
                "You cannot remove a {what} container {}: stop it first or remove it with -f",
                rec.id
            )));
        }
        mark_stopped(&dir);
        // At once, as `docker rm -f`: SIGKILL, then make sure the sandbox is gone.
        if let Ok(c) = rec.client() {
            let _ = c.with_patience(SIGNAL_PATIENCE).signal(rec.key(), None, 9);
        }
        rec.event(state, "kill", &[("signal", "9")]);
        if wait_exited(&dir, Duration::from_secs(10)).is_none() {
            if let Some(pid) = rec.sandbox_pid {
                kill_if_same(pid, rec.sandbox_start);
            }
            kill_if_same(rec.monitor_pid, rec.monitor_start);
        }
    }
    // Let the monitor finish its teardown (it records "exited" before it removes the
    // container from its sandbox) before the directory goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(rec.monitor_pid, rec.monitor_start)
        && rec.monitor_pid != std::process::id()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !alive(rec.monitor_pid, rec.monitor_start) {
        // A monitor that died left its VMM or agent behind, and a host agent's death
        // leaves its container's processes.
        end_leftovers(&rec);
    } else if rec.isolation == Isolation::Process {
        process_leftovers(&rec);
    }
    // A killed VMM still has to give back its guest's memory: `rm -f` returns once
    // the sandbox is gone, as `docker rm -f` returns once the container is.
    if force && let Some(pid) = rec.sandbox_pid {
        wait_gone(pid, rec.sandbox_start, Duration::from_secs(10));
    }
    // A jailed VMM outlives its supervisor (the sandbox process) by its teardown.
    if force && rec.isolation == Isolation::Vm {
        super::record::end_vm_cgroup(&super::record::vm_cgroup(rec.key()));
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RunError::Io {
            action: format!("remove {}", dir.display()),
            source: e,
        }),
        _ => {
            super::names::release(state, &rec.name, rec.key());
            rec.event(state, "destroy", &[]);
            Ok(rec)
        }
    }
}

/// What a container whose monitor died leaves: its sandbox (VMM or host agent) and,
/// with process isolation, its processes and cgroup; in a microVM, the VMM's cgroup
/// (its supervisor, killed, could not remove it; the VMM dies with it).
fn end_leftovers(rec: &ContainerRecord) {
    if let Some(pid) = rec.sandbox_pid {
        kill_if_same(pid, rec.sandbox_start);
    }
    match rec.isolation {
        Isolation::Process => process_leftovers(rec),
        Isolation::Vm => super::record::end_vm_cgroup(&super::record::vm_cgroup(rec.key())),
    }
}

/// After a host agent died: the container's processes (its pid namespace goes with
/// its PID 1) and its cgroup, which nothing else would remove.
pub fn process_leftovers(rec: &ContainerRecord) {
    let marker = format!("/arca/{}", rec.key());
    if let Some(pid) = rec.container_pid {
        // Only if that pid is still this container's (pids are reused).
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.ends_with(&marker)));
        if ours && let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    });
    if let Some(root) = cgroup2 {
        let cg = root.join(marker.trim_start_matches('/'));
        if cg.is_dir() {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
            for _ in 0..200 {
                if std::fs::remove_dir(&cg).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `arca wait`: blocks until the container exits; returns its exit code.
pub fn wait(state: &Path, name: &str) -> Result<i32, RunError> {
    let (dir, _) = find(state, name)?;
    let rec = wait_exited(&dir, Duration::from_secs(u64::MAX / 4))
        .ok_or_else(|| RunError::Invalid(format!("Container {name} went away")))?;
    Ok(rec.exit_code.unwrap_or(-1))
}

/// `arca rename CONTAINER NEW_NAME`: the new name is reserved before the old one is
/// given back, so the container always has one. Containers that joined a network
/// with it before keep resolving it by its old name (and its short ID) until they
/// restart; Docker's embedded DNS follows a rename at once.
pub fn rename(state: &Path, container: &str, new_name: &str) -> Result<(), RunError> {
    let (dir, rec) = find(state, container)?;
    super::names::validate(new_name)?;
    // Docker takes "/name" for "name".
    let new_name = new_name.strip_prefix('/').unwrap_or(new_name);
    if rec.name == new_name {
        return Err(RunError::Invalid(
            "Renaming a container with the same name as its current name".into(),
        ));
    }
    super::names::reserve(state, new_name, rec.key())?;
    let tmp = dir.join(".name.tmp");
    let written = std::fs::write(&tmp, new_name)
        .and_then(|()| std::fs::rename(&tmp, dir.join(super::record::NAME_FILE)));
    if let Err(source) = written {
        super::names::release(state, new_name, rec.key());
        return Err(RunError::Io {
            action: format!("rename container {}", rec.name),
            source,
        });
    }
    super::names::release(state, &rec.name, rec.key());
    let renamed = ContainerRecord {
        name: new_name.to_string(),
        ..rec.clone()
    };
    renamed.event(state, "rename", &[("oldName", &format!("/{}", rec.name))]);
    Ok(())
}

/// `arca container prune`: removes every stopped container (created, or exited with no
/// monitor about to restart it) that `filters` let through (Docker's `until=TIME`:
/// created before; `label=KEY[=VALUE]`, `label!=KEY[=VALUE]`). Returns the IDs removed
/// and the bytes their directories held.
pub fn prune(state: &Path, filters: &[String]) -> Result<(Vec<String>, u64), RunError> {
    let at = std::time::SystemTime::now();
    let mut until = None;
    let mut labels: Vec<(bool, String, Option<String>)> = Vec::new();
    for f in filters {
        match f.split_once('=') {
            Some(("until", v)) => {
                until = Some(
                    super::view::parse_log_time(v, at)
                        .ok_or_else(|| RunError::Invalid(format!("invalid filter 'until={v}'")))?,
                );
            }
            Some((k @ ("label" | "label!"), v)) => {
                let (key, value) = match v.split_once('=') {
                    Some((a, b)) => (a.to_string(), Some(b.to_string())),
                    None => (v.to_string(), None),
                };
                labels.push((k == "label", key, value));
            }
            _ => return Err(RunError::Invalid(format!("invalid filter '{f}'"))),
        }
    }
    let mut removed = Vec::new();
    let mut freed = 0;
    for rec in super::record::list(state) {
        let stopped = rec.status == Status::Created
            || (rec.status == Status::Exited && !alive(rec.monitor_pid, rec.monitor_start));
        let old_enough = until.is_none_or(|(s, n)| (rec.created, rec.created_nanos) < (s, n));
        let labelled = labels.iter().all(|(want, k, v)| {
            let has = rec
                .labels
                .get(k)
                .is_some_and(|x| v.as_ref().is_none_or(|v| v == x));
            has == *want
        });
        if !(stopped && old_enough && labelled) {
            continue;
        }
        let size = crate::storage::disk_usage(&containers_dir(state).join(rec.key()));
        if rm(state, &rec.id, false).is_ok() {
            freed += size;
            removed.push(rec.id);
        }
    }
    Ok((removed, freed))
}
