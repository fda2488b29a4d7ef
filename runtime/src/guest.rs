//! What a microVM needs from the host: the VMM and agent binaries, the guest kernel,
//! the agent initramfs (built once per agent binary) and each image as an ext4 disk
//! (built once per image).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::store::{Image, Store, StoreError};

/// Errors preparing a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A binary or the kernel is missing.
    #[error("{0}")]
    Missing(String),
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
    /// `mkfs.ext4` failed.
    #[error("mkfs.ext4 could not build the disk of image {image}: {stderr}")]
    Mkfs {
        /// The image id.
        image: String,
        /// What it said.
        stderr: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GuestError + 'a {
    move |source| GuestError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A binary from `$<env>`, else beside the running `arca`.
fn sibling(name: &str, env: &str) -> Result<PathBuf, GuestError> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| GuestError::Missing(format!("Cannot locate arca itself: {e}")))?;
    let p = exe.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(GuestError::Missing(format!(
            "{name} not found beside {} (install it there or set {env})",
            exe.display()
        )))
    }
}

/// `arca-agent`.
pub fn agent_binary() -> Result<PathBuf, GuestError> {
    sibling("arca-agent", "ARCA_AGENT")
}

/// `arca-vmm`.
pub fn vmm_binary() -> Result<PathBuf, GuestError> {
    sibling("arca-vmm", "ARCA_VMM")
}

