//! `arca cp CTR:SRC DEST|-` and `arca cp SRC|- CTR:DEST`: copies between a running
//! container and the host, with Docker's syntax and path rules.
//!
//! The container's side is the agent's builtins ([`Builtin`]), run through an exec like
//! any process and confined exactly as one: `stat`, `tar_out` (a tar of a path on its
//! stdout) and `tar_in` (a tar on its stdin extracted into a directory). Paths inside
//! the container therefore resolve in its own root, whatever its symlinks say.
//!
//! The host's side is a tar stream: built here without following symlinks, or
//! extracted here from the container, which is hostile: every entry is rebased under
//! the destination, `..` is refused, nothing is created or replaced through a symlink
//! (each parent is checked with `lstat`, as [`crate::image::unpack`] does), an existing
//! directory is never replaced by a non-directory, files get the caller's ownership,
//! set-id bits are dropped, device nodes and hard links are skipped.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use arca_agent_client::{AgentClient, StdioConnection};
use arca_protocol::{Builtin, ProcessSpec, StdioStream};
use tar::EntryType;

use crate::RunError;
use crate::container::pids::wait_gone;
use crate::container::{ContainerRecord, RunOptions, Status, find};
use crate::image::store::Store;
use crate::image::unpack::{UnpackError, clean, parents, remove_existing};
use crate::sandbox::Sandbox;

