//! Health checks, by Docker's rules: the check a container has (`HEALTHCHECK` of its
//! image under `run --health-*`), its state (`health.json` beside its record: `starting`,
//! `healthy` or `unhealthy`, the failing streak and the last five probes), and the
//! [`Checker`] its monitor runs while it does: each probe is a process the container's
//! agent starts in it, as `exec` does.
//!
//! The guest is hostile: a probe's output is cut at 4 KiB (read on and dropped after
//! that, and not waited for beyond a moment once the probe ended), a probe that outlives
//! its timeout is killed, probes never overlap, and an agent that does not answer fails
//! the probe instead of holding the checker.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arca_agent_client::{AgentAddress, AgentClient};
use arca_protocol::{ProcessSpec, StdioStream};
use serde::{Deserialize, Serialize};

/// Docker's defaults and limits.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;
/// The longest output of a probe kept; more is cut, with `...` after it.
const MAX_OUTPUT: usize = 4096;
/// Probes kept in the log.
const MAX_LOG: usize = 5;
/// The shortest interval, timeout or start period `run` takes (Docker's).
const MINIMUM: Duration = Duration::from_millis(1);
/// How long starting a probe may take (the agent's answer to the exec); Docker's 30 s.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a probe's output may still come after it ended (a background child may
/// hold its pipes open).
const DRAIN: Duration = Duration::from_millis(500);
/// How long a stopping checker waits for a probe in flight.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// The signal that ends a probe over time.
const SIGKILL: i32 = 9;
/// The file beside the record.
pub const HEALTH_FILE: &str = "health.json";