/// The guest kernel: `$ARCA_KERNEL`, else the newest `kernels/build.sh` output in
/// `~/.cache/arca/kernels/`.
pub fn kernel() -> Result<PathBuf, GuestError> {
    if let Some(k) = std::env::var_os("ARCA_KERNEL") {
        return Ok(PathBuf::from(k));
    }
    let cache = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/arca/kernels"));
    let newest = cache
        .and_then(|c| fs::read_dir(c).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vmlinux"))
        .filter(|p| p.is_file())
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    newest.ok_or_else(|| {
        GuestError::Missing(
            "No guest kernel: set ARCA_KERNEL or build one with kernels/build.sh".into(),
        )
    })
}

/// A `newc` cpio archive writer.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Cpio<W> {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        let pad = |n: usize| (4 - n % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad(110 + name.len() + 1)])?;
        self.out.write_all(data)?;
        self.out.write_all(&[0u8; 3][..pad(data.len())])?;
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// Shared libraries `ldd` names for `exe` (none for a static binary).
fn libraries(exe: &Path) -> Vec<PathBuf> {
    // `ldd` where installed, else the dynamic loader's own `--list` (what ldd runs).
    let out = Command::new("ldd")
        .arg(exe)
        .env("LC_ALL", "C")
        .output()
        .or_else(|_| {
            Command::new("/lib64/ld-linux-x86-64.so.2")
                .arg("--list")
                .arg(exe)
                .output()
        });
    let Ok(out) = out else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    let mut libs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// The agent initramfs (`/init` = arca-agent and its libraries), cached in
/// `<state>/guest/` by the agent binary's digest. The digest is remembered with the
/// binary's identity (path, device, inode, size, modification time) in
/// `<state>/guest/agent.digest`, so that a run does not read the binary again.
pub fn agent_initramfs(state: &Path) -> Result<PathBuf, GuestError> {
    let agent = agent_binary()?;
    let dir = state.join("guest");
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let digest = agent_digest(&agent, &dir)?;
    let path = dir.join(format!("agent-{}.cpio", &digest[..16]));
    if path.is_file() {
        return Ok(path);
    }
    let tmp = dir.join(format!(".agent-{}.{}", &digest[..16], std::process::id()));
    let write = || -> io::Result<()> {
        let mut c = Cpio {
            out: io::BufWriter::new(fs::File::create(&tmp)?),
            ino: 0,
        };
        for d in [".", "dev", "proc", "sys", "run", "tmp", "etc"] {
            c.entry(d, 0o040755, (0, 0), &[])?;
        }
        c.entry("dev/console", 0o020600, (5, 1), &[])?;
        c.entry("dev/null", 0o020666, (1, 3), &[])?;
        c.entry("init", 0o100755, (0, 0), &fs::read(&agent)?)?;
        let mut dirs_done: Vec<PathBuf> = Vec::new();
        for lib in libraries(&agent) {
            let rel = lib.strip_prefix("/").unwrap_or(&lib).to_path_buf();
            let mut parent = PathBuf::new();
            for part in rel.parent().into_iter().flat_map(|p| p.components()) {
                parent.push(part);
                if !dirs_done.contains(&parent) {
                    c.entry(&parent.display().to_string(), 0o040755, (0, 0), &[])?;
                    dirs_done.push(parent.clone());
                }
            }
            c.entry(
                &rel.display().to_string(),
                0o100755,
                (0, 0),
                &fs::read(&lib)?,
            )?;
        }
        c.finish()?.flush()
    };
    write().map_err(io_err("write the agent initramfs", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("store", &path))?;
    Ok(path)
}

/// A file's identity without reading it: path, device, inode, size and modification
/// time (a rebuilt or replaced file has another).
pub(crate) fn file_identity(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok(format!(
        "{} {} {} {} {}.{}",
        path.display(),
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// `agent`'s sha256, from the note in `dir` while the binary is the one it names.
fn agent_digest(agent: &Path, dir: &Path) -> Result<String, GuestError> {
    let identity = file_identity(agent).map_err(io_err("read", agent))?;
    let note = dir.join("agent.digest");
    if let Some(digest) = fs::read_to_string(&note).ok().and_then(|text| {
        let (id, digest) = text.rsplit_once('\n')?;
        (id == identity && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| digest.to_owned())
    }) {
        return Ok(digest);
    }
    let digest = crate::image::store::sha256_file(agent)?;
    let tmp = dir.join(format!(".agent.digest.{}", std::process::id()));
    // Best effort: without the note the next run reads the binary again.
    if fs::write(&tmp, format!("{identity}\n{digest}")).is_ok() {
        let _ = fs::rename(&tmp, &note);
    }
    Ok(digest)
}

/// Entries under `path` (files, directories, links), for the inode count.
fn tree_entries(path: &Path) -> u64 {
    1 + fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                tree_entries(&e.path())
            } else {
                1
            }
        })
        .sum::<u64>()
}

fn tree_size(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    let own = m.len().div_ceil(4096) * 4096 + 256;
    if m.is_dir() {
        own + fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| tree_size(&e.path()))
            .sum::<u64>()
    } else {
        own
    }
}

/// The image's root filesystem as a read-only ext4 disk, built once with
/// `mkfs.ext4 -d` and shared by every container of the image.
pub fn image_disk(store: &Store, image: &Image) -> Result<PathBuf, GuestError> {
    let path = image.rootfs.with_file_name("rootfs.ext4");
    if path.is_file() {
        return Ok(path);
    }
    let _lock = store.lock()?;
    if path.is_file() {
        return Ok(path);
    }
    let tmp = image
        .rootfs
        .with_file_name(format!(".rootfs.ext4.{}", std::process::id()));
    // Whole MiBs: a block device's size is a multiple of its sectors (virtio-blk
    // refuses a disk image that is not a multiple of 512 bytes).
    let size = (tree_size(&image.rootfs) * 13 / 10 + (16 << 20))
        .max(32 << 20)
        .next_multiple_of(1 << 20);
    let f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.set_len(size).map_err(io_err("size", &tmp))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        // Inodes by count, not by bytes: images of many small files need them.
        .args(["-q", "-F", "-O", "^has_journal", "-L", "arca-image"])
        .arg("-N")
        .arg((tree_entries(&image.rootfs) * 5 / 4 + 1024).to_string())
        .arg("-d")
        .arg(&image.rootfs)
        .arg(&tmp)
        .output()
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            GuestError::Missing(format!("Cannot run mkfs.ext4 (install e2fsprogs): {e}"))
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(GuestError::Mkfs {
            image: image.id.clone(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, &path).map_err(io_err("store", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_digest_is_read_once_per_binary() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("arca-agent");
        fs::write(&agent, b"one").unwrap();
        let first = agent_digest(&agent, dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        // The note is used while the binary is the same file...
        let note = dir.path().join("agent.digest");
        let text = fs::read_to_string(&note).unwrap();
        let (id, _) = text.rsplit_once('\n').unwrap();
        fs::write(&note, format!("{id}\n{}", "a".repeat(64))).unwrap();
        assert_eq!(agent_digest(&agent, dir.path()).unwrap(), "a".repeat(64));
        // ...and a new binary (another size here) is read again.
        fs::write(&agent, b"other").unwrap();
        let second = agent_digest(&agent, dir.path()).unwrap();
        assert_ne!(second, first);
        assert_ne!(second, "a".repeat(64));
    }
}
