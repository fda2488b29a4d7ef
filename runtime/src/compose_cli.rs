//! `arca compose`: the flags (Docker Compose's), over `arca_runtime::compose`.

use std::path::{Path, PathBuf};

use arca_runtime::compose::load::{LoadOptions, load};
use arca_runtime::compose::model::Project;
use arca_runtime::compose::{ComposeError, ops};
use arca_runtime::error_chain;

/// `arca compose [OPTIONS] COMMAND`.
#[derive(clap::Args, Debug)]
pub struct ComposeArgs {
    /// Compose files (repeatable; later ones merge over earlier ones; `-` is stdin).
    #[arg(short = 'f', long = "file")]
    file: Vec<PathBuf>,
    /// Project name.
    #[arg(short = 'p', long = "project-name")]
    project_name: Option<String>,
    /// Alternate working directory (default: the first file's directory).
    #[arg(long = "project-directory")]
    project_directory: Option<PathBuf>,
    /// Alternate environment files (default: the project directory's .env).
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// Profiles to enable (with COMPOSE_PROFILES').
    #[arg(long)]
    profile: Vec<String>,
    /// Progress output: auto, plain, tty or quiet (Arca's is always plain).
    #[arg(long, default_value = "auto")]
    progress: String,
    #[command(subcommand)]
    command: ComposeCmd,
}

