//! `udp-echo PORT`: answers every datagram on UDP PORT with `echo:` and the datagram,
//! and prints `got:` and the datagram on a line of its own (what arrived, for the
//! spoofing cases).
//! The UDP server of the network scenario table: busybox has none, so the tests build
//! this with `rustc -C target-feature=+crt-static` and put it in the busybox image.

use std::net::UdpSocket;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: udp-echo PORT");
    let socket = UdpSocket::bind(("0.0.0.0", port))?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        println!("got:{}", String::from_utf8_lossy(&buf[..n]));
        let mut answer = b"echo:".to_vec();
        answer.extend_from_slice(&buf[..n]);
        socket.send_to(&answer, from)?;
    }
}
