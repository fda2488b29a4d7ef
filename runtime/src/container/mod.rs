//! Containers as the host keeps them. Each has a directory `<state>/containers/<short
//! id>/` holding `state.json` (its [`record`], written atomically by its monitor: the
//! foreground `arca run`, or the `arca __monitor` a detached run starts),
//! `options.json` (a detached run's [`config::RunOptions`]), `stdout.log` and
//! `stderr.log`, `health.json` (with a health check), `sandbox.log` (what its VMM or host agent said), the agent's socket
//! and, when asked for, the microVM's console log; and `name`. Its name is reserved
//! by a link in `<state>/names/` ([`names`]).
//!
//! One module per concern, each using only those before it: [`pids`] (host processes
//! by pid and start time), [`names`] (IDs and names), [`health`] (health checks and
//! the checker a monitor runs), [`record`], [`config`] (what `run` was asked),
//! [`lifecycle`] (`stop`, `kill`, `rm`, `wait`, and cleaning up after crashed
//! monitors) and [`view`] (`ps`, `logs`).

pub mod config;
pub mod health;
pub mod lifecycle;
pub mod names;
pub mod pids;
pub mod record;
pub mod view;

pub use config::RunOptions;
pub use record::{ContainerRecord, Isolation, Status, find};
