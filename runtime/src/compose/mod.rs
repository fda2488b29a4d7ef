//! `arca compose`: multi-container applications from Compose files (issue 20).
//!
//! From the leaves up: [`interpolate`] (variables and `.env` files, pure), [`load`]
//! (finding, reading, interpolating and merging the files into one YAML document),
//! [`model`] (the document read into a [`model::Project`]: keys checked, each service
//! turned into the `RunOptions` of its container), [`ops`] (the commands: `up`, `down`,
//! `ps`, `logs`, `exec`, `run`, `start`, `stop`, `restart`, `build`, `pull`, over the
//! same container, network, volume and image functions as the single-container
//! commands). Containers carry Compose's labels (`com.docker.compose.project`, ...),
//! which is how a project finds its containers again.

pub mod interpolate;
pub mod load;
pub mod model;
pub mod ops;

use crate::error::RunError;

/// Why a Compose command failed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// No Compose file here or in a parent directory, and no `-f`.
    #[error(
        "no configuration file provided: not found (looked for compose.yaml, compose.yml, docker-compose.yaml and docker-compose.yml here and in parent directories)"
    )]
    NoFile,
    /// Reading a file failed.
    #[error("Cannot {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not YAML.
    #[error("{file}: not a valid Compose file")]
    Yaml {
        /// The file.
        file: String,
        /// The parser's words.
        #[source]
        source: serde_norway::Error,
    },
    /// The project is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A key of the Compose specification Arca does not carry out.
    #[error("{0} is not supported by arca compose")]
    Unsupported(String),
    /// A service named on the command line is not in the project.
    #[error("no such service: {0}")]
    NoService(String),
    /// A dependency did not become ready.
    #[error("{0}")]
    Dependency(String),
    /// A service's image did not build.
    #[error("failed to build {service}: {message}")]
    Build {
        /// The service.
        service: String,
        /// The builder's words.
        message: String,
    },
    /// A container, network, volume or image operation failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<crate::network::NetworkError> for ComposeError {
    fn from(e: crate::network::NetworkError) -> Self {
        ComposeError::Run(e.into())
    }
}

impl From<crate::volume::VolumeError> for ComposeError {
    fn from(e: crate::volume::VolumeError) -> Self {
        ComposeError::Run(e.into())
    }
}

impl From<crate::container::record::RecordError> for ComposeError {
    fn from(e: crate::container::record::RecordError) -> Self {
        ComposeError::Run(e.into())
    }
}
