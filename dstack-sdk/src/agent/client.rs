//! Typed async clients for the shim and runner APIs, for the server side (through an SSH
//! tunnel; for now a base URL such as `http://127.0.0.1:10998`). They work against this
//! crate's agent and against dstack's Go agents alike.
//!
//! Errors follow dstack's client: [`AgentError::Transport`] when the peer could not be reached
//! (retrying may help), [`AgentError::Status`] when it answered with an error status
//! (`METHOD /path: status: body`), and [`AgentError::Json`] when the body is unusable.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dstack_sdk::agent::AgentError> {
//! use dstack_sdk::agent::client::{RunnerClient, ShimClient};
//! use dstack_sdk::agent::protocol::TaskConfig;
//! let shim = ShimClient::new("http://127.0.0.1:10998")?;
//! shim.submit_task(&TaskConfig::new("job-id", "my-run-0-0", "dstackai/base")).await?;
//! let runner = RunnerClient::new("http://127.0.0.1:10999")?;
//! let pulled = runner.pull(0).await?;
//! println!("{} new log chunks", pulled.job_logs.len());
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{AgentError, AgentResult};
use super::multipart::{ARCHIVE_FIELD, encode_file_form};
use super::protocol::{
    ComponentInstallRequest, ComponentListResponse, HealthcheckResponse, InstanceHealthResponse,
    InstanceInfoResponse, JobInfoResponse, MetricsResponse, PullResponse, ShutdownRequest,
    SubmitBody, TaskConfig, TaskInfo, TaskListResponse, TerminateRequest,
};

/// Per-request timeout for ordinary calls (dstack uses 9 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(9);
/// Per-request timeout for uploads (dstack uses 60 s).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body is kept in [`AgentError::Status`].
const MAX_ERROR_BODY: usize = 512;

