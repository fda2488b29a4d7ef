//! `-p [IP:][HOST:]CONTAINER[/tcp|udp]`: published ports.
//!
//! The container's supervisor (the foreground `arca run`, or the `arca __monitor` of a
//! detached container) binds each host port before the container is created, so a
//! port in use is an error at `run` time, and serves it while the container runs. Each
//! accepted TCP connection, and each UDP client (by its address, until it has been
//! quiet for [`UDP_IDLE`]), becomes a `forward` connection to the agent, which connects
//! to the port inside the container's network namespace: the same path for a microVM
//! (over vsock) and for process isolation (over the agent's Unix socket), with no DNAT
//! rules. The sockets close when the supervisor stops forwarding or dies.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arca_agent_client::AgentAddress;
use arca_protocol::{MAX_DATAGRAM, PortProtocol};
use serde::{Deserialize, Serialize};

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address to listen on (`0.0.0.0`: every address).
    pub host_ip: Ipv4Addr,
    /// Host port; 0 until bound when none was given.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: PortProtocol,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} -> {}:{}",
            self.container_port, self.protocol, self.host_ip, self.host_port
        )
    }
}

/// Most ports one `-p` range may publish.
const MAX_RANGE: usize = 1024;

/// Parses Docker's `-p` forms: `CONTAINER`, `HOST:CONTAINER`, `IP:HOST:CONTAINER`,
/// `IP::CONTAINER`, each with an optional `/tcp` or `/udp`; a port may be a range
/// (`8000-8010:80-90`, or a container range alone, whose host ports are picked), and
/// a host range must be as long as the container's.
pub fn parse(spec: &str) -> Result<Vec<PortMapping>, String> {
    let bad = |why: &str| format!("Invalid port mapping {spec:?}: {why}");
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, "tcp")) => (b, PortProtocol::Tcp),
        Some((b, "udp")) => (b, PortProtocol::Udp),
        Some((_, "sctp")) => {
            return Err(format!(
                "Publishing sctp ports is not supported ({spec:?}): only tcp and udp"
            ));
        }
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (spec, PortProtocol::Tcp),
    };
    let range = |p: &str, what: &str| -> Result<(u16, u16), String> {
        let one = |x: &str| match x.parse::<u16>() {
            Ok(0) => Err(bad(&format!("{what} port 0"))),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(&format!(
                "{what} port {x:?} is not a number from 1 to 65535"
            ))),
        };
        match p.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b {
                    return Err(bad(&format!("{what} range {p} runs backwards")));
                }
                Ok((a, b))
            }
            None => one(p).map(|n| (n, n)),
        }
    };
    let parts: Vec<&str> = body.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => (None, "", *c),
        [h, c] => (None, *h, *c),
        [ip, h, c] => (Some(*ip), *h, *c),
        _ => return Err(bad("use [IP:][HOST_PORT:]CONTAINER_PORT")),
    };
    let host_ip = match ip {
        None | Some("") => Ipv4Addr::UNSPECIFIED,
        Some(a) => a
            .parse()
            .map_err(|_| bad(&format!("{a:?} is not an IPv4 address")))?,
    };
    let (c0, c1) = range(container, "container")?;
    let count = usize::from(c1 - c0) + 1;
    if count > MAX_RANGE {
        return Err(bad(&format!("at most {MAX_RANGE} ports in a range")));
    }
    let host_ports: Vec<u16> = if host.is_empty() {
        vec![0; count]
    } else {
        let (h0, h1) = range(host, "host")?;
        if usize::from(h1 - h0) + 1 != count {
            return Err(bad("the host and container ranges differ in length"));
        }
        (h0..=h1).collect()
    };
    Ok((c0..=c1)
        .zip(host_ports)
        .map(|(container_port, host_port)| PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
        .collect())
}

/// Docker's `EXPOSE` and `--expose` forms, `PORT[/PROTO]` or `FROM-TO[/PROTO]`, as the
/// config's `ExposedPorts` keys (`80/tcp`); a range of more than `max` ports (if given)
/// is refused (`EXPOSE` takes any, as Docker's).
pub fn expose_keys(text: &str, max: Option<usize>) -> Result<Vec<String>, String> {
    let (ports, proto) = match text.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (text, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid containerPort: {p}"))
    };
    let (from, to) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if to < from {
        return Err(format!("invalid port range: {ports}"));
    }
    if let Some(max) = max
        && usize::from(to - from) >= max
    {
        return Err(format!("invalid port range: {ports}: at most {max} ports"));
    }
    Ok((from..=to).map(|p| format!("{p}/{proto}")).collect())
}

