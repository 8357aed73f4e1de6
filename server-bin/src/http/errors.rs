//! Renders `dstack_sdk::Error` in dstack's HTTP error shapes (dstack-api.md §1.4).

use axum::Json;
use axum::http::StatusCode;
use dstack_sdk::{Error, ErrorKind, HttpShape};
use serde_json::{Value, json};

/// The status and body for an engine error.
pub fn render(e: &Error) -> (StatusCode, Json<Value>) {
    let msg = e.message();
    match (e.kind(), e.shape()) {
        (_, HttpShape::RequestValidation) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(
                json!({"detail": [{"type": "value_error", "loc": ["body"], "msg": msg, "input": null}]}),
            ),
        ),
        (_, HttpShape::DependencyNotFound) => (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": {"msg": msg, "code": null}})),
        ),
        (ErrorKind::Forbidden, HttpShape::Unwrapped) => (
            StatusCode::FORBIDDEN,
            Json(json!({"msg": msg, "code": null})),
        ),
        // FastAPI's HTTPBearer (the version dstack 0.22.5 ships) answers 401 without a header.
        (ErrorKind::Unauthenticated, _) if msg == "Not authenticated" => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"detail": "Not authenticated"})),
        ),
        (ErrorKind::Unauthenticated | ErrorKind::Forbidden, _) => (
            StatusCode::FORBIDDEN,
            Json(json!({"detail": {"msg": msg, "code": null}})),
        ),
        (ErrorKind::Internal, _) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(
                json!({"detail": [{"msg": "Internal server error: see the server log", "code": "error"}]}),
            ),
        ),
        (kind, _) => {
            let code = kind.dstack_code();
            let detail: Vec<Value> = if e.fields().is_empty() {
                vec![json!({"msg": msg, "code": code})]
            } else {
                e.fields()
                    .iter()
                    .map(|f| json!({"msg": msg, "code": code, "fields": f}))
                    .collect()
            };
            (StatusCode::BAD_REQUEST, Json(json!({ "detail": detail })))
        }
    }
}

/// A body that is not JSON: FastAPI's 422 `json_invalid`.
pub fn json_decode_error(e: &serde_json::Error) -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"detail": [{
            "type": "json_invalid",
            "loc": ["body", e.column()],
            "msg": format!("JSON decode error: {e}"),
            "input": {},
        }]})),
    )
}
