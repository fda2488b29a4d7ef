//! A build context (the directory `arca build` is given, or none for a Dockerfile on
//! stdin), what its `.dockerignore` leaves out, and what `COPY` takes from it, written
//! as a layer tar.
//!
//! A context is untrusted (a repository's files). Docker sends it to the daemon as a
//! tar, so every path in it resolves inside it; so here: a source is a path relative to
//! the context's root (a leading `/` too), `..` never climbs above the root, a symlink
//! on the way is followed inside the root (an absolute target starts again at the
//! root, as in a chroot), a loop of links is an error. Inside a copied directory,
//! symlinks are copied as symlinks. Excluded files are absent, as if never sent. What a
//! `COPY` writes is bounded (`limit` bytes of file content).

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::ignore::{Glob, Ignore, IgnoreError, MAX_IGNORE_FILE};

/// Symlinks followed in one resolution before it is called a loop (Linux's limit).
const MAX_LINKS: usize = 40;

/// Errors of reading a context; messages name the path (Docker's words where it has
/// them).
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A source climbs out of the context.
    #[error("forbidden path outside the build context: {0}")]
    Outside(String),
    /// A source is missing, or excluded.
    #[error("file not found in build context or excluded by .dockerignore: {0}")]
    NotFound(String),
    /// Several sources and a destination that is not a directory.
    #[error(
        "When using COPY with more than one source file, the destination must be a directory and end with a /"
    )]
    SeveralToFile,
    /// A directory source onto a file of the image.
    #[error("cannot copy directory {0} onto the file {1}")]
    DirectoryToFile(String, String),
    /// What would be copied is too large.
    #[error("the files to copy add up to more than {0} (the image size cap)")]
    TooLarge(String),
    /// A source pattern that cannot be compiled.
    #[error("bad source pattern {0:?}: {1}")]
    Pattern(String, String),
    /// A file changed while it was copied.
    #[error("{0} changed while it was copied")]
    Changed(PathBuf),
    /// A symlink loop.
    #[error("too many levels of symbolic links in {0}")]
    Loop(String),
    /// The context has no such thing (a Dockerfile on stdin has no context).
    #[error("{0}")]
    NoContext(String),
    /// An `ADD` archive arca cannot extract, or a tar that is not one.
    #[error("{0}")]
    Archive(String),
    /// The `.dockerignore`.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// A file operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContextError {
    let path = path.to_path_buf();
    move |source| ContextError::Io {
        action,
        path,
        source,
    }
}

/// What a path is in the image a `COPY` writes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Dir,
    Other,
}

/// A build context.
#[derive(Debug, Clone)]
pub struct Context {
    root: Option<PathBuf>,
    ignore: Ignore,
}

/// How `COPY` writes what it copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// `--chown`, resolved to numbers; root's (0:0) when absent.
    pub owner: Option<(u32, u32)>,
    /// `--chmod`: the mode of every file and directory copied.
    pub mode: Option<u32>,
    /// The most file content one `COPY` may write.
    pub limit: u64,
}

/// What a layer tar holds, once written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries left out (sockets, devices, FIFOs), for a warning.
    pub skipped: Vec<String>,
}

