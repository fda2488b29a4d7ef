//! [`RunError`]: what container commands (`run`, `exec`, `attach`, `stop`, `rm`, ...)
//! fail with, and Docker's exit code for each.

use std::io;

use arca_agent_client::AgentClientError;

use crate::container::record::RecordError;
use crate::guest::GuestError;
use crate::image::pull::PullError;
use crate::image::store::StoreError;
use crate::network::NetworkError;
use crate::storage::StorageError;
use crate::volume::VolumeError;

/// Errors of container commands. All map to exit code 125 except the container's own
/// 126/127.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A needed program or file is missing.
    #[error("{0}")]
    Missing(String),
    /// The agent refused or failed.
    #[error(transparent)]
    Agent(#[from] AgentClientError),
    /// A container record could not be found, read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A name could not be reserved or released.
    #[error(transparent)]
    Name(#[from] crate::container::names::NameError),
    /// A local operation failed.
    #[error("Cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Building the guest's files failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The container could not run; Docker's exit code for that.
    #[error("{message}")]
    Failed {
        /// 125, 126 or 127.
        code: i32,
        /// Why.
        message: String,
    },
    /// Pulling a missing image failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Setting up the container's network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A storage option was bad, or the writable layer could not be made.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A volume or mount could not be made.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The sandbox process (VMM or host agent) ended before its agent answered.
    #[error("{program} ended before the container's agent answered ({status}): {output}")]
    SandboxFailed {
        /// `arca-vmm` or `arca-agent`.
        program: &'static str,
        /// How it ended.
        status: String,
        /// The end of what it wrote to stderr.
        output: String,
    },
}

impl RunError {
    /// Docker's exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Agent(AgentClientError::Agent(a)) => a.code.docker_exit_code(),
            RunError::Failed { code, .. } => *code,
            _ => 125,
        }
    }
}

/// Maps an I/O error to [`RunError::Io`] saying what was being done.
pub fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let action = action.into();
    move |source| RunError::Io { action, source }
}
