//! A small Azure Resource Manager REST client over `reqwest`.
//!
//! - URLs are `{base}/subscriptions/{sub}/…?api-version=…` with an explicit `api-version`
//!   per resource provider ([`api`]); the base is `https://management.azure.com`, overridden by
//!   the endpoint override `azure.management` (`DSTACK_ENDPOINT_URL_AZURE_MANAGEMENT`).
//! - Every request carries a bearer token from [`TokenProvider`]; a 401 drops the cached token
//!   and the request is sent once more with a fresh one.
//! - 429 and 5xx (and transport errors) are retried with the shared back-off of
//!   [`retry`](crate::backends::common::retry), honouring `Retry-After`.
//! - Errors are ARM's `{"error": {"code", "message"}}` ([`ArmError`]).
//! - Long-running operations: `Azure-AsyncOperation` (a status resource with `status`
//!   `InProgress` / `Succeeded` / `Failed` / `Canceled`), else `Location` (202 while running),
//!   else the resource's own `provisioningState`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::auth::TokenProvider;
use super::errors::ArmError;
use crate::backends::common::retry::{Backoff, RetryDecision, retry};

/// The public cloud's ARM endpoint.
pub const DEFAULT_ARM_BASE: &str = "https://management.azure.com";

/// The longest pause between two polls of a long-running operation.
pub const MAX_POLL_PAUSE: Duration = Duration::from_secs(30);

/// The `api-version` of each resource provider this backend calls.
pub mod api {
    /// `Microsoft.Compute/virtualMachines`, `disks`.
    pub const COMPUTE: &str = "2024-07-01";
    /// `Microsoft.Compute/disks`.
    pub const DISKS: &str = "2024-03-02";
    /// `Microsoft.Compute/skus`.
    pub const SKUS: &str = "2021-07-01";
    /// `Microsoft.Compute/locations/communityGalleries`.
    pub const GALLERY: &str = "2023-07-03";
    /// `Microsoft.Network/*`.
    pub const NETWORK: &str = "2024-05-01";
    /// `Microsoft.Resources` (subscriptions, resource groups).
    pub const RESOURCES: &str = "2022-12-01";
}

/// One ARM answer that was not an error.
#[derive(Debug, Clone)]
pub struct ArmResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body (`null` when empty).
    pub body: Value,
    /// The `Azure-AsyncOperation` status URL of a long-running operation.
    pub async_operation: Option<String>,
    /// The `Location` URL of a long-running operation.
    pub location: Option<String>,
    /// The server's polling hint.
    pub retry_after: Option<Duration>,
    /// The URL the request went to (polled for `provisioningState` when there is no header).
    pub url: String,
}

/// Where a long-running operation stands.
#[derive(Debug, Clone, PartialEq)]
pub enum LroStatus {
    /// Still running.
    InProgress,
    /// Done.
    Succeeded,
    /// Failed or cancelled, with ARM's error.
    Failed(ArmError),
}

/// The ARM client of one subscription.
#[derive(Debug)]
pub struct ArmClient {
    client: reqwest::Client,
    base: String,
    subscription: String,
    tokens: TokenProvider,
    policy: Backoff,
    poll_interval: Duration,
    calls: AtomicU64,
}

enum Attempt {
    Throttled(u16, Option<Duration>, String),
    Transport(String),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Throttled(s, _, _) => write!(f, "HTTP {s}"),
            Self::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl ArmClient {
    /// A client for `subscription` at `base`.
    pub fn new(
        client: reqwest::Client,
        base: &str,
        subscription: &str,
        tokens: TokenProvider,
        policy: Backoff,
    ) -> Self {
        Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            subscription: subscription.to_string(),
            tokens,
            policy,
            poll_interval: Duration::from_secs(2),
            calls: AtomicU64::new(0),
        }
    }

    /// Sets the polling interval of long-running operations without a `Retry-After` hint.
    pub fn set_poll_interval(&mut self, interval: Duration) {
        self.poll_interval = interval;
    }

