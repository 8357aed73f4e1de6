//! `/proxy/services/<project>/<run>/…`: hands the request to
//! [`Engine::proxy_service`](dstack_sdk::engine::Engine::proxy_service) and streams the
//! upstream answer back. Errors use dstack's `{"detail": …}` shape.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use dstack_sdk::ErrorKind;
use dstack_sdk::engine::services::proxy::ProxyRequest;

use super::AppState;

/// Largest request body forwarded to a service.
pub const PROXY_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The proxy handler for `/proxy/services/{project}/{run}/` and everything below it.
pub async fn service(
    State(st): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Response {
    let (Some(project), Some(run)) = (params.get("project"), params.get("run")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, PROXY_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large"),
    };
    let prefix = format!("/proxy/services/{project}/{run}");
    let path_and_query = strip_prefix(&parts.uri, &prefix);
    let token = bearer(&parts.headers);
    let req = ProxyRequest {
        method: parts.method.clone(),
        path_and_query,
        headers: parts.headers.clone(),
        body: body.to_vec(),
    };
    match st
        .engine
        .proxy_service(token.as_deref(), project, run, req)
        .await
    {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                if !matches!(
                    k.as_str(),
                    "transfer-encoding" | "connection" | "keep-alive"
                ) {
                    out = out.header(k, v);
                }
            }
            out.body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => {
            let status = match e.kind() {
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
                ErrorKind::Forbidden => StatusCode::FORBIDDEN,
                ErrorKind::Conflict => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Transport => StatusCode::BAD_GATEWAY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            detail(status, e.message())
        }
    }
}

/// `/proxy/services/{project}/{run}` without the trailing slash: redirect, as a browser
/// expects relative links to resolve below the service.
pub async fn add_slash(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return detail(StatusCode::NOT_FOUND, "Not found");
    }
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Redirect::permanent(&format!("{}/{q}", uri.path())).into_response()
}

/// The service-relative path (always starting with `/`) and query of `uri`.
fn strip_prefix(uri: &Uri, prefix: &str) -> String {
    let path = uri.path().strip_prefix(prefix).unwrap_or("/");
    let path = if path.is_empty() { "/" } else { path };
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

fn detail(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "detail": msg }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_service_prefix() {
        let u: Uri = "/proxy/services/main/web/api/x?a=1".parse().unwrap();
        assert_eq!(strip_prefix(&u, "/proxy/services/main/web"), "/api/x?a=1");
        let u: Uri = "/proxy/services/main/web/".parse().unwrap();
        assert_eq!(strip_prefix(&u, "/proxy/services/main/web"), "/");
    }
}
