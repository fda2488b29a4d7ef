//! Child processes and their exit statuses.
//!
//! One thread waits for every child of the agent (as PID 1 of the guest, orphans too)
//! and hands each status to whoever spawned that child. Children are spawned through
//! [`Reaper::spawn`] so that no status can arrive before its pid is registered.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// Where a child's exit status lands.
#[derive(Debug, Default)]
pub struct ExitSlot {
    status: Mutex<Option<ChildExit>>,
    cond: Condvar,
}

impl ExitSlot {
    fn set(&self, exit: ChildExit) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit);
        self.cond.notify_all();
    }

    /// The status, if the child has exited.
    pub fn get(&self) -> Option<ChildExit> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the child has exited.
    pub fn wait(&self) -> ChildExit {
        let mut guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(s) = *guard {
                return s;
            }
            guard = self.cond.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Like [`ExitSlot::wait`], giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ChildExit> {
        let guard = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

#[derive(Debug, Default)]
struct Table {
    slots: HashMap<i32, Arc<ExitSlot>>,
    spawned: u64,
}

/// The reaper thread and its pid table.
#[derive(Debug, Clone)]
pub struct Reaper {
    shared: Arc<(Mutex<Table>, Condvar)>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(Table::default()), Condvar::new()));
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_forever(&thread_shared))?;
        Ok(Self { shared })
    }

    /// Spawns `cmd` and registers the child. The child is never waited for through
    /// `std`: its status comes from the returned slot.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(i32, Arc<ExitSlot>)> {
        let (table, cond) = &*self.shared;
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        drop(child);
        let slot = Arc::new(ExitSlot::default());
        t.slots.insert(pid, Arc::clone(&slot));
        t.spawned += 1;
        cond.notify_all();
        Ok((pid, slot))
    }
}

fn reap_forever(shared: &(Mutex<Table>, Condvar)) {
    let (table, cond) = shared;
    loop {
        let generation = table.lock().unwrap_or_else(|e| e.into_inner()).spawned;
        // Peek first, reap under the table lock: a child whose spawn is still in progress
        // (the lock is held across `spawn`) is left for std, which reaps it itself if its
        // exec fails.
        match crate::sys::peek_exited_child() {
            Ok(Some(pid)) => {
                let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
                let Some(raw) = rustix::process::Pid::from_raw(pid) else {
                    continue;
                };
                let status =
                    match rustix::process::waitpid(Some(raw), rustix::process::WaitOptions::NOHANG)
                    {
                        Ok(Some((_, status))) => status,
                        // Reaped meanwhile (by std after a failed spawn).
                        _ => continue,
                    };
                let exit = match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => ChildExit::Exited(code),
                    (None, Some(sig)) => ChildExit::Signaled(sig),
                    _ => continue,
                };
                if let Some(slot) = t.slots.remove(&pid) {
                    slot.set(exit);
                }
            }
            Ok(None) => {
                // No children: sleep until one is spawned (orphans only arrive while
                // some child lives, so a timeout is enough for those).
                let t = table.lock().unwrap_or_else(|e| e.into_inner());
                if t.spawned == generation {
                    let _ = cond.wait_timeout(t, Duration::from_secs(1));
                }
            }
            Err(e) => {
                eprintln!("arca-agent: waitid: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
