//! Arca's runtime: what the `arca` CLI is built on.
//!
//! - [`image::unpack`]: applies OCI/Docker image layers to a directory, safely: no path
//!   escapes through `..`, absolute paths, symlinks or hard links; whiteouts and opaque
//!   directories honoured; device nodes refused.
//!
//! The image store, registry pulls, container state and the CLI itself come next (see
//! docs/architecture.md).

#![forbid(unsafe_code)]

pub mod image;
