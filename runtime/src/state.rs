//! The state directory (images, containers, networks, guest files) and who may reach it.
//!
//! Everything below the state root belongs to the user who runs `arca` (root for
//! `/var/lib/arca`): unpacked image files keep their setuid bits and file capabilities,
//! records hold every `-e` value, and sockets reach agents. So, as Moby does since
//! CVE-2021-41091: `arca` runs with umask 077 (files 0600, directories 0700), the root
//! and the directories below it are 0700 and tightened when an older, looser state
//! directory is opened, a state root owned by another user is refused, and every
//! server socket checks its peer's uid ([`peer_is_trusted`]).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No place for a non-root user's state.
    #[error(
        "Cannot choose a state directory: neither HOME nor XDG_DATA_HOME is set (set ARCA_STATE_DIR or pass --state-dir)"
    )]
    NoHome,
    /// The state root belongs to someone else.
    #[error(
        "The state directory {path} belongs to uid {owner}, not to you (uid {me}): its files would be theirs to read and change"
    )]
    Foreign {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        me: u32,
    },
    /// The state root is not a directory.
    #[error("The state directory {0} is not a directory")]
    NotADirectory(PathBuf),
    /// A file operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Opens (creating) the lock file `path` and takes flock(2) `how` on it: the one recipe
/// of the store's, the networks' and the volumes' locks. The error says which step
/// failed (`"open"` or `"lock"`).
pub fn lock_file(
    path: &Path,
    how: rustix::fs::FlockOperation,
) -> Result<fs::File, (&'static str, io::Error)> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ("open", e))?;
    rustix::fs::flock(&f, how).map_err(|e| ("lock", e.into()))?;
    Ok(f)
}

/// Where `arca` keeps state: `$ARCA_STATE_DIR`, else `/var/lib/arca` as root, else
/// `$XDG_DATA_HOME/arca` (`~/.local/share/arca`); never a shared directory such as
/// `/tmp`.
pub fn state_dir() -> Result<PathBuf, StateError> {
    if let Some(d) = std::env::var_os("ARCA_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/arca"));
    }
    let nonempty = |v: &str| std::env::var_os(v).filter(|d| !d.is_empty());
    nonempty("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("arca"))
        .ok_or(StateError::NoHome)
}

/// Directories directly below the root, and those whose children are per-object
/// directories (containers, networks, images).
const TOP: [&str; 4] = ["images", "containers", "networks", "guest"];
const PER_OBJECT: [&str; 3] = ["containers", "networks", "images/by-id"];

/// Makes `state` private to this user: creates it 0700 if missing, refuses one owned by
/// another user, and tightens an existing one (the root, the directories below it and
/// each container's, network's and image's directory to 0700). Call once at start,
/// after setting the umask.
pub fn secure(state: &Path) -> Result<(), StateError> {
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io {
            action,
            path,
            source,
        }
    };
    // The root itself may be a link the user chose (e.g. to another disk): follow it.
    match fs::metadata(state) {
        Ok(m) if !m.is_dir() => return Err(StateError::NotADirectory(state.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(state).map_err(io_err("create", state))?;
        }
        Err(e) => return Err(io_err("inspect", state)(e)),
    }
    let meta = fs::metadata(state).map_err(io_err("inspect", state))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(StateError::Foreign {
            path: state.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    tighten(state).map_err(io_err("make private", state))?;
    for d in TOP {
        let p = state.join(d);
        tighten(&p).map_err(io_err("make private", &p))?;
    }
    for d in PER_OBJECT {
        let parent = state.join(d);
        for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
            let p = e.path();
            tighten(&p).map_err(io_err("make private", &p))?;
        }
    }
    Ok(())
}

/// Sets a directory (never a link, nor anything else) to 0700 if it is looser.
fn tighten(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && m.mode() & 0o077 != 0 => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the peer of a Unix socket may use Arca's servers: the same user as this
/// process, or root. Others are refused even where a socket's directory would let
/// them reach it.
pub fn peer_is_trusted(stream: &std::os::unix::net::UnixStream) -> bool {
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(cred) => {
            let uid = cred.uid.as_raw();
            uid == 0 || uid == rustix::process::geteuid().as_raw()
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_loose_state_directory_is_made_private_and_links_are_left_alone() {
        // Hostile: another local user listing or reading state; a link planted to make
        // us chmod something else.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let outside = dir.path().join("outside");
        fs::create_dir_all(state.join("containers/c1")).unwrap();
        fs::create_dir_all(state.join("images/by-id/abc/rootfs")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        for p in [
            &state,
            &state.join("containers"),
            &state.join("containers/c1"),
            &outside,
        ] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(
            state.join("images/by-id/abc/rootfs"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, state.join("containers/link")).unwrap();
        secure(&state).unwrap();
        for p in [
            "",
            "containers",
            "containers/c1",
            "images",
            "images/by-id/abc",
        ] {
            assert_eq!(mode(&state.join(p)), 0o700, "{p}");
        }
        // An image's own root keeps the image's mode (it is the container's `/`).
        assert_eq!(mode(&state.join("images/by-id/abc/rootfs")), 0o755);
        assert_eq!(mode(&outside), 0o755, "a link was followed");
    }

    #[test]
    fn a_new_state_directory_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        secure(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn a_file_is_not_a_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "").unwrap();
        assert!(matches!(secure(&file), Err(StateError::NotADirectory(_))));
    }

    #[test]
    fn a_state_directory_of_another_user_is_refused() {
        // Hostile: a local user who made the state root first, to read what we keep.
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: needs root to give a directory away");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = secure(&theirs).unwrap_err();
        assert!(matches!(e, StateError::Foreign { owner: 65534, .. }), "{e}");
    }

    #[test]
    fn our_own_socket_peer_is_trusted() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(peer_is_trusted(&a));
    }
}
