//! A sandbox's place on the network, decided before it starts: the container's
//! address leased, its network's bridge up, and its host link (a microVM's TAP or a
//! veth into the container's namespace) guarded by anti-spoofing rules on that bridge.

use std::path::Path;

use arca_protocol::NetworkMode;

use crate::container::{Isolation, RunOptions};
use crate::error::RunError;
use crate::netlink;
use crate::network::{self, Network};

/// A container's place on the network, decided before its sandbox starts: its address
/// is leased and its network's bridge up. Dropping it gives the address back and takes
/// the network down if nothing else uses it.
#[derive(Debug)]
pub struct Attachment<'a> {
    state: &'a Path,
    choice: NetChoice,
    /// The index of the host link this container made, once made.
    ifindex: std::cell::Cell<Option<u32>>,
    /// The sandbox ended cleanly, taking the container's link with it.
    pub(super) ended: std::cell::Cell<bool>,
    /// Keeps the network's resolver up while the container runs, once its
    /// `/etc/resolv.conf` names it.
    dns_watch: std::cell::RefCell<Option<crate::dns::Watch>>,
}

#[derive(Debug)]
enum NetChoice {
    /// `--network none`: loopback only.
    None,
    /// `--network host` (process isolation): the host's own stack.
    Host,
    /// A network: an address on its bridge, through a link named after the container.
    Joined {
        net: Network,
        address: std::net::Ipv4Addr,
        /// The host side of the container's link: a veth or a TAP.
        link: String,
        id: String,
    },
}

impl<'a> Attachment<'a> {
    pub fn prepare(state: &'a Path, opts: &RunOptions, id: &str) -> Result<Self, RunError> {
        let choice = match opts.network.as_deref() {
            Some("none") => NetChoice::None,
            Some("host") => NetChoice::Host,
            name => {
                let name = name.unwrap_or(network::DEFAULT_NETWORK);
                if !rustix::process::geteuid().is_root() {
                    return Err(RunError::Invalid(format!(
                        "Joining network {name} needs root (it makes bridges and links): run as root, or use --network none (-p still works)"
                    )));
                }
                let (net, address) = network::join(state, name, id)?;
                let kind = match opts.isolation {
                    Isolation::Vm => network::LinkKind::Tap,
                    Isolation::Process => network::LinkKind::Veth,
                };
                let link = network::link_name(kind, id);
                // From here on, dropping the attachment gives the lease back.
                return Ok(Attachment {
                    state,
                    choice: NetChoice::Joined {
                        net,
                        address,
                        link,
                        id: id.to_string(),
                    },
                    ifindex: std::cell::Cell::new(None),
                    ended: std::cell::Cell::new(false),
                    dns_watch: std::cell::RefCell::new(None),
                });
            }
        };
        Ok(Attachment {
            state,
            choice,
            ifindex: std::cell::Cell::new(None),
            ended: std::cell::Cell::new(false),
            dns_watch: std::cell::RefCell::new(None),
        })
    }

    /// Notes which link is ours (by its index: a later container of the same name gets
    /// the same link name), once it exists.
    pub fn remember_link(&self) {
        if let Some((link, _)) = self.link() {
            self.ifindex.set(netlink::link_index(&link));
        }
    }

    /// The host link to make and the bridge it joins.
    pub fn link(&self) -> Option<(String, String)> {
        match &self.choice {
            NetChoice::Joined { net, link, .. } => Some((link.clone(), net.bridge.clone())),
            _ => None,
        }
    }

    /// The container's MAC address, the only one its link may send from.
    pub fn mac(&self) -> Option<String> {
        self.address().map(network::mac_address)
    }

