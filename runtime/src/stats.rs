//! `arca stats`: each container's resource use, as `docker stats` shows it. Memory,
//! CPU time, pids and block I/O come from the container's cgroup through its agent
//! (in the guest for a microVM, on the host for process isolation); network I/O from
//! the host end of its link (a microVM's TAP, a veth), which sees the container's
//! traffic the other way round. CPU % is the CPU time used between two samples over
//! the time between them (100% is one CPU), as Docker computes it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::container::record::{ContainerRecord, Isolation, Status, find, list};
use crate::error::RunError;
use crate::network::{LinkKind, link_name};
use crate::template::{ListFormat, TemplateError, render_list};

/// `stats --format table`: Docker's default columns.
pub const STATS_TABLE: &str = "table {{.ID}}\\t{{.Name}}\\t{{.CPUPerc}}\\t{{.MemUsage}}\\t{{.MemPerc}}\\t{{.NetIO}}\\t{{.BlockIO}}\\t{{.PIDs}}";

/// Docker's column titles.
fn header() -> Value {
    json!({
        "ID": "CONTAINER ID",
        "Container": "CONTAINER",
        "Name": "NAME",
        "CPUPerc": "CPU %",
        "MemUsage": "MEM USAGE / LIMIT",
        "MemPerc": "MEM %",
        "NetIO": "NET I/O",
        "BlockIO": "BLOCK I/O",
        "PIDs": "PIDS",
    })
}

/// `arca stats`'s options.
#[derive(Debug, Default, Clone)]
pub struct StatsOptions {
    /// `-a`: stopped containers too (their figures are 0).
    pub all: bool,
    /// `--no-stream`: one sample, then exit.
    pub no_stream: bool,
    /// `--no-trunc`: whole IDs.
    pub no_trunc: bool,
    /// `--format`.
    pub format: Option<String>,
    /// The containers (none: every running one).
    pub containers: Vec<String>,
}

/// One reading of a container.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: Option<Instant>,
    cpu_usec: u64,
    memory: u64,
    limit: u64,
    net_rx: u64,
    net_tx: u64,
    block_read: u64,
    block_write: u64,
    pids: u64,
}

/// Reads container `rec` now; a container that does not run reads as zeros.
fn sample(state: &Path, rec: &ContainerRecord) -> Sample {
    let mut s = Sample::default();
    if rec.status != Status::Running {
        return s;
    }
    let Ok(stats) = rec.client().and_then(|mut c| Ok(c.stats(rec.key())?)) else {
        return s;
    };
    s.at = Some(Instant::now());
    s.cpu_usec = stats.cpu_usage_usec;
    s.memory = stats
        .memory_bytes
        .saturating_sub(stats.memory_inactive_file_bytes);
    s.limit = stats
        .memory_limit_bytes
        .unwrap_or_else(|| unlimited_memory(state, rec));
    s.pids = stats.pids;
    s.block_read = stats.io_read_bytes;
    s.block_write = stats.io_write_bytes;
    let kind = match rec.isolation {
        Isolation::Vm => LinkKind::Tap,
        Isolation::Process => LinkKind::Veth,
    };
    if rec.ip.is_some() {
        let dir = Path::new("/sys/class/net")
            .join(link_name(kind, rec.key()))
            .join("statistics");
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0)
        };
        // The host end's transmit is the container's receive.
        (s.net_rx, s.net_tx) = (read("tx_bytes"), read("rx_bytes"));
    }
    s
}

/// The memory a container without a limit can use: its microVM's RAM, or the host's.
fn unlimited_memory(state: &Path, rec: &ContainerRecord) -> u64 {
    if rec.isolation == Isolation::Vm {
        let dir = crate::container::names::containers_dir(state).join(rec.key());
        return crate::container::RunOptions::load(&dir)
            .map_or(256, |o| crate::sandbox::guest_memory_mib(&o))
            << 20;
    }
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

/// Bytes in binary units, as Docker's `units.BytesSize` (`1.5MiB`).
fn binary_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < units.len() {
        size /= 1024.0;
        unit += 1;
    }
    let text = format!("{size:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", units[unit])
}

