//! What changed in a container's root filesystem against its image (`Request::Changes`,
//! `arca diff`): the overlay's upper directory, walked through the descriptor the
//! container's init helper passed before it pivoted, beside the image's (lower)
//! directory.
//!
//! The upper directory is the container's to write, so it is walked as hostile: with
//! `openat` and `fstatat` relative to directory descriptors, never following a symlink
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), opening nothing but directories, and at most
//! [`MAX_ENTRIES`] entries.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use arca_protocol::{Change, ChangeKind};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// Files the agent writes into every container; Docker bind-mounts its own, so they
/// are never in its layer.
pub(crate) const AGENT_FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// Mount points the agent makes in every container.
pub(crate) const MOUNT_POINTS: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Most entries walked: a bound on what a hostile layer can cost the agent.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Deepest directory walked (a descriptor is open per level, and paths grow with it).
pub const MAX_DEPTH: usize = 128;
/// Most bytes of paths listed in all.
pub const MAX_PATH_BYTES: usize = 64 << 20;

/// The changes in `upper` over `lower`, sorted by path. `mounts`: the container's own
/// mount targets, which (and whose new parents) are not listed unless something else
/// under them is.
pub fn changes(
    upper: BorrowedFd<'_>,
    lower: BorrowedFd<'_>,
    mounts: &[String],
) -> Result<Vec<Change>, String> {
    let mut walk = Walk {
        out: Vec::new(),
        seen: 0,
        bytes: 0,
        mounts: MOUNT_POINTS
            .iter()
            .map(|m| m.to_string())
            .chain(mounts.iter().cloned())
            .collect(),
    };
    let lower = reopen(lower).ok();
    walk.dir(upper, lower.as_ref().map(|l| l.as_fd()), "", 0)?;
    // Docker's order: depth first, each directory's entries by name.
    walk.out
        .sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    Ok(walk.out)
}

struct Walk {
    out: Vec<Change>,
    seen: usize,
    bytes: usize,
    mounts: Vec<String>,
}

impl Walk {
    /// Walks directory `upper` (at `prefix`, `""` for the root) beside `lower` (the
    /// image's directory at the same path, if it has one); whether anything under it was
    /// listed.
    fn dir(
        &mut self,
        upper: BorrowedFd<'_>,
        lower: Option<BorrowedFd<'_>>,
        prefix: &str,
        depth: usize,
    ) -> Result<bool, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "the writable layer nests directories more than {MAX_DEPTH} deep"
            ));
        }
        // What this directory may list: what the whole walk has left (a hostile layer
        // nesting directories of a million names each must not hold them all).
        let names = list(upper, MAX_ENTRIES.saturating_sub(self.seen))
            .map_err(|e| format!("{prefix}/: {e}"))?;
        let mut listed = false;
        for name in &names {
            self.seen += 1;
            if self.seen > MAX_ENTRIES {
                return Err(format!(
                    "the writable layer has more than {MAX_ENTRIES} entries"
                ));
            }
            // Looked up by its own bytes; shown lossily.
            let path = format!("{prefix}/{}", name.to_string_lossy());
            let st = match rustix::fs::statat(upper, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since it was listed (the container keeps running).
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err(format!("{path}: {e}")),
            };
            self.bytes += path.len();
            if self.bytes > MAX_PATH_BYTES {
                return Err(format!(
                    "the writable layer's changes name more than {} MiB of paths",
                    MAX_PATH_BYTES >> 20
                ));
            }
            let below = lower.and_then(|l| {
                rustix::fs::statat(l, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()
            });
            let kind = FileType::from_raw_mode(st.st_mode);
            if kind == FileType::CharacterDevice && st.st_rdev == 0 {
                // A whiteout: the image's file is gone.
                self.out.push(change(ChangeKind::Deleted, path));
                listed = true;
                continue;
            }
            if kind != FileType::Directory {
                if AGENT_FILES.contains(&path.as_str()) {
                    continue;
                }
                let k = if below.is_some() {
                    ChangeKind::Changed
                } else {
                    ChangeKind::Added
                };
                self.out.push(change(k, path));
                listed = true;
                continue;
            }
            let child = match rustix::fs::openat(
                upper,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err(format!("{path}: {e}")),
            };
            let was_dir = below
                .as_ref()
                .is_some_and(|b| FileType::from_raw_mode(b.st_mode) == FileType::Directory);
            let image_dir = match (was_dir, lower) {
                (true, Some(l)) => rustix::fs::openat(
                    l,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ok(),
                _ => None,
            };
            let opaque = opaque(child.as_fd());
            let mut inner = if opaque {
                // What the image had here is gone but for what the upper has again.
                if let Some(image) = &image_dir {
                    let again: std::collections::HashSet<CString> =
                        list(child.as_fd(), MAX_ENTRIES.saturating_sub(self.seen))
                            .unwrap_or_default()
                            .into_iter()
                            .collect();
                    for gone in list(image.as_fd(), MAX_ENTRIES).unwrap_or_default() {
                        if !again.contains(&gone) {
                            self.out.push(change(
                                ChangeKind::Deleted,
                                format!("{path}/{}", gone.to_string_lossy()),
                            ));
                        }
                    }
                }
                self.dir(child.as_fd(), None, &path, depth + 1)?
            } else {
                self.dir(
                    child.as_fd(),
                    image_dir.as_ref().map(|d| d.as_fd()),
                    &path,
                    depth + 1,
                )?
            };
            inner |= opaque;
            let new = !was_dir;
            let retouched = below.as_ref().is_some_and(|b| changed_meta(&st, b));
            let mount_path = self
                .mounts
                .iter()
                .any(|m| m == &path || m.strip_prefix(&path).is_some_and(|r| r.starts_with('/')));
            if inner || retouched || (new && !mount_path) {
                let k = if new {
                    ChangeKind::Added
                } else {
                    ChangeKind::Changed
                };
                self.out.push(change(k, path));
                listed = true;
            }
        }
        Ok(listed)
    }
}