#[derive(clap::Subcommand, Debug)]
enum ComposeCmd {
    /// Create and start containers.
    Up {
        /// Detached mode: run containers in the background.
        #[arg(short, long)]
        detach: bool,
        /// Build images before starting containers.
        #[arg(long)]
        build: bool,
        /// Don't build an image, even if it's missing.
        #[arg(long)]
        no_build: bool,
        /// Recreate containers even if their configuration hasn't changed.
        #[arg(long)]
        force_recreate: bool,
        /// If containers already exist, don't recreate them.
        #[arg(long)]
        no_recreate: bool,
        /// Don't start linked services.
        #[arg(long)]
        no_deps: bool,
        /// Remove containers for services not defined in the Compose file.
        #[arg(long)]
        remove_orphans: bool,
        /// Wait for services to be running|healthy (implies detached mode).
        #[arg(long)]
        wait: bool,
        /// Shutdown timeout in seconds.
        #[arg(short, long)]
        timeout: Option<u64>,
        /// Scale SERVICE to NUM instances (SERVICE=NUM; overrides `scale` and
        /// `deploy.replicas`).
        #[arg(long)]
        scale: Vec<String>,
        /// Services.
        services: Vec<String>,
    },
    /// Stop and remove containers, networks.
    Down {
        /// Remove named volumes declared in the volumes section and anonymous volumes
        /// attached to containers.
        #[arg(short, long)]
        volumes: bool,
        /// Remove containers for services not defined in the Compose file.
        #[arg(long)]
        remove_orphans: bool,
        /// Shutdown timeout in seconds.
        #[arg(short, long)]
        timeout: Option<u64>,
        /// Remove images used by services (not supported: refused).
        #[arg(long)]
        rmi: Option<String>,
    },
    /// List containers.
    Ps {
        /// Show all stopped containers.
        #[arg(short, long)]
        all: bool,
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Display services.
        #[arg(long)]
        services: bool,
        /// Services.
        names: Vec<String>,
    },
    /// View output from containers.
    Logs {
        /// Follow log output.
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of the logs for each container.
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Show timestamps.
        #[arg(short, long)]
        timestamps: bool,
        /// Don't print prefix in logs.
        #[arg(long)]
        no_log_prefix: bool,
        /// Services.
        services: Vec<String>,
    },
    /// Execute a command in a running container.
    Exec {
        /// Detached mode: run the command in the background.
        #[arg(short, long)]
        detach: bool,
        /// Disable pseudo-TTY allocation (by default one is allocated when stdin is a
        /// terminal).
        #[arg(short = 'T', long = "no-TTY")]
        no_tty: bool,
        /// Set environment variables.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Run the command as this user.
        #[arg(short, long)]
        user: Option<String>,
        /// Path to workdir directory for this command.
        #[arg(short, long)]
        workdir: Option<String>,
        /// Give extended privileges to the process.
        #[arg(long)]
        privileged: bool,
        /// Keep stdin open (Compose's default: accepted, always on).
        #[arg(short = 'i', long = "interactive", hide = true)]
        _interactive: bool,
        /// Allocate a pseudo-TTY (Compose's default: accepted; -T turns it off).
        #[arg(short = 't', long = "tty", hide = true)]
        _tty: bool,
        /// Index of the container if service has multiple replicas.
        #[arg(long, default_value_t = 1)]
        index: u32,
        /// The service.
        service: String,
        /// The command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Run a one-off command on a service.
    Run {
        /// Automatically remove the container when it exits.
        #[arg(long)]
        rm: bool,
        /// Run container in background and print container ID.
        #[arg(short, long)]
        detach: bool,
        /// Assign a name to the container.
        #[arg(long)]
        name: Option<String>,
        /// Override the entrypoint of the image.
        #[arg(long)]
        entrypoint: Option<String>,
        /// Set environment variables.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Run as specified username or uid.
        #[arg(short, long)]
        user: Option<String>,
        /// Working directory inside the container.
        #[arg(short, long)]
        workdir: Option<String>,
        /// Disable pseudo-TTY allocation (default: auto-detected).
        #[arg(short = 'T', long = "no-TTY")]
        no_tty: bool,
        /// Don't start linked services.
        #[arg(long)]
        no_deps: bool,
        /// Run command with all service's ports enabled and mapped to the host.
        #[arg(long)]
        service_ports: bool,
        /// Keep stdin open (Compose's default: accepted, always on).
        #[arg(short = 'i', long = "interactive", hide = true)]
        _interactive: bool,
        /// Allocate a pseudo-TTY (Compose's default: accepted; -T turns it off).
        #[arg(short = 't', long = "tty", hide = true)]
        _tty: bool,
        /// Publish a container's port(s) to the host.
        #[arg(short, long)]
        publish: Vec<String>,
        /// Bind mount a volume.
        #[arg(short, long)]
        volume: Vec<String>,
        /// The service.
        service: String,
        /// The command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Start services.
    Start {
        /// Services.
        services: Vec<String>,
    },
    /// Stop services.
    Stop {
        /// Specify a shutdown timeout in seconds.
        #[arg(short, long)]
        timeout: Option<u64>,
        /// Services.
        services: Vec<String>,
    },
    /// Restart service containers.
    Restart {
        /// Specify a shutdown timeout in seconds.
        #[arg(short, long)]
        timeout: Option<u64>,
        /// Services.
        services: Vec<String>,
    },
    /// Build or rebuild services.
    Build {
        /// Do not use cache when building the image.
        #[arg(long)]
        no_cache: bool,
        /// Always attempt to pull a newer version of the image.
        #[arg(long)]
        pull: bool,
        /// Services.
        services: Vec<String>,
    },
    /// Pull service images.
    Pull {
        /// Pull without printing progress information.
        #[arg(short, long)]
        quiet: bool,
        /// Services.
        services: Vec<String>,
    },
    /// Parse, resolve and render the compose file in canonical format.
    Config {
        /// Only validate the configuration, don't print anything.
        #[arg(short, long)]
        quiet: bool,
        /// Print the service names, one per line.
        #[arg(long)]
        services: bool,
        /// Print the volume names, one per line.
        #[arg(long)]
        volumes: bool,
        /// Print the profile names, one per line.
        #[arg(long)]
        profiles: bool,
    },
}

/// Runs `arca compose`; returns the exit code (Compose's 1 for its own errors; `run`
/// and `exec` the command's, or Docker's 125/126/127).
pub fn compose(state: &Path, a: ComposeArgs) -> i32 {
    match compose_inner(state, a) {
        Ok(code) => code,
        Err(ComposeError::Run(e)) if e.exit_code() != 125 => {
            eprintln!("{}", error_chain(&e));
            e.exit_code()
        }
        Err(e) => {
            eprintln!("{}", error_chain(&e));
            1
        }
    }
}

fn compose_inner(state: &Path, a: ComposeArgs) -> Result<i32, ComposeError> {
    if !matches!(a.progress.as_str(), "auto" | "plain" | "tty" | "quiet") {
        return Err(ComposeError::Invalid(format!(
            "invalid --progress {:?}: auto, plain, tty or quiet",
            a.progress
        )));
    }
    let cwd = std::env::current_dir().map_err(|source| ComposeError::Io {
        what: "find the working directory".into(),
        source,
    })?;
    // Services named on the command line are enabled whatever their profiles.
    let targeted = match &a.command {
        ComposeCmd::Up { services, .. }
        | ComposeCmd::Logs { services, .. }
        | ComposeCmd::Start { services }
        | ComposeCmd::Stop { services, .. }
        | ComposeCmd::Restart { services, .. }
        | ComposeCmd::Build { services, .. }
        | ComposeCmd::Pull { services, .. } => services.clone(),
        ComposeCmd::Ps { names, .. } => names.clone(),
        ComposeCmd::Exec { service, .. } | ComposeCmd::Run { service, .. } => vec![service.clone()],
        ComposeCmd::Down { .. } | ComposeCmd::Config { .. } => Vec::new(),
    };
    let opts = LoadOptions {
        files: a.file,
        project_name: a.project_name,
        project_dir: a.project_directory,
        env_files: a.env_file,
        profiles: a.profile,
        targeted,
    };
    let mut project = Project::from_loaded(load(&opts, &cwd)?)?;
    if let ComposeCmd::Up { scale, .. } = &a.command {
        for spec in scale {
            let (svc, n) = spec.split_once('=').ok_or_else(|| {
                ComposeError::Invalid(format!("invalid --scale {spec:?}: use SERVICE=NUM"))
            })?;
            let n: u32 = n.parse().ok().filter(|n| *n <= 100).ok_or_else(|| {
                ComposeError::Invalid(format!(
                    "invalid --scale {spec:?}: NUM is a count from 0 to 100"
                ))
            })?;
            let s = project
                .services
                .get_mut(svc)
                .ok_or_else(|| ComposeError::NoService(svc.to_string()))?;
            if s.container_name.is_some() && n > 1 {
                return Err(ComposeError::Invalid(format!(
                    "service {svc:?} has a container_name: it cannot be scaled to {n}"
                )));
            }
            s.replicas = n;
        }
    }
    for w in &project.warnings {
        eprintln!("WARN[0000] {w}");
    }
    let p = &project;
    match a.command {
        ComposeCmd::Up {
            detach,
            build,
            no_build,
            force_recreate,
            no_recreate,
            no_deps,
            remove_orphans,
            wait,
            timeout,
            services,
            ..
        } => {
            if build && no_build {
                return Err(ComposeError::Invalid(
                    "--build and --no-build are incompatible".into(),
                ));
            }
            if force_recreate && no_recreate {
                return Err(ComposeError::Invalid(
                    "--force-recreate and --no-recreate are incompatible".into(),
                ));
            }
            ops::up(
                state,
                p,
                &ops::UpOptions {
                    detach: detach || wait,
                    build,
                    no_build,
                    force_recreate,
                    no_recreate,
                    no_deps,
                    remove_orphans,
                    wait,
                    timeout,
                    services,
                },
            )
        }
        ComposeCmd::Down {
            volumes,
            remove_orphans,
            timeout,
            rmi,
        } => {
            if rmi.is_some() {
                return Err(ComposeError::Unsupported("--rmi".into()));
            }
            ops::down(
                state,
                p,
                ops::DownOptions {
                    volumes,
                    remove_orphans,
                    timeout,
                },
            )?;
            Ok(0)
        }
        ComposeCmd::Ps {
            all,
            quiet,
            services,
            names,
        } => {
            print!(
                "{}",
                ops::ps(
                    state,
                    p,
                    &ops::PsOptions {
                        all,
                        quiet,
                        services,
                        only: names,
                    },
                )?
            );
            Ok(0)
        }
        ComposeCmd::Logs {
            follow,
            tail,
            timestamps,
            no_log_prefix,
            services,
        } => {
            let tail = match tail.as_str() {
                "all" | "" => None,
                n => match n.parse::<i64>() {
                    Ok(n) => usize::try_from(n).ok(),
                    Err(_) => {
                        return Err(ComposeError::Invalid(format!(
                            "invalid value for \"tail\": {n:?}: use \"all\" or a number of lines"
                        )));
                    }
                },
            };
            ops::logs(
                state,
                p,
                &services,
                &ops::FollowOptions {
                    follow,
                    tail,
                    timestamps,
                    prefix: !no_log_prefix,
                    exits: false,
                },
            )
        }
        ComposeCmd::Exec {
            detach,
            no_tty,
            env,
            user,
            workdir,
            privileged,
            index,
            service,
            command,
            ..
        } => {
            let tty = !no_tty && !detach && terminals();
            let process = arca_protocol::ProcessSpec {
                args: command,
                env,
                cwd: workdir,
                user,
                stdin: !detach,
                terminal: tty,
                detached: detach,
                privileged,
                ..Default::default()
            };
            ops::exec(state, p, &service, index, process)
        }
        ComposeCmd::Run {
            rm,
            detach,
            name,
            entrypoint,
            env,
            user,
            workdir,
            no_tty,
            no_deps,
            service_ports,
            publish,
            volume,
            service,
            command,
            ..
        } => {
            let mut ports = Vec::new();
            for spec in &publish {
                ports.extend(arca_runtime::ports::parse(spec).map_err(ComposeError::Invalid)?);
            }
            let mut mounts = Vec::new();
            for v in &volume {
                mounts.push(
                    arca_runtime::storage::parse_volume(v)
                        .map_err(|e| ComposeError::Invalid(e.to_string()))?,
                );
            }
            let tty = !no_tty && !detach && terminals();
            ops::run(
                state,
                p,
                &service,
                &ops::RunOneOff {
                    rm,
                    detach,
                    name,
                    entrypoint,
                    env,
                    user,
                    workdir,
                    tty,
                    interactive: !detach,
                    no_deps,
                    service_ports,
                    publish: ports,
                    mounts,
                    command,
                },
            )
        }
        ComposeCmd::Start { services } => ops::start(state, p, &services).map(|()| 0),
        ComposeCmd::Stop { timeout, services } => {
            ops::stop(state, p, &services, timeout).map(|()| 0)
        }
        ComposeCmd::Restart { timeout, services } => {
            ops::restart(state, p, &services, timeout).map(|()| 0)
        }
        ComposeCmd::Build {
            no_cache,
            pull,
            services,
        } => ops::build(state, p, &services, no_cache, pull).map(|()| 0),
        ComposeCmd::Pull { quiet, services } => ops::pull(state, p, &services, quiet).map(|()| 0),
        ComposeCmd::Config {
            quiet,
            services,
            volumes,
            profiles,
        } => {
            if quiet {
                return Ok(0);
            }
            if profiles {
                // Every profile a service of the files names, active or not.
                let mut all = std::collections::BTreeSet::new();
                if let Some(m) = p.doc.get("services").and_then(|s| s.as_mapping()) {
                    for (_, v) in m {
                        if let Some(serde_norway::Value::Sequence(ps)) = v.get("profiles") {
                            all.extend(ps.iter().filter_map(|x| x.as_str()).map(str::to_string));
                        }
                    }
                }
                for name in all {
                    println!("{name}");
                }
                return Ok(0);
            }
            if services {
                for s in p.services.keys() {
                    println!("{s}");
                }
            } else if volumes {
                for v in p.volumes.keys() {
                    println!("{v}");
                }
            } else {
                print!("{}", ops::config(p)?);
            }
            Ok(0)
        }
    }
}

/// Whether stdin and stdout are terminals (a `run` or `exec` then gets one, as
/// Compose's, unless `-T`; output to a file or pipe never passes through one).
fn terminals() -> bool {
    rustix::termios::isatty(std::io::stdin()) && rustix::termios::isatty(std::io::stdout())
}