/// A container's check: Docker's `Config.Healthcheck` (durations in nanoseconds; zero
/// means the default, or the image's value when merged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `[]` (inherit), `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Between probes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    /// A probe's time limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// Failures in this time after the start do not count (until a probe succeeds).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    /// Between probes during the start period.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    /// Failures in a row that make the container unhealthy.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl HealthConfig {
    /// An image's `Healthcheck` as the image (hostile) wrote it: fields of the wrong
    /// type, negative or absent are left at zero (the default).
    pub fn from_image(value: &serde_json::Value) -> Option<Self> {
        let object = value.as_object()?;
        let ns = |k: &str| {
            object
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        Some(Self {
            test: object
                .get("Test")
                .and_then(serde_json::Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            interval: ns("Interval"),
            timeout: ns("Timeout"),
            start_period: ns("StartPeriod"),
            start_interval: ns("StartInterval"),
            retries: object
                .get("Retries")
                .and_then(serde_json::Value::as_u64)
                .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
        })
    }

    /// Docker's merge of a container's check over its image's: the container's fields
    /// where set, the image's for the rest; either alone when the other is absent.
    pub fn merged(user: Option<&Self>, image: Option<&Self>) -> Option<Self> {
        match (user, image) {
            (None, i) => i.cloned(),
            (Some(u), None) => Some(u.clone()),
            (Some(u), Some(i)) => {
                let or = |a: u64, b: u64| if a == 0 { b } else { a };
                Some(Self {
                    test: if u.test.is_empty() {
                        i.test.clone()
                    } else {
                        u.test.clone()
                    },
                    interval: or(u.interval, i.interval),
                    timeout: or(u.timeout, i.timeout),
                    start_period: or(u.start_period, i.start_period),
                    start_interval: or(u.start_interval, i.start_interval),
                    retries: if u.retries == 0 { i.retries } else { u.retries },
                })
            }
        }
    }

    /// The probe's command line (`CMD-SHELL` through `shell`), or `None` when there is
    /// no check (`NONE`, no test, or a test of another kind: Docker ignores those too).
    pub fn command(&self, shell: &[String]) -> Option<Vec<String>> {
        let (kind, rest) = self.test.split_first()?;
        match kind.as_str() {
            "CMD" if !rest.is_empty() => Some(rest.to_vec()),
            "CMD-SHELL" if !rest.is_empty() => {
                let mut c = if shell.is_empty() {
                    vec!["/bin/sh".to_string(), "-c".to_string()]
                } else {
                    shell.to_vec()
                };
                c.push(rest.join(" "));
                Some(c)
            }
            _ => None,
        }
    }

    fn interval(&self) -> Duration {
        or_default(self.interval, DEFAULT_INTERVAL)
    }

    fn timeout(&self) -> Duration {
        or_default(self.timeout, DEFAULT_TIMEOUT)
    }

    fn start_period(&self) -> Duration {
        Duration::from_nanos(self.start_period)
    }

    fn start_interval(&self) -> Duration {
        or_default(self.start_interval, DEFAULT_START_INTERVAL)
    }

    fn retries(&self) -> u32 {
        if self.retries == 0 {
            DEFAULT_RETRIES
        } else {
            self.retries
        }
    }

    /// How long to wait before the next probe, `elapsed` after the start (Docker's
    /// documented rule: the start interval while starting within the start period, and
    /// never past the period's end; the interval after it).
    pub fn next_wait(&self, elapsed: Duration, status: HealthStatus) -> Duration {
        let period = self.start_period();
        if elapsed >= period {
            return self.interval();
        }
        let every = if status == HealthStatus::Starting {
            self.start_interval()
        } else {
            self.interval()
        };
        every.min(period - elapsed)
    }
}

fn or_default(ns: u64, default: Duration) -> Duration {
    if ns == 0 {
        default
    } else {
        Duration::from_nanos(ns)
    }
}

/// `run`'s `--health-*` flags as given.
#[derive(Debug, Clone, Default)]
pub struct HealthFlags {
    /// `--health-cmd`.
    pub cmd: Option<String>,
    /// `--health-interval`.
    pub interval: Option<String>,
    /// `--health-timeout`.
    pub timeout: Option<String>,
    /// `--health-start-period`.
    pub start_period: Option<String>,
    /// `--health-start-interval`.
    pub start_interval: Option<String>,
    /// `--health-retries`.
    pub retries: Option<i64>,
    /// `--no-healthcheck`.
    pub none: bool,
}

impl HealthFlags {
    /// The container's own check, with the Docker CLI's and daemon's rules and words:
    /// none when no flag was given; `NONE` for `--no-healthcheck`.
    pub fn parse(&self) -> Result<Option<HealthConfig>, String> {
        // Signed nanoseconds, as Go's flag parsing reads them (the sign is judged
        // after the conflict with --no-healthcheck, as Docker's CLI does).
        let duration = |flag: &str, v: &Option<String>| -> Result<i128, String> {
            let Some(text) = v else { return Ok(0) };
            let (sign, magnitude) = match text.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, text.strip_prefix('+').unwrap_or(text)),
            };
            let d = crate::parse_go_duration(magnitude).ok_or_else(|| {
                format!("invalid argument {text:?} for \"--health-{flag}\" flag: time: invalid duration {text:?}")
            })?;
            Ok(sign * d.as_nanos() as i128)
        };
        let interval = duration("interval", &self.interval)?;
        let timeout = duration("timeout", &self.timeout)?;
        let start_period = duration("start-period", &self.start_period)?;
        let start_interval = duration("start-interval", &self.start_interval)?;
        let retries = self.retries.unwrap_or(0);
        let cmd = self.cmd.clone().unwrap_or_default();
        let any = !cmd.is_empty()
            || interval != 0
            || timeout != 0
            || start_period != 0
            || start_interval != 0
            || retries != 0;
        if self.none {
            if any {
                return Err("--no-healthcheck conflicts with --health-* options".into());
            }
            return Ok(Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            }));
        }
        if !any {
            return Ok(None);
        }
        for (flag, ns) in [
            ("interval", interval),
            ("timeout", timeout),
            ("retries", i128::from(retries)),
            ("start-period", start_period),
            ("start-interval", start_interval),
        ] {
            if ns < 0 {
                return Err(format!("--health-{flag} cannot be negative"));
            }
        }
        let ns = |v: i128| u64::try_from(v).unwrap_or(u64::MAX);
        let (interval, timeout, start_period, start_interval) = (
            ns(interval),
            ns(timeout),
            ns(start_period),
            ns(start_interval),
        );
        for (name, ns) in [
            ("Interval", interval),
            ("Timeout", timeout),
            ("StartPeriod", start_period),
            ("StartInterval", start_interval),
        ] {
            if ns != 0 && Duration::from_nanos(ns) < MINIMUM {
                return Err(format!("{name} in Healthcheck cannot be less than 1ms"));
            }
        }
        Ok(Some(HealthConfig {
            test: if cmd.is_empty() {
                Vec::new()
            } else {
                vec!["CMD-SHELL".into(), cmd]
            },
            interval,
            timeout,
            start_period,
            start_interval,
            retries: u32::try_from(retries).unwrap_or(u32::MAX),
        }))
    }
}

