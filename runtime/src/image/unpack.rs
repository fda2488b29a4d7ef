//! Applying image layers (tar, optionally gzip-compressed) to a root directory.
//!
//! Layers are untrusted input. Every entry path is taken relative to the root (a
//! leading `/` is dropped; `..` is refused), no entry is ever created or removed through
//! a symlink (each parent directory is checked with `lstat`, and whatever stands at the
//! entry's own path is removed before the entry is created, never opened), hard links
//! must name a non-directory inside the root reached without symlinks, and character
//! and block devices are skipped and reported (a container gets its device nodes from
//! the runtime). Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) remove what
//! lower layers put there: a first pass over the layer applies them, a second extracts
//! the entries.
//!
//! Ownership is restored when running as root; otherwise files belong to the caller.
//! Of the extended attributes a layer carries (PAX `SCHILY.xattr.*`) only `user.*` and
//! `security.capability` are restored; `trusted.*`, `security.selinux`, ACLs and the
//! rest are the host's business and are reported as skipped.
//!
//! A layer's decompressed size is counted at the decompressor, not taken from its tar
//! headers: a [`SizeCap`] shared by an image's layers stops the unpacking with
//! [`UnpackError::TooLarge`] as soon as the bytes read pass it (a gzip bomb fills no
//! disk; the first pass, which only reads, already meets the cap).

use std::cell::Cell;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

