//! A network's resolver: Docker's embedded DNS, served as Podman's aardvark-dns serves
//! it, on the network's gateway address on the host, so that a container may run its
//! own DNS server on port 53 (a resolver inside the container's namespace would hold
//! that port). Containers' `/etc/resolv.conf` names the gateway, whose port 53 the
//! network's rules send to the resolver's port ([`network::resolver_port`]: a DNS
//! server of the host's on every address is neither in the way nor reachable); the resolver answers
//! the names of the containers on the network as they are now (each one's name, short
//! ID and `--network-alias`es, at its current address: a container started later
//! resolves, a removed one no longer does, a restarted one resolves to its new address)
//! and forwards the rest to the container's `--dns` servers or the host's.
//!
//! `arca __dns NETWORK`, started by the first container that needs it, holds
//! `dns.lock` in the network's directory while it runs, says `dns.ready` while it
//! serves, and ends once the network has had no container for [`IDLE`] (at once when
//! it has none and its bridge or directory is gone). It reads the
//! network's leases every [`POLL`], the containers' names when the leases changed or
//! [`RESCAN`] passed, and hands each changed table
//! to its child `arca-agent __dns GATEWAY PORT SUBNET` ([`guest_agent`'s resolver]), which parses
//! the containers' queries as `nobody`, without capabilities, under seccomp.
//!
//! [`guest_agent`'s resolver]: ../../guest-agent/src/resolver.rs

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::container::RunOptions;
use crate::container::names::host_names;
use crate::container::record::containers_dir;
use crate::network::{self, Network};

/// How often the network's leases are looked at (a container come or gone changes the
/// table at once).
const POLL: Duration = Duration::from_millis(100);
/// How often the whole table is read again anyway (a rename).
const RESCAN: Duration = Duration::from_secs(1);
/// How long the resolver stays once its network has no container (the bridge going
/// down, or `network rm`, ends it at once).
const IDLE: Duration = Duration::from_secs(30);
/// How long a container's start waits for the resolver to serve.
const START_WAIT: Duration = Duration::from_secs(10);
/// How often a running container's monitor checks that its network's resolver is
/// there ([`Watch`]).
const WATCH: Duration = Duration::from_secs(2);

/// Errors of the resolver process.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The network is gone.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// `arca-agent` is missing.
    #[error(transparent)]
    Agent(#[from] crate::guest::GuestError),
    /// Its files, or its child.
    #[error("Cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &str) -> impl FnOnce(io::Error) -> DnsError + '_ {
    move |source| DnsError::Io {
        action: action.to_string(),
        source,
    }
}