/// Where a container's health stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No probe has succeeded yet, and failures have not yet made it unhealthy.
    #[default]
    Starting,
    /// The last probe succeeded.
    Healthy,
    /// `retries` probes in a row failed.
    Unhealthy,
}

impl HealthStatus {
    /// As Docker writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }

    /// As `ps` shows it after `Up ...`: `(health: starting)`, `(healthy)`, `(unhealthy)`.
    pub fn ps_suffix(self) -> &'static str {
        match self {
            HealthStatus::Starting => "(health: starting)",
            HealthStatus::Healthy => "(healthy)",
            HealthStatus::Unhealthy => "(unhealthy)",
        }
    }
}

/// One probe, as `State.Health.Log` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProbeResult {
    /// When it started (RFC 3339).
    pub start: String,
    /// When it ended.
    pub end: String,
    /// Its exit code; -1 when it timed out or could not run.
    pub exit_code: i64,
    /// Its output (stdout and stderr), cut at 4 KiB.
    pub output: String,
}

/// `State.Health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// Where it stands.
    pub status: HealthStatus,
    /// Failed probes in a row (those in the start period before any success aside).
    pub failing_streak: u32,
    /// The last five probes, oldest first.
    pub log: Vec<ProbeResult>,
}

impl Health {
    /// Takes a probe's result by Docker's rules; `in_start_period` says it started
    /// within the start period. Returns whether the status changed.
    pub fn record(&mut self, result: ProbeResult, in_start_period: bool, retries: u32) -> bool {
        let before = self.status;
        if self.log.len() >= MAX_LOG {
            self.log.drain(..=self.log.len() - MAX_LOG);
        }
        let ok = result.exit_code == 0;
        self.log.push(result);
        if ok {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else if !(self.status == HealthStatus::Starting && in_start_period) {
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.status != before
    }

    /// The health of the container in `dir`, if it has a check and was started.
    pub fn load(dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(dir.join(HEALTH_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes it beside the record, atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".health.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, dir.join(HEALTH_FILE))
    }
}

/// A duration as Go's `Duration.String()` writes it (`30s`, `1m0s`, `1.5s`, `500ms`),
/// for Docker's words about timeouts.
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let frac = |value: u128, unit: u128, suffix: &str| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            format!("{whole}{suffix}")
        } else {
            let digits = unit.to_string().len() - 1;
            let text = format!("{rest:0digits$}");
            format!("{whole}.{}{suffix}", text.trim_end_matches('0'))
        }
    };
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return frac(ns, 1_000, "µs");
    }
    if ns < 1_000_000_000 {
        return frac(ns, 1_000_000, "ms");
    }
    let secs = ns / 1_000_000_000;
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let s = frac(ns % 60_000_000_000, 1_000_000_000, "s");
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

fn stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    crate::rfc3339_nanos(d.as_secs(), d.subsec_nanos())
}

/// What a checker needs of the container it watches.
pub struct Watched {
    /// The container's directory (where `health.json` goes).
    pub dir: PathBuf,
    /// Its agent.
    pub address: AgentAddress,
    /// Its id there.
    pub container: String,
    /// The probe's process: the check's command with the container's environment, user
    /// and working directory.
    pub process: ProcessSpec,
    /// Whether it is paused now (no probes then, as Docker's).
    pub paused: Box<dyn Fn() -> bool + Send>,
    /// Told each change of status (the `health_status: ...` event).
    pub changed: Box<dyn Fn(HealthStatus) + Send>,
}

/// The health checker of one run of a container: a thread that probes it until dropped.
#[derive(Debug)]
pub struct Checker {
    shared: Arc<(Mutex<bool>, Condvar)>,
    done: mpsc::Receiver<()>,
    dir: PathBuf,
}

