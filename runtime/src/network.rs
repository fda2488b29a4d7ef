//! Container networks: `arca network create/ls/rm/inspect`, addresses for containers,
//! and the host side of their links.
//!
//! A network is a definition in `<state>/networks/<name>/network.json` (its subnet,
//! gateway and bridge name) plus one lease file per address in use,
//! `leases/<address>`, holding the container's id; creating the file (O_EXCL) is the
//! allocation. The kernel objects, a Linux bridge with the gateway address and
//! nftables tables of its own (masquerade for traffic leaving the host, isolation from
//! other Arca networks, from the host itself and from link-local addresses, and
//! per-link anti-spoofing rules), exist only while a running container uses the
//! network: the first container brings them up, and [`reconcile`] takes them down
//! once no lease belongs to a running container, which is also how leftovers of a
//! killed monitor or VMM go away. A container's own link (a veth pair with process isolation, a TAP with
//! a microVM) dies with its network namespace or VMM.
//!
//! Links, bridges and each link's anti-spoofing elements are made over netlink
//! ([`crate::netlink`]), so a container start runs no `ip` or `nft`; a network's
//! tables are written with `nft` when its bridge is made (their rules read as an
//! administrator would write them by hand).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::netlink::{self, NetlinkError};

/// Errors of network operations. Messages name the network, address or command.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request is invalid (bad name, subnet, overlap, in use).
    #[error("{0}")]
    Invalid(String),
    /// No such network.
    #[error("network {0} not found")]
    NotFound(String),
    /// Every address of the subnet is taken.
    #[error("No free address left in network {0}")]
    Exhausted(String),
    /// A host command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A host tool is missing.
    #[error("Networking needs `{0}` (Debian package {1}); install it or use --network none")]
    MissingTool(&'static str, &'static str),
    /// A local file operation failed.
    #[error("Cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::Io { action, source }
}

/// The network every container joins unless told otherwise.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's subnet; user networks take the next free /24 after it.
const DEFAULT_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 0);

/// A network's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Its name.
    pub name: String,
    /// Subnet address.
    pub subnet: Ipv4Addr,
    /// Subnet prefix length.
    pub prefix_len: u8,
    /// The bridge's address, the containers' default route.
    pub gateway: Ipv4Addr,
    /// The host bridge's name.
    pub bridge: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// `network create --label` (and Compose's labels on a project's networks).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Network {
    fn mask(&self) -> u32 {
        mask(self.prefix_len)
    }

    /// `a.b.c.d/n`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix_len)
    }

    /// Whether `a` is in its subnet.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.subnet)
    }

    fn overlaps(&self, subnet: Ipv4Addr, prefix_len: u8) -> bool {
        let m = self.mask() & mask(prefix_len);
        u32::from(self.subnet) & m == u32::from(subnet) & m
    }

    /// The nftables table holding this network's rules.
    fn table(&self) -> String {
        table_name(&self.bridge)
    }
}

fn table_name(bridge: &str) -> String {
    format!("arca_{}", bridge.replace('-', "_"))
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

/// `a.b.c.d/n` with the host bits clear, for a prefix of 8 to 29 bits.
pub fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), NetworkError> {
    let bad = || {
        NetworkError::Invalid(format!(
            "Invalid subnet {text:?}: use an IPv4 CIDR such as 10.90.0.0/24 (prefix /8 to /29)"
        ))
    };
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=29).contains(&len) {
        return Err(bad());
    }
    if u32::from(addr) & !mask(len) != 0 {
        return Err(NetworkError::Invalid(format!(
            "Invalid subnet {text:?}: host bits are set (did you mean {}/{len}?)",
            Ipv4Addr::from(u32::from(addr) & mask(len))
        )));
    }
    Ok((addr, len))
}

/// Docker's rule for network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, here at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `<state>/networks`.
fn networks_dir(state: &Path) -> PathBuf {
    state.join("networks")
}

/// The port the resolver of `net` listens on at its gateway ([`crate::dns`]), where
/// the network's rules send what containers send to the gateway's port 53: one of
/// 20000-29999, told apart by the subnet (a DNS server of the host's on port 53 of every
/// address neither blocks it nor becomes reachable from containers).
pub fn resolver_port(net: &Network) -> u16 {
    20000 + ((u32::from(net.subnet) >> 8) % 10000) as u16
}

/// `<state>/networks/NAME`: its definition, leases and resolver files.
pub fn dir(state: &Path, name: &str) -> PathBuf {
    network_dir(state, name)
}

fn network_dir(state: &Path, name: &str) -> PathBuf {
    networks_dir(state).join(name)
}

