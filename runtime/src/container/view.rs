//! What users read of containers: `ps` (and its `--format` rows) and `logs`.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::record::{ContainerRecord, Status, find, list};
use crate::error::RunError;
use crate::logs::{LogEntry, LogReader};
use crate::storage::MountType;
use crate::template::{ListFormat, TemplateError, render_list};
use crate::{ellipsis, go_time, human_duration, now};

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

/// One container as `ps --format` sees it: Docker's fields, all strings (plus
/// `Isolation`, Arca's). `no_trunc` keeps IDs and commands whole; `size` is the
/// writable layer's size text when `-s` asked for it.
pub fn ps_row(r: &ContainerRecord, at: u64, no_trunc: bool, size: Option<String>) -> Value {
    let age = at.saturating_sub(r.created);
    let ago = |t: Option<u64>| human_duration(at.saturating_sub(t.unwrap_or(r.created)));
    let status = match (r.status, r.exit_code) {
        (Status::Created | Status::Starting, _) => "Created".to_string(),
        (Status::Running, _) if r.is_paused() => format!("Up {} (Paused)", ago(r.started_at)),
        (Status::Running, _) => match r.health {
            Some(h) => format!("Up {} {}", ago(r.started_at), h.ps_suffix()),
            None => format!("Up {}", ago(r.started_at)),
        },
        (Status::Exited, code) => format!(
            "Exited ({}) {} ago",
            code.unwrap_or(-1),
            ago(r.finished_at.or(r.started_at))
        ),
        (Status::Restarting, code) => format!(
            "Restarting ({}) {} ago",
            code.unwrap_or(-1),
            ago(r.finished_at.or(r.started_at))
        ),
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
    let command = r.command.join(" ");
    let (id, command) = if no_trunc {
        (r.id.clone(), command)
    } else {
        (
            super::names::short(&r.id).to_string(),
            ellipsis(&command, 20),
        )
    };
    let labels = crate::labels_text(&r.labels);
    json!({
        "ID": id,
        "Image": r.image,
        "Command": crate::template::quote(&command),
        "CreatedAt": go_time(r.created),
        "RunningFor": format!("{} ago", human_duration(age)),
        "Ports": ports,
        "State": ps_state(r),
        "Status": status,
        "Size": size.unwrap_or_default(),
        "Names": r.name,
        "Labels": labels,
        "Mounts": mounts,
        "Networks": r.network.clone().unwrap_or_default(),
        "LocalVolumes": volumes.to_string(),
        "Isolation": r.isolation.as_str(),
    })
}

/// Docker's word for a container's state.
fn ps_state(r: &ContainerRecord) -> &'static str {
    if r.is_paused() {
        return "paused";
    }
    match r.status {
        Status::Created | Status::Starting => "created",
        Status::Running => "running",
        Status::Exited => "exited",
        Status::Restarting => "restarting",
    }
}

/// `arca ps`'s options, as Docker's.
#[derive(Debug, Default, Clone)]
pub struct PsOptions {
    /// `-a`: every container, not only running ones.
    pub all: bool,
    /// `-q`: IDs only.
    pub quiet: bool,
    /// `-n N` (and `-l`, which is `-n 1`): the N newest, in any state.
    pub last: Option<usize>,
    /// `--no-trunc`.
    pub no_trunc: bool,
    /// `-s`: the writable layers' sizes.
    pub size: bool,
    /// `-f KEY=VALUE`: filters.
    pub filters: Vec<String>,
    /// `--format` (empty: the default table).
    pub format: Option<String>,
}

/// A container's size as `ps -s` writes it: what its writable layer (a directory, or
/// a microVM's sparse disk) holds on the host, and beside it that plus its image.
fn size_text(state: &Path, r: &ContainerRecord) -> String {
    let dir = super::names::containers_dir(state).join(r.key());
    let layer = crate::storage::layer_usage(&dir);
    let image = crate::image::store::Store::open(state)
        .ok()
        .and_then(|s| s.resolve(&r.image_id).ok())
        .map_or(0, |i| i.usage());
    format!(
        "{} (virtual {})",
        crate::human_size(layer),
        crate::human_size(layer + image)
    )
}

