//! The HTTP front: every row of [`dstack_sdk::routes::ROUTES`] becomes one POST handler that
//! extracts the bearer token, path parameters and JSON body, calls
//! [`Engine::call`](dstack_sdk::engine::Engine::call), and renders the result or the error in
//! dstack's shapes. There is no per-route code here.

mod agent_download;
mod errors;
mod proxy;
mod server;
mod version;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use dstack_sdk::engine::Engine;
use dstack_sdk::routes::{PathParams, ROUTES, RouteId};

/// Request bodies larger than this get 413 (code uploads have their own, larger limit).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
}

impl AppState {
    /// State around an opened engine.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

/// Builds the router with every route and middleware.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/healthcheck", get(server::healthcheck))
        .route("/agent/download/{file}", get(agent_download::download));
    for spec in ROUTES {
        let id = spec.id;
        let mut route = post(
            move |State(st): State<AppState>,
                  Path(params): Path<HashMap<String, String>>,
                  Query(query): Query<HashMap<String, String>>,
                  headers: HeaderMap,
                  body: Bytes| async move {
                handle(st, id, params, query, headers, body).await
            },
        );
        if let Some(limit) = id.upload_limit() {
            // Multipart framing adds a little to the file itself.
            route = route.layer(DefaultBodyLimit::max(limit + 64 * 1024));
        }
        app = app.route(spec.path, route);
    }
    let proxy_route = any(proxy::service).layer(DefaultBodyLimit::max(proxy::PROXY_BODY_LIMIT));
    app = app
        .route("/proxy/services/{project}/{run}", any(proxy::add_slash))
        .route("/proxy/services/{project}/{run}/", proxy_route.clone())
        .route("/proxy/services/{project}/{run}/{*path}", proxy_route);
    app.fallback(server::not_found)
        .layer(axum::middleware::from_fn(version::check_client_version))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn handle(
    st: AppState,
    id: RouteId,
    params: HashMap<String, String>,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let body = if let Some(limit) = id.upload_limit() {
        match upload_body(&headers, &body, limit, query.get("repo_id").cloned()) {
            Ok(v) => Some(v),
            Err(e) => return errors::render(&e).into_response(),
        }
    } else if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => return errors::json_decode_error(&e).into_response(),
        }
    };
    let params = PathParams {
        project: params.get("project").cloned(),
        backend: params.get("backend").cloned(),
    };
    match st.engine.call_json(id, token, &params, body).await {
        Ok(json) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response(),
        Err(e) => errors::render(&e).into_response(),
    }
}

/// Decodes a multipart upload into the engine's [`UploadBody`](dstack_sdk::routes::UploadBody).
fn upload_body(
    headers: &HeaderMap,
    body: &[u8],
    limit: usize,
    repo_id: Option<String>,
) -> Result<serde_json::Value, dstack_sdk::Error> {
    use base64::Engine as _;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let part = dstack_sdk::agent::multipart::decode_file_form(content_type, body).map_err(|e| {
        dstack_sdk::Error::bad_request(format!(
            "Expected a multipart form with a `file` field: {e}"
        ))
    })?;
    if part.data.len() > limit {
        return Err(dstack_sdk::Error::bad_request(format!(
            "Upload of {} bytes exceeds the limit of {limit} bytes",
            part.data.len()
        )));
    }
    Ok(serde_json::json!({
        "file_name": part.file_name,
        "data_b64": base64::engine::general_purpose::STANDARD.encode(&part.data),
        "repo_id": repo_id,
    }))
}
