//! The agent's HTTP side: axum routers for the shim API and the runner API, answering like
//! dstack's Go agents (same paths, JSON field names and status codes; errors as `text/plain`
//! bodies holding the message, successes without a body as `200` with an empty line).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::error::{AgentError, AgentResult};
use super::executor::{Executor, JobRunner};
use super::multipart::{self, ARCHIVE_FIELD};
use super::protocol::runner::RUNNER_SERVICE;
use super::protocol::shim::SHIM_SERVICE;
use super::protocol::{
    ComponentInfo, ComponentInstallRequest, ComponentListResponse, ComponentStatus,
    HealthcheckResponse, InstanceHealthResponse, InstanceInfoResponse, ShutdownRequest, TaskConfig,
    TaskListResponse, TerminateRequest,
};

/// The largest JSON body accepted (as the Go agents: 1 MB).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// What the shim router needs besides the executor.
#[derive(Debug, Clone)]
pub struct ShimContext {
    /// The version reported by the healthcheck and components.
    pub version: String,
    /// Notified by `POST /api/shutdown`.
    pub shutdown: Arc<Notify>,
}

struct ShimState<E> {
    executor: Arc<E>,
    ctx: ShimContext,
}

impl<E> Clone for ShimState<E> {
    fn clone(&self) -> Self {
        Self {
            executor: self.executor.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

struct RunnerState<R> {
    runner: Arc<R>,
    version: String,
}

impl<R> Clone for RunnerState<R> {
    fn clone(&self) -> Self {
        Self {
            runner: self.runner.clone(),
            version: self.version.clone(),
        }
    }
}

/// The shim API router (`/api/healthcheck`, `/api/shutdown`, `/api/instance/{health,info}`,
/// `/api/components[/install]`, `/api/tasks[/{id}[/terminate|/remove]]`, `/metrics/tasks/{id}`).
pub fn shim_router<E: Executor>(executor: Arc<E>, ctx: ShimContext) -> Router {
    Router::new()
        .route("/api/healthcheck", get(shim_healthcheck::<E>))
        .route("/api/shutdown", post(shim_shutdown::<E>))
        .route("/api/instance/health", get(instance_health))
        .route("/api/instance/info", get(instance_info::<E>))
        .route("/api/components", get(components::<E>))
        .route("/api/components/install", post(components_install))
        .route("/api/tasks", get(task_list::<E>).post(task_submit::<E>))
        .route("/api/tasks/{id}", get(task_info::<E>))
        .route("/api/tasks/{id}/terminate", post(task_terminate::<E>))
        .route("/api/tasks/{id}/remove", post(task_remove::<E>))
        .route("/metrics/tasks/{id}", get(task_metrics))
        .with_state(ShimState { executor, ctx })
}

/// The runner API router (`/api/healthcheck`, `/api/metrics`, `/api/submit`,
/// `/api/upload_archive`, `/api/upload_code`, `/api/run`, `/api/pull`, `/api/stop`,
/// `/logs_ws`).
/// Uploads accept up to `max_upload_bytes`.
pub fn runner_router<R: JobRunner>(
    runner: Arc<R>,
    version: String,
    max_upload_bytes: usize,
) -> Router {
    let uploads = Router::new()
        .route("/api/upload_archive", post(runner_upload_archive::<R>))
        .route("/api/upload_code", post(runner_upload_code::<R>))
        .layer(DefaultBodyLimit::max(max_upload_bytes));
    Router::new()
        .route("/api/healthcheck", get(runner_healthcheck::<R>))
        .route("/api/metrics", get(runner_metrics))
        .route("/api/submit", post(runner_submit::<R>))
        .route("/api/run", post(runner_run::<R>))
        .route("/api/pull", get(runner_pull::<R>))
        .route("/api/stop", post(runner_stop::<R>))
        .route("/logs_ws", get(runner_logs_ws::<R>))
        .merge(uploads)
        .with_state(RunnerState { runner, version })
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A JSON answer as Go's encoder writes it (with a trailing newline).
fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
        Err(e) => error(AgentError::json("response", e)),
    }
}

/// A plain-text answer as Go's `http.Error` writes it.
fn text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

/// `200` without a body (the Go agents answer a blank line).
fn empty() -> Response {
    text(StatusCode::OK, "")
}

fn error(e: AgentError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "agent API error");
    } else {
        tracing::info!(error = %e, status = status.as_u16(), "agent API error");
    }
    let msg = e.to_string();
    let msg = if msg.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        msg
    };
    text(status, &msg)
}

fn respond<T: Serialize>(r: AgentResult<T>) -> Response {
    match r {
        Ok(v) => json(&v),
        Err(e) => error(e),
    }
}

