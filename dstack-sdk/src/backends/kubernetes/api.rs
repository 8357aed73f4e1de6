//! Calls to the Kubernetes API: error mapping and the retried call.
//!
//! Every call runs through the shared back-off: 429 (throttling) and 5xx answers and
//! transport failures are retried; 401 is `invalid_credentials`; everything else is returned
//! at once. A 404 is a value for the callers that expect it ([`get_opt`], [`delete_opt`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use kube::Api;
use serde::de::DeserializeOwned;

use crate::backends::common::retry::{Backoff, RetryDecision, retry};
use crate::backends::error::{BackendError, BackendResult};

/// The provider name in [`BackendError::Cloud`].
pub const PROVIDER: &str = "kubernetes";

/// Maps a kube error. The message holds the API server's `reason` and `message` only.
pub fn map_error(e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(status) => {
            let code = status.code;
            let message = if status.reason.is_empty() {
                status.message.clone()
            } else {
                format!("{}: {}", status.reason, status.message)
            };
            match code {
                401 => BackendError::InvalidCredentials {
                    message: format!(
                        "the Kubernetes API server rejected the credentials ({message})"
                    ),
                },
                429 | 500 | 502 | 503 | 504 => BackendError::Cloud {
                    provider: PROVIDER.into(),
                    code: code.to_string(),
                    message,
                    retryable: true,
                },
                _ => BackendError::cloud(PROVIDER, code.to_string(), message),
            }
        }
        kube::Error::HyperError(e) => BackendError::Transport(e.to_string()),
        kube::Error::Service(e) => BackendError::Transport(e.to_string()),
        other => BackendError::cloud(PROVIDER, "client", other.to_string()),
    }
}

/// Whether a mapped error is the API's 404.
pub fn is_not_found(e: &BackendError) -> bool {
    matches!(e, BackendError::Cloud { provider, code, .. } if provider == PROVIDER && code == "404")
}

/// Whether a mapped error is the API's 403 (the role does not grant the verb).
pub fn is_forbidden(e: &BackendError) -> bool {
    matches!(e, BackendError::Cloud { provider, code, .. } if provider == PROVIDER && code == "403")
}

/// Whether a mapped error is the API's 409 (already exists).
pub fn is_conflict(e: &BackendError) -> bool {
    matches!(e, BackendError::Cloud { provider, code, .. } if provider == PROVIDER && code == "409")
}

/// Runs one API call with the back-off, counting each attempt in `calls`.
pub async fn call<T, Fut>(
    policy: &Backoff,
    calls: &AtomicU64,
    what: &str,
    mut op: impl FnMut() -> Fut,
) -> BackendResult<T>
where
    Fut: Future<Output = Result<T, kube::Error>>,
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
            calls.fetch_add(1, Ordering::Relaxed);
            let fut = op();
            async move { fut.await.map_err(map_error) }
        },
    )
    .await
}

/// `GET` an object; `None` on 404.
pub async fn get_opt<K>(
    policy: &Backoff,
    calls: &AtomicU64,
    api: &Api<K>,
    name: &str,
) -> BackendResult<Option<K>>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match call(policy, calls, "get", || api.get(name)).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `DELETE` an object; `false` when it did not exist (404).
pub async fn delete_opt<K>(
    policy: &Backoff,
    calls: &AtomicU64,
    api: &Api<K>,
    name: &str,
) -> BackendResult<bool>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let dp = kube::api::DeleteParams::default();
    match call(policy, calls, "delete", || api.delete(name, &dp)).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
