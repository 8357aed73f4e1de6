//! HTTP for REST clouds: one `reqwest` client, every request retried on 429 and 5xx (and on
//! transport errors) with the back-off of [`retry`](super::retry), honouring `Retry-After`.

use std::time::Duration;

use super::retry::{Backoff, RetryDecision, retry};
use crate::backends::error::{BackendError, BackendResult};

/// A `reqwest` client plus a retry policy, shared by the REST backends.
#[derive(Debug, Clone)]
pub struct RetryingHttp {
    client: reqwest::Client,
    policy: Backoff,
    provider: String,
}

/// A response whose status was not retried (it may still be a 4xx for the caller to map).
#[derive(Debug)]
pub struct HttpResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
}

enum Attempt {
    Status(u16, Option<Duration>, String),
    Transport(String),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s, _, _) => write!(f, "HTTP {s}"),
            Self::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl RetryingHttp {
    /// A client for `provider` (used in error messages) with `policy` and a per-request
    /// `timeout`.
    pub fn new(provider: &str, policy: Backoff, timeout: Duration) -> BackendResult<Self> {
        crate::http::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| BackendError::Transport(e.to_string()))?;
        Ok(Self {
            client,
            policy,
            provider: provider.to_string(),
        })
    }

    /// The underlying client, to build requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request `build` makes (called once per attempt) and returns the first
    /// response that is not 429 or 5xx; 429/5xx are retried, and the last one is returned as
    /// a retryable [`BackendError::Cloud`] when the attempts are spent.
    pub async fn send(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> BackendResult<HttpResponse> {
        let result = retry(
            &self.policy,
            what,
            |a: &Attempt| match a {
                Attempt::Status(_, Some(after), _) => RetryDecision::RetryAfter(*after),
                Attempt::Status(_, None, _) | Attempt::Transport(_) => RetryDecision::Retry,
            },
            || async {
                let resp = build(&self.client)
                    .send()
                    .await
                    .map_err(|e| Attempt::Transport(e.to_string()))?;
                let status = resp.status().as_u16();
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = resp
                    .text()
                    .await
                    .map_err(|e| Attempt::Transport(e.to_string()))?;
                if status == 429 || (500..600).contains(&status) {
                    return Err(Attempt::Status(status, after, body));
                }
                Ok(HttpResponse { status, body })
            },
        )
        .await;
        result.map_err(|a| match a {
            Attempt::Status(status, _, body) => BackendError::Cloud {
                provider: self.provider.clone(),
                code: status.to_string(),
                message: body.chars().take(500).collect(),
                retryable: true,
            },
            Attempt::Transport(e) => BackendError::Transport(e),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn retries_429_and_5xx_then_succeeds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = match n {
                    1 => "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    2 => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno".to_string(),
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let http = RetryingHttp::new(
            "test",
            Backoff::fast(Duration::from_millis(1), 5),
            Duration::from_secs(5),
        )
        .unwrap();
        let url = format!("http://{addr}/x");
        let r = http.send("get", |c| c.get(&url)).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "no"));
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }
}
