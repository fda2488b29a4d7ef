//! Arca's runtime: what the `arca` CLI is built on. The modules, from the leaves up
//! (each uses only those above it; `docs/architecture.md` has the map):
//!
//! - [`state`]: the state directory, private to its user, and peer checks on sockets.
//! - [`logs`]: container logs rotated like Docker's `local` driver, and their readers.
//! - [`image`]: the content-addressed image store (`load`, tags, removal, locked with
//!   flock(2)), safe layer unpacking, and registry v2 pulls.
//! - [`guest`]: the agent initramfs and per-image ext4 disks a microVM boots with.
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
//! - [`network`]: networks (`arca network`), address leases, bridges and nftables rules.
//! - [`error`]: [`RunError`], what container commands fail with, and Docker's exit code
//!   for each.
//! - [`sandbox`]: a container's sandbox (a microVM or a host agent): launching it,
//!   linking it to its network, watching it, and its teardown.
//! - [`attach`]: `arca attach`, and the hub a detached container's monitor serves it from.
//! - [`exec`]: `arca exec`.
//! - [`cp`]: `arca cp`, through the agent's builtins, and the safe host extraction.
//! - [`run`]: `arca run`, in the foreground or detached under a monitor process.

#![forbid(unsafe_code)]

pub mod attach;
pub mod container;
pub mod cp;
pub mod error;
pub mod exec;
pub mod guest;
pub mod image;
pub mod logs;
pub mod network;
pub mod ports;
pub mod run;
pub mod sandbox;
pub mod state;
pub mod storage;
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
    use super::{parse_size, rfc3339};

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