/// Docker's `ps -f` keys that Arca knows.
const PS_FILTERS: &[&str] = &[
    "id",
    "name",
    "status",
    "exited",
    "label",
    "ancestor",
    "before",
    "since",
    "volume",
    "network",
    "isolation",
    "health",
];

/// Whether `r` passes `filters`: the same key given twice matches either value,
/// different keys must all match (Docker's rule).
fn matches_filters(
    r: &ContainerRecord,
    filters: &[(String, String)],
    all: &[ContainerRecord],
) -> bool {
    let created_of = |q: &str| {
        all.iter()
            .find(|c| c.name == q || c.id.starts_with(q))
            .map(|c| (c.created, c.created_nanos))
    };
    let made = (r.created, r.created_nanos);
    let check = |key: &str, v: &str| -> bool {
        match key {
            "id" => r.id.starts_with(v),
            "name" => r.name.contains(v.trim_start_matches('/')),
            "status" => ps_state(r) == v,
            "exited" => r.status == Status::Exited && v.parse::<i32>().ok() == r.exit_code,
            "label" => match v.split_once('=') {
                Some((k, val)) => r.labels.get(k).is_some_and(|x| x == val),
                None => r.labels.contains_key(v),
            },
            "ancestor" => {
                r.image == v
                    || r.image.strip_suffix(":latest") == Some(v)
                    || v.strip_suffix(":latest") == Some(r.image.as_str())
                    || r.image_id.starts_with(v.trim_start_matches("sha256:"))
            }
            "before" => created_of(v).is_some_and(|t| made < t),
            "since" => created_of(v).is_some_and(|t| made > t),
            "volume" => r
                .mounts
                .iter()
                .any(|m| m.name.as_deref() == Some(v) || m.destination == v),
            "network" => r.network.as_deref() == Some(v),
            "isolation" => r.isolation.as_str() == v,
            // Docker's: `none` for a container without a check.
            "health" => r.health.map_or("none", |h| h.as_str()) == v,
            _ => false,
        }
    };
    PS_FILTERS.iter().all(|key| {
        let mut values = filters.iter().filter(|(k, _)| k == key).peekable();
        values.peek().is_none() || values.any(|(_, v)| check(key, v))
    })
}

