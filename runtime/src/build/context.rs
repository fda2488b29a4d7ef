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
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

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
    /// A symlink loop.
    #[error("too many levels of symbolic links in {0}")]
    Loop(String),
    /// The context has no such thing (a Dockerfile on stdin has no context).
    #[error("{0}")]
    NoContext(String),
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
        let path = root.join(".dockerignore");
        let ignore = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                if m.len() > MAX_IGNORE_FILE as u64 {
                    return Err(IgnoreError::TooLarge.into());
                }
                let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
                Ignore::parse(&text)?
            }
            _ => Ignore::default(),
        };
        Ok(Context {
            root: Some(root),
            ignore,
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
        self.walk(root, "", &mut |path, _| {
            if glob.matches(path) {
                found.push(path.to_string());
            }
        })?;
        found.sort();
        if found.is_empty() {
            return Err(ContextError::NotFound(src.to_string()));
        }
        Ok(found)
    }

    /// Every path under `dir` (context-relative `prefix`), not following symlinks,
    /// excluded ones left out (their subtrees too, unless an exception may bring some
    /// back).
    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        each: &mut dyn FnMut(&str, &fs::Metadata),
    ) -> Result<(), ContextError> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(io_err("read", dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("read", dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = if prefix.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{prefix}/{}", name.to_string_lossy())
            };
            let m = fs::symlink_metadata(&path).map_err(io_err("read", &path))?;
            let excluded = self.excluded(&rel);
            if !excluded {
                each(&rel, &m);
            }
            if m.is_dir() && (!excluded || self.ignore.has_exceptions()) {
                self.walk(&path, &rel, each)?;
            }
        }
        Ok(())
    }

    /// The host path of context path `rel`, symlinks on the way followed inside the
    /// root (the last one too with `follow_last`).
    fn resolve(&self, rel: &str, follow_last: bool) -> Result<PathBuf, ContextError> {
        let root = self.root(rel)?;
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
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ContextError::NotFound(rel.to_string()));
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
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
        let mut out = root.to_path_buf();
        out.extend(&at);
        Ok(out)
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
        let dest_clean = lexical(dest).unwrap_or_default();
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
            let m = fs::metadata(&real).map_err(io_err("read", &real))?;
            let real_rel = relative(&root, &real);
            if m.is_dir() {
                if !dest_is_dir && image(&dest_clean) == Some(ImageKind::Other) {
                    return Err(ContextError::DirectoryToFile(src.clone(), dest.to_string()));
                }
                w.parents(&dest_clean, true, image)?;
                self.copy_dir(&mut w, &real, &real_rel, &dest_clean)?;
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
                w.entry(&real, &m, &target)?;
            }
        }
        w.tar
            .finish()
            .map_err(io_err("write the layer of", Path::new(dest)))?;
        Ok(w.written)
    }

    fn copy_dir(
        &self,
        w: &mut Writer<'_, impl Write>,
        dir: &Path,
        rel: &str,
        dest: &str,
    ) -> Result<(), ContextError> {
        let prefix = if rel == "." { "" } else { rel };
        let mut failed = None;
        self.walk(dir, prefix, &mut |path, m| {
            if failed.is_some() {
                return;
            }
            let inner = if prefix.is_empty() {
                path
            } else {
                &path[prefix.len() + 1..]
            };
            let host = dir.join(inner);
            if let Err(e) = w.entry(&host, m, &join(dest, inner)) {
                failed = Some(e);
            }
        })?;
        failed.map_or(Ok(()), Err)
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

    /// One entry: `host` (described by `m`, not followed) as `name` in the image.
    fn entry(&mut self, host: &Path, m: &fs::Metadata, name: &str) -> Result<(), ContextError> {
        let t = m.file_type();
        let (uid, gid) = self.opts.owner.unwrap_or((0, 0));
        let mut h = tar::Header::new_gnu();
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(u64::try_from(m.mtime()).unwrap_or(0));
        h.set_mode(self.opts.mode.unwrap_or(m.mode() & 0o7777));
        let err = io_err("write the layer entry", host);
        if t.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            self.dirs_made.push(name.to_string());
            self.tar
                .append_data(&mut h, format!("{name}/"), io::empty())
                .map_err(err)
        } else if t.is_symlink() {
            let target = fs::read_link(host).map_err(io_err("read", host))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            self.tar.append_link(&mut h, name, &target).map_err(err)
        } else if t.is_file() {
            self.written.bytes += m.len();
            if self.written.bytes > self.opts.limit {
                return Err(ContextError::TooLarge(crate::image::store::show_size(
                    self.opts.limit,
                )));
            }
            let file = fs::File::open(host).map_err(io_err("read", host))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            // A file that grows while it is read is cut at the size recorded.
            use std::io::Read;
            self.tar
                .append_data(&mut h, name, file.take(m.len()))
                .map_err(err)
        } else {
            let what = if t.is_socket() {
                "a socket"
            } else if t.is_fifo() {
                "a FIFO"
            } else {
                "a device node"
            };
            self.written.skipped.push(format!("{name} ({what})"));
            Ok(())
        }
    }
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
        let none = Context::empty();
        assert!(
            none.sources("x")
                .unwrap_err()
                .to_string()
                .contains("no build context")
        );
    }
}
