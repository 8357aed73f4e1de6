//! AWS SDK errors → [`BackendError`], and the retried call wrapper.

use std::future::Future;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::backends::common::retry::{Backoff, RetryDecision, retry};
use crate::backends::error::{BackendError, BackendResult};

/// Error codes that mean "slow down" (retried with back-off).
pub const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "EC2ThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// Error codes of transient server trouble (retried with back-off).
pub const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

/// Error codes that mean the credentials are wrong.
pub const CREDENTIAL_CODES: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
];

/// Error codes of `RunInstances` that mean "no capacity or quota here": try the next zone or
/// offer.
pub const NO_CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacityOnHost",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "InsufficientFreeAddressesInSubnet",
    "ReservationCapacityExceeded",
    "Unsupported",
];

/// Maps an error code, message and HTTP status to a [`BackendError`].
pub fn classify(code: &str, message: &str, status: Option<u16>) -> BackendError {
    if CREDENTIAL_CODES.contains(&code) {
        return BackendError::InvalidCredentials {
            message: format!("{code}: {message}"),
        };
    }
    if NO_CAPACITY_CODES.contains(&code) {
        return BackendError::NoCapacity {
            message: format!("{code}: {message}"),
        };
    }
    let retryable = THROTTLING_CODES.contains(&code)
        || TRANSIENT_CODES.contains(&code)
        || matches!(status, Some(429) | Some(500..=599));
    BackendError::Cloud {
        provider: "aws".into(),
        code: code.to_string(),
        message: message.to_string(),
        retryable,
    }
}

/// The error and its sources joined with `: ` (without the SDK's debug dump).
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if parts.last() != Some(&t) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Maps an SDK error of any AWS operation.
pub fn map_sdk_error<E>(e: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = e
                .code()
                .map(str::to_string)
                .unwrap_or_else(|| match status {
                    Some(s) => format!("HTTP {s}"),
                    None => "Unknown".into(),
                });
            let message = e
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| DisplayErrorContext(&e).to_string());
            classify(&code, &message, status)
        }
        SdkError::TimeoutError(_) => BackendError::Transport(source_chain(&e)),
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_) => {
            let text = source_chain(&e);
            if text.to_ascii_lowercase().contains("credential") {
                BackendError::InvalidCredentials {
                    message: format!("cannot load AWS credentials: {text}"),
                }
            } else if matches!(e, SdkError::DispatchFailure(_)) {
                BackendError::Transport(text)
            } else {
                BackendError::cloud("aws", "ConstructionFailure", text)
            }
        }
        _ => BackendError::cloud("aws", "Unknown", DisplayErrorContext(&e).to_string()),
    }
}

/// The code of a mapped error (`Cloud` errors only).
pub fn code_of(e: &BackendError) -> Option<&str> {
    match e {
        BackendError::Cloud { code, .. } => Some(code),
        _ => None,
    }
}

/// Runs one AWS call with the back-off policy: throttling (`RequestLimitExceeded`, 429), 5xx
/// and transport errors are retried; everything else returns at once.
pub async fn call<T, Fut>(
    policy: &Backoff,
    what: &str,
    counter: &std::sync::atomic::AtomicU64,
    mut op: impl FnMut() -> Fut,
) -> BackendResult<T>
where
    Fut: Future<Output = BackendResult<T>>,
{
    retry(
        policy,
        what,
        |e: &BackendError| {
            if e.is_retryable() {
                RetryDecision::Retry
            } else {
                RetryDecision::Stop
            }
        },
        || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            op()
        },
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(classify("RequestLimitExceeded", "slow", Some(503)).is_retryable());
        assert!(classify("Whatever", "x", Some(500)).is_retryable());
        assert!(!classify("InvalidParameterValue", "x", Some(400)).is_retryable());
        assert!(classify("InsufficientInstanceCapacity", "x", Some(500)).is_no_capacity());
        assert!(classify("VcpuLimitExceeded", "x", Some(400)).is_no_capacity());
        assert!(matches!(
            classify("AuthFailure", "x", Some(401)),
            BackendError::InvalidCredentials { .. }
        ));
    }
}