    /// The subscription.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The token provider.
    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    /// HTTP requests sent to ARM so far (each attempt counts).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// `/subscriptions/{sub}{rest}`.
    pub fn sub_path(&self, rest: &str) -> String {
        format!("/subscriptions/{}{rest}", self.subscription)
    }

    /// `/subscriptions/{sub}/resourceGroups/{rg}`.
    pub fn rg_path(&self, rg: &str) -> String {
        self.sub_path(&format!("/resourceGroups/{rg}"))
    }

    /// The id of a resource of `provider_type` (e.g. `Microsoft.Network/networkInterfaces`).
    pub fn resource_id(&self, rg: &str, provider_type: &str, name: &str) -> String {
        format!("{}/providers/{provider_type}/{name}", self.rg_path(rg))
    }

    fn url(&self, path: &str, api_version: &str) -> Result<String, ArmError> {
        if path.starts_with("http://") || path.starts_with("https://") {
            // Operation and next-page URLs come from ARM; never send the token elsewhere.
            if !path.starts_with(&format!("{}/", self.base)) {
                return Err(ArmError::Transport(format!(
                    "refusing to follow a URL outside {}: {path}",
                    self.base
                )));
            }
            return Ok(path.to_string());
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        Ok(format!("{}{path}{sep}api-version={api_version}", self.base))
    }

    /// Sends one request (with retries and one token refresh on 401); any status ≥ 400 is
    /// an [`ArmError`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        api_version: &str,
        body: Option<&Value>,
    ) -> Result<ArmResponse, ArmError> {
        let url = self.url(path, api_version)?;
        let mut refreshed = false;
        loop {
            let token = self.tokens.token().await?;
            let (status, headers, text) = self.send(&method, &url, &token, body).await?;
            if status == 401 && !refreshed {
                refreshed = true;
                self.tokens.invalidate().await;
                continue;
            }
            if status >= 400 {
                let e = ArmError::from_response(status, &text);
                tracing::debug!(%method, path = %strip_query(&url), status, error = %e, "ARM error");
                return Err(e);
            }
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            return Ok(ArmResponse {
                status,
                body: if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::Null)
                },
                async_operation: header("azure-asyncoperation"),
                location: header("location"),
                retry_after: header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
                url,
            });
        }
    }

    async fn send(
        &self,
        method: &Method,
        url: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), ArmError> {
        let what = format!("{method} {}", strip_query(url));
        retry(
            &self.policy,
            &what,
            |a: &Attempt| match a {
                Attempt::Throttled(_, Some(after), _) => RetryDecision::RetryAfter(*after),
                _ => RetryDecision::Retry,
            },
            || async {
                self.calls.fetch_add(1, Ordering::Relaxed);
                let mut req = self
                    .client
                    .request(method.clone(), url)
                    .bearer_auth(token)
                    .header("accept", "application/json");
                if let Some(b) = body {
                    req = req
                        .header("content-type", "application/json")
                        .body(b.to_string());
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| Attempt::Transport(e.to_string()))?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let text = resp
                    .text()
                    .await
                    .map_err(|e| Attempt::Transport(e.to_string()))?;
                if status == 429 || (500..600).contains(&status) {
                    let after = headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    return Err(Attempt::Throttled(status, after, text));
                }
                Ok((status, headers, text))
            },
        )
        .await
        .map_err(|a| match a {
            Attempt::Throttled(status, _, text) => {
                let mut e = ArmError::from_response(status, &text);
                if let ArmError::Api { retryable, .. } = &mut e {
                    *retryable = true;
                }
                e
            }
            Attempt::Transport(m) => ArmError::Transport(m),
        })
    }

    /// `GET` → the body.
    pub async fn get(&self, path: &str, api_version: &str) -> Result<Value, ArmError> {
        Ok(self.call(Method::GET, path, api_version, None).await?.body)
    }

    /// `GET` → the body, `None` when the resource does not exist.
    pub async fn get_opt(&self, path: &str, api_version: &str) -> Result<Option<Value>, ArmError> {
        match self.get(path, api_version).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT` (create or update).
    pub async fn put(
        &self,
        path: &str,
        api_version: &str,
        body: &Value,
    ) -> Result<ArmResponse, ArmError> {
        self.call(Method::PUT, path, api_version, Some(body)).await
    }

    /// `DELETE`; `None` when the resource was already gone (404).
    pub async fn delete(
        &self,
        path: &str,
        api_version: &str,
    ) -> Result<Option<ArmResponse>, ArmError> {
        match self.call(Method::DELETE, path, api_version, None).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All items of a list (`value`), following `nextLink`.
    pub async fn list(&self, path: &str, api_version: &str) -> Result<Vec<Value>, ArmError> {
        let mut out = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next.take() {
            let v = self.get(&p, api_version).await?;
            if let Some(items) = v.get("value").and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            next = v
                .get("nextLink")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        Ok(out)
    }

    /// Looks once at the long-running operation `resp` started.
    pub async fn poll_once(
        &self,
        resp: &ArmResponse,
        api_version: &str,
    ) -> Result<LroStatus, ArmError> {
        if let Some(op) = &resp.async_operation {
            let v = self.get(op, api_version).await?;
            return Ok(
                match v.get("status").and_then(Value::as_str).unwrap_or("") {
                    "Succeeded" => LroStatus::Succeeded,
                    "Failed" | "Canceled" | "Cancelled" => {
                        LroStatus::Failed(ArmError::from_operation(&v))
                    }
                    _ => LroStatus::InProgress,
                },
            );
        }
        if let Some(loc) = &resp.location {
            return match self.call(Method::GET, loc, api_version, None).await {
                Ok(r) if r.status == 202 => Ok(LroStatus::InProgress),
                Ok(_) => Ok(LroStatus::Succeeded),
                Err(e) => Ok(LroStatus::Failed(e)),
            };
        }
        if resp.status == 204 || resp.status == 200 && resp.body.is_null() {
            return Ok(LroStatus::Succeeded);
        }
        let state = |v: &Value| {
            v.pointer("/properties/provisioningState")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let current = match state(&resp.body) {
            Some(s) if s != "Succeeded" && s != "Failed" && s != "Canceled" => {
                let v = self.get(&resp.url, api_version).await?;
                state(&v)
            }
            other => other,
        };
        Ok(match current.as_deref() {
            None | Some("Succeeded") => LroStatus::Succeeded,
            Some("Failed") | Some("Canceled") => LroStatus::Failed(ArmError::Api {
                status: 0,
                code: "ProvisioningFailed".into(),
                message: format!("provisioningState is {}", current.unwrap_or_default()),
                retryable: false,
            }),
            Some(_) => LroStatus::InProgress,
        })
    }

    /// Polls the long-running operation `resp` started until it ends or `timeout` passes.
    pub async fn wait(
        &self,
        resp: &ArmResponse,
        api_version: &str,
        timeout: Duration,
    ) -> Result<LroStatus, ArmError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.poll_once(resp, api_version).await? {
                LroStatus::InProgress if Instant::now() < deadline => {
                    let pause = resp
                        .retry_after
                        .unwrap_or(self.poll_interval)
                        .max(self.poll_interval.min(Duration::from_secs(1)))
                        .min(MAX_POLL_PAUSE);
                    tokio::time::sleep(pause).await;
                }
                s => return Ok(s),
            }
        }
    }

    /// Waits for `resp`'s operation and turns a failure or a timeout into an error.
    pub async fn wait_ok(
        &self,
        resp: &ArmResponse,
        api_version: &str,
        timeout: Duration,
        what: &str,
    ) -> Result<(), ArmError> {
        match self.wait(resp, api_version, timeout).await? {
            LroStatus::Succeeded => Ok(()),
            LroStatus::Failed(e) => Err(e),
            LroStatus::InProgress => Err(ArmError::Timeout(format!(
                "{what} still in progress after {}s",
                timeout.as_secs()
            ))),
        }
    }
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}
