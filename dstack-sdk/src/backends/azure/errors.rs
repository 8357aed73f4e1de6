//! ARM and token errors, and how they map to [`BackendError`].
//!
//! ARM answers errors as `{"error": {"code", "message", "details"}}` (the same shape appears
//! in a failed long-running operation's `error`). Codes that mean "no capacity or no quota
//! for this size here" become [`BackendError::NoCapacity`] so the caller tries its next
//! offer; 401 becomes [`BackendError::InvalidCredentials`].

use serde_json::Value;

use crate::backends::error::BackendError;

/// The provider name used in [`BackendError::Cloud`].
pub const PROVIDER: &str = "azure";

/// Error codes that mean "no capacity or quota for this size in this location": the caller
/// tries its next offer.
pub const CAPACITY_CODES: &[&str] = &[
    "SkuNotAvailable",
    "OperationNotAllowed",
    "QuotaExceeded",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
    "AllocationFailedVMSeriesNotAvailable",
    "SpotVMCapacityNotAvailable",
    "SkuNotAvailableInZone",
    "PublicIPCountLimitReached",
    "NetworkInterfaceCountLimitReached",
];

/// What went wrong with one ARM (or token) call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArmError {
    /// ARM answered with an error status (or a long-running operation failed).
    #[error("{code} (HTTP {status}): {message}")]
    Api {
        /// The HTTP status (0 for a failed long-running operation).
        status: u16,
        /// ARM's error code, e.g. `SkuNotAvailable`, or the status when the body has none.
        code: String,
        /// ARM's message.
        message: String,
        /// Whether retrying later may succeed (429 and 5xx after the retries were spent).
        retryable: bool,
    },
    /// The token endpoint rejected the credentials (AADSTS errors, 400/401).
    #[error("{0}")]
    Auth(String),
    /// The request did not reach ARM, or the answer could not be read.
    #[error("transport error: {0}")]
    Transport(String),
    /// A long-running operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ArmError {
    /// The error of an HTTP answer with `status` and `body` (ARM's error shape, or not).
    pub fn from_response(status: u16, body: &str) -> Self {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let (code, message) = error_fields(&v);
        Self::Api {
            status,
            code: code.unwrap_or_else(|| status.to_string()),
            message: message.unwrap_or_else(|| body.chars().take(300).collect()),
            retryable: status == 429 || status >= 500,
        }
    }

    /// The error of a failed long-running operation (`{"status": "Failed", "error": {...}}`).
    pub fn from_operation(v: &Value) -> Self {
        let (code, message) = error_fields(v);
        Self::Api {
            status: 0,
            code: code.unwrap_or_else(|| "OperationFailed".into()),
            message: message.unwrap_or_else(|| "the operation failed".into()),
            retryable: false,
        }
    }

    /// ARM's error code, if this is an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if this is an API error answered over HTTP.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } if *status > 0 => Some(*status),
            _ => None,
        }
    }

    /// Whether the resource does not exist (404, `ResourceNotFound`, `NotFound`, …).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
            || self.code().is_some_and(|c| {
                matches!(c, "ResourceNotFound" | "NotFound" | "ResourceGroupNotFound")
            })
    }

    /// Whether this means no capacity or quota for the size (see [`CAPACITY_CODES`]).
    pub fn is_no_capacity(&self) -> bool {
        self.code().is_some_and(is_capacity_code)
    }

    /// Whether ARM or the token endpoint rejected who we are (401, 403 or a token error).
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth(_)) || matches!(self.status(), Some(401 | 403))
    }
}

/// Whether `code` means no capacity or quota (see [`CAPACITY_CODES`]).
pub fn is_capacity_code(code: &str) -> bool {
    CAPACITY_CODES.contains(&code)
}

/// `(code, message)` of an ARM error body or operation, with the first detail's code and
/// message when the outer ones are generic (e.g. `DeploymentFailed`).
fn error_fields(v: &Value) -> (Option<String>, Option<String>) {
    let e = v.get("error").unwrap_or(v);
    let code = e.get("code").and_then(Value::as_str).map(str::to_string);
    let message = e.get("message").and_then(Value::as_str).map(str::to_string);
    let detail = e
        .get("details")
        .and_then(Value::as_array)
        .and_then(|d| d.first());
    match (code, detail) {
        (Some(c), Some(d)) if !is_capacity_code(&c) => {
            let dc = d.get("code").and_then(Value::as_str);
            if dc.is_some_and(is_capacity_code) {
                let dm = d.get("message").and_then(Value::as_str).map(str::to_string);
                (dc.map(str::to_string), dm.or(message))
            } else {
                (Some(c), message)
            }
        }
        (c, _) => (c, message),
    }
}

impl From<ArmError> for BackendError {
    fn from(e: ArmError) -> Self {
        if e.is_no_capacity() {
            return BackendError::NoCapacity {
                message: e.to_string(),
            };
        }
        match e {
            ArmError::Auth(message) => BackendError::InvalidCredentials { message },
            ArmError::Api {
                status: 401,
                code,
                message,
                ..
            } => BackendError::InvalidCredentials {
                message: format!("{code}: {message}"),
            },
            ArmError::Api {
                code,
                message,
                retryable,
                ..
            } => BackendError::Cloud {
                provider: PROVIDER.into(),
                code,
                message,
                retryable,
            },
            ArmError::Transport(m) => BackendError::Transport(m),
            ArmError::Timeout(m) => BackendError::Cloud {
                provider: PROVIDER.into(),
                code: "Timeout".into(),
                message: m,
                retryable: true,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn maps_arm_errors() {
        let e = ArmError::from_response(
            409,
            r#"{"error":{"code":"SkuNotAvailable","message":"The requested size is not available"}}"#,
        );
        assert!(e.is_no_capacity());
        assert!(BackendError::from(e).is_no_capacity());
        let e = ArmError::from_response(
            404,
            r#"{"error":{"code":"ResourceNotFound","message":"x"}}"#,
        );
        assert!(e.is_not_found());
        let e = ArmError::from_response(401, "");
        assert!(matches!(
            BackendError::from(e),
            BackendError::InvalidCredentials { .. }
        ));
        let op = serde_json::json!({"status": "Failed", "error": {"code": "DeploymentFailed",
            "message": "outer", "details": [{"code": "AllocationFailed", "message": "inner"}]}});
        let e = ArmError::from_operation(&op);
        assert_eq!(e.code(), Some("AllocationFailed"));
        assert!(!ArmError::from_response(500, "oops").is_not_found());
    }
}
