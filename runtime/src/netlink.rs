//! The few kernel requests a container's host link needs, made over netlink from this
//! process instead of by starting `ip` and `nft`: on the path of every `arca run`,
//! each of those costs a process start (a few milliseconds on a host, a large share of
//! a start under emulation), where a netlink request costs a system call.
//!
//! - rtnetlink: a link onto its bridge and up ([`set_master_up`]), a veth pair with its
//!   peer in a container's namespace ([`add_veth`]), a link deleted ([`delete_link`]),
//!   and a bridge made ([`add_bridge`]).
//! - nf_tables: elements added to or removed from the sets of a network's table
//!   ([`SetElements`]), in one batch that the kernel applies whole or not at all.
//!
//! Requests are encoded here (a message builder with nested attributes) and every one
//! asks for an acknowledgement, so a refusal comes back as the kernel's errno. What is
//! read back is the kernel's answers on a socket no one else can write to: acks only.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// Errors of netlink requests.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be made or used.
    #[error("Cannot {action} (netlink)")]
    Socket {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("The kernel refused to {what}")]
    Refused {
        /// The request, in words.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel did not answer in time.
    #[error("The kernel did not answer a netlink request within {} s", .0.as_secs())]
    NoAnswer(Duration),
    /// No link has the name.
    #[error("No link named {0}")]
    NoLink(String),
    /// The kernel's answer made no sense.
    #[error("Unexpected netlink answer: {0}")]
    Protocol(String),
}

impl NetlinkError {
    /// The errno the kernel refused a request with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

// Netlink message header flags and types (linux/netlink.h).
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

// rtnetlink (linux/rtnetlink.h, linux/if_link.h, linux/veth.h, linux/if_addr.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_IFALIAS: u16 = 20;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const AF_UNSPEC: u8 = 0;

// nfnetlink and nf_tables (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
/// The bridge family of nf_tables (NFPROTO_BRIDGE).
pub const NFPROTO_BRIDGE: u8 = 7;

/// Interface names are at most this long with their NUL (IFNAMSIZ).
pub const IFNAMSIZ: usize = 16;

/// How long the kernel may take to answer (it answers at once; this only keeps a lost
/// answer from hanging a start).
const ANSWER_PATIENCE: Duration = Duration::from_secs(5);

/// One netlink message: a header, a fixed family header, then attributes (some nested).
#[derive(Debug)]
struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    /// A message of `kind` with `flags` (besides REQUEST and ACK) and `header`, the
    /// family's fixed header.
    fn new(kind: u16, flags: u16, header: &[u8]) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(header);
        pad(&mut buf);
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    /// A NUL-terminated string attribute.
    fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; what is added until [`Message::end`] goes in it.
    fn nest(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Raw bytes inside the open nest (veth's peer starts with a link header).
    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The message's bytes with its length and sequence number.
    fn finish(mut self, seq: u32) -> Vec<u8> {
        debug_assert!(self.nests.is_empty(), "unclosed netlink nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A link header (struct ifinfomsg): any family, `index`, and `flags` changed as `change`
/// says.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// An nfnetlink header (struct nfgenmsg): `family`, version 0, `res_id` (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let id = res_id.to_be_bytes();
    [family, 0, id[0], id[1]]
}

/// A request to send: its message, what it does in words (for an error), and whether
/// it asks for an acknowledgement (batch delimiters do not; the kernel still answers
/// them with an error when the batch as a whole fails).
struct Request {
    message: Message,
    what: String,
    ack: bool,
}

impl Request {
    fn acked(message: Message, what: impl Into<String>) -> Self {
        Request {
            message,
            what: what.into(),
            ack: true,
        }
    }
}

/// Sends `requests` in one datagram and waits until the kernel acknowledged every one
/// that asks for it. The first refusal the kernel reports, of any request (a batch
/// delimiter's included), ends the wait and is returned in that request's words.
fn transact(
    protocol: Option<rustix::net::Protocol>,
    requests: Vec<Request>,
) -> Result<(), NetlinkError> {
    let socket = open(protocol)?;
    let mut datagram = Vec::new();
    let mut pending: Vec<u32> = Vec::new();
    let mut whats = Vec::new();
    for (i, r) in requests.into_iter().enumerate() {
        let seq = i as u32 + 1;
        let mut m = r.message;
        if r.ack {
            let flags = u16::from_ne_bytes([m.buf[6], m.buf[7]]) | NLM_F_ACK;
            m.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
            pending.push(seq);
        }
        whats.push(r.what);
        datagram.extend_from_slice(&m.finish(seq));
    }
    send(&socket, &datagram)?;
    let mut buf = vec![0u8; 64 * 1024];
    while !pending.is_empty() {
        let n = receive(&socket, &mut buf)?;
        for a in answers(&buf[..n])? {
            let Some(errno) = a.errno else { continue };
            if errno != 0 {
                let what = whats
                    .get(a.seq.wrapping_sub(1) as usize)
                    .cloned()
                    .unwrap_or_else(|| "apply a netlink request".into());
                return Err(NetlinkError::Refused {
                    what,
                    source: io::Error::from_raw_os_error(errno),
                });
            }
            pending.retain(|s| *s != a.seq);
        }
    }
    Ok(())
}

fn send(socket: &OwnedFd, datagram: &[u8]) -> Result<(), NetlinkError> {
    rustix::net::sendto(
        socket,
        datagram,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )
    .map(|_| ())
    .map_err(|e| NetlinkError::Socket {
        action: "send a request",
        source: e.into(),
    })
}

fn receive(socket: &OwnedFd, buf: &mut [u8]) -> Result<usize, NetlinkError> {
    match rustix::net::recv(socket, buf, RecvFlags::empty()) {
        Ok((n, _)) => Ok(n),
        Err(rustix::io::Errno::AGAIN) => Err(NetlinkError::NoAnswer(ANSWER_PATIENCE)),
        Err(e) => Err(NetlinkError::Socket {
            action: "read the kernel's answer",
            source: e.into(),
        }),
    }
}

fn open(protocol: Option<rustix::net::Protocol>) -> Result<OwnedFd, NetlinkError> {
    let socket = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        protocol,
    )
    .map_err(|e| NetlinkError::Socket {
        action: "open a socket",
        source: e.into(),
    })?;
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(ANSWER_PATIENCE),
    )
    .map_err(|e| NetlinkError::Socket {
        action: "set a timeout",
        source: e.into(),
    })?;
    Ok(socket)
}

/// One message from the kernel: its sequence number, type, and for an error or
/// acknowledgement its errno (0 for success); the bytes after its header.
#[derive(Debug)]
struct Answer<'a> {
    seq: u32,
    kind: u16,
    errno: Option<i32>,
    body: &'a [u8],
}

/// The messages in one datagram from the kernel.
fn answers(mut data: &[u8]) -> Result<Vec<Answer<'_>>, NetlinkError> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(NetlinkError::Protocol(format!(
                "a message of {len} bytes in {} bytes",
                data.len()
            )));
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
        let body = &data[NLMSG_HDRLEN..len];
        let errno = if kind == NLMSG_ERROR {
            let code = body
                .get(0..4)
                .ok_or_else(|| NetlinkError::Protocol("a short error message".into()))?;
            Some(-i32::from_ne_bytes(code.try_into().unwrap_or_default()))
        } else {
            None
        };
        out.push(Answer {
            seq,
            kind,
            errno,
            body,
        });
        let step = len.next_multiple_of(4).min(data.len());
        data = &data[step..];
    }
    Ok(out)
}

