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
