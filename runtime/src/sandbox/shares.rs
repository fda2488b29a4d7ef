//! A microVM's host directories (bind mounts and volumes) over virtio-fs: one
//! `virtiofsd` per mount, each sandboxed by itself (its own mount, pid and network
//! namespaces, pivoted into the one directory it serves; `--readonly` for a read-only
//! mount, so the host refuses writes whatever the guest does), and one `--fs` device of
//! the VMM for each, with its own tag. A virtiofsd ends when its VMM does.
//!
//! One daemon per mount rather than one per VM serving a tree of bind mounts: nothing
//! has to be mounted on the host (and cleaned up after a crash), read-only is per
//! daemon, and a guest can never reach a sibling directory of what it was given.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{RunError, io_err};
use crate::storage::{MountPoint, MountType};

/// How long a virtiofsd has to make its socket.
const READY_PATIENCE: Duration = Duration::from_secs(10);

/// The tag of the `index`th mount of a container (mounts without a host directory get
/// none).
pub fn tag(index: usize) -> String {
    format!("arca{index}")
}

/// Whether mount `m` travels over virtio-fs in a microVM.
pub fn shared(m: &MountPoint) -> bool {
    matches!(m.kind, MountType::Bind | MountType::Volume)
}

/// The running virtiofsd daemons of one microVM; dropped, they are killed.
#[derive(Debug, Default)]
pub struct Shares {
    daemons: Vec<super::Reaped>,
    /// `(tag, socket)` per daemon, for the VMM's `--fs`.
    pub devices: Vec<(String, PathBuf)>,
}

/// The `virtiofsd` program: `$ARCA_VIRTIOFSD`, else on `PATH` or in cargo's bin
/// directory (`make` installs it there).
fn virtiofsd() -> Result<PathBuf, RunError> {
    if let Some(p) = std::env::var_os("ARCA_VIRTIOFSD") {
        return Ok(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            RunError::Missing(
                "virtiofsd is not installed: volumes and bind mounts in microVMs need it (make test-deps installs it, or cargo install virtiofsd; ARCA_VIRTIOFSD names another)".into(),
            )
        })
}

/// Starts a virtiofsd for each shared mount of `mounts`, sockets and logs in `dir`,
/// and waits until each listens.
pub fn start(dir: &Path, mounts: &[MountPoint]) -> Result<Shares, RunError> {
    let mut shares = Shares::default();
    if !mounts.iter().any(shared) {
        return Ok(shares);
    }
    let program = virtiofsd()?;
    for (i, m) in mounts.iter().enumerate().filter(|(_, m)| shared(m)) {
        let meta = std::fs::metadata(&m.source)
            .map_err(io_err(format!("inspect {}", m.source.display())))?;
        if !meta.is_dir() {
            return Err(RunError::Invalid(format!(
                "Cannot mount the file {} on {} in a microVM: virtio-fs shares directories (mount its directory, or use --isolation=process)",
                m.source.display(),
                m.destination
            )));
        }
        let socket = dir.join(format!("fs{i}.sock"));
        let log = dir.join(format!("fs{i}.log"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&program);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&m.source)
            .args(["--sandbox", "namespace", "--cache", "auto"])
            // Quiet unless something goes wrong.
            .args(["--log-level", "error"]);
        if !m.rw {
            cmd.arg("--readonly");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(io_err("create the virtiofsd log"))?)
            .spawn()
            .map_err(io_err(format!("start {}", program.display())))?;
        let mut daemon = super::Reaped(child);
        let deadline = Instant::now() + READY_PATIENCE;
        while !socket.exists() {
            if let Ok(Some(status)) = daemon.0.try_wait() {
                return Err(RunError::Invalid(format!(
                    "virtiofsd for {} ended before it listened ({status}): {}",
                    m.destination,
                    super::log_tail(&log)
                )));
            }
            if Instant::now() > deadline {
                return Err(RunError::Invalid(format!(
                    "virtiofsd for {} did not listen within {} s",
                    m.destination,
                    READY_PATIENCE.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        shares.daemons.push(daemon);
        shares.devices.push((tag(i), socket));
    }
    Ok(shares)
}