/// The index of the link named `name` in this process's network namespace (asked of
/// the kernel: sysfs shows the namespace it was mounted in), or `None` if there is none.
pub fn link_index(name: &str) -> Option<u32> {
    find_link(name).ok()
}

fn find_link(name: &str) -> Result<u32, NetlinkError> {
    let socket = open(None)?;
    let mut m = Message::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, name);
    send(&socket, &m.finish(1))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = receive(&socket, &mut buf)?;
        for a in answers(&buf[..n])? {
            if a.seq != 1 {
                continue;
            }
            match a.errno {
                Some(0) => {}
                Some(_) => return Err(NetlinkError::NoLink(name.to_string())),
                None if a.kind == RTM_NEWLINK && a.body.len() >= 8 => {
                    let index = u32::from_ne_bytes(a.body[4..8].try_into().unwrap_or_default());
                    return Ok(index);
                }
                None => {}
            }
        }
    }
}

/// `ip link set LINK master BRIDGE up`.
pub fn set_master_up(link: &str, bridge: &str) -> Result<(), NetlinkError> {
    let master = find_link(bridge)?;
    let mut m = Message::new(RTM_SETLINK, 0, &ifinfomsg(0, IFF_UP, IFF_UP));
    m.attr_str(IFLA_IFNAME, link).attr_u32(IFLA_MASTER, master);
    transact(
        None,
        vec![Request::acked(m, format!("put {link} on bridge {bridge}"))],
    )
}