/// Errors of `arca cp`; all exit 1, as Docker's.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// The source (or the destination's directory) is not in the container.
    #[error("Could not find the file {path} in container {container}")]
    NotFound {
        /// The path in the container.
        path: String,
        /// The container's name.
        container: String,
    },
    /// A directory source and an existing file destination.
    #[error("Cannot copy a directory to a file: {0}")]
    DirectoryToFile(String),
    /// A file source and `DEST/` that does not exist.
    #[error("The destination directory must exist: {0}")]
    DestinationDirectory(String),
    /// `-` (a tar stream) copied to something other than a directory.
    #[error("The destination {0} must be a directory")]
    NotDirectory(String),
    /// Both operands name containers.
    #[error("Copying between containers is not supported")]
    BetweenContainers,
    /// Neither operand names a container.
    #[error("Must specify at least one container source (CONTAINER:PATH)")]
    NoContainer,
    /// The container is between states.
    #[error("Container {0} is starting or restarting: try again once it runs or has stopped")]
    Busy(String),
    /// A file operation on the host failed.
    #[error("Cannot {action} {path}")]
    Local {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The container's side failed.
    #[error("Cannot copy {path} in container {container}: {reason}")]
    Container {
        /// The path in the container.
        path: String,
        /// The container's name.
        container: String,
        /// Its stderr, or how it ended.
        reason: String,
    },
    /// The archive from the container is not a valid tar stream.
    #[error("Invalid archive from the container")]
    Archive(#[source] io::Error),
    /// An entry of the container's archive is not under the copied path.
    #[error("Archive entry {0:?} is outside the copied path")]
    Outside(String),
    /// An entry would replace a directory on the host with a non-directory.
    #[error("Cannot overwrite directory {0} with a non-directory")]
    OverwriteDirectory(PathBuf),
    /// Extracting an entry was refused or failed.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// Finding or talking to the container failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

fn local<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CpError + 'a {
    move |source| CpError::Local {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One operand of `arca cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A host path, or `-` for a tar stream on stdin or stdout.
    Local(String),
    /// `CONTAINER:PATH`.
    Container {
        /// Container name.
        name: String,
        /// Path inside, absolute (a relative one is taken from `/`, as Docker does).
        path: String,
    },
}

impl Operand {
    /// Docker's split: an absolute path, a path starting with `.`, or one without `:`
    /// is local; otherwise `CONTAINER:PATH` at the first `:`.
    pub fn parse(arg: &str) -> Self {
        if arg.starts_with('/') {
            return Operand::Local(arg.into());
        }
        match arg.split_once(':') {
            Some((name, path)) if !name.is_empty() && !name.starts_with('.') => {
                let path = if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                };
                Operand::Container {
                    name: name.into(),
                    path,
                }
            }
            _ => Operand::Local(arg.into()),
        }
    }
}

/// `SRC/.` (or `.`): the directory's contents rather than the directory.
pub fn contents_only(path: &str) -> bool {
    path == "." || path.ends_with("/.")
}

/// The last name of `path` (lexically, `.` and trailing slashes dropped) and its
/// directory; `None` for a path without one (`/`, `..`).
pub fn split_last(path: &str) -> Option<(String, OsString)> {
    let p = Path::new(path);
    let name = p.file_name()?.to_os_string();
    let parent = p
        .parent()
        .map_or(String::new(), |d| d.display().to_string());
    let parent = match parent.as_str() {
        "" if path.starts_with('/') => "/".to_string(),
        "" => ".".to_string(),
        _ => parent,
    };
    Some((parent, name))
}

/// What the container's `stat` builtin reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink (not followed).
    Symlink,
    /// Anything else.
    Other,
}

#[derive(Debug, serde::Deserialize)]
struct Stat {
    kind: Kind,
    #[serde(default)]
    size: u64,
    /// What a symlink points to.
    #[serde(default)]
    target: Option<String>,
}

/// `arca cp`'s options (Docker's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpOptions {
    /// `-a`: what is copied into the container keeps its uid and gid.
    pub archive: bool,
    /// `-L`: a symlink named as the source is followed (its target is copied, under the
    /// link's name).
    pub follow_link: bool,
    /// `-q`, or no terminal on stdout: no summary on stderr.
    pub quiet: bool,
}

/// Symlinks followed in a row before `-L` gives up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Counts the bytes that pass through.
struct Counting<T> {
    inner: T,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Docker's line after a copy (on stderr, unless quiet): the content's size, and the
/// archive's when it differs, in powers of 1000 to 3 significant digits.
pub fn summary(content: u64, transferred: u64, dest: &str) -> String {
    let size = |n| crate::human_size_digits(n, 3);
    if content == transferred {
        format!("Successfully copied {} to {dest}", size(content))
    } else {
        format!(
            "Successfully copied {} (transferred {}) to {dest}",
            size(content),
            size(transferred)
        )
    }
}

/// The size of the regular files at `path` (the file's own, or all under a directory;
/// symlinks not followed), as Docker reports what it copied in.
fn content_size(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    if m.is_file() {
        return m.len();
    }
    if !m.is_dir() {
        return 0;
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| content_size(&e.path()))
        .sum()
}

/// A container's agent, for builtins: a running container's own, or one brought up
/// for the copy ([`Held`]) when it is stopped.
struct Target<'a> {
    name: String,
    id: String,
    client: AgentClient,
    // After `client`: its teardown ends the sandbox the client speaks to.
    _held: Option<Held<'a>>,
}

/// A stopped (created or exited) container brought up in a sandbox of its own for the
/// copy, as Docker copies from and to stopped containers: the same image, writable
/// layer and mounts, no network, and as its main process the agent's `hold` (none of
/// the container's commands runs). The container's lifecycle lock is held meanwhile,
/// so a `start` waits; its record keeps its state, only the sandbox's pid is noted, so
/// that the next copy, `start` or `rm` ends a sandbox a killed `arca cp` left behind
/// (two sandboxes must never share the container's disk). Dropping it tears it down.
struct Held<'a> {
    sandbox: Option<Sandbox<'a>>,
    stdin: Option<StdioConnection>,
    id: String,
    _lock: fs::File,
}

impl<'a> Held<'a> {
    fn start(state: &'a Path, dir: &Path) -> Result<(Self, AgentClient), CpError> {
        let lock = crate::state::lock_file(
            &dir.join("lifecycle.lock"),
            rustix::fs::FlockOperation::LockExclusive,
        )
        .map_err(|(what, source)| {
            CpError::Run(RunError::Io {
                action: format!("{what} the container's lifecycle lock"),
                source,
            })
        })?;
        let rec = ContainerRecord::observe(dir).map_err(RunError::from)?;
        if !matches!(rec.status, Status::Created | Status::Exited) {
            return Err(CpError::Busy(rec.name.clone()));
        }
        // A container that just exited may still have its monitor tearing its sandbox
        // down (a microVM's jail cgroup is per container): that ends first.
        if !wait_gone(
            rec.monitor_pid,
            rec.monitor_start,
            std::time::Duration::from_secs(30),
        ) {
            return Err(CpError::Busy(rec.name.clone()));
        }
        let store = Store::open(state).map_err(RunError::from)?;
        let image = store.resolve(&rec.image_id).map_err(RunError::from)?;
        let mut opts = RunOptions::load(dir)?;
        opts.network = Some("none".into());
        opts.publish.clear();
        let id = rec.key().to_string();
        rec.end_stale_sandbox();
        crate::sandbox::clear_sockets(dir);
        let mut sandbox = Sandbox::launch(state, &store, &image, &opts, &rec.mounts, dir, &id)
            .map_err(CpError::Run)?;
        let (pid, started) = sandbox.pid();
        let mut noted = rec.clone();
        (noted.sandbox_pid, noted.sandbox_start) = (Some(pid), started);
        noted.save(dir).map_err(RunError::from)?;
        let mut client = sandbox.connect().map_err(CpError::Run)?;
        let hold = ProcessSpec {
            builtin: Some(Builtin::Hold),
            stdin: true,
            ..Default::default()
        };
        let spec = sandbox.container_spec(dir, &id, &image, &opts, hold);
        client.create(spec).map_err(RunError::from)?;
        let stdin = sandbox
            .address()
            .attach(&id, None, StdioStream::Stdin)
            .map_err(|e| CpError::Run(e.into()))?;
        client.start(&id).map_err(RunError::from)?;
        Ok((
            Held {
                sandbox: Some(sandbox),
                stdin: Some(stdin),
                id,
                _lock: lock,
            },
            client,
        ))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Its stdin closed, `hold` ends; the container goes, then the sandbox.
        drop(self.stdin.take());
        if let Some(mut sandbox) = self.sandbox.take()
            && let Ok(mut client) = sandbox.connect()
        {
            sandbox.abort(&mut client, &self.id);
        }
    }
}

static EXEC_SEQ: AtomicU32 = AtomicU32::new(0);

/// A started builtin: its streams.
struct Running {
    exec_id: String,
    stdout: StdioConnection,
    stderr: std::thread::JoinHandle<Vec<u8>>,
    stdin: Option<StdioConnection>,
}

impl<'a> Target<'a> {
    fn open(state: &'a Path, name: &str) -> Result<Self, CpError> {
        let (dir, rec) = find(state, name).map_err(RunError::from)?;
        let (client, held) = match rec.status {
            Status::Running => (rec.client().map_err(RunError::from)?, None),
            Status::Created | Status::Exited => {
                let (held, client) = Held::start(state, &dir)?;
                (client, Some(held))
            }
            // Starting or restarting: it runs in a moment, or its monitor has it.
            _ => return Err(CpError::Busy(name.into())),
        };
        Ok(Target {
            name: name.into(),
            id: rec.key().to_string(),
            client,
            _held: held,
        })
    }

    fn start(&mut self, builtin: Builtin) -> Result<Running, CpError> {
        let stdin = matches!(builtin, Builtin::TarIn { .. });
        let exec_id = format!(
            "cp-{}-{}",
            std::process::id(),
            EXEC_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let process = ProcessSpec {
            builtin: Some(builtin),
            stdin,
            ..Default::default()
        };
        self.client
            .exec(&self.id, &exec_id, process)
            .map_err(RunError::from)?;
        let address = self.client.address().clone();
        let attach = |s| {
            address
                .attach(&self.id, Some(&exec_id), s)
                .map_err(|e| CpError::Run(e.into()))
        };
        let stdout = attach(StdioStream::Stdout)?;
        let stderr = attach(StdioStream::Stderr)?;
        let stdin = stdin.then(|| attach(StdioStream::Stdin)).transpose()?;
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.take(64 << 10).read_to_end(&mut buf);
            buf
        });
        Ok(Running {
            exec_id,
            stdout,
            stderr,
            stdin,
        })
    }

    /// Waits for the builtin; `Ok` when it exited 0, else the reason (its stderr).
    fn finish(&mut self, r: Running, path: &str) -> Result<(), CpError> {
        let Running {
            exec_id,
            stdout,
            stderr,
            stdin,
        } = r;
        drop(stdin);
        let status = self.client.wait(&self.id, Some(&exec_id));
        drop(stdout);
        let err = stderr.join().unwrap_or_default();
        let status = status.map_err(RunError::from)?;
        if status.code == 0 {
            return Ok(());
        }
        let reason = String::from_utf8_lossy(&err).trim().to_string();
        if reason == "not found" {
            return Err(CpError::NotFound {
                path: path.into(),
                container: self.name.clone(),
            });
        }
        Err(CpError::Container {
            path: path.into(),
            container: self.name.clone(),
            reason: if reason.is_empty() {
                format!("exit code {}", status.code)
            } else {
                reason
            },
        })
    }

    fn stat(&mut self, path: &str) -> Result<Kind, CpError> {
        Ok(self.stat_full(path)?.kind)
    }

    fn stat_full(&mut self, path: &str) -> Result<Stat, CpError> {
        let mut r = self.start(Builtin::Stat { path: path.into() })?;
        let mut out = Vec::new();
        let _ = (&mut r.stdout).take(8192).read_to_end(&mut out);
        self.finish(r, path)?;
        serde_json::from_slice(&out).map_err(|e| CpError::Container {
            path: path.into(),
            container: self.name.clone(),
            reason: format!("bad stat reply: {e}"),
        })
    }

    /// `-L`: the path a symlink at `path` leads to in the container (each link's target
    /// taken in the container, relative ones from the link's directory), and what is
    /// there; `path` itself when it is no symlink.
    fn follow(&mut self, path: &str) -> Result<(String, Stat), CpError> {
        let mut at = path.to_string();
        for _ in 0..MAX_LINKS {
            let st = self.stat_full(&at)?;
            if st.kind != Kind::Symlink {
                return Ok((at, st));
            }
            let Some(target) = st.target.clone() else {
                return Err(CpError::Container {
                    path: at,
                    container: self.name.clone(),
                    reason: "its agent does not say where symlinks point (update the guest)".into(),
                });
            };
            at = if target.starts_with('/') {
                target
            } else {
                let parent = split_last(&at).map_or_else(|| "/".to_string(), |(p, _)| p);
                format!("{}/{target}", parent.trim_end_matches('/'))
            };
        }
        Err(CpError::Container {
            path: path.into(),
            container: self.name.clone(),
            reason: format!("more than {MAX_LINKS} symlinks in a row"),
        })
    }

    /// The kind of `path`, a symlink resolved in the container when it leads to a
    /// directory (as Docker resolves a destination); `None` when missing.
    fn stat_dest(&mut self, path: &str) -> Result<Option<Kind>, CpError> {
        match self.stat(path) {
            Ok(Kind::Symlink) => match self.stat(&format!("{}/", path.trim_end_matches('/'))) {
                Ok(Kind::Dir) => Ok(Some(Kind::Dir)),
                _ => Ok(Some(Kind::Symlink)),
            },
            Ok(k) => Ok(Some(k)),
            Err(CpError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `arca diff CONTAINER`: what changed in its root filesystem against its image, sorted
/// by path (a stopped container is brought up for it, as for a copy). Paths come from
/// the sandbox: control characters are shown escaped.
pub fn diff(state: &Path, name: &str) -> Result<Vec<arca_protocol::Change>, CpError> {
    let mut t = Target::open(state, name)?;
    let id = t.id.clone();
    let mut changes = t.client.changes(&id).map_err(RunError::from)?;
    for c in &mut changes {
        if c.path.chars().any(char::is_control) {
            c.path = c.path.escape_default().to_string();
        }
    }
    Ok(changes)
}

/// Runs `arca cp [OPTIONS] SRC DEST`.
pub fn cp(state: &Path, src: &str, dest: &str, opts: CpOptions) -> Result<(), CpError> {
    match (Operand::parse(src), Operand::parse(dest)) {
        (Operand::Container { .. }, Operand::Container { .. }) => Err(CpError::BetweenContainers),
        (Operand::Local(_), Operand::Local(_)) => Err(CpError::NoContainer),
        (Operand::Container { name, path }, Operand::Local(dest)) => {
            copy_out(state, &name, &path, &dest, opts)
        }
        (Operand::Local(src), Operand::Container { name, path }) => {
            copy_in(state, &src, &name, &path, opts)
        }
    }
}

/// Where a tar from the container goes: a directory on the host and what its top
/// entry becomes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Top {
    /// `root/NAME`.
    Rename(OsString),
    /// `root` itself: the top directory's contents are merged into it.
    Merge,
}

fn copy_out(
    state: &Path,
    name: &str,
    src: &str,
    dest: &str,
    opts: CpOptions,
) -> Result<(), CpError> {
    let mut t = Target::open(state, name)?;
    let not_found = |e| match e {
        CpError::NotFound { .. } => CpError::NotFound {
            path: src.into(),
            container: name.into(),
        },
        e => e,
    };
    // `-L` copies what a symlink leads to, under the symlink's name (the top entry is
    // renamed below); a path ending in `/` or `/.` is followed anyway.
    let (from, st) = if opts.follow_link && !src.ends_with('/') && !contents_only(src) {
        t.follow(src).map_err(not_found)?
    } else {
        (src.to_string(), t.stat_full(src).map_err(not_found)?)
    };
    let kind = st.kind;
    if dest == "-" {
        let mut r = t.start(Builtin::TarOut { path: from })?;
        let copied = io::copy(&mut r.stdout, &mut io::stdout().lock());
        t.finish(r, src)?;
        copied.map_err(local("write", Path::new("stdout")))?;
        return Ok(());
    }
    let src_dir = kind == Kind::Dir;
    let src_name = split_last(src).map(|(_, n)| n);
    let dest_path = Path::new(dest);
    let (root, top) = match fs::metadata(dest_path) {
        Ok(m) if m.is_dir() => {
            if src_dir && contents_only(src) {
                (dest_path.to_path_buf(), Top::Merge)
            } else {
                (
                    dest_path.to_path_buf(),
                    Top::Rename(src_name.unwrap_or_else(|| "root".into())),
                )
            }
        }
        Ok(_) if src_dir => return Err(CpError::DirectoryToFile(dest.into())),
        Ok(_) => match split_last(dest) {
            Some((parent, n)) => (PathBuf::from(parent), Top::Rename(n)),
            None => return Err(CpError::DirectoryToFile(dest.into())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dest.ends_with('/') && !src_dir {
                return Err(CpError::DestinationDirectory(dest.into()));
            }
            let Some((parent, n)) = split_last(dest) else {
                return Err(CpError::DestinationDirectory(dest.into()));
            };
            match fs::metadata(&parent) {
                Ok(m) if m.is_dir() => {}
                _ => return Err(CpError::DestinationDirectory(parent)),
            }
            (PathBuf::from(parent), Top::Rename(n))
        }
        Err(e) => return Err(local("inspect", dest_path)(e)),
    };
    let mut r = t.start(Builtin::TarOut { path: from })?;
    let mut counted = Counting {
        inner: &mut r.stdout,
        bytes: 0,
    };
    let extracted = extract(&mut counted, &root, &top);
    let transferred = counted.bytes;
    // A failed extraction hangs up, which ends the builtin (SIGPIPE).
    let finished = t.finish(r, src);
    match extracted {
        Err(e) => Err(e),
        Ok(warnings) => {
            finished?;
            for w in warnings {
                eprintln!("arca: {w}");
            }
            if !opts.quiet {
                let content = if src_dir { transferred } else { st.size };
                eprintln!("{}", summary(content, transferred, &shown_local(dest)));
            }
            Ok(())
        }
    }
}

/// A host path as Docker's summary shows it: absolute, a trailing `/` or `/.` kept.
fn shown_local(path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    match std::env::current_dir() {
        Ok(cwd) => {
            let joined = cwd.join(path).display().to_string();
            match path {
                "." => format!("{}/.", cwd.display()),
                _ => joined,
            }
        }
        Err(_) => path.to_string(),
    }
}

/// Extracts a tar stream from a (hostile) container under `root` (an existing
/// directory), its top entry placed as `top` says; returns what was skipped.
pub fn extract(reader: impl Read, root: &Path, top: &Top) -> Result<Vec<String>, CpError> {
    let mut archive = tar::Archive::new(reader);
    let mut top_name: Option<OsString> = None;
    let mut dirs: Vec<(PathBuf, u32, Option<u64>)> = Vec::new();
    let mut skipped = Vec::new();
    for entry in archive.entries().map_err(CpError::Archive)? {
        let mut entry = entry.map_err(CpError::Archive)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let raw = entry.path().map_err(CpError::Archive)?.into_owned();
        let shown = raw.display().to_string();
        let Some(rel) = clean(&raw)? else {
            return Err(CpError::Outside(shown));
        };
        let mut comps = rel.components();
        let Some(Component::Normal(first)) = comps.next() else {
            return Err(CpError::Outside(shown));
        };
        let rest = comps.as_path().to_path_buf();
        match &top_name {
            None => top_name = Some(first.to_os_string()),
            Some(t) if t.as_os_str() != first => return Err(CpError::Outside(shown)),
            Some(_) => {}
        }
        // (`join` of an empty path would add a trailing slash.)
        let target = match top {
            Top::Rename(n) if rest.as_os_str().is_empty() => PathBuf::from(n),
            Top::Rename(n) => Path::new(n).join(&rest),
            Top::Merge => rest,
        };
        if target.as_os_str().is_empty() {
            // The merged-into directory itself: left as it is.
            if kind != EntryType::Directory {
                return Err(CpError::DirectoryToFile(root.display().to_string()));
            }
            continue;
        }
        let Some(full) = parents(root, &target, &shown, true)? else {
            return Err(CpError::Outside(shown));
        };
        let existing = fs::symlink_metadata(&full).ok();
        let existing_dir = existing.as_ref().is_some_and(|m| m.is_dir());
        let mode = entry.header().mode().unwrap_or(0o644) & 0o1777;
        let mtime = entry.header().mtime().ok();
        match kind {
            EntryType::Directory => {
                if !existing_dir {
                    remove_existing(&full)?;
                    fs::create_dir(&full).map_err(local("create directory", &full))?;
                }
                dirs.push((full, mode, mtime));
                continue;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::Symlink if existing_dir => {
                return Err(CpError::OverwriteDirectory(full));
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_existing(&full)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&full)
                    .map_err(local("create", &full))?;
                io::copy(&mut entry, &mut out).map_err(CpError::Archive)?;
                drop(out);
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                    .map_err(local("set the mode of", &full))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(CpError::Archive)?
                    .ok_or_else(|| CpError::Outside(shown.clone()))?
                    .into_owned();
                remove_existing(&full)?;
                // Written as it is; it is never followed here.
                std::os::unix::fs::symlink(&link, &full).map_err(local("create symlink", &full))?;
            }
            other => {
                skipped.push(format!("Skipped {shown}: {other:?} entries are not copied"));
                continue;
            }
        }
        set_mtime(&full, mtime);
    }
    if top_name.is_none() {
        return Err(CpError::Archive(io::Error::other("empty archive")));
    }
    // Directory modes last, deepest first: a read-only directory is filled before.
    for (d, mode, mtime) in dirs.into_iter().rev() {
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))
            .map_err(local("set the mode of", &d))?;
        set_mtime(&d, mtime);
    }
    Ok(skipped)
}

fn set_mtime(path: &Path, mtime: Option<u64>) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    let Some(secs) = mtime else { return };
    let t = Timespec {
        tv_sec: i64::try_from(secs).unwrap_or(0),
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    let _ = rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW);
}

/// What goes into the container, and under which names.
enum Source<'a> {
    /// A tar stream from stdin, as it is.
    Stream,
    /// `path` as the top entry `name`.
    Named(&'a Path, OsString),
    /// The entries of directory `path` at the top.
    Contents(&'a Path),
}

fn copy_in(
    state: &Path,
    src: &str,
    name: &str,
    dest: &str,
    opts: CpOptions,
) -> Result<(), CpError> {
    let not_found = |path: &str| CpError::NotFound {
        path: path.into(),
        container: name.into(),
    };
    // `-L`: a symlink named as the source is copied as what it leads to, under its own
    // name.
    let followed = if opts.follow_link && src != "-" {
        let p = Path::new(src);
        match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                Some(fs::canonicalize(p).map_err(local("follow the symlink", p))?)
            }
            _ => None,
        }
    } else {
        None
    };
    let (src_dir, contents) = if src == "-" {
        (false, false)
    } else {
        let p = Path::new(src);
        let follow = src.ends_with('/') || contents_only(src) || followed.is_some();
        let m = if follow {
            fs::metadata(p)
        } else {
            fs::symlink_metadata(p)
        }
        .map_err(local("read", p))?;
        (m.is_dir(), m.is_dir() && contents_only(src))
    };
    let mut t = Target::open(state, name)?;
    let dest_kind = t.stat_dest(dest)?;
    let (dir, source) = if src == "-" {
        match dest_kind {
            Some(Kind::Dir) => (dest.to_string(), Source::Stream),
            Some(_) => return Err(CpError::NotDirectory(dest.into())),
            None => return Err(not_found(dest)),
        }
    } else {
        let src_path = followed.as_deref().unwrap_or(Path::new(src));
        let src_name = || {
            split_last(src)
                .map(|(_, n)| n)
                .filter(|n| n != "..")
                .or_else(|| {
                    fs::canonicalize(src)
                        .ok()
                        .and_then(|c| c.file_name().map(OsStr::to_os_string))
                })
                .unwrap_or_else(|| "root".into())
        };
        match dest_kind {
            Some(Kind::Dir) if contents => (dest.to_string(), Source::Contents(src_path)),
            Some(Kind::Dir) => (dest.to_string(), Source::Named(src_path, src_name())),
            Some(_) if src_dir => return Err(CpError::DirectoryToFile(format!("{name}:{dest}"))),
            Some(_) => {
                let (parent, n) = split_last(dest)
                    .ok_or_else(|| CpError::DirectoryToFile(format!("{name}:{dest}")))?;
                (parent, Source::Named(src_path, n))
            }
            None => {
                if dest.ends_with('/') && !src_dir {
                    return Err(CpError::DestinationDirectory(format!("{name}:{dest}")));
                }
                let (parent, n) = split_last(dest).ok_or_else(|| not_found(dest))?;
                if t.stat_dest(&parent)? != Some(Kind::Dir) {
                    return Err(not_found(&parent));
                }
                (parent, Source::Named(src_path, n))
            }
        }
    };
    let content = match &source {
        Source::Named(path, _) | Source::Contents(path) => Some(content_size(path)),
        Source::Stream => None,
    };
    let mut r = t.start(Builtin::TarIn {
        dir: dir.clone(),
        keep_owners: opts.archive,
    })?;
    let sent = match r.stdin.as_mut() {
        Some(input) => send(input, &source),
        None => Ok(0),
    };
    if let Some(input) = &r.stdin {
        let _ = input.close_input();
    }
    let finished = t.finish(r, &dir);
    // The builtin's own reason first (a broken pipe is its consequence).
    finished?;
    let transferred = sent?;
    if let (false, Some(content)) = (opts.quiet, content) {
        eprintln!(
            "{}",
            summary(content, transferred, &format!("{name}:{dest}"))
        );
    }
    Ok(())
}

/// Writes the tar of `source` to the builtin's stdin; the bytes sent.
fn send(input: &mut StdioConnection, source: &Source<'_>) -> Result<u64, CpError> {
    let stdin_path = Path::new("stdin");
    let mut counted = Counting {
        inner: input,
        bytes: 0,
    };
    let mut out = io::BufWriter::with_capacity(64 << 10, &mut counted);
    match source {
        Source::Stream => {
            io::copy(&mut io::stdin().lock(), &mut out).map_err(local("copy", stdin_path))?;
        }
        Source::Named(path, name) => {
            let mut b = tar::Builder::new(&mut out);
            b.follow_symlinks(false);
            append(&mut b, path, Path::new(name))?;
            b.finish().map_err(local("send", path))?;
        }
        Source::Contents(path) => {
            let mut b = tar::Builder::new(&mut out);
            b.follow_symlinks(false);
            for c in sorted_children(path)? {
                append(&mut b, &path.join(&c), Path::new(&c))?;
            }
            b.finish().map_err(local("send", path))?;
        }
    }
    out.flush().map_err(local("send", stdin_path))?;
    drop(out);
    Ok(counted.bytes)
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>, CpError> {
    let mut children: Vec<OsString> = fs::read_dir(dir)
        .map_err(local("read", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(local("read", dir))?;
    children.sort();
    Ok(children)
}

/// Appends `path` as `name`, recursively, symlinks as symlinks, sockets left out.
fn append<W: Write>(b: &mut tar::Builder<W>, path: &Path, name: &Path) -> Result<(), CpError> {
    b.follow_symlinks(false);
    let m = fs::symlink_metadata(path).map_err(local("read", path))?;
    let t = m.file_type();
    if t.is_socket() {
        return Ok(());
    }
    if t.is_symlink()
        && let Some(mut header) = short_symlink(&m, path)
    {
        return b
            .append_data(&mut header, name, io::empty())
            .map_err(local("archive", path));
    }
    if !t.is_dir() {
        return b
            .append_path_with_name(path, name)
            .map_err(local("archive", path));
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
    header.set_entry_type(EntryType::Directory);
    b.append_data(&mut header, name, io::empty())
        .map_err(local("archive", path))?;
    for c in sorted_children(path)? {
        append(b, &path.join(&c), &name.join(&c))?;
    }
    Ok(())
}

/// The header of a symlink whose target fits the header, written as it is (the tar
/// builder's own path handling turns a target of `/` into `//`).
fn short_symlink(m: &fs::Metadata, path: &Path) -> Option<tar::Header> {
    use std::os::unix::ffi::OsStrExt;
    let target = fs::read_link(path).ok()?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(m, tar::HeaderMode::Complete);
    header.set_entry_type(EntryType::Symlink);
    header.set_size(0);
    header
        .set_link_name_literal(target.as_os_str().as_bytes())
        .ok()?;
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(s: &str) -> Operand {
        Operand::Local(s.into())
    }

    fn ctr(n: &str, p: &str) -> Operand {
        Operand::Container {
            name: n.into(),
            path: p.into(),
        }
    }

    #[test]
    fn summaries_read_as_dockers() {
        assert_eq!(
            summary(2048, 2048, "/tmp/x"),
            "Successfully copied 2.05kB to /tmp/x"
        );
        assert_eq!(
            summary(5, 1536, "c:/x"),
            "Successfully copied 5B (transferred 1.54kB) to c:/x"
        );
        assert_eq!(summary(0, 0, "d"), "Successfully copied 0B to d");
        assert_eq!(crate::human_size_digits(512, 3), "512B");
        assert_eq!(crate::human_size_digits(1_500_000, 3), "1.5MB");
        assert_eq!(crate::human_size(1_234_567), "1.235MB");
    }

    #[test]
    fn operands_split_as_docker_does() {
        assert_eq!(Operand::parse("web:/etc/hosts"), ctr("web", "/etc/hosts"));
        assert_eq!(Operand::parse("web:etc"), ctr("web", "/etc"));
        assert_eq!(Operand::parse("web:"), ctr("web", "/"));
        assert_eq!(Operand::parse("/a:b"), local("/a:b"));
        assert_eq!(Operand::parse("./a:b"), local("./a:b"));
        assert_eq!(Operand::parse("file"), local("file"));
        assert_eq!(Operand::parse("-"), local("-"));
        assert_eq!(Operand::parse(":x"), local(":x"));
        assert!(matches!(
            cp(Path::new("/nonexistent"), "a", "b", CpOptions::default()),
            Err(CpError::NoContainer)
        ));
        assert!(matches!(
            cp(
                Path::new("/nonexistent"),
                "a:/x",
                "b:/y",
                CpOptions::default()
            ),
            Err(CpError::BetweenContainers)
        ));
    }

    #[test]
    fn path_rules() {
        assert!(contents_only("/a/."));
        assert!(contents_only("."));
        assert!(!contents_only("/a/"));
        assert!(!contents_only("/a/.b"));
        let s = |p: &str| split_last(p).map(|(d, n)| (d, n.to_string_lossy().into_owned()));
        assert_eq!(s("/a/b"), Some(("/a".into(), "b".into())));
        assert_eq!(s("/a/b/"), Some(("/a".into(), "b".into())));
        assert_eq!(s("/a"), Some(("/".into(), "a".into())));
        assert_eq!(s("b"), Some((".".into(), "b".into())));
        assert_eq!(s("x/b/."), Some(("x".into(), "b".into())));
        assert_eq!(s("/"), None);
        assert_eq!(s(".."), None);
    }

    enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a str, u32),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    /// A tar with entries written raw (no path checks by the builder).
    fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (path, data): (&str, &[u8]) = match e {
                E::Dir(p, mode) => {
                    h.set_entry_type(EntryType::Directory);
                    h.set_mode(*mode);
                    (*p, b"")
                }
                E::File(p, d, mode) => {
                    h.set_entry_type(EntryType::Regular);
                    h.set_mode(*mode);
                    (*p, d.as_bytes())
                }
                E::Symlink(p, t) | E::Hardlink(p, t) => {
                    h.set_entry_type(if matches!(e, E::Symlink(..)) {
                        EntryType::Symlink
                    } else {
                        EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_link_name(t).unwrap();
                    (*p, b"")
                }
            };
            h.set_size(data.len() as u64);
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn extraction_renames_the_top_entry_and_keeps_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            E::Dir("src", 0o750),
            E::File("src/a", "A", 0o4755),
            E::Dir("src/sub", 0o555),
            E::File("src/sub/b", "B", 0o600),
            E::Symlink("src/l", "/etc/passwd"),
        ]);
        let skipped = extract(&tar[..], tmp.path(), &Top::Rename("dst".into())).unwrap();
        assert!(skipped.is_empty());
        let d = tmp.path().join("dst");
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "A");
        assert_eq!(fs::read_to_string(d.join("sub/b")).unwrap(), "B");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&d), 0o750);
        assert_eq!(mode(&d.join("a")), 0o755, "set-id bits dropped");
        assert_eq!(mode(&d.join("sub")), 0o555);
        assert_eq!(
            fs::read_link(d.join("l")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        // Merging: the contents into an existing directory, whose mode stays.
        let into = tmp.path().join("into");
        fs::create_dir(&into).unwrap();
        fs::set_permissions(&into, fs::Permissions::from_mode(0o700)).unwrap();
        let tar = tar_of(&[E::Dir("x", 0o755), E::File("x/f", "F", 0o644)]);
        extract(&tar[..], &into, &Top::Merge).unwrap();
        assert_eq!(fs::read_to_string(into.join("f")).unwrap(), "F");
        assert_eq!(mode(&into), 0o700);
        // A file replaces a file, never a directory.
        let tar = tar_of(&[E::File("x", "new", 0o644)]);
        extract(&tar[..], &into, &Top::Rename("f".into())).unwrap();
        assert_eq!(fs::read_to_string(into.join("f")).unwrap(), "new");
        fs::create_dir(into.join("d")).unwrap();
        let err = extract(&tar[..], &into, &Top::Rename("d".into())).unwrap_err();
        assert!(matches!(err, CpError::OverwriteDirectory(_)), "{err}");
        fs::set_permissions(d.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn hostile_archives_write_nothing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", tar_of(&[E::File("../x", "bad", 0o644)])),
            (
                "dotdot inside",
                tar_of(&[E::Dir("t", 0o755), E::File("t/../../x", "bad", 0o644)]),
            ),
            (
                "absolute",
                tar_of(&[E::File("/x", "ok", 0o644), E::File("/etc/x", "bad", 0o644)]),
            ),
            (
                "symlink then a file through it",
                tar_of(&[
                    E::Dir("t", 0o755),
                    E::Symlink("t/l", outside.to_str().unwrap()),
                    E::File("t/l/x", "bad", 0o644),
                ]),
            ),
            (
                "top symlink then a file through it",
                tar_of(&[
                    E::Symlink("t", outside.to_str().unwrap()),
                    E::File("t/x", "bad", 0o644),
                ]),
            ),
            (
                "another top entry",
                tar_of(&[E::Dir("t", 0o755), E::File("u/x", "bad", 0o644)]),
            ),
        ];
        for (what, tar) in cases {
            let r = extract(&tar[..], &root, &Top::Rename("dst".into()));
            assert!(r.is_err(), "{what}: accepted");
            assert!(listing(&outside).is_empty(), "{what}: wrote outside");
            assert!(!tmp.path().join("x").exists(), "{what}");
            let _ = fs::remove_file(root.join("dst"));
            let _ = fs::remove_dir_all(root.join("dst"));
        }
        // A symlink placed by the archive is replaced, not written through.
        fs::write(outside.join("keep"), "host").unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), root.join("dst")).unwrap();
        let tar = tar_of(&[E::File("t", "ctr", 0o644)]);
        extract(&tar[..], &root, &Top::Rename("dst".into())).unwrap();
        assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "host");
        assert_eq!(fs::read_to_string(root.join("dst")).unwrap(), "ctr");
        // Hard links are skipped, not followed.
        let tar = tar_of(&[
            E::Dir("t", 0o755),
            E::Hardlink("t/h", outside.join("keep").to_str().unwrap()),
        ]);
        let skipped = extract(&tar[..], &root, &Top::Rename("hl".into())).unwrap();
        assert_eq!(skipped.len(), 1);
        assert!(!root.join("hl/h").exists());
    }

    #[test]
    fn host_tars_keep_symlinks_and_name_the_top_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), "F").unwrap();
        std::os::unix::fs::symlink("/", src.join("root")).unwrap();
        let long = format!("/{}", "x".repeat(150));
        std::os::unix::fs::symlink(&long, src.join("long")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, &src, Path::new("top")).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let names: Vec<(String, EntryType)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("top".into(), EntryType::Directory),
                ("top/f".into(), EntryType::Regular),
                ("top/long".into(), EntryType::Symlink),
                ("top/root".into(), EntryType::Symlink),
            ]
        );
        let tmp2 = tempfile::tempdir().unwrap();
        extract(&bytes[..], tmp2.path(), &Top::Rename("out".into())).unwrap();
        let out = tmp2.path().join("out");
        assert_eq!(fs::read_link(out.join("root")).unwrap(), PathBuf::from("/"));
        assert_eq!(
            fs::read_link(out.join("long")).unwrap(),
            PathBuf::from(long)
        );
    }
}