/// Parses `ps -f` filters, refusing what Docker would.
fn parse_filters(given: &[String]) -> Result<Vec<(String, String)>, RunError> {
    let mut out = Vec::new();
    for f in given {
        let (k, v) = f.split_once('=').ok_or_else(|| {
            RunError::Invalid(format!("bad format of filter (expected name=value): {f}"))
        })?;
        if !PS_FILTERS.contains(&k) {
            return Err(RunError::Invalid(format!("invalid filter '{k}'")));
        }
        let statuses = [
            "created",
            "restarting",
            "running",
            "removing",
            "paused",
            "exited",
            "dead",
        ];
        if k == "status" && !statuses.contains(&v) {
            return Err(RunError::Invalid(format!(
                "invalid filter 'status={v}': Unrecognised status; expected one of created, restarting, running, removing, paused, exited or dead"
            )));
        }
        if k == "health" && !["starting", "healthy", "unhealthy", "none"].contains(&v) {
            return Err(RunError::Invalid(format!(
                "Unrecognised filter value for health: {v}"
            )));
        }
        if k == "exited" && v.parse::<i32>().is_err() {
            return Err(RunError::Invalid(format!("invalid filter 'exited={v}'")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The containers `ps` shows, newest first.
fn ps_records(state: &Path, o: &PsOptions) -> Result<Vec<ContainerRecord>, RunError> {
    let filters = parse_filters(&o.filters)?;
    let records = list(state);
    // As Docker: `before`/`since` name a container that must exist.
    for (_, v) in filters
        .iter()
        .filter(|(k, _)| k == "before" || k == "since")
    {
        if !records
            .iter()
            .any(|c| c.name == *v || c.id.starts_with(v.as_str()))
        {
            return Err(RunError::Record(super::record::RecordError::NotFound(
                v.clone(),
            )));
        }
    }
    // As Docker's daemon: a status filter, `-n`, `-l`, `before` and `since` look at every
    // container; an exit code filter does not (`ps -a --filter exited=0`, as its docs
    // write it).
    let all = o.all
        || o.last.is_some()
        || filters
            .iter()
            .any(|(k, _)| matches!(k.as_str(), "status" | "before" | "since"));
    let mut out: Vec<ContainerRecord> = records
        .iter()
        .filter(|r| {
            all || matches!(
                r.status,
                Status::Starting | Status::Running | Status::Restarting
            )
        })
        .filter(|r| matches_filters(r, &filters, &records))
        .cloned()
        .collect();
    if let Some(n) = o.last {
        out.truncate(n);
    }
    Ok(out)
}

/// `arca ps`: the text to print (Docker's table unless `--format` or `-q` says
/// otherwise), or the template's error (which Docker's CLI exits 1 for).
pub fn ps(state: &Path, o: &PsOptions) -> Result<Result<String, TemplateError>, RunError> {
    let rows = ps_records(state, o)?;
    if o.quiet {
        return Ok(Ok(rows
            .iter()
            .map(|r| {
                let id = if o.no_trunc {
                    &r.id
                } else {
                    super::names::short(&r.id)
                };
                format!("{id}\n")
            })
            .collect()));
    }
    let at = now();
    let values: Vec<Value> = rows
        .iter()
        .map(|r| ps_row(r, at, o.no_trunc, o.size.then(|| size_text(state, r))))
        .collect();
    let format = match o.format.as_deref() {
        Some(f) if !f.is_empty() => f.to_string(),
        // `-s` adds Docker's SIZE column to the default table.
        _ if o.size => format!("{PS_TABLE}\\t{{{{.Size}}}}"),
        _ => PS_TABLE.to_string(),
    };
    Ok(render_list(
        &ListFormat::new(&format, PS_TABLE),
        &ps_header(),
        &values,
    ))
}

/// Docker's time for "never": Go's zero time.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A container as `arca inspect` shows it: Docker's schema (`Id`, `Name`, `State`,
/// `Config`, `HostConfig`, `NetworkSettings`, `Mounts`, ...), from its record, its
/// options and its image when they can be read; Arca's own record under `Arca`.
/// Differences: `Image` is the image's sha256 id,
/// `State.Pid` is the container's PID 1 on this host (process isolation) or the
/// sandbox's (a microVM's VMM), `OOMKilled` is never set (the exit code says 137).
pub fn inspect(
    dir: &Path,
    rec: &ContainerRecord,
    opts: Option<&super::RunOptions>,
    image: Option<&crate::image::store::Image>,
) -> Value {
    let time = |t: Option<u64>| t.map_or(GO_ZERO_TIME.to_string(), crate::rfc3339);
    let status = ps_state(rec);
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
        let aliases = opts.map(|o| o.network_aliases.clone()).unwrap_or_default();
        let mut dns_names = vec![rec.name.clone(), rec.key().to_string()];
        dns_names.extend(aliases.iter().cloned());
        networks.insert(
            n.clone(),
            json!({"IPAddress": ip, "Aliases": aliases, "DNSNames": dns_names}),
        );
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
    let mut v = json!({
        "Id": rec.id,
        "Created": crate::rfc3339(rec.created),
        "Path": rec.command.first().cloned().unwrap_or_default(),
        "Args": rec.command.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": status,
            "Running": running,
            "Paused": rec.is_paused(),
            "Restarting": rec.status == Status::Restarting,
            "OOMKilled": false,
            "Dead": false,
            "Pid": pid,
            "ExitCode": rec.exit_code.unwrap_or(0),
            "Error": rec.error.clone().unwrap_or_default(),
            "StartedAt": time(rec.started_at),
            "FinishedAt": time(rec.finished_at),
            "Health": super::health::Health::load(dir),
        },
        "Image": format!("sha256:{}", rec.image_id),
        "Name": format!("/{}", rec.name),
        "RestartCount": rec.restart_count,
        "Config": {
            "Hostname": o.hostname.clone().unwrap_or_else(|| rec.key().to_string()),
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
            "Healthcheck": image.and_then(|i| o.health(i)).or_else(|| o.healthcheck.clone()),
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
    });
    // Docker leaves both out when there is no check.
    for (section, key) in [("State", "Health"), ("Config", "Healthcheck")] {
        if let Some(m) = v[section].as_object_mut()
            && m.get(key).is_some_and(Value::is_null)
        {
            m.remove(key);
        }
    }
    v
}

/// `arca logs`'s options, as Docker's.
#[derive(Debug, Default, Clone)]
pub struct LogsOptions {
    /// `-f`: keep following until the container exits.
    pub follow: bool,
    /// `-n/--tail N`: only the last N records (`None`: all).
    pub tail: Option<usize>,
    /// `--since`: records written at or after this time.
    pub since: Option<(u64, u32)>,
    /// `--until`: records written before this time.
    pub until: Option<(u64, u32)>,
    /// `-t`: each record's time before it.
    pub timestamps: bool,
}

/// `arca logs`: the stdout log to stdout, the stderr log to stderr, in the order they
/// were written, each from its oldest rotated file on; with `follow`, until the
/// container exits, across rotations.
pub fn logs(state: &Path, name: &str, o: &LogsOptions) -> Result<i32, RunError> {
    let (dir, _) = find(state, name)?;
    let mut readers = [
        LogReader::open(&dir.join("stdout.log")),
        LogReader::open(&dir.join("stderr.log")),
    ];
    let mut first = true;
    loop {
        let mut entries: Vec<(usize, LogEntry)> = Vec::new();
        let mut any = false;
        for (stream, r) in readers.iter_mut().enumerate() {
            let mut got = Vec::new();
            any |= r.drain(&mut got).unwrap_or(false);
            entries.extend(got.into_iter().map(|e| (stream, e)));
        }
        // Stable: records of one time keep their stream's order.
        entries.sort_by_key(|(_, e)| e.time);
        entries.retain(|(_, e)| {
            o.since.is_none_or(|t| e.time >= t) && o.until.is_none_or(|t| e.time < t)
        });
        if first && let Some(n) = o.tail {
            entries.drain(..entries.len().saturating_sub(n));
        }
        first = false;
        // A closed stdout (`arca logs | head`) ends the command quietly.
        let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
        for (stream, e) in &entries {
            let sink: &mut dyn Write = if *stream == 0 { &mut out } else { &mut err };
            let mut bytes = Vec::new();
            if o.timestamps {
                bytes.extend_from_slice(crate::rfc3339_nanos(e.time.0, e.time.1).as_bytes());
                bytes.push(b' ');
            }
            bytes.extend_from_slice(&e.output());
            if sink.write_all(&bytes).is_err() {
                return Ok(0);
            }
        }
        let _ = out.flush();
        drop((out, err));
        if !o.follow || o.until.is_some_and(|t| crate::now() > t.0) {
            return Ok(0);
        }
        let done = ContainerRecord::observe(&dir).map_or(true, |r| r.status == Status::Exited);
        if done && !any {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `arca top CONTAINER`: its processes as `ps -ef` shows them (Docker runs the host's
/// `ps` on them; Arca asks the container's agent, so in a microVM the PIDs are the
/// guest's). User names are the host's, as with Docker.
pub fn top(state: &Path, name: &str) -> Result<String, RunError> {
    let (_, rec) = find(state, name)?;
    if rec.status != Status::Running {
        return Err(RunError::Invalid(format!(
            "Container {} is not running",
            rec.id
        )));
    }
    let procs = rec.client()?.top(rec.key())?;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = |uid: u32| {
        passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
            .unwrap_or_else(|| uid.to_string())
    };
    let at = now();
    let today = &crate::rfc3339(at)[..10];
    let mut rows =
        vec![["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"].map(String::from)];
    for p in &procs {
        let elapsed = at.saturating_sub(p.started).max(1);
        let started = crate::rfc3339(p.started);
        let stime = if &started[..10] == today {
            started[11..16].to_string()
        } else {
            let months = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let month: usize = started[5..7].parse().unwrap_or(1);
            format!("{}{}", months[month.clamp(1, 12) - 1], &started[8..10])
        };
        let cpu = p.cpu_ms / 1000;
        let time = if cpu >= 86_400 {
            format!(
                "{}-{:02}:{:02}:{:02}",
                cpu / 86_400,
                cpu / 3600 % 24,
                cpu / 60 % 60,
                cpu % 60
            )
        } else {
            format!("{:02}:{:02}:{:02}", cpu / 3600, cpu / 60 % 60, cpu % 60)
        };
        rows.push([
            user(p.uid),
            p.pid.to_string(),
            p.ppid.to_string(),
            (p.cpu_ms / 10 / elapsed).to_string(),
            stime,
            crate::printable(&p.tty),
            time,
            crate::printable(&p.cmd),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// A `--since`/`--until` value as Docker takes it: a Go duration before now (`10m`,
/// `1h30m`, `2.5s`), Unix seconds with an optional fraction (`1733500000.5`), or an RFC
/// 3339 time, with or without its fraction and zone, or a date (a time without a zone
/// is UTC here; Docker reads it in the client's local zone).
pub fn parse_log_time(text: &str, at: std::time::SystemTime) -> Option<(u64, u32)> {
    let now = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    if let Some(d) = crate::parse_go_duration(text) {
        let t = now.checked_sub(d)?;
        return Some((t.as_secs(), t.subsec_nanos()));
    }
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
    {
        let nanos = format!("{frac:0<9}").parse().ok()?;
        return Some((secs.parse().ok()?, nanos));
    }
    crate::parse_rfc3339_nanos(text)
        .or_else(|| crate::parse_rfc3339_nanos(&format!("{text}Z")))
        .or_else(|| crate::parse_rfc3339_nanos(&format!("{text}:00Z")))
        .or_else(|| crate::parse_rfc3339_nanos(&format!("{text}T00:00:00Z")))
}

#[cfg(test)]
mod tests {
    use super::parse_log_time;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn log_times_take_dockers_forms() {
        let at = UNIX_EPOCH + Duration::new(1_796_526_123, 0);
        assert_eq!(parse_log_time("42m", at), Some((1_796_526_123 - 2520, 0)));
        assert_eq!(parse_log_time("1796526000", at), Some((1_796_526_000, 0)));
        assert_eq!(
            parse_log_time("1796526000.25", at),
            Some((1_796_526_000, 250_000_000))
        );
        assert_eq!(
            parse_log_time("2026-12-06T03:02:03Z", at),
            Some((1_796_526_123, 0))
        );
        assert_eq!(
            parse_log_time("2026-12-06T03:02:03", at),
            Some((1_796_526_123, 0))
        );
        assert_eq!(
            parse_log_time("2026-12-06T03:02", at),
            Some((1_796_526_120, 0))
        );
        assert_eq!(parse_log_time("2026-12-06", at), Some((1_796_515_200, 0)));
        for bad in ["", "yesterday", "1.2.3", "2026-13-01"] {
            assert_eq!(parse_log_time(bad, at), None, "{bad:?}");
        }
    }
}
