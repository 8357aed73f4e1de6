//! Access tokens for Azure Resource Manager.
//!
//! Two sources, chosen once when the backend is built:
//! - **client secret** (`creds: {type: client}`, or `type: default` with `AZURE_CLIENT_ID` +
//!   `AZURE_CLIENT_SECRET` in the environment, tenant from `AZURE_TENANT_ID` or the config):
//!   the OAuth 2.0 client-credentials flow, `POST {authority}/{tenant}/oauth2/v2.0/token`
//!   with scope `https://management.azure.com/.default`;
//! - **managed identity** (`type: default` otherwise): the instance metadata service,
//!   `GET {imds}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with
//!   `Metadata: true` (a user-assigned identity is picked with `AZURE_CLIENT_ID`).
//!
//! The Azure CLI and workload-identity sources of the Python SDK's default chain are not
//! supported. The authority is `https://login.microsoftonline.com`, overridden by
//! `AZURE_AUTHORITY_HOST` and then by the endpoint override `azure.login`
//! (`DSTACK_ENDPOINT_URL_AZURE_LOGIN`); the metadata service by `azure.imds`.
//!
//! Tokens are cached until [`REFRESH_MARGIN`] before they expire. Secrets and tokens never
//! appear in logs or `Debug` output.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::errors::ArmError;
use crate::backends::common::endpoint::Endpoints;
use crate::backends::common::retry::{Backoff, RetryDecision, retry};
use crate::models::backends::azure::AzureCreds;

/// The public cloud's authority host.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The instance metadata service.
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
/// The ARM scope of the client-credentials flow.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// The ARM resource of the managed-identity flow.
pub const ARM_RESOURCE: &str = "https://management.azure.com/";
/// A cached token is renewed this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Where tokens come from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The client-credentials flow of an app registration (service principal).
    ClientSecret {
        /// The tenant.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The client secret (never logged).
        client_secret: String,
    },
    /// The managed identity of the machine the server runs on.
    ManagedIdentity {
        /// The client id of a user-assigned identity; the system identity when `None`.
        client_id: Option<String>,
    },
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
            Self::ManagedIdentity { client_id } => f
                .debug_struct("ManagedIdentity")
                .field("client_id", client_id)
                .finish(),
        }
    }
}

impl TokenSource {
    /// The source for `creds`: client creds as given (tenant from the config when missing);
    /// default creds from `env` (`AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`),
    /// else the managed identity.
    pub fn resolve(
        creds: &AzureCreds,
        config_tenant: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let non_empty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        match creds {
            AzureCreds::Client(c) => Self::ClientSecret {
                tenant_id: c
                    .tenant_id
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| config_tenant.to_string()),
                client_id: c.client_id.clone(),
                client_secret: c.client_secret.clone(),
            },
            AzureCreds::Default(_) => {
                match (
                    non_empty("AZURE_CLIENT_ID"),
                    non_empty("AZURE_CLIENT_SECRET"),
                ) {
                    (Some(client_id), Some(client_secret)) => Self::ClientSecret {
                        tenant_id: non_empty("AZURE_TENANT_ID")
                            .unwrap_or_else(|| config_tenant.to_string()),
                        client_id,
                        client_secret,
                    },
                    (client_id, _) => Self::ManagedIdentity { client_id },
                }
            }
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    expires_at: Instant,
}

/// Fetches and caches ARM access tokens.
pub struct TokenProvider {
    source: TokenSource,
    authority: String,
    imds: String,
    client: reqwest::Client,
    policy: Backoff,
    cache: tokio::sync::Mutex<Option<CachedToken>>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("source", &self.source)
            .field("authority", &self.authority)
            .field("imds", &self.imds)
            .finish_non_exhaustive()
    }
}

/// The authority host: the `azure.login` override, else `AZURE_AUTHORITY_HOST`, else the
/// public cloud's.
pub fn authority_host(endpoints: &Endpoints, env: impl Fn(&str) -> Option<String>) -> String {
    endpoints
        .get("azure", "login")
        .map(str::to_string)
        .or_else(|| env("AZURE_AUTHORITY_HOST").filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_AUTHORITY.to_string())
        .trim_end_matches('/')
        .to_string()
}

