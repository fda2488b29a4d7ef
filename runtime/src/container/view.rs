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

/// Docker's time for "never": Go's zero time.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A container as `arca inspect` shows it: Docker's schema (`Id`, `Name`, `State`,
/// `Config`, `HostConfig`, `NetworkSettings`, `Mounts`, ...), from its record, its
/// options and its image when they can be read; Arca's own record under `Arca`.
/// Differences: `Id` is the name (no hex ids yet), `Image` is the image's sha256 id,
/// `State.Pid` is the container's PID 1 on this host (process isolation) or the
/// sandbox's (a microVM's VMM), `OOMKilled` is never set (the exit code says 137).
pub fn inspect(
    rec: &ContainerRecord,
    opts: Option<&super::RunOptions>,
    image: Option<&crate::image::store::Image>,
) -> Value {
    let time = |t: Option<u64>| t.map_or(GO_ZERO_TIME.to_string(), crate::rfc3339);
    let status = match rec.status {
        Status::Created | Status::Starting => "created",
        Status::Running => "running",
        Status::Exited => "exited",
        Status::Restarting => "restarting",
    };
    let running = rec.status == Status::Running;
    let pid = if running {
        rec.container_pid.or(rec.sandbox_pid).unwrap_or(0)
    } else {
        0
    };
    let mut ports = serde_json::Map::new();
    for p in &rec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(
                json!({"HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string()}),
            );
        }
    }
    let ip = rec.ip.map(|a| a.to_string()).unwrap_or_default();
    let mut networks = serde_json::Map::new();
    if let Some(n) = &rec.network {
        networks.insert(n.clone(), json!({"IPAddress": ip}));
    }
    let cfg = image.map(|i| &i.config.config);
    let default = super::RunOptions::default_for(&rec.image);
    let o = opts.unwrap_or(&default);
    let env = image.map_or_else(|| o.env.clone(), |i| super::config::environment(i, &o.env));
    let security = &o.security;
    let default_caps = arca_protocol::Capabilities::container_default();
    let cap_add: Vec<&str> =
        arca_protocol::Capabilities(security.capabilities.0 & !default_caps.0).names();
    let cap_drop: Vec<&str> =
        arca_protocol::Capabilities(default_caps.0 & !security.capabilities.0).names();
    let mut security_opt = Vec::new();
    if security.no_new_privileges {
        security_opt.push("no-new-privileges".to_string());
    }
    match &security.seccomp {
        arca_protocol::Seccomp::Unconfined if !security.privileged => {
            security_opt.push("seccomp=unconfined".into())
        }
        arca_protocol::Seccomp::Profile(_) => security_opt.push("seccomp=<profile>".into()),
        _ => {}
    }
    let (restart_name, max_retries) = match o.restart {
        super::config::RestartPolicy::OnFailure { max_retries } => ("on-failure", max_retries),
        p => (p.name(), 0),
    };
    json!({
        "Id": rec.id,
        "Created": crate::rfc3339(rec.created),
        "Path": rec.command.first().cloned().unwrap_or_default(),
        "Args": rec.command.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": status,
            "Running": running,
            "Paused": false,
            "Restarting": rec.status == Status::Restarting,
            "OOMKilled": false,
            "Dead": false,
            "Pid": pid,
            "ExitCode": rec.exit_code.unwrap_or(0),
            "Error": rec.error.clone().unwrap_or_default(),
            "StartedAt": time(rec.started_at),
            "FinishedAt": time(rec.finished_at),
        },
        "Image": format!("sha256:{}", rec.image_id),
        "Name": format!("/{}", rec.id),
        "RestartCount": rec.restart_count,
        "Config": {
            "Hostname": o.hostname.clone().unwrap_or_else(|| rec.id.clone()),
            "User": o.user.clone().or_else(|| cfg.and_then(|c| c.user.clone())).unwrap_or_default(),
            "Tty": o.tty,
            "OpenStdin": o.interactive,
            "Env": env,
            "Cmd": if o.args.is_empty() { cfg.and_then(|c| c.cmd.clone()) } else { Some(o.args.clone()) },
            "Image": rec.image,
            "WorkingDir": o.workdir.clone().or_else(|| cfg.and_then(|c| c.working_dir.clone())).unwrap_or_default(),
            "Entrypoint": match &o.entrypoint {
                Some(e) if e.is_empty() => None,
                Some(e) => Some(vec![e.clone()]),
                None => cfg.and_then(|c| c.entrypoint.clone()),
            },
            "Labels": o.labels,
            "StopSignal": o.stop_signal,
            "StopTimeout": o.stop_timeout,
        },
        "HostConfig": {
            "NetworkMode": o.network.clone().unwrap_or_else(|| crate::network::DEFAULT_NETWORK.to_string()),
            "RestartPolicy": {"Name": restart_name, "MaximumRetryCount": max_retries},
            "AutoRemove": rec.rm,
            "Privileged": security.privileged,
            "CapAdd": cap_add,
            "CapDrop": cap_drop,
            "SecurityOpt": security_opt,
            "ReadonlyRootfs": o.read_only,
            "Memory": o.memory.unwrap_or(0),
            "NanoCpus": o.cpus.map_or(0, |c| (c * 1e9).round() as u64),
            "PidsLimit": o.resources().pids_max,
            "Dns": o.dns,
            "ExtraHosts": o.add_hosts.iter().map(|h| format!("{}:{}", h.names.join(" "), h.address)).collect::<Vec<_>>(),
            "GroupAdd": o.group_add,
            "Ulimits": o.ulimits.iter().map(|u| json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard})).collect::<Vec<_>>(),
            "Isolation": rec.isolation.as_str(),
        },
        "NetworkSettings": {
            "IPAddress": ip,
            "Ports": ports,
            "Networks": networks,
        },
        "Mounts": rec.mounts,
        "Arca": rec,
    })
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
