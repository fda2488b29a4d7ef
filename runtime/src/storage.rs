//! A container's storage besides its image: the writable layer on host disk (a sparse
//! ext4 image per microVM container, a directory per host container), the mounts a
//! user asks for (`-v`, `--mount`, `--tmpfs`, Docker's syntax and rules) and
//! `--storage-opt`.
//!
//! The image's disk is read-only and shared by every container of the image; what a
//! container writes goes to its own layer, which lives in its state directory and goes
//! with it (`arca rm`, `run --rm`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
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

/// A mount as the user asked for it (`-v`, `--mount`, `--tmpfs`), before volumes are
/// made and sources checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// Absolute path in the container (checked: no `.` or `..`, not `/`).
    pub target: String,
    /// What goes there.
    pub kind: RequestKind,
    /// Read-only.
    pub readonly: bool,
}

/// What a [`MountRequest`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RequestKind {
    /// A host path (absolute; relative ones are resolved against the working
    /// directory, as the docker CLI does).
    Bind {
        /// The host path.
        source: PathBuf,
        /// Made (a directory) when missing: `-v`'s rule; `--mount` refuses instead.
        create: bool,
    },
    /// A volume: named, or anonymous (a new one for this container) when `None`.
    Volume {
        /// Its name.
        name: Option<String>,
        /// Do not fill a new volume from the image.
        nocopy: bool,
    },
    /// A fresh tmpfs.
    Tmpfs(TmpfsOptions),
}

/// A tmpfs mount's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TmpfsOptions {
    /// Bytes; the kernel's default (half of RAM) when absent.
    pub size: Option<u64>,
    /// Octal mode of its root (01777 when absent).
    pub mode: Option<u32>,
    /// `noexec` (the default, as Docker's).
    pub noexec: bool,
}

/// A mount of a container as it was made, in its record (what `inspect` shows as
/// `Mounts`, Docker's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: MountType,
    /// The volume's name.
    #[serde(rename = "Name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The host path (a volume's `_data`; empty for a tmpfs).
    #[serde(rename = "Source")]
    pub source: PathBuf,
    /// Path in the container.
    #[serde(rename = "Destination")]
    pub destination: String,
    /// Writable.
    #[serde(rename = "RW")]
    pub rw: bool,
    /// A tmpfs's options.
    #[serde(rename = "Tmpfs", default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
    /// An anonymous volume (goes with the container under `run --rm` and `rm -v`).
    #[serde(
        rename = "Anonymous",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub anonymous: bool,
}

/// The kinds of [`MountPoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A host path.
    Bind,
    /// A volume.
    Volume,
    /// A tmpfs.
    Tmpfs,
}

fn check_target(target: &str, bad: &dyn Fn(String) -> StorageError) -> Result<(), StorageError> {
    if target == "/" {
        return Err(bad("the destination cannot be '/'".into()));
    }
    if !target.starts_with('/') {
        return Err(bad(format!(
            "mount path {target:?} must be absolute (a path in the container)"
        )));
    }
    arca_protocol::validate_mount_target(target).map_err(|e| bad(e.message))
}

/// A host path from the command line: relative ones (`.`, `./src`, `../x`) against the
/// working directory, as the docker CLI does; `.` and `..` are resolved lexically.
fn host_path(text: &str) -> Result<PathBuf, String> {
    let mut path = if text.starts_with('/') {
        PathBuf::from("/")
    } else {
        std::env::current_dir().map_err(|e| format!("cannot resolve {text:?}: {e}"))?
    };
    for part in text.split('/').filter(|c| !c.is_empty()) {
        match part {
            "." => {}
            ".." => {
                path.pop();
            }
            p => path.push(p),
        }
    }
    Ok(path)
}

