//! The builder: a parsed Dockerfile's stages run one instruction at a time, as Docker's
//! classic builder does: every `RUN` in a container of the stage's filesystem (a
//! microVM unless the build asks for process isolation) whose writable layer becomes
//! the step's layer, every `COPY`/`ADD` a layer written from the context, every other
//! instruction a change of the image config. Each layer makes an image in the store
//! (an intermediate one, listed by `images -a` only), found again by the build cache.
//!
//! The cache key of a step is a chain: the base image's ID, then each instruction as
//! it was run (variables substituted, `RUN`'s build arguments, the content digest of
//! what a `COPY` or `ADD` writes). An unchanged rebuild finds every step and ends on
//! the same image ID; a changed context file misses from its `COPY` on. Only the
//! stages the target needs are built (a `FROM` or `COPY --from` naming another stage
//! builds that one first).
//!
//! Progress is written to stderr as BuildKit's `--progress=plain` writes it (`#N
//! [stage i/n] INSTRUCTION`, a `RUN`'s output lines with their time, `CACHED`, `DONE`),
//! so that stdout is the image ID alone with `-q`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::context::{Context, ContextError, CopyOptions, ImageKind, resolve_in_image};
use super::dockerfile::{self, Command, CopySpec, Dockerfile, DockerfileError, Health, Kind};
use super::words::{self, WordError};
use crate::container::{Isolation, RunOptions};
use crate::error::RunError;
use crate::image::pull::PullError;
use crate::image::store::{Image, Store, StoreError};

/// The build arguments every Dockerfile may be given without declaring them; they
/// reach `RUN` steps but not the cache key or the image's history (Docker's).
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// BuildKit's automatic platform arguments: in the global scope (usable in `FROM`),
/// and in a stage once it declares them (`ARG TARGETARCH`). Arca builds linux/amd64.
pub const PLATFORM_ARGS: [(&str, &str); 8] = [
    ("TARGETPLATFORM", "linux/amd64"),
    ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"),
    ("TARGETVARIANT", ""),
    ("BUILDPLATFORM", "linux/amd64"),
    ("BUILDOS", "linux"),
    ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""),
];

/// The shell of shell-form commands unless `SHELL` says otherwise.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// The most `/etc/passwd` or `/etc/group` bytes read to resolve `--chown` names.
const MAX_ACCOUNTS_FILE: u64 = 4 << 20;

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// An instruction is wrong in a way only the build sees.
    #[error("Dockerfile line {line}: {why}")]
    Instruction { line: usize, why: String },
    /// Variable substitution failed.
    #[error("Dockerfile line {line}")]
    Word {
        line: usize,
        #[source]
        source: WordError,
    },
    /// A `COPY` or `ADD` source.
    #[error("Dockerfile line {line}")]
    Context {
        line: usize,
        #[source]
        source: ContextError,
    },
    /// The `--target` names no stage.
    #[error("target stage {0:?} could not be found")]
    NoTarget(String),
    /// A `RUN` step failed.
    #[error("process \"{command}\" did not complete successfully: exit code: {code}")]
    Step { command: String, code: i32 },
    /// The image store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A base image's pull.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// A step's container.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A signal (Ctrl-C) ended the build.
    #[error("the build was interrupted")]
    Interrupted,
    /// A file of the build's own.
    #[error("Cannot {action}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let action = action.into();
    move |source| BuildError::Io { action, source }
}