impl TokenProvider {
    /// A provider for `source` that talks to `authority` (or `imds`) with `client`.
    pub fn new(
        source: TokenSource,
        authority: String,
        imds: String,
        client: reqwest::Client,
        policy: Backoff,
    ) -> Self {
        Self {
            source,
            authority: authority.trim_end_matches('/').to_string(),
            imds: imds.trim_end_matches('/').to_string(),
            client,
            policy,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The source tokens come from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// A valid token: the cached one, or a new one.
    pub async fn token(&self) -> Result<String, ArmError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.expires_at > Instant::now() + REFRESH_MARGIN
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// Drops the cached token (after ARM answered 401 to it).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    #[tracing::instrument(level = "debug", skip(self), fields(source = self.kind()))]
    async fn fetch(&self) -> Result<CachedToken, ArmError> {
        let (status, body) = retry(
            &self.policy,
            "azure token",
            |e: &ArmError| match e {
                ArmError::Transport(_) => RetryDecision::Retry,
                ArmError::Api {
                    retryable: true, ..
                } => RetryDecision::Retry,
                _ => RetryDecision::Stop,
            },
            || async {
                let req = match &self.source {
                    TokenSource::ClientSecret {
                        tenant_id,
                        client_id,
                        client_secret,
                    } => {
                        let url = format!(
                            "{}/{}/oauth2/v2.0/token",
                            self.authority,
                            url_encode(tenant_id)
                        );
                        let form = [
                            ("grant_type", "client_credentials"),
                            ("client_id", client_id.as_str()),
                            ("client_secret", client_secret.as_str()),
                            ("scope", ARM_SCOPE),
                        ]
                        .iter()
                        .map(|(k, v)| format!("{k}={}", url_encode(v)))
                        .collect::<Vec<_>>()
                        .join("&");
                        self.client
                            .post(url)
                            .header("content-type", "application/x-www-form-urlencoded")
                            .body(form)
                    }
                    TokenSource::ManagedIdentity { client_id } => {
                        let mut url = format!(
                            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                            self.imds,
                            url_encode(ARM_RESOURCE)
                        );
                        if let Some(id) = client_id {
                            url.push_str(&format!("&client_id={}", url_encode(id)));
                        }
                        self.client.get(url).header("Metadata", "true")
                    }
                };
                let resp = req
                    .send()
                    .await
                    .map_err(|e| ArmError::Transport(e.to_string()))?;
                let status = resp.status().as_u16();
                let body = resp
                    .text()
                    .await
                    .map_err(|e| ArmError::Transport(e.to_string()))?;
                if status == 429 || status >= 500 {
                    return Err(ArmError::Api {
                        status,
                        code: status.to_string(),
                        message: "token endpoint unavailable".into(),
                        retryable: true,
                    });
                }
                Ok((status, body))
            },
        )
        .await
        .map_err(|e| match e {
            ArmError::Transport(m)
                if matches!(self.source, TokenSource::ManagedIdentity { .. }) =>
            {
                ArmError::Auth(format!(
                    "no Azure credentials: AZURE_CLIENT_ID/AZURE_CLIENT_SECRET are not set and \
                     the managed identity endpoint is unreachable ({m})"
                ))
            }
            other => other,
        })?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let code = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("token_error");
            // AADSTS descriptions carry trace ids on later lines; keep the first.
            let desc = v
                .get("error_description")
                .and_then(Value::as_str)
                .and_then(|d| d.lines().next())
                .map(str::trim)
                .unwrap_or("the token request was rejected");
            tracing::warn!(status, code, "Azure token request rejected");
            return Err(ArmError::Auth(format!("{code}: {desc} (HTTP {status})")));
        }
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ArmError::Auth("the token response has no access_token".into()))?;
        let expires_in = match v.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3600);
        tracing::debug!(expires_in, "Azure token obtained");
        Ok(CachedToken {
            token: token.to_string(),
            expires_at: Instant::now() + Duration::from_secs(expires_in),
        })
    }

    fn kind(&self) -> &'static str {
        match self.source {
            TokenSource::ClientSecret { .. } => "client_secret",
            TokenSource::ManagedIdentity { .. } => "managed_identity",
        }
    }
}

/// Percent-encodes `s` for a URL query or form value (RFC 3986 unreserved kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::models::backends::azure::{AzureClientCreds, AzureDefaultCreds};

    #[test]
    fn resolves_sources() {
        let client = AzureCreds::Client(AzureClientCreds {
            client_id: "app".into(),
            client_secret: "s3cret".into(),
            tenant_id: None,
        });
        let s = TokenSource::resolve(&client, "t1", |_| None);
        assert!(matches!(&s, TokenSource::ClientSecret { tenant_id, .. } if tenant_id == "t1"));
        assert!(!format!("{s:?}").contains("s3cret"));
        let d = AzureCreds::Default(AzureDefaultCreds {});
        let env = |k: &str| match k {
            "AZURE_CLIENT_ID" => Some("app2".to_string()),
            "AZURE_CLIENT_SECRET" => Some("x".to_string()),
            _ => None,
        };
        assert!(matches!(
            TokenSource::resolve(&d, "t1", env),
            TokenSource::ClientSecret { client_id, .. } if client_id == "app2"
        ));
        assert_eq!(
            TokenSource::resolve(&d, "t1", |_| None),
            TokenSource::ManagedIdentity { client_id: None }
        );
        assert_eq!(url_encode("a b/'c'"), "a%20b%2F%27c%27");
        assert_eq!(
            authority_host(&Endpoints::none(), |_| Some(
                "https://login.example/".into()
            )),
            "https://login.example"
        );
    }
}