impl Context {
    /// The directory `root` as a context, with its `.dockerignore` if it has one.
    pub fn dir(root: &Path) -> Result<Self, ContextError> {
        let root = root
            .canonicalize()
            .map_err(io_err("find the build context", root))?;
        let m = fs::metadata(&root).map_err(io_err("read the build context", &root))?;
        if !m.is_dir() {
            return Err(ContextError::NoContext(format!(
                "The build context {} is not a directory",
                root.display()
            )));
        }
        // Found inside the context as a COPY source is (a symlink out of it leads
        // nowhere), a regular file, bounded.
        let bare = Context {
            root: Some(root.clone()),
            ignore: Ignore::default(),
        };
        let path = root.join(".dockerignore");
        let ignore = match bare.open_file(".dockerignore") {
            Ok(Some(f)) => {
                use std::io::Read;
                let mut bytes = Vec::new();
                f.take(MAX_IGNORE_FILE as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(io_err("read", &path))?;
                if bytes.len() > MAX_IGNORE_FILE {
                    return Err(IgnoreError::TooLarge.into());
                }
                let text = String::from_utf8(bytes)
                    .map_err(|_| io_err("read", &path)(io::Error::other("not UTF-8 text")))?;
                Ignore::parse(&text)?
            }
            Ok(None) | Err(ContextError::NotFound(_)) => Ignore::default(),
            Err(e) => return Err(e),
        };
        Ok(Context {
            root: Some(root),
            ignore,
        })
    }

    /// The directory `root` as a source without a `.dockerignore` (an image's or a
    /// build stage's root filesystem, for `COPY --from`): as untrusted as a context.
    pub fn tree(root: &Path) -> Result<Self, ContextError> {
        let root = root
            .canonicalize()
            .map_err(io_err("find the source tree", root))?;
        Ok(Context {
            root: Some(root),
            ignore: Ignore::default(),
        })
    }

    /// No context (a Dockerfile on stdin): `COPY` from it fails, naming the source.
    pub fn empty() -> Self {
        Context {
            root: None,
            ignore: Ignore::default(),
        }
    }

    fn root(&self, what: &str) -> Result<&Path, ContextError> {
        self.root.as_deref().ok_or_else(|| {
            ContextError::NoContext(format!(
                "{what}: there is no build context (the Dockerfile came on stdin; give a context directory to COPY from)"
            ))
        })
    }

    /// Whether `.dockerignore` leaves out `rel` (relative to the root).
    pub fn excluded(&self, rel: &str) -> bool {
        !rel.is_empty() && rel != "." && self.ignore.excludes(rel)
    }

    /// The context paths a `COPY` source names (relative to the root, `/`-separated,
    /// `.` for the root), sorted: the path itself, or what a pattern (`*`, `?`, `[...]`)
    /// matches. Missing, excluded and outside paths are errors.
    pub fn sources(&self, src: &str) -> Result<Vec<String>, ContextError> {
        let root = self.root(src)?;
        let rel = lexical(src).ok_or_else(|| ContextError::Outside(src.to_string()))?;
        if !rel.contains(['*', '?', '[']) {
            let real = self.resolve(&rel, true)?;
            let real_rel = relative(root, &real);
            if self.excluded(&rel) || self.excluded(&real_rel) {
                return Err(ContextError::NotFound(src.to_string()));
            }
            return Ok(vec![rel]);
        }
        let glob =
            Glob::new(&rel).map_err(|reason| ContextError::Pattern(src.to_string(), reason))?;
        let mut found = Vec::new();
        let top = open_dir(root)?;
        self.walk(top.as_fd(), root, "", &mut |e| {
            if glob.matches(e.rel) {
                found.push(e.rel.to_string());
            }
            Ok(())
        })?;
        found.sort();
        if found.is_empty() {
            return Err(ContextError::NotFound(src.to_string()));
        }
        Ok(found)
    }

    /// Every entry under the directory `dir` (open; at host path `at`, context-relative
    /// `prefix`), by name relative to its directory's descriptor: nothing is looked up
    /// by a path rebuilt from text, and no symlink is followed. Excluded entries are
    /// left out (their subtrees too, unless an exception may bring some back). Names
    /// that are not UTF-8 are matched against `.dockerignore` as shown (lossily) but
    /// read by their own bytes.
    fn walk(
        &self,
        dir: BorrowedFd<'_>,
        at: &Path,
        prefix: &str,
        each: &mut dyn FnMut(Entry<'_>) -> Result<(), ContextError>,
    ) -> Result<(), ContextError> {
        let names = list(dir).map_err(|e| io_err("read", at)(e.into()))?;
        for name in names {
            let shown = name.to_string_lossy();
            let rel = if prefix.is_empty() {
                shown.into_owned()
            } else {
                format!("{prefix}/{shown}")
            };
            let host = at.join(OsStr::from_bytes(name.to_bytes()));
            let st = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since it was listed.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io_err("read", &host)(e.into())),
            };
            let excluded = self.excluded(&rel);
            if !excluded {
                each(Entry {
                    dir,
                    name: &name,
                    host: &host,
                    rel: &rel,
                    st: &st,
                })?;
            }
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if is_dir && (!excluded || self.ignore.has_exceptions()) {
                let sub = rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err("read", &host)(e.into()))?;
                self.walk(sub.as_fd(), &host, &rel, each)?;
            }
        }
        Ok(())
    }

    /// The host path of context path `rel`, symlinks on the way followed inside the
    /// root (the last one too with `follow_last`).
    fn resolve(&self, rel: &str, follow_last: bool) -> Result<PathBuf, ContextError> {
        let root = self.root(rel)?;
        let at = resolve_in(root, rel, follow_last, false)?;
        let mut out = root.to_path_buf();
        out.extend(&at);
        Ok(out)
    }

    /// The regular file a source (from [`Context::sources`]) names, opened by its
    /// parent's descriptor without following a symlink; `None` for anything else (a
    /// directory). For `ADD`'s archives.
    pub fn open_file(&self, src: &str) -> Result<Option<fs::File>, ContextError> {
        let real = self.resolve(src, true)?;
        let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
            return Ok(None);
        };
        let parent_fd = open_dir(parent)?;
        let cname =
            CString::new(name.as_bytes()).map_err(|_| ContextError::NotFound(src.to_string()))?;
        // Opened as a path only, looked at, and only then opened for reading through that
        // same descriptor: opening a device node can act on the host, and the name may
        // be swapped for one in between.
        let path_fd = match rustix::fs::openat(
            parent_fd.as_fd(),
            cname.as_c_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => return Ok(None),
        };
        let st = rustix::fs::fstat(&path_fd).map_err(|e| io_err("read", &real)(e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        let proc = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
        let fd = rustix::fs::open(
            proc.as_str(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", &real)(e.into()))?;
        let again = rustix::fs::fstat(&fd).map_err(|e| io_err("read", &real)(e.into()))?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
            return Err(ContextError::Changed(real));
        }
        Ok(Some(fs::File::from(fd)))
    }

    /// Writes the layer of `COPY SOURCES... DEST` (context paths from
    /// [`Context::sources`], `dest` absolute in the image) to `out` as a tar, Docker's
    /// rules: one file onto a path is that file (into it, if the image has a directory
    /// there or `dest` ends with `/`); a directory's contents go into `dest`; several
    /// sources need a `dest` ending with `/`. Parents of `dest` the image lacks are made
    /// (0755, root's). `image` says what the image has at a path.
    pub fn copy_layer(
        &self,
        sources: &[String],
        dest: &str,
        opts: &CopyOptions,
        image: &dyn Fn(&str) -> Option<ImageKind>,
        out: impl Write,
    ) -> Result<Written, ContextError> {
        let root = self.root(dest)?.to_path_buf();
        let dest_clean = clamped(dest);
        let dest_is_dir = dest.ends_with('/')
            || dest.ends_with("/.")
            || dest_clean == "."
            || image(&dest_clean) == Some(ImageKind::Dir);
        if sources.len() > 1 && !dest.ends_with('/') && !dest.ends_with("/.") && dest_clean != "." {
            return Err(ContextError::SeveralToFile);
        }
        let mut w = Writer {
            tar: tar::Builder::new(out),
            opts,
            written: Written::default(),
            dirs_made: Vec::new(),
        };
        for src in sources {
            let real = self.resolve(src, true)?;
            let real_rel = relative(&root, &real);
            // The source itself, by its parent's descriptor (no symlink followed: the
            // resolution above already followed those inside the root).
            let (parent, name) = match (real.parent(), real.file_name()) {
                (Some(p), Some(n)) if real != root => (p.to_path_buf(), n.to_os_string()),
                _ => (root.clone(), OsString::from(".")),
            };
            let parent_fd = open_dir(&parent)?;
            let cname =
                CString::new(name.as_bytes()).map_err(|_| ContextError::NotFound(src.clone()))?;
            let st = rustix::fs::statat(
                parent_fd.as_fd(),
                cname.as_c_str(),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("read", &real)(e.into()))?;
            let here = Entry {
                dir: parent_fd.as_fd(),
                name: &cname,
                host: &real,
                rel: &real_rel,
                st: &st,
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                if !dest_is_dir && image(&dest_clean) == Some(ImageKind::Other) {
                    return Err(ContextError::DirectoryToFile(src.clone(), dest.to_string()));
                }
                w.parents(&dest_clean, true, image)?;
                let top = if name == "." {
                    open_dir(&real)?
                } else {
                    rustix::fs::openat(
                        parent_fd.as_fd(),
                        cname.as_c_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err("read", &real)(e.into()))?
                };
                let prefix = if real_rel == "." {
                    ""
                } else {
                    real_rel.as_str()
                };
                let dest_dir = dest_clean.clone();
                self.walk(top.as_fd(), &real, prefix, &mut |e| {
                    let inner = if prefix.is_empty() {
                        e.rel
                    } else {
                        &e.rel[prefix.len() + 1..]
                    };
                    w.entry(&e, &join(&dest_dir, inner))
                })?;
            } else {
                let target = if dest_is_dir {
                    let name = Path::new(src)
                        .file_name()
                        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
                    join(&dest_clean, &name)
                } else {
                    dest_clean.clone()
                };
                w.parents(&target, false, image)?;
                w.entry(&here, &target)?;
            }
        }
        w.tar
            .finish()
            .map_err(io_err("write the layer of", Path::new(dest)))?;
        Ok(w.written)
    }
}

/// The layer tar being written.
struct Writer<'o, W: Write> {
    tar: tar::Builder<W>,
    opts: &'o CopyOptions,
    written: Written,
    dirs_made: Vec<String>,
}

