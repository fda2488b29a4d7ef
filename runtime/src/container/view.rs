//! What users read of containers: `ps` (and its `--format` rows) and `logs`.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::record::{ContainerRecord, Status, find, list};
use crate::error::RunError;
use crate::logs::LogReader;
use crate::storage::MountType;
use crate::template::{ListFormat, TemplateError, render_list};
use crate::{go_time, human_duration, now};

/// `ps --format table`: Docker's default columns.
pub const PS_TABLE: &str = "table {{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.RunningFor}}\\t{{.Status}}\\t{{.Ports}}\\t{{.Names}}";

/// The column titles of `ps --format table`, Docker's.
pub fn ps_header() -> Value {
    json!({
        "ID": "CONTAINER ID",
        "Image": "IMAGE",
        "Command": "COMMAND",
        "CreatedAt": "CREATED AT",
        "RunningFor": "CREATED",
        "Ports": "PORTS",
        "State": "STATE",
        "Status": "STATUS",
        "Size": "SIZE",
        "Names": "NAMES",
        "Labels": "LABELS",
        "Mounts": "MOUNTS",
        "Networks": "NETWORKS",
        "LocalVolumes": "LOCAL VOLUMES",
        "Isolation": "ISOLATION",
    })
}

/// `s`, cut to `width` characters with an ellipsis, as Docker's `formatter.Ellipsis`.
fn ellipsis(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// One container as `ps --format` sees it: Docker's fields, all strings (plus
/// `Isolation`, Arca's).
pub fn ps_row(r: &ContainerRecord, at: u64) -> Value {
    let age = at.saturating_sub(r.created);
    let state = match r.status {
        Status::Created | Status::Starting => "created",
        Status::Running => "running",
        Status::Exited => "exited",
        Status::Restarting => "restarting",
    };
    let status = match (r.status, r.exit_code) {
        (Status::Created | Status::Starting, _) => "Created".to_string(),
        (Status::Running, _) => format!("Up {}", human_duration(age)),
        (Status::Exited, code) => format!("Exited ({})", code.unwrap_or(-1)),
        (Status::Restarting, code) => format!("Restarting ({})", code.unwrap_or(-1)),
    };
    let ports = r
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host_ip, p.host_port, p.container_port, p.protocol
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mounts = r
        .mounts
        .iter()
        .map(|m| match &m.name {
            Some(n) => ellipsis(n, 15),
            None => ellipsis(&m.source.to_string_lossy(), 15),
        })
        .collect::<Vec<_>>()
        .join(",");
    let volumes = r
        .mounts
        .iter()
        .filter(|m| m.kind == MountType::Volume)
        .count();
    json!({
        "ID": r.id,
        "Image": r.image,
        "Command": crate::template::quote(&ellipsis(&r.command.join(" "), 20)),
        "CreatedAt": go_time(r.created),
        "RunningFor": format!("{} ago", human_duration(age)),
        "Ports": ports,
        "State": state,
        "Status": status,
        "Size": "0B",
        "Names": r.id,
        "Labels": "",
        "Mounts": mounts,
        "Networks": r.network.clone().unwrap_or_default(),
        "LocalVolumes": volumes.to_string(),
        "Isolation": r.isolation.as_str(),
    })
}

fn ps_records(state: &Path, all: bool) -> Vec<ContainerRecord> {
    list(state)
        .into_iter()
        .filter(|r| {
            all || matches!(
                r.status,
                Status::Starting | Status::Running | Status::Restarting
            )
        })
        .collect()
}

/// `arca ps --format FORMAT`: the text to print.
pub fn ps_formatted(state: &Path, all: bool, format: &str) -> Result<String, TemplateError> {
    let at = now();
    let rows: Vec<Value> = ps_records(state, all)
        .iter()
        .map(|r| ps_row(r, at))
        .collect();
    render_list(&ListFormat::new(format, PS_TABLE), &ps_header(), &rows)
}

/// `arca ps`.
pub fn ps(state: &Path, all: bool, quiet: bool) {
    let rows = ps_records(state, all);
    if quiet {
        for r in rows {
            println!("{}", r.id);
        }
        return;
    }
    println!(
        "{:<20} {:<24} {:<24} {:<28} {:<8}",
        "CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "ISOLATION"
    );
    for r in rows {
        let full = r.command.join(" ");
        let cmd = if full.chars().count() > 20 {
            format!("\"{}…\"", full.chars().take(19).collect::<String>())
        } else {
            format!("\"{full}\"")
        };
        let status = match (r.status, r.exit_code) {
            (Status::Created | Status::Starting, _) => "Created".to_string(),
            (Status::Running, _) => format!("Up {} s", now().saturating_sub(r.created)),
            (Status::Exited, code) => format!("Exited ({})", code.unwrap_or(-1)),
            (Status::Restarting, code) => format!("Restarting ({})", code.unwrap_or(-1)),
        };
        let iso = r.isolation.as_str();
        println!(
            "{:<20} {:<24} {:<24} {:<28} {:<8}",
            r.id, r.image, cmd, status, iso
        );
        if let Some(e) = r.error.filter(|_| r.status == Status::Exited) {
            println!("{:<20} └ {e}", "");
        }
    }
}

/// `arca logs [-f]`: the stdout log to stdout, the stderr log to stderr, each from its
/// oldest rotated file on; with `follow`, until the container exits, across rotations.
pub fn logs(state: &Path, name: &str, follow: bool) -> Result<i32, RunError> {
    let (dir, _) = find(state, name)?;
    let mut out = LogReader::open(&dir.join("stdout.log"));
    let mut err = LogReader::open(&dir.join("stderr.log"));
    loop {
        // A closed stdout (`arca logs | head`) ends the command quietly.
        let any = out.drain(&mut io::stdout().lock()).unwrap_or(false)
            | err.drain(&mut io::stderr().lock()).unwrap_or(false);
        let _ = io::stdout().flush();
        if !follow {
            return Ok(0);
        }
        let done = ContainerRecord::observe(&dir).map_or(true, |r| r.status == Status::Exited);
        if done && !any {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