/// `-P`: each exposed port (`ExposedPorts` keys, read as Docker reads them: `80` is
/// `80/tcp`) not already published by a `-p` of the same container port and protocol,
/// published on a free host port of every address. `sctp` ones and keys that are no
/// port are left out, with a warning (arca publishes tcp and udp only); more than
/// [`MAX_RANGE`] ports in all is refused (an image's `EXPOSE` list is not the user's
/// to bind without bound).
pub fn publish_all(
    exposed: &[String],
    published: &[PortMapping],
) -> Result<Vec<PortMapping>, String> {
    // (port, udp): what is published already.
    let mut taken: std::collections::HashSet<(u16, bool)> = published
        .iter()
        .map(|m| (m.container_port, m.protocol == PortProtocol::Udp))
        .collect();
    let mut out: Vec<PortMapping> = Vec::new();
    for key in exposed {
        let shown = crate::printable(key);
        let keys = match expose_keys(key, Some(MAX_RANGE)) {
            Ok(k) => k,
            Err(why) => {
                eprintln!("WARNING: exposed port {shown} is not published: {why}");
                continue;
            }
        };
        for k in keys {
            let (port, proto) = k.split_once('/').unwrap_or((&k, "tcp"));
            let Ok(container_port) = port.parse::<u16>() else {
                continue;
            };
            let protocol = match proto {
                "tcp" => PortProtocol::Tcp,
                "udp" => PortProtocol::Udp,
                _ => {
                    eprintln!(
                        "WARNING: port {k} is not published: arca publishes tcp and udp ports only"
                    );
                    continue;
                }
            };
            if !taken.insert((container_port, protocol == PortProtocol::Udp)) {
                continue;
            }
            if out.len() >= MAX_RANGE {
                return Err(format!(
                    "-P would publish more than {MAX_RANGE} ports: publish the ones needed with -p"
                ));
            }
            out.push(PortMapping {
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 0,
                container_port,
                protocol,
            });
        }
    }
    Ok(out)
}

/// A bound host socket.
#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// The bound sockets of a container; [`Forwarders::start`] serves them.
#[derive(Debug)]
pub struct Listeners(Vec<(PortMapping, Socket)>);

/// Binds every mapping's host address (port 0 picks a free one). Docker's message for a
/// port in use.
pub fn bind(mappings: &[PortMapping]) -> Result<Listeners, String> {
    let mut out = Vec::new();
    for m in mappings {
        let addr = (m.host_ip, m.host_port);
        let bound = match m.protocol {
            PortProtocol::Tcp => TcpListener::bind(addr).map(Socket::Tcp),
            PortProtocol::Udp => UdpSocket::bind(addr).map(Socket::Udp),
        };
        let socket = bound.map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                format!(
                    "Bind for {}:{} failed: port is already allocated",
                    m.host_ip, m.host_port
                )
            } else {
                format!(
                    "Cannot listen on {}:{}/{}: {e}",
                    m.host_ip, m.host_port, m.protocol
                )
            }
        })?;
        let local = match &socket {
            Socket::Tcp(l) => l.local_addr(),
            Socket::Udp(u) => u.local_addr(),
        };
        out.push((
            PortMapping {
                host_port: local.map(|a| a.port()).unwrap_or(m.host_port),
                ..*m
            },
            socket,
        ));
    }
    Ok(Listeners(out))
}

impl Listeners {
    /// The mappings with their bound host ports.
    pub fn mappings(&self) -> Vec<PortMapping> {
        self.0.iter().map(|(m, _)| *m).collect()
    }
}

/// Connections (TCP) or clients (UDP) one published port forwards at once; more are
/// turned away.
const MAX_OPEN_CONNECTIONS: usize = 1024;

/// A UDP client that has sent nothing for this long is forgotten (its forward
/// connection closed); Docker's userland proxy waits 90 s.
pub const UDP_IDLE: Duration = Duration::from_secs(90);

/// Running forwarders; dropping them closes the sockets.
#[derive(Debug)]
pub struct Forwarders {
    stop: Arc<AtomicBool>,
    sockets: Vec<Socket>,
}

