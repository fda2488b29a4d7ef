//! `arca events`: what happened to containers, images, networks and volumes, as Docker
//! reports it (`Type`, `Action`, `Actor{ID, Attributes}`, `time`, `timeNano`, and for
//! containers the legacy `status`, `id` and `from`).
//!
//! Whatever changes something (a CLI, a container's monitor) appends one JSON line to
//! `<state>/events.jsonl`: opened `O_APPEND` and written in one `write`, so lines of
//! concurrent writers never interleave, while holding `events.lock` shared. Past
//! [`MAX_LOG`] the file is rotated to `events.jsonl.1` with that lock held exclusively,
//! so no write is under way into a file being renamed, and the last 1-2 MiB of history
//! are kept (Docker keeps its last 256 events in memory). Recording is best effort: an
//! event that cannot be written never fails the command that made it.
//!
//! Readers open both files under the shared lock (no rotation between the two opens),
//! take past events from both (oldest first) and follow the current one, across
//! rotations, by polling.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The size past which the log is rotated.
pub const MAX_LOG: u64 = 1 << 20;

/// Errors of `events`.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A filter is not one Docker's `events` takes, or malformed.
    #[error("invalid filter '{0}'")]
    BadFilter(String),
    /// The log cannot be read.
    #[error("Cannot read {path}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The container's, image's, network's or volume's ID (or name, for volumes and
    /// pulled references, as Docker's).
    #[serde(rename = "ID")]
    pub id: String,
    /// `name`, `image`, `exitCode`, `signal`, labels, ...
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// One event, in Docker's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `container`, `image`, `network` or `volume`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `start`, `die`, `destroy`, `pull`, ...
    #[serde(rename = "Action")]
    pub action: String,
    /// What did it.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Always `local`.
    pub scope: String,
    /// Seconds since the epoch.
    pub time: u64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: u128,
    /// Containers only (Docker's legacy fields): the action.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// Containers only: the ID.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    /// Containers only: the image.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<String>,
}

impl Event {
    /// An event of now.
    pub fn new(kind: &str, action: &str, id: &str, attributes: &[(&str, &str)]) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let attributes: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Docker's deprecated fields: containers and images have `status` and `id`,
        // containers `from` too.
        let container = kind == "container";
        let legacy = container || kind == "image";
        Self {
            kind: kind.into(),
            action: action.into(),
            status: legacy.then(|| action.to_string()),
            id: legacy.then(|| id.to_string()),
            from: container
                .then(|| attributes.get("image").cloned())
                .flatten(),
            actor: Actor {
                id: id.into(),
                attributes,
            },
            scope: "local".into(),
            time: now.as_secs(),
            time_nano: now.as_nanos(),
        }
    }

    /// Docker's line: `TIME TYPE ACTION ID (k=v, k=v)`, the time in UTC with
    /// nanoseconds (Docker prints the client's zone).
    pub fn line(&self) -> String {
        let secs = u64::try_from(self.time_nano / 1_000_000_000).unwrap_or(self.time);
        let nanos = u32::try_from(self.time_nano % 1_000_000_000).unwrap_or(0);
        // Labels come from users and images: nothing in them may forge a line or
        // steer the terminal.
        let attrs: Vec<String> = self
            .actor
            .attributes
            .iter()
            .map(|(k, v)| format!("{}={}", crate::printable(k), crate::printable(v)))
            .collect();
        let mut line = format!(
            "{} {} {} {}",
            crate::rfc3339_nanos(secs, nanos),
            self.kind,
            self.action,
            crate::printable(&self.actor.id)
        );
        if !attrs.is_empty() {
            line.push_str(&format!(" ({})", attrs.join(", ")));
        }
        line
    }
}

impl Event {
    /// What `--format` templates see: Docker's Go field names (`Status`, `ID`, `From`,
    /// `Type`, `Action`, `Actor.ID`, `Actor.Attributes`, `Scope`, `Time`, `TimeNano`);
    /// `json` prints the JSON field names instead, as Docker's does.
    pub fn template_value(&self) -> serde_json::Value {
        serde_json::json!({
            "Status": self.status.clone().unwrap_or_default(),
            "ID": self.id.clone().unwrap_or_default(),
            "From": self.from.clone().unwrap_or_default(),
            "Type": self.kind,
            "Action": self.action,
            "Actor": {"ID": self.actor.id, "Attributes": self.actor.attributes},
            "Scope": self.scope,
            "Time": self.time,
            "TimeNano": self.time_nano,
        })
    }
}