/// `-v`/`--volume`, Docker's syntax: `DEST` (an anonymous volume), `SRC:DEST[:OPTIONS]`
/// where `SRC` is a host path (absolute, or relative starting with `.`) or a volume
/// name. Options, comma-separated: `ro`, `rw`, `nocopy` (volumes), `z`/`Z` (SELinux
/// labels: this host has none, so no effect, as Docker without SELinux),
/// `rprivate`/`private` (the propagation Arca mounts have); other propagations are
/// refused.
pub fn parse_volume(text: &str) -> Result<MountRequest, StorageError> {
    let bad = |why: String| {
        StorageError::Invalid(format!("invalid volume specification: '{text}': {why}"))
    };
    let parts: Vec<&str> = text.split(':').collect();
    let is_mode = |m: &str| m.split(',').all(mode_word);
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, ""),
        [t, m] if is_mode(m) && t.starts_with('/') => (None, *t, *m),
        [s, t] => (Some(*s), *t, ""),
        [s, t, m] => (Some(*s), *t, *m),
        _ => return Err(bad("too many colons (use SOURCE:DEST[:OPTIONS])".into())),
    };
    check_target(target, &bad)?;
    let (mut readonly, mut nocopy) = (false, false);
    for m in mode.split(',').filter(|m| !m.is_empty()) {
        match m {
            "ro" => readonly = true,
            "rw" => readonly = false,
            "nocopy" => nocopy = true,
            m if mode_word(m) => {}
            _ if matches!(m, "shared" | "rshared" | "slave" | "rslave") => {
                return Err(bad(format!(
                    "propagation {m:?} is not supported: Arca's mounts are rprivate"
                )));
            }
            _ => return Err(bad(format!("invalid mode {m:?}"))),
        }
    }
    let kind = match source {
        Some("") => return Err(bad("empty source".into())),
        Some(s) if s.starts_with('/') || s.starts_with('.') => {
            if nocopy {
                return Err(bad("nocopy applies to volumes, not host paths".into()));
            }
            RequestKind::Bind {
                source: host_path(s).map_err(bad)?,
                create: true,
            }
        }
        Some(name) => {
            crate::volume::validate_name(name).map_err(|e| bad(e.to_string()))?;
            RequestKind::Volume {
                name: Some(name.to_string()),
                nocopy,
            }
        }
        None => RequestKind::Volume { name: None, nocopy },
    };
    Ok(MountRequest {
        target: target.to_string(),
        kind,
        readonly,
    })
}

/// Mode words `-v` takes besides `ro`/`rw`/`nocopy`: SELinux labels (no SELinux
/// here), consistency hints (ignored on Linux, by Docker too), the default propagation.
fn mode_word(m: &str) -> bool {
    matches!(
        m,
        "ro" | "rw"
            | "nocopy"
            | "z"
            | "Z"
            | "rprivate"
            | "private"
            | "consistent"
            | "cached"
            | "delegated"
    )
}

