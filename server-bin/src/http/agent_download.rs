//! `GET /agent/download/dstack-server-linux-{arch}` (unauthenticated): the host agent for VMs
//! whose cloud-init downloads it from this server
//! ([`AgentDownload::FromServer`](dstack_sdk::backends::common::settings::AgentDownload),
//! the default when `DSTACK_SERVER_URL` is set and `DSTACK_AGENT_DOWNLOAD_URL` is not), so
//! that a deployment needs nothing from outside.
//!
//! The agent is this very binary (`dstack-server agent …`): for the server's own architecture
//! the route serves `DSTACK_AGENT_BINARY` when set (as the SSH deploy uploads), else the
//! running executable. Other architectures are served from `DSTACK_AGENT_BINARIES_DIR`
//! (files named `dstack-server-linux-amd64` / `-arm64`) when configured; otherwise 404.
//!
//! A file is read once and kept in memory (a shared, reference-counted buffer): a fleet of
//! hundreds of VMs booting at once then costs one read, and each download is streamed from
//! that buffer without a copy.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The env var naming a directory of per-architecture agent binaries.
pub const BINARIES_DIR_ENV: &str = "DSTACK_AGENT_BINARIES_DIR";

/// The file-name prefix of every agent binary; the suffix is the Go architecture.
const PREFIX: &str = "dstack-server-linux-";

/// Files read so far, by path.
fn cache() -> &'static Mutex<HashMap<PathBuf, Bytes>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Bytes>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// This server's architecture as Go names it (`amd64` / `arm64`), if it has an agent.
pub fn own_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// The binary to serve for `arch`, if any.
fn binary_for(arch: &str) -> Option<PathBuf> {
    if !matches!(arch, "amd64" | "arm64") {
        return None;
    }
    if let Some(dir) = std::env::var_os(BINARIES_DIR_ENV).filter(|d| !d.is_empty()) {
        let p = FsPath::new(&dir).join(format!("{PREFIX}{arch}"));
        if p.is_file() {
            return Some(p);
        }
    }
    if own_arch() == Some(arch) {
        return std::env::var_os("DSTACK_AGENT_BINARY")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok());
    }
    None
}

async fn load(path: PathBuf) -> std::io::Result<Bytes> {
    if let Ok(c) = cache().lock()
        && let Some(b) = c.get(&path)
    {
        return Ok(b.clone());
    }
    let bytes = Bytes::from(tokio::fs::read(&path).await?);
    if let Ok(mut c) = cache().lock() {
        c.entry(path).or_insert_with(|| bytes.clone());
    }
    Ok(bytes)
}

fn detail(status: StatusCode, msg: String) -> Response {
    (status, axum::Json(json!({ "detail": msg }))).into_response()
}

/// `GET /agent/download/{file}`.
pub async fn download(Path(file): Path<String>) -> Response {
    let Some(arch) = file.strip_prefix(PREFIX) else {
        return detail(StatusCode::NOT_FOUND, "Not Found".into());
    };
    let Some(path) = binary_for(arch) else {
        return detail(
            StatusCode::NOT_FOUND,
            format!(
                "No agent binary for {arch:?} on this server (it runs on {}); put \
                 {PREFIX}{arch} into the directory named by {BINARIES_DIR_ENV}, or set \
                 DSTACK_AGENT_DOWNLOAD_URL",
                own_arch().unwrap_or(std::env::consts::ARCH)
            ),
        );
    };
    match load(path.clone()).await {
        Ok(bytes) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the agent binary");
            detail(
                StatusCode::NOT_FOUND,
                format!("The agent binary for {arch} cannot be read: {e}"),
            )
        }
    }
}