/// Decodes a JSON request body with the Go agents' checks and messages.
pub fn decode_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> AgentResult<T> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let media = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/json" {
            return Err(AgentError::UnsupportedMediaType(
                "Content-Type header is not application/json".into(),
            ));
        }
    }
    if body.len() > MAX_JSON_BODY {
        return Err(AgentError::PayloadTooLarge(
            "Request body must not be larger than 1MB".into(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AgentError::BadRequest(
            "Request body must not be empty".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        AgentError::BadRequest(match e.classify() {
            Category::Syntax if e.to_string().contains("trailing") => {
                "Request body must only contain a single JSON object".into()
            }
            Category::Syntax | Category::Eof => {
                format!(
                    "Request body contains badly-formed JSON (at line {} column {})",
                    e.line(),
                    e.column()
                )
            }
            Category::Data | Category::Io => format!("Request body contains an invalid value: {e}"),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Shim handlers

async fn shim_healthcheck<E: Executor>(State(s): State<ShimState<E>>) -> Response {
    json(&HealthcheckResponse {
        service: SHIM_SERVICE.into(),
        version: s.ctx.version.clone(),
    })
}

async fn shim_shutdown<E: Executor>(
    State(s): State<ShimState<E>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match decode_json::<ShutdownRequest>(&headers, &body) {
        Ok(req) => {
            tracing::info!(force = req.force, "shutdown requested over the API");
            s.ctx.shutdown.notify_waiters();
            s.ctx.shutdown.notify_one();
            empty()
        }
        Err(e) => error(e),
    }
}

async fn instance_health() -> Response {
    json(&InstanceHealthResponse { dcgm: None })
}

async fn instance_info<E: Executor>(State(s): State<ShimState<E>>) -> Response {
    let first = s.executor.gpus().first();
    json(&InstanceInfoResponse {
        gpu_vendor: first.map(|g| g.vendor.as_str().to_string()),
        gpu_driver_version: first.and_then(|g| g.driver_version.clone()),
    })
}

async fn components<E: Executor>(State(s): State<ShimState<E>>) -> Response {
    let component = |name: &str| ComponentInfo {
        name: name.into(),
        version: s.ctx.version.clone(),
        status: ComponentStatus::Installed,
    };
    json(&ComponentListResponse {
        components: vec![component(RUNNER_SERVICE), component(SHIM_SERVICE)],
    })
}

async fn components_install(headers: HeaderMap, body: Bytes) -> Response {
    let req = match decode_json::<ComponentInstallRequest>(&headers, &body) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let e = if req.name.is_empty() {
        AgentError::BadRequest("empty name".into())
    } else if req.name != RUNNER_SERVICE && req.name != SHIM_SERVICE {
        AgentError::BadRequest("unknown component".into())
    } else if req.url.is_empty() {
        AgentError::BadRequest("empty url".into())
    } else {
        AgentError::NotImplemented(
            "this agent is built into dstack-server; update it by installing a new dstack-server binary".into(),
        )
    };
    error(e)
}

async fn task_list<E: Executor>(State(s): State<ShimState<E>>) -> Response {
    json(&TaskListResponse {
        tasks: s.executor.list_tasks(),
        ids: None,
    })
}

async fn task_info<E: Executor>(State(s): State<ShimState<E>>, Path(id): Path<String>) -> Response {
    respond(s.executor.task_info(&id))
}

async fn task_submit<E: Executor>(
    State(s): State<ShimState<E>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match decode_json::<TaskConfig>(&headers, &body) {
        Ok(cfg) => respond(s.executor.submit_task(cfg).await),
        Err(e) => error(e),
    }
}

async fn task_terminate<E: Executor>(
    State(s): State<ShimState<E>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match decode_json::<TerminateRequest>(&headers, &body) {
        Ok(req) => respond(s.executor.terminate_task(&id, req).await),
        Err(e) => error(e),
    }
}

async fn task_remove<E: Executor>(
    State(s): State<ShimState<E>>,
    Path(id): Path<String>,
) -> Response {
    match s.executor.remove_task(&id).await {
        Ok(()) => empty(),
        Err(e) => error(e),
    }
}

async fn task_metrics() -> Response {
    text(StatusCode::NOT_FOUND, "DCGM Exporter is not available")
}

// ---------------------------------------------------------------------------------------------
// Runner handlers

async fn runner_healthcheck<R: JobRunner>(State(s): State<RunnerState<R>>) -> Response {
    json(&HealthcheckResponse {
        service: RUNNER_SERVICE.into(),
        version: s.version.clone(),
    })
}

async fn runner_metrics() -> Response {
    text(StatusCode::NOT_FOUND, "Metrics collector is not available")
}

async fn runner_submit<R: JobRunner>(
    State(s): State<RunnerState<R>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match decode_json(&headers, &body).and_then(|b| s.runner.submit_job(b)) {
        Ok(()) => empty(),
        Err(e) => error(e),
    }
}

async fn runner_upload_archive<R: JobRunner>(
    State(s): State<RunnerState<R>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let result = multipart::decode_file_form(content_type, &body).and_then(|part| {
        if part.field != ARCHIVE_FIELD {
            return Err(AgentError::BadRequest(format!(
                "unexpected field {}",
                part.field
            )));
        }
        if part.file_name.is_empty() {
            return Err(AgentError::BadRequest("missing file name".into()));
        }
        s.runner.upload_archive(&part.file_name, &part.data)
    });
    match result {
        Ok(()) => empty(),
        Err(e) => error(e),
    }
}

async fn runner_upload_code<R: JobRunner>(
    State(s): State<RunnerState<R>>,
    body: Bytes,
) -> Response {
    match s.runner.upload_code(&body) {
        Ok(()) => empty(),
        Err(e) => error(e),
    }
}

async fn runner_run<R: JobRunner>(State(s): State<RunnerState<R>>) -> Response {
    match s.runner.run_job() {
        Ok(Some(info)) => json(&info),
        Ok(None) => empty(),
        Err(e) => error(e),
    }
}

async fn runner_pull<R: JobRunner>(
    State(s): State<RunnerState<R>>,
    RawQuery(query): RawQuery,
) -> Response {
    let timestamp = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("timestamp="))
        .map(|v| v.parse::<i64>());
    match timestamp {
        Some(Err(_)) => text(StatusCode::BAD_REQUEST, "Bad Request"),
        Some(Ok(t)) => respond(s.runner.pull(t)),
        None => respond(s.runner.pull(0)),
    }
}

async fn runner_stop<R: JobRunner>(State(s): State<RunnerState<R>>) -> Response {
    match s.runner.stop_job() {
        Ok(()) => empty(),
        Err(e) => error(e),
    }
}

/// Parses `/logs_ws`'s `start_time` as dstack's runner does (RFC 3339, whole seconds), also
/// taking a naive ISO 8601 time (Python's `isoformat()` of a naive datetime) as UTC. Returns
/// the first millisecond timestamp to send.
pub fn parse_start_time(value: &str) -> Option<i64> {
    let value = value.trim();
    let secs = match chrono::DateTime::parse_from_rfc3339(value) {
        Ok(t) => t.timestamp(),
        Err(_) => chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?
            .and_utc()
            .timestamp(),
    };
    secs.checked_mul(1000)
}

/// `GET /logs_ws[?start_time=]`: the job's raw terminal output from `start_time` as binary
/// frames, following it live until the job ended and everything was sent, then a normal close.
async fn runner_logs_ws<R: JobRunner>(
    State(s): State<RunnerState<R>>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let start = match params.get("start_time").filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(v) => parse_start_time(v).ok_or(()),
    };
    let runner = s.runner.clone();
    ws.on_upgrade(move |socket| async move {
        match start {
            Ok(start) => stream_job_logs(socket, runner, start).await,
            Err(()) => {
                let mut socket = socket;
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::UNSUPPORTED,
                        reason: "failed to parse start_time value".into(),
                    })))
                    .await;
            }
        }
    })
}

#[tracing::instrument(level = "debug", skip_all, fields(start_ms))]
async fn stream_job_logs<R: JobRunner>(mut socket: WebSocket, runner: Arc<R>, start_ms: i64) {
    let mut after = start_ms.saturating_sub(1);
    loop {
        let page = match runner.ws_logs(after) {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read job output for /logs_ws");
                break;
            }
        };
        let idle = page.events.is_empty();
        for event in page.events {
            after = event.timestamp;
            if socket
                .send(Message::Binary(event.message.into()))
                .await
                .is_err()
            {
                return;
            }
        }
        if page.complete {
            break;
        }
        if idle {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_like_python_isoformat() {
        let t = parse_start_time("2026-11-23T13:08:50.123456+00:00").unwrap();
        assert_eq!(t % 1000, 0);
        assert_eq!(parse_start_time("2026-11-23T13:08:50.123456"), Some(t));
        assert_eq!(parse_start_time("2026-11-23T15:08:50+02:00"), Some(t));
        assert_eq!(parse_start_time("yesterday"), None);
    }

    #[test]
    fn json_decoding_mirrors_go() {
        let mut h = HeaderMap::new();
        let err = |h: &HeaderMap, b: &[u8]| decode_json::<TerminateRequest>(h, b).unwrap_err();
        assert_eq!(err(&h, b"").http_status(), 400);
        assert_eq!(err(&h, b"").to_string(), "Request body must not be empty");
        assert_eq!(err(&h, b"{\"timeout\":").http_status(), 400);
        assert_eq!(
            err(&h, b"{} {}").to_string(),
            "Request body must only contain a single JSON object"
        );
        assert_eq!(err(&h, b"{\"timeout\":\"x\"}").http_status(), 400);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(err(&h, b"{}").http_status(), 415);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        let ok: TerminateRequest = decode_json(&h, b"{\"timeout\": 3, \"extra\": true}").unwrap();
        assert_eq!(ok.timeout, 3);
    }
}