/// `--mount KEY=VALUE,...`, Docker's keys: `type` (`bind`, `volume` (default),
/// `tmpfs`), `source`/`src`, `target`/`destination`/`dst`, `readonly`/`ro`[`=BOOL`],
/// `volume-nocopy`, `tmpfs-size`, `tmpfs-mode`, `bind-propagation=rprivate`,
/// `consistency` (ignored on Linux, as by Docker). A missing bind source is an error
/// (unlike `-v`). Other keys (`volume-driver` other than local, `volume-opt`,
/// `volume-subpath`, ...) are refused by name.
pub fn parse_mount<'a>(text: &'a str) -> Result<MountRequest, StorageError> {
    let bad = |why: String| {
        StorageError::Invalid(format!(
            "invalid argument {text:?} for \"--mount\" flag: {why}"
        ))
    };
    let (mut kind, mut source, mut target) = ("volume", None, None);
    let (mut readonly, mut nocopy) = (false, false);
    let mut tmpfs = TmpfsOptions {
        size: None,
        mode: None,
        noexec: true,
    };
    let mut seen_kind_keys: Vec<&str> = Vec::new();
    let boolean = |key: &str, v: Option<&str>| match v {
        None | Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(bad(format!(
            "invalid value {v:?} for {key} (use true or false)"
        ))),
    };
    for field in text.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (field.trim(), None),
        };
        let need = |v: Option<&'a str>| -> Result<&'a str, StorageError> {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| bad(format!("invalid field '{field}' must be a key=value pair")))
        };
        match key {
            "type" => kind = need(value)?,
            "source" | "src" => source = Some(need(value)?),
            "target" | "destination" | "dst" => target = Some(need(value)?),
            "readonly" | "ro" => readonly = boolean(key, value)?,
            "consistency" => {
                need(value)?;
            }
            "bind-propagation" => {
                seen_kind_keys.push("bind");
                let v = need(value)?;
                if !matches!(v, "rprivate" | "private") {
                    return Err(bad(format!(
                        "bind-propagation {v:?} is not supported: Arca's mounts are rprivate"
                    )));
                }
            }
            "volume-nocopy" => {
                seen_kind_keys.push("volume");
                nocopy = boolean(key, value)?;
            }
            "volume-driver" => {
                seen_kind_keys.push("volume");
                let v = need(value)?;
                if v != "local" {
                    return Err(bad(format!(
                        "volume driver {v:?} is not supported: Arca has the local driver only"
                    )));
                }
            }
            "tmpfs-size" => {
                seen_kind_keys.push("tmpfs");
                let v = need(value)?;
                tmpfs.size = Some(
                    crate::parse_size(v).ok_or_else(|| bad(format!("invalid tmpfs-size {v:?}")))?,
                );
            }
            "tmpfs-mode" => {
                seen_kind_keys.push("tmpfs");
                let v = need(value)?;
                tmpfs.mode = Some(
                    octal_mode(v)
                        .ok_or_else(|| bad(format!("invalid tmpfs-mode {v:?} (use octal)")))?,
                );
            }
            "" => return Err(bad("empty field".into())),
            other => {
                return Err(bad(format!(
                    "unsupported field {other:?} (Arca takes type, source, target, readonly, volume-nocopy, volume-driver=local, tmpfs-size, tmpfs-mode, bind-propagation=rprivate, consistency)"
                )));
            }
        }
    }
    let target = target.ok_or_else(|| bad("target is required".into()))?;
    check_target(target, &bad)?;
    if let Some(k) = seen_kind_keys.iter().find(|k| **k != kind) {
        return Err(bad(format!("{k}-* options do not apply to type={kind}")));
    }
    let kind = match kind {
        "bind" => {
            let s = source.ok_or_else(|| bad("source is required for a bind mount".into()))?;
            RequestKind::Bind {
                source: host_path(s).map_err(bad)?,
                create: false,
            }
        }
        "volume" => {
            if let Some(name) = source {
                crate::volume::validate_name(name).map_err(|e| bad(e.to_string()))?;
            }
            RequestKind::Volume {
                name: source.map(String::from),
                nocopy,
            }
        }
        "tmpfs" => {
            if source.is_some() {
                return Err(bad("a tmpfs mount takes no source".into()));
            }
            RequestKind::Tmpfs(tmpfs)
        }
        other => {
            return Err(bad(format!(
                "mount type {other:?} is not supported (use bind, volume or tmpfs)"
            )));
        }
    };
    Ok(MountRequest {
        target: target.to_string(),
        kind,
        readonly,
    })
}

/// A tmpfs mode as `--tmpfs mode=` and `--mount tmpfs-mode=` take it: octal, at most
/// 07777.
fn octal_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text, 8).ok().filter(|&m| m <= 0o7777)
}

/// `--tmpfs PATH[:OPTIONS]`, Docker's syntax: options `rw`, `ro`, `size=SIZE`,
/// `mode=OCTAL`, `exec`, `noexec` (the default), `nosuid`, `nodev` (always on).
pub fn parse_tmpfs(text: &str) -> Result<MountRequest, StorageError> {
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
                    octal_mode(v)
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
    Ok(MountRequest {
        target: target.to_string(),
        kind: RequestKind::Tmpfs(TmpfsOptions { size, mode, noexec }),
        readonly,
    })
}

