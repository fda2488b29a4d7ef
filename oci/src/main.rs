//! `arca-runtime`: an OCI runtime command line over Arca (see the library's docs and
//! docs/oci.md). Errors go to stderr (and to `--log` if given) and exit 1, as runc's.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use arca_oci::{OciError, commands};
use clap::{Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

#[derive(Parser, Debug)]
#[command(
    name = "arca-runtime",
    version,
    about = "An OCI runtime that runs containers with Arca"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
    /// Internal: the process that holds a container.
    #[command(name = "__monitor", hide = true)]
    Monitor { id: String },
    /// Internal: the process that holds an `exec --detach`.
    #[command(name = "__exec", hide = true)]
    Exec { id: String, n: String },
}

fn main() {
    let cli = Cli::parse();
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(commands::DEFAULT_ROOT));
    let log = cli.global.log.clone();
    match dispatch(&root, cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let message = arca_runtime::error_chain(&e);
            eprintln!("arca-runtime: {message}");
            if let Some(log) = log {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                {
                    let _ = writeln!(
                        f,
                        "{}",
                        serde_json::json!({"level": "error", "msg": message})
                    );
                }
            }
            std::process::exit(1);
        }
    }
}

fn unsupported(what: &str) -> OciError {
    OciError::Invalid(format!("{what} is not supported by arca-runtime"))
}

fn dispatch(root: &Path, cli: Cli) -> Result<i32, OciError> {
    if cli.global.systemd_cgroup {
        return Err(unsupported("--systemd-cgroup"));
    }
    match cli.command {
        Cmd::Monitor { id } => Ok(arca_oci::monitor::run(&arca_oci::container::Dir::of(
            root, &id,
        )?)),
        Cmd::Exec { id, n } => Ok(commands::exec_monitor(root, &id, &n)),
        Cmd::Standard(c) => match *c {
            StandardCmd::Create(a) => {
                if a.no_pivot {
                    return Err(unsupported("--no-pivot"));
                }
                commands::create(
                    root,
                    &a.container_id,
                    &a.bundle,
                    a.pid_file.as_deref(),
                    a.preserve_fds,
                )?;
                Ok(0)
            }
            StandardCmd::Start(a) => commands::start(root, &a.container_id).map(|()| 0),
            StandardCmd::State(a) => {
                let s = commands::state(root, &a.container_id)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("state serializes")
                );
                Ok(0)
            }
            StandardCmd::Kill(a) => {
                commands::kill(root, &a.container_id, &a.signal, a.all).map(|()| 0)
            }
            StandardCmd::Delete(a) => commands::delete(root, &a.container_id, a.force)
                .or_else(|e| match e {
                    // As runc: deleting what is not there with --force is done.
                    OciError::NotFound(_) if a.force => Ok(()),
                    e => Err(e),
                })
                .map(|()| 0),
        },
        Cmd::Common(c) => match *c {
            CommonCmd::Run(a) => {
                if a.no_pivot {
                    return Err(unsupported("--no-pivot"));
                }
                if a.preserve_fds > 0 {
                    return Err(unsupported("--preserve-fds"));
                }
                commands::run(
                    root,
                    &a.container_id,
                    &a.bundle,
                    a.pid_file.as_deref(),
                    a.detach,
                    a.keep,
                )
            }
            CommonCmd::Exec(a) => {
                if a.tty || a.console_socket.is_some() {
                    return Err(unsupported("exec with a terminal"));
                }
                for (set, what) in [
                    (a.preserve_fds > 0, "--preserve-fds"),
                    (a.process_label.is_some(), "--process-label"),
                    (a.apparmor.is_some(), "--apparmor"),
                    (!a.cap.is_empty(), "exec --cap"),
                    (a.cgroup.is_some(), "exec --cgroup"),
                ] {
                    if set {
                        return Err(unsupported(what));
                    }
                }
                let process = match &a.process {
                    Some(path) => {
                        let text = std::fs::read(path).map_err(|source| OciError::Io {
                            action: format!("read {}", path.display()),
                            source,
                        })?;
                        let p: oci_spec::runtime::Process = serde_json::from_slice(&text)
                            .map_err(|e| OciError::Invalid(format!("{}: {e}", path.display())))?;
                        commands::ExecProcess::Oci(Box::new(p))
                    }
                    None => {
                        if a.command.is_empty() {
                            return Err(OciError::Invalid(
                                "exec needs a command or --process".into(),
                            ));
                        }
                        commands::ExecProcess::Command {
                            args: a.command.clone(),
                            env: a.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                            cwd: a.cwd.as_ref().map(|c| c.display().to_string()),
                            user: a.user.map(|(u, g)| match g {
                                Some(g) => format!("{u}:{g}"),
                                None => u.to_string(),
                            }),
                            additional_gids: a.additional_gids.clone(),
                            no_new_privs: a.no_new_privs,
                        }
                    }
                };
                commands::exec(
                    root,
                    &a.container_id,
                    process,
                    a.pid_file.as_deref(),
                    a.detach,
                )
            }
            CommonCmd::Ps(a) => {
                println!("{}", commands::ps(root, &a.container_id, &a.format)?);
                Ok(0)
            }
            CommonCmd::List(a) => {
                let out = commands::list(root, &a.format, a.quiet)?;
                if !out.is_empty() {
                    println!("{out}");
                }
                Ok(0)
            }
            CommonCmd::Pause(a) => commands::freeze(root, &a.container_id, true).map(|()| 0),
            CommonCmd::Resume(a) => commands::freeze(root, &a.container_id, false).map(|()| 0),
            CommonCmd::Features(_) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&commands::features()).expect("serializes")
                );
                Ok(0)
            }
            CommonCmd::Checkpointt(_) => Err(unsupported("checkpoint")),
            CommonCmd::Events(_) => Err(unsupported("events")),
            CommonCmd::Update(_) => Err(unsupported("update")),
            CommonCmd::Spec(_) => Err(unsupported("spec")),
        },
    }
}