/// What `arca build` was asked, besides the Dockerfile and the context.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `-t`, as given.
    pub tags: Vec<String>,
    /// `--build-arg K=V` (and `K`, whose value is this environment's).
    pub build_args: Vec<String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--pull`: base images are pulled even when the store has them.
    pub pull: bool,
    /// Where `RUN` steps run.
    pub isolation: Isolation,
    /// `--network`: `default`, `none` or `host` (process isolation only).
    pub network: Option<String>,
    /// `-q`: no progress, the image ID alone on stdout.
    pub quiet: bool,
}

/// A build's result.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image ID (hex).
    pub id: String,
    /// The names given to it, normalized.
    pub tags: Vec<String>,
}

/// Builds `dockerfile` with `context` into the store of state directory `state`.
pub fn build(
    state: &Path,
    dockerfile: &Dockerfile,
    context: &Context,
    opts: &BuildOptions,
) -> Result<Built, BuildError> {
    let store = Store::open(state)?;
    // Bad tags fail before anything runs.
    let tags = opts
        .tags
        .iter()
        .map(|t| crate::image::store::normalize_reference(t))
        .collect::<Result<Vec<_>, _>>()?;
    // Before anything is made: a Ctrl-C from here on ends the build cleanly.
    let interrupt = crate::run::Interrupt::install().unwrap_or_default();
    let (work, _held) = work_dir(state)?;
    let mut printer = Printer::new(opts.quiet);
    let v = printer.vertex("[internal] load build definition from Dockerfile");
    printer.done(v);
    if let Some(s) = &dockerfile.syntax {
        printer.say(&format!(
            "the syntax directive {s:?} is noted, not followed: arca has one builder"
        ));
    }
    let mut b = Builder::new(
        state,
        store,
        dockerfile,
        context,
        opts,
        printer,
        work.clone(),
    )?;
    b.interrupt = interrupt;
    let result = b.run(&tags);
    let _ = fs::remove_dir_all(&work);
    result
}

/// A directory of the build's own for its layers, under `<state>/builds`, held by a
/// lock on its `lock` file while the build lives; the directories of builds that are
/// gone (their lock free: they ended or were killed) are removed first.
fn work_dir(state: &Path) -> Result<(PathBuf, fs::File), BuildError> {
    use rustix::fs::FlockOperation;
    let builds = state.join("builds");
    fs::create_dir_all(&builds).map_err(io_err("create the build directory"))?;
    // Cleanup and creation under one lock: a build's directory is never removed
    // between its creation and its own lock.
    let _all = crate::state::lock_file(&builds.join(".lock"), FlockOperation::LockExclusive)
        .map_err(|(what, e)| io_err(format!("{what} the builds' lock"))(e))?;
    if let Ok(entries) = fs::read_dir(&builds) {
        for e in entries.flatten() {
            if e.file_name() == ".lock" {
                continue;
            }
            let lock = e.path().join("lock");
            if let Ok(held) =
                crate::state::lock_file(&lock, FlockOperation::NonBlockingLockExclusive)
            {
                let _ = fs::remove_dir_all(e.path());
                drop(held);
            }
        }
    }
    for n in 0..1000 {
        let dir = builds.join(format!("{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                let lock =
                    crate::state::lock_file(&dir.join("lock"), FlockOperation::LockExclusive)
                        .map_err(|(what, e)| io_err(format!("{what} the build's lock"))(e))?;
                return Ok((dir, lock));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("create the build directory")(e)),
        }
    }
    Err(io_err("create the build directory")(io::Error::other(
        "no free name",
    )))
}

/// A stage of the Dockerfile: its `FROM` and what follows it.
#[derive(Debug, Clone, Copy)]
struct Plan<'a> {
    name: Option<&'a str>,
    line: usize,
    from: &'a str,
    platform: Option<&'a str>,
    body: &'a [dockerfile::Instruction],
}

/// A built stage.
#[derive(Debug, Clone)]
struct Done {
    image: Image,
}

/// A stage being built.
struct Stage {
    /// Its last committed image (`None` until `scratch` gets one).
    image: Option<Image>,
    /// The image config as it stands (Docker's document, unknown fields kept).
    config: Value,
    /// The config differs from `image`'s.
    dirty: bool,
    /// The cache key chain so far.
    key: String,
    /// Its `ARG`s: value, if any.
    args: BTreeMap<String, Option<String>>,
    /// `CMD` was set in this stage (an `ENTRYPOINT` clears an inherited one).
    cmd_set: bool,
}

struct Builder<'a> {
    state: &'a Path,
    store: Store,
    df: &'a Dockerfile,
    context: &'a Context,
    opts: &'a BuildOptions,
    plans: Vec<Plan<'a>>,
    built: HashMap<usize, Done>,
    /// ARGs before the first FROM, with their values.
    globals: BTreeMap<String, Option<String>>,
    /// `--build-arg`s.
    build_args: BTreeMap<String, String>,
    consumed: HashSet<String>,
    printer: Printer,
    work: PathBuf,
    files: usize,
    limit: u64,
    /// Bytes of layers this build wrote.
    used: u64,
    interrupt: Arc<crate::run::Interrupt>,
}

impl<'a> Builder<'a> {
    fn new(
        state: &'a Path,
        store: Store,
        df: &'a Dockerfile,
        context: &'a Context,
        opts: &'a BuildOptions,
        printer: Printer,
        work: PathBuf,
    ) -> Result<Self, BuildError> {
        let mut build_args = BTreeMap::new();
        for a in &opts.build_args {
            match a.split_once('=') {
                Some((k, v)) => {
                    build_args.insert(k.to_string(), v.to_string());
                }
                // As Docker: `--build-arg K` takes K from this environment, if set.
                None => {
                    if let Ok(v) = std::env::var(a) {
                        build_args.insert(a.clone(), v);
                    }
                }
            }
        }
        let limit = store.max_image_size()?;
        let mut b = Builder {
            state,
            store,
            df,
            context,
            opts,
            plans: Vec::new(),
            built: HashMap::new(),
            globals: PLATFORM_ARGS
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect(),
            build_args,
            consumed: HashSet::new(),
            printer,
            work,
            files: 0,
            limit,
            used: 0,
            interrupt: Arc::default(),
        };
        let mut at = 0;
        let all = &df.instructions;
        while at < all.len() {
            match &all[at].kind {
                Kind::Arg(pairs) if b.plans.is_empty() => {
                    let line = all[at].line;
                    for (name, default) in pairs {
                        // Globals see the globals declared before them.
                        let globals = b.globals.clone();
                        let value = b
                            .arg_value(name, default.as_deref(), line, &|n| {
                                globals.get(n).cloned().flatten()
                            })?
                            // `ARG TARGETARCH` alone keeps the automatic value.
                            .or_else(|| globals.get(name).cloned().flatten());
                        b.globals.insert(name.clone(), value);
                    }
                    at += 1;
                }
                Kind::From {
                    image,
                    name,
                    platform,
                } => {
                    let end = all[at + 1..]
                        .iter()
                        .position(|i| matches!(i.kind, Kind::From { .. }))
                        .map_or(all.len(), |p| at + 1 + p);
                    b.plans.push(Plan {
                        name: name.as_deref(),
                        line: all[at].line,
                        from: image,
                        platform: platform.as_deref(),
                        body: &all[at + 1..end],
                    });
                    at = end;
                }
                _ => at += 1,
            }
        }
        Ok(b)
    }

    /// An `ARG`'s value: the build argument of its name, else its default (variables
    /// substituted with `vars`), else none.
    /// `vars` are what the default may name: the globals declared before it for a
    /// global, the stage's own variables in a stage (not the globals it did not
    /// declare again, as Docker).
    fn arg_value(
        &mut self,
        name: &str,
        default: Option<&str>,
        line: usize,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, BuildError> {
        self.consumed.insert(name.to_string());
        if let Some(v) = self.build_args.get(name) {
            return Ok(Some(v.clone()));
        }
        match default {
            Some(d) => words::expand(d, &vars, self.df.escape)
                .map(Some)
                .map_err(|source| BuildError::Word { line, source }),
            None => Ok(None),
        }
    }

    fn run(&mut self, tags: &[String]) -> Result<Built, BuildError> {
        let target = match &self.opts.target {
            Some(t) => {
                let t = t.to_ascii_lowercase();
                self.plans
                    .iter()
                    .position(|p| p.name == Some(t.as_str()))
                    .ok_or(BuildError::NoTarget(t))?
            }
            None => self.plans.len() - 1,
        };
        let done = self.stage(target)?;
        let unused: Vec<&String> = self
            .build_args
            .keys()
            .filter(|k| !self.consumed.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            self.printer.say(&format!(
                "[Warning] One or more build-args [{}] were not consumed",
                names.join(" ")
            ));
        }
        let v = self.printer.vertex("exporting to image");
        let id = done.image.id.clone();
        // The result is an image of its own, not only a step's.
        self.store.keep(&id)?;
        self.printer
            .line(v, &format!("writing image sha256:{id} done"));
        let mut named = Vec::new();
        for t in tags {
            let name = self.store.tag(&id, t)?;
            self.printer.line(v, &format!("naming to {name} done"));
            named.push(name);
        }
        self.printer.done(v);
        Ok(Built { id, tags: named })
    }

    /// The stage that a `FROM` or `--from` names, if it is an earlier stage than
    /// `before` (by name, or by index).
    fn stage_named(&self, name: &str, before: usize) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        if let Some(i) = self.plans[..before]
            .iter()
            .position(|p| p.name == Some(lower.as_str()))
        {
            return Some(i);
        }
        name.parse::<usize>().ok().filter(|i| *i < before)
    }

    /// A stage name that is not an earlier stage's, for `FROM` or `--from` in stage
    /// `at`: the stage itself or a later one (an error, never an image to pull).
    fn not_earlier(&self, name: &str, at: usize) -> Option<String> {
        let lower = name.to_ascii_lowercase();
        self.plans[at..]
            .iter()
            .any(|p| p.name == Some(lower.as_str()))
            .then(|| {
                format!(
                    "{name} is this stage or a later one: a stage can only use the stages before it"
                )
            })
    }

    /// A base image: from the store, pulled when missing (or with `--pull`).
    fn base(&mut self, reference: &str, v: usize) -> Result<Image, BuildError> {
        if !self.opts.pull {
            match self.store.resolve(reference) {
                Ok(i) => return Ok(i),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.printer.line(v, &format!("pulling {reference}"));
        let (name, _) = crate::image::pull::pull(&self.store, reference, false, false)?;
        Ok(self.store.resolve(&name)?)
    }

    /// Builds stage `i` (once), and the stages it names first.
    fn stage(&mut self, i: usize) -> Result<Done, BuildError> {
        if let Some(d) = self.built.get(&i) {
            return Ok(d.clone());
        }
        let plan = self.plans[i];
        let escape = self.df.escape;
        let globals = self.globals.clone();
        let gvars = |n: &str| globals.get(n).cloned().flatten();
        let word = |source| BuildError::Word {
            line: plan.line,
            source,
        };
        let from = words::expand(plan.from, &gvars, escape).map_err(word)?;
        if let Some(p) = plan.platform {
            let p = words::expand(p, &gvars, escape).map_err(word)?;
            if !matches!(
                p.as_str(),
                "linux/amd64" | "linux/x86_64" | "amd64" | "x86_64" | "linux" | ""
            ) {
                return Err(BuildError::Instruction {
                    line: plan.line,
                    why: format!(
                        "--platform {p} is not supported: arca builds linux/amd64 images only"
                    ),
                });
            }
        }
        let label = match plan.name {
            Some(n) if self.plans.len() > 1 => format!("{n} "),
            None if self.plans.len() > 1 => format!("stage-{i} "),
            _ => String::new(),
        };
        let n = plan.body.len() + 1;
        // A stage named as the base is built first (and numbered first).
        if let Some(why) = self.not_earlier(&from, i) {
            return Err(BuildError::Instruction {
                line: plan.line,
                why: format!("FROM {why}"),
            });
        }
        let earlier = self.stage_named(&from, i);
        let base_done = match earlier {
            Some(j) => Some(self.stage(j)?),
            None => None,
        };
        let v = self.printer.vertex(&format!("[{label}1/{n}] FROM {from}"));
        let (image, config, key) = if let Some(d) = base_done {
            let config = raw_config(&d.image)?;
            let key = format!("image:{}", d.image.id);
            (Some(d.image), config, key)
        } else if from.eq_ignore_ascii_case("scratch") {
            (None, scratch_config(), "scratch".to_string())
        } else {
            let img = self.base(&from, v)?;
            let config = raw_config(&img)?;
            let key = format!("image:{}", img.id);
            (Some(img), config, key)
        };
        self.printer.done(v);
        let mut st = Stage {
            image,
            config,
            dirty: false,
            key,
            args: BTreeMap::new(),
            cmd_set: false,
        };
        // The base's ONBUILD triggers run first, and are not inherited further.
        let triggers: Vec<String> = st.config["config"]["OnBuild"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !triggers.is_empty() {
            st.config["config"]["OnBuild"] = Value::Null;
            st.dirty = true;
        }
        for t in &triggers {
            let kind = dockerfile::trigger(t, escape).map_err(|why| BuildError::Instruction {
                line: plan.line,
                why: format!("the base image's ONBUILD trigger: {why}"),
            })?;
            let text = format!("ONBUILD {t}");
            self.step(
                &mut st,
                i,
                &kind,
                &text,
                plan.line,
                &format!("[{label}1/{n}] {text}"),
            )?;
        }
        for (k, ins) in plan.body.iter().enumerate() {
            let shown = format!("[{label}{}/{n}] {}", k + 2, ins.text);
            self.step(&mut st, i, &ins.kind, &ins.text, ins.line, &shown)?;
        }
        if st.dirty || st.image.is_none() {
            let key = chain(&st.key, &["config"]);
            self.commit(&mut st, None, &key)?;
        }
        let done = Done {
            image: st.image.expect("committed"),
        };
        self.built.insert(i, done.clone());
        Ok(done)
    }

    /// The variables an instruction's words see: the stage's `ENV` over its `ARG`s.
    fn vars(st: &Stage) -> Snapshot {
        Snapshot {
            env: env_list(&st.config),
            args: st.args.clone(),
        }
    }

    /// Runs one instruction of stage `i`.
    fn step(
        &mut self,
        st: &mut Stage,
        i: usize,
        kind: &Kind,
        text: &str,
        line: usize,
        shown: &str,
    ) -> Result<(), BuildError> {
        if self.interrupt.interrupted() {
            return Err(BuildError::Interrupted);
        }
        let escape = self.df.escape;
        let word = |source| BuildError::Word { line, source };
        let bad = |why: String| BuildError::Instruction { line, why };
        let meta = |st: &mut Stage, printer: &mut Printer, what: String| {
            let v = printer.vertex(shown);
            st.key = chain(&st.key, &[&what]);
            history(&mut st.config, text, true);
            st.dirty = true;
            printer.done(v);
        };
        match kind {
            Kind::From { .. } => unreachable!("a stage's FROM is its start"),
            Kind::Env(pairs) => {
                let vars = Self::vars(st);
                let values = pairs
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), words::expand(v, &vars, escape)?)))
                    .collect::<Result<Vec<_>, WordError>>()
                    .map_err(word)?;
                for (k, v) in &values {
                    env_set(&mut st.config, k, v);
                }
                meta(st, &mut self.printer, format!("ENV {values:?}"));
            }
            Kind::Label(pairs) => {
                let vars = Self::vars(st);
                let values = pairs
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            words::expand(k, &vars, escape)?,
                            words::expand(v, &vars, escape)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, WordError>>()
                    .map_err(word)?;
                let labels = object_at(&mut st.config, "Labels");
                for (k, v) in &values {
                    labels.insert(k.clone(), Value::String(v.clone()));
                }
                meta(st, &mut self.printer, format!("LABEL {values:?}"));
            }
            Kind::Arg(pairs) => {
                let mut seen = Vec::new();
                for (name, default) in pairs {
                    let value = {
                        let env = st.config.clone();
                        let args = st.args.clone();
                        let vars = move |n: &str| {
                            env_get(&env, n).or_else(|| args.get(n).cloned().flatten())
                        };
                        match default {
                            Some(_) => self.arg_value(name, default.as_deref(), line, &vars)?,
                            // `ARG NAME` in a stage: a global's value comes in.
                            None => match self.arg_value(name, None, line, &vars)? {
                                Some(v) => Some(v),
                                None => self.globals.get(name).cloned().flatten(),
                            },
                        }
                    };
                    seen.push(format!("{name}={value:?}"));
                    st.args.insert(name.clone(), value);
                }
                let v = self.printer.vertex(shown);
                st.key = chain(&st.key, &[&format!("ARG {seen:?}")]);
                self.printer.done(v);
            }
            Kind::Workdir(dir) => {
                let vars = Self::vars(st);
                let dir = words::expand(dir, &vars, escape).map_err(word)?;
                let full = absolute(&workdir(&st.config), &dir);
                set(&mut st.config, "WorkingDir", Value::String(full.clone()));
                let v = self.printer.vertex(shown);
                st.key = chain(&st.key, &[&format!("WORKDIR {full}")]);
                let real = match st.image.as_ref() {
                    Some(img) => {
                        resolve_in_image(&img.rootfs, &full).map_err(|e| bad(e.to_string()))?
                    }
                    None => full.clone(),
                };
                let missing = st
                    .image
                    .as_ref()
                    .is_none_or(|img| image_kind(&img.rootfs, &real).is_none());
                if missing && real != "/" {
                    // The directory is made, as Docker makes it: a layer of its own.
                    let key = st.key.clone();
                    if !self.cache_hit(st, &key, v)? {
                        let path = self.layer_path();
                        let f = fs::File::create(&path).map_err(io_err("write a layer"))?;
                        let root = st.image.as_ref().map(|i| i.rootfs.clone());
                        dir_layer(root.as_deref(), &real, BufWriter::new(f))
                            .map_err(io_err("write a layer"))?;
                        history(&mut st.config, text, false);
                        self.commit(st, Some(&path), &key)?;
                    }
                } else {
                    history(&mut st.config, text, true);
                    st.dirty = true;
                }
                self.printer.done(v);
            }
            Kind::User(user) => {
                let vars = Self::vars(st);
                let user = words::expand(user, &vars, escape).map_err(word)?;
                set(&mut st.config, "User", Value::String(user.clone()));
                meta(st, &mut self.printer, format!("USER {user}"));
            }
            Kind::Expose(ports) => {
                let vars = Self::vars(st);
                let ports = words::expand_fields(ports, &vars, escape).map_err(word)?;
                let mut all = Vec::new();
                for p in &ports {
                    all.extend(crate::ports::expose_keys(p, None).map_err(bad)?);
                }
                let map = object_at(&mut st.config, "ExposedPorts");
                for p in &all {
                    map.insert(p.clone(), json!({}));
                }
                meta(st, &mut self.printer, format!("EXPOSE {all:?}"));
            }
            Kind::Volume(paths) => {
                let vars = Self::vars(st);
                let paths = paths
                    .iter()
                    .map(|p| words::expand(p, &vars, escape))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(word)?;
                if paths.iter().any(|p| p.is_empty()) {
                    return Err(bad("VOLUME specified can not be an empty string".into()));
                }
                let map = object_at(&mut st.config, "Volumes");
                for p in &paths {
                    map.insert(p.clone(), json!({}));
                }
                meta(st, &mut self.printer, format!("VOLUME {paths:?}"));
            }
            Kind::StopSignal(sig) => {
                let vars = Self::vars(st);
                let sig = words::expand(sig, &vars, escape).map_err(word)?;
                crate::container::lifecycle::parse_signal(&sig)
                    .map_err(|e| bad(format!("STOPSIGNAL: {e}")))?;
                set(&mut st.config, "StopSignal", Value::String(sig.clone()));
                meta(st, &mut self.printer, format!("STOPSIGNAL {sig}"));
            }
            Kind::Shell(shell) => {
                set(&mut st.config, "Shell", json!(shell));
                meta(st, &mut self.printer, format!("SHELL {shell:?}"));
            }
            Kind::Cmd(c) => {
                let argv = self.argv(st, c);
                set(&mut st.config, "Cmd", json!(argv));
                st.cmd_set = true;
                meta(st, &mut self.printer, format!("CMD {argv:?}"));
            }
            Kind::Entrypoint(c) => {
                let argv = self.argv(st, c);
                set(&mut st.config, "Entrypoint", json!(argv));
                // Docker's rule: a Cmd the base image set goes with its Entrypoint.
                if !st.cmd_set {
                    set(&mut st.config, "Cmd", Value::Null);
                }
                meta(st, &mut self.printer, format!("ENTRYPOINT {argv:?}"));
            }
            Kind::Healthcheck(h) => {
                let value = health(h).map_err(bad)?;
                set(&mut st.config, "Healthcheck", value.clone());
                meta(st, &mut self.printer, format!("HEALTHCHECK {value}"));
            }
            Kind::Onbuild(trigger, _) => {
                let list = st.config["config"]["OnBuild"].as_array().cloned();
                let mut list = list.unwrap_or_default();
                list.push(Value::String(trigger.clone()));
                set(&mut st.config, "OnBuild", Value::Array(list));
                meta(st, &mut self.printer, format!("ONBUILD {trigger}"));
            }
            Kind::Maintainer(who) => {
                st.config["author"] = Value::String(who.clone());
                meta(st, &mut self.printer, format!("MAINTAINER {who}"));
            }
            Kind::Run { command, network } => {
                self.run_step(st, command, network.as_deref(), line, shown)?;
            }
            Kind::Copy(spec) => self.copy_step(st, i, spec, false, text, line, shown)?,
            Kind::Add(spec) => self.copy_step(st, i, spec, true, text, line, shown)?,
        }
        Ok(())
    }

    /// The stage's shell (`SHELL`, else `/bin/sh -c`).
    fn shell(&self, st: &Stage) -> Vec<String> {
        st.config["config"]["Shell"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect())
    }

    /// A command's argv: an exec form as it is, a shell form through the shell.
    fn argv(&self, st: &Stage, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = self.shell(st);
                v.push(s.clone());
                v
            }
        }
    }

    /// What the build's layers may still write: the image size cap less what its
    /// layers wrote so far (a Dockerfile of many steps does not get the cap each).
    fn budget(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    fn layer_path(&mut self) -> PathBuf {
        self.files += 1;
        self.work.join(format!("layer-{}.tar", self.files))
    }

    /// Whether the cache has step `key` (unless `--no-cache`): if so, the stage moves
    /// on to its image, and the step shows `CACHED`.
    fn cache_hit(&mut self, st: &mut Stage, key: &str, v: usize) -> Result<bool, BuildError> {
        if self.opts.no_cache {
            return Ok(false);
        }
        let Some(img) = self.store.cached(key) else {
            return Ok(false);
        };
        st.config = raw_config(&img)?;
        st.image = Some(img);
        st.dirty = false;
        self.printer.cached(v);
        Ok(true)
    }

    /// Commits the stage's config (and `layer`, if any) as a new image on its last
    /// one, recorded in the cache under `key`.
    fn commit(
        &mut self,
        st: &mut Stage,
        layer: Option<&Path>,
        key: &str,
    ) -> Result<(), BuildError> {
        if layer.is_none()
            && let Some(img) = (!self.opts.no_cache)
                .then(|| self.store.cached(key))
                .flatten()
        {
            st.config = raw_config(&img)?;
            st.image = Some(img);
            st.dirty = false;
            return Ok(());
        }
        if let Some(l) = layer {
            self.used += fs::metadata(l).map_or(0, |m| m.len());
            if self.used > self.limit {
                return Err(BuildError::Store(StoreError::TooLarge {
                    image: "(build)".into(),
                    layer: l.display().to_string(),
                    limit: self.limit,
                }));
            }
        }
        st.config["created"] = Value::String(now_rfc3339());
        let img = self
            .store
            .commit_on(st.image.as_ref(), st.config.clone(), layer, &[], true)?;
        self.store.cache(key, &img.id)?;
        st.config = raw_config(&img)?;
        st.image = Some(img);
        st.dirty = false;
        if let Some(l) = layer {
            let _ = fs::remove_file(l);
        }
        Ok(())
    }

    /// `RUN`: the command in a container of the stage's image, with the stage's
    /// environment, working directory and user, and the build arguments in its
    /// environment; its writable layer is the step's layer.
    fn run_step(
        &mut self,
        st: &mut Stage,
        command: &Command,
        network: Option<&str>,
        line: usize,
        shown: &str,
    ) -> Result<(), BuildError> {
        let argv = self.argv(st, command);
        // An image's `Env` entry without `=` names nothing to pass: dropped, never
        // filled from arca's own environment (as `-e KEY` would be).
        let mut env: Vec<String> = env_list(&st.config)
            .into_iter()
            .filter(|e| e.contains('='))
            .collect();
        let mut arg_env = Vec::new();
        for (k, v) in &st.args {
            if let Some(v) = v
                && env_get(&st.config, k).is_none()
            {
                arg_env.push(format!("{k}={v}"));
            }
        }
        env.extend(arg_env.iter().cloned());
        for p in PROXY_ARGS {
            if !st.args.contains_key(p)
                && let Some(v) = self.build_args.get(p)
            {
                env.push(format!("{p}={v}"));
            }
        }
        if network == Some("host") && self.opts.network.as_deref() != Some("host") {
            // The host's network only when the user grants it, not because a
            // Dockerfile (or a base image's trigger) asks: BuildKit's `--allow
            // network.host`.
            return Err(BuildError::Instruction {
                line,
                why: "RUN --network=host needs `arca build --network host` (with --isolation=process)"
                    .into(),
            });
        }
        let network = match network.or(self.opts.network.as_deref()) {
            None | Some("default") => None,
            Some(n) => Some(n.to_string()),
        };
        let v = self.printer.vertex(shown);
        st.key = chain(
            &st.key,
            &[
                "RUN",
                &json!(argv).to_string(),
                &json!(arg_env).to_string(),
                network.as_deref().unwrap_or("default"),
            ],
        );
        let key = st.key.clone();
        if self.cache_hit(st, &key, v)? {
            return Ok(());
        }
        let volumes_changed = st.image.as_ref().is_some_and(|img| {
            raw_config(img).is_ok_and(|c| c["config"]["Volumes"] != st.config["config"]["Volumes"])
        });
        if st.image.is_none() || volumes_changed {
            // The container runs in an image: a new one only when the step would
            // otherwise miss what it needs (the `VOLUME`s declared since, whose changes
            // a step does not keep, as Docker's); its environment, working directory
            // and user come with the step's options.
            let key = chain(&key, &["before"]);
            self.commit(st, None, &key)?;
        }
        let image = st.image.as_ref().expect("committed").clone();
        let opts = RunOptions::for_step(
            format!("sha256:{}", image.id),
            argv.clone(),
            env,
            Some(workdir(&st.config)),
            st.config["config"]["User"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(str::to_string),
            self.opts.isolation,
            network,
        )?;
        let layer = self.layer_path();
        let limit = self.budget();
        let mut take = |address: &arca_agent_client::AgentAddress, id: &str| {
            let f = fs::File::create(&layer)
                .map_err(crate::error::io_err("create the step's layer file"))?;
            let mut w = BufWriter::new(f);
            address.layer(id, &mut w, limit)?;
            w.flush()
                .map_err(crate::error::io_err("write the step's layer file"))?;
            Ok(())
        };
        let started = Instant::now();
        let output = self.printer.output(v, started);
        let code = crate::run::run_step(self.state, &opts, output, &mut take, &self.interrupt)?;
        if self.interrupt.interrupted() {
            return Err(BuildError::Interrupted);
        }
        if code != 0 {
            let command = argv.join(" ");
            self.printer.error(
                v,
                &format!("process \"{command}\" did not complete successfully: exit code: {code}"),
            );
            return Err(BuildError::Step { command, code });
        }
        history(
            &mut st.config,
            &format!("RUN {} # buildkit", argv.join(" ")),
            false,
        );
        self.commit(st, Some(&layer), &key)?;
        self.printer.done(v);
        Ok(())
    }

    /// `COPY` and `ADD`: what the sources name (in the context, or in a stage's or an
    /// image's filesystem with `--from`), written as a layer at the destination.
    #[allow(clippy::too_many_arguments)]
    fn copy_step(
        &mut self,
        st: &mut Stage,
        i: usize,
        spec: &CopySpec,
        add: bool,
        text: &str,
        line: usize,
        shown: &str,
    ) -> Result<(), BuildError> {
        let escape = self.df.escape;
        let word = |source| BuildError::Word { line, source };
        let bad = |why: String| BuildError::Instruction { line, why };
        let ctx_err = |source| BuildError::Context { line, source };
        let (sources, dest, from, chown, chmod) = {
            let vars = Self::vars(st);
            let sources = spec
                .sources
                .iter()
                .map(|s| words::expand(s, &vars, escape))
                .collect::<Result<Vec<_>, _>>()
                .map_err(word)?;
            let dest = words::expand(&spec.dest, &vars, escape).map_err(word)?;
            let from = spec
                .from
                .as_deref()
                .map(|f| words::expand(f, &vars, escape))
                .transpose()
                .map_err(word)?;
            let chown = spec
                .chown
                .as_deref()
                .map(|c| words::expand(c, &vars, escape))
                .transpose()
                .map_err(word)?;
            (sources, dest, from, chown, spec.chmod.clone())
        };
        if add && let Some(url) = sources.iter().find(|s| is_url(s)) {
            return Err(bad(format!(
                "ADD {url}: sources from a URL or a git repository are not supported by arca build; download it in a RUN step (wget, curl) or COPY a local file"
            )));
        }
        // A relative destination is relative to the working directory; `..` stops at
        // the root.
        let dest = {
            let mut d = absolute(&workdir(&st.config), &dest);
            let dir = dest.ends_with('/') || dest.ends_with("/.") || dest == "." || dest == "..";
            if dir && !d.ends_with('/') {
                d.push('/');
            }
            d
        };
        // The destination as the image resolves it: through its symlinks, inside its
        // root (`/bin/` is `/usr/bin/` in a merged-/usr image).
        let dest = match st.image.as_ref() {
            Some(img) => {
                let mut d = resolve_in_image(&img.rootfs, &dest).map_err(|e| bad(e.to_string()))?;
                if dest.ends_with('/') && !d.ends_with('/') {
                    d.push('/');
                }
                d
            }
            None => dest,
        };
        let (ctx, from_key) = match &from {
            None => (self.context.clone(), String::new()),
            Some(f) => {
                if let Some(why) = self.not_earlier(f, i) {
                    return Err(bad(format!("--from={why}")));
                }
                let img = match self.stage_named(f, i) {
                    Some(j) => self.stage(j)?.image,
                    None if f.parse::<usize>().is_ok() => {
                        return Err(bad(format!(
                            "COPY --from={f}: there is no earlier stage {f}"
                        )));
                    }
                    None => {
                        let v = self.printer.vertex(&format!("[internal] load image {f}"));
                        let img = self.base(f, v)?;
                        self.printer.done(v);
                        img
                    }
                };
                (
                    Context::tree(&img.rootfs).map_err(ctx_err)?,
                    format!("from:{}", img.id),
                )
            }
        };
        let v = self.printer.vertex(shown);
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        for s in &sources {
            for f in ctx.sources(s).map_err(ctx_err)? {
                if seen.insert(f.clone()) {
                    found.push(f);
                }
            }
        }
        let root = st.image.as_ref().map(|i| i.rootfs.clone());
        let owner = match &chown {
            Some(c) => Some(owner(root.as_deref(), c).map_err(bad)?),
            None => None,
        };
        let mode = match &chmod {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        bad(format!("invalid --chmod={m}: an octal mode is expected"))
                    })?,
            ),
            None => None,
        };
        let opts = CopyOptions {
            owner,
            mode,
            limit: self.budget(),
        };
        let path = self.layer_path();
        let f = fs::File::create(&path).map_err(io_err("write a layer"))?;
        let mut out = BufWriter::new(f);
        let kind_at = |p: &str| root.as_deref().and_then(|r| image_kind(r, p));
        let archive = if add {
            super::add::archive_sources(&ctx, &found).map_err(ctx_err)?
        } else {
            Vec::new()
        };
        let written = if archive.is_empty() {
            ctx.copy_layer(&found, &dest, &opts, &kind_at, &mut out)
                .map_err(ctx_err)?
        } else {
            super::add::extract_layer(&ctx, &found, &archive, &dest, &opts, &kind_at, &mut out)
                .map_err(ctx_err)?
        };
        out.flush().map_err(io_err("write a layer"))?;
        drop(out);
        for s in &written.skipped {
            self.printer.line(v, &format!("skipped {s}"));
        }
        let digest = content_digest(&path)?;
        st.key = chain(
            &st.key,
            &[
                if add { "ADD" } else { "COPY" },
                &from_key,
                &format!("{owner:?}"),
                &format!("{mode:?}"),
                &dest,
                &digest,
            ],
        );
        let key = st.key.clone();
        if self.cache_hit(st, &key, v)? {
            let _ = fs::remove_file(&path);
            return Ok(());
        }
        history(&mut st.config, &format!("{text} # buildkit"), false);
        self.commit(st, Some(&path), &key)?;
        self.printer.done(v);
        Ok(())
    }
}

