//! A container's storage besides its image: the writable layer on host disk (a sparse
//! ext4 image per microVM container, a directory per host container), `--tmpfs`
//! mounts and `--storage-opt`.
//!
//! The image's disk is read-only and shared by every container of the image; what a
//! container writes goes to its own layer, which lives in its state directory and goes
//! with it (`arca rm`, `run --rm`).

use std::path::{Path, PathBuf};
use std::process::Command;

use arca_protocol::{Mount, MountSource};
use thiserror::Error;

/// The writable layer's size when `--storage-opt size=` does not say (sparse: only
/// what the container writes takes host disk).
pub const DEFAULT_LAYER_SIZE: u64 = 10 << 30;
/// The smallest layer ext4 fits in with its journal.
const MIN_LAYER_SIZE: u64 = 64 << 20;
/// The largest: ext4's 16 TiB with 4 KiB blocks.
const MAX_LAYER_SIZE: u64 = 16 << 40;
/// The writable layer image in a microVM container's directory.
const LAYER_IMAGE: &str = "rw.ext4";
/// The writable layer directory of a host container.
const LAYER_DIR: &str = "rw";

/// What storage options and the writable layer fail with.
#[derive(Debug, Error)]
pub enum StorageError {
    /// A `--storage-opt` or `--tmpfs` value the user can fix.
    #[error("{0}")]
    Invalid(String),
    /// The layer image could not be made.
    #[error("Cannot create the writable layer {}", path.display())]
    Create {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `mkfs.ext4` failed.
    #[error("Cannot format the writable layer {}: {reason}", path.display())]
    Format {
        /// The image.
        path: PathBuf,
        /// What mkfs said, or why it did not run.
        reason: String,
    },
}

/// `--storage-opt KEY=VALUE`s: only `size` (the writable layer's size; Docker's key),
/// the rest are refused by name.
pub fn parse_storage_opts(opts: &[String]) -> Result<Option<u64>, StorageError> {
    let mut size = None;
    for opt in opts {
        let Some((key, value)) = opt.split_once('=') else {
            return Err(StorageError::Invalid(format!(
                "invalid storage option {opt:?}: use KEY=VALUE (Arca knows size=SIZE)"
            )));
        };
        match key {
            "size" => {
                let bytes = crate::parse_size(value)
                    .filter(|b| (MIN_LAYER_SIZE..=MAX_LAYER_SIZE).contains(b))
                    .ok_or_else(|| {
                        StorageError::Invalid(format!(
                            "invalid storage size {value:?}: use a size from 64m to 16t (e.g. 20g)"
                        ))
                    })?;
                size = Some(bytes);
            }
            _ => {
                return Err(StorageError::Invalid(format!(
                    "unknown storage option {key:?}: Arca supports size=SIZE only"
                )));
            }
        }
    }
    Ok(size)
}

/// `--tmpfs PATH[:OPTIONS]`, Docker's syntax: options `rw`, `ro`, `size=SIZE`,
/// `mode=OCTAL`, `exec`, `noexec` (the default), `nosuid`, `nodev` (always on).
pub fn parse_tmpfs(text: &str) -> Result<Mount, StorageError> {
    let bad = |why: String| StorageError::Invalid(format!("invalid --tmpfs {text:?}: {why}"));
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    arca_protocol::validate_mount_target(target).map_err(|e| bad(e.message))?;
    let (mut size, mut mode, mut noexec, mut readonly) = (None, None, true, false);
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("size", v)) => {
                size = Some(
                    crate::parse_size(v)
                        .filter(|&s| s > 0)
                        .ok_or_else(|| bad(format!("bad size {v:?}")))?,
                );
            }
            Some(("mode", v)) => {
                mode = Some(
                    u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|&m| m <= 0o7777)
                        .ok_or_else(|| bad(format!("bad mode {v:?} (use octal, e.g. 1777)")))?,
                );
            }
            None if opt == "rw" => readonly = false,
            None if opt == "ro" => readonly = true,
            None if opt == "exec" => noexec = false,
            None if opt == "noexec" => noexec = true,
            None if matches!(opt, "nosuid" | "nodev") => {}
            _ => {
                return Err(bad(format!(
                    "unsupported option {opt:?} (Arca takes rw, ro, size=, mode=, exec, noexec, nosuid, nodev)"
                )));
            }
        }
    }
    Ok(Mount {
        target: target.to_string(),
        source: MountSource::Tmpfs { size, mode, noexec },
        readonly,
    })
}

