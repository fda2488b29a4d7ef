//! What users read of containers: `ps` and `logs`.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use super::record::{ContainerRecord, Status, find, list};
use crate::error::RunError;
use crate::logs::LogReader;
use crate::now;

/// `arca ps`.
pub fn ps(state: &Path, all: bool, quiet: bool) {
    let rows: Vec<ContainerRecord> = list(state)
        .into_iter()
        .filter(|r| {
            all || matches!(
                r.status,
                Status::Starting | Status::Running | Status::Restarting
            )
        })
        .collect();
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