/// The mount flags of `run` (`-v`, `--mount`, `--tmpfs`), parsed.
pub fn parse_mount_flags(
    volumes: &[String],
    mounts: &[String],
    tmpfs: &[String],
) -> Result<Vec<MountRequest>, StorageError> {
    let mut out = Vec::new();
    for v in volumes {
        out.push(parse_volume(v)?);
    }
    for m in mounts {
        out.push(parse_mount(m)?);
    }
    for t in tmpfs {
        out.push(parse_tmpfs(t)?);
    }
    Ok(out)
}

/// Orders mounts so that one inside another comes after it (Docker sorts them by
/// depth), keeping the given order otherwise; the same target twice is refused.
pub fn order_mounts(mounts: &mut [MountPoint]) -> Result<(), StorageError> {
    let depth = |m: &MountPoint| m.destination.split('/').filter(|c| !c.is_empty()).count();
    mounts.sort_by_key(depth);
    let norm = |m: &MountPoint| m.destination.trim_end_matches('/').to_string();
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| norm(o) == norm(m)) {
            return Err(StorageError::Invalid(format!(
                "Duplicate mount point: {}",
                norm(m)
            )));
        }
    }
    Ok(())
}

/// A microVM container's writable layer in `dir`: a sparse ext4 image of `size` bytes
/// (made on first use; only what the container writes takes host disk), for the
/// guest's second virtio-blk disk. With `blanks` (a private directory), the first layer
/// of each size is formatted there once and every layer after is a sparse copy of it
/// (a few MiB of data: no `mkfs.ext4` on the way to a container's first output).
pub fn layer_image(dir: &Path, size: u64, blanks: Option<&Path>) -> Result<PathBuf, StorageError> {
    let path = dir.join(LAYER_IMAGE);
    if path.exists() {
        return Ok(path);
    }
    let partial = dir.join(format!("{LAYER_IMAGE}.partial"));
    let create = |source| StorageError::Create {
        path: path.clone(),
        source,
    };
    match blanks {
        None => format_layer(&partial, size).map_err(|reason| StorageError::Format {
            path: path.clone(),
            reason,
        })?,
        Some(blanks) => {
            let blank = blanks.join(format!("layer-{size}.ext4"));
            if !blank.is_file() {
                std::fs::create_dir_all(blanks).map_err(create)?;
                let tmp = blanks.join(format!(".layer-{size}.{}", std::process::id()));
                format_layer(&tmp, size).map_err(|reason| StorageError::Format {
                    path: path.clone(),
                    reason,
                })?;
                // Concurrent first runs each make one; the last rename wins, whole.
                std::fs::rename(&tmp, &blank).map_err(create)?;
            }
            if let Err(e) = copy_sparse(&blank, &partial) {
                let _ = std::fs::remove_file(&partial);
                return Err(create(e));
            }
        }
    }
    std::fs::rename(&partial, &path).map_err(create)?;
    Ok(path)
}

/// Makes `path` a sparse ext4 image of `size` bytes; says why not.
fn format_layer(path: &Path, size: u64) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    file.set_len(size).map_err(|e| e.to_string())?;
    drop(file);
    // Lazy inode tables on a file whose holes read as zeros: mke2fs marks them zeroed,
    // so neither it nor the guest writes them, and the image stays a few MiB.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg("lazy_itable_init=1,lazy_journal_init=1")
        .arg(path)
        .output();
    let failed = match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Some(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")),
    };
    if let Some(reason) = failed {
        let _ = std::fs::remove_file(path);
        return Err(reason);
    }
    Ok(())
}

/// Copies `from` to a new file `to`, holes kept as holes (`SEEK_DATA`/`SEEK_HOLE`).
fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(from)?;
    let len = src.metadata()?.len();
    let dst = std::fs::File::create(to)?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let data = match rustix::fs::seek(&src, SeekFrom::Data(at)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(&src, SeekFrom::Hole(data))?.min(len);
        let mut off = data;
        while off < hole {
            let n = ((hole - off) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], off)?;
            dst.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        at = hole;
    }
    Ok(())
}