/// The store's lock, held while networks are created, removed, brought up or down.
struct Lock(#[allow(dead_code)] fs::File);

fn lock(state: &Path) -> Result<Lock, NetworkError> {
    lock_as(state, rustix::fs::FlockOperation::LockExclusive)
}

/// The lock if nobody holds it.
fn try_lock(state: &Path) -> Result<Lock, NetworkError> {
    lock_as(state, rustix::fs::FlockOperation::NonBlockingLockExclusive)
}

fn lock_as(state: &Path, how: rustix::fs::FlockOperation) -> Result<Lock, NetworkError> {
    let dir = networks_dir(state);
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let path = dir.join(".lock");
    let f = crate::state::lock_file(&path, how)
        .map_err(|(action, e)| io_err(format!("{action} {}", path.display()))(e))?;
    Ok(Lock(f))
}

/// Reads a network's definition; the default network always exists.
pub fn get(state: &Path, name: &str) -> Result<Network, NetworkError> {
    if !valid_name(name) {
        return Err(NetworkError::NotFound(name.to_string()));
    }
    let path = network_dir(state, name).join("network.json");
    match fs::read(&path) {
        Ok(bytes) => parse_definition(&path, &bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound && name == DEFAULT_NETWORK => {
            let _l = lock(state)?;
            // Made on first use, under the lock (another CLI may be doing the same).
            match fs::read(&path) {
                Ok(bytes) => parse_definition(&path, &bytes),
                Err(_) => write_definition(
                    state,
                    Network {
                        name: DEFAULT_NETWORK.into(),
                        subnet: DEFAULT_SUBNET,
                        prefix_len: 24,
                        gateway: Ipv4Addr::from(u32::from(DEFAULT_SUBNET) + 1),
                        bridge: bridge_name(state, DEFAULT_NETWORK),
                        created: crate::now(),
                        labels: Default::default(),
                    },
                ),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(NetworkError::NotFound(name.to_string()))
        }
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// A definition as read from `path`: its bridge name goes to `ip` and `nft`, so it must
/// be one Arca makes.
fn parse_definition(path: &Path, bytes: &[u8]) -> Result<Network, NetworkError> {
    let net: Network = serde_json::from_slice(bytes).map_err(|e| {
        NetworkError::Invalid(format!("Corrupt network record {}: {e}", path.display()))
    })?;
    let ok = net.bridge.len() <= 15
        && net.bridge.len() > 4
        && net.bridge.starts_with("arca")
        && net
            .bridge
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok || !(8..=29).contains(&net.prefix_len) {
        return Err(NetworkError::Invalid(format!(
            "Corrupt network record {}: bridge {:?}, prefix /{}",
            path.display(),
            net.bridge,
            net.prefix_len
        )));
    }
    Ok(net)
}

/// The bridge of network `name` of this state directory: interface names are global
/// and at most 15 bytes, so `arcabr` and a hash of both.
fn bridge_name(state: &Path, name: &str) -> String {
    use sha2::Digest;
    let dir = fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    let mut h = sha2::Sha256::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    format!("arcabr{}", &crate::image::store::hex(&h.finalize())[..9])
}

fn write_definition(state: &Path, net: Network) -> Result<Network, NetworkError> {
    let dir = network_dir(state, &net.name);
    fs::create_dir_all(dir.join("leases")).map_err(io_err(format!("create {}", dir.display())))?;
    let tmp = dir.join(".network.json.tmp");
    let bytes =
        serde_json::to_vec_pretty(&net).map_err(|e| NetworkError::Invalid(e.to_string()))?;
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, dir.join("network.json")))
        .map_err(io_err(format!("write the record of network {}", net.name)))?;
    Ok(net)
}

/// Every network (the default one included).
pub fn list(state: &Path) -> Result<Vec<Network>, NetworkError> {
    let mut nets = vec![get(state, DEFAULT_NETWORK)?];
    if let Ok(entries) = fs::read_dir(networks_dir(state)) {
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n) && n != DEFAULT_NETWORK)
            .collect();
        names.sort();
        for n in names {
            if let Ok(net) = get(state, &n) {
                nets.push(net);
            }
        }
    }
    Ok(nets)
}

/// `arca network create [--subnet CIDR] NAME`.
pub fn create(state: &Path, name: &str, subnet: Option<&str>) -> Result<Network, NetworkError> {
    create_labelled(state, name, subnet, Default::default())
}

/// `arca network create [--subnet CIDR] [--label K=V]... NAME`.
pub fn create_labelled(
    state: &Path,
    name: &str,
    subnet: Option<&str>,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<Network, NetworkError> {
    if !valid_name(name) {
        return Err(NetworkError::Invalid(format!(
            "Invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at most 64 characters"
        )));
    }
    if matches!(name, "none" | "host" | DEFAULT_NETWORK) {
        return Err(NetworkError::Invalid(format!(
            "network with name {name} already exists (it is predefined)"
        )));
    }
    // The default network exists before the lock is taken (making it takes the lock).
    get(state, DEFAULT_NETWORK)?;
    let _l = lock(state)?;
    let existing = list(state)?;
    let routes = host_routes();
    if network_dir(state, name).join("network.json").exists() {
        return Err(NetworkError::Invalid(format!(
            "network with name {name} already exists"
        )));
    }
    let (subnet, prefix_len) = match subnet {
        Some(s) => {
            let (a, l) = parse_subnet(s)?;
            if let Some(other) = existing.iter().find(|n| n.overlaps(a, l)) {
                return Err(NetworkError::Invalid(format!(
                    "Subnet {s} overlaps with network {} ({})",
                    other.name,
                    other.cidr()
                )));
            }
            (a, l)
        }
        None => (1..=255u32)
            .map(|i| Ipv4Addr::from(u32::from(DEFAULT_SUBNET) + (i << 8)))
            .find(|a| {
                !existing.iter().any(|n| n.overlaps(*a, 24))
                    && overlapping(&routes, *a, 24).is_none()
            })
            .map(|a| (a, 24))
            .ok_or_else(|| NetworkError::Invalid("No free subnet left in 10.89.0.0/16".into()))?,
    };
    if let Some(route) = overlapping(&routes, subnet, prefix_len) {
        return Err(NetworkError::Invalid(format!(
            "Subnet {subnet}/{prefix_len} overlaps with the host's route to {}",
            route.describe()
        )));
    }
    let bridge = bridge_name(state, name);
    write_definition(
        state,
        Network {
            name: name.to_string(),
            subnet,
            prefix_len,
            gateway: Ipv4Addr::from(u32::from(subnet) + 1),
            bridge,
            created: crate::now(),
            labels,
        },
    )
    .inspect(|_| {
        crate::events::emit(
            state,
            "network",
            "create",
            name,
            &[("name", name), ("type", "bridge")],
        )
    })
}

/// A route of the host: its interface, destination and mask.
struct Route {
    iface: String,
    dest: u32,
    mask: u32,
}

impl Route {
    fn describe(&self) -> String {
        format!(
            "{}/{} on {}",
            Ipv4Addr::from(self.dest),
            self.mask.count_ones(),
            self.iface
        )
    }
}

/// The host's IPv4 routes but the default one (which overlaps everything), from
/// `/proc/net/route`.
fn host_routes() -> Vec<Route> {
    let table = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let parse = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::from_be);
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, mask) = (parse(f.get(1)?)?, parse(f.get(7)?)?);
            (mask != 0).then(|| Route {
                iface: f[0].to_string(),
                dest,
                mask,
            })
        })
        .collect()
}

/// The first of `routes` that overlaps the subnet (a host network, or a bridge of
/// another Arca state directory).
fn overlapping(routes: &[Route], subnet: Ipv4Addr, prefix_len: u8) -> Option<&Route> {
    routes.iter().find(|r| {
        let common = r.mask & mask(prefix_len);
        r.dest & common == u32::from(subnet) & common
    })
}

/// `arca network rm NAME`: refused while containers use it.
pub fn remove(state: &Path, name: &str) -> Result<(), NetworkError> {
    if matches!(name, "none" | "host" | DEFAULT_NETWORK) {
        return Err(NetworkError::Invalid(format!(
            "{name} is a pre-defined network and cannot be removed"
        )));
    }
    let net = get(state, name)?;
    reconcile(state);
    let _l = lock(state)?;
    let users = lease_holders(state, &net);
    if !users.is_empty() {
        return Err(NetworkError::Invalid(format!(
            "error while removing network: network {name} has active endpoints ({})",
            users.join(", ")
        )));
    }
    bring_down(state, &net);
    let dir = network_dir(state, name);
    // Its resolver goes first (told to, and waited for: it holds `dns.lock`): a
    // network made again under the name must not find the old one on its port.
    stop_resolver(&dir, name);
    let _resolver = crate::state::lock_file(
        &dir.join("dns.lock"),
        rustix::fs::FlockOperation::LockExclusive,
    );
    fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    crate::events::emit(
        state,
        "network",
        "destroy",
        name,
        &[("name", name), ("type", "bridge")],
    );
    Ok(())
}