/// `ip link del LINK`.
pub fn delete_link(link: &str) -> Result<(), NetlinkError> {
    let mut m = Message::new(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, link);
    transact(None, vec![Request::acked(m, format!("delete link {link}"))])
}

/// `ip link add LINK type veth peer name PEER address MAC netns PID`, then LINK onto
/// `bridge` and up.
pub fn add_veth(
    link: &str,
    peer: &str,
    mac: [u8; 6],
    netns_pid: u32,
    bridge: &str,
) -> Result<(), NetlinkError> {
    let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, link)
        .nest(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "veth")
        .nest(IFLA_INFO_DATA)
        .nest(VETH_INFO_PEER)
        .raw(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, peer)
        .attr(IFLA_ADDRESS, &mac)
        .attr_u32(IFLA_NET_NS_PID, netns_pid)
        .end()
        .end()
        .end();
    transact(
        None,
        vec![Request::acked(
            m,
            format!("make veth pair {link} (peer {peer})"),
        )],
    )?;
    set_master_up(link, bridge)
}

/// `ip link add BRIDGE address MAC type bridge`, `ip addr add GATEWAY/PREFIX dev
/// BRIDGE`, `ip link set BRIDGE alias ALIAS` (when given), then up. A bridge left half
/// made is the caller's to delete.
pub fn add_bridge(
    bridge: &str,
    mac: [u8; 6],
    gateway: Ipv4Addr,
    prefix_len: u8,
    alias: Option<&str>,
) -> Result<(), NetlinkError> {
    let mut m = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, bridge)
        .attr(IFLA_ADDRESS, &mac)
        .nest(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "bridge")
        .end();
    transact(
        None,
        vec![Request::acked(m, format!("make bridge {bridge}"))],
    )?;
    let index = find_link(bridge)?;
    // struct ifaddrmsg: family, prefix length, flags, scope (universe), index.
    let mut header = [AF_INET, prefix_len, 0, 0, 0, 0, 0, 0];
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut addr = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &header);
    addr.attr(IFA_LOCAL, &gateway.octets())
        .attr(IFA_ADDRESS, &gateway.octets());
    let mut up = Message::new(RTM_SETLINK, 0, &ifinfomsg(index, IFF_UP, IFF_UP));
    if let Some(alias) = alias {
        up.attr(IFLA_IFALIAS, alias.as_bytes());
    }
    transact(
        None,
        vec![
            Request::acked(
                addr,
                format!("give bridge {bridge} address {gateway}/{prefix_len}"),
            ),
            Request::acked(up, format!("bring bridge {bridge} up")),
        ],
    )
}

/// A key of a set: the bytes nf_tables compares, each field of a concatenation in
/// whole 32-bit words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetKey(Vec<u8>);

impl SetKey {
    /// An interface name (`ifname`): NUL-padded to [`IFNAMSIZ`]. Names are checked by
    /// their makers; a longer one is cut, which no real link matches.
    pub fn ifname(mut self, name: &str) -> Self {
        let mut field = [0u8; IFNAMSIZ];
        let bytes = name.as_bytes();
        let n = bytes.len().min(IFNAMSIZ - 1);
        field[..n].copy_from_slice(&bytes[..n]);
        self.0.extend_from_slice(&field);
        self
    }

    /// An Ethernet address (`ether_addr`).
    pub fn ether(mut self, mac: [u8; 6]) -> Self {
        self.0.extend_from_slice(&mac);
        pad(&mut self.0);
        self
    }

    /// An IPv4 address (`ipv4_addr`), in network order.
    pub fn ipv4(mut self, a: Ipv4Addr) -> Self {
        self.0.extend_from_slice(&a.octets());
        self
    }
}

/// Elements of sets of one nf_tables table, added and removed in one batch: one
/// message a set and change, however many elements (every message is acknowledged,
/// and a few hundred acknowledgements would overflow the socket's buffer).
#[derive(Debug)]
pub struct SetElements {
    family: u8,
    table: String,
    changes: Vec<(bool, String, Vec<SetKey>)>,
}

impl SetElements {
    pub fn new(family: u8, table: &str) -> Self {
        SetElements {
            family,
            table: table.to_string(),
            changes: Vec::new(),
        }
    }

    /// Adds `keys` to `set` (those there already stay).
    pub fn add(self, set: &str, keys: Vec<SetKey>) -> Self {
        self.change(true, set, keys)
    }

    /// Removes `keys` from `set` (refused with ENOENT if one is not there: add them
    /// first in the same batch to remove them whether or not they were).
    pub fn remove(self, set: &str, keys: Vec<SetKey>) -> Self {
        self.change(false, set, keys)
    }