/// Errors applying a layer. Each names the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
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
    /// The layer is not a readable tar stream.
    #[error("Layer {layer} is not a valid tar archive")]
    Archive {
        /// The layer file.
        layer: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry path climbs out of the root with `..`.
    #[error("Layer entry {entry:?} points outside the image root")]
    Escape {
        /// The entry (or link target) as written in the layer.
        entry: String,
    },
    /// An entry would be created, or a link would point, through a symlink.
    #[error("Layer entry {entry:?} goes through the symlink {symlink:?}")]
    ThroughSymlink {
        /// The entry.
        entry: String,
        /// The symlink in its path, relative to the root.
        symlink: String,
    },
    /// An entry's parent exists but is not a directory.
    #[error("Layer entry {entry:?} has a parent {parent:?} that is not a directory")]
    ParentNotDirectory {
        /// The entry.
        entry: String,
        /// The parent, relative to the root.
        parent: String,
    },
    /// A hard link names nothing, or a directory.
    #[error("Layer entry {entry:?} is a hard link to {target:?}, which is not a file in the image")]
    BadHardLink {
        /// The entry.
        entry: String,
        /// The link target.
        target: String,
    },
    /// The layer uses a compression this runtime cannot read.
    #[error("Layer {layer} uses {compression} compression, which is not supported (gzip or none)")]
    Compression {
        /// The layer file.
        layer: PathBuf,
        /// What it uses.
        compression: &'static str,
    },
    /// The layer decompresses past what the image's size cap leaves.
    #[error("Layer {layer} decompresses past the image size cap of {limit} bytes")]
    TooLarge {
        /// The layer file.
        layer: PathBuf,
        /// The cap for the whole image, in bytes.
        limit: u64,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What applying a layer did besides extracting entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerReport {
    /// Entries created.
    pub entries: u64,
    /// Paths removed by whiteouts.
    pub whiteouts: u64,
    /// Entries not extracted (device nodes, unknown types), with the reason.
    pub skipped: Vec<String>,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// The entry path relative to the root: `/` and `.` dropped, `..` refused. `None` for
/// the root itself.
pub(crate) fn clean(raw: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(UnpackError::Escape {
                    entry: raw.display().to_string(),
                });
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Checks every parent of `rel` below `root`: each must be a real directory, or absent
/// (then it is created when `create` is set, else `Ok(None)` says the path cannot
/// exist). Returns the full path.
pub(crate) fn parents(
    root: &Path,
    rel: &Path,
    entry: &str,
    create: bool,
) -> Result<Option<PathBuf>, UnpackError> {
    let mut at = root.to_path_buf();
    let mut shown = PathBuf::new();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        shown.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::ThroughSymlink {
                    entry: entry.to_string(),
                    symlink: shown.display().to_string(),
                });
            }
            Ok(_) => {
                return Err(UnpackError::ParentNotDirectory {
                    entry: entry.to_string(),
                    parent: shown.display().to_string(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                fs::create_dir(&at).map_err(io_err("create directory", &at))?;
                // A parent no entry describes gets Docker's 0755, not arca's umask.
                fs::set_permissions(&at, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("create directory", &at))?;
            }
            Err(e) => return Err(io_err("inspect", &at)(e)),
        }
    }
    Ok(Some(root.join(rel)))
}

/// Removes whatever stands at `path` (a directory with its contents), without
/// following a symlink there.
pub(crate) fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// The decompressed bytes an image may take, shared by its layers in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeCap {
    limit: u64,
    used: u64,
}

impl SizeCap {
    /// A cap of `limit` decompressed bytes, none used yet.
    pub fn new(limit: u64) -> Self {
        Self { limit, used: 0 }
    }

    /// The cap, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The bytes counted so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Counts `n` more bytes.
    pub(crate) fn add(&mut self, n: u64) {
        self.used = self.used.saturating_add(n);
    }

    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// The bytes a [`decompressed`] stream yielded so far.
pub(crate) type Counter = Rc<Cell<u64>>;

/// Counts the bytes read through it, failing every read once they pass `limit`.
struct Capped<R> {
    inner: R,
    count: Counter,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.count.get() > self.limit {
            return Err(io::Error::other("decompressed size cap passed"));
        }
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        if self.count.get() > self.limit {
            return Err(io::Error::other("decompressed size cap passed"));
        }
        Ok(n)
    }
}

/// A layer's decompressed stream, limited to what `cap` leaves, and the counter of the
/// bytes it yielded. Errors while reading it go through [`capped`].
pub(crate) fn decompressed(
    layer: &Path,
    cap: &SizeCap,
) -> Result<(Box<dyn Read>, Counter), UnpackError> {
    let count = Rc::new(Cell::new(0));
    let reader = Capped {
        inner: open_layer(layer)?,
        count: Rc::clone(&count),
        limit: cap.remaining(),
    };
    Ok((Box::new(reader), count))
}

/// `result` of reading a stream from [`decompressed`], its error replaced by
/// [`UnpackError::TooLarge`] when the stream passed the cap (tar wraps the reader's
/// error, so the counter, not the error, tells).
pub(crate) fn capped<T>(
    result: Result<T, UnpackError>,
    count: &Cell<u64>,
    cap: &SizeCap,
    layer: &Path,
) -> Result<T, UnpackError> {
    if count.get() > cap.remaining() {
        return Err(UnpackError::TooLarge {
            layer: layer.to_path_buf(),
            limit: cap.limit,
        });
    }
    result
}

/// Opens a layer, gunzipping it if it starts with the gzip magic.
fn open_layer(layer: &Path) -> Result<Box<dyn Read>, UnpackError> {
    let mut f = fs::File::open(layer).map_err(io_err("open", layer))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io_err("read", layer))?;
    let f = fs::File::open(layer).map_err(io_err("open", layer))?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(io::BufReader::new(
            f,
        )))),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(UnpackError::Compression {
            layer: layer.to_path_buf(),
            compression: "zstd",
        }),
        _ => Ok(Box::new(io::BufReader::new(f))),
    }
}

fn archive_err(layer: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Archive {
        layer: layer.to_path_buf(),
        source,
    }
}

/// Applies one layer to `root` (which must exist), counting its decompressed bytes
/// against `cap`. On an error `root` may hold part of the layer: the caller unpacks
/// into a staging directory and removes it.
pub fn apply_layer(
    root: &Path,
    layer: &Path,
    cap: &mut SizeCap,
) -> Result<LayerReport, UnpackError> {
    let mut report = LayerReport::default();
    // Pass 1 reads the whole tar stream (tar skips entry data by reading it), so it
    // meets the cap before pass 2 writes anything.
    let (reader, count) = decompressed(layer, cap)?;
    let result = whiteouts(root, layer, reader, &mut report);
    capped(result, &count, cap, layer)?;
    let (reader, count) = decompressed(layer, cap)?;
    let result = extract(root, layer, reader, &mut report);
    capped(result, &count, cap, layer)?;
    cap.add(count.get());
    Ok(report)
}