impl Forwarders {
    /// Serves each socket: every connection or UDP client is forwarded to the agent at
    /// `address`, for container `id`.
    pub fn start(listeners: Listeners, address: &AgentAddress, id: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut kept = Vec::new();
        for (m, socket) in listeners.0 {
            let (address, id, stop) = (address.clone(), id.to_string(), stop.clone());
            match socket {
                Socket::Tcp(l) => {
                    if let Ok(copy) = l.try_clone() {
                        kept.push(Socket::Tcp(copy));
                    }
                    std::thread::spawn(move || serve_tcp(&l, &address, &id, m, &stop));
                }
                Socket::Udp(u) => {
                    if let Ok(copy) = u.try_clone() {
                        kept.push(Socket::Udp(copy));
                    }
                    std::thread::spawn(move || serve_udp(&u, &address, &id, m, &stop));
                }
            }
        }
        Forwarders {
            stop,
            sockets: kept,
        }
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in &self.sockets {
            // Wakes the serving thread (accept fails with EINVAL, recv returns), which
            // then ends.
            let _ = match s {
                Socket::Tcp(l) => rustix::net::shutdown(l, rustix::net::Shutdown::Both),
                Socket::Udp(u) => rustix::net::shutdown(u, rustix::net::Shutdown::Both),
            };
        }
    }
}

