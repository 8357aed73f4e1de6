//! The `X-API-VERSION` compatibility rule (dstack-api.md §1.3).

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use dstack_sdk::{DSTACK_VERSION, SERVER_VERSION};

/// A parsed `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u64, u64, u64);

/// Parses `X.Y[.Z][suffix]`; `None` when it is not a version.
fn parse_version(s: &str) -> Option<Version> {
    let core: String = s
        .trim()
        .trim_start_matches('v')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut it = core.split('.').filter(|p| !p.is_empty());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    let patch = it.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    Some(Version(major, minor, patch))
}

/// Rejects clients newer than this server in major or minor, as dstack does.
pub async fn check_client_version(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/api/")
        && path != "/api/docs"
        && let Some(value) = req.headers().get("x-api-version")
        && let Some(resp) = version_error(value.to_str().unwrap_or_default())
    {
        return resp;
    }
    next.run(req).await
}

fn version_error(raw: &str) -> Option<Response> {
    if raw == "latest" || raw.starts_with("0.0.0") {
        return None;
    }
    let Some(client) = parse_version(raw) else {
        return Some(bad_request(format!("Invalid version: {raw}"), None));
    };
    let server = parse_version(DSTACK_VERSION)?;
    if client > server && (client.0, client.1) > (server.0, server.1) {
        return Some(bad_request(
            format!(
                "The client/CLI version ({raw}) is incompatible with the server version ({SERVER_VERSION})."
            ),
            Some("error"),
        ));
    }
    None
}

fn bad_request(msg: String, code: Option<&str>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"detail": [{"msg": msg, "code": code}]})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_minor_is_rejected_newer_patch_is_not() {
        assert!(version_error("0.23.0").is_some());
        assert!(version_error("1.0.0").is_some());
        assert!(version_error("0.22.9").is_none());
        assert!(version_error("0.21.0").is_none());
        assert!(version_error("latest").is_none());
        assert!(version_error("0.0.0.dev1").is_none());
        assert!(version_error("garbage").is_some());
    }
}