fn log_path(state: &Path) -> PathBuf {
    state.join("events.jsonl")
}

fn rotated_path(state: &Path) -> PathBuf {
    state.join("events.jsonl.1")
}

/// Records `event` in `state`'s log (best effort: errors are dropped).
pub fn record(state: &Path, event: &Event) {
    let _ = try_record(state, event);
}

/// Records an event of `kind` and `action` by `id` with `attributes`, now.
pub fn emit(state: &Path, kind: &str, action: &str, id: &str, attributes: &[(&str, &str)]) {
    record(state, &Event::new(kind, action, id, attributes));
}

/// The lock writers hold shared while they append and exclusively to rotate.
fn lock_file(state: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(state.join("events.lock"))
}

fn try_record(state: &Path, event: &Event) -> io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
    line.push(b'\n');
    let path = log_path(state);
    let lock = lock_file(state)?;
    if fs::metadata(&path).is_ok_and(|m| m.len() >= MAX_LOG) {
        // One rotation at a time, with no write under way; a writer that finds it
        // done goes on.
        flock(&lock, FlockOperation::LockExclusive)?;
        if fs::metadata(&path).is_ok_and(|m| m.len() >= MAX_LOG) {
            fs::rename(&path, rotated_path(state))?;
        }
    }
    flock(&lock, FlockOperation::LockShared)?;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&line)
}

/// Docker's `events --filter` keys, each a list of values: same key any, different
/// keys all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses `KEY=VALUE` filters (`container`, `event`, `image`, `label`, `network`,
    /// `type`, `volume`).
    pub fn parse(filters: &[String]) -> Result<Self, EventsError> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in filters {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| EventsError::BadFilter(f.clone()))?;
            let k = k.to_ascii_lowercase();
            if !matches!(
                k.as_str(),
                "container" | "event" | "image" | "label" | "network" | "type" | "volume"
            ) {
                return Err(EventsError::BadFilter(k));
            }
            if k == "type" && !matches!(v, "container" | "image" | "network" | "volume") {
                return Err(EventsError::BadFilter(format!("type={v}")));
            }
            map.entry(k).or_default().push(v.to_string());
        }
        Ok(Self(map))
    }

    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        let attr = |k: &str| e.actor.attributes.get(k).map(String::as_str);
        let named = |v: &str| {
            e.actor.id == v
                || (v.len() >= 4 && e.actor.id.starts_with(v))
                || attr("name") == Some(v)
        };
        self.0.iter().all(|(k, values)| {
            values.iter().any(|v| match k.as_str() {
                "type" => e.kind == *v,
                // Docker's: these three also match their actions with a detail
                // (`health_status: healthy`).
                "event" => {
                    e.action == *v
                        || (matches!(v.as_str(), "health_status" | "exec_create" | "exec_start")
                            && e.action
                                .strip_prefix(v.as_str())
                                .is_some_and(|r| r.starts_with(':')))
                }
                "container" => e.kind == "container" && named(v),
                "network" => e.kind == "network" && named(v),
                "volume" => e.kind == "volume" && named(v),
                // Docker's: the reference with or without its tag.
                "image" => {
                    let untagged = |r: &str| -> String {
                        match r.rsplit_once(':') {
                            Some((n, t)) if !t.contains('/') => n.to_string(),
                            _ => r.to_string(),
                        }
                    };
                    let same = |r: &str| r == v || untagged(r) == *v;
                    (e.kind == "image"
                        && (named(v) || same(&e.actor.id) || attr("name").is_some_and(same)))
                        || (e.kind == "container" && attr("image").is_some_and(same))
                }
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => attr(lk) == Some(lv),
                    None => attr(v).is_some(),
                },
                _ => false,
            })
        })
    }
}

