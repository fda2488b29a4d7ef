//! Cgroup v2: one cgroup per container under a parent the agent owns, with memory, cpu
//! and pids limits, stats and OOM accounting.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use arca_protocol::{ContainerStats, Resources};

/// Errors in cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem is mounted.
    #[error("No cgroup v2 filesystem is mounted")]
    NotMounted,
    /// A limit needs a controller this cgroup2 mount does not offer.
    #[error(
        "The {controller} controller is not available in cgroup v2 at {mount} (enabled: {enabled:?}); cannot set a {what} limit"
    )]
    ControllerMissing {
        /// The controller.
        controller: &'static str,
        /// What the user asked for.
        what: &'static str,
        /// Where cgroup2 is mounted.
        mount: PathBuf,
        /// The controllers it has.
        enabled: String,
    },
    /// A cgroup file operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub use arca_jail::cgroup2_mount;

/// The parent of all container cgroups.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    mount: PathBuf,
    path: PathBuf,
    controllers: Vec<String>,
}

impl CgroupParent {
    /// Sets up `<cgroup2 mount>/<name>` (`name` may have several levels) with every
    /// controller of memory, cpu, pids and io the mount offers enabled for its children.
    pub fn setup(name: &str) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount().ok_or(CgroupError::NotMounted)?;
        let available = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<String> = ["memory", "cpu", "pids"]
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| c.to_string())
            .collect();
        let enable = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        // A nested name (an OCI caller's `cgroupsPath`) is made level by level, each
        // level handing the controllers down.
        let mut dir = mount.clone();
        for level in name
            .split('/')
            .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        {
            if !enable.is_empty() {
                let f = dir.join("cgroup.subtree_control");
                fs::write(&f, &enable).map_err(io_err("enable controllers in", &f))?;
            }
            dir.push(level);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_err("create", &dir)(e));
                }
                _ => {}
            }
        }
        let path = dir;
        if !enable.is_empty() {
            let f = path.join("cgroup.subtree_control");
            fs::write(&f, &enable).map_err(io_err("enable controllers in", &f))?;
        }
        // io only feeds `stats`' block I/O: where it cannot be enabled, that reads 0.
        if available.split_whitespace().any(|a| a == "io") {
            for dir in [&mount, &path] {
                let _ = fs::write(dir.join("cgroup.subtree_control"), "+io");
            }
        }
        Ok(Self {
            mount,
            path,
            controllers: wanted,
        })
    }

    /// The parent directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the parent if no container cgroup is left in it.
    pub fn remove_if_empty(&self) {
        let _ = fs::remove_dir(&self.path);
    }

    fn require(&self, controller: &'static str, what: &'static str) -> Result<(), CgroupError> {
        if self.controllers.iter().any(|c| c == controller) {
            Ok(())
        } else {
            Err(CgroupError::ControllerMissing {
                controller,
                what,
                mount: self.mount.clone(),
                enabled: fs::read_to_string(self.mount.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            })
        }
    }

    /// Creates the cgroup of container `id` with `resources` applied. A leftover cgroup
    /// of the same name (from a crashed agent) is removed first if empty.
    pub fn create(&self, id: &str, resources: &Resources) -> Result<Cgroup, CgroupError> {
        if resources.memory_bytes.is_some() {
            self.require("memory", "memory")?;
        }
        if resources.cpu_quota_us.is_some() {
            self.require("cpu", "CPU")?;
        }
        if resources.pids_max.is_some() {
            self.require("pids", "pids")?;
        }
        let path = self.path.join(id);
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).map_err(io_err("create", &path))?;
        let cg = Cgroup { path };
        let applied = cg.apply(resources);
        if applied.is_err() {
            let _ = fs::remove_dir(&cg.path);
        }
        applied.map(|()| cg)
    }
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let f = self.path.join(file);
        fs::write(&f, value).map_err(io_err("write", &f))
    }

    fn read_u64(&self, file: &str) -> Option<u64> {
        fs::read_to_string(self.path.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn read_key(&self, file: &str, key: &str) -> Option<u64> {
        let text = fs::read_to_string(self.path.join(file)).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
    }

    fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        if let Some(m) = r.memory_bytes {
            self.write("memory.max", &m.to_string())?;
            if self.path.join("memory.swap.max").exists() {
                self.write("memory.swap.max", "0")?;
            }
        }
        if let Some(q) = r.cpu_quota_us {
            let period = r.cpu_period_us.unwrap_or(100_000);
            self.write("cpu.max", &format!("{q} {period}"))?;
        }
        if let Some(p) = r.pids_max {
            self.write("pids.max", &p.to_string())?;
        }
        Ok(())
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` into this cgroup.
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// OOM kills so far.
    pub fn oom_kills(&self) -> u64 {
        self.read_key("memory.events", "oom_kill").unwrap_or(0)
    }

    /// Current figures; missing controllers read as zero.
    pub fn stats(&self) -> ContainerStats {
        ContainerStats {
            memory_bytes: self.read_u64("memory.current").unwrap_or(0),
            memory_limit_bytes: self.read_u64("memory.max"),
            cpu_usage_usec: self.read_key("cpu.stat", "usage_usec").unwrap_or(0),
            pids: self.read_u64("pids.current").unwrap_or(0),
            oom_kills: self.oom_kills(),
            memory_inactive_file_bytes: self.read_key("memory.stat", "inactive_file").unwrap_or(0),
            io_read_bytes: self.io_stat("rbytes"),
            io_write_bytes: self.io_stat("wbytes"),
        }
    }

    /// `KEY=N` of every device line of `io.stat`, summed.
    fn io_stat(&self, key: &str) -> u64 {
        let text = fs::read_to_string(self.path.join("io.stat")).unwrap_or_default();
        text.split_whitespace()
            .filter_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
            .sum()
    }

    /// Freezes or thaws every process in the cgroup (`cgroup.freeze`) and waits up to
    /// 10 s for `cgroup.events` to say so (a process in uninterruptible sleep delays it).
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let want = if frozen { "1" } else { "0" };
        self.write("cgroup.freeze", want)?;
        let events = self.path.join("cgroup.events");
        for _ in 0..1000 {
            let text = fs::read_to_string(&events).map_err(io_err("read", &events))?;
            if text.lines().any(|l| l == format!("frozen {want}")) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(io_err("wait for the freezer in", &self.path)(
            io::Error::new(io::ErrorKind::TimedOut, "still not done after 10 s"),
        ))
    }

    /// Pids of the processes in the cgroup and the cgroups below it.
    pub fn all_procs(&self) -> Vec<i32> {
        fn walk(dir: &Path, out: &mut Vec<i32>, depth: u32) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            if depth >= 16 {
                return;
            }
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out, depth + 1);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &mut out, 0);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Pids of the processes in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every process in the cgroup and its descendants (`cgroup.kill`, Linux
    /// 5.14+; older kernels: a SIGKILL to each pid listed).
    pub fn kill_all(&self) {
        if fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for pid in self.procs() {
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Removes the (empty) cgroup, retrying briefly while the kernel finishes tearing
    /// down exited processes.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut last = None;
        for _ in 0..200 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Err(io_err("remove", &self.path)(
            last.unwrap_or_else(|| io::Error::other("busy")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_read_the_cgroup_files_and_tolerate_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup {
            path: dir.path().to_path_buf(),
        };
        fs::write(dir.path().join("memory.current"), "1234\n").unwrap();
        fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
        )
        .unwrap();
        fs::write(dir.path().join("cpu.stat"), "usage_usec 555\nuser_usec 1\n").unwrap();
        fs::write(
            dir.path().join("memory.stat"),
            "anon 10\nfile 20\ninactive_file 7\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("io.stat"),
            "253:0 rbytes=100 wbytes=5 rios=1 wios=1\n7:1 rbytes=23 wbytes=0 rios=2 wios=0\n",
        )
        .unwrap();
        let s = cg.stats();
        assert_eq!(
            s,
            ContainerStats {
                memory_bytes: 1234,
                memory_limit_bytes: None,
                cpu_usage_usec: 555,
                pids: 0,
                oom_kills: 2,
                memory_inactive_file_bytes: 7,
                io_read_bytes: 123,
                io_write_bytes: 5,
            }
        );
    }

    #[test]
    fn limits_are_written_in_cgroup_v2_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup {
            path: dir.path().to_path_buf(),
        };
        fs::write(dir.path().join("memory.swap.max"), "max").unwrap();
        cg.apply(&Resources {
            memory_bytes: Some(64 << 20),
            cpu_quota_us: Some(50_000),
            cpu_period_us: None,
            pids_max: Some(32),
        })
        .unwrap();
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "32");
    }
}