/// Sends SIGTERM to the resolver of network `name` (its pid in `dir/dns.ready`, if that
/// process is still `arca __dns NAME`).
fn stop_resolver(dir: &Path, name: &str) {
    let Some(pid) = fs::read_to_string(dir.join("dns.ready"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args
        .windows(2)
        .any(|w| w[0] == b"__dns" && w[1] == name.as_bytes())
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// The containers holding leases in `net`.
fn lease_holders(state: &Path, net: &Network) -> Vec<String> {
    let dir = network_dir(state, &net.name).join("leases");
    let mut ids: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .map(|s| s.trim().to_string())
        .collect();
    ids.sort();
    ids
}

/// `network prune`: removes every network Arca made that no container uses; returns
/// their names.
pub fn prune(state: &Path) -> Result<Vec<String>, NetworkError> {
    Ok(list(state)?
        .into_iter()
        .filter(|n| n.name != DEFAULT_NETWORK)
        .filter_map(|n| remove(state, &n.name).ok().map(|()| n.name))
        .collect())
}

/// Joins container `id` to network `name`: under the lock (so that no concurrent
/// [`reconcile`] takes the network down in between, and a concurrent `network rm` is
/// either before or after), leases it an address and brings the network up.
pub fn join(state: &Path, name: &str, id: &str) -> Result<(Network, Ipv4Addr), NetworkError> {
    get(state, name)?;
    let _l = lock(state)?;
    // It may have been removed since.
    let net = get(state, name)?;
    let address = lease(state, &net, id)?;
    if let Err(e) = bring_up(state, &net) {
        release(state, &net.name, address, id);
        return Err(e);
    }
    Ok((net, address))
}

/// An address for container `id` in `net`: the lowest free one after the gateway.
fn lease(state: &Path, net: &Network, id: &str) -> Result<Ipv4Addr, NetworkError> {
    let dir = network_dir(state, &net.name).join("leases");
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let first = u32::from(net.subnet) + 2;
    let broadcast = u32::from(net.subnet) | !net.mask();
    for a in first..broadcast {
        let addr = Ipv4Addr::from(a);
        let path = dir.join(addr.to_string());
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                io::Write::write_all(&mut f, id.as_bytes())
                    .map_err(io_err(format!("write {}", path.display())))?;
                return Ok(addr);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
        }
    }
    Err(NetworkError::Exhausted(net.name.clone()))
}

/// Gives back `addr` in `net` if container `id` holds it.
pub fn release(state: &Path, net: &str, addr: Ipv4Addr, id: &str) {
    let path = network_dir(state, net)
        .join("leases")
        .join(addr.to_string());
    if fs::read_to_string(&path).is_ok_and(|held| held.trim() == id) {
        let _ = fs::remove_file(path);
    }
}

/// Containers in `net` other than `except` that hold leases: (address, container id).
pub fn members(state: &Path, net: &Network, except: &str) -> Vec<(Ipv4Addr, String)> {
    let dir = network_dir(state, &net.name).join("leases");
    let mut out: Vec<(Ipv4Addr, String)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let addr: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
            let id = fs::read_to_string(e.path()).ok()?.trim().to_string();
            (id != except && net.contains(addr)).then_some((addr, id))
        })
        .collect();
    out.sort();
    out
}

fn tool(name: &'static str, package: &'static str) -> Result<PathBuf, NetworkError> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(NetworkError::MissingTool(name, package))
}

