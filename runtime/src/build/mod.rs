//! `arca build` (issue 19), from the leaves up: Docker's word processing for
//! Dockerfile arguments ([`words`]: quotes, escapes, variable substitution), the
//! Dockerfile parser ([`dockerfile`]) and `.dockerignore` ([`ignore`]). All three are
//! pure (no I/O); the parser and word processing are fuzzed
//! (`fuzz/fuzz_targets/dockerfile.rs`). The builder that runs the instructions is not
//! written yet: `arca build` is not a command.

pub mod dockerfile;
pub mod ignore;
pub mod words;