/// Pass 1: whiteouts, which act on the lower layers only.
fn whiteouts(
    root: &Path,
    layer: &Path,
    reader: Box<dyn Read>,
    report: &mut LayerReport,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(archive_err(layer))? {
        let entry = entry.map_err(archive_err(layer))?;
        let raw = entry.path().map_err(archive_err(layer))?.into_owned();
        let Some(rel) = clean(&raw)? else { continue };
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with(WHITEOUT_PREFIX) {
            continue;
        }
        let shown = raw.display().to_string();
        let target = &name[WHITEOUT_PREFIX.len()..];
        if name != OPAQUE && matches!(target, "" | "." | "..") {
            return Err(UnpackError::Escape { entry: shown });
        }
        let Some(full) = parents(root, &rel, &shown, false)? else {
            continue;
        };
        let dir = full.parent().unwrap_or(root).to_path_buf();
        if name == OPAQUE {
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                for child in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
                    let child = child.map_err(io_err("read", &dir))?;
                    remove_existing(&child.path())?;
                    report.whiteouts += 1;
                }
            }
        } else {
            let hidden = dir.join(target);
            if fs::symlink_metadata(&hidden).is_ok() {
                remove_existing(&hidden)?;
                report.whiteouts += 1;
            }
        }
    }
    Ok(())
}

/// Pass 2: everything else.
fn extract(
    root: &Path,
    layer: &Path,
    reader: Box<dyn Read>,
    report: &mut LayerReport,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let as_root = rustix::process::geteuid().is_root();
    for entry in archive.entries().map_err(archive_err(layer))? {
        let mut entry = entry.map_err(archive_err(layer))?;
        let raw = entry.path().map_err(archive_err(layer))?.into_owned();
        let shown = raw.display().to_string();
        let Some(rel) = clean(&raw)? else { continue };
        if rel
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(WHITEOUT_PREFIX))
        {
            continue;
        }
        let kind = entry.header().entry_type();
        let Some(full) = parents(root, &rel, &shown, true)? else {
            continue;
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match kind {
            EntryType::Directory => {
                if !fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
                    remove_existing(&full)?;
                    fs::create_dir(&full).map_err(io_err("create directory", &full))?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_existing(&full)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&full)
                    .map_err(io_err("create", &full))?;
                io::copy(&mut entry, &mut out).map_err(archive_err(layer))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(archive_err(layer))?
                    .ok_or_else(|| UnpackError::BadHardLink {
                        entry: shown.clone(),
                        target: String::new(),
                    })?
                    .into_owned();
                remove_existing(&full)?;
                // A symlink's target is only ever resolved inside the container.
                std::os::unix::fs::symlink(&target, &full)
                    .map_err(io_err("create symlink", &full))?;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(archive_err(layer))?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_shown = raw_target.display().to_string();
                let bad = || UnpackError::BadHardLink {
                    entry: shown.clone(),
                    target: target_shown.clone(),
                };
                let target_rel = clean(&raw_target)
                    .map_err(|_| UnpackError::Escape {
                        entry: target_shown.clone(),
                    })?
                    .ok_or_else(bad)?;
                let target = parents(root, &target_rel, &shown, false)?.ok_or_else(bad)?;
                match fs::symlink_metadata(&target) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad()),
                }
                if target == full {
                    continue;
                }
                remove_existing(&full)?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself.
                fs::hard_link(&target, &full).map_err(io_err("create hard link", &full))?;
                report.entries += 1;
                continue;
            }
            EntryType::Fifo => {
                remove_existing(&full)?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &full,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(mode),
                    0,
                )
                .map_err(|e| io_err("create FIFO", &full)(e.into()))?;
            }
            EntryType::Char | EntryType::Block => {
                report.skipped.push(format!("{shown}: device node"));
                continue;
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {
                continue;
            }
            other => {
                report
                    .skipped
                    .push(format!("{shown}: unsupported entry type {other:?}"));
                continue;
            }
        }
        let (xattrs, refused) = pax_xattrs(&mut entry);
        for name in refused {
            report
                .skipped
                .push(format!("{shown}: extended attribute {name} (not restored)"));
        }
        set_metadata(&entry, &full, kind, mode, as_root)?;
        for (name, value) in xattrs {
            // chown (in set_metadata) clears security.capability: xattrs come after it.
            if let Err(e) = rustix::fs::lsetxattr(
                &full,
                name.as_str(),
                &value,
                rustix::fs::XattrFlags::empty(),
            ) {
                report
                    .skipped
                    .push(format!("{shown}: extended attribute {name} ({e})"));
            }
        }
        report.entries += 1;
    }
    Ok(())
}