/// Reads the events of `state` between `since` and `until` (nanoseconds since the
/// epoch, inclusive) that pass `filters`, oldest first, calling `out` for each until
/// it returns false. Past events are read with `since` or `until` (Docker's: without
/// either, only what comes from now on); with `follow`, new ones are waited for
/// (polling) until `until` passes or `out` refuses. Events are written in the order
/// they are recorded, which may differ slightly from their times: each is judged on
/// its own, none ends the read.
pub fn read(
    state: &Path,
    since: Option<u128>,
    until: Option<u128>,
    filters: &Filters,
    follow: bool,
    out: &mut dyn FnMut(&Event) -> bool,
) -> Result<(), EventsError> {
    let nanos_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    };
    let past = since.is_some() || until.is_some();
    let from = since.unwrap_or(if past { 0 } else { nanos_now() });
    // Every event in range that passes; false when `out` wants no more.
    let mut give = |events: Vec<Event>| -> bool {
        events
            .iter()
            .filter(|e| e.time_nano >= from && until.is_none_or(|u| e.time_nano <= u))
            .filter(|e| filters.matches(e))
            .all(&mut *out)
    };
    let path = log_path(state);
    let rotated = rotated_path(state);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EventsError::Io { path, source }
    };
    // Both files opened with no rotation between the opens.
    let (mut current, old) = {
        let _lock = shared_lock(state)?;
        let current = open_log(&path)?;
        let old = if past { open_log(&rotated)? } else { None };
        (current, old)
    };
    if let Some(mut old) = old
        && !give(lines(&mut old))
    {
        return Ok(());
    }
    if !past && let Some(f) = current.as_mut() {
        // Only what comes from now on.
        f.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
    }
    loop {
        if let Some(f) = current.as_mut()
            && !give(lines(f))
        {
            return Ok(());
        }
        if !follow || until.is_some_and(|u| nanos_now() > u) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
        // Rotated (or made) since it was opened: the held file is complete (a rotation
        // waits for every write under way), so its rest is read; if it rotated twice,
        // the middle file is the rotated one now. Then the new one from its start.
        let id = |m: fs::Metadata| (m.dev(), m.ino());
        let held = current
            .as_ref()
            .and_then(|f| f.get_ref().metadata().ok())
            .map(id);
        let now_there = fs::metadata(&path).ok().map(id);
        if now_there.is_some() && now_there != held {
            if let Some(f) = current.as_mut()
                && !give(lines(f))
            {
                return Ok(());
            }
            let _lock = shared_lock(state)?;
            if held.is_some()
                && fs::metadata(&rotated).ok().map(id) != held
                && let Some(mut middle) = open_log(&rotated)?
                && !give(lines(&mut middle))
            {
                return Ok(());
            }
            current = open_log(&path)?;
        }
    }
}

/// The writers' lock, held shared: no rotation until it is dropped.
fn shared_lock(state: &Path) -> Result<fs::File, EventsError> {
    let io = |source| EventsError::Io {
        path: state.join("events.lock"),
        source,
    };
    let lock = lock_file(state).map_err(io)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared).map_err(|e| io(e.into()))?;
    Ok(lock)
}

