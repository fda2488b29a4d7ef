//! `net-bench`: the measuring end of `tests/bench/net.sh`.
//!
//! - `sink ADDR`: accepts one connection, reads it to its end, prints the throughput.
//! - `drain ADDR`: connects, reads to the end, prints the throughput.
//! - `http ADDR N`: N sequential `GET /` requests, each on a new connection (as a
//!   client behind `-p` makes them), prints the median and 99th percentile latency.
//!
//! Throughput is counted from the first byte to the end of the stream, so connection
//! setup is not part of it. Output lines start with `RESULT` for the script to pick up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn read_all(mut s: TcpStream) -> Result<(u64, Duration)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut first = None;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let took = first.map_or(Duration::ZERO, |t| t.elapsed());
    Ok((total, took))
}

fn report(what: &str, bytes: u64, took: Duration) -> Result<()> {
    if bytes == 0 || took.is_zero() {
        bail!("{what}: no data arrived");
    }
    let mbps = bytes as f64 * 8.0 / took.as_secs_f64() / 1e6;
    println!(
        "RESULT {what} {mbps:.0} Mbit/s ({} MiB in {:.3} s)",
        bytes >> 20,
        took.as_secs_f64()
    );
    Ok(())
}

fn http(addr: &str, n: usize) -> Result<()> {
    let mut times = Vec::with_capacity(n);
    let req = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let get = || -> Result<bool> {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.write_all(req.as_bytes())?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        Ok(body.starts_with(b"HTTP/1."))
    };
    // Unmeasured requests until one is answered: the server may still be starting
    // (a forwarder then accepts and closes at once), and is warm afterwards.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get().unwrap_or(false) {
        if Instant::now() > deadline {
            bail!("{addr}: no HTTP answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..n {
        let t = Instant::now();
        if !get()? {
            bail!("{addr}: not an HTTP answer");
        }
        times.push(t.elapsed());
    }
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "RESULT http {} us median, {} us p99 ({n} requests)",
        pick(0.5).as_micros(),
        pick(0.99).as_micros()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["sink", addr] => {
            let l = TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
            println!("LISTENING {}", l.local_addr()?);
            std::io::stdout().flush()?;
            let (s, _) = l.accept()?;
            let (bytes, took) = read_all(s)?;
            report("sink", bytes, took)
        }
        ["drain", addr] => {
            // The sender may still be starting (a forwarder then accepts and closes at
            // once): retry for a while.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = TcpStream::connect(addr)
                    .map_err(anyhow::Error::from)
                    .and_then(read_all);
                match got {
                    Ok((bytes, took)) if bytes > 0 => return report("drain", bytes, took),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    _ if Instant::now() > deadline => bail!("{addr}: no data within 30 s"),
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        ["http", addr, n] => http(addr, n.parse().context("request count")?),
        _ => bail!("usage: net-bench sink ADDR | drain ADDR | http ADDR N"),
    }
}