impl<W: Write> Writer<'_, W> {
    /// Entries for the parents of `path` (and `path` itself with `itself`) that the
    /// image lacks: directories 0755, root's.
    fn parents(
        &mut self,
        path: &str,
        itself: bool,
        image: &dyn Fn(&str) -> Option<ImageKind>,
    ) -> Result<(), ContextError> {
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let upto = if itself {
            parts.len()
        } else {
            parts.len().saturating_sub(1)
        };
        for i in 0..upto {
            let dir = parts[..=i].join("/");
            if image(&dir).is_some() || self.dirs_made.contains(&dir) {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            h.set_mtime(0);
            self.tar
                .append_data(&mut h, format!("{dir}/"), io::empty())
                .map_err(io_err("write the layer entry", Path::new(&dir)))?;
            self.dirs_made.push(dir);
        }
        Ok(())
    }

    /// One entry as `name` in the image, read through its directory's descriptor
    /// without following a symlink; a file opened is checked to be the one the walk
    /// saw, and read to exactly its recorded size.
    fn entry(&mut self, e: &Entry<'_>, name: &str) -> Result<(), ContextError> {
        let kind = FileType::from_raw_mode(e.st.st_mode);
        let (uid, gid) = self.opts.owner.unwrap_or((0, 0));
        let mut h = tar::Header::new_gnu();
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(u64::try_from(e.st.st_mtime).unwrap_or(0));
        h.set_mode(self.opts.mode.unwrap_or(e.st.st_mode & 0o7777));
        let err = io_err("write the layer entry", e.host);
        match kind {
            FileType::Directory => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                self.dirs_made.push(name.to_string());
                self.tar
                    .append_data(&mut h, format!("{name}/"), io::empty())
                    .map_err(err)
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(e.dir, e.name, Vec::new())
                    .map_err(|x| io_err("read", e.host)(x.into()))?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                self.tar
                    .append_link(
                        &mut h,
                        name,
                        Path::new(OsStr::from_bytes(target.to_bytes())),
                    )
                    .map_err(err)
            }
            FileType::RegularFile => {
                let size = u64::try_from(e.st.st_size).unwrap_or(0);
                self.written.bytes += size;
                if self.written.bytes > self.opts.limit {
                    return Err(ContextError::TooLarge(crate::image::store::show_size(
                        self.opts.limit,
                    )));
                }
                let fd = rustix::fs::openat(
                    e.dir,
                    e.name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|x| io_err("read", e.host)(x.into()))?;
                let now = rustix::fs::fstat(&fd).map_err(|x| io_err("read", e.host)(x.into()))?;
                if now.st_dev != e.st.st_dev
                    || now.st_ino != e.st.st_ino
                    || FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
                {
                    return Err(ContextError::Changed(e.host.to_path_buf()));
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                let mut counted = Counted {
                    inner: io::Read::take(fs::File::from(fd), size),
                    bytes: 0,
                };
                self.tar
                    .append_data(&mut h, name, &mut counted)
                    .map_err(err)?;
                // A file that shrank while it was read left the archive short.
                if counted.bytes != size {
                    return Err(ContextError::Changed(e.host.to_path_buf()));
                }
                Ok(())
            }
            other => {
                let what = match other {
                    FileType::Socket => "a socket",
                    FileType::Fifo => "a FIFO",
                    _ => "a device node",
                };
                self.written.skipped.push(format!("{name} ({what})"));
                Ok(())
            }
        }
    }
}

