//! `udp-echo PORT`: answers every datagram on UDP PORT with `echo:` and the datagram,
//! and prints `got:` and the datagram on a line of its own (what arrived, for the
//! spoofing cases).
//! `udp-echo --dns PORT`: a DNS server for the embedded resolver's cases, standing in
//! for the outside world: an A query for a name under `.test` gets 192.0.2.1, anything
//! else NXDOMAIN; it prints `asked:NAME` per query.
//! `udp-echo --send HOST PORT`: sends its stdin as one datagram to HOST:PORT and prints
//! the length of the answer, if one comes within a second (a hostile container's
//! garbage for the embedded resolver).
//! The UDP server of the network scenario table: busybox has none, so the tests build
//! this with `rustc -C target-feature=+crt-static` and put it in the busybox image.

use std::net::UdpSocket;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--send") {
        use std::io::Read;
        let (host, port) = (&args[2], args[3].parse::<u16>().expect("a port"));
        let mut datagram = Vec::new();
        std::io::stdin().read_to_end(&mut datagram)?;
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        socket.send_to(&datagram, (host.as_str(), port))?;
        let mut buf = vec![0u8; 65536];
        if let Ok(n) = socket.recv(&mut buf) {
            println!("answer:{n}");
        }
        return Ok(());
    }
    let dns = args.get(1).map(String::as_str) == Some("--dns");
    let port: u16 = args
        .get(if dns { 2 } else { 1 })
        .and_then(|p| p.parse().ok())
        .expect("usage: udp-echo [--dns] PORT");
    let socket = UdpSocket::bind(("0.0.0.0", port))?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let answer = if dns {
            match dns_answer(&buf[..n]) {
                Some(a) => a,
                None => continue,
            }
        } else {
            println!("got:{}", String::from_utf8_lossy(&buf[..n]));
            let mut answer = b"echo:".to_vec();
            answer.extend_from_slice(&buf[..n]);
            answer
        };
        socket.send_to(&answer, from)?;
    }
}

/// The answer to a query: its id and question, then 192.0.2.1 for an A query under
/// `.test`, NXDOMAIN for the rest.
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut name = Vec::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if !name.is_empty() {
            name.push(b'.');
        }
        name.extend_from_slice(q.get(at..at + len)?);
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    at += 4;
    let name = String::from_utf8_lossy(&name).to_ascii_lowercase();
    println!("asked:{name}");
    let known = name.ends_with(".test");
    let mut out = q[..2].to_vec();
    // QR, RD as asked; RA; NOERROR or NXDOMAIN.
    out.push(0x80 | (q[2] & 0x01));
    out.push(if known { 0x80 } else { 0x83 });
    let answers: u16 = u16::from(known && qtype == 1);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q[12..at]);
    if answers == 1 {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    }
    Some(out)
}
