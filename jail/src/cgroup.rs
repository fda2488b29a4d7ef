//! The VM's cgroup v2: created by the supervisor before the fork, joined by the jailed
//! child before it maps guest memory (so that guest RAM is charged to it), removed by
//! the supervisor once the child is gone.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// The controllers a VM's cgroup needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Errors of the VM's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The path is not a cgroup under a cgroup2 mount.
    #[error(
        "The cgroup {0} is not a directory below a cgroup v2 mount (an absolute path of plain components under e.g. /sys/fs/cgroup)"
    )]
    NotUnderCgroup2(PathBuf),
    /// No cgroup2 filesystem is mounted.
    #[error("No cgroup v2 filesystem is mounted: a jailed VM needs one for its limits")]
    NotMounted,
    /// A controller is not offered.
    #[error(
        "The {controller} controller is not available at {mount} (it offers: {offered}); a jailed VM needs memory, cpu and pids"
    )]
    ControllerMissing {
        /// The controller.
        controller: &'static str,
        /// The cgroup2 mount.
        mount: PathBuf,
        /// What it offers.
        offered: String,
    },
    /// The cgroup exists with processes in it.
    #[error("The cgroup {0} is in use by another process (is another VM running with this name?)")]
    InUse(PathBuf),
    /// A cgroup file operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
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

/// Where cgroup2 is mounted, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(pre.split_whitespace().nth(4)?))
    })
}

/// What the VM's cgroup is and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimits {
    /// The cgroup directory (absolute, below the cgroup2 mount; created with its
    /// parents).
    pub path: PathBuf,
    /// `memory.max` in bytes.
    pub memory_max: u64,
    /// `cpu.max`: the quota and period in microseconds; `None` leaves it at `max`.
    pub cpu_max: Option<(u64, u64)>,
    /// `pids.max`: tasks (threads) in the cgroup.
    pub pids_max: u64,
}

impl CgroupLimits {
    /// The cgroup v2 files and what is written to them.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let cpu = match self.cpu_max {
            Some((quota, period)) => format!("{quota} {period}"),
            None => "max".to_owned(),
        };
        vec![
            ("memory.max", self.memory_max.to_string()),
            ("cpu.max", cpu),
            ("pids.max", self.pids_max.to_string()),
        ]
    }
}

/// A VM's cgroup, made and limited.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Makes the cgroup with its limits (and its parents with the controllers enabled
    /// for their children). A leftover empty cgroup of the same path is reused; one
    /// with processes in it is refused.
    pub fn create(limits: &CgroupLimits) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount().ok_or(CgroupError::NotMounted)?;
        let below = limits
            .path
            .strip_prefix(&mount)
            .ok()
            .filter(|rest| {
                !rest.as_os_str().is_empty()
                    && rest.components().all(|c| matches!(c, Component::Normal(_)))
            })
            .ok_or_else(|| CgroupError::NotUnderCgroup2(limits.path.clone()))?;
        let offered = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        for controller in CONTROLLERS {
            if !offered.split_whitespace().any(|c| c == controller) {
                return Err(CgroupError::ControllerMissing {
                    controller,
                    mount: mount.clone(),
                    offered: offered.trim().to_owned(),
                });
            }
        }
        let enable = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        // Every ancestor of the VM's cgroup hands the controllers down.
        let mut dir = mount.clone();
        let parts: Vec<_> = below.components().collect();
        for (i, part) in parts.iter().enumerate() {
            enable_for_children(&dir, &enable)?;
            dir.push(part);
            if i + 1 < parts.len() {
                match fs::create_dir(&dir) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(io_err("create", &dir)(e));
                    }
                    _ => {}
                }
            }
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if !procs.trim().is_empty() {
                    return Err(CgroupError::InUse(dir));
                }
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let cgroup = Cgroup { path: dir };
        for (file, value) in limits.files() {
            let path = cgroup.path.join(file);
            if let Err(e) = fs::write(&path, &value) {
                cgroup.remove();
                return Err(io_err("write a limit to", &path)(e));
            }
        }
        Ok(cgroup)
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling process into the cgroup.
    pub fn join(&self) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, "0").map_err(io_err("join", &procs))
    }

    /// Removes the (empty) cgroup, retrying briefly while the kernel finishes tearing
    /// down its last task. Best effort: a cgroup still busy after that stays.
    pub fn remove(&self) {
        remove_cgroup_dir(&self.path);
    }
}

/// Removes a cgroup directory once it is empty: waits up to a second for its last task
/// to finish leaving, retrying while the kernel says it is busy.
pub fn remove_cgroup_dir(path: &Path) {
    remove_when_empty(path, Duration::from_secs(1));
}

/// Kills every process left in a cgroup (`cgroup.kill`), waits up to `patience` for them
/// to be gone (a VMM gives back its guest's memory first), then removes it. For a VM
/// whose supervisor was killed: its VMM must not outlive the command that ended it.
pub fn kill_and_remove_cgroup(path: &Path, patience: Duration) {
    if !path.exists() {
        return;
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    remove_when_empty(path, patience);
}

fn remove_when_empty(path: &Path, patience: Duration) {
    let until = Instant::now() + patience;
    loop {
        let empty = fs::read_to_string(path.join("cgroup.procs"))
            .map(|p| p.trim().is_empty())
            .unwrap_or(true);
        if empty {
            match fs::remove_dir(path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {}
            }
        }
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Enables `enable` ("+memory +cpu +pids") for the children of cgroup `dir`, unless
/// they already are (writing is refused in some delegated trees even when nothing
/// would change).
fn enable_for_children(dir: &Path, enable: &str) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let now = fs::read_to_string(&control).unwrap_or_default();
    if CONTROLLERS
        .iter()
        .all(|c| now.split_whitespace().any(|n| n == *c))
    {
        return Ok(());
    }
    fs::write(&control, enable).map_err(io_err("enable controllers in", &control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_cgroup_v2_syntax() {
        let limits = CgroupLimits {
            path: "/sys/fs/cgroup/arca-vm/x".into(),
            memory_max: 384 << 20,
            cpu_max: Some((50_000, 100_000)),
            pids_max: 17,
        };
        assert_eq!(
            limits.files(),
            vec![
                ("memory.max", "402653184".to_owned()),
                ("cpu.max", "50000 100000".to_owned()),
                ("pids.max", "17".to_owned()),
            ]
        );
        let unlimited = CgroupLimits {
            cpu_max: None,
            ..limits
        };
        assert_eq!(unlimited.files()[1], ("cpu.max", "max".to_owned()));
    }

    #[test]
    fn paths_outside_the_cgroup2_mount_or_climbing_out_are_refused() {
        let Some(mount) = cgroup2_mount() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        for path in [
            PathBuf::from("/tmp/arca-vm/x"),
            mount.join("arca-vm/../../etc"),
            mount.clone(),
        ] {
            let limits = CgroupLimits {
                path: path.clone(),
                memory_max: 1 << 30,
                cpu_max: None,
                pids_max: 8,
            };
            assert!(
                matches!(
                    Cgroup::create(&limits),
                    Err(CgroupError::NotUnderCgroup2(_))
                ),
                "{path:?} was accepted"
            );
        }
    }
}
