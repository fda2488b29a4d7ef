//! `arca-agent`, PID 1 of an Arca microVM, and the container library it shares with the
//! host for `--isolation=process`.

#![forbid(unsafe_code)]

pub mod cmdline;
