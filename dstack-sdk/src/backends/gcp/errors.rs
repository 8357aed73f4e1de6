//! Compute Engine errors → [`BackendError`], and the retried call wrapper.
//!
//! Two kinds of failure reach us: a synchronous HTTP error (Google's
//! `{"error":{"code","message","errors":[{"reason"}],"status"}}` body, parsed by the client into
//! a status) and an asynchronous one inside a finished operation (`error.errors[].code`, e.g.
//! `ZONE_RESOURCE_POOL_EXHAUSTED`). Both are classified here: credentials (401, or 403 while
//! validating), no capacity (resource pool exhausted, quota exceeded: try the next zone or
//! offer), retryable (429, 5xx, transport) or any other cloud error.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use google_cloud_compute_v1::Error as GaxError;

use crate::backends::common::retry::{Backoff, RetryDecision, retry};
use crate::backends::error::{BackendError, BackendResult};

/// The provider name in [`BackendError::Cloud`].
pub const PROVIDER: &str = "gcp";

/// Operation error codes (and message fragments) that mean "no capacity or quota here".
pub const NO_CAPACITY_CODES: &[&str] = &[
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "RESOURCE_POOL_EXHAUSTED",
    "QUOTA_EXCEEDED",
    "REGION_QUOTA_EXCEEDED",
    "ZONE_QUOTA_EXCEEDED",
    "NOT_ENOUGH_RESOURCES",
    "STOCKOUT",
];

/// Operation error codes that mean the quota of the whole region or project is spent, so the
/// other zones of the offer need not be tried.
pub const QUOTA_CODES: &[&str] = &["QUOTA_EXCEEDED", "REGION_QUOTA_EXCEEDED"];

/// Whether `text` (an operation error code or an HTTP error message) means no capacity.
pub fn is_no_capacity_text(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    NO_CAPACITY_CODES
        .iter()
        .any(|c| text.contains(c) || lower.contains(&c.to_ascii_lowercase()))
        || lower.contains("does not have enough resources available")
        || (lower.contains("quota") && lower.contains("exceeded"))
}

/// Whether a no-capacity message is about quota (region- or project-wide), not one zone.
pub fn is_quota_text(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    QUOTA_CODES.iter().any(|c| text.contains(c)) || lower.contains("quota")
}

/// Maps an HTTP status and message (and the status name, e.g. `PERMISSION_DENIED`).
pub fn classify(http: Option<u16>, status: &str, message: &str) -> BackendError {
    let code = match (http, status.is_empty()) {
        (Some(h), false) => format!("{h} {status}"),
        (Some(h), true) => h.to_string(),
        (None, false) => status.to_string(),
        (None, true) => "Unknown".to_string(),
    };
    if http == Some(401) || status == "UNAUTHENTICATED" {
        return BackendError::InvalidCredentials {
            message: format!("{code}: {message}"),
        };
    }
    // Quota exhaustion is a 403 (`quotaExceeded`) or a 503/409 with a pool-exhausted message;
    // rate limits (429, "Rate Limit Exceeded") are not capacity errors and are retried.
    if http != Some(429) && is_no_capacity_text(message) {
        return BackendError::NoCapacity {
            message: format!("{code}: {message}"),
        };
    }
    let retryable = matches!(http, Some(429) | Some(500..=599))
        || matches!(status, "UNAVAILABLE" | "RESOURCE_EXHAUSTED" | "INTERNAL");
    BackendError::Cloud {
        provider: PROVIDER.into(),
        code,
        message: message.to_string(),
        retryable,
    }
}

/// The HTTP status of a mapped cloud error (`Cloud` errors only), e.g. 404.
pub fn http_status_of(e: &BackendError) -> Option<u16> {
    match e {
        BackendError::Cloud { code, .. } => {
            code.split(' ').next().and_then(|c| c.parse::<u16>().ok())
        }
        _ => None,
    }
}