fn run(program: PathBuf, args: &[&str], input: Option<&str>) -> Result<(), NetworkError> {
    let command = format!(
        "{} {}",
        program.file_name().unwrap_or_default().to_string_lossy(),
        args.join(" ")
    );
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(format!("run {command}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        io::Write::write_all(&mut stdin, text.as_bytes())
            .map_err(io_err(format!("feed {command}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("run {command}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The kind of a container's host link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// The host end of a veth pair (process isolation).
    Veth,
    /// A microVM's TAP.
    Tap,
}

/// The host link of container `id`: interface names are at most 15 bytes, so a prefix
/// and a hash of the id.
pub fn link_name(kind: LinkKind, id: &str) -> String {
    use sha2::Digest;
    let prefix = match kind {
        LinkKind::Veth => "arcav",
        LinkKind::Tap => "arcat",
    };
    let digest = sha2::Sha256::digest(id.as_bytes());
    format!("{prefix}{}", &crate::image::store::hex(&digest)[..10])
}

fn link_exists(name: &str) -> bool {
    netlink::link_index(name).is_some()
}

/// Deletes `link`, if it is there.
pub fn delete_link(link: &str) {
    let _ = netlink::delete_link(link);
}

/// Brings the network's bridge and its rules up if the bridge is not there. Called
/// under the lock; the bridge and the rules come and go together (see [`reconcile`]),
/// and a bridge that exists has its rules: applying them costs `nft` about 5 ms a run,
/// so a firewall reload that flushes every table takes them away until the network
/// is next brought up. Networks isolate containers only with their rules, so without
/// `nft` there is no network.
fn bring_up(state: &Path, net: &Network) -> Result<(), NetworkError> {
    let nft = tool("nft", "nftables")?;
    if link_exists(&net.bridge) {
        return Ok(());
    }
    make_bridge(state, net)?;
    let result = apply_rules(nft.clone(), net).and_then(|()| forwarding_on(state, nft));
    if result.is_err() {
        remove_bridge(&net.bridge);
    }
    result
}

fn make_bridge(state: &Path, net: &Network) -> Result<(), NetworkError> {
    let ours = fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    // A bridge of another state directory on the same subnet may be one its
    // `__network-gc` has yet to take down: that directory reconciles now, if it is not
    // busy (never waiting for its lock while holding ours), or, if it is gone, nothing
    // can use the bridge any more. Bridges carry their state directory as their alias.
    let since = std::time::Instant::now();
    for _ in 0..100 {
        let routes = host_routes();
        let Some(iface) = overlapping(&routes, net.subnet, net.prefix_len).map(|r| r.iface.clone())
        else {
            break;
        };
        let owner = fs::read_to_string(Path::new("/sys/class/net").join(&iface).join("ifalias"))
            .unwrap_or_default();
        let owner = PathBuf::from(owner.trim());
        if !iface.starts_with("arcabr") || owner.as_os_str().is_empty() || owner == ours {
            break;
        }
        if networks_dir(&owner).is_dir() {
            if !reconcile_with(&owner, false) {
                // Busy: likely its `__network-gc` taking the bridge down right now.
                if since.elapsed() > OTHER_STATE_PATIENCE {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        } else {
            remove_bridge(&iface);
        }
        if link_exists(&iface) {
            break;
        }
    }
    if let Some(route) = overlapping(&host_routes(), net.subnet, net.prefix_len) {
        return Err(NetworkError::Invalid(format!(
            "Network {}'s subnet {} is already routed on this host ({}): another Arca state directory or a host network uses it; use a network with another --subnet",
            net.name,
            net.cidr(),
            route.describe()
        )));
    }
    // A bridge without an address of its own takes its ports' lowest, and changes it
    // (flushing its neighbours, and leaving containers with a stale gateway MAC) as
    // containers come and go: it gets the gateway's, made as containers' are. Its
    // alias says whose bridge this is (at most 255 bytes; a longer path goes without,
    // and its bridge is then never taken down by another directory).
    let alias = ours.to_str().filter(|p| p.len() < 256);
    let made = netlink::add_bridge(
        &net.bridge,
        mac_bytes(net.gateway),
        net.gateway,
        net.prefix_len,
        alias,
    );
    if let Err(e) = made {
        delete_link(&net.bridge);
        return Err(e.into());
    }
    Ok(())
}

fn apply_rules(nft: PathBuf, net: &Network) -> Result<(), NetworkError> {
    run(nft, &["-f", "-"], Some(&network_rules(net)))
}

/// The network's two tables, replaced whole (their rules are exactly these):
/// - `ip arca_<bridge>`: masquerade for traffic leaving through another interface; in
///   the forward hook, drops for the link-local range (a cloud's metadata service) and
///   for other Arca bridges, accept for traffic from the bridge, accept for replies to
///   it, drop for anything else routed to it; in the prerouting hook, DNS to the
///   gateway sent to the network's resolver ([`crate::dns`], on [`resolver_port`]); in
///   the input hook, a drop for everything from the bridge to the host itself but
///   replies to connections the host opened and DNS so sent (nothing else Arca serves
///   listens there: `-p` goes through the agent, and there is no DHCP on the bridge),
///   and a drop for the resolver's port from anywhere else.
/// - `bridge arca_<bridge>`: the anti-spoofing rules of every container link on the
///   bridge ([`links_table`]); a link is guarded by being added to its sets
///   ([`guard_link`]).
fn network_rules(net: &Network) -> String {
    let table = net.table();
    format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"{br}\" ip daddr {gw} udp dport 53 dnat to {gw}:{dns}\n\
         \t\tiifname \"{br}\" ip daddr {gw} tcp dport 53 dnat to {gw}:{dns}\n\t}}\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cidr} oifname != \"{br}\" masquerade\n\t}}\n\
         \tchain forward {{ type filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{br}\" ip daddr {LINK_LOCAL} drop\n\
         \t\tiifname \"{br}\" oifname \"arca*\" oifname != \"{br}\" drop\n\
         \t\tiifname \"{br}\" accept\n\
         \t\toifname \"{br}\" ct state established,related accept\n\
         \t\toifname \"{br}\" drop\n\t}}\n\
         \tchain input {{ type filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{br}\" ip daddr {LINK_LOCAL} drop\n\
         \t\tiifname \"{br}\" ct state established,related accept\n\
         \t\tiifname \"{br}\" ip daddr {gw} udp dport {dns} ct status dnat accept\n\
         \t\tiifname \"{br}\" ip daddr {gw} tcp dport {dns} ct status dnat accept\n\
         \t\tiifname \"{br}\" drop\n\
         \t\tip daddr {gw} udp dport {dns} drop\n\
         \t\tip daddr {gw} tcp dport {dns} drop\n\t}}\n}}\n\
         table bridge {table}\ndelete table bridge {table}\n{links}",
        cidr = net.cidr(),
        br = net.bridge,
        gw = net.gateway,
        dns = resolver_port(net),
        links = links_table(&table),
    )
}

/// Link-local addresses, where clouds serve instance metadata (169.254.169.254).
const LINK_LOCAL: &str = "169.254.0.0/16";

/// The set of guarded links (by name) in the bridge-family table.
const GUARDED: &str = "guarded";
/// The set of what each guarded link may send from: (link, MAC, IPv4 address).
const SENDERS: &str = "senders";

/// The bridge-family table, declared (created if missing, as after a firewall reload;
/// kept with its elements if there) and its base chain's rules rewritten. Every
/// bridge on the host passes this hook: frames from links not in `guarded` are not
/// this network's and pass untouched. A frame from a guarded link passes only if it is
/// whole IPv4 from the link's MAC and address (its element of `senders`), or whole
/// Ethernet/IPv4 ARP whose frame and sender MAC are the link's and whose sender address
/// is the link's; anything else is dropped: other MACs or addresses, IPv6 (Arca
/// configures none), VLAN tags, other protocols, and frames too short to hold the
/// headers checked (nftables skips a rule whose fields are missing, so the rules
/// accept what they have checked and drop the rest, never the other way round). So a
/// container cannot take another's address or MAC (not even in the bridge's
/// forwarding table), or poison the host's or its peers' ARP caches.
///
/// The `links` map and its rule are those of Arca before 2026-12-07, which guarded each
/// link with a chain of its own: kept so that containers started by it keep their
/// rules when a newer `arca` declares the table again.
fn links_table(table: &str) -> String {
    let rule = |r: &str| format!("add rule bridge {table} prerouting {r}\n");
    let rules: String = [
        "iifname vmap @links",
        "iifname != @guarded accept",
        "ether type ip iifname . ether saddr . ip saddr @senders accept",
        "ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
         iifname . ether saddr . arp saddr ip @senders \
         iifname . arp saddr ether . arp saddr ip @senders accept",
        "drop",
    ]
    .iter()
    .map(|r| rule(r))
    .collect();
    format!(
        "table bridge {table} {{\n\
         \tmap links {{ type ifname : verdict; }}\n\
         \tset {GUARDED} {{ type ifname; }}\n\
         \tset {SENDERS} {{ type ifname . ether_addr . ipv4_addr; }}\n\
         \tchain prerouting {{ type filter hook prerouting priority filter; policy accept; }}\n}}\n\
         flush chain bridge {table} prerouting\n{rules}"
    )
}

/// The MAC address of the container holding `address`: Docker's, `02:42` and the
/// address's four bytes (locally administered, unicast).
pub fn mac_address(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// [`mac_address`] as bytes.
pub fn mac_bytes(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x42, a, b, c, d]
}

/// `link`'s elements in the bridge-family table's sets: in `guarded`, in `senders`.
fn link_elements(link: &str, address: Ipv4Addr) -> (netlink::SetKey, netlink::SetKey) {
    let guarded = netlink::SetKey::default().ifname(link);
    let sender = netlink::SetKey::default()
        .ifname(link)
        .ether(mac_bytes(address))
        .ipv4(address);
    (guarded, sender)
}

/// Guards `link` (see [`links_table`]) and then runs `join`, which puts the link on the
/// network's bridge: a link is never on the bridge without its rules. Under the
/// networks' lock, so that the teardown of an earlier container of the same name
/// ([`unguard_link`]) cannot remove these elements in between. The elements are added
/// over netlink. Should the table or its sets be missing (a firewall reload flushed
/// them), the table is declared again with `nft`, and every lease holder's links get
/// their elements back with this one's.
pub fn guard_link(
    state: &Path,
    net: &Network,
    link: &str,
    address: Ipv4Addr,
    join: impl FnOnce() -> Result<(), NetworkError>,
) -> Result<(), NetworkError> {
    let _l = lock(state)?;
    let add = |links: &[(String, Ipv4Addr)]| {
        let (guarded, senders): (Vec<_>, Vec<_>) =
            links.iter().map(|(l, a)| link_elements(l, *a)).unzip();
        netlink::SetElements::new(netlink::NFPROTO_BRIDGE, &net.table())
            .add(SENDERS, senders)
            .add(GUARDED, guarded)
            .commit()
    };
    if let Err(e) = add(&[(link.to_string(), address)]) {
        if e.errno() != Some(rustix::io::Errno::NOENT.raw_os_error()) {
            return Err(e.into());
        }
        let nft = tool("nft", "nftables")?;
        run(nft, &["-f", "-"], Some(&links_table(&net.table())))?;
        let mut all: Vec<(String, Ipv4Addr)> = members(state, net, "")
            .into_iter()
            .flat_map(|(a, id)| [LinkKind::Veth, LinkKind::Tap].map(|k| (link_name(k, &id), a)))
            .collect();
        all.push((link.to_string(), address));
        add(&all)?;
    }
    join()
}

/// Removes `link`'s elements when its container goes: its `senders` element always (it
/// names this container's address, which is given back next and may then be another
/// container's), its name in `guarded` only if `ours` says, under the networks' lock,
/// that the link is gone or still the one this container made (not a later container's
/// of the same name). Best effort: the rules go with the network's table anyway.
pub fn unguard_link(
    state: &Path,
    net: &Network,
    link: &str,
    address: Ipv4Addr,
    ours: impl FnOnce() -> bool,
) {
    let Ok(_l) = lock(state) else { return };
    let whole = ours();
    drop_link_rules(&net.table(), &[(link.to_string(), address, whole)]);
}

/// Removes links' elements: each link's `senders` element, and with `true` its name in
/// `guarded` (and in an older Arca's `links` map) too. In one batch that holds whether
/// or not they are there (each is added, then removed); nothing if the table is gone.
fn drop_link_rules(table: &str, links: &[(String, Ipv4Addr, bool)]) {
    let mut senders = Vec::new();
    let mut guarded = Vec::new();
    for (link, address, whole) in links {
        let (name, sender) = link_elements(link, *address);
        senders.push(sender);
        if *whole {
            guarded.push(name);
        }
    }
    let _ = netlink::SetElements::new(netlink::NFPROTO_BRIDGE, table)
        .add(SENDERS, senders.clone())
        .add(GUARDED, guarded.clone())
        .remove(SENDERS, senders)
        .remove(GUARDED, guarded.clone())
        .commit();
    // An older Arca's entry, if this link had one (its chain goes with the table): one
    // batch each, as most links have none and a missing entry fails its batch.
    for name in guarded {
        let _ = netlink::SetElements::new(netlink::NFPROTO_BRIDGE, table)
            .remove("links", vec![name])
            .commit();
    }
}

/// Removes the network's bridge and tables (nothing if they are gone already), and
/// gives forwarding back if Arca turned it on and no Arca bridge is left.
fn bring_down(state: &Path, net: &Network) {
    // The resolver lives with the bridge: its socket on the gateway address would keep
    // that address's port from a bridge made again (by this state directory or another).
    stop_resolver(&network_dir(state, &net.name), &net.name);
    remove_bridge(&net.bridge);
    forwarding_off_if_unused(state);
}

fn remove_bridge(bridge: &str) {
    if link_exists(bridge) {
        delete_link(bridge);
    }
    if let Ok(nft) = tool("nft", "nftables") {
        for family in ["ip", "bridge"] {
            let _ = run(
                nft.clone(),
                &["delete", "table", family, &table_name(bridge)],
                None,
            );
        }
    }
}

/// IPv4 forwarding, host-wide.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The table that keeps forwarding to Arca's bridges when Arca turned it on; while it
/// exists, Arca owns `ip_forward`.
const FORWARD_TABLE: &str = "arca_forward";

/// `<state>/networks/ip_forward`: this state directory turned forwarding on during the
/// boot whose id it holds.
fn forwarding_record(state: &Path) -> PathBuf {
    networks_dir(state).join("ip_forward")
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether this state directory turned forwarding on during this boot.
fn recorded_forwarding(state: &Path) -> bool {
    let id = boot_id();
    !id.is_empty() && fs::read_to_string(forwarding_record(state)).is_ok_and(|r| r.trim() == id)
}

/// The host-wide lock of the forwarding decision (state directories have locks of
/// their own): `/run/arca-forward.lock`, in a directory only root writes to. Taken
/// after a state directory's lock, never before. Without `/run`, no lock.
fn forwarding_lock() -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open("/run/arca-forward.lock")
        .ok()?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).ok()?;
    Some(f)
}

/// The guard that comes with forwarding Arca turned on: forwarded traffic neither
/// from nor to an Arca bridge is dropped, so the host's other interfaces keep not
/// routing (Docker sets the FORWARD policy to DROP for the same reason).
fn forward_guard() -> String {
    format!(
        "table ip {FORWARD_TABLE}\ndelete table ip {FORWARD_TABLE}\ntable ip {FORWARD_TABLE} {{\n\
         \tchain forward {{ type filter hook forward priority filter; policy accept;\n\
         \t\tiifname != \"arcabr*\" oifname != \"arcabr*\" drop\n\t}}\n}}\n"
    )
}

/// Routing between a bridge and the uplink, as Docker turns it on: if it is off, the
/// guard first, then `ip_forward`, and the decision recorded; if this state
/// directory's record says Arca turned it on, the guard again (a firewall reload may
/// have flushed it). Forwarding someone else turned on is left as it is.
fn forwarding_on(state: &Path, nft: PathBuf) -> Result<(), NetworkError> {
    let _g = forwarding_lock();
    let on = fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() != "0");
    if !on {
        run(nft, &["-f", "-"], Some(&forward_guard()))?;
        // Unwritable (a read-only /proc/sys): containers have no way out, but nothing
        // else changes.
        if fs::write(IP_FORWARD, "1").is_ok() {
            let _ = fs::write(forwarding_record(state), boot_id());
        }
    } else if recorded_forwarding(state) {
        run(nft, &["-f", "-"], Some(&forward_guard()))?;
    }
    Ok(())
}

/// Once no Arca bridge is left on the host (of any state directory): if Arca turned
/// forwarding on (its guard is there, or this state directory's record says so),
/// `ip_forward` back to 0, then the guard goes.
fn forwarding_off_if_unused(state: &Path) {
    let _g = forwarding_lock();
    let bridges_left = fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("arcabr"));
    if bridges_left {
        return;
    }
    let Ok(nft) = tool("nft", "nftables") else {
        return;
    };
    let guard = run(nft.clone(), &["list", "table", "ip", FORWARD_TABLE], None).is_ok();
    if guard || recorded_forwarding(state) {
        let _ = fs::write(IP_FORWARD, "0");
        if guard {
            let _ = run(nft, &["delete", "table", "ip", FORWARD_TABLE], None);
        }
    }
    let _ = fs::remove_file(forwarding_record(state));
}

/// The body of `arca __network-gc BRIDGE` (see [`reconcile_later`]): once no container
/// has left for [`LINGER`], [`reconcile`]; if the state directory went away meanwhile,
/// nothing can use `bridge` any more (bridges are named per state directory), so it
/// and its table go. One runs at a time per state directory; a second ends at once.
pub fn gc(state: &Path, bridge: &str) {
    if !networks_dir(state).is_dir() {
        std::thread::sleep(LINGER);
        if bridge.starts_with("arcabr") && bridge.len() <= 15 {
            remove_bridge(bridge);
            forwarding_off_if_unused(state);
        }
        return;
    }
    let Some(pending) = gc_lock(state) else {
        return;
    };
    // Until no container has left for LINGER, but no longer than GC_PATIENCE in all
    // (containers leaving every second must not keep another network up forever), and
    // never more than LINGER at a time (a clock set back makes no wait longer).
    let began = std::time::Instant::now();
    loop {
        let left = last_left(state);
        let wait = (left + LINGER)
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(LINGER);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if last_left(state) == left || began.elapsed() >= GC_PATIENCE {
            break;
        }
    }
    if !networks_dir(state).is_dir() {
        return gc(state, bridge);
    }
    let Ok(_l) = lock(state) else { return };
    // From here a container leaving finds no collector pending and starts one; it
    // waits for this lock, so its lease is either given back before this reconciles
    // or seen by the next collector.
    drop(pending);
    reconcile_locked(state);
}

/// The longest a pending collector defers to containers that keep leaving.
const GC_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// `<state>/networks/gc.lock`: held by the pending collector.
fn gc_lock(state: &Path) -> Option<fs::File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(networks_dir(state).join("gc.lock"))
        .ok()?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(f)
}

/// `<state>/networks/left`: its modification time is when a container last left.
fn left_marker(state: &Path) -> PathBuf {
    networks_dir(state).join("left")
}

fn last_left(state: &Path) -> std::time::SystemTime {
    fs::metadata(left_marker(state))
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// `network ls --format table`: Docker's default columns.
pub const NETWORKS_TABLE: &str = "table {{.ID}}\\t{{.Name}}\\t{{.Driver}}\\t{{.Scope}}";

/// `network ls --format`: Docker's fields (all strings) and column titles, one row
/// per network, plus Arca's `Subnet`, `Bridge` and `State`. A network has no id of its
/// own: `ID` is its name.
pub fn ls_formatted(
    nets: &[Network],
    format: &str,
) -> Result<String, crate::template::TemplateError> {
    let header = serde_json::json!({
        "ID": "NETWORK ID",
        "Name": "NAME",
        "Driver": "DRIVER",
        "Scope": "SCOPE",
        "IPv6": "IPV6",
        "Internal": "INTERNAL",
        "Labels": "LABELS",
        "CreatedAt": "CREATED AT",
        "Subnet": "SUBNET",
        "Bridge": "BRIDGE",
        "State": "STATE",
    });
    let rows: Vec<serde_json::Value> = nets
        .iter()
        .map(|n| {
            serde_json::json!({
                "ID": n.name,
                "Name": n.name,
                "Driver": "bridge",
                "Scope": "local",
                "IPv6": "false",
                "Internal": "false",
                "Labels": "",
                "CreatedAt": crate::go_time(n.created),
                "Subnet": n.cidr(),
                "Bridge": n.bridge,
                "State": if is_up(n) { "up" } else { "down" },
            })
        })
        .collect();
    crate::template::render_list(
        &crate::template::ListFormat::new(format, NETWORKS_TABLE),
        &header,
        &rows,
    )
}

/// Whether the network's bridge exists on this host.
pub fn is_up(net: &Network) -> bool {
    link_exists(&net.bridge)
}

/// Frees leases whose container no longer runs and takes down networks no running
/// container uses. Best effort: called by every command that looks at containers.
pub fn reconcile(state: &Path) {
    reconcile_with(state, true);
}

/// How long a new bridge waits for another state directory busy reconciling (its
/// `__network-gc` may be taking down the bridge on the same subnet right now).
const OTHER_STATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// [`reconcile`], waiting for the lock or (`wait` false) giving up if it is held;
/// false when it gave up.
fn reconcile_with(state: &Path, wait: bool) -> bool {
    // Nothing to do (and nothing to create) where no network was ever used.
    if !networks_dir(state).is_dir() {
        return true;
    }
    let locked = if wait { lock(state) } else { try_lock(state) };
    let Ok(_l) = locked else { return false };
    reconcile_locked(state);
    true
}

/// [`reconcile`]'s work, under the networks' lock.
fn reconcile_locked(state: &Path) {
    let nets: Vec<Network> = fs::read_dir(networks_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path().join("network.json");
            parse_definition(&path, &fs::read(&path).ok()?).ok()
        })
        .collect();
    for net in nets {
        let dir = network_dir(state, &net.name).join("leases");
        let mut held = 0;
        let mut freed = Vec::new();
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let id = fs::read_to_string(e.path()).unwrap_or_default();
            let id = id.trim();
            let keep = if id.is_empty() {
                // A lease being written gets its id within microseconds; an empty one
                // older than that is a leftover.
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|d| d.as_secs() < 5))
            } else {
                crate::container::record::is_live(state, id)
            };
            if keep {
                held += 1;
            } else {
                // Its host link, if its owner outlived the container (a veth whose
                // namespace a leftover process still holds), and the link's rules.
                let address = e.file_name().to_str().and_then(|a| a.parse().ok());
                for kind in [LinkKind::Veth, LinkKind::Tap] {
                    let link = link_name(kind, id);
                    if !id.is_empty() && link_exists(&link) {
                        delete_link(&link);
                    }
                    if let (false, Some(address)) = (id.is_empty(), address) {
                        freed.push((link, address, true));
                    }
                }
                let _ = fs::remove_file(e.path());
            }
        }
        if held == 0 && is_up(&net) {
            bring_down(state, &net);
        } else if is_up(&net) {
            drop_link_rules(&net.table(), &freed);
        }
    }
}

