//! The backend layer's error, mapped once into [`crate::Error`].

use crate::error::{Error, ErrorKind};

/// `Result` with [`BackendError`].
pub type BackendResult<T> = std::result::Result<T, BackendError>;

/// What can go wrong talking to a cloud. Messages never contain credentials.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The cloud rejected the credentials (dstack code `invalid_credentials`).
    #[error("Invalid credentials: {message}")]
    InvalidCredentials {
        /// What the cloud said.
        message: String,
    },
    /// No capacity (or no quota) for this offer; the caller tries the next offer.
    #[error("No capacity: {message}")]
    NoCapacity {
        /// Why, per zone or subnet tried.
        message: String,
    },
    /// Termination started but is not finished; call `terminate_instance` again later.
    #[error("Not yet terminated: {message}")]
    NotYetTerminated {
        /// What is still pending.
        message: String,
    },
    /// Provisioning failed for good (the instance vanished or failed to start); abort the
    /// job or instance.
    #[error("Provisioning failed: {message}")]
    Provisioning {
        /// What happened.
        message: String,
    },
    /// The backend config cannot work (e.g. the VPC or AMI it names does not exist).
    #[error("Invalid backend config: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Any other error the cloud returned.
    #[error("{provider} error {code}: {message}")]
    Cloud {
        /// The cloud, e.g. `aws`.
        provider: String,
        /// The provider's error code (e.g. `InvalidParameterValue`) or HTTP status.
        code: String,
        /// The provider's message.
        message: String,
        /// Whether retrying the same call later may succeed (throttling, 5xx).
        retryable: bool,
    },
    /// The request did not reach the cloud or no response came back.
    #[error("transport error: {0}")]
    Transport(String),
    /// The operation or backend is not available in this build or for this cloud.
    #[error("{0}")]
    Unsupported(String),
}

impl BackendError {
    /// A non-retryable cloud error.
    pub fn cloud(
        provider: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Cloud {
            provider: provider.into(),
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Cloud { retryable, .. } => *retryable,
            Self::Transport(_) => true,
            _ => false,
        }
    }

    /// Whether the caller should try the next offer (no capacity or quota for this one).
    pub fn is_no_capacity(&self) -> bool {
        matches!(self, Self::NoCapacity { .. })
    }

    /// The SDK error kind this maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidCredentials { .. } => ErrorKind::InvalidCredentials,
            Self::NoCapacity { .. } => ErrorKind::NoCapacity,
            Self::NotYetTerminated { .. } => ErrorKind::Conflict,
            Self::Provisioning { .. } | Self::Cloud { .. } => ErrorKind::Cloud,
            Self::Config { .. } => ErrorKind::Validation,
            Self::Transport(_) => ErrorKind::Transport,
            Self::Unsupported(_) => ErrorKind::BackendNotAvailable,
        }
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_sdk_kinds() {
        let e: Error = BackendError::InvalidCredentials {
            message: "AuthFailure".into(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::InvalidCredentials);
        assert_eq!(e.kind().dstack_code(), "invalid_credentials");
        let e: Error = BackendError::NoCapacity {
            message: "x".into(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::NoCapacity);
        assert!(BackendError::Transport("reset".into()).is_retryable());
        assert!(!BackendError::cloud("aws", "InvalidParameterValue", "bad").is_retryable());
    }
}
