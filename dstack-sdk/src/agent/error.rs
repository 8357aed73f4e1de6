//! The agent layer's error type: what the shim/runner APIs answer with, what the executor
//! reports, and what the typed clients return. Maps into [`crate::Error`] once.

use std::path::PathBuf;

use crate::{Error, ErrorKind};

/// Everything that can go wrong in the agent, its executor, or the agent clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The referenced task does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (HTTP 409), e.g. a second submit of
    /// the same task id or a runner call in the wrong runner state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The request body is not JSON although it says so or says otherwise (HTTP 415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body is larger than the agent accepts (HTTP 413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The agent does not implement this operation (HTTP 501).
    #[error("{0}")]
    NotImplemented(String),
    /// A file-system operation failed.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        /// What the agent was doing.
        context: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not listen on an address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Spawning or signalling a job process failed.
    #[error("{0}")]
    Process(String),
    /// A state file or a response body could not be (de)serialized.
    #[error("{context}: {source}")]
    Json {
        /// What was being read or written.
        context: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The peer could not be reached (client side): nothing is known about its state.
    #[error("{0}")]
    Transport(String),
    /// The peer answered with an error status (client side), as dstack's
    /// `*ResponseStatusError`: `METHOD /path: status: body`.
    #[error("{method} {path}: {status}: {body}")]
    Status {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The HTTP status code.
        status: u16,
        /// The (possibly truncated) response body.
        body: String,
    },
    /// An unexpected internal condition.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// An I/O error with what was being done and on which path.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// A JSON error with what was being read or written.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        AgentError::Json {
            context: context.into(),
            source,
        }
    }

    /// The HTTP status the agent's API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            AgentError::NotFound(_) => 404,
            AgentError::Conflict(_) => 409,
            AgentError::BadRequest(_) => 400,
            AgentError::UnsupportedMediaType(_) => 415,
            AgentError::PayloadTooLarge(_) => 413,
            AgentError::NotImplemented(_) => 501,
            AgentError::Status { status, .. } => *status,
            _ => 500,
        }
    }
}

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Self {
        let kind = match &e {
            AgentError::NotFound(_) => ErrorKind::NotFound,
            AgentError::Conflict(_) => ErrorKind::Conflict,
            AgentError::BadRequest(_)
            | AgentError::UnsupportedMediaType(_)
            | AgentError::PayloadTooLarge(_) => ErrorKind::Validation,
            AgentError::Transport(_) => ErrorKind::Transport,
            AgentError::Status { status: 404, .. } => ErrorKind::NotFound,
            AgentError::Status { status: 409, .. } => ErrorKind::Conflict,
            AgentError::Status { status, .. } if (400..500).contains(status) => {
                ErrorKind::Validation
            }
            AgentError::Status { .. } => ErrorKind::Transport,
            AgentError::NotImplemented(_)
            | AgentError::Io { .. }
            | AgentError::Bind { .. }
            | AgentError::Process(_)
            | AgentError::Json { .. }
            | AgentError::Internal(_) => ErrorKind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}

/// `Result` with [`AgentError`].
pub type AgentResult<T> = std::result::Result<T, AgentError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_kinds_and_statuses() {
        let e = AgentError::Conflict("task x is already submitted".into());
        assert_eq!(e.http_status(), 409);
        assert_eq!(Error::from(e).kind(), ErrorKind::Conflict);
        let e = AgentError::Status {
            method: "POST".into(),
            path: "/api/run".into(),
            status: 409,
            body: "Conflict".into(),
        };
        assert_eq!(e.to_string(), "POST /api/run: 409: Conflict");
        assert_eq!(Error::from(e).kind(), ErrorKind::Conflict);
        assert_eq!(
            Error::from(AgentError::NotFound("x".into())).kind(),
            ErrorKind::NotFound
        );
    }
}