/// Counts what is read through it.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: io::Read> io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// One entry of a walk: its directory's descriptor and its own name there (what it
/// is opened by), its host path and context path (what errors and `.dockerignore`
/// use), and what the walk saw of it.
struct Entry<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
    host: &'a Path,
    rel: &'a str,
    st: &'a Stat,
}

/// Opens a directory of the context (the root, or one `resolve` found).
fn open_dir(path: &Path) -> Result<OwnedFd, ContextError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("read", path)(e.into()))
}

/// The names in a directory, `.` and `..` left out, sorted (by their bytes).
fn list(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<CString>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `path` cleaned as a path inside the root: a leading `/` dropped, `.` and empty
/// components dropped, `..` taking one back; `None` if it climbs above the root. `.`
/// for the root itself.
fn lexical(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// `path` cleaned as a path in the image: as [`lexical`], but `..` at the root stays at
/// the root (`/../etc/` is `/etc/`, as Docker cleans it).
fn clamped(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or("_")),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn components(path: &str) -> VecDeque<OsString> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Path `rel` inside the tree `root` as a chroot resolves it: every symlink on the way
/// (the last one too with `follow_last`) followed inside the root (an absolute target
/// starts again at the root, `..` stops there), at most [`MAX_LINKS`] of them. Links
/// are read, never followed by the host. The components of the result, relative to
/// `root`; a missing one is an error unless `missing_ok` (then it and what follows are
/// taken as they are, as a destination not made yet).
fn resolve_in(
    root: &Path,
    rel: &str,
    follow_last: bool,
    missing_ok: bool,
) -> Result<Vec<OsString>, ContextError> {
    let mut queue: VecDeque<OsString> = components(rel);
    let mut at: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        if part == ".." {
            at.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&at);
        candidate.push(&part);
        let m = match fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                if missing_ok {
                    at.push(part);
                    continue;
                }
                return Err(ContextError::NotFound(rel.to_string()));
            }
            Err(e) => return Err(io_err("read", &candidate)(e)),
        };
        if m.file_type().is_symlink() && (follow_last || !queue.is_empty()) {
            links += 1;
            if links > MAX_LINKS {
                return Err(ContextError::Loop(rel.to_string()));
            }
            let target = fs::read_link(&candidate).map_err(io_err("read", &candidate))?;
            if target.is_absolute() {
                at.clear();
            }
            let mut rest: VecDeque<OsString> = components(&target.to_string_lossy());
            rest.extend(queue);
            queue = rest;
            continue;
        }
        at.push(part);
    }
    Ok(at)
}