/// A host container's writable layer directory in `dir` (the agent makes `upper` and
/// `work` in it).
pub fn layer_dir(dir: &Path) -> PathBuf {
    dir.join(LAYER_DIR)
}

/// The bytes the writable layer of the container in `dir` holds on the host's disk
/// (its directory, or a microVM's sparse disk: see [`disk_usage`]).
pub fn layer_usage(dir: &Path) -> u64 {
    disk_usage(&dir.join(LAYER_DIR)) + disk_usage(&dir.join(LAYER_IMAGE))
}

/// The bytes `path` (a file, or a directory tree, symbolic links not followed) takes
/// on the host's disk: allocated blocks, so a sparse disk counts what it holds. What
/// cannot be read counts nothing.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfs(m: &MountRequest) -> TmpfsOptions {
        match m.kind {
            RequestKind::Tmpfs(t) => t,
            ref k => panic!("{k:?}"),
        }
    }

    #[test]
    fn tmpfs_takes_dockers_options_and_refuses_the_rest() {
        let m = parse_tmpfs("/run:size=64m,mode=755,exec").unwrap();
        assert_eq!(m.target, "/run");
        assert_eq!(
            tmpfs(&m),
            TmpfsOptions {
                size: Some(64 << 20),
                mode: Some(0o755),
                noexec: false
            }
        );
        let m = parse_tmpfs("/tmp").unwrap();
        assert_eq!(
            tmpfs(&m),
            TmpfsOptions {
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
    fn volume_flags_follow_dockers_syntax() {
        let m = parse_volume("/data").unwrap();
        assert_eq!(
            m.kind,
            RequestKind::Volume {
                name: None,
                nocopy: false
            }
        );
        let m = parse_volume("/data:ro").unwrap();
        assert!(m.readonly && matches!(m.kind, RequestKind::Volume { name: None, .. }));
        let m = parse_volume("cache:/root/.cache:nocopy").unwrap();
        assert_eq!(
            m.kind,
            RequestKind::Volume {
                name: Some("cache".into()),
                nocopy: true
            }
        );
        let m = parse_volume("/srv/src:/src:ro,z").unwrap();
        assert!(m.readonly);
        assert_eq!(
            m.kind,
            RequestKind::Bind {
                source: "/srv/src".into(),
                create: true
            }
        );
        let m = parse_volume("./out/../out:/out").unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            m.kind,
            RequestKind::Bind {
                source: cwd.join("out"),
                create: true
            }
        );
        // What a hostile or mistaken caller tries: targets that climb out, the root,
        // relative targets, a volume name that is a path, propagation into the host.
        for (bad, says) in [
            ("/x:/a/../../etc", "Invalid mount target"),
            ("/x:/", "cannot be '/'"),
            ("/x:rel", "must be absolute"),
            ("a/b:/data", "invalid characters"),
            ("x:/data", "invalid characters"),
            ("/x:/d:rshared", "propagation"),
            ("/x:/d:rw,bogus", "invalid mode"),
            ("/x:/d:nocopy", "nocopy applies to volumes"),
            ("a:b:c:d", "too many colons"),
            (":/d", "empty source"),
        ] {
            let err = parse_volume(bad).unwrap_err().to_string();
            assert!(err.contains("invalid volume specification"), "{bad}: {err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn mount_flags_follow_dockers_keys() {
        let m = parse_mount("type=bind,source=/srv,target=/srv,readonly").unwrap();
        assert!(m.readonly);
        assert_eq!(
            m.kind,
            RequestKind::Bind {
                source: "/srv".into(),
                create: false
            }
        );
        let m = parse_mount("src=data,dst=/data,volume-nocopy=true,ro=false").unwrap();
        assert!(!m.readonly);
        assert_eq!(
            m.kind,
            RequestKind::Volume {
                name: Some("data".into()),
                nocopy: true
            }
        );
        let m = parse_mount("type=tmpfs,destination=/run,tmpfs-size=1m,tmpfs-mode=700").unwrap();
        assert_eq!(
            tmpfs(&m),
            TmpfsOptions {
                size: Some(1 << 20),
                mode: Some(0o700),
                noexec: true
            }
        );
        for (bad, says) in [
            ("type=bind,target=/x", "source is required"),
            ("type=volume,source=/x", ""),
            ("source=v", "target is required"),
            ("type=image,source=a,target=/x", "not supported"),
            (
                "type=bind,source=/a,target=/x,volume-nocopy",
                "do not apply",
            ),
            ("target=/x,volume-opt=type=nfs", "unsupported field"),
            ("target=/x,volume-driver=nfs", "local driver only"),
            ("type=tmpfs,source=x,target=/x", "takes no source"),
            ("target=/x,readonly=maybe", "invalid value"),
            ("target=/x,,", "empty field"),
            ("target", "key=value"),
            (
                "type=bind,source=/a,target=/x,bind-propagation=shared",
                "rprivate",
            ),
        ] {
            let err = parse_mount(bad).unwrap_err().to_string();
            assert!(err.contains("for \"--mount\" flag"), "{bad}: {err}");
            assert!(err.contains(says), "{bad}: {err}");
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
        let point = |d: &str| MountPoint {
            kind: MountType::Tmpfs,
            name: None,
            source: PathBuf::new(),
            destination: d.into(),
            rw: true,
            tmpfs: None,
            anonymous: false,
        };
        let mut m = vec![point("/a/b/c"), point("/a"), point("/z/y")];
        order_mounts(&mut m).unwrap();
        let t: Vec<_> = m.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(t, ["/a", "/z/y", "/a/b/c"]);
        let mut m = vec![point("/a"), point("/a/")];
        let err = order_mounts(&mut m).unwrap_err().to_string();
        assert_eq!(err, "Duplicate mount point: /a");
    }

    #[test]
    fn the_layer_image_is_sparse_and_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = match layer_image(dir.path(), DEFAULT_LAYER_SIZE, None) {
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
        assert_eq!(layer_image(dir.path(), 1 << 30, None).unwrap(), path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), DEFAULT_LAYER_SIZE);
        assert!(!dir.path().join("rw.ext4.partial").exists());
    }

    #[test]
    fn layers_after_the_first_are_sparse_copies_of_a_blank() {
        let blanks = tempfile::tempdir().unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = match layer_image(a.path(), 1 << 30, Some(blanks.path())) {
            Ok(p) => p,
            Err(StorageError::Format { reason, .. }) if reason.contains("e2fsprogs") => return,
            Err(e) => panic!("{e}"),
        };
        let blank = blanks.path().join(format!("layer-{}.ext4", 1u64 << 30));
        assert!(blank.is_file());
        let second = layer_image(b.path(), 1 << 30, Some(blanks.path())).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert!(read(&first) == read(&blank) && read(&second) == read(&blank));
        use std::os::unix::fs::MetadataExt;
        let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks();
        assert!(blocks(&second) <= blocks(&blank) + 8, "holes stay holes");
    }

    #[test]
    fn a_sparse_copy_keeps_data_and_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let f = std::fs::File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 20 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        let to = dir.path().join("to");
        copy_sparse(&from, &to).unwrap();
        let mut buf = [0u8; 6];
        let t = std::fs::File::open(&to).unwrap();
        t.read_exact_at(&mut buf[..4], 0).unwrap();
        assert_eq!(&buf[..4], b"head");
        t.read_exact_at(&mut buf, 20 << 20).unwrap();
        assert_eq!(&buf, b"middle");
        t.read_exact_at(&mut buf[..4], (64 << 20) - 4).unwrap();
        assert_eq!(&buf[..4], b"tail");
        assert_eq!(t.metadata().unwrap().len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(t.metadata().unwrap().blocks() * 512 < 1 << 20);
    }
}