/// Whether the resolver of `net` serves (started now if need be, waited for). A
/// resolver that cannot serve (its port taken) is reported once per start, on stderr:
/// the container then gets the upstream servers themselves, and no container names.
pub fn ensure(state: &Path, net: &Network) -> bool {
    let dir = network::dir(state, &net.name);
    let deadline = Instant::now() + START_WAIT;
    let mut started: Option<std::process::Child> = None;
    loop {
        let held = crate::state::lock_file(
            &dir.join("dns.lock"),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_err();
        if held && dir.join("dns.ready").exists() {
            return true;
        }
        // One that ended well found another serving (which may have ended since):
        // start another; one that failed says why.
        if let Some(child) = &mut started
            && let Ok(Some(status)) = child.try_wait()
        {
            if !status.success() {
                let log = std::fs::read_to_string(dir.join("dns.log")).unwrap_or_default();
                let why = log.lines().last().unwrap_or("it ended").to_string();
                return unavailable(&net.name, &why);
            }
            started = None;
        }
        if !held && started.is_none() {
            match spawn(state, &dir, &net.name) {
                Ok(child) => started = Some(child),
                Err(e) => return unavailable(&net.name, &e.to_string()),
            }
        }
        if Instant::now() > deadline {
            return unavailable(&net.name, "it did not come up within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Keeps a network's resolver serving while a container on it runs: a thread of the
/// container's monitor that looks every [`WATCH`] whether a resolver holds the
/// network's `dns.lock`, and starts one ([`ensure`]) when none does (it was killed, or
/// crashed; one never ends on its own while the network has containers). Stopped when
/// dropped.
#[derive(Debug)]
pub struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Starts watching `net`'s resolver; `None` if no thread could be made.
    pub fn start(state: &Path, net: &Network) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, state, net) = (stop.clone(), state.to_path_buf(), net.clone());
        let thread = std::thread::Builder::new()
            .name("dns-watch".into())
            .spawn(move || {
                loop {
                    let deadline = Instant::now() + WATCH;
                    while Instant::now() < deadline {
                        if seen.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    // At once when one serves; else it starts one.
                    ensure(&state, &net);
                }
            })
            .ok()?;
        Some(Watch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watch {
    /// Tells the thread to stop (it does within 0.1 s) without waiting for it: a container's teardown (its
    /// address given back) is not held up.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.thread.take());
    }
}

fn unavailable(name: &str, why: &str) -> bool {
    eprintln!(
        "WARNING: network {name} has no resolver ({}): containers on it get the upstream name servers and cannot look each other up by name",
        crate::printable(why)
    );
    false
}

/// Starts `arca __dns NAME`, detached.
fn spawn(state: &Path, dir: &Path, name: &str) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("dns.log"))?;
    Command::new(std::env::current_exe()?)
        .arg("--state-dir")
        .arg(state)
        .args(["__dns", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
}

/// The names one container answers to on its network: its name, its short ID and its
/// `--network-alias`es (those that are valid host names, at most 16).
fn names_of(state: &Path, key: &str, opts: Option<&RunOptions>) -> Vec<String> {
    let mut names = host_names(state, key);
    if let Some(opts) = opts {
        names.extend(opts.network_aliases.iter().cloned());
    }
    let mut seen = std::collections::BTreeSet::new();
    names
        .into_iter()
        .filter(|n| arca_protocol::valid_host_name(n) && seen.insert(n.to_ascii_lowercase()))
        .take(16)
        .collect()
}

/// The table of `members` (address, container key): their names, the host's upstream
/// servers, and those of the containers with `--dns` of their own.
fn table(state: &Path, members: &[(Ipv4Addr, String)], upstream: &[Ipv4Addr]) -> String {
    let mut entries = Vec::new();
    let mut clients = Vec::new();
    for (address, key) in members {
        let opts = RunOptions::load(&containers_dir(state).join(key)).ok();
        let names = names_of(state, key, opts.as_ref());
        if !names.is_empty() {
            entries.push(json!([address, names]));
        }
        if let Some(opts) = opts
            && !opts.dns.is_empty()
        {
            clients.push(json!([address, opts.dns]));
        }
    }
    json!({"entries": entries, "upstream": upstream, "clients": clients}).to_string()
}

/// Entry of `arca __dns NAME`: serves network NAME's names until it has had no
/// container for [`IDLE`] (at once if another resolver serves it).
pub fn serve(state: &Path, name: &str) -> Result<(), DnsError> {
    let net = network::get(state, name)?;
    let dir = network::dir(state, name);
    let Ok(_lock) = crate::state::lock_file(
        &dir.join("dns.lock"),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) else {
        return Ok(());
    };
    let ready = dir.join("dns.ready");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(crate::guest::agent_binary()?)
        .args([
            "__dns".to_string(),
            net.gateway.to_string(),
            network::resolver_port(&net).to_string(),
            net.cidr(),
        ])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io_err("start the resolver"))?;
    let result = feed(state, &net, &mut child, &ready);
    let _ = std::fs::remove_file(&ready);
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Waits for the child to listen, then hands it each new table until the network
/// stays empty.
fn feed(
    state: &Path,
    net: &Network,
    child: &mut std::process::Child,
    ready: &PathBuf,
) -> Result<(), DnsError> {
    let mut out = child.stdout.take().ok_or_else(|| DnsError::Io {
        action: "read the resolver".into(),
        source: io::ErrorKind::BrokenPipe.into(),
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = tx.send(out.read_exact(&mut byte).is_ok());
    });
    if rx.recv_timeout(START_WAIT) != Ok(true) {
        return Err(DnsError::Io {
            action: format!(
                "serve DNS on {}:{}",
                net.gateway,
                network::resolver_port(net)
            ),
            source: io::Error::other("the resolver did not come up (see above)"),
        });
    }
    let mut input = child.stdin.take().ok_or_else(|| DnsError::Io {
        action: "write to the resolver".into(),
        source: io::ErrorKind::BrokenPipe.into(),
    })?;
    let upstream = network::name_servers();
    let mut last = String::new();
    let mut seen: Option<(Vec<(Ipv4Addr, String)>, Instant)> = None;
    let mut empty_since: Option<Instant> = None;
    std::fs::write(ready, std::process::id().to_string()).map_err(io_err("mark it ready"))?;
    loop {
        let members = network::members(state, net, "");
        if members.is_empty() {
            // Its network removed, or its bridge down (the last container gone, which
            // stops the resolver it knew of: this one may have been started by a
            // container's watch as that one went): nothing to serve, and its port is
            // the next network's of that subnet.
            if !network::dir(state, &net.name).exists()
                || crate::netlink::link_index(&net.bridge).is_none()
            {
                return Ok(());
            }
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= IDLE {
                // No longer ready first: a container that joins now starts another
                // resolver, or finds this one going on.
                let _ = std::fs::remove_file(ready);
                if network::members(state, net, "").is_empty() {
                    return Ok(());
                }
                std::fs::write(ready, std::process::id().to_string())
                    .map_err(io_err("mark it ready"))?;
            }
        } else {
            empty_since = None;
        }
        let fresh = seen
            .as_ref()
            .is_some_and(|(m, at)| *m == members && at.elapsed() < RESCAN);
        if !fresh {
            let t = table(state, &members, &upstream);
            if t != last {
                input
                    .write_all(format!("{t}\n").as_bytes())
                    .map_err(io_err("hand the resolver its table"))?;
                last = t;
            }
            seen = Some((members, Instant::now()));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DnsError::Io {
                action: "keep the resolver running".into(),
                source: io::Error::other(format!("it ended ({status})")),
            });
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_name_each_container_and_its_own_upstream() {
        let state = tempfile::tempdir().unwrap();
        let dir = containers_dir(state.path()).join("0123456789ab");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::container::record::NAME_FILE), "web\n").unwrap();
        let mut opts = RunOptions::default_for("busybox");
        opts.network_aliases = vec!["www".into(), "WEB".into(), "bad name".into()];
        opts.dns = vec![Ipv4Addr::new(10, 0, 0, 53)];
        opts.save(&dir).unwrap();
        let t: serde_json::Value = serde_json::from_str(&table(
            state.path(),
            &[(Ipv4Addr::new(10, 89, 1, 2), "0123456789ab".into())],
            &[Ipv4Addr::new(8, 8, 8, 8)],
        ))
        .unwrap();
        assert_eq!(
            t,
            json!({
                "entries": [["10.89.1.2", ["web", "0123456789ab", "www"]]],
                "upstream": ["8.8.8.8"],
                "clients": [["10.89.1.2", ["10.0.0.53"]]],
            })
        );
    }
}
