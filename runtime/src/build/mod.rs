//! `arca build` (issue 19), from the leaves up: Docker's word processing for
//! Dockerfile arguments ([`words`]: quotes, escapes, variable substitution), the
//! Dockerfile parser ([`dockerfile`]), `.dockerignore` ([`ignore`]), and the build
//! context with `COPY`'s layers ([`context`]). The first three are pure (no I/O); the
//! parser and word processing are fuzzed (`fuzz/fuzz_targets/dockerfile.rs`). Images
//! are committed with [`crate::image::store::Store::commit`]. The builder that runs the
//! instructions (and `RUN` in a microVM) is not written yet: `arca build` is not a
//! command.

pub mod context;
pub mod dockerfile;
pub mod ignore;
pub mod words;