    fn change(mut self, add: bool, set: &str, keys: Vec<SetKey>) -> Self {
        if !keys.is_empty() {
            self.changes.push((add, set.to_string(), keys));
        }
        self
    }

    /// Applies every change, all or none.
    pub fn commit(self) -> Result<(), NetlinkError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let batch = format!("apply changes to table {}", self.table);
        let delimiter = |kind| Request {
            message: Message::new(kind, 0, &nfgenmsg(AF_UNSPEC, NFNL_SUBSYS_NFTABLES)),
            what: batch.clone(),
            ack: false,
        };
        let mut requests = vec![delimiter(NFNL_MSG_BATCH_BEGIN)];
        for (add, set, keys) in self.changes {
            let (kind, flags, verb) = if add {
                (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add to")
            } else {
                (NFT_MSG_DELSETELEM, 0, "remove from")
            };
            let mut m = Message::new(
                (NFNL_SUBSYS_NFTABLES << 8) | kind,
                flags,
                &nfgenmsg(self.family, 0),
            );
            m.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table)
                .attr_str(NFTA_SET_ELEM_LIST_SET, &set)
                .nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for key in &keys {
                m.nest(NFTA_LIST_ELEM)
                    .nest(NFTA_SET_ELEM_KEY)
                    .attr(NFTA_DATA_VALUE, &key.0)
                    .end()
                    .end();
            }
            m.end();
            let what = format!(
                "{verb} set {set} of table {} ({} elements)",
                self.table,
                keys.len()
            );
            requests.push(Request::acked(m, what));
        }
        requests.push(delimiter(NFNL_MSG_BATCH_END));
        transact(Some(rustix::net::netlink::NETFILTER), requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_measured() {
        let mut m = Message::new(RTM_SETLINK, 0, &ifinfomsg(7, IFF_UP, IFF_UP));
        m.attr_str(IFLA_IFNAME, "tap0")
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .end();
        let bytes = m.finish(9);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        // Header 16 + ifinfomsg 16, then "tap0\0" in an 12-byte attribute (9 + 3 pad).
        assert_eq!(&bytes[32..34], &9u16.to_ne_bytes());
        assert_eq!(&bytes[36..41], b"tap0\0");
        // The nest: its own 4 bytes and a 12-byte "veth\0" attribute, flagged nested.
        assert_eq!(&bytes[44..46], &16u16.to_ne_bytes());
        assert_eq!(
            &bytes[46..48],
            &(IFLA_LINKINFO | NLA_F_NESTED).to_ne_bytes()
        );
    }

    #[test]
    fn keys_put_each_field_in_whole_words() {
        let key = SetKey::default()
            .ifname("arcat0123456789")
            .ether([2, 0x42, 10, 89, 0, 2])
            .ipv4(Ipv4Addr::new(10, 89, 0, 2));
        assert_eq!(key.0.len(), 16 + 8 + 4);
        assert_eq!(&key.0[..15], b"arcat0123456789");
        assert_eq!(key.0[15], 0);
        assert_eq!(&key.0[16..24], &[2, 0x42, 10, 89, 0, 2, 0, 0]);
        assert_eq!(&key.0[24..], &[10, 89, 0, 2]);
        // A name too long for a link is cut, and matches none.
        assert_eq!(SetKey::default().ifname(&"x".repeat(40)).0.len(), IFNAMSIZ);
    }

    #[test]
    fn acks_are_read_with_their_errno() {
        let mut data = Vec::new();
        for (seq, code) in [(3u32, 0i32), (4, -2)] {
            let mut m = vec![0u8; 36];
            m[0..4].copy_from_slice(&36u32.to_ne_bytes());
            m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m[8..12].copy_from_slice(&seq.to_ne_bytes());
            m[16..20].copy_from_slice(&code.to_ne_bytes());
            data.extend_from_slice(&m);
        }
        let got: Vec<(u32, Option<i32>)> = answers(&data)
            .unwrap()
            .iter()
            .map(|a| (a.seq, a.errno))
            .collect();
        assert_eq!(got, vec![(3, Some(0)), (4, Some(2))]);
        // A length past the datagram is an error, not a panic.
        let mut bad = data.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(answers(&bad).is_err());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(answers(&bad).is_err());
        // An error message too short for its code.
        let mut short = vec![0u8; 16];
        short[0..4].copy_from_slice(&16u32.to_ne_bytes());
        short[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(answers(&short).is_err());
    }
}
