//! `spawn-probe`: runs one command (a VMM booting a guest) and reports, as one line of
//! `key=value` pairs: milliseconds from spawn to the first stdout line containing the
//! marker, from spawn to exit, the process's RSS when the marker appeared, that RSS
//! without the guest RAM mapping, and the exit code. Used by the boot benchmark.
//!
//!   spawn-probe --marker TEXT --guest-mib N [--timeout SECS] -- COMMAND [ARGS]...
//!
//! A command still running after the timeout (default 60 s) is killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .context("usage: spawn-probe --marker TEXT --guest-mib N -- COMMAND...")?;
    let (opts, command) = (&args[..split], &args[split + 1..]);
    let mut marker = None;
    let mut guest_mib: u64 = 0;
    let mut timeout_secs: u64 = 60;
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        match opt.as_str() {
            "--marker" => marker = it.next().cloned(),
            "--guest-mib" => guest_mib = it.next().context("--guest-mib needs a value")?.parse()?,
            "--timeout" => timeout_secs = it.next().context("--timeout needs a value")?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    let marker = marker.context("--marker is required")?;
    let (program, rest) = command.split_first().context("no command given")?;

    let spawned = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(timeout_secs));
        eprintln!("spawn-probe: {timeout_secs} s passed, killing {pid}");
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let stdout = child.stdout.take().context("no stdout")?;
    let mut marker_ms = None;
    let mut rss = None;
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line?;
        if marker_ms.is_none() && String::from_utf8_lossy(&line).contains(&marker) {
            marker_ms = Some(spawned.elapsed().as_secs_f64() * 1e3);
            rss = read_rss(pid, guest_mib).ok();
        }
    }
    let status = child.wait()?;
    let exit_ms = spawned.elapsed().as_secs_f64() * 1e3;
    let fmt = |v: Option<f64>| v.map_or("NA".to_owned(), |v| format!("{v:.1}"));
    let (rss_kib, rss_excl) = rss.map_or((None, None), |(a, b)| (Some(a as f64), Some(b as f64)));
    println!(
        "marker_ms={} exit_ms={exit_ms:.1} rss_kib={} rss_excl_guest_kib={} exit={}",
        fmt(marker_ms),
        fmt(rss_kib),
        fmt(rss_excl),
        status.code().map_or("signal".to_owned(), |c| c.to_string())
    );
    Ok(())
}

/// Total RSS, and RSS outside guest RAM (KiB). Guest RAM is a run of adjacent mappings
/// that together span at least the guest's memory size: a VMM may split it (Arca maps
/// the kernel file over part of it), so mappings are merged while they touch.
fn read_rss(pid: u32, guest_mib: u64) -> anyhow::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    // (start, end, rss) per mapping, in address order.
    let mut maps: Vec<(u64, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            maps.push((start, end, 0));
        } else if first == "Rss:"
            && let Some(last) = maps.last_mut()
        {
            last.2 = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
        }
    }
    let total: u64 = maps.iter().map(|m| m.2).sum();
    let mut guest = 0;
    let mut i = 0;
    while i < maps.len() {
        let mut j = i;
        while j + 1 < maps.len() && maps[j + 1].0 == maps[j].1 {
            j += 1;
        }
        let span = maps[j].1 - maps[i].0;
        if guest_mib > 0 && span >= guest_mib << 20 {
            guest += maps[i..=j].iter().map(|m| m.2).sum::<u64>();
        }
        i = j + 1;
    }
    Ok((total, total - guest))
}