fn serve_tcp(l: &TcpListener, address: &AgentAddress, id: &str, m: PortMapping, stop: &AtomicBool) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in l.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            // Out of descriptors, say: wait rather than spin.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Each connection costs two threads here: beyond the bound, refuse.
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_OPEN_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            drop(conn);
            continue;
        }
        let (address, id, done) = (address.clone(), id.to_string(), open.clone());
        let spawned = std::thread::Builder::new().spawn(move || {
            forward_one(conn, &address, &id, m.container_port);
            done.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One UDP client: its forward connection, and when it last sent.
struct UdpClient {
    agent: UnixStream,
    last: Instant,
}

/// Relays datagrams: each client address gets a forward connection of its own (the
/// container sees one socket per client, as behind Docker's proxy), whose answers a
/// thread sends back to that client from the published port.
fn serve_udp(u: &UdpSocket, address: &AgentAddress, id: &str, m: PortMapping, stop: &AtomicBool) {
    let mut clients: HashMap<SocketAddr, UdpClient> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut swept = Instant::now();
    let _ = u.set_read_timeout(Some(Duration::from_secs(1)));
    while !stop.load(Ordering::SeqCst) {
        // Quiet clients go, however busy the others keep the socket.
        if swept.elapsed() >= Duration::from_secs(1) {
            swept = Instant::now();
            clients.retain(|_, c| {
                let keep = c.last.elapsed() < UDP_IDLE;
                if !keep {
                    let _ = c.agent.shutdown(Shutdown::Both);
                }
                keep
            });
        }
        let (n, from) = match u.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if !clients.contains_key(&from) {
            if clients.len() >= MAX_OPEN_CONNECTIONS {
                continue;
            }
            let Some(client) = open_udp_client(u, address, id, m.container_port, from) else {
                continue;
            };
            clients.insert(from, client);
        }
        let Some(c) = clients.get_mut(&from) else {
            continue;
        };
        c.last = Instant::now();
        if arca_protocol::write_datagram(&mut c.agent, &buf[..n]).is_err() {
            clients.remove(&from);
        }
    }
    for c in clients.values() {
        let _ = c.agent.shutdown(Shutdown::Both);
    }
}

/// A forward connection for UDP client `from`, and the thread that sends the
/// container's answers back to it.
fn open_udp_client(
    u: &UdpSocket,
    address: &AgentAddress,
    id: &str,
    port: u16,
    from: SocketAddr,
) -> Option<UdpClient> {
    let conn = address.forward(id, port, PortProtocol::Udp).ok()?;
    let (pending, agent) = conn.into_parts();
    let (Ok(back), Ok(reply_socket)) = (agent.try_clone(), u.try_clone()) else {
        return None;
    };
    std::thread::spawn(move || {
        let mut from_agent = io::Cursor::new(pending).chain(back);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while let Ok(Some(n)) = arca_protocol::read_datagram(&mut from_agent, &mut buf) {
            let _ = reply_socket.send_to(&buf[..n], from);
        }
    });
    Some(UdpClient {
        agent,
        last: Instant::now(),
    })
}

/// One forwarded connection: the client's bytes to the agent's forward stream and back,
/// each half-close passed on. A container port with nothing behind it closes the
/// client's connection at once.
fn forward_one(client: TcpStream, address: &AgentAddress, id: &str, port: u16) {
    let Ok(agent) = address.forward(id, port, PortProtocol::Tcp) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (pending, agent) = agent.into_parts();
    let (Ok(mut client_in), Ok(mut agent_out)) = (client.try_clone(), agent.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut client_in, &mut agent_out);
        let _ = agent_out.shutdown(Shutdown::Write);
    });
    crate::terminal::copy_to(io::Cursor::new(pending).chain(agent), &client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = upstream.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_ports_read_as_docker_reads_them() {
        let expose_keys_any = |t: &str| expose_keys(t, None);
        assert_eq!(expose_keys_any("80").unwrap(), ["80/tcp"]);
        assert_eq!(expose_keys_any("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            expose_keys_any("8000-8002/tcp").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expose_keys_any("0").is_err());
        assert!(expose_keys_any("70000").is_err());
        assert!(expose_keys_any("80/http").is_err());
        assert!(expose_keys_any("9-8").is_err());
        assert_eq!(expose_keys_any("1-65535").unwrap().len(), 65535);
        assert!(expose_keys("1-65535", Some(MAX_RANGE)).is_err());
        // -P: a bare key is tcp, a -p of the port wins, sctp and junk left out, and no
        // more than MAX_RANGE ports from a hostile image.
        let p = publish_all(
            &[
                "80".into(),
                "53/UDP".into(),
                "9/sctp".into(),
                "x\u{1b}".into(),
                "80/tcp".into(),
            ],
            &parse("18080:53/udp").unwrap(),
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].container_port, p[0].protocol),
            (80, PortProtocol::Tcp)
        );
        let many: Vec<String> = (1..=2000).map(|n| format!("{n}/tcp")).collect();
        assert!(
            publish_all(&many, &[])
                .unwrap_err()
                .contains("more than 1024")
        );
    }

    fn one(spec: &str) -> PortMapping {
        let v = parse(spec).unwrap();
        assert_eq!(v.len(), 1, "{spec}");
        v[0]
    }

    #[test]
    fn dockers_port_forms_parse() {
        assert_eq!(
            one("8080:80"),
            PortMapping {
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 8080,
                container_port: 80,
                protocol: PortProtocol::Tcp,
            }
        );
        assert_eq!(one("127.0.0.1:8080:80/tcp").host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(one("127.0.0.1::80").host_port, 0);
        assert_eq!(one("80").host_port, 0);
        assert_eq!(one("80").container_port, 80);
        assert_eq!(one("8080:80").to_string(), "80/tcp -> 0.0.0.0:8080");
        assert_eq!(one("5353:53/udp").protocol, PortProtocol::Udp);
        assert_eq!(one("5353:53/udp").to_string(), "53/udp -> 0.0.0.0:5353");
    }

    #[test]
    fn ranges_expand_pairwise_or_to_picked_host_ports() {
        let v = parse("8000-8002:80-82").unwrap();
        let pairs: Vec<(u16, u16)> = v.iter().map(|m| (m.host_port, m.container_port)).collect();
        assert_eq!(pairs, [(8000, 80), (8001, 81), (8002, 82)]);
        let v = parse("9000-9001/udp").unwrap();
        assert!(
            v.iter()
                .all(|m| m.host_port == 0 && m.protocol == PortProtocol::Udp)
        );
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn bad_port_mappings_say_what_is_wrong() {
        for (spec, needle) in [
            ("8080:80/sctp", "sctp"),
            ("8000-8002:80-81", "differ in length"),
            ("82-80", "backwards"),
            ("1-2000", "at most 1024"),
            ("x:80", "host port"),
            ("8080:0", "container port 0"),
            ("8080:70000", "container port"),
            ("1.2.3:8080:80", "IPv4"),
            ("a:b:c:d", "[IP:]"),
            ("80/icmp", "tcp or udp"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn a_port_in_use_is_refused_with_dockers_message() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mapping = |protocol, host_port| PortMapping {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port,
            container_port: 80,
            protocol,
        };
        let e = bind(&[mapping(PortProtocol::Tcp, port)]).unwrap_err();
        assert_eq!(
            e,
            format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
        );
        let taken_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = taken_udp.local_addr().unwrap().port();
        let e = bind(&[mapping(PortProtocol::Udp, uport)]).unwrap_err();
        assert!(e.contains("already allocated"), "{e}");
        // Port 0 gets a free port, reported back.
        let l = bind(&[mapping(PortProtocol::Tcp, 0), mapping(PortProtocol::Udp, 0)]).unwrap();
        assert!(l.mappings().iter().all(|m| m.host_port != 0));
    }
}
