//! Arca's runtime: what the `arca` CLI is built on.
//!
//! - [`image::unpack`]: applies OCI/Docker image layers to a directory, safely: no path
//!   escapes through `..`, absolute paths, symlinks or hard links; whiteouts and opaque
//!   directories honoured; device nodes refused.
//! - [`image::store`]: content-addressed image store (`load` of `docker save` and OCI
//!   layout tarballs with every digest verified, tags, removal), locked with flock(2).
//! - [`guest`]: the agent initramfs and per-image ext4 disks a microVM boots with.
//! - [`image::pull`]: registry v2 pulls.
//! - [`run`]: `arca run`, in a microVM or on the host, in the foreground or detached
//!   under a monitor process.
//! - [`containers`]: container records and `ps`, `logs`, `stop`, `kill`, `rm`, `wait`,
//!   `exec`, `port`.
//! - [`network`]: networks (`arca network`), address leases, bridges and NAT rules.
//! - [`ports`]: `-p` listeners that forward connections through the agent.
//! - [`attach`]: `arca attach` to a detached container's terminal or stdio.
//! - [`logs`]: container logs rotated like Docker's `local` driver, and their readers.
//! - [`state`]: the state directory, private to its user, and peer checks on sockets.

#![forbid(unsafe_code)]

pub mod attach;
pub mod containers;
pub mod guest;
pub mod image;
pub mod logs;
pub mod network;
pub mod ports;
pub mod run;
pub mod state;

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
    use super::parse_size;

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
