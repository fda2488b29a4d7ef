//! Arca's runtime: what the `arca` CLI is built on. The modules, from the leaves up
//! (each uses only those above it; `docs/architecture.md` has the map):
//!
//! - [`state`]: the state directory, private to its user, and peer checks on sockets.
//! - [`logs`]: container logs rotated like Docker's `local` driver, and their readers.
//! - [`image`]: the content-addressed image store (`load`, tags, removal, locked with
//!   flock(2)), safe layer unpacking, and registry v2 pulls.
//! - [`guest`]: the agent initramfs and per-image ext4 disks a microVM boots with.
//! - [`build`]: Dockerfiles for `arca build` (the parser and Docker's word processing so
//!   far).
//! - [`template`]: Go templates over JSON values for `--format` and `inspect -f`, and
//!   Docker's list formats (`table`, `json`).
//! - [`terminal`]: one terminal session (raw mode, size following, input pump) for
//!   `run -it`, `exec -it` and `attach`.
//! - [`storage`]: the writable layer on host disk, `--tmpfs` and `--storage-opt`.
//! - [`ports`]: `-p` listeners that forward connections through the agent.
//! - [`container`]: container records (one module per concern: host process identity,
//!   the record, what `run` was asked, the lifecycle commands, what users read).
//! - [`volume`]: volumes (`arca volume`, `-v NAME:/path`), filled from images, kept
//!   apart from containers.
//! - [`netlink`]: the kernel requests a container's link needs (rtnetlink, nf_tables set
//!   elements), without `ip` or `nft` processes.
//! - [`network`]: networks (`arca network`), address leases, bridges and nftables rules.
//! - [`dns`]: a network's resolver on its gateway (`arca __dns`): the containers' names
//!   at query time, the rest forwarded.
//! - [`error`]: [`RunError`], what container commands fail with, and Docker's exit code
//!   for each.
//! - [`sandbox`]: a container's sandbox (a microVM or a host agent): launching it,
//!   linking it to its network, watching it, and its teardown.
//! - [`attach`]: `arca attach`, and the hub a detached container's monitor serves it from.
//! - [`exec`]: `arca exec`.
//! - [`cp`]: `arca cp`, through the agent's builtins, and the safe host extraction.
//! - [`run`]: `arca run`, in the foreground or detached under a monitor process.
//! - [`compose`]: `arca compose`: Compose files read into projects, and their commands
//!   over the modules above.

#![forbid(unsafe_code)]

pub mod attach;
pub mod build;
pub mod compose;
pub mod container;
pub mod cp;
pub mod dns;
pub mod error;
pub mod events;
pub mod exec;
pub mod guest;
pub mod image;
pub mod logs;
pub mod netlink;
pub mod network;
pub mod ports;
pub mod run;
pub mod sandbox;
pub mod state;
pub mod stats;
pub mod storage;
pub mod system;
pub mod template;
pub mod terminal;
pub mod volume;

pub use error::RunError;

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch as RFC 3339 in UTC (`2026-12-06T01:02:03Z`), as Docker
/// writes times in `inspect`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds since the epoch as Go's `time.Time.String()` in UTC
/// (`2026-12-06 01:02:03 +0000 UTC`), as Docker's `CreatedAt` columns print.
pub fn go_time(secs: u64) -> String {
    let t = rfc3339(secs);
    format!("{} {} +0000 UTC", &t[..10], &t[11..19])
}

/// An RFC 3339 time (`2026-12-06T01:02:03.5+01:00`, `…Z`) in seconds since the epoch;
/// `None` for anything else or a time before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    parse_rfc3339_nanos(text).map(|(s, _)| s)
}

/// [`rfc3339`] with nanoseconds, fixed at 9 digits (Go's `RFC3339NanoFixed`, as
/// `docker logs -t` prints them).
pub fn rfc3339_nanos(secs: u64, nanos: u32) -> String {
    let t = rfc3339(secs);
    format!("{}.{nanos:09}Z", &t[..19])
}

/// [`parse_rfc3339`] keeping the fraction of a second: `(seconds, nanoseconds)`.
pub fn parse_rfc3339_nanos(text: &str) -> Option<(u64, u32)> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
        let digits = &frac[..frac.len() - rest.len()];
        if digits.is_empty() {
            return None;
        }
        for (i, c) in digits.bytes().take(9).enumerate() {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let h: i64 = rest[1..3].parse().ok()?;
            let mi: i64 = rest[4..6].parse().ok()?;
            let o = h * 3600 + mi * 60;
            if &rest[..1] == "+" { o } else { -o }
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    u64::try_from(secs).ok().map(|s| (s, nanos))
}

