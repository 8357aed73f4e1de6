//! Plain REST calls for the Google APIs that `google-cloud-compute-v1` (as built here) does
//! not cover: the Cloud TPU v2 API (`tpu.googleapis.com/v2`), Compute Engine resource
//! policies (placement groups) and reservations.
//!
//! Requests go through `reqwest` with the backend's credentials (the same token source as the
//! Compute Engine clients: their auth headers are asked for on every request and cached by
//! `google-cloud-auth`). The base URLs follow the endpoint overrides: `gcp.tpu` (or `gcp`) for
//! Cloud TPU, `gcp.compute` (or `gcp`) for Compute Engine, i.e.
//! `DSTACK_ENDPOINT_URL_GCP[_TPU|_COMPUTE]`.
//!
//! Google error bodies (`{"error":{"code","message","status"}}`) are classified like the
//! client's errors ([`classify`]); retries are the caller's (through
//! [`GcpCompute::call`](super::GcpCompute)).

use std::time::Duration;

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::Value;

use super::errors::{PROVIDER, classify};
use crate::backends::common::settings::BackendSettings;
use crate::backends::error::{BackendError, BackendResult};

/// The public Compute Engine endpoint.
pub const DEFAULT_COMPUTE_BASE: &str = "https://compute.googleapis.com";
/// The public Cloud TPU endpoint.
pub const DEFAULT_TPU_BASE: &str = "https://tpu.googleapis.com";
/// The per-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A REST client for the Google APIs the Compute Engine crate does not cover.
#[derive(Clone)]
pub struct GcpRest {
    http: reqwest::Client,
    credentials: Credentials,
    /// The Compute Engine base URL (no trailing slash); paths start with `/compute/v1/`.
    pub compute_base: String,
    /// The Cloud TPU base URL (no trailing slash); paths start with `/v2/`.
    pub tpu_base: String,
}

impl std::fmt::Debug for GcpRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpRest")
            .field("compute_base", &self.compute_base)
            .field("tpu_base", &self.tpu_base)
            .finish_non_exhaustive()
    }
}

/// The base URL of `service` of GCP: the endpoint override, else `default`.
fn base_url(settings: &BackendSettings, service: &str, default: &str) -> String {
    settings
        .endpoints
        .get("gcp", service)
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_string()
}

impl GcpRest {
    /// Builds the client (no network call).
    pub fn new(credentials: &Credentials, settings: &BackendSettings) -> BackendResult<Self> {
        crate::http::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| BackendError::Transport(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            credentials: credentials.clone(),
            compute_base: base_url(settings, "compute", DEFAULT_COMPUTE_BASE),
            tpu_base: base_url(settings, "tpu", DEFAULT_TPU_BASE),
        })
    }

    /// `{compute_base}/compute/v1/{path}`.
    pub fn compute_url(&self, path: &str) -> String {
        format!(
            "{}/compute/v1/{}",
            self.compute_base,
            path.trim_start_matches('/')
        )
    }

    /// `{tpu_base}/v2/{path}`.
    pub fn tpu_url(&self, path: &str) -> String {
        format!("{}/v2/{}", self.tpu_base, path.trim_start_matches('/'))
    }

    async fn auth_headers(&self) -> BackendResult<HeaderMap> {
        match self.credentials.headers(Default::default()).await {
            Ok(CacheableResource::New { data, .. }) => Ok(data),
            Ok(CacheableResource::NotModified) => Err(BackendError::InvalidCredentials {
                message: "the GCP credentials returned no auth headers".into(),
            }),
            Err(e) if e.is_transient() => Err(BackendError::Transport(format!(
                "cannot obtain GCP credentials: {e}"
            ))),
            Err(e) => Err(BackendError::InvalidCredentials {
                message: format!("cannot obtain GCP credentials: {e}"),
            }),
        }
    }

    /// Sends one request (no retries) and returns the JSON body of a 2xx answer (`Null` when
    /// empty); other statuses are classified from Google's error body.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> BackendResult<Value> {
        let mut url = Url::parse(url)
            .map_err(|e| BackendError::cloud(PROVIDER, "InvalidUrl", format!("{url}: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let headers = self.auth_headers().await?;
        let mut req = self.http.request(method, url).headers(headers);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| BackendError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| BackendError::Transport(e.to_string()))?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| {
                BackendError::cloud(PROVIDER, "InvalidResponse", format!("{e}: {text:.200}"))
            });
        }
        Err(error_from_body(status, &text))
    }
}

/// Maps a non-2xx answer with Google's error body (or any other body) to a [`BackendError`].
pub fn error_from_body(status: u16, body: &str) -> BackendError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().map(|v| &v["error"]);
    let message = err
        .and_then(|e| e["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(500).collect());
    let name = err.and_then(|e| e["status"].as_str()).unwrap_or_default();
    classify(Some(status), name, &message)
}

/// The HTTP status and status name of a `google.rpc.Status` code (as found in the `error` of
/// a finished long-running operation).
pub fn rpc_code_status(code: i64) -> (u16, &'static str) {
    match code {
        1 => (499, "CANCELLED"),
        3 => (400, "INVALID_ARGUMENT"),
        4 => (504, "DEADLINE_EXCEEDED"),
        5 => (404, "NOT_FOUND"),
        6 => (409, "ALREADY_EXISTS"),
        7 => (403, "PERMISSION_DENIED"),
        8 => (429, "RESOURCE_EXHAUSTED"),
        9 => (400, "FAILED_PRECONDITION"),
        10 => (409, "ABORTED"),
        11 => (400, "OUT_OF_RANGE"),
        12 => (501, "UNIMPLEMENTED"),
        13 => (500, "INTERNAL"),
        14 => (503, "UNAVAILABLE"),
        16 => (401, "UNAUTHENTICATED"),
        _ => (500, "UNKNOWN"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::backends::gcp::errors::is_not_found;

    #[test]
    fn error_bodies() {
        let e = error_from_body(
            404,
            r#"{"error":{"code":404,"message":"Resource 'x' was not found","status":"NOT_FOUND"}}"#,
        );
        assert!(is_not_found(&e), "{e}");
        let e = error_from_body(502, "<html>bad gateway</html>");
        assert!(e.is_retryable(), "{e}");
        let e = error_from_body(
            403,
            r#"{"error":{"code":403,"message":"Quota 'TPUV5' exceeded.","status":"PERMISSION_DENIED"}}"#,
        );
        assert!(e.is_no_capacity(), "{e}");
        assert_eq!(rpc_code_status(8), (429, "RESOURCE_EXHAUSTED"));
    }
}
