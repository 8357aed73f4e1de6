//! The public error type of the SDK.
//!
//! Each layer (spec parsing, catalog loading, transport, engine) keeps its own detailed error
//! enum and maps into [`Error`] once. Callers branch on [`Error::kind`]; the server maps kinds
//! to dstack's HTTP error shapes and each binding maps them to its language.

use std::fmt;

/// What a caller can act on. Stable: new internal error variants map onto these kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The entity does not exist (dstack code `resource_not_exists`).
    NotFound,
    /// The entity already exists (dstack code `resource_exists`).
    AlreadyExists,
    /// The token is missing, unknown, or belongs to an inactive user (HTTP 403).
    Unauthenticated,
    /// The caller may not do this (HTTP 403).
    Forbidden,
    /// Cloud or server credentials were rejected (dstack code `invalid_credentials`).
    InvalidCredentials,
    /// The input is invalid; the message names the field.
    Validation,
    /// The resource changed or is in use.
    Conflict,
    /// The backend is not configured or not built into this binary.
    BackendNotAvailable,
    /// No offer or capacity satisfies the request.
    NoCapacity,
    /// A cloud provider returned an error.
    Cloud,
    /// The network or HTTP transport failed.
    Transport,
    /// A bug or an unexpected condition inside the SDK.
    Internal,
}

impl ErrorKind {
    /// dstack's `ServerClientErrorCode` string for this kind, as sent in 400 bodies.
    pub fn dstack_code(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "resource_not_exists",
            ErrorKind::AlreadyExists => "resource_exists",
            ErrorKind::InvalidCredentials => "invalid_credentials",
            ErrorKind::BackendNotAvailable => "backend_not_available",
            _ => "error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How the HTTP front renders an error; dstack uses several body shapes for the same status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HttpShape {
    /// The default for the kind: 400 `{"detail":[{"msg","code"}]}` for business errors,
    /// 403 `{"detail":{"msg","code":null}}` for auth failures.
    #[default]
    Default,
    /// A 404 from an auth dependency: `{"detail":{"msg":"Not found","code":null}}`.
    DependencyNotFound,
    /// A 403 raised inside a service: `{"msg","code":null}` without the `detail` wrapper.
    Unwrapped,
    /// A request body that failed validation: 422 in FastAPI's `{"detail":[{type,loc,msg,input}]}`.
    RequestValidation,
}

/// The SDK's public error: a [`ErrorKind`], a human message that says what to do next, and
/// optionally the path of the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    fields: Vec<Vec<String>>,
    shape: HttpShape,
}

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            fields: Vec::new(),
            shape: HttpShape::Default,
        }
    }

    /// `resource_not_exists` with dstack's default message.
    pub fn not_found() -> Self {
        Self::new(ErrorKind::NotFound, "Resource not found")
    }

    /// `resource_exists` with dstack's default message.
    pub fn already_exists() -> Self {
        Self::new(ErrorKind::AlreadyExists, "Resource exists")
    }

    /// A plain business error (400, code `error`).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// A 403 raised by a service (rendered without the `detail` wrapper, as dstack does).
    pub fn forbidden_action(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message).with_shape(HttpShape::Unwrapped)
    }

    /// Overrides how the HTTP front renders this error.
    pub fn with_shape(mut self, shape: HttpShape) -> Self {
        self.shape = shape;
        self
    }

    /// How the HTTP front renders this error.
    pub fn shape(&self) -> HttpShape {
        self.shape
    }

    /// A validation error that names the offending field path (e.g. `["resources", "gpu"]`).
    pub fn validation(field_path: &[&str], message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Validation,
            message: message.into(),
            fields: vec![field_path.iter().map(|s| s.to_string()).collect()],
            shape: HttpShape::Default,
        }
    }

    /// The kind a caller branches on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Field paths the error refers to (empty when it refers to none).
    pub fn fields(&self) -> &[Vec<String>] {
        &self.fields
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
