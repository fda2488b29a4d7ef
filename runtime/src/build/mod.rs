//! `arca build` (issue 19), from the leaves up: Docker's word processing for
//! Dockerfile arguments ([`words`]: quotes, escapes, variable substitution), the
//! Dockerfile parser ([`dockerfile`]), `.dockerignore` ([`ignore`]), the build context
//! with `COPY`'s layers ([`context`]), `ADD`'s archives ([`add`]), and the builder
//! that runs the stages ([`builder`]: `RUN` in a microVM or a host container, layers
//! committed with [`crate::image::store::Store::commit_on`], the build cache). The
//! first three are pure (no I/O); the parser and word processing are fuzzed
//! (`fuzz/fuzz_targets/dockerfile.rs`).

pub mod add;
pub mod builder;
pub mod context;
pub mod dockerfile;
pub mod ignore;
pub mod words;