/// Whether `e` is an HTTP 404.
pub fn is_not_found(e: &BackendError) -> bool {
    http_status_of(e) == Some(404)
}

/// The outcome of a delete call (instance or TPU node): started, or already gone — both
/// count as success (terminate is idempotent).
pub fn deletion_started<T>(
    result: BackendResult<T>,
    what: &str,
    id: &str,
    zone: &str,
) -> BackendResult<()> {
    match result {
        Ok(_) => {
            tracing::info!(id, zone, "{what} deletion started");
            Ok(())
        }
        Err(e) if is_not_found(&e) => {
            tracing::debug!(id, zone, "{what} already gone");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The error and its sources joined with `: `.
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

/// Maps a client error of any Compute Engine call.
pub fn map_gax_error(e: GaxError) -> BackendError {
    if e.is_authentication() {
        return BackendError::InvalidCredentials {
            message: format!("cannot obtain GCP credentials: {}", source_chain(&e)),
        };
    }
    if let Some(status) = e.status() {
        let name = status.code.name();
        return classify(e.http_status_code(), name, &status.message);
    }
    if let Some(http) = e.http_status_code() {
        let body = e
            .http_payload()
            .map(|b| {
                String::from_utf8_lossy(b)
                    .chars()
                    .take(500)
                    .collect::<String>()
            })
            .unwrap_or_default();
        return classify(Some(http), "", &body);
    }
    if e.is_connect() || e.is_io() || e.is_timeout() || e.is_transport() {
        return BackendError::Transport(source_chain(&e));
    }
    BackendError::cloud(PROVIDER, "Client", source_chain(&e))
}

/// An error inside a finished operation: the first error code and all messages.
pub fn operation_error(codes: &[(String, String)], http_status: Option<i32>) -> BackendError {
    let joined = codes
        .iter()
        .map(|(c, m)| format!("{c}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    if codes.iter().any(|(c, m)| {
        NO_CAPACITY_CODES.contains(&c.as_str()) || is_no_capacity_text(c) || is_no_capacity_text(m)
    }) {
        return BackendError::NoCapacity { message: joined };
    }
    let code = codes
        .first()
        .map(|(c, _)| c.clone())
        .unwrap_or_else(|| "OperationFailed".into());
    let retryable = matches!(http_status, Some(429) | Some(500..=599));
    BackendError::Cloud {
        provider: PROVIDER.into(),
        code,
        message: joined,
        retryable,
    }
}

/// Runs one Compute Engine call with the back-off policy: 429, 5xx and transport errors are
/// retried; everything else returns at once. Every attempt is counted in `counter`.
pub async fn call<T, Fut>(
    policy: &Backoff,
    what: &str,
    counter: &AtomicU64,
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
            counter.fetch_add(1, Ordering::Relaxed);
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
        assert!(matches!(
            classify(Some(401), "UNAUTHENTICATED", "bad token"),
            BackendError::InvalidCredentials { .. }
        ));
        assert!(classify(Some(429), "RESOURCE_EXHAUSTED", "Rate Limit Exceeded").is_retryable());
        assert!(classify(Some(503), "UNAVAILABLE", "backend error").is_retryable());
        assert!(
            classify(
                Some(403),
                "PERMISSION_DENIED",
                "Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 0.0 in region us-central1."
            )
            .is_no_capacity()
        );
        assert!(
            classify(
                Some(503),
                "UNAVAILABLE",
                "The zone 'x' does not have enough resources available to fulfill the request."
            )
            .is_no_capacity()
        );
        let nf = classify(Some(404), "NOT_FOUND", "The resource was not found");
        assert!(is_not_found(&nf) && !nf.is_retryable());
        let op = operation_error(
            &[("ZONE_RESOURCE_POOL_EXHAUSTED".into(), "no T4".into())],
            Some(503),
        );
        assert!(op.is_no_capacity());
        let op = operation_error(&[("INVALID_FIELD".into(), "bad".into())], Some(400));
        assert!(!op.is_no_capacity() && !op.is_retryable());
    }
}