/// Whether an image may set extended attribute `name`: its own `user.*` data, and
/// `security.capability` (file capabilities, which binaries such as `ping` need).
/// `trusted.*` and `security.*` others (SELinux labels, IMA/EVM) are the host's policy,
/// `system.*` (ACLs) grants access a layer's mode does not show.
fn xattr_allowed(name: &str) -> bool {
    (name.len() > "user.".len() && name.starts_with("user.")) || name == "security.capability"
}

/// The extended attributes a PAX header gives an entry (`SCHILY.xattr.NAME`): those to
/// restore (allowed by [`xattr_allowed`], no NUL in the name, value at most 64 KiB,
/// the kernel's own limit) and the names of those refused; 64 of each at most.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let (mut restore, mut refused) = (Vec::new(), Vec::new());
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return (restore, refused);
    };
    for ext in exts.flatten() {
        let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) else {
            continue;
        };
        let value = ext.value_bytes();
        if xattr_allowed(name) && !name.contains('\0') && value.len() <= 65536 {
            if restore.len() < 64 {
                restore.push((name.to_string(), value.to_vec()));
            }
        } else if refused.len() < 64 {
            refused.push(name.escape_debug().to_string());
        }
    }
    (restore, refused)
}

/// Owner (as root), mode (not for symlinks) and modification time, in that order:
/// a chown after the chmod would clear set-id bits.
fn set_metadata<R: Read>(
    entry: &tar::Entry<'_, R>,
    path: &Path,
    kind: EntryType,
    mode: u32,
    as_root: bool,
) -> Result<(), UnpackError> {
    use rustix::fs::{AtFlags, CWD};
    let h = entry.header();
    if as_root {
        let uid = h
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(0);
        let gid = h
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or(0);
        rustix::fs::chownat(
            CWD,
            path,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err("set the owner of", path)(e.into()))?;
    }
    if kind != EntryType::Symlink {
        rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(mode))
            .map_err(|e| io_err("set the mode of", path)(e.into()))?;
    }
    if let Ok(mtime) = h.mtime() {
        let t = rustix::fs::Timespec {
            tv_sec: i64::try_from(mtime).unwrap_or(0),
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        let _ = rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// One entry of a test layer.
    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Char(&'a str),
        Fifo(&'a str),
    }

    /// Writes a layer tar with entries given raw (no path checks by the builder).
    fn layer(dir: &Path, name: &str, entries: &[E<'_>], gzip: bool) -> PathBuf {
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            for e in entries {
                let mut h = tar::Header::new_gnu();
                let (path, kind, data, link): (&str, EntryType, &[u8], Option<&str>) = match e {
                    E::Dir(p) => (p, EntryType::Directory, b"", None),
                    E::File(p, d) => (p, EntryType::Regular, d.as_bytes(), None),
                    E::Symlink(p, t) => (p, EntryType::Symlink, b"", Some(t)),
                    E::Hardlink(p, t) => (p, EntryType::Link, b"", Some(t)),
                    E::Char(p) => (p, EntryType::Char, b"", None),
                    E::Fifo(p) => (p, EntryType::Fifo, b"", None),
                };
                h.set_entry_type(kind);
                h.set_size(data.len() as u64);
                h.set_mode(if kind == EntryType::Directory {
                    0o755
                } else {
                    0o644
                });
                h.set_mtime(1_700_000_000);
                // Raw names: the builder's own checks would refuse the hostile ones.
                let name = &mut h.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                if let Some(t) = link {
                    h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                }
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
            b.finish().unwrap();
        }
        let out = dir.join(name);
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(
                fs::File::create(&out).unwrap(),
                flate2::Compression::fast(),
            );
            gz.write_all(&buf).unwrap();
            gz.finish().unwrap();
        } else {
            fs::write(&out, buf).unwrap();
        }
        out
    }

    fn unlimited() -> SizeCap {
        SizeCap::new(u64::MAX)
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        layers: PathBuf,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        let layers = tmp.path().join("layers");
        for d in [&root, &outside, &layers] {
            fs::create_dir(d).unwrap();
        }
        fs::write(outside.join("secret"), "host data").unwrap();
        Setup {
            _tmp: tmp,
            root,
            outside,
            layers,
        }
    }

    fn apply(s: &Setup, name: &str, entries: &[E<'_>]) -> Result<LayerReport, UnpackError> {
        apply_layer(
            &s.root,
            &layer(&s.layers, name, entries, false),
            &mut unlimited(),
        )
    }

    fn outside_untouched(s: &Setup) {
        let names: Vec<_> = fs::read_dir(&s.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("secret")],
            "something was written outside"
        );
        assert_eq!(
            fs::read_to_string(s.outside.join("secret")).unwrap(),
            "host data"
        );
    }

    /// A hostile layer sets xattrs the host acts on: a `trusted.*` one (read by
    /// root-only overlay and security tools), an SELinux label it picked, an ACL granting
    /// what its mode does not. Only `user.*` and `security.capability` are restored; the
    /// rest are reported as skipped, whoever unpacks.
    #[test]
    fn pax_xattrs_are_restored_for_user_and_file_capabilities_only() {
        // vfs_cap_data revision 2, effective, permitted CAP_NET_RAW (ping's capability).
        let cap_net_raw: &[u8] = &[
            0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let s = setup();
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            b.append_pax_extensions([
                ("SCHILY.xattr.user.arca", b"hello".as_slice()),
                ("SCHILY.xattr.security.capability", cap_net_raw),
                ("SCHILY.xattr.trusted.arca", b"root only".as_slice()),
                (
                    "SCHILY.xattr.security.selinux",
                    b"system_u:object_r:hostile_t:s0".as_slice(),
                ),
                ("SCHILY.xattr.system.posix_acl_access", b"\x02".as_slice()),
                ("SCHILY.xattr.user.", b"no name".as_slice()),
            ])
            .unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_size(2);
            h.set_mode(0o755);
            b.append_data(&mut h, "tagged", b"hi".as_slice()).unwrap();
            b.finish().unwrap();
        }
        let path = s.layers.join("x.tar");
        fs::write(&path, buf).unwrap();
        let report = apply_layer(&s.root, &path, &mut unlimited()).unwrap();
        let file = s.root.join("tagged");
        let get = |name: &str| {
            let mut v = [0u8; 64];
            rustix::fs::lgetxattr(&file, name, &mut v[..])
                .ok()
                .map(|n| v[..n].to_vec())
        };
        assert_eq!(get("user.arca").as_deref(), Some(b"hello".as_slice()));
        assert_eq!(get("trusted.arca"), None);
        assert_eq!(get("system.posix_acl_access"), None);
        assert_ne!(
            get("security.selinux").as_deref(),
            Some(b"system_u:object_r:hostile_t:s0".as_slice()),
            "the image's SELinux label was applied"
        );
        let skipped = |name: &str| report.skipped.iter().any(|r| r.contains(name));
        for name in [
            "trusted.arca",
            "security.selinux",
            "system.posix_acl_access",
            "user. ",
        ] {
            assert!(skipped(name), "{name} not reported: {:?}", report.skipped);
        }
        if rustix::process::geteuid().is_root() {
            assert_eq!(get("security.capability").as_deref(), Some(cap_net_raw));
            assert!(!skipped("security.capability"), "{:?}", report.skipped);
        } else {
            // Setting file capabilities needs CAP_SETFCAP: reported, not fatal.
            assert_eq!(get("security.capability"), None);
            assert!(skipped("security.capability"), "{:?}", report.skipped);
        }
    }

    #[test]
    fn files_dirs_links_and_fifos_are_extracted_with_their_modes() {
        let s = setup();
        let r = apply_layer(
            &s.root,
            &layer(
                &s.layers,
                "l.tar.gz",
                &[
                    E::Dir("etc/"),
                    E::File("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
                    E::Symlink("etc/link", "/etc/passwd"),
                    E::Hardlink("etc/hard", "etc/passwd"),
                    E::File("usr/bin/tool", "#!/bin/sh\n"),
                    E::Fifo("run/fifo"),
                ],
                true,
            ),
            &mut unlimited(),
        )
        .unwrap();
        assert_eq!(r.entries, 6);
        assert_eq!(
            fs::read_to_string(s.root.join("etc/hard")).unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!(
            fs::read_link(s.root.join("etc/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(
            s.root.join("usr/bin").is_dir(),
            "missing parents are created"
        );
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        assert!(
            fs::symlink_metadata(s.root.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            fs::metadata(s.root.join("etc/passwd"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o644
        );
    }

    #[test]
    fn hostile_layers_are_refused_or_neutralised() {
        type Check = fn(&Setup, Result<LayerReport, UnpackError>);
        let cases: Vec<(&str, Vec<E<'_>>, Check)> = vec![
            (
                "dot-dot path",
                vec![E::File("../outside/evil", "x")],
                |_, r| assert!(matches!(r, Err(UnpackError::Escape { .. })), "{r:?}"),
            ),
            (
                "dot-dot inside a path",
                vec![E::File("a/../../outside/evil", "x")],
                |_, r| assert!(matches!(r, Err(UnpackError::Escape { .. })), "{r:?}"),
            ),
            (
                "absolute path lands inside the root",
                vec![E::File("/abs/file", "x")],
                |s, r| {
                    r.unwrap();
                    assert_eq!(fs::read_to_string(s.root.join("abs/file")).unwrap(), "x");
                },
            ),
            (
                "file through a symlink to outside",
                vec![
                    E::Symlink("evil", "../outside"),
                    E::File("evil/planted", "x"),
                ],
                |_, r| {
                    assert!(
                        matches!(r, Err(UnpackError::ThroughSymlink { .. })),
                        "{r:?}"
                    )
                },
            ),
            (
                "file through an absolute symlink",
                vec![
                    E::Symlink("etc", "/etc"),
                    E::File("etc/arca-test-planted", "x"),
                ],
                |_, r| {
                    assert!(
                        matches!(r, Err(UnpackError::ThroughSymlink { .. })),
                        "{r:?}"
                    );
                    assert!(!Path::new("/etc/arca-test-planted").exists());
                },
            ),
            (
                "hard link climbing out",
                vec![E::Hardlink("h", "../outside/secret")],
                |_, r| assert!(matches!(r, Err(UnpackError::Escape { .. })), "{r:?}"),
            ),
            (
                "absolute hard link resolves inside the root",
                vec![E::Hardlink("h", "/outside/secret")],
                |_, r| assert!(matches!(r, Err(UnpackError::BadHardLink { .. })), "{r:?}"),
            ),
            (
                "hard link through a symlink",
                vec![E::Symlink("s", "../outside"), E::Hardlink("h", "s/secret")],
                |_, r| {
                    assert!(
                        matches!(r, Err(UnpackError::ThroughSymlink { .. })),
                        "{r:?}"
                    )
                },
            ),
            (
                "hard link to a directory",
                vec![E::Dir("d/"), E::Hardlink("h", "d")],
                |_, r| assert!(matches!(r, Err(UnpackError::BadHardLink { .. })), "{r:?}"),
            ),
            (
                "whiteout climbing out",
                vec![E::File("../outside/.wh.secret", "")],
                |_, r| assert!(matches!(r, Err(UnpackError::Escape { .. })), "{r:?}"),
            ),
            (
                "whiteout of the parent directory",
                vec![E::File("a/.wh...", "")],
                |_, r| assert!(matches!(r, Err(UnpackError::Escape { .. })), "{r:?}"),
            ),
            (
                "whiteout of the root's parent",
                vec![E::File(".wh...", "")],
                |_, r| assert!(matches!(r, Err(UnpackError::Escape { .. })), "{r:?}"),
            ),
            ("empty whiteout", vec![E::File("a/.wh.", "")], |_, r| {
                assert!(matches!(r, Err(UnpackError::Escape { .. })), "{r:?}")
            }),
            (
                "whiteout through a symlink",
                vec![E::Symlink("s", "../outside"), E::File("s/.wh.secret", "")],
                |_, r| r.map(|_| ()).unwrap_or(()),
            ),
            (
                "device nodes are skipped",
                vec![E::Char("dev/sda")],
                |s, r| {
                    let r = r.unwrap();
                    assert_eq!(r.skipped.len(), 1, "{r:?}");
                    assert!(fs::symlink_metadata(s.root.join("dev/sda")).is_err());
                },
            ),
        ];
        for (name, entries, check) in cases {
            let s = setup();
            let result = apply(&s, "l.tar", &entries);
            check(&s, result);
            outside_untouched(&s);
            eprintln!("ok: {name}");
        }
    }

    #[test]
    fn a_later_layer_replaces_a_symlink_without_writing_through_it() {
        let s = setup();
        apply(&s, "1.tar", &[E::Symlink("data", "../outside/secret")]).unwrap();
        apply(&s, "2.tar", &[E::File("data", "new")]).unwrap();
        assert_eq!(fs::read_to_string(s.root.join("data")).unwrap(), "new");
        assert!(
            !fs::symlink_metadata(s.root.join("data"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        outside_untouched(&s);
        // And a directory replaced by a file, a file by a directory.
        apply(&s, "3.tar", &[E::File("d/x", "1"), E::File("f", "1")]).unwrap();
        apply(&s, "4.tar", &[E::File("d", "now a file"), E::Dir("f/")]).unwrap();
        assert_eq!(fs::read_to_string(s.root.join("d")).unwrap(), "now a file");
        assert!(s.root.join("f").is_dir());
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers_only() {
        let s = setup();
        apply(
            &s,
            "1.tar",
            &[
                E::File("a/keep", "1"),
                E::File("a/gone", "1"),
                E::File("b/old1", "1"),
                E::File("b/old2", "1"),
            ],
        )
        .unwrap();
        let r = apply(
            &s,
            "2.tar",
            &[
                E::File("a/.wh.gone", ""),
                // The opaque marker may come after the directory's new entries.
                E::File("b/new", "2"),
                E::File("b/.wh..wh..opq", ""),
                E::File("c/.wh.never-existed", ""),
            ],
        )
        .unwrap();
        assert_eq!(r.whiteouts, 3);
        assert!(s.root.join("a/keep").exists() && !s.root.join("a/gone").exists());
        let mut b: Vec<_> = fs::read_dir(s.root.join("b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        b.sort();
        assert_eq!(b, vec![std::ffi::OsString::from("new")]);
        assert!(
            !s.root.join("a/.wh.gone").exists(),
            "whiteout files are not extracted"
        );
    }

    /// A layer of `size` zero bytes in one file, gzipped: a few KiB on disk for MiBs
    /// unpacked (a gzip bomb, at test scale).
    fn zeros_layer(dir: &Path, name: &str, size: usize) -> PathBuf {
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_size(size as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, io::repeat(0).take(size as u64))
                .unwrap();
            b.finish().unwrap();
        }
        let out = dir.join(format!("{name}.tar.gz"));
        let mut gz = flate2::write::GzEncoder::new(
            fs::File::create(&out).unwrap(),
            flate2::Compression::best(),
        );
        gz.write_all(&buf).unwrap();
        gz.finish().unwrap();
        out
    }

    /// A hostile image ships a gzip bomb to fill the host's disk. The bytes coming out
    /// of the decompressor are counted (not the sizes tar headers claim), and the
    /// first pass, which writes nothing, already stops at the cap.
    #[test]
    fn a_gzip_bomb_stops_at_the_cap_before_anything_is_written() {
        let s = setup();
        let bomb = zeros_layer(&s.layers, "bomb", 8 << 20);
        assert!(fs::metadata(&bomb).unwrap().len() < 64 << 10);
        let mut cap = SizeCap::new(1 << 20);
        let e = apply_layer(&s.root, &bomb, &mut cap).unwrap_err();
        assert!(
            matches!(&e, UnpackError::TooLarge { layer, limit: 1048576 } if *layer == bomb),
            "{e:?}"
        );
        assert!(e.to_string().contains("1048576"), "{e}");
        assert!(!s.root.join("bomb").exists(), "the bomb was written");
    }

    /// The cap is for the image: layers each under it add up past it.
    #[test]
    fn the_cap_is_shared_by_an_images_layers() {
        let s = setup();
        let mut cap = SizeCap::new(1 << 20);
        let one = zeros_layer(&s.layers, "one", 600 << 10);
        let two = zeros_layer(&s.layers, "two", 600 << 10);
        apply_layer(&s.root, &one, &mut cap).unwrap();
        assert!(cap.used() > 600 << 10 && cap.used() < 1 << 20, "{cap:?}");
        let e = apply_layer(&s.root, &two, &mut cap).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { .. }), "{e:?}");
        assert!(!s.root.join("two").exists());
    }

    #[test]
    fn unreadable_and_zstd_layers_are_clear_errors() {
        let s = setup();
        let junk = s.layers.join("junk");
        fs::write(&junk, vec![0xffu8; 1024]).unwrap();
        assert!(matches!(
            apply_layer(&s.root, &junk, &mut unlimited()),
            Err(UnpackError::Archive { .. })
        ));
        let zstd = s.layers.join("z");
        fs::write(&zstd, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        let e = apply_layer(&s.root, &zstd, &mut unlimited()).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }
}