/// A duration as Docker's `units.HumanDuration` writes it (`Less than a second`,
/// `About a minute`, `3 hours`, `2 weeks`), for `ps`'s `RunningFor` and `Status`.
pub fn human_duration(secs: u64) -> String {
    let minutes = secs / 60;
    // Go rounds to the nearest hour here.
    let hours = (secs + 1800) / 3600;
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// Bytes as Docker prints reclaimed space: `0B`, `1.5kB`, `12.35MB` (powers of 1000,
/// 4 significant digits).
pub fn human_size(bytes: u64) -> String {
    human_size_digits(bytes, 4)
}

/// Bytes in powers of 1000 to `digits` significant digits (at least 3), trailing zeros
/// dropped, as Docker's `units.HumanSizeWithPrecision`: `2.05kB` with 3.
pub fn human_size_digits(bytes: u64, digits: usize) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit + 1 < units.len() {
        size /= 1000.0;
        unit += 1;
    }
    let digits = digits.max(3);
    let decimals = if size >= 100.0 {
        digits - 3
    } else if size >= 10.0 {
        digits - 2
    } else {
        digits - 1
    };
    let text = format!("{size:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{}", units[unit])
}

/// A Go duration (`300ms`, `1.5h`, `2h45m`, `10s`; units ns, us, µs, ms, s, m, h), as
/// Docker's `--since 10m` takes one. `None` for anything else.
pub fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let (factor, len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())
        .map(|(u, f)| (*f, u.len()))?;
        total += value * factor;
        rest = &rest[len..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// Text from a sandbox (or a label, an image's config) made safe to print: control characters (terminal escapes a
/// hostile guest could send) and the invisible characters that reorder or hide text
/// (bidi overrides, zero-width characters) become `?`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            let invisible = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
            if c.is_control() || invisible { '?' } else { c }
        })
        .collect()
}

/// `--label K=V` flags (and Compose's label lists) as a map; `K` alone is an empty
/// value, as Docker's.
pub fn parse_labels(items: &[String]) -> std::collections::BTreeMap<String, String> {
    items
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

/// Labels as Docker's list rows show them: `k=v` pairs, comma-separated, in key order.
pub fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `s`, cut to `width` characters with an ellipsis, as Docker's `formatter.Ellipsis`.
pub fn ellipsis(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `err` and its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A size as Docker writes them: `1234`, `512k`, `64m`, `64MiB`, `1g`, `1t` (suffixes
/// are powers of 1024, any case, an optional `i` and `b` after them) in bytes; `None`
/// for anything else, zero, or an overflow.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let t = t
        .strip_suffix('i')
        .filter(|r| r.ends_with(['k', 'm', 'g', 't']))
        .unwrap_or(t);
    let (digits, shift) = match t.as_bytes().last()? {
        b'k' => (&t[..t.len() - 1], 10),
        b'm' => (&t[..t.len() - 1], 20),
        b'g' => (&t[..t.len() - 1], 30),
        b't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bytes = digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)?;
    (bytes > 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::{
        go_time, human_duration, parse_go_duration, parse_rfc3339, parse_rfc3339_nanos, parse_size,
        rfc3339, rfc3339_nanos,
    };
    use std::time::Duration;

    #[test]
    fn go_durations_and_nanosecond_times_parse_as_go_does() {
        assert_eq!(parse_go_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "m", "1x", "-5m", "1h 2m", "2026-12-06"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_rfc3339_nanos("2026-12-06T03:02:03.5Z"),
            Some((1_796_526_123, 500_000_000))
        );
        assert_eq!(
            rfc3339_nanos(1_796_526_123, 42),
            "2026-12-06T03:02:03.000000042Z"
        );
        assert_eq!(
            parse_rfc3339_nanos(&rfc3339_nanos(1_796_526_123, 123_456_789)),
            Some((1_796_526_123, 123_456_789))
        );
    }

    #[test]
    fn times_read_and_print_as_docker_does() {
        assert_eq!(go_time(1_796_526_123), "2026-12-06 03:02:03 +0000 UTC");
        assert_eq!(parse_rfc3339("2026-12-06T03:02:03Z"), Some(1_796_526_123));
        assert_eq!(
            parse_rfc3339("2026-12-06T04:02:03.123456789+01:00"),
            Some(1_796_526_123)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        for bad in [
            "",
            "2026-12-06",
            "2026-13-06T03:02:03Z",
            "1969-12-31T23:59:59Z",
            "2026-12-06T03:02:03",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
        for (secs, want) in [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (61, "About a minute"),
            (600, "10 minutes"),
            (3600, "About an hour"),
            (5 * 3600, "5 hours"),
            (3 * 86_400, "3 days"),
            (20 * 86_400, "2 weeks"),
            (90 * 86_400, "3 months"),
            (800 * 86_400, "2 years"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_526_123), "2026-12-06T03:02:03Z");
    }

    #[test]
    fn sizes_parse_as_docker_writes_them() {
        for (text, want) in [
            ("1234", 1234),
            ("512k", 512 << 10),
            ("64M", 64 << 20),
            (" 64g ", 64 << 30),
            ("1T", 1 << 40),
            ("64mb", 64 << 20),
            ("64MiB", 64 << 20),
            ("100b", 100),
        ] {
            assert_eq!(parse_size(text), Some(want), "{text:?}");
        }
        for bad in [
            "",
            "0",
            "k",
            "-1",
            "1.5g",
            "64 g",
            "12x",
            "99999999999999999999",
            "20000000t",
            "1ib",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
