//! `arca-agent`: PID 1 of an Arca microVM, or (`serve`) the same container runtime on
//! the host for `--isolation=process`.
//!
//! ```text
//! arca-agent                        as PID 1 of the guest: settings from /proc/cmdline
//! arca-agent serve --listen PATH    on the host: serve the protocol on a Unix socket
//!            [--run-dir DIR] [--cgroup-parent NAME]
//! arca-agent __dns ADDRESS PORT NET on the host: a network's resolver (see `resolver`)
//! ```

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use guest_agent::cmdline::AgentSettings;
use guest_agent::container::{Runtime, RuntimeConfig};
use guest_agent::reaper::Reaper;
use guest_agent::server::{Listener, Server, Stop};
use guest_agent::{helper, init, sys};

const USAGE: &str = "usage: arca-agent (as PID 1 of an Arca guest)\n       arca-agent serve --listen PATH [--run-dir DIR] [--cgroup-parent NAME]";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode @ ("__container-init" | "__exec")) = args.get(1).map(String::as_str) {
        helper::main(mode);
    }
    if args.get(1).map(String::as_str) == Some("__dns") {
        guest_agent::resolver::main(&args[2..]);
    }
    let result = match args.get(1).map(String::as_str) {
        Some("serve") => serve(&args[2..]),
        None if std::process::id() == 1 => guest_init(),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    if let Err(e) = result {
        eprintln!("arca-agent: {e:#}");
        if std::process::id() == 1 {
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn guest_init() -> anyhow::Result<()> {
    init::setup_pid1().context("PID 1 setup failed")?;
    init::mark(init::BOOT_MARKER_INIT);
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("Cannot read /proc/cmdline")?;
    let settings = AgentSettings::from_cmdline(&cmdline).context("Bad kernel command line")?;
    if let Some(h) = &settings.hostname {
        init::set_hostname(h)?;
    }
    let reaper = Reaper::start().context("Cannot start the reaper")?;
    let runtime = Runtime::new(RuntimeConfig::default(), reaper).map_err(anyhow::Error::msg)?;
    if let Some(p) = runtime.cgroup_problem() {
        eprintln!("arca-agent: containers get no cgroup: {p}");
    }
    let listener = sys::vsock_listen(settings.vsock_port)
        .with_context(|| format!("Cannot listen on vsock port {}", settings.vsock_port))?;
    let server = Server::new(Arc::new(runtime), settings.poweroff_when_idle, true);
    init::mark(init::BOOT_MARKER_AGENT_READY);
    eprintln!("arca-agent: ready on vsock port {}", settings.vsock_port);
    let why = server.run(Listener::Vsock(listener));
    eprintln!(
        "arca-agent: powering off ({})",
        if why == Stop::Idle {
            "no containers left"
        } else {
            "asked to"
        }
    );
    init::power_off();
}

fn serve(args: &[String]) -> anyhow::Result<()> {
    // What the agent makes for containers (their cgroup directories, which are their
    // /sys/fs/cgroup) must be readable by a container's non-root user, as runc's umask
    // 022 makes them, whatever umask it inherited (`arca` runs with 077).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let mut listen = None;
    let mut config = RuntimeConfig {
        on_host: true,
        ..RuntimeConfig::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(PathBuf::from(value()?)),
            "--run-dir" => config.run_dir = PathBuf::from(value()?),
            "--cgroup-parent" => config.cgroup_parent = value()?.clone(),
            other => bail!("Unknown option {other}\n{USAGE}"),
        }
    }
    let listen = listen.context("serve needs --listen PATH")?;
    if !rustix::process::geteuid().is_root() {
        bail!("arca-agent serve needs root (namespaces, mounts and cgroups)");
    }
    // Orphaned container processes come to us, not to the host's init.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("Cannot become a subreaper")?;
    if listen.exists() {
        // A socket nobody answers on is a leftover; anything else is the user's file.
        let live = std::os::unix::net::UnixStream::connect(&listen).is_ok();
        let is_socket =
            std::os::unix::fs::FileTypeExt::is_socket(&std::fs::metadata(&listen)?.file_type());
        if live || !is_socket {
            bail!("{} is in use", listen.display());
        }
        std::fs::remove_file(&listen)?;
    }
    let reaper = Reaper::start().context("Cannot start the reaper")?;
    let runtime = Runtime::new(config, reaper).map_err(anyhow::Error::msg)?;
    if let Some(p) = runtime.cgroup_problem() {
        eprintln!("arca-agent: containers get no cgroup: {p}");
    }
    // Its own socket is private (it also checks its peer).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let listener = UnixListener::bind(&listen)
        .with_context(|| format!("Cannot listen on {}", listen.display()))?;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let server = Server::new(Arc::new(runtime), false, false);
    server.run(Listener::Unix(listener));
    let _ = std::fs::remove_file(&listen);
    Ok(())
}