/// Tells probes apart within this process.
static PROBES: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("dir", &self.dir)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// Starts checking: the health is `starting` (its log kept from earlier runs), and
    /// the first probe comes after the interval (or the start interval).
    pub fn start(config: HealthConfig, watched: Watched) -> std::io::Result<Self> {
        let mut health = reset(&watched.dir)?;
        let dir = watched.dir.clone();
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, done) = mpsc::channel();
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || {
                check(&config, &watched, &mut health, &s);
                let _ = tx.send(());
            })?;
        Ok(Self { shared, done, dir })
    }
}

/// Makes the health of the container in `dir` `starting` for a new run (its log kept,
/// as Docker's), before the record says it runs; returns it.
pub fn reset(dir: &Path) -> std::io::Result<Health> {
    let mut health = Health::load(dir).unwrap_or_default();
    health.status = HealthStatus::Starting;
    health.failing_streak = 0;
    health.save(dir)?;
    Ok(health)
}

impl Drop for Checker {
    /// Stops probing (a probe in flight is waited for a moment, and its result dropped)
    /// and, as Docker's, leaves the health `unhealthy`: nothing checks it any more.
    fn drop(&mut self) {
        let (stopped, wake) = &*self.shared;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        let _ = self.done.recv_timeout(STOP_WAIT);
        if let Some(mut h) = Health::load(&self.dir) {
            h.status = HealthStatus::Unhealthy;
            let _ = h.save(&self.dir);
        }
    }
}

/// The checker's loop.
fn check(config: &HealthConfig, w: &Watched, health: &mut Health, shared: &(Mutex<bool>, Condvar)) {
    let (stopped, wake) = shared;
    let began = Instant::now();
    loop {
        let wait = config.next_wait(began.elapsed(), health.status);
        {
            let guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = wake
                .wait_timeout_while(guard, wait, |s| !*s)
                .unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
        }
        if (w.paused)() {
            continue;
        }
        let since = began.elapsed();
        let start = SystemTime::now();
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let exec_id = format!("health-{}-{n}", std::process::id());
        let (exit_code, output) = probe(w, &exec_id, config.timeout());
        let result = ProbeResult {
            start: stamp(start),
            end: stamp(SystemTime::now()),
            exit_code,
            output,
        };
        let guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *guard {
            return;
        }
        let changed = health.record(result, since < config.start_period(), config.retries());
        let _ = health.save(&w.dir);
        if changed {
            (w.changed)(health.status);
        }
        drop(guard);
    }
}

/// Output kept up to [`MAX_OUTPUT`].
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    cut: bool,
}

impl Output {
    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.cut {
            s.push_str("...");
        }
        s
    }
}

