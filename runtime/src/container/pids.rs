//! Host processes a container record names (its monitor, its sandbox), told apart from
//! later processes that reuse their pids by their start time.

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
/// parentheses): field 3 (the state) first.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// A process's start time, in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` is alive (a zombie is not) and, when `start` is known, still the
/// process that started then (pids are reused).
pub fn alive(pid: u32, start: Option<u64>) -> bool {
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    let state = fields.first().map(String::as_str);
    !matches!(state, Some("Z" | "X" | "x"))
        && start.is_none_or(|s| fields.get(19).and_then(|f| f.parse().ok()) == Some(s))
}

/// SIGKILLs `pid` if it is still the process that started at `start`.
pub fn kill_if_same(pid: u32, start: Option<u64>) {
    if alive(pid, start)
        && let Some(p) = rustix::process::Pid::from_raw(pid as i32)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Waits until `pid` (started at `start`) is gone, or `timeout` passes.
pub fn wait_gone(pid: u32, start: Option<u64>, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while alive(pid, start) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_taken_for_the_process_recorded() {
        let me = std::process::id();
        let started = start_time(me).expect("our own start time");
        assert!(alive(me, Some(started)));
        assert!(alive(me, None));
        // Same pid, another start time: a different process now holds the pid.
        assert!(!alive(me, Some(started + 1)));
        // A process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let child_start = start_time(pid);
        child.wait().unwrap();
        assert!(!alive(pid, child_start));
        assert!(wait_gone(pid, child_start, std::time::Duration::ZERO));
    }
}