fn change(kind: ChangeKind, path: String) -> Change {
    Change { kind, path }
}

/// A directory's metadata differs from the image's (its times aside: copying a file
/// up touches them).
fn changed_meta(upper: &Stat, lower: &Stat) -> bool {
    upper.st_mode != lower.st_mode || upper.st_uid != lower.st_uid || upper.st_gid != lower.st_gid
}

/// Whether overlayfs marked the directory opaque (it replaced the image's).
pub(crate) fn opaque(dir: BorrowedFd<'_>) -> bool {
    let mut value = [0u8; 4];
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|attr| matches!(rustix::fs::fgetxattr(dir, *attr, &mut value), Ok(n) if n >= 1 && value[0] == b'y'))
}

/// A new descriptor of the same directory (its own position for reading).
pub(crate) fn reopen(dir: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names in a directory, `.` and `..` left out, sorted (by their bytes); more than
/// `max` of them is an error (`ENOMEM`).
pub(crate) fn list(dir: BorrowedFd<'_>, max: usize) -> rustix::io::Result<Vec<CString>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
            if names.len() > max {
                return Err(rustix::io::Errno::NOMEM);
            }
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;

    fn open(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn shown(c: &[Change]) -> Vec<String> {
        c.iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect()
    }

    /// An upper directory as overlayfs leaves it (whiteouts need root: mknod 0/0) over
    /// an image: added, changed and deleted files; a directory changed only by the
    /// agent's files; a new mount point; a symlink that is never followed.
    #[test]
    fn changes_read_as_docker_diff_lists_them() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: whiteouts need root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        for d in ["etc", "tmp", "usr/bin"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        fs::write(lower.join("etc/group"), "g").unwrap();
        fs::write(lower.join("etc/passwd"), "p").unwrap();
        fs::write(lower.join("usr/bin/tool"), "t").unwrap();
        for d in ["etc", "tmp", "newdir/sub", "data", "usr/bin"] {
            fs::create_dir_all(upper.join(d)).unwrap();
        }
        fs::write(upper.join("etc/hosts"), "agent").unwrap();
        fs::write(upper.join("etc/passwd"), "changed").unwrap();
        fs::write(upper.join("tmp/x"), "new").unwrap();
        fs::write(upper.join("newdir/sub/f"), "new").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", upper.join("tmp/link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join("etc/group"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Docker's order: /newdir before /newdir.txt; a name that is not UTF-8.
        fs::write(upper.join("newdir.txt"), "n").unwrap();
        fs::write(upper.join(std::ffi::OsStr::from_bytes(b"odd\xff")), "o").unwrap();
        // usr/bin copied up with nothing changed below: not listed.
        let got = changes(
            open(&upper).as_fd(),
            open(&lower).as_fd(),
            &["/data".to_string()],
        )
        .unwrap();
        assert_eq!(
            shown(&got),
            [
                "C /etc",
                "D /etc/group",
                "C /etc/passwd",
                "A /newdir",
                "A /newdir/sub",
                "A /newdir/sub/f",
                "A /newdir.txt",
                "A /odd\u{FFFD}",
                "C /tmp",
                "A /tmp/link",
                "A /tmp/x",
            ]
        );
        // Only the agent's own files: nothing.
        fs::remove_dir_all(&upper).unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/resolv.conf"), "nameserver 1.1.1.1").unwrap();
        let got = changes(open(&upper).as_fd(), open(&lower).as_fd(), &[]).unwrap();
        assert!(got.is_empty(), "{:?}", shown(&got));
    }
}