/// A stage's variables as they stood before an instruction.
struct Snapshot {
    env: Vec<String>,
    args: BTreeMap<String, Option<String>>,
}

impl words::Vars for Snapshot {
    fn get(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find_map(|e| {
                e.split_once('=')
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
            .or_else(|| self.args.get(name).cloned().flatten())
    }
}

/// The next link of a cache key chain.
fn chain(prev: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    crate::image::store::hex(&h.finalize())
}

/// An image's config as stored (every field, known to arca or not).
fn raw_config(img: &Image) -> Result<Value, BuildError> {
    let path = img.rootfs.with_file_name("config.json");
    let bytes = fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
    let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| BuildError::Io {
        action: format!("read {}", path.display()),
        source: io::Error::other(e),
    })?;
    if !v.is_object() {
        v = json!({});
    }
    if !v["config"].is_object() {
        v["config"] = json!({});
    }
    if !v["history"].is_array() {
        v["history"] = json!([]);
    }
    Ok(v)
}

/// The config of `FROM scratch`.
fn scratch_config() -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "history": [],
    })
}

fn now_rfc3339() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::rfc3339_nanos(t.as_secs(), t.subsec_nanos())
}

/// Appends an instruction to the config's history.
fn history(config: &mut Value, text: &str, empty: bool) {
    let mut entry = json!({
        "created": now_rfc3339(),
        "created_by": text,
        "comment": "buildkit.dockerfile.v0",
    });
    if empty {
        entry["empty_layer"] = Value::Bool(true);
    }
    if let Some(h) = config["history"].as_array_mut() {
        h.push(entry);
    } else {
        config["history"] = json!([entry]);
    }
}