/// How long an unused network stays up after its last container left, so that a run
/// right after reuses its bridge (making and deleting one costs the kernel ~60 ms).
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Reconciles once no container has left for [`LINGER`], from a detached `arca
/// __network-gc` process, so that a container's exit does not wait for its network's
/// teardown and a run right after finds the bridge up; synchronously if that process
/// cannot start. Containers that leave while a collector is pending only say when they
/// left: runs one after another start one collector, not one each. `net`'s bridge is
/// named to it in case the state directory is gone by then (a test's temporary one):
/// its objects go anyway.
pub fn reconcile_later(state: &Path, net: &Network) {
    {
        let Ok(_l) = lock(state) else { return };
        let marked = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(left_marker(state))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if marked.is_ok() && gc_lock(state).is_none() {
            // One is pending, and will wait for this departure.
            return;
        }
    }
    let spawned = std::env::current_exe().and_then(|exe| {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .arg("--state-dir")
            .arg(state)
            .args(["__network-gc", &net.bridge])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
    });
    if spawned.is_err() {
        reconcile(state);
    }
}

/// Name servers for containers: the host's, unless they are loopback addresses or
/// the host's own (a local resolver the container cannot reach: containers are kept
/// off the host), then Google's, as Docker does.
pub fn name_servers() -> Vec<Ipv4Addr> {
    let text = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !is_host_address(*a))
        .take(3)
        .collect();
    if servers.is_empty() {
        vec![Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(8, 8, 4, 4)]
    } else {
        servers
    }
}

