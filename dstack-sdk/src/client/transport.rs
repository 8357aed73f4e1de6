//! Transports: HTTP (reqwest) and embedded (an in-process engine).

use serde_json::Value;

use crate::routes::{PathParams, RouteId};
#[cfg(feature = "http")]
use crate::{Error, ErrorKind, HttpShape};

#[derive(Debug)]
pub(super) enum Transport {
    #[cfg(feature = "http")]
    Http(HttpTransport),
    #[cfg(feature = "engine")]
    Embedded(EmbeddedTransport),
    /// Keeps the enum inhabited when neither transport is compiled in.
    #[allow(dead_code)]
    None,
}

impl Transport {
    pub(super) async fn call(
        &self,
        route: RouteId,
        params: &PathParams,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        match self {
            #[cfg(feature = "http")]
            Transport::Http(h) => h.call(route, params, body).await,
            #[cfg(feature = "engine")]
            Transport::Embedded(e) => e.engine.call(route, Some(&e.token), params, body).await,
            Transport::None => {
                let _ = (route, params, body);
                Err(crate::Error::new(
                    crate::ErrorKind::Internal,
                    "no transport compiled in",
                ))
            }
        }
    }

    pub(super) fn with_token(&self, token: &str) -> Transport {
        match self {
            #[cfg(feature = "http")]
            Transport::Http(h) => Transport::Http(HttpTransport {
                http: h.http.clone(),
                base: h.base.clone(),
                token: token.to_string(),
            }),
            #[cfg(feature = "engine")]
            Transport::Embedded(e) => Transport::Embedded(EmbeddedTransport {
                engine: e.engine.clone(),
                token: token.to_string(),
            }),
            Transport::None => {
                let _ = token;
                Transport::None
            }
        }
    }
}

#[cfg(feature = "engine")]
pub(super) struct EmbeddedTransport {
    pub(super) engine: crate::engine::Engine,
    pub(super) token: String,
}

#[cfg(feature = "engine")]
impl std::fmt::Debug for EmbeddedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedTransport")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pub(super) struct HttpTransport {
    http: reqwest::Client,
    base: String,
    token: String,
}

#[cfg(feature = "http")]
impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
impl HttpTransport {
    pub(super) fn new(url: &str, token: &str) -> crate::Result<Self> {
        crate::http::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transport,
                    format!("cannot build HTTP client: {e}"),
                )
            })?;
        Ok(Self {
            http,
            base: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    async fn call(
        &self,
        route: RouteId,
        params: &PathParams,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let url = format!("{}{}", self.base, route.path(params));
        let mut req = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header("X-API-VERSION", crate::DSTACK_VERSION);
        if let Some(b) = &body {
            req = req.json(b);
        }
        // Like dstack's client: retry connection errors (not HTTP errors) 3 times, 1 s apart.
        let mut attempt = 0;
        let resp = loop {
            match req.try_clone().map(|r| r.send()) {
                Some(fut) => match fut.await {
                    Ok(r) => break r,
                    Err(e) if e.is_connect() && attempt < 3 => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        return Err(Error::new(
                            ErrorKind::Transport,
                            format!("cannot reach the dstack server at {}: {e}", self.base),
                        ));
                    }
                },
                None => return Err(Error::new(ErrorKind::Internal, "request cannot be retried")),
            }
        };
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            Error::new(
                ErrorKind::Transport,
                format!("reading response from {url}: {e}"),
            )
        })?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        if status.is_success() {
            return Ok(json);
        }
        Err(error_from_response(status.as_u16(), &json, &url))
    }
}

/// Maps a dstack error response to an [`Error`] that keeps dstack's `code` and `msg`.
#[cfg(feature = "http")]
pub(super) fn error_from_response(status: u16, body: &Value, url: &str) -> Error {
    let detail = body.get("detail");
    let first = detail.and_then(Value::as_array).and_then(|a| a.first());
    let msg_of = |v: Option<&Value>| {
        v.and_then(|d| d.get("msg"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match status {
        400 => {
            let msg = msg_of(first).unwrap_or_else(|| body.to_string());
            let kind = match first.and_then(|d| d.get("code")).and_then(Value::as_str) {
                Some("resource_not_exists") => ErrorKind::NotFound,
                Some("resource_exists") => ErrorKind::AlreadyExists,
                Some("invalid_credentials") => ErrorKind::InvalidCredentials,
                Some("backend_not_available") => ErrorKind::BackendNotAvailable,
                _ => ErrorKind::Validation,
            };
            let mut e = Error::new(kind, msg);
            if let Some(fields) = first
                .and_then(|d| d.get("fields"))
                .and_then(Value::as_array)
            {
                let path: Vec<&str> = fields.iter().filter_map(Value::as_str).collect();
                if !path.is_empty() {
                    e = Error::validation(&path, e.message().to_string());
                }
            }
            e
        }
        401 | 403 => {
            let msg = msg_of(detail)
                .or_else(|| msg_of(Some(body)))
                .unwrap_or_else(|| "Access denied".into());
            let kind = if msg == "Invalid token"
                || msg == "Not authenticated"
                || detail.and_then(Value::as_str) == Some("Not authenticated")
            {
                ErrorKind::Unauthenticated
            } else {
                ErrorKind::Forbidden
            };
            Error::new(kind, msg)
        }
        404 => Error::new(
            ErrorKind::NotFound,
            msg_of(detail).unwrap_or_else(|| format!("{url}: not found")),
        )
        .with_shape(HttpShape::DependencyNotFound),
        422 => Error::new(
            ErrorKind::Validation,
            format!(
                "Server validation error: {detail:?}",
                detail = detail.unwrap_or(body)
            ),
        )
        .with_shape(HttpShape::RequestValidation),
        _ => Error::new(
            ErrorKind::Transport,
            format!("{url} answered {status}: {body}"),
        ),
    }
}
