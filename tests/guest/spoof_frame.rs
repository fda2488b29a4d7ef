//! `spoof-frame udp IFACE SRC_MAC SRC_IP DST_MAC DST_IP PORT MESSAGE`: sends one UDP
//! datagram in an Ethernet frame crafted whole (any source MAC and IP) on IFACE.
//! `spoof-frame arp IFACE SRC_MAC SRC_IP`: broadcasts an ARP reply saying SRC_IP is at
//! SRC_MAC.
//! `spoof-frame short IFACE SRC_MAC ip|arp`: broadcasts a frame of that type from SRC_MAC
//! too short to hold the header's addresses (a bridge that let it through would learn
//! SRC_MAC on the sender's port, and send it what was meant for its owner).
//! What a hostile container with CAP_NET_RAW tries in the network scenario table: the
//! tests build this with `rustc -C target-feature=+crt-static` and put it in the busybox
//! image (see udp_echo.rs).

use std::net::Ipv4Addr;

const AF_PACKET: i32 = 17;
const SOCK_RAW: i32 = 3;

#[repr(C)]
struct SockaddrLl {
    family: u16,
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

unsafe extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn sendto(
        fd: i32,
        buf: *const u8,
        len: usize,
        flags: i32,
        to: *const SockaddrLl,
        len: u32,
    ) -> isize;
    fn if_nametoindex(name: *const std::ffi::c_char) -> u32;
}

fn mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("a MAC address is six hex bytes"))
        .collect();
    bytes.try_into().expect("a MAC address is six hex bytes")
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_frame(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
    port: u16,
    msg: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + msg.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL, UDP, checksum
    iph.extend_from_slice(&src.octets());
    iph.extend_from_slice(&dst.octets());
    let sum = checksum(&iph);
    iph[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + msg.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(msg);
    f
}

fn arp_reply(src_mac: [u8; 6], src: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]); // Ethernet, IPv4, reply
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src.octets());
    f
}

/// A broadcast frame of `ether_type` from `src_mac` with 12 bytes of payload: an IPv4
/// header without its addresses, or a valid Ethernet/IPv4 ARP reply header and the
/// first four bytes of its sender's MAC (no sender address).
fn short_frame(src_mac: [u8; 6], ether_type: u16) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ether_type.to_be_bytes());
    if ether_type == 0x0806 {
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        f.extend_from_slice(&src_mac[..4]);
    } else {
        f.extend_from_slice(&[0x45, 0, 0, 12, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    }
    f
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: spoof-frame udp IFACE SRC_MAC SRC_IP DST_MAC DST_IP PORT MESSAGE | arp IFACE SRC_MAC SRC_IP | short IFACE SRC_MAC ip|arp";
    let (iface, frame) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["udp", iface, smac, src, dmac, dst, port, msg] => (
            iface,
            udp_frame(
                mac(smac),
                ip(src),
                mac(dmac),
                ip(dst),
                port.parse().expect("a port"),
                msg.as_bytes(),
            ),
        ),
        ["arp", iface, smac, src] => (iface, arp_reply(mac(smac), ip(src))),
        ["short", iface, smac, "ip"] => (iface, short_frame(mac(smac), 0x0800)),
        ["short", iface, smac, "arp"] => (iface, short_frame(mac(smac), 0x0806)),
        _ => panic!("{usage}"),
    };
    let name = std::ffi::CString::new(iface).expect("an interface name");
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let ifindex = unsafe { if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {iface}");
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { socket(AF_PACKET, SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    let mut addr = SockaddrLl {
        family: AF_PACKET as u16,
        protocol: 0,
        ifindex: ifindex as i32,
        hatype: 0,
        pkttype: 0,
        halen: 6,
        addr: [0; 8],
    };
    addr.addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `addr` are valid for the lengths given, for the whole call.
    let sent = unsafe {
        sendto(
            fd,
            frame.as_ptr(),
            frame.len(),
            0,
            &addr,
            std::mem::size_of::<SockaddrLl>() as u32,
        )
    };
    assert!(
        sent == frame.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}
