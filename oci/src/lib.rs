//! `arca-runtime`: an OCI runtime command line (runc's commands: `create`, `start`,
//! `state`, `kill`, `delete`, `run`, `exec`, `ps`, `list`, `pause`, `resume`,
//! `features`) over Arca's agent, so that podman (`--runtime`) and containerd's runc
//! shim (`--runc-binary`) can run containers with Arca.
//!
//! - [`spec`]: a bundle's `config.json` in the agent's terms, refusing by name what
//!   Arca does not apply (pure; fuzzed).
//! - [`container`]: the container's directory and record under the runtime's root.
//! - [`monitor`]: the process the caller waits on, which holds the container.
//! - [`stdio`]: a container process's streams connected to the caller's.
//! - [`commands`]: the commands, thin over those.
//!
//! Process isolation (the annotation `io.arca.isolation=process`) runs the container
//! under a host `arca-agent` of its own; microVM isolation through this CLI is refused
//! for now (see docs/oci.md).

#![forbid(unsafe_code)]

pub mod commands;
pub mod container;
pub mod monitor;
pub mod spec;
pub mod stdio;

/// Errors of the runtime's commands. Messages that callers match on are runc's words
/// (`container ID does not exist`, `cannot delete container ID that is not stopped`),
/// lower case as runc has them.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// No container of that id.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container {0} already exists")]
    Exists(String),
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The bundle's configuration.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// The agent.
    #[error(transparent)]
    Agent(#[from] arca_agent_client::AgentClientError),
    /// Finding `arca-agent`.
    #[error(transparent)]
    Guest(#[from] arca_runtime::guest::GuestError),
    /// A file or process of the runtime's.
    #[error("Cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}