/// Whether `a` is one of the host's own addresses: only those can be bound.
pub fn is_host_address(a: Ipv4Addr) -> bool {
    std::net::UdpSocket::bind((a, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the ignored test `name` of this binary again in a network namespace of its
    /// own (as root, with `unshare` and `nft`), so that it may make links and tables.
    fn in_private_netns(name: &str) {
        if !rustix::process::geteuid().is_root() || tool("nft", "nftables").is_err() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        // Its own /sys too: sysfs shows the links of the namespace it was mounted in.
        let out = Command::new("unshare")
            .args(["--net", "--mount", "--", "sh", "-c"])
            .arg("mount -t sysfs sysfs /sys && exec \"$0\" \"$@\"")
            .arg(exe)
            .args(["--exact", name, "--include-ignored", "--nocapture"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    fn sys(link: &str, file: &str) -> String {
        fs::read_to_string(Path::new("/sys/class/net").join(link).join(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn nft_list(what: &[&str]) -> String {
        let out = Command::new(tool("nft", "nftables").unwrap())
            .arg("list")
            .args(what)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    #[test]
    fn links_bridges_and_guards_go_through_netlink() {
        in_private_netns("network::tests::netlink_in_a_private_namespace");
    }

    /// What a start does to the host, without `ip` or `nft` on its path: a bridge (MAC,
    /// gateway, alias, up), a veth onto it with its peer's MAC, its guard's elements,
    /// and their removal; refusals come back as the kernel's errno.
    #[test]
    #[ignore = "run in a network namespace of its own by the test above"]
    fn netlink_in_a_private_namespace() {
        let n = net([10, 77, 0, 0], 24);
        let gw = n.gateway;
        netlink::add_bridge(&n.bridge, mac_bytes(gw), gw, 24, Some("/var/lib/arca-test")).unwrap();
        assert_eq!(sys(&n.bridge, "address"), mac_address(gw));
        assert_eq!(sys(&n.bridge, "ifalias"), "/var/lib/arca-test");
        assert!(is_up(&n));
        let flags = u32::from_str_radix(sys(&n.bridge, "flags").trim_start_matches("0x"), 16);
        assert_eq!(flags.unwrap() & 1, 1, "the bridge is up");
        assert!(
            host_routes()
                .iter()
                .any(|r| r.iface == n.bridge && r.dest == u32::from(n.subnet)),
            "the gateway's subnet is routed on the bridge"
        );
        // Making it twice is refused, in the kernel's words.
        let again = netlink::add_bridge(&n.bridge, mac_bytes(gw), gw, 24, None).unwrap_err();
        assert_eq!(again.errno(), Some(rustix::io::Errno::EXIST.raw_os_error()));

        run(
            tool("nft", "nftables").unwrap(),
            &["-f", "-"],
            Some(&network_rules(&n)),
        )
        .unwrap();
        let table = n.table();
        let state = tempfile::tempdir().unwrap();
        fs::create_dir_all(networks_dir(state.path())).unwrap();
        let me = lease(state.path(), &n, "c1").unwrap();
        assert_eq!(me, Ipv4Addr::new(10, 77, 0, 2));
        let link = link_name(LinkKind::Veth, "c1");
        let pid = std::process::id();
        guard_link(state.path(), &n, &link, me, || {
            netlink::add_veth(&link, "peer0", mac_bytes(me), pid, &n.bridge).map_err(Into::into)
        })
        .unwrap();
        assert!(
            fs::read_link(Path::new("/sys/class/net").join(&link).join("master"))
                .unwrap()
                .ends_with(&n.bridge)
        );
        assert_eq!(sys("peer0", "address"), mac_address(me));
        let sets = nft_list(&["table", "bridge", &table]);
        let sender = |l: &str, a: Ipv4Addr| format!("\"{l}\" . {} . {a}", mac_address(a));
        assert!(sets.contains(&sender(&link, me)), "{sets}");
        assert!(
            sets.contains(&format!("elements = {{ \"{link}\" }}")),
            "{sets}"
        );

        // A firewall reload flushed the table: the next guard declares it again, and
        // the links of every lease holder get their elements back.
        let nft = || tool("nft", "nftables").unwrap();
        run(nft(), &["delete", "table", "bridge", &table], None).unwrap();
        let addr2 = lease(state.path(), &n, "c2").unwrap();
        let other = link_name(LinkKind::Veth, "c2");
        guard_link(state.path(), &n, &other, addr2, || {
            netlink::add_veth(&other, "peer1", mac_bytes(addr2), pid, &n.bridge).map_err(Into::into)
        })
        .unwrap();
        let sets = nft_list(&["table", "bridge", &table]);
        assert!(sets.contains(&sender(&other, addr2)), "{sets}");
        assert!(sets.contains(&sender(&link, me)), "{sets}");
        assert!(sets.contains("iifname != @guarded accept"), "{sets}");

        // Removal holds whether or not the elements are there. A link that is not ours
        // any more (a later container of the same name has it) keeps its name in
        // `guarded`, but the address given back leaves `senders` at once.
        unguard_link(state.path(), &n, &other, addr2, || true);
        unguard_link(state.path(), &n, &other, addr2, || true);
        unguard_link(state.path(), &n, &link, me, || false);
        let sets = nft_list(&["table", "bridge", &table]);
        assert!(!sets.contains(&other), "{sets}");
        assert!(!sets.contains(&sender(&link, me)), "{sets}");
        assert!(
            sets.contains(&format!("\"{link}\"")),
            "not ours to remove: {sets}"
        );
        // Many links in one batch: one message a set, not one a link.
        let many: Vec<(String, Ipv4Addr, bool)> = (0..300u32)
            .map(|i| {
                (
                    format!("arcavmany{i}"),
                    Ipv4Addr::from(0x0a4d_0100 + i),
                    true,
                )
            })
            .collect();
        let keys = |f: fn((netlink::SetKey, netlink::SetKey)) -> netlink::SetKey| {
            many.iter()
                .map(|(l, a, _)| f(link_elements(l, *a)))
                .collect::<Vec<_>>()
        };
        netlink::SetElements::new(netlink::NFPROTO_BRIDGE, &table)
            .add(SENDERS, keys(|k| k.1))
            .add(GUARDED, keys(|k| k.0))
            .commit()
            .unwrap();
        assert!(nft_list(&["set", "bridge", &table, SENDERS]).contains("arcavmany299"));
        drop_link_rules(&table, &many);
        assert!(!nft_list(&["set", "bridge", &table, GUARDED]).contains("arcavmany"));
        // A refused batch is reported with the kernel's errno, and changes nothing.
        let refused = netlink::SetElements::new(netlink::NFPROTO_BRIDGE, &table)
            .add(GUARDED, vec![netlink::SetKey::default().ifname("arcavnew")])
            .remove(SENDERS, keys(|k| k.1))
            .commit()
            .unwrap_err();
        assert_eq!(
            refused.errno(),
            Some(rustix::io::Errno::NOENT.raw_os_error())
        );
        assert!(!nft_list(&["set", "bridge", &table, GUARDED]).contains("arcavnew"));
        delete_link(&link);
        delete_link(&other);
        assert!(!link_exists(&link) && !link_exists("peer0"));
        let gone = netlink::set_master_up(&link, &n.bridge).unwrap_err();
        assert_eq!(gone.errno(), Some(rustix::io::Errno::NODEV.raw_os_error()));
        let no_bridge = netlink::set_master_up(&link, "arcabr-none").unwrap_err();
        assert_eq!(no_bridge.to_string(), "No link named arcabr-none");
        assert_eq!(netlink::link_index("arcabr-none"), None);
        remove_bridge(&n.bridge);
        assert!(!link_exists(&n.bridge));
        assert!(nft_list(&["table", "bridge", &table]).is_empty());
    }

    fn net(subnet: [u8; 4], prefix_len: u8) -> Network {
        Network {
            name: "n".into(),
            subnet: Ipv4Addr::from(subnet),
            prefix_len,
            gateway: Ipv4Addr::from(u32::from(Ipv4Addr::from(subnet)) + 1),
            bridge: "arcabr-test".into(),
            created: 0,
            labels: Default::default(),
        }
    }

    #[test]
    fn subnets_parse_with_clear_host_bits_and_sane_prefixes() {
        assert_eq!(
            parse_subnet("10.90.0.0/24").unwrap(),
            (Ipv4Addr::new(10, 90, 0, 0), 24)
        );
        for bad in [
            "10.90.0.0",
            "10.90.0.0/33",
            "10.90.0.0/30",
            "10.0.0.0/7",
            "x/24",
            "10.90.0.0/",
        ] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
        let e = parse_subnet("10.90.0.5/24").unwrap_err().to_string();
        assert!(e.contains("10.90.0.0/24"), "{e}");
    }

    #[test]
    fn overlap_is_judged_on_the_shorter_prefix() {
        let n = net([10, 89, 0, 0], 24);
        assert!(n.overlaps(Ipv4Addr::new(10, 89, 0, 128), 25));
        assert!(n.overlaps(Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(!n.overlaps(Ipv4Addr::new(10, 89, 1, 0), 24));
        assert!(n.contains(Ipv4Addr::new(10, 89, 0, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 89, 1, 2)));
    }

    #[test]
    fn leases_take_the_lowest_free_address_and_run_out_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path();
        // A /29: gateway .1, containers .2 to .6, broadcast .7.
        let n = Network {
            name: "small".into(),
            ..net([10, 99, 0, 0], 29)
        };
        write_definition(state, n.clone()).unwrap();
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| lease(state, &n, &format!("c{i}")).unwrap())
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 99, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 99, 0, 6)));
        assert!(matches!(
            lease(state, &n, "c5"),
            Err(NetworkError::Exhausted(_))
        ));
        // Only the holder gives an address back; it is then reused first.
        release(state, "small", Ipv4Addr::new(10, 99, 0, 3), "someone-else");
        assert!(matches!(
            lease(state, &n, "c5"),
            Err(NetworkError::Exhausted(_))
        ));
        release(state, "small", Ipv4Addr::new(10, 99, 0, 3), "c1");
        assert_eq!(lease(state, &n, "c5").unwrap(), Ipv4Addr::new(10, 99, 0, 3));
        let m = members(state, &n, "c5");
        assert_eq!(m.len(), 4);
        assert!(m.iter().all(|(_, id)| id != "c5"));
    }

    #[test]
    fn bridges_are_named_per_state_directory_and_checked_on_load() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let name = |s: &Path, n: &str| bridge_name(s, n);
        assert_ne!(name(a.path(), "test1"), name(a.path(), "test2"));
        assert_ne!(name(a.path(), "bridge"), name(b.path(), "bridge"));
        assert_eq!(name(a.path(), "x"), name(a.path(), "x"));
        assert!(name(a.path(), "x").len() <= 15);
        let net = get(a.path(), DEFAULT_NETWORK).unwrap();
        assert_eq!(net.bridge, name(a.path(), DEFAULT_NETWORK));
        // A tampered record cannot smuggle words into `ip` or `nft`.
        let path = network_dir(a.path(), DEFAULT_NETWORK).join("network.json");
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace(&net.bridge, "eth0 type dummy");
        fs::write(&path, text).unwrap();
        assert!(matches!(
            get(a.path(), DEFAULT_NETWORK),
            Err(NetworkError::Invalid(_))
        ));
    }

    #[test]
    fn containers_get_dockers_mac_for_their_address() {
        assert_eq!(
            mac_address(Ipv4Addr::new(10, 89, 0, 2)),
            "02:42:0a:59:00:02"
        );
        assert_eq!(
            mac_address(Ipv4Addr::new(192, 168, 255, 254)),
            "02:42:c0:a8:ff:fe"
        );
    }

    /// What a hostile container tries, and the rule of the bridge table that stops it:
    /// another source MAC or address (IPv4, or in ARP: the frame's and the ARP
    /// sender's MAC must both be its link's), ARP that is not Ethernet/IPv4, IPv6 or
    /// any other protocol; the host itself and link-local addresses are out of its
    /// reach in the network's own table. (The e2e network table sends such frames.)
    #[test]
    fn link_rules_allow_only_the_leased_address_and_mac() {
        let rules = links_table("arca_br");
        for rule in [
            "prerouting iifname != @guarded accept",
            "prerouting ether type ip iifname . ether saddr . ip saddr @senders accept",
            "prerouting ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
             iifname . ether saddr . arp saddr ip @senders \
             iifname . arp saddr ether . arp saddr ip @senders accept",
            "set senders { type ifname . ether_addr . ipv4_addr; }",
            "flush chain bridge arca_br prerouting",
        ] {
            assert!(rules.contains(rule), "{rule} missing from {rules}");
        }
        // Fail closed: what the accepts did not check (a frame too short for its
        // headers, any other protocol) meets the last rule.
        assert!(
            rules.ends_with("add rule bridge arca_br prerouting drop\n"),
            "{rules}"
        );
        assert!(!rules.contains("!= @senders"), "{rules}");
        // A link's elements: its name, and its name with the MAC and address it owns.
        let (guarded, sender) = link_elements("arcavx", Ipv4Addr::new(10, 89, 0, 7));
        assert_eq!(guarded, netlink::SetKey::default().ifname("arcavx"));
        assert_eq!(
            sender,
            netlink::SetKey::default()
                .ifname("arcavx")
                .ether([2, 0x42, 10, 89, 0, 7])
                .ipv4(Ipv4Addr::new(10, 89, 0, 7))
        );
        let net = net([10, 89, 0, 0], 24);
        let table = network_rules(&net);
        for rule in [
            "iifname \"arcabr-test\" ip daddr 169.254.0.0/16 drop",
            "chain input {",
            "iifname \"arcabr-test\" ct state established,related accept",
            "iifname \"arcabr-test\" drop",
            "table bridge arca_arcabr_test",
        ] {
            assert!(table.contains(rule), "{rule} missing from {table}");
        }
    }

    /// The batches are nftables' own syntax: `nft --check` (root only) parses them
    /// and has the kernel try them.
    #[test]
    fn nft_accepts_the_batches() {
        let Ok(nft) = tool("nft", "nftables") else {
            return;
        };
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let net = Network {
            bridge: "arcabrnfttest".into(),
            ..net([10, 89, 250, 0], 24)
        };
        let batch = network_rules(&net) + &links_table(&net.table()) + &forward_guard();
        run(nft, &["--check", "-f", "-"], Some(&batch)).unwrap();
    }

    #[test]
    fn network_names_follow_dockers_rule() {
        assert!(valid_name("front-end_1.x"));
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn user_networks_get_the_next_free_subnet_and_refuse_overlaps_and_reserved_names() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path();
        let a = create(state, "alpha", None).unwrap();
        assert_eq!(a.cidr(), "10.89.1.0/24");
        assert_eq!(a.gateway, Ipv4Addr::new(10, 89, 1, 1));
        assert!(a.bridge.len() <= 15);
        let b = create(state, "beta", None).unwrap();
        assert_eq!(b.cidr(), "10.89.2.0/24");
        let e = create(state, "gamma", Some("10.89.1.128/25")).unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
        assert!(create(state, "alpha", None).is_err());
        for reserved in ["bridge", "none", "host"] {
            assert!(create(state, reserved, None).is_err());
        }
        let names: Vec<String> = list(state).unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["bridge", "alpha", "beta"]);
        assert!(matches!(get(state, "nope"), Err(NetworkError::NotFound(_))));
        assert!(remove(state, "bridge").is_err());
    }
}