/// The shared HTTP plumbing of both clients.
#[derive(Debug, Clone)]
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(base_url: &str) -> AgentResult<Self> {
        crate::http::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| AgentError::Transport(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self::with_client(client, base_url))
    }

    fn with_client(client: reqwest::Client, base_url: &str) -> Self {
        Self {
            client,
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        timeout: Duration,
    ) -> AgentResult<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let request = build(self.client.request(method.clone(), &url)).timeout(timeout);
        let response = request
            .send()
            .await
            .map_err(|e| AgentError::Transport(format!("{method} {path}: {e}")))?;
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            let body = response.bytes().await.unwrap_or_default();
            let mut text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)])
                .trim()
                .to_string();
            if text.is_empty() {
                text = "<empty>".into();
            } else if body.len() > MAX_ERROR_BODY {
                text.push_str("...");
            }
            return Err(AgentError::Status {
                method: method.to_string(),
                path: path.split('?').next().unwrap_or(path).to_string(),
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(response)
    }

    async fn json<T: DeserializeOwned>(&self, method: Method, path: &str) -> AgentResult<T> {
        let r = self
            .send(method.clone(), path, |b| b, REQUEST_TIMEOUT)
            .await?;
        decode(method, path, r).await
    }

    async fn json_with<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> AgentResult<T> {
        let r = self
            .send(method.clone(), path, |b| b.json(body), REQUEST_TIMEOUT)
            .await?;
        decode(method, path, r).await
    }

    async fn unit_with<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> AgentResult<()> {
        self.send(
            method,
            path,
            |b| match body {
                Some(body) => b.json(body),
                None => b,
            },
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }
}

async fn decode<T: DeserializeOwned>(
    method: Method,
    path: &str,
    r: reqwest::Response,
) -> AgentResult<T> {
    let body = r
        .bytes()
        .await
        .map_err(|e| AgentError::Transport(format!("{method} {path}: {e}")))?;
    serde_json::from_slice(&body)
        .map_err(|e| AgentError::json(format!("{method} {path}: unusable response"), e))
}

/// A client for the shim API (port 10998).
#[derive(Debug, Clone)]
pub struct ShimClient {
    http: Http,
}

impl ShimClient {
    /// A client for the shim at `base_url` (e.g. `http://127.0.0.1:10998`).
    pub fn new(base_url: &str) -> AgentResult<Self> {
        Ok(Self {
            http: Http::new(base_url)?,
        })
    }

    /// A client over a caller-built `reqwest::Client` (e.g. one that dials a tunnel).
    pub fn with_client(client: reqwest::Client, base_url: &str) -> Self {
        Self {
            http: Http::with_client(client, base_url),
        }
    }

    /// `GET /api/healthcheck`.
    pub async fn healthcheck(&self) -> AgentResult<HealthcheckResponse> {
        self.http.json(Method::GET, "/api/healthcheck").await
    }

    /// `GET /api/instance/health`; `None` when the shim does not support it (404).
    pub async fn instance_health(&self) -> AgentResult<Option<InstanceHealthResponse>> {
        not_found_as_none(self.http.json(Method::GET, "/api/instance/health").await)
    }

    /// `GET /api/instance/info`; `None` when the shim does not support it (404).
    pub async fn instance_info(&self) -> AgentResult<Option<InstanceInfoResponse>> {
        not_found_as_none(self.http.json(Method::GET, "/api/instance/info").await)
    }

    /// `GET /api/components`.
    pub async fn components(&self) -> AgentResult<ComponentListResponse> {
        self.http.json(Method::GET, "/api/components").await
    }

    /// `POST /api/components/install`.
    pub async fn install_component(&self, request: &ComponentInstallRequest) -> AgentResult<()> {
        self.http
            .unit_with(Method::POST, "/api/components/install", Some(request))
            .await
    }

    /// `POST /api/shutdown`.
    pub async fn shutdown(&self, force: bool) -> AgentResult<()> {
        self.http
            .unit_with(
                Method::POST,
                "/api/shutdown",
                Some(&ShutdownRequest { force }),
            )
            .await
    }

    /// `GET /api/tasks`.
    pub async fn list_tasks(&self) -> AgentResult<TaskListResponse> {
        self.http.json(Method::GET, "/api/tasks").await
    }

    /// `GET /api/tasks/{id}`.
    pub async fn get_task(&self, id: &str) -> AgentResult<TaskInfo> {
        self.http
            .json(Method::GET, &format!("/api/tasks/{}", path_segment(id)))
            .await
    }

    /// `POST /api/tasks`: submits and starts a task (409 if the id exists).
    pub async fn submit_task(&self, config: &TaskConfig) -> AgentResult<TaskInfo> {
        self.http
            .json_with(Method::POST, "/api/tasks", config)
            .await
    }

    /// `POST /api/tasks/{id}/terminate`.
    pub async fn terminate_task(
        &self,
        id: &str,
        request: &TerminateRequest,
    ) -> AgentResult<TaskInfo> {
        // The shim waits up to `timeout` for the task to stop before answering.
        let timeout = REQUEST_TIMEOUT + Duration::from_secs(request.timeout.saturating_add(15));
        let path = format!("/api/tasks/{}/terminate", path_segment(id));
        let r = self
            .http
            .send(Method::POST, &path, |b| b.json(request), timeout)
            .await?;
        decode(Method::POST, &path, r).await
    }

    /// `POST /api/tasks/{id}/remove` (409 unless terminated).
    pub async fn remove_task(&self, id: &str) -> AgentResult<()> {
        self.http
            .unit_with::<()>(
                Method::POST,
                &format!("/api/tasks/{}/remove", path_segment(id)),
                None,
            )
            .await
    }

    /// `GET /metrics/tasks/{id}`: Prometheus text; `None` when no exporter runs (404/502).
    pub async fn task_metrics(&self, id: &str) -> AgentResult<Option<String>> {
        let path = format!("/metrics/tasks/{}", path_segment(id));
        match self
            .http
            .send(Method::GET, &path, |b| b, REQUEST_TIMEOUT)
            .await
        {
            Ok(r) => r
                .text()
                .await
                .map(Some)
                .map_err(|e| AgentError::Transport(format!("GET {path}: {e}"))),
            Err(AgentError::Status { status, .. })
                if status == StatusCode::NOT_FOUND.as_u16()
                    || status == StatusCode::BAD_GATEWAY.as_u16() =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// A client for the runner API (port 10999).
#[derive(Debug, Clone)]
pub struct RunnerClient {
    http: Http,
}

impl RunnerClient {
    /// A client for the runner at `base_url` (e.g. `http://127.0.0.1:10999`).
    pub fn new(base_url: &str) -> AgentResult<Self> {
        Ok(Self {
            http: Http::new(base_url)?,
        })
    }

    /// A client over a caller-built `reqwest::Client`.
    pub fn with_client(client: reqwest::Client, base_url: &str) -> Self {
        Self {
            http: Http::with_client(client, base_url),
        }
    }

    /// `GET /api/healthcheck`.
    pub async fn healthcheck(&self) -> AgentResult<HealthcheckResponse> {
        self.http.json(Method::GET, "/api/healthcheck").await
    }

    /// `GET /api/metrics`; `None` when the runner has no collector (404).
    pub async fn metrics(&self) -> AgentResult<Option<MetricsResponse>> {
        not_found_as_none(self.http.json(Method::GET, "/api/metrics").await)
    }

    /// `POST /api/submit`.
    pub async fn submit(&self, body: &SubmitBody) -> AgentResult<()> {
        self.http
            .unit_with(Method::POST, "/api/submit", Some(body))
            .await
    }

    /// `POST /api/upload_archive`: one `multipart/form-data` file field `archive` whose file
    /// name is `archive_id`, as dstack's server sends it.
    pub async fn upload_archive(&self, archive_id: &str, data: &[u8]) -> AgentResult<()> {
        let (content_type, body) = encode_file_form(ARCHIVE_FIELD, archive_id, data);
        self.http
            .send(
                Method::POST,
                "/api/upload_archive",
                |b| {
                    b.header(reqwest::header::CONTENT_TYPE, content_type)
                        .body(body)
                },
                UPLOAD_TIMEOUT,
            )
            .await
            .map(drop)
    }

    /// `POST /api/upload_code`: the code blob as the raw body.
    pub async fn upload_code(&self, data: Vec<u8>) -> AgentResult<()> {
        self.http
            .send(
                Method::POST,
                "/api/upload_code",
                |b| b.body(data),
                UPLOAD_TIMEOUT,
            )
            .await
            .map(drop)
    }

    /// `POST /api/run`; `None` when the runner answered without job info (an old runner, or
    /// a job that failed before starting).
    pub async fn run(&self) -> AgentResult<Option<JobInfoResponse>> {
        let r = self
            .http
            .send(Method::POST, "/api/run", |b| b, REQUEST_TIMEOUT)
            .await?;
        let is_json = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim() == "application/json")
            });
        if !is_json {
            return Ok(None);
        }
        decode(Method::POST, "/api/run", r).await.map(Some)
    }

    /// `GET /api/pull?timestamp=`: states and logs newer than `timestamp` (ms).
    pub async fn pull(&self, timestamp: i64) -> AgentResult<PullResponse> {
        self.http
            .json(Method::GET, &format!("/api/pull?timestamp={timestamp}"))
            .await
    }

    /// `POST /api/stop`.
    pub async fn stop(&self) -> AgentResult<()> {
        self.http
            .unit_with::<()>(Method::POST, "/api/stop", None)
            .await
    }
}

fn not_found_as_none<T>(r: AgentResult<T>) -> AgentResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(AgentError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Percent-encodes what cannot appear in a path segment.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(path_segment("3f1c-AB_z.9"), "3f1c-AB_z.9");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn base_url_is_normalised() {
        let c = ShimClient::new("http://127.0.0.1:1/").unwrap();
        assert_eq!(c.http.base, "http://127.0.0.1:1");
    }
}