/// Sets `config.FIELD`.
fn set(config: &mut Value, field: &str, value: Value) {
    if !config["config"].is_object() {
        config["config"] = json!({});
    }
    config["config"][field] = value;
}

/// `config.FIELD` as an object (made if missing or null).
fn object_at<'v>(config: &'v mut Value, field: &str) -> &'v mut serde_json::Map<String, Value> {
    if !config["config"][field].is_object() {
        set(config, field, json!({}));
    }
    config["config"][field]
        .as_object_mut()
        .expect("made an object above")
}

fn env_list(config: &Value) -> Vec<String> {
    config["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn env_get(config: &Value, name: &str) -> Option<String> {
    env_list(config).into_iter().find_map(|e| {
        e.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

fn env_set(config: &mut Value, name: &str, value: &str) {
    let mut env = env_list(config);
    let entry = format!("{name}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == name)
    {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
    set(config, "Env", json!(env));
}

/// The stage's working directory (`/` unless set).
fn workdir(config: &Value) -> String {
    config["config"]["WorkingDir"]
        .as_str()
        .filter(|w| !w.is_empty())
        .unwrap_or("/")
        .to_string()
}

/// `path` made absolute against `base` and cleaned lexically (`..` stops at `/`).
fn absolute(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// What the image whose root filesystem is `rootfs` has at absolute `path`: looked up
/// component by component, never through a symlink (the image is untrusted: its
/// links must not lead to the host's files). A symlink on the way answers `None`.
fn image_kind(rootfs: &Path, path: &str) -> Option<ImageKind> {
    let mut at = rootfs.to_path_buf();
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return None;
    }
    for (n, part) in parts.iter().enumerate() {
        at.push(part);
        let m = fs::symlink_metadata(&at).ok()?;
        let last = n + 1 == parts.len();
        if m.file_type().is_symlink() {
            return if last { Some(ImageKind::Other) } else { None };
        }
        if !m.is_dir() {
            return if last { Some(ImageKind::Other) } else { None };
        }
    }
    Some(ImageKind::Dir)
}

/// The digest of what a layer holds, for a `COPY`'s or `ADD`'s cache key: each entry's
/// name, kind, mode, owner, size, link and content, but not its modification time (a
/// fresh clone of the same files hits the cache, as Docker's content checksums do).
fn content_digest(layer: &Path) -> Result<String, BuildError> {
    let err = io_err(format!("read the layer {}", layer.display()));
    let f = fs::File::open(layer).map_err(err)?;
    let mut archive = tar::Archive::new(io::BufReader::new(f));
    let mut h = Sha256::new();
    let bad = |e: io::Error| BuildError::Io {
        action: format!("read the layer {}", layer.display()),
        source: e,
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let hd = entry.header();
        let fields = format!(
            "{:?} {:o} {} {} {} ",
            hd.entry_type(),
            hd.mode().unwrap_or(0),
            hd.uid().unwrap_or(0),
            hd.gid().unwrap_or(0),
            entry.size()
        );
        h.update(entry.path_bytes());
        h.update([0]);
        h.update(fields.as_bytes());
        if let Some(l) = entry.link_name_bytes() {
            h.update(&l);
        }
        h.update([0]);
        io::copy(&mut entry, &mut HashWriter(&mut h)).map_err(bad)?;
    }
    Ok(crate::image::store::hex(&h.finalize()))
}

/// Feeds what is written to a hash.
struct HashWriter<'h>(&'h mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A layer making directory `path` and the parents the image (`rootfs`) lacks: 0755,
/// root's.
fn dir_layer(rootfs: Option<&Path>, path: &str, out: impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    let mut at = String::new();
    let now = crate::now();
    for part in path.split('/').filter(|c| !c.is_empty()) {
        at.push('/');
        at.push_str(part);
        if rootfs.is_some_and(|r| image_kind(r, &at).is_some()) {
            continue;
        }
        tar.append_data(&mut super::add::made_dir(now), &at[1..], io::empty())?;
    }
    tar.into_inner()?.flush()
}

/// Whether an `ADD` source is remote.
fn is_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ["http://", "https://", "git@", "git://", "ssh://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// `HEALTHCHECK` as the config's `Healthcheck`.
fn health(h: &Health) -> Result<Value, String> {
    match h {
        Health::None => Ok(json!({"Test": ["NONE"]})),
        Health::Check {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test = match command {
                Command::Exec(v) => {
                    let mut t = vec!["CMD".to_string()];
                    t.extend(v.iter().cloned());
                    t
                }
                Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            };
            let mut v = json!({"Test": test});
            for (field, value) in [
                ("Interval", interval),
                ("Timeout", timeout),
                ("StartPeriod", start_period),
                ("StartInterval", start_interval),
            ] {
                if let Some(d) = value {
                    v[field] = json!(duration_ns(d)?);
                }
            }
            if let Some(r) = retries {
                v["Retries"] = json!(
                    r.parse::<u32>()
                        .map_err(|_| format!("invalid --retries={r}: a number is expected"))?
                );
            }
            Ok(v)
        }
    }
}

/// A Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds.
fn duration_ns(text: &str) -> Result<u64, String> {
    crate::parse_go_duration(text)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .ok_or_else(|| format!("invalid duration {text:?}"))
}

/// `--chown=USER[:GROUP]` as numbers: numbers as they are, names looked up in the
/// image's `/etc/passwd` and `/etc/group` (read without following a symlink).
fn owner(rootfs: Option<&Path>, spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Result<(u32, Option<u32>), String> {
        let text = rootfs
            .and_then(|r| read_image_file(r, file))
            .ok_or_else(|| format!("unable to find user {name}: no /{file} in the image"))?;
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name) && f.len() > field)
            .and_then(|f| {
                let id = f[field].parse().ok()?;
                let gid = f.get(field + 1).and_then(|g| g.parse().ok());
                Some((id, gid))
            })
            .ok_or_else(|| format!("unable to find {name} in /{file}"))
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => {
            let (uid, gid) = lookup("etc/passwd", user, 2)?;
            (uid, gid)
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g, 2)?.0,
        },
        None => primary.unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// A small file of the image (`etc/passwd`), opened component by component with
/// `O_NOFOLLOW`: `None` if it is missing, a symlink on the way, or too large.
fn read_image_file(rootfs: &Path, rel: &str) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    let mut dir = rustix::fs::open(
        rootfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let parts: Vec<&str> = rel.split('/').collect();
    for (n, part) in parts.iter().enumerate() {
        if matches!(
            Path::new(part).components().next(),
            Some(Component::ParentDir)
        ) {
            return None;
        }
        let last = n + 1 == parts.len();
        let flags = if last {
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
        } else {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        dir = rustix::fs::openat(&dir, *part, flags, Mode::empty()).ok()?;
    }
    let st = rustix::fs::fstat(&dir).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let mut text = String::new();
    fs::File::from(dir)
        .take(MAX_ACCOUNTS_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Progress on stderr, BuildKit's plain format.
struct Printer {
    quiet: bool,
    next: usize,
    started: HashMap<usize, Instant>,
}

impl Printer {
    fn new(quiet: bool) -> Self {
        Printer {
            quiet,
            next: 0,
            started: HashMap::new(),
        }
    }

    fn say(&self, text: &str) {
        if !self.quiet {
            let mut e = io::stderr().lock();
            let _ = writeln!(e, "{text}");
        }
    }

    fn vertex(&mut self, name: &str) -> usize {
        self.next += 1;
        self.started.insert(self.next, Instant::now());
        self.say(&format!("#{} {name}", self.next));
        self.next
    }

    fn line(&self, v: usize, text: &str) {
        self.say(&format!("#{v} {text}"));
    }

    fn done(&self, v: usize) {
        let secs = self
            .started
            .get(&v)
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.say(&format!("#{v} DONE {secs:.1}s\n"));
    }

    fn cached(&self, v: usize) {
        self.say(&format!("#{v} CACHED\n"));
    }

    fn error(&self, v: usize, why: &str) {
        // Shown with -q too: the failure is the output.
        eprintln!("#{v} ERROR: {why}");
    }

    /// Writers for a step's output: each line as `#V SECONDS LINE`.
    fn output(&self, v: usize, started: Instant) -> crate::run::StepOutput {
        let quiet = self.quiet;
        let lock = Arc::new(Mutex::new(()));
        Arc::new(move |_stderr| {
            Box::new(Lines {
                v,
                started,
                pending: Vec::new(),
                quiet,
                lock: lock.clone(),
            }) as Box<dyn Write + Send>
        })
    }
}

/// A step's output stream, prefixed line by line.
struct Lines {
    v: usize,
    started: Instant,
    pending: Vec<u8>,
    quiet: bool,
    lock: Arc<Mutex<()>>,
}

impl Lines {
    fn emit(&mut self, line: &[u8]) {
        if self.quiet {
            return;
        }
        let _one = self.lock.lock();
        let mut e = io::stderr().lock();
        let _ = write!(
            e,
            "#{} {:.3} ",
            self.v,
            self.started.elapsed().as_secs_f64()
        );
        let _ = e.write_all(line);
        let _ = e.write_all(b"\n");
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.emit(&line[..line.len() - 1]);
        }
        // A line without an end is shown once it is long.
        if self.pending.len() > 64 << 10 {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

/// What `arca build` (and `arca compose build`) asks for: a Dockerfile (`-f`, a path of
/// the user's, `-`: stdin; the context's `Dockerfile` when absent), a context (a
/// directory, or `-`: a Dockerfile on stdin and no context) and the options.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// `-f`.
    pub file: Option<String>,
    /// The context argument.
    pub context: String,
    /// The options.
    pub opts: BuildOptions,
}

/// Why a build failed: BuildKit's words (after `ERROR: `) and Docker's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    /// The message.
    pub message: String,
    /// 1, or 130 when interrupted.
    pub code: i32,
}

/// Reads the request's Dockerfile and context and builds: Docker's exit codes (1 for a
/// failed build, with BuildKit's `failed to solve:` words).
pub fn build_request(state: &Path, req: &BuildRequest) -> Result<Built, BuildFailure> {
    let fail = |what: &str| {
        Err(BuildFailure {
            message: what.to_string(),
            code: 1,
        })
    };
    let read_stdin = || {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(dockerfile::MAX_DOCKERFILE as u64 + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
            return Err(std::io::Error::other(
                "a build context as a tar on stdin is not supported by arca build: give a context directory",
            ));
        }
        String::from_utf8(bytes)
            .map_err(|_| std::io::Error::other("the Dockerfile is not UTF-8 text"))
    };
    let (text, context) = if req.context == "-" {
        if req.file.is_some() {
            return fail(
                "unable to prepare context: -f cannot be used with a Dockerfile on stdin (`arca build -`)",
            );
        }
        match read_stdin() {
            Ok(t) => (t, Context::empty()),
            Err(e) => return fail(&format!("failed to read stdin: {e}")),
        }
    } else {
        let dir = PathBuf::from(&req.context);
        if !dir.is_dir() {
            return fail(&format!(
                "unable to prepare context: path {:?} not found",
                req.context
            ));
        }
        let context = match Context::dir(&dir) {
            Ok(c) => c,
            Err(e) => {
                return fail(&format!(
                    "unable to prepare context: {}",
                    crate::error_chain(&e)
                ));
            }
        };
        let text = match req.file.as_deref() {
            Some("-") => read_stdin(),
            // The user's own path.
            Some(f) => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(f)
                    .and_then(read_dockerfile)
            }
            // The context's, which is not trusted: found inside it (a symlink out of
            // it leads nowhere), a regular file.
            None => match context.open_file("Dockerfile") {
                Ok(Some(f)) => read_dockerfile(f),
                Ok(None) => Err(std::io::Error::other("not a regular file in the context")),
                Err(e) => Err(std::io::Error::other(crate::error_chain(&e))),
            },
        };
        match text {
            Ok(t) => (t, context),
            Err(e) => {
                let name = req.file.clone().unwrap_or_else(|| "Dockerfile".into());
                return fail(&format!(
                    "failed to solve: failed to read dockerfile {name}: {e}"
                ));
            }
        }
    };
    let df = match dockerfile::parse(&text) {
        Ok(d) => d,
        Err(e) => return fail(&format!("failed to solve: {e}")),
    };
    match build(state, &df, &context, &req.opts) {
        Ok(built) => Ok(built),
        Err(e @ BuildError::Interrupted) => Err(BuildFailure {
            message: format!("failed to solve: {e}"),
            code: 130,
        }),
        Err(e) => fail(&format!("failed to solve: {}", crate::error_chain(&e))),
    }
}

/// A Dockerfile's text: a regular file (not a FIFO or a device that would hang or
/// never end), at most `MAX_DOCKERFILE` bytes, UTF-8.
pub fn read_dockerfile(f: std::fs::File) -> std::io::Result<String> {
    use std::io::Read;
    let max = super::dockerfile::MAX_DOCKERFILE;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            max >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_and_stay_under_the_root() {
        assert_eq!(absolute("/", "app"), "/app");
        assert_eq!(absolute("/app", "src/.."), "/app");
        assert_eq!(absolute("/app", "../../../etc"), "/etc");
        assert_eq!(absolute("/app", "/abs/./x"), "/abs/x");
    }

    #[test]
    fn durations_read_as_go_reads_them() {
        assert_eq!(duration_ns("30s").unwrap(), 30_000_000_000);
        assert_eq!(duration_ns("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(duration_ns("500ms").unwrap(), 500_000_000);
        assert_eq!(duration_ns("1.5h").unwrap(), 5_400_000_000_000);
        assert!(duration_ns("10").is_err());
        assert!(duration_ns("5 s").is_err());
        assert!(duration_ns("").is_err());
    }

    #[test]
    fn env_is_set_by_name_in_order() {
        let mut c = scratch_config();
        env_set(&mut c, "A", "1");
        env_set(&mut c, "PATH", "/bin");
        env_set(&mut c, "A", "2=3");
        assert_eq!(env_list(&c), ["PATH=/bin", "A=2=3"]);
        assert_eq!(env_get(&c, "A").as_deref(), Some("2=3"));
        assert_eq!(env_get(&c, "B"), None);
    }

    #[test]
    fn cache_keys_chain() {
        let a = chain("image:1", &["RUN", "x"]);
        assert_eq!(a, chain("image:1", &["RUN", "x"]));
        assert_ne!(a, chain("image:2", &["RUN", "x"]));
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(chain("k", &["ab", "c"]), chain("k", &["a", "bc"]));
    }

    /// A hostile image's symlinks are never followed to find what a path is, or to
    /// read its accounts for --chown.
    #[test]
    fn image_lookups_do_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("app")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        std::os::unix::fs::symlink("/", root.join("host")).unwrap();
        assert_eq!(image_kind(&root, "/app"), Some(ImageKind::Dir));
        assert_eq!(image_kind(&root, "/etc/passwd"), Some(ImageKind::Other));
        assert_eq!(image_kind(&root, "/host"), Some(ImageKind::Other));
        assert_eq!(image_kind(&root, "/host/etc"), None);
        assert_eq!(image_kind(&root, "/nope"), None);
        assert_eq!(owner(Some(&root), "web").unwrap(), (33, 34));
        assert_eq!(owner(Some(&root), "web:staff").unwrap(), (33, 50));
        assert_eq!(owner(Some(&root), "10").unwrap(), (10, 10));
        assert_eq!(owner(Some(&root), "10:20").unwrap(), (10, 20));
        assert!(owner(Some(&root), "nobody").is_err());
        // /etc a symlink to the host's /etc: not read.
        let evil = t.path().join("evil");
        fs::create_dir_all(&evil).unwrap();
        std::os::unix::fs::symlink("/etc", evil.join("etc")).unwrap();
        assert!(owner(Some(&evil), "root").is_err());
        assert!(read_image_file(&evil, "etc/passwd").is_none());
    }

    /// Destinations resolve through the image's symlinks inside its root, never the
    /// host's: merged /usr, a relative link, an absolute link to the host's `/`, `..`
    /// at the root, a loop.
    #[test]
    fn destinations_resolve_inside_the_image() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("srv")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("/", r.join("srv/up")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("srv/out")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let resolve = |p: &str| resolve_in_image(r, p).unwrap();
        assert_eq!(resolve("/bin/sh"), "/usr/bin/sh");
        assert_eq!(resolve("/bin"), "/usr/bin");
        assert_eq!(resolve("/srv/up/x"), "/x");
        assert_eq!(resolve("/srv/out/passwd"), "/etc/passwd");
        assert_eq!(resolve("/../../a"), "/a");
        assert_eq!(resolve("/new/dir"), "/new/dir");
        // A loop ends in an error, never in a name the host would follow.
        assert!(
            resolve_in_image(r, "/loop/x")
                .unwrap_err()
                .to_string()
                .contains("too many levels")
        );
    }

    /// A layer's content digest ignores modification times, and nothing else.
    #[test]
    fn content_digests_ignore_times_only() {
        let t = tempfile::tempdir().unwrap();
        let layer = |name: &str, mtime: u64, mode: u32, data: &[u8]| {
            let p = t.path().join(name);
            let mut b = tar::Builder::new(fs::File::create(&p).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, "app/a.txt", data).unwrap();
            b.finish().unwrap();
            content_digest(&p).unwrap()
        };
        let a = layer("1", 100, 0o644, b"x");
        assert_eq!(a, layer("2", 999, 0o644, b"x"));
        assert_ne!(a, layer("3", 100, 0o755, b"x"));
        assert_ne!(a, layer("4", 100, 0o644, b"y"));
    }

    #[test]
    fn a_workdir_layer_makes_only_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("srv")).unwrap();
        let mut out = Vec::new();
        dir_layer(Some(t.path()), "/srv/app/data", &mut out).unwrap();
        let mut a = tar::Archive::new(out.as_slice());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["srv/app", "srv/app/data"]);
    }

    #[test]
    fn urls_are_told_apart_from_paths() {
        assert!(is_url("https://example.com/x.tar.gz"));
        assert!(is_url("git@github.com:a/b.git"));
        assert!(!is_url("http.txt"));
        assert!(!is_url("./https://x"));
    }

    #[test]
    fn healthchecks_are_stored_as_docker_stores_them() {
        let h = Health::Check {
            command: Command::Shell("curl -f localhost".into()),
            interval: Some("5s".into()),
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: Some("3".into()),
        };
        assert_eq!(
            health(&h).unwrap(),
            json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000u64, "Retries": 3})
        );
        assert_eq!(health(&Health::None).unwrap(), json!({"Test": ["NONE"]}));
    }
}
