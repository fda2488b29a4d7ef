//! A microVM's host directories (bind mounts and volumes) over virtio-fs: one
//! `virtiofsd` per mount, each sandboxed by itself (its own mount, pid and network
//! namespaces, pivoted into the one directory it serves; `--readonly` for a read-only
//! mount, so the host refuses writes whatever the guest does), and one `--fs` device of
//! the VMM for each, with its own tag. A virtiofsd ends when its VMM does.
//!
//! A single file is shared through a directory of its own that only the daemon sees
//! ([`file_share`]).
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

/// The name a shared file has at the top of its share.
pub const SHARED_FILE: &str = "file";

/// A virtiofsd that shares one file (`-v /host/app.conf:/etc/app.conf`): virtio-fs
/// shares directories, so the daemon starts in a mount namespace of its own where a
/// 64 KiB tmpfs on the container's `fs<i>` directory holds only [`SHARED_FILE`], a
/// bind mount of `source`. Nothing is mounted on the host's view (the namespace, and
/// its mounts, go with the daemon), and the guest sees nothing beside the file (what
/// it writes beside it lands in that tmpfs).
fn file_share(
    dir: &Path,
    index: usize,
    source: &Path,
    program: &Path,
) -> Result<Command, RunError> {
    let stage = dir.join(format!("fs{index}"));
    std::fs::create_dir_all(&stage).map_err(io_err(format!("create {}", stage.display())))?;
    let stage = stage
        .canonicalize()
        .map_err(io_err(format!("resolve {}", stage.display())))?;
    let source = source
        .canonicalize()
        .map_err(io_err(format!("resolve {}", source.display())))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=64k,mode=755 arca-share \"$1\" && touch \"$1/{SHARED_FILE}\" && mount --bind \"$2\" \"$1/{SHARED_FILE}\" && shift 2 && exec \"$@\""
        ))
        .arg("sh")
        .arg(&stage)
        .arg(&source)
        .arg(program)
        .arg("--shared-dir")
        .arg(&stage);
    Ok(cmd)
}

/// The virtiofsd command serving mount `m`, the `index`th of the container, on
/// `socket`: its directory (or, for a file, a directory of the file alone), in its own
/// namespace sandbox, `--readonly` when the mount is: the host refuses writes to a
/// read-only mount whatever the guest's kernel does.
fn daemon_command(
    dir: &Path,
    index: usize,
    m: &MountPoint,
    program: &Path,
    socket: &Path,
) -> Result<Command, RunError> {
    let meta =
        std::fs::metadata(&m.source).map_err(io_err(format!("inspect {}", m.source.display())))?;
    let mut cmd = if meta.is_dir() {
        let mut cmd = Command::new(program);
        cmd.arg("--shared-dir").arg(&m.source);
        cmd
    } else if meta.is_file() {
        file_share(dir, index, &m.source, program)?
    } else {
        return Err(RunError::Invalid(format!(
            "Cannot mount {} on {}: not a directory or a regular file",
            m.source.display(),
            m.destination
        )));
    };
    cmd.arg("--socket-path")
        .arg(socket)
        .args(["--sandbox", "namespace", "--cache", "auto"])
        // Quiet unless something goes wrong.
        .args(["--log-level", "error"]);
    if !m.rw {
        cmd.arg("--readonly");
    }
    Ok(cmd)
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
        let socket = dir.join(format!("fs{i}.sock"));
        let log = dir.join(format!("fs{i}.log"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = daemon_command(dir, i, m, &program, &socket)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn point(source: &Path, rw: bool) -> MountPoint {
        MountPoint {
            kind: MountType::Bind,
            name: None,
            source: source.to_path_buf(),
            destination: "/mnt".into(),
            rw,
            tmpfs: None,
            anonymous: false,
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// A guest that ignores its read-only mount (a compromised guest kernel) still
    /// cannot write: the daemon itself refuses. A file share serves a directory of the
    /// file alone, never the file's own directory.
    #[test]
    fn read_only_is_enforced_by_the_daemon_and_a_file_is_shared_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, src) = (tmp.path().join("ctr"), tmp.path().join("src"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&src).unwrap();
        let prog = Path::new("/usr/bin/virtiofsd");
        let sock = dir.join("fs0.sock");
        let ro = args(&daemon_command(&dir, 0, &point(&src, false), prog, &sock).unwrap());
        assert_eq!(ro[0], "/usr/bin/virtiofsd");
        assert!(ro.iter().any(|a| a == "--readonly"), "{ro:?}");
        assert!(
            ro.windows(2)
                .any(|w| w[0] == "--shared-dir" && w[1] == src.to_str().unwrap())
        );
        assert!(
            ro.windows(2).any(|w| w == ["--sandbox", "namespace"]),
            "{ro:?}"
        );
        let rw = args(&daemon_command(&dir, 0, &point(&src, true), prog, &sock).unwrap());
        assert!(!rw.iter().any(|a| a == "--readonly"), "{rw:?}");

        let file = src.join("app.conf");
        std::fs::write(&file, "x").unwrap();
        let f = args(&daemon_command(&dir, 3, &point(&file, false), prog, &sock).unwrap());
        assert_eq!(f[0], "unshare");
        let stage = dir.join("fs3").canonicalize().unwrap();
        let shared: Vec<_> = f.windows(2).filter(|w| w[0] == "--shared-dir").collect();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0][1], stage.to_str().unwrap(), "{f:?}");
        assert!(f.iter().any(|a| a == "--readonly"), "{f:?}");

        let sock_path = tmp.path().join("not-a-file");
        let _l = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        let err = daemon_command(&dir, 1, &point(&sock_path, true), prog, &sock).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a directory or a regular file"),
            "{err}"
        );
    }
}
