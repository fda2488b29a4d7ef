//! What `arca run` was asked ([`RunOptions`], kept as `options.json` for a detached
//! container's monitor), and what the container's process becomes with its image:
//! Docker's rules for the command, environment, user and working directory.

use arca_protocol::{ProcessSpec, Resources};
use serde::{Deserialize, Serialize};

use super::record::Isolation;
use crate::error::RunError;
use crate::image::store::Image;
use crate::logs::LogOptions;
use crate::ports::PortMapping;

/// What `arca run` was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOptions {
    /// Image reference.
    pub image: String,
    /// Arguments after the image (replace the image's Cmd).
    pub args: Vec<String>,
    /// `--entrypoint` (an empty string clears the image's).
    pub entrypoint: Option<String>,
    /// `-e`, in order.
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--init`.
    pub init: bool,
    /// `-i`.
    pub interactive: bool,
    /// `-t`.
    #[serde(default)]
    pub tty: bool,
    /// `--isolation`.
    pub isolation: Isolation,
    /// Container name (a generated one when absent).
    pub name: Option<String>,
    /// `-d`.
    pub detach: bool,
    /// `--rm`.
    pub rm: bool,
    /// `--network`: a network's name, `none` or `host`; the default network if absent.
    #[serde(default)]
    pub network: Option<String>,
    /// `-p`.
    #[serde(default)]
    pub publish: Vec<PortMapping>,
    /// `--log-opt`: how the logs rotate.
    #[serde(default)]
    pub log: LogOptions,
    /// `--guest-console`: keep the microVM's console in `console.log`.
    #[serde(default)]
    pub guest_console: bool,
    /// `--read-only`: the root filesystem is mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `-v`, `--mount` and `--tmpfs`, as asked (the record has them made).
    #[serde(default)]
    pub mounts: Vec<crate::storage::MountRequest>,
    /// `--volumes-from`: containers whose mounts this one gets (`NAME[:ro|rw]`).
    #[serde(default)]
    pub volumes_from: Vec<String>,
    /// `--storage-opt size=`: the writable layer's size in bytes (microVMs).
    #[serde(default)]
    pub storage_size: Option<u64>,
}

impl RunOptions {
    /// Reads a detached container's `options.json`.
    pub fn load(dir: &std::path::Path) -> Result<Self, RunError> {
        let bytes = std::fs::read(dir.join("options.json"))
            .map_err(crate::error::io_err("read the container options"))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            RunError::Invalid(format!(
                "Corrupt container options in {}: {e}",
                dir.display()
            ))
        })
    }

    /// Writes them for the monitor.
    pub fn save(&self, dir: &std::path::Path) -> Result<(), RunError> {
        let bytes = serde_json::to_vec(self).map_err(|e| RunError::Invalid(e.to_string()))?;
        std::fs::write(dir.join("options.json"), bytes)
            .map_err(crate::error::io_err("write the container options"))
    }

    /// The cgroup limits asked for.
    pub fn resources(&self) -> Resources {
        Resources {
            memory_bytes: self.memory,
            cpu_quota_us: self.cpus.map(|c| (c * 100_000.0).round() as u64),
            cpu_period_us: self.cpus.map(|_| 100_000),
            pids_max: None,
        }
    }

    /// The container's main process: `args` (from [`command_line`]) with the image's
    /// environment, user and working directory under the options'.
    pub fn process(&self, image: &Image, args: Vec<String>) -> ProcessSpec {
        let cfg = &image.config.config;
        ProcessSpec {
            args,
            env: environment(image, &self.env),
            cwd: self
                .workdir
                .clone()
                .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty())),
            user: self
                .user
                .clone()
                .or_else(|| cfg.user.clone().filter(|u| !u.is_empty())),
            stdin: self.interactive && !self.tty,
            terminal: self.tty,
            ..Default::default()
        }
    }
}

/// Docker's rules: `--entrypoint` replaces the image's Entrypoint and drops its Cmd;
/// arguments replace Cmd; the command is Entrypoint + Cmd.
pub fn command_line(image: &Image, opts: &RunOptions) -> Result<Vec<String>, RunError> {
    let cfg = &image.config.config;
    let (entrypoint, default_cmd) = match &opts.entrypoint {
        Some(e) if e.is_empty() => (vec![], vec![]),
        Some(e) => (vec![e.clone()], vec![]),
        None => (
            cfg.entrypoint.clone().unwrap_or_default(),
            cfg.cmd.clone().unwrap_or_default(),
        ),
    };
    let cmd = if opts.args.is_empty() {
        default_cmd
    } else {
        opts.args.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(RunError::Invalid(format!(
            "No command specified: image {} has no Entrypoint or Cmd; give one after the image name",
            opts.image
        )));
    }
    Ok(argv)
}

/// The image's Env with `-e` entries overriding by key (`-e KEY` alone takes the
/// value from this environment, as Docker does, and is dropped if unset).
pub fn environment(image: &Image, overrides: &[String]) -> Vec<String> {
    let mut env: Vec<String> = image.config.config.env.clone().unwrap_or_default();
    for e in overrides {
        let entry = match e.split_once('=') {
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = entry
            .split_once('=')
            .map_or(entry.as_str(), |(k, _)| k)
            .to_string();
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        env.push(entry);
    }
    env
}