/// A row of `stats`, from two samples of one container.
fn row(rec: &ContainerRecord, before: &Sample, now: &Sample, no_trunc: bool) -> Value {
    let cpu = match (before.at, now.at) {
        (Some(a), Some(b)) if b > a => {
            let used = now.cpu_usec.saturating_sub(before.cpu_usec) as f64;
            used / (b - a).as_micros() as f64 * 100.0
        }
        _ => 0.0,
    };
    let mem_perc = if now.limit > 0 {
        now.memory as f64 / now.limit as f64 * 100.0
    } else {
        0.0
    };
    let id = if no_trunc {
        rec.id.clone()
    } else {
        rec.key().to_string()
    };
    json!({
        "ID": id,
        "Container": id,
        "Name": rec.name,
        "CPUPerc": format!("{cpu:.2}%"),
        "MemUsage": format!("{} / {}", binary_size(now.memory), binary_size(now.limit)),
        "MemPerc": format!("{mem_perc:.2}%"),
        "NetIO": format!("{} / {}", crate::human_size(now.net_rx), crate::human_size(now.net_tx)),
        "BlockIO": format!("{} / {}", crate::human_size(now.block_read), crate::human_size(now.block_write)),
        "PIDs": now.pids.to_string(),
    })
}

/// The containers to show: those named (each must exist), or every running one (every
/// one with `all`).
fn targets(state: &Path, o: &StatsOptions) -> Result<Vec<ContainerRecord>, RunError> {
    if o.containers.is_empty() {
        return Ok(list(state)
            .into_iter()
            .filter(|r| o.all || r.status == Status::Running)
            .collect());
    }
    o.containers.iter().map(|n| Ok(find(state, n)?.1)).collect()
}

/// `arca stats`: with `no_stream`, one table after a second's sampling; else a table
/// redrawn every second until interrupted (containers are looked up again each time).
pub fn stats(state: &Path, o: &StatsOptions) -> Result<Result<(), TemplateError>, RunError> {
    let format = o
        .format
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| STATS_TABLE.to_string());
    let mut last: HashMap<String, Sample> = HashMap::new();
    loop {
        let recs = targets(state, o)?;
        let first = recs.iter().map(|r| (r.id.clone(), sample(state, r)));
        let before: HashMap<String, Sample> = if last.is_empty() {
            let b: HashMap<String, Sample> = first.collect();
            std::thread::sleep(Duration::from_millis(1000));
            b
        } else {
            std::mem::take(&mut last)
        };
        let mut rows = Vec::new();
        for r in &recs {
            // Its record as now (it may have stopped meanwhile).
            let r = find(state, &r.id)
                .map(|(_, r)| r)
                .unwrap_or_else(|_| r.clone());
            let now = sample(state, &r);
            rows.push(row(&r, before.get(&r.id).unwrap_or(&now), &now, o.no_trunc));
            last.insert(r.id.clone(), now);
        }
        let text = match render_list(&ListFormat::new(&format, STATS_TABLE), &header(), &rows) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if o.no_stream {
            let _ = out.write_all(text.as_bytes());
            return Ok(Ok(()));
        }
        // Docker redraws in place: clear the screen, cursor home. A reader that went
        // away ends it.
        if out
            .write_all(format!("\x1b[2J\x1b[H{text}").as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(Ok(()));
        }
        drop(out);
        std::thread::sleep(Duration::from_millis(1000));
    }
}

#[cfg(test)]
mod tests {
    use super::binary_size;

    #[test]
    fn sizes_print_as_dockers_units_do() {
        assert_eq!(binary_size(0), "0B");
        assert_eq!(binary_size(1536), "1.5KiB");
        assert_eq!(binary_size(128 << 20), "128MiB");
        assert_eq!(binary_size(1_288_490_189), "1.2GiB");
    }
}