/// Orders mounts so that one inside another comes after it (Docker sorts them by
/// depth), keeping the given order otherwise; the same target twice is refused.
pub fn order_mounts(mounts: &mut [Mount]) -> Result<(), StorageError> {
    let depth = |m: &Mount| m.target.split('/').filter(|c| !c.is_empty()).count();
    mounts.sort_by_key(depth);
    let norm = |m: &Mount| m.target.trim_end_matches('/').to_string();
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| norm(o) == norm(m)) {
            return Err(StorageError::Invalid(format!(
                "duplicate mount point: {}",
                norm(m)
            )));
        }
    }
    Ok(())
}

/// A microVM container's writable layer in `dir`: a sparse ext4 image of `size` bytes
/// (made on first use; only what the container writes takes host disk), for the
/// guest's second virtio-blk disk.
pub fn layer_image(dir: &Path, size: u64) -> Result<PathBuf, StorageError> {
    let path = dir.join(LAYER_IMAGE);
    if path.exists() {
        return Ok(path);
    }
    let partial = dir.join(format!("{LAYER_IMAGE}.partial"));
    let create = |source| StorageError::Create {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::create(&partial).map_err(create)?;
    file.set_len(size).map_err(create)?;
    drop(file);
    // Lazy inode tables on a file whose holes read as zeros: mke2fs marks them zeroed,
    // so neither it nor the guest writes them, and the image stays a few MiB.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg("lazy_itable_init=1,lazy_journal_init=1")
        .arg(&partial)
        .output();
    let failed = match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Some(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")),
    };
    if let Some(reason) = failed {
        let _ = std::fs::remove_file(&partial);
        return Err(StorageError::Format { path, reason });
    }
    std::fs::rename(&partial, &path).map_err(create)?;
    Ok(path)
}

/// A host container's writable layer directory in `dir` (the agent makes `upper` and
/// `work` in it).
pub fn layer_dir(dir: &Path) -> PathBuf {
    dir.join(LAYER_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_takes_dockers_options_and_refuses_the_rest() {
        let m = parse_tmpfs("/run:size=64m,mode=755,exec").unwrap();
        assert_eq!(m.target, "/run");
        assert_eq!(
            m.source,
            MountSource::Tmpfs {
                size: Some(64 << 20),
                mode: Some(0o755),
                noexec: false
            }
        );
        let m = parse_tmpfs("/tmp").unwrap();
        assert_eq!(
            m.source,
            MountSource::Tmpfs {
                size: None,
                mode: None,
                noexec: true
            }
        );
        assert!(parse_tmpfs("/t:ro").unwrap().readonly);
        for bad in [
            "tmp",
            "/",
            "/a/../../etc",
            "/t:size=abc",
            "/t:mode=999",
            "/t:suid",
            "/t:uid=0",
        ] {
            let err = parse_tmpfs(bad).unwrap_err().to_string();
            assert!(err.contains("invalid --tmpfs"), "{bad}: {err}");
        }
    }

    #[test]
    fn storage_opts_know_size_only() {
        assert_eq!(parse_storage_opts(&[]).unwrap(), None);
        assert_eq!(
            parse_storage_opts(&["size=20g".into()]).unwrap(),
            Some(20 << 30)
        );
        for (bad, says) in [
            ("size=1k", "invalid storage size"),
            ("size=99t", "invalid storage size"),
            ("dm.basesize=5g", "unknown storage option \"dm.basesize\""),
            ("size", "use KEY=VALUE"),
        ] {
            let err = parse_storage_opts(&[bad.into()]).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn mounts_are_ordered_parents_first_and_duplicates_refused() {
        let mut m = vec![
            parse_tmpfs("/a/b/c").unwrap(),
            parse_tmpfs("/a").unwrap(),
            parse_tmpfs("/z/y").unwrap(),
        ];
        order_mounts(&mut m).unwrap();
        let t: Vec<_> = m.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(t, ["/a", "/z/y", "/a/b/c"]);
        let mut m = vec![parse_tmpfs("/a").unwrap(), parse_tmpfs("/a/").unwrap()];
        assert!(order_mounts(&mut m).is_err());
    }

    #[test]
    fn the_layer_image_is_sparse_and_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = match layer_image(dir.path(), DEFAULT_LAYER_SIZE) {
            Ok(p) => p,
            // Hosts without e2fsprogs: the error names it.
            Err(StorageError::Format { reason, .. }) if reason.contains("e2fsprogs") => return,
            Err(e) => panic!("{e}"),
        };
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), DEFAULT_LAYER_SIZE);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 64 << 20, "{} blocks", meta.blocks());
        // A second call reuses it (a restarted container keeps its writes).
        std::fs::write(dir.path().join("marker"), "x").unwrap();
        assert_eq!(layer_image(dir.path(), 1 << 30).unwrap(), path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), DEFAULT_LAYER_SIZE);
        assert!(!dir.path().join("rw.ext4.partial").exists());
    }
}
