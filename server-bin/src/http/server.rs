//! Routes outside the API table: `/healthcheck` and the 404 fallback.

use axum::Json;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// `GET /healthcheck` → `{"status":"running"}`.
pub async fn healthcheck() -> Json<Value> {
    Json(json!({"status": "running"}))
}

/// Unknown paths: FastAPI's `{"detail":"Not Found"}` with 404.
pub async fn not_found() -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"})))
}