fn open_log(path: &Path) -> Result<Option<BufReader<fs::File>>, EventsError> {
    match fs::File::open(path) {
        Ok(f) => Ok(Some(BufReader::new(f))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EventsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The complete lines from where `f` is; a line still being written (no newline yet)
/// is left for the next call. Lines that do not parse are skipped.
fn lines(f: &mut BufReader<fs::File>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        match f.by_ref().take(1 << 20).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) if line.last() != Some(&b'\n') && n < 1 << 20 => {
                // Half a line: step back and wait for the rest.
                let _ = f.seek_relative(-(n as i64));
                break;
            }
            Ok(_) => {
                if let Ok(e) = serde_json::from_slice::<Event>(&line) {
                    out.push(e);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(e: Event, nanos: u128) -> Event {
        Event {
            time: (nanos / 1_000_000_000) as u64,
            time_nano: nanos,
            ..e
        }
    }

    #[test]
    fn lines_are_dockers_with_sorted_attributes() {
        let e = at(
            Event::new(
                "container",
                "die",
                "abc123",
                &[("name", "web"), ("image", "busybox"), ("exitCode", "0")],
            ),
            1_733_500_000_000_000_001,
        );
        assert_eq!(
            e.line(),
            "2024-12-06T15:46:40.000000001Z container die abc123 (exitCode=0, image=busybox, name=web)"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["Actor"]["Attributes"]["name"], "web");
        assert_eq!(json["status"], "die");
        assert_eq!(json["from"], "busybox");
        let image = Event::new("image", "pull", "busybox:latest", &[("name", "busybox")]);
        let json = serde_json::to_value(&image).unwrap();
        assert_eq!(
            (&json["status"], &json["id"]),
            (&"pull".into(), &"busybox:latest".into())
        );
        assert!(json.get("from").is_none());
        let volume = Event::new("volume", "create", "v", &[("driver", "local")]);
        assert!(
            serde_json::to_value(&volume)
                .unwrap()
                .get("status")
                .is_none()
        );
        // Templates see Docker's Go field names.
        let t = e.template_value();
        assert_eq!(
            (
                &t["Status"],
                &t["ID"],
                &t["From"],
                &t["Actor"]["Attributes"]["exitCode"]
            ),
            (
                &"die".into(),
                &"abc123".into(),
                &"busybox".into(),
                &"0".into()
            )
        );
        // A label cannot forge a line or steer the terminal.
        let evil = Event::new(
            "container",
            "start",
            "x",
            &[("l", "a\n2026 container die y\x1b[2J")],
        );
        assert!(!evil.line().contains('\n') && !evil.line().contains('\x1b'));
    }

    #[test]
    fn filters_are_dockers() {
        let e = Event::new(
            "container",
            "start",
            "0123456789ab",
            &[("name", "web"), ("image", "busybox:latest"), ("team", "a")],
        );
        let f = |fs: &[&str]| {
            Filters::parse(&fs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(f(&[]).matches(&e));
        assert!(f(&["container=web"]).matches(&e));
        assert!(f(&["container=0123"]).matches(&e));
        assert!(f(&["event=die", "event=start"]).matches(&e));
        assert!(!f(&["event=die", "type=container"]).matches(&e));
        assert!(f(&["image=busybox:latest", "label=team=a", "label=team"]).matches(&e));
        assert!(f(&["image=busybox"]).matches(&e), "without its tag");
        assert!(!f(&["image=busy"]).matches(&e));
        assert!(!f(&["label=team=b"]).matches(&e));
        assert!(!f(&["type=image"]).matches(&e));
        assert!(!f(&["network=web"]).matches(&e));
        for bad in ["bogus=1", "type=plugin", "event"] {
            assert!(Filters::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
        // Docker's: event=health_status also matches the action with its status.
        let h = Event::new("container", "health_status: healthy", "0123456789ab", &[]);
        assert!(f(&["event=health_status"]).matches(&h));
        assert!(f(&["event=health_status: healthy"]).matches(&h));
        assert!(!f(&["event=health"]).matches(&h));
        assert!(!f(&["event=start"]).matches(&h));
    }

    /// Writers append whole lines; past the cap the log rotates; a reader with `since`
    /// gets both files in order, one without it only what comes later, and `until`
    /// ends the read.
    #[test]
    fn the_log_rotates_and_readers_see_every_event_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let big = "x".repeat(4000);
        let mut first = None;
        for i in 0..400 {
            let e = Event::new("volume", "create", &format!("v{i}"), &[("pad", &big)]);
            first.get_or_insert(e.time_nano);
            record(state, &e);
        }
        assert!(rotated_path(state).exists(), "rotated past {MAX_LOG}");
        let mut seen = Vec::new();
        read(state, first, None, &Filters::default(), false, &mut |e| {
            seen.push(e.actor.id.clone());
            true
        })
        .unwrap();
        // Everything in the two files, in order, no duplicates.
        let n: Vec<usize> = seen.iter().map(|s| s[1..].parse().unwrap()).collect();
        assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{n:?}");
        assert_eq!(n.last(), Some(&399));
        assert!(n.len() > 250, "{}", n.len());

        let mut none = 0;
        read(state, None, None, &Filters::default(), false, &mut |_| {
            none += 1;
            true
        })
        .unwrap();
        assert_eq!(none, 0, "without --since only new events");

        let mut before_now = 0;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        read(
            state,
            None,
            Some(now),
            &Filters::default(),
            true,
            &mut |_| {
                before_now += 1;
                true
            },
        )
        .unwrap();
        assert_eq!(before_now, seen.len(), "--until alone: the past up to it");

        let mut until = 0;
        read(state, first, first, &Filters::default(), true, &mut |_| {
            until += 1;
            true
        })
        .unwrap();
        assert!(until <= 1, "until ends the read ({until})");
    }
}