/// Runs one probe: its exit code and output, or -1 and why it failed.
fn probe(w: &Watched, exec_id: &str, timeout: Duration) -> (i64, String) {
    let failed = |e: &dyn std::fmt::Display| (-1, format!("Health check failed to run: {e}"));
    let mut client = match AgentClient::connect(&w.address, Duration::from_secs(5)) {
        Ok(c) => c.with_patience(START_TIMEOUT / 3),
        Err(e) => return failed(&e),
    };
    if let Err(e) = client.exec(&w.container, exec_id, w.process.clone()) {
        return failed(&e);
    }
    let output = Arc::new(Mutex::new(Output::default()));
    let mut sockets = Vec::new();
    let mut readers = Vec::new();
    for stream in [StdioStream::Stdout, StdioStream::Stderr] {
        let Ok(mut conn) = w.address.attach(&w.container, Some(exec_id), stream) else {
            continue;
        };
        if let Ok(s) = conn.socket_clone() {
            sockets.push(s);
        }
        let output = Arc::clone(&output);
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut o = output.lock().unwrap_or_else(|e| e.into_inner());
                let room = MAX_OUTPUT - o.bytes.len();
                o.bytes.extend_from_slice(&buf[..n.min(room)]);
                o.cut |= n > room;
            }
        }));
    }
    let (tx, rx) = mpsc::channel();
    let (container, id) = (w.container.clone(), exec_id.to_string());
    let waiting = client.socket_clone().ok();
    std::thread::spawn(move || {
        let _ = tx.send(client.wait(&container, Some(&id)));
    });
    let waited = rx.recv_timeout(timeout);
    if waited.is_err() {
        // Over time: killed (through another connection: this one waits), and waited
        // for a moment so that dying probes do not pile up; an agent that still does
        // not answer has the wait cut off, so no thread waits on it for ever.
        if let Ok(c) = AgentClient::connect(&w.address, Duration::from_secs(5)) {
            let _ = c.with_patience(Duration::from_secs(5)).signal(
                &w.container,
                Some(exec_id),
                SIGKILL,
            );
        }
        if rx.recv_timeout(STOP_WAIT).is_err()
            && let Some(s) = &waiting
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    // Output still coming after the end is not waited for long.
    let until = Instant::now() + DRAIN;
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in &sockets {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    for r in readers {
        let _ = r.join();
    }
    let text = output.lock().unwrap_or_else(|e| e.into_inner()).text();
    match waited {
        Ok(Ok(status)) => (i64::from(status.code), text),
        Ok(Err(e)) => failed(&e),
        Err(_) if text.is_empty() => (
            -1,
            format!("Health check exceeded timeout ({})", go_duration(timeout)),
        ),
        Err(_) => (
            -1,
            format!(
                "Health check exceeded timeout ({}): {text}",
                go_duration(timeout)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i64) -> ProbeResult {
        ProbeResult {
            start: String::new(),
            end: String::new(),
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn flags_parse_with_dockers_rules_and_words() {
        let f = |cmd: Option<&str>, interval: Option<&str>, retries: Option<i64>, none: bool| {
            HealthFlags {
                cmd: cmd.map(String::from),
                interval: interval.map(String::from),
                retries,
                none,
                ..Default::default()
            }
            .parse()
        };
        assert_eq!(f(None, None, None, false), Ok(None));
        assert_eq!(
            f(None, None, None, true).unwrap().unwrap().test,
            vec!["NONE"]
        );
        let c = f(Some("curl -f x"), Some("1m30s"), Some(2), false)
            .unwrap()
            .unwrap();
        assert_eq!(c.test, vec!["CMD-SHELL", "curl -f x"]);
        assert_eq!(c.interval, 90_000_000_000);
        assert_eq!(c.retries, 2);
        // Only an interval: the image's command stays (merged later).
        assert!(
            f(None, Some("5s"), None, false)
                .unwrap()
                .unwrap()
                .test
                .is_empty()
        );
        // -0s is zero, not negative.
        assert_eq!(
            f(Some("x"), Some("-0s"), None, false)
                .unwrap()
                .unwrap()
                .interval,
            0
        );
        for (cmd, interval, retries, none, error) in [
            (
                Some("x"),
                None,
                None,
                true,
                "--no-healthcheck conflicts with --health-* options",
            ),
            (
                None,
                Some("1s"),
                None,
                true,
                "--no-healthcheck conflicts with --health-* options",
            ),
            (
                None,
                Some("-1s"),
                None,
                true,
                "--no-healthcheck conflicts with --health-* options",
            ),
            (
                Some("x"),
                Some("-5s"),
                None,
                false,
                "--health-interval cannot be negative",
            ),
            (
                Some("x"),
                None,
                Some(-1),
                false,
                "--health-retries cannot be negative",
            ),
            (
                Some("x"),
                Some("500us"),
                None,
                false,
                "Interval in Healthcheck cannot be less than 1ms",
            ),
            (
                Some("x"),
                Some("soon"),
                None,
                false,
                "invalid argument \"soon\" for \"--health-interval\" flag: time: invalid duration \"soon\"",
            ),
        ] {
            assert_eq!(f(cmd, interval, retries, none), Err(error.to_string()));
        }
    }

    #[test]
    fn a_containers_check_merges_over_its_images_field_by_field() {
        let image = HealthConfig::from_image(&serde_json::json!({
            "Test": ["CMD", "true"], "Interval": 5_000_000_000u64, "Retries": 4
        }))
        .unwrap();
        let user = HealthConfig {
            interval: 1_000_000_000,
            ..Default::default()
        };
        let m = HealthConfig::merged(Some(&user), Some(&image)).unwrap();
        assert_eq!(m.test, vec!["CMD", "true"]);
        assert_eq!((m.interval, m.retries), (1_000_000_000, 4));
        let none = HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        let m = HealthConfig::merged(Some(&none), Some(&image)).unwrap();
        assert_eq!(m.command(&[]), None);
        assert_eq!(HealthConfig::merged(None, None), None);
    }

    #[test]
    fn a_hostile_images_check_is_read_leniently() {
        let c = HealthConfig::from_image(&serde_json::json!({
            "Test": ["CMD-SHELL", 7, "exit 0"], "Interval": -5, "Timeout": "1s", "Retries": 1u64 << 40
        }))
        .unwrap();
        assert_eq!(c.test, vec!["CMD-SHELL", "exit 0"]);
        assert_eq!((c.interval, c.timeout, c.retries), (0, 0, u32::MAX));
        assert_eq!(c.interval(), DEFAULT_INTERVAL);
        assert!(HealthConfig::from_image(&serde_json::json!("CMD true")).is_none());
    }

    #[test]
    fn commands_take_the_images_shell_for_cmd_shell() {
        let c = |t: &[&str]| HealthConfig {
            test: t.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            c(&["CMD-SHELL", "curl -f x || exit 1"]).command(&[]),
            Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "curl -f x || exit 1".into()
            ])
        );
        assert_eq!(
            c(&["CMD-SHELL", "x"]).command(&["/bin/bash".into(), "-ec".into()]),
            Some(vec!["/bin/bash".into(), "-ec".into(), "x".into()])
        );
        assert_eq!(
            c(&["CMD", "a", "b"]).command(&[]),
            Some(vec!["a".into(), "b".into()])
        );
        for none in [&["NONE"][..], &[], &["CMD"], &["SHELL", "x"]] {
            assert_eq!(c(none).command(&[]), None, "{none:?}");
        }
    }

    #[test]
    fn states_follow_dockers_rules() {
        let mut h = Health::default();
        // Failures in the start period do not count while starting.
        assert!(!h.record(result(1), true, 2));
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        assert!(h.record(result(0), true, 2));
        assert_eq!(h.status, HealthStatus::Healthy);
        // Once healthy, failures count even in the start period.
        assert!(!h.record(result(1), true, 2));
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 1));
        assert!(h.record(result(-1), false, 2));
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Unhealthy, 2));
        assert!(h.record(result(0), false, 2));
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
        // Starting, past the start period: failures count.
        let mut h = Health::default();
        h.record(result(2), false, 3);
        h.record(result(2), false, 3);
        assert_eq!(h.status, HealthStatus::Starting);
        assert!(h.record(result(2), false, 3));
        assert_eq!(h.status, HealthStatus::Unhealthy);
        // Five probes kept, the oldest dropped.
        for i in 0..7 {
            h.record(result(10 + i), false, 3);
        }
        let codes: Vec<i64> = h.log.iter().map(|r| r.exit_code).collect();
        assert_eq!(codes, vec![12, 13, 14, 15, 16]);
    }

    #[test]
    fn probes_come_as_dockers_do() {
        let s = Duration::from_secs;
        let c = HealthConfig {
            interval: s(30).as_nanos() as u64,
            start_period: s(60).as_nanos() as u64,
            start_interval: s(2).as_nanos() as u64,
            ..Default::default()
        };
        assert_eq!(c.next_wait(s(0), HealthStatus::Starting), s(2));
        assert_eq!(c.next_wait(s(0), HealthStatus::Healthy), s(30));
        // The start interval to the period's end, never past it.
        assert_eq!(c.next_wait(s(50), HealthStatus::Starting), s(2));
        assert_eq!(c.next_wait(s(59), HealthStatus::Starting), s(1));
        assert_eq!(c.next_wait(s(50), HealthStatus::Healthy), s(10));
        assert_eq!(c.next_wait(s(60), HealthStatus::Starting), s(30));
        assert_eq!(
            HealthConfig::default().next_wait(s(0), HealthStatus::Starting),
            s(30)
        );
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        for (d, text) in [
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_secs(7200), "2h0m0s"),
            (Duration::from_nanos(5), "5ns"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(go_duration(d), text);
        }
    }

    #[test]
    fn output_is_cut_at_four_kib() {
        let o = Output {
            bytes: vec![b'a'; MAX_OUTPUT],
            cut: true,
        };
        assert_eq!(o.text().len(), MAX_OUTPUT + 3);
        assert!(o.text().ends_with("a..."));
    }
}
