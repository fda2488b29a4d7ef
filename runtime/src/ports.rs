//! `-p [IP:][HOST:]CONTAINER[/tcp]`: published ports.
//!
//! The container's supervisor (the foreground `arca run`, or the `arca __monitor` of a
//! detached container) binds each host port before the container is created, so a
//! port in use is an error at `run` time, and accepts on it while the container runs.
//! Each accepted connection becomes a `forward` connection to the agent, which connects
//! to the port inside the container's network namespace: the same path for a microVM
//! (over vsock) and for process isolation (over the agent's Unix socket), with no DNAT
//! rules. The listeners close when the supervisor stops forwarding or dies.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use vmm::agent_client::AgentAddress;

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address to listen on (`0.0.0.0`: every address).
    pub host_ip: Ipv4Addr,
    /// Host port; 0 until bound when none was given.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/tcp -> {}:{}",
            self.container_port, self.host_ip, self.host_port
        )
    }
}

/// Parses Docker's `-p` forms: `CONTAINER`, `HOST:CONTAINER`, `IP:HOST:CONTAINER`,
/// `IP::CONTAINER`, each with an optional `/tcp`. UDP and port ranges are refused by
/// name (not supported yet).
pub fn parse(spec: &str) -> Result<PortMapping, String> {
    let bad = |why: &str| format!("Invalid port mapping {spec:?}: {why}");
    let (body, proto) = match spec.rsplit_once('/') {
        Some((b, p)) => (b, p),
        None => (spec, "tcp"),
    };
    match proto {
        "tcp" => {}
        "udp" | "sctp" => {
            return Err(format!(
                "Publishing {proto} ports is not supported yet ({spec:?}): only TCP"
            ));
        }
        _ => return Err(bad("the protocol must be tcp")),
    }
    let port = |p: &str, what: &str, zero_ok: bool| -> Result<u16, String> {
        if p.contains('-') {
            return Err(format!(
                "Port ranges are not supported yet ({spec:?}): publish each port"
            ));
        }
        match p.parse::<u16>() {
            Ok(0) if !zero_ok => Err(bad(&format!("{what} port 0"))),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(&format!(
                "{what} port {p:?} is not a number from 1 to 65535"
            ))),
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
    Ok(PortMapping {
        host_ip,
        host_port: if host.is_empty() {
            0
        } else {
            port(host, "host", false)?
        },
        container_port: port(container, "container", false)?,
    })
}

/// The bound listeners of a container; [`Forwarders::start`] serves them.
#[derive(Debug)]
pub struct Listeners(Vec<(PortMapping, TcpListener)>);

/// Binds every mapping's host address (port 0 picks a free one). Docker's message for a
/// port in use.
pub fn bind(mappings: &[PortMapping]) -> Result<Listeners, String> {
    let mut out = Vec::new();
    for m in mappings {
        let l = TcpListener::bind((m.host_ip, m.host_port)).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                format!(
                    "Bind for {}:{} failed: port is already allocated",
                    m.host_ip, m.host_port
                )
            } else {
                format!("Cannot listen on {}:{}: {e}", m.host_ip, m.host_port)
            }
        })?;
        let port = l.local_addr().map(|a| a.port()).unwrap_or(m.host_port);
        out.push((
            PortMapping {
                host_port: port,
                ..*m
            },
            l,
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

/// Connections one published port forwards at once; more are closed on arrival.
const MAX_OPEN_CONNECTIONS: usize = 1024;

/// Running forwarders; dropping them closes the listeners.
#[derive(Debug)]
pub struct Forwarders {
    stop: Arc<AtomicBool>,
    listeners: Vec<TcpListener>,
}

impl Forwarders {
    /// Serves each listener: every connection is forwarded to the agent at `address`,
    /// for container `id`.
    pub fn start(listeners: Listeners, address: &AgentAddress, id: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut kept = Vec::new();
        for (m, l) in listeners.0 {
            if let Ok(copy) = l.try_clone() {
                kept.push(copy);
            }
            let (address, id, stop) = (address.clone(), id.to_string(), stop.clone());
            let open = Arc::new(AtomicUsize::new(0));
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let conn = match conn {
                        Ok(c) => c,
                        // Out of descriptors, say: wait rather than spin.
                        Err(_) => {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            continue;
                        }
                    };
                    // Each connection costs two threads here: beyond the bound, refuse.
                    if open.fetch_add(1, Ordering::SeqCst) >= MAX_OPEN_CONNECTIONS {
                        open.fetch_sub(1, Ordering::SeqCst);
                        drop(conn);
                        continue;
                    }
                    let (address, id, done) = (address.clone(), id.clone(), open.clone());
                    let spawned = std::thread::Builder::new().spawn(move || {
                        forward_one(conn, &address, &id, m.container_port);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                    if spawned.is_err() {
                        open.fetch_sub(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            });
        }
        Forwarders {
            stop,
            listeners: kept,
        }
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            // Wakes the accepting thread (accept fails with EINVAL), which then ends.
            let _ = rustix::net::shutdown(l, rustix::net::Shutdown::Both);
        }
    }
}

/// One forwarded connection: the client's bytes to the agent's forward stream and back,
/// each half-close passed on. A container port with nothing behind it closes the
/// client's connection at once.
fn forward_one(client: TcpStream, address: &AgentAddress, id: &str, port: u16) {
    let Ok(agent) = address.forward(id, port) else {
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
    let mut client_out = client;
    let mut from_agent = io::Cursor::new(pending).chain(agent);
    let _ = copy_until_closed(&mut from_agent, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = upstream.join();
}

fn copy_until_closed(from: &mut impl Read, to: &mut TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_port_forms_parse() {
        let p = |s| parse(s).unwrap();
        assert_eq!(
            p("8080:80"),
            PortMapping {
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 8080,
                container_port: 80
            }
        );
        assert_eq!(p("127.0.0.1:8080:80/tcp").host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(p("127.0.0.1::80").host_port, 0);
        assert_eq!(p("80").host_port, 0);
        assert_eq!(p("80").container_port, 80);
        assert_eq!(p("8080:80").to_string(), "80/tcp -> 0.0.0.0:8080");
    }

    #[test]
    fn bad_port_mappings_say_what_is_wrong() {
        for (spec, needle) in [
            ("8080:80/udp", "udp"),
            ("8080-8081:80-81", "ranges"),
            ("x:80", "host port"),
            ("8080:0", "container port 0"),
            ("8080:70000", "container port"),
            ("1.2.3:8080:80", "IPv4"),
            ("a:b:c:d", "[IP:]"),
            ("80/icmp", "tcp"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn a_port_in_use_is_refused_with_dockers_message() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = bind(&[PortMapping {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port: port,
            container_port: 80,
        }])
        .unwrap_err();
        assert_eq!(
            e,
            format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
        );
        // Port 0 gets a free port, reported back.
        let l = bind(&[PortMapping {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port: 0,
            container_port: 80,
        }])
        .unwrap();
        assert_ne!(l.mappings()[0].host_port, 0);
    }
}