    /// [`Attachment::mac`] as bytes.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.address().map(network::mac_bytes)
    }

    /// Puts the container's link under its anti-spoofing rules, then runs `join`
    /// (which puts the link on the bridge).
    pub fn guard(
        &self,
        join: impl FnOnce() -> Result<(), network::NetworkError>,
    ) -> Result<(), network::NetworkError> {
        match &self.choice {
            NetChoice::Joined {
                net, address, link, ..
            } => network::guard_link(self.state, net, link, *address, join),
            _ => Ok(()),
        }
    }

    pub fn name(&self) -> String {
        match &self.choice {
            NetChoice::None => "none".into(),
            NetChoice::Host => "host".into(),
            NetChoice::Joined { net, .. } => net.name.clone(),
        }
    }

    pub fn address(&self) -> Option<std::net::Ipv4Addr> {
        match &self.choice {
            NetChoice::Joined { address, .. } => Some(*address),
            _ => None,
        }
    }

    /// In a microVM the container shares the guest's stack (the VM is its wall); on
    /// the host it gets a namespace of its own unless `--network host`.
    pub fn mode(&self, isolation: Isolation) -> NetworkMode {
        match (&self.choice, isolation) {
            (NetChoice::Host, _) | (NetChoice::Joined { .. }, Isolation::Vm) => NetworkMode::Host,
            _ => NetworkMode::Isolated,
        }
    }

    pub fn interfaces(&self) -> Vec<arca_protocol::Interface> {
        match &self.choice {
            NetChoice::Joined { net, address, .. } => vec![arca_protocol::Interface {
                name: "eth0".into(),
                address: *address,
                prefix_len: net.prefix_len,
                gateway: Some(net.gateway),
            }],
            _ => Vec::new(),
        }
    }

    /// The name servers of its container's `/etc/resolv.conf`: on a network, the
    /// network's resolver on its gateway ([`crate::dns`]: names of the containers on it,
    /// `dns` upstream for the rest), or, when that cannot serve, `dns` itself (the
    /// host's unless the container has its own); none elsewhere.
    pub fn name_servers(&self, dns: &[std::net::Ipv4Addr]) -> Vec<std::net::Ipv4Addr> {
        let NetChoice::Joined { net, .. } = &self.choice else {
            return dns.to_vec();
        };
        // A server only the container itself may reach (its own loopback, the host's,
        // another network's) is not asked by the resolver on its behalf: the container
        // gets it as it is, without the network's names.
        if let Some(d) = dns.iter().find(|d| !self.forwardable(net, **d)) {
            eprintln!(
                "WARNING: --dns {d} is asked by the container itself, not by network {}'s resolver: names of the containers on it will not resolve",
                net.name
            );
            return dns.to_vec();
        }
        if crate::dns::ensure(self.state, net) {
            *self.dns_watch.borrow_mut() = crate::dns::Watch::start(self.state, net);
            vec![net.gateway]
        } else if dns.is_empty() {
            network::name_servers()
        } else {
            dns.to_vec()
        }
    }

    /// Whether the network's resolver may forward to `server` for a container of `net`:
    /// not a loopback, link-local or unspecified address, not one of the host's, not on
    /// another Arca network (which the container could not reach).
    fn forwardable(&self, net: &Network, server: std::net::Ipv4Addr) -> bool {
        !(server.is_loopback()
            || server.is_link_local()
            || server.is_unspecified()
            || server.is_broadcast()
            || network::is_host_address(server)
            || network::list(self.state)
                .is_ok_and(|all| all.iter().any(|n| n.name != net.name && n.contains(server))))
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        // First: a watch would start the resolver again after the bridge (the last
        // container gone) took it down.
        self.dns_watch.borrow_mut().take();
        if let NetChoice::Joined {
            net,
            address,
            link,
            id,
        } = &self.choice
        {
            // A veth goes with the container's namespace and a TAP with its VMM (the
            // kernel removes them, a little later). Unless the sandbox ended cleanly,
            // its owner may outlive the container: delete the link if it is still the
            // one this container made.
            if !self.ended.get()
                && self.ifindex.get().is_some()
                && netlink::link_index(link) == self.ifindex.get()
            {
                network::delete_link(link);
            }
            // Its rules, unless a later container of the same name has the link now.
            let made = self.ifindex.get();
            network::unguard_link(self.state, net, link, *address, || {
                let now = netlink::link_index(link);
                now.is_none() || (made.is_some() && now == made)
            });
            network::release(self.state, &net.name, *address, id);
            network::reconcile_later(self.state, net);
        }
    }
}
