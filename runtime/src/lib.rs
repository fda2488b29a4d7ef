//! Arca's runtime: what the `arca` CLI is built on.
//!
//! - [`image::unpack`]: applies OCI/Docker image layers to a directory, safely: no path
//!   escapes through `..`, absolute paths, symlinks or hard links; whiteouts and opaque
//!   directories honoured; device nodes refused.
//! - [`image::store`]: content-addressed image store (`load` of `docker save` and OCI
//!   layout tarballs with every digest verified, tags, removal), locked with flock(2).
//! - [`guest`]: the agent initramfs and per-image ext4 disks a microVM boots with.
//! - [`run`]: `arca run` in the foreground, in a microVM or on the host.
//!
//! Registry pulls, detached containers and container state come next.

#![forbid(unsafe_code)]

pub mod guest;
pub mod image;
pub mod run;