/// Absolute `path` in the image whose root filesystem is `rootfs`, as the image resolves
/// it (see [`resolve_in`]; a part not there yet is kept as it is): `/bin/sh` is
/// `/usr/bin/sh` in a merged-/usr image. For a `COPY` destination or a `WORKDIR`.
pub fn resolve_in_image(rootfs: &Path, path: &str) -> Result<String, ContextError> {
    let at = resolve_in(rootfs, path, true, true)?;
    let parts: Vec<String> = at
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    Ok(format!("/{}", parts.join("/")))
}

/// `path` relative to `root` (`.` for the root itself).
fn relative(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(r) if r.as_os_str().is_empty() => ".".into(),
        Ok(r) => r.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        dir
    }

    /// A layer's entries: path -> (kind, mode, uid, content or link target).
    type Layer = BTreeMap<String, (char, u32, u64, String)>;

    fn layer(bytes: &[u8]) -> Layer {
        let mut a = tar::Archive::new(bytes);
        let mut out = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let h = e.header().clone();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                _ => 'f',
            };
            let mut content = String::new();
            if kind == 'l' {
                content = e.link_name().unwrap().unwrap().display().to_string();
            } else {
                io::Read::read_to_string(&mut e, &mut content).unwrap();
            }
            out.insert(
                path.trim_end_matches('/').to_string(),
                (kind, h.mode().unwrap(), h.uid().unwrap(), content),
            );
        }
        out
    }

    fn copy(
        ctx: &Context,
        srcs: &[&str],
        dest: &str,
        opts: &CopyOptions,
        image_dirs: &[&str],
    ) -> Result<Layer, ContextError> {
        let mut sources = Vec::new();
        for s in srcs {
            sources.extend(ctx.sources(s)?);
        }
        let dirs: Vec<String> = image_dirs.iter().map(|d| d.to_string()).collect();
        let image = move |p: &str| dirs.contains(&p.to_string()).then_some(ImageKind::Dir);
        let mut out = Vec::new();
        ctx.copy_layer(&sources, dest, opts, &image, &mut out)?;
        Ok(layer(&out))
    }

    fn opts() -> CopyOptions {
        CopyOptions {
            limit: 1 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn files_directories_and_patterns_land_as_docker_puts_them() {
        let t = tree(&[
            ("a.txt", "A"),
            ("b.txt", "B"),
            ("src/x.rs", "X"),
            ("src/sub/y.rs", "Y"),
        ]);
        let ctx = Context::dir(t.path()).unwrap();
        // One file onto a new path: that file; its missing parents made.
        let l = copy(&ctx, &["a.txt"], "/opt/app/renamed", &opts(), &[]).unwrap();
        assert_eq!(l["opt"].0, 'd');
        assert_eq!(l["opt/app/renamed"].3, "A");
        assert_eq!(l["opt/app/renamed"].2, 0);
        // Into an existing directory of the image, or a dest ending with '/'.
        let l = copy(&ctx, &["a.txt"], "/etc", &opts(), &["etc"]).unwrap();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["etc/a.txt"]);
        let l = copy(&ctx, &["./a.txt", "/b.txt"], "/d/", &opts(), &[]).unwrap();
        assert!(l.contains_key("d/a.txt") && l.contains_key("d/b.txt"));
        // A directory's contents, not the directory.
        let l = copy(&ctx, &["src"], "/app", &opts(), &[]).unwrap();
        assert_eq!(l["app/x.rs"].3, "X");
        assert_eq!(l["app/sub/y.rs"].3, "Y");
        assert!(!l.contains_key("app/src"));
        // Patterns.
        let l = copy(&ctx, &["*.txt"], "/t/", &opts(), &[]).unwrap();
        assert!(l.contains_key("t/a.txt") && l.contains_key("t/b.txt"));
        assert!(matches!(
            copy(&ctx, &["*.txt"], "/t", &opts(), &[]),
            Err(ContextError::SeveralToFile)
        ));
        assert!(matches!(
            ctx.sources("*.none"),
            Err(ContextError::NotFound(_))
        ));
        // --chown and --chmod.
        let o = CopyOptions {
            owner: Some((1000, 1000)),
            mode: Some(0o600),
            ..opts()
        };
        let l = copy(&ctx, &["a.txt"], "/x", &o, &[]).unwrap();
        assert_eq!((l["x"].1, l["x"].2), (0o600, 1000));
    }

    #[test]
    fn dockerignore_leaves_files_out() {
        let t = tree(&[
            (".dockerignore", "secret*\nbuild\n!build/keep\n"),
            ("secret.key", "S"),
            ("app.py", "P"),
            ("build/out.o", "O"),
            ("build/keep", "K"),
        ]);
        let ctx = Context::dir(t.path()).unwrap();
        assert!(matches!(
            ctx.sources("secret.key"),
            Err(ContextError::NotFound(_))
        ));
        let l = copy(&ctx, &["."], "/w", &opts(), &[]).unwrap();
        let names: Vec<&String> = l.keys().collect();
        assert!(names.contains(&&"w/app.py".to_string()), "{names:?}");
        assert!(names.contains(&&"w/build/keep".to_string()), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.contains("secret") || n.contains("out.o")),
            "{names:?}"
        );
    }

    /// What a hostile context tries: `COPY ../x`, a symlink to a host file, a symlink
    /// loop, a huge file; and a Dockerfile on stdin has nothing to copy from.
    #[test]
    fn hostile_contexts_are_kept_inside_or_refused() {
        let t = tree(&[("inside.txt", "I"), ("etc/passwd", "fake")]);
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("hostlink")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/shadow", t.path().join("climb")).unwrap();
        std::os::unix::fs::symlink("loop2", t.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", t.path().join("loop2")).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("rootlink")).unwrap();
        let ctx = Context::dir(t.path()).unwrap();
        assert!(matches!(ctx.sources("../x"), Err(ContextError::Outside(_))));
        assert!(matches!(
            ctx.sources("a/../../x"),
            Err(ContextError::Outside(_))
        ));
        // An absolute symlink resolves in the context: the context's etc/passwd.
        let l = copy(&ctx, &["hostlink"], "/p", &opts(), &[]).unwrap();
        assert_eq!(l["p"].3, "fake");
        assert!(matches!(
            ctx.sources("climb"),
            Err(ContextError::NotFound(_))
        ));
        assert!(matches!(ctx.sources("loop1"), Err(ContextError::Loop(_))));
        // Through a symlink to "/": still the context.
        let l = copy(&ctx, &["rootlink/inside.txt"], "/i", &opts(), &[]).unwrap();
        assert_eq!(l["i"].3, "I");
        // Inside a copied directory, symlinks stay symlinks (never read through).
        let l = copy(&ctx, &["."], "/all", &opts(), &[]).unwrap();
        assert_eq!(l["all/hostlink"], ('l', 0o777, 0, "/etc/passwd".into()));
        let big = CopyOptions { limit: 3, ..opts() };
        assert!(matches!(
            copy(&ctx, &["etc/passwd"], "/x", &big, &[]),
            Err(ContextError::TooLarge(_))
        ));
        // A name that is not UTF-8 beside a symlink named as it shows: each is read by
        // its own bytes, never the secret through the other's name.
        let secret = tempfile::tempdir().unwrap();
        fs::write(secret.path().join("shadow"), "SECRET").unwrap();
        let odd = tree(&[]);
        fs::write(odd.path().join(OsStr::from_bytes(b"\xff")), "harmless").unwrap();
        std::os::unix::fs::symlink(secret.path().join("shadow"), odd.path().join("\u{FFFD}"))
            .unwrap();
        let octx = Context::dir(odd.path()).unwrap();
        let mut out = Vec::new();
        let sources = octx.sources(".").unwrap();
        octx.copy_layer(&sources, "/o", &opts(), &|_| None, &mut out)
            .unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("SECRET"));
        assert!(String::from_utf8_lossy(&out).contains("harmless"));
        // `..` in a destination stays at the image's root, as Docker cleans it.
        let l = copy(&ctx, &["inside.txt"], "/../etc/", &opts(), &[]).unwrap();
        assert!(l.contains_key("etc/inside.txt"), "{:?}", l.keys());
        let none = Context::empty();
        assert!(
            none.sources("x")
                .unwrap_err()
                .to_string()
                .contains("no build context")
        );
    }
}
