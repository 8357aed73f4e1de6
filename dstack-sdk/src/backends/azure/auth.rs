//! Access tokens for Azure Resource Manager.
//!
//! `creds: {type: client}` uses the OAuth 2.0 client-credentials flow of the app registration,
//! `POST {authority}/{tenant}/oauth2/v2.0/token` with scope
//! `https://management.azure.com/.default`.
//!
//! `creds: {type: default}` walks a chain of sources in the order of azure-identity's
//! `DefaultAzureCredential`, which is what dstack uses for default creds:
//! 1. **environment**: `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET` (tenant from
//!    `AZURE_TENANT_ID`, else the config's) → the client-credentials flow;
//! 2. **workload identity**: `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_CLIENT_ID` +
//!    `AZURE_TENANT_ID` → the client-assertion grant (`client_assertion` is the file's content,
//!    read again for every token since the file is rotated; `client_assertion_type`
//!    `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`);
//! 3. **managed identity**: the instance metadata service,
//!    `GET {imds}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with
//!    `Metadata: true` (a user-assigned identity is picked with `AZURE_CLIENT_ID`); the first
//!    request is a short probe, and no answer (or a 400: no identity assigned) skips it;
//! 4. **Azure CLI**: `az account get-access-token --resource https://management.azure.com/
//!    -o json` (found on `PATH`; skipped when missing or not logged in).
//!
//! A source that is not set up is skipped; one that is set up but rejects us ends the walk
//! with its error (as `ChainedTokenCredential` does). The first source that yields a token is
//! used from then on.
//!
//! The authority is `https://login.microsoftonline.com`, overridden by `AZURE_AUTHORITY_HOST`
//! and then by the endpoint override `azure.login` (`DSTACK_ENDPOINT_URL_AZURE_LOGIN`); the
//! metadata service by `azure.imds`.
//!
//! Tokens are cached until [`REFRESH_MARGIN`] before they expire. Secrets, assertions and
//! tokens never appear in logs or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
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
/// The ARM resource of the managed-identity flow and the Azure CLI.
pub const ARM_RESOURCE: &str = "https://management.azure.com/";
/// A cached token is renewed this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// How long the first managed-identity request may take before the source is skipped (as
/// azure-identity's one-second IMDS probe).
pub const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `az account get-access-token` may run (azure-identity's default
/// `process_timeout`).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// The `client_assertion_type` of the workload-identity grant.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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
    /// Workload identity federation: a projected service-account token exchanged for an
    /// access token with the client-assertion grant.
    WorkloadIdentity {
        /// The tenant.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The file holding the federated token (read for every token; never logged).
        token_file: PathBuf,
    },
    /// The managed identity of the machine the server runs on.
    ManagedIdentity {
        /// The client id of a user-assigned identity; the system identity when `None`.
        client_id: Option<String>,
    },
    /// The Azure CLI's logged-in account.
    AzureCli {
        /// The `PATH` `az` is looked up on (and run with); the process's when `None`.
        path: Option<String>,
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
            Self::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
            Self::ManagedIdentity { client_id } => f
                .debug_struct("ManagedIdentity")
                .field("client_id", client_id)
                .finish(),
            Self::AzureCli { .. } => f.debug_struct("AzureCli").finish_non_exhaustive(),
        }
    }
}

impl TokenSource {
    /// The sources tried for `creds`, in order: the client creds as given (tenant from the
    /// config when missing); for default creds, the chain described in the module docs, with
    /// the environment and workload-identity sources only when their variables are set.
    pub fn chain(
        creds: &AzureCreds,
        config_tenant: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<Self> {
        let non_empty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        match creds {
            AzureCreds::Client(c) => vec![Self::ClientSecret {
                tenant_id: c
                    .tenant_id
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| config_tenant.to_string()),
                client_id: c.client_id.clone(),
                client_secret: c.client_secret.clone(),
            }],
            AzureCreds::Default(_) => {
                let client_id = non_empty("AZURE_CLIENT_ID");
                let tenant_id = non_empty("AZURE_TENANT_ID");
                let mut chain = Vec::with_capacity(4);
                if let (Some(id), Some(secret)) = (&client_id, non_empty("AZURE_CLIENT_SECRET")) {
                    chain.push(Self::ClientSecret {
                        tenant_id: tenant_id
                            .clone()
                            .unwrap_or_else(|| config_tenant.to_string()),
                        client_id: id.clone(),
                        client_secret: secret,
                    });
                }
                if let (Some(id), Some(tenant), Some(file)) = (
                    &client_id,
                    &tenant_id,
                    non_empty("AZURE_FEDERATED_TOKEN_FILE"),
                ) {
                    chain.push(Self::WorkloadIdentity {
                        tenant_id: tenant.clone(),
                        client_id: id.clone(),
                        token_file: PathBuf::from(file),
                    });
                }
                chain.push(Self::ManagedIdentity { client_id });
                chain.push(Self::AzureCli { path: env("PATH") });
                chain
            }
        }
    }

    /// The first source of [`TokenSource::chain`].
    pub fn resolve(
        creds: &AzureCreds,
        config_tenant: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        Self::chain(creds, config_tenant, env)
            .into_iter()
            .next()
            .unwrap_or(Self::ManagedIdentity { client_id: None })
    }

    /// A short name for logs: `client_secret`, `workload_identity`, `managed_identity` or
    /// `azure_cli`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ClientSecret { .. } => "client_secret",
            Self::WorkloadIdentity { .. } => "workload_identity",
            Self::ManagedIdentity { .. } => "managed_identity",
            Self::AzureCli { .. } => "azure_cli",
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<CachedToken>,
    /// The index of the source that yielded a token; used from then on.
    active: Option<usize>,
}

/// Why one source gave no token.
enum SourceError {
    /// The source is not set up here; the next one is tried.
    Unavailable(String),
    /// The source is set up but failed; the walk ends.
    Failed(ArmError),
}

impl From<ArmError> for SourceError {
    fn from(e: ArmError) -> Self {
        Self::Failed(e)
    }
}

/// Fetches and caches ARM access tokens from a chain of [`TokenSource`]s.
pub struct TokenProvider {
    sources: Vec<TokenSource>,
    authority: String,
    imds: String,
    client: reqwest::Client,
    policy: Backoff,
    state: tokio::sync::Mutex<State>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("sources", &self.sources)
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
    /// A provider that tries `sources` in order, talking to `authority` (or `imds`) with
    /// `client`.
    pub fn new(
        sources: Vec<TokenSource>,
        authority: String,
        imds: String,
        client: reqwest::Client,
        policy: Backoff,
    ) -> Self {
        Self {
            sources,
            authority: authority.trim_end_matches('/').to_string(),
            imds: imds.trim_end_matches('/').to_string(),
            client,
            policy,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// The sources, in the order they are tried.
    pub fn sources(&self) -> &[TokenSource] {
        &self.sources
    }

    /// The source that yielded the tokens, once one has.
    pub async fn active_source(&self) -> Option<TokenSource> {
        let st = self.state.lock().await;
        st.active.and_then(|i| self.sources.get(i)).cloned()
    }

    /// A valid token: the cached one, or a new one.
    pub async fn token(&self) -> Result<String, ArmError> {
        let mut st = self.state.lock().await;
        if let Some(c) = st.cached.as_ref()
            && c.expires_at > Instant::now() + REFRESH_MARGIN
        {
            return Ok(c.token.clone());
        }
        let fresh = match st.active.and_then(|i| self.sources.get(i)) {
            Some(source) => match self.fetch(source, false).await {
                Ok(t) => t,
                Err(SourceError::Failed(e)) => return Err(e),
                Err(SourceError::Unavailable(why)) => {
                    return Err(ArmError::Auth(format!(
                        "Azure credentials ({}) are no longer available: {why}",
                        source.kind()
                    )));
                }
            },
            None => {
                let (i, t) = self.walk().await?;
                st.active = Some(i);
                t
            }
        };
        let token = fresh.token.clone();
        st.cached = Some(fresh);
        Ok(token)
    }

    /// Tries the sources in order; the index of the first that yields a token, and the token.
    async fn walk(&self) -> Result<(usize, CachedToken), ArmError> {
        let mut skipped = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let more = i + 1 < self.sources.len();
            match self.fetch(source, more).await {
                Ok(t) => {
                    tracing::info!(source = source.kind(), "Azure credentials found");
                    return Ok((i, t));
                }
                Err(SourceError::Unavailable(why)) => {
                    tracing::debug!(source = source.kind(), reason = %why, "Azure credential source unavailable");
                    skipped.push(format!("{}: {why}", source.kind()));
                }
                Err(SourceError::Failed(e)) => {
                    tracing::warn!(source = source.kind(), error = %e, "Azure credential source failed");
                    return Err(e);
                }
            }
        }
        Err(ArmError::Auth(format!(
            "no Azure credentials found ({}); set AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, use a \
             workload or managed identity, or run `az login`",
            skipped.join("; ")
        )))
    }

    /// Drops the cached token (after ARM answered 401 to it).
    pub async fn invalidate(&self) {
        self.state.lock().await.cached = None;
    }

    /// One token from `source`; `probe`: other sources follow, so a managed identity that
    /// does not answer quickly (or has no identity) is unavailable rather than an error.
    #[tracing::instrument(level = "debug", skip(self, source), fields(source = source.kind()))]
    async fn fetch(&self, source: &TokenSource, probe: bool) -> Result<CachedToken, SourceError> {
        match source {
            TokenSource::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
            } => {
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.as_str()),
                    ("scope", ARM_SCOPE),
                ];
                let (status, body) = self.post_form(tenant_id, &form).await?;
                Ok(parse_token_response(status, &body)?)
            }
            TokenSource::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                let assertion = tokio::fs::read_to_string(token_file).await.map_err(|e| {
                    ArmError::Auth(format!(
                        "cannot read the federated token file {} (AZURE_FEDERATED_TOKEN_FILE): {e}",
                        token_file.display()
                    ))
                })?;
                let form = [
                    ("client_assertion", assertion.trim()),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_id", client_id.as_str()),
                    ("grant_type", "client_credentials"),
                    ("scope", ARM_SCOPE),
                ];
                let (status, body) = self.post_form(tenant_id, &form).await?;
                Ok(parse_token_response(status, &body)?)
            }
            TokenSource::ManagedIdentity { client_id } => {
                self.managed_identity(client_id.as_deref(), probe).await
            }
            TokenSource::AzureCli { path } => azure_cli(path.as_deref()).await,
        }
    }

    /// `POST {authority}/{tenant}/oauth2/v2.0/token` with `form`, retried on 429, 5xx and
    /// transport errors.
    async fn post_form(
        &self,
        tenant_id: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, String), ArmError> {
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority,
            url_encode(tenant_id)
        );
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send_retried(&self.policy, || {
            self.client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone())
        })
        .await
    }

    async fn managed_identity(
        &self,
        client_id: Option<&str>,
        probe: bool,
    ) -> Result<CachedToken, SourceError> {
        let mut url = format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
            self.imds,
            url_encode(ARM_RESOURCE)
        );
        if let Some(id) = client_id {
            url.push_str(&format!("&client_id={}", url_encode(id)));
        }
        let policy = if probe { Backoff::none() } else { self.policy };
        let sent = self
            .send_retried(&policy, || {
                let req = self.client.get(&url).header("Metadata", "true");
                if probe {
                    req.timeout(IMDS_PROBE_TIMEOUT)
                } else {
                    req
                }
            })
            .await;
        let (status, body) = match sent {
            Ok(r) => r,
            Err(ArmError::Transport(m)) if probe => {
                return Err(SourceError::Unavailable(format!(
                    "no answer from the managed identity endpoint ({m})"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if probe && status == 400 {
            return Err(SourceError::Unavailable(
                "no managed identity is assigned to this machine".into(),
            ));
        }
        Ok(parse_token_response(status, &body)?)
    }

    async fn send_retried(
        &self,
        policy: &Backoff,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, String), ArmError> {
        retry(
            policy,
            "azure token",
            |e: &ArmError| match e {
                ArmError::Transport(_) => RetryDecision::Retry,
                ArmError::Api {
                    retryable: true, ..
                } => RetryDecision::Retry,
                _ => RetryDecision::Stop,
            },
            || async {
                let resp = build()
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
    }
}

/// The token of an AAD or IMDS answer, or the error it carries (first line of the AADSTS
/// description only: later lines hold trace ids).
fn parse_token_response(status: u16, body: &str) -> Result<CachedToken, ArmError> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let code = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("token_error");
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

/// The first executable `name` on `path` (the process's `PATH` when `None`).
fn find_on_path(name: &str, path: Option<&str>) -> Option<PathBuf> {
    let path = match path {
        Some(p) => p.to_string(),
        None => std::env::var("PATH").ok()?,
    };
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// A token from `az account get-access-token` (see the module docs).
async fn azure_cli(path: Option<&str>) -> Result<CachedToken, SourceError> {
    let Some(az) = find_on_path("az", path) else {
        return Err(SourceError::Unavailable(
            "the Azure CLI (az) is not on PATH".into(),
        ));
    };
    let mut cmd = tokio::process::Command::new(&az);
    cmd.args([
        "account",
        "get-access-token",
        "--resource",
        ARM_RESOURCE,
        "-o",
        "json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = match tokio::time::timeout(CLI_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(SourceError::Unavailable(format!(
                "the Azure CLI did not answer within {}s",
                CLI_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SourceError::Unavailable(
                "the Azure CLI (az) is not on PATH".into(),
            ));
        }
        Ok(Err(e)) => {
            return Err(SourceError::Failed(ArmError::Auth(format!(
                "cannot run the Azure CLI: {e}"
            ))));
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("az login") || stderr.contains("az account set") {
            return Err(SourceError::Unavailable(
                "the Azure CLI is not logged in; run `az login`".into(),
            ));
        }
        if out.status.code() == Some(127) {
            return Err(SourceError::Unavailable(
                "the Azure CLI (az) is not on PATH".into(),
            ));
        }
        let first = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no error output");
        let first: String = first.chars().take(300).collect();
        return Err(SourceError::Failed(ArmError::Auth(format!(
            "the Azure CLI failed ({}): {first}",
            out.status
        ))));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        ArmError::Auth(format!(
            "the Azure CLI's answer is not the expected JSON: {e}"
        ))
    })?;
    let token = v
        .get("accessToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ArmError::Auth("the Azure CLI's answer has no accessToken".into()))?;
    let expires_in = cli_expires_in(&v, chrono::Utc::now().timestamp()).unwrap_or(3600);
    tracing::debug!(expires_in, "Azure token obtained from the Azure CLI");
    Ok(CachedToken {
        token: token.to_string(),
        expires_at: Instant::now() + Duration::from_secs(expires_in),
    })
}

/// Seconds until the CLI's token expires: `expires_on` (epoch seconds, newer CLIs) or
/// `expiresOn` (local time `YYYY-MM-DD HH:MM:SS.ffffff`).
fn cli_expires_in(v: &Value, now: i64) -> Option<u64> {
    let epoch = match v.get("expires_on") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .or_else(|| {
        let s = v.get("expiresOn")?.as_str()?;
        let naive = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
        Some(
            naive
                .and_local_timezone(chrono::Local)
                .earliest()?
                .timestamp(),
        )
    })?;
    Some(u64::try_from(epoch - now).unwrap_or(0))
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

    #[test]
    fn default_chain_order() {
        let d = AzureCreds::Default(AzureDefaultCreds {});
        let all = |k: &str| {
            Some(
                match k {
                    "AZURE_CLIENT_ID" => "app",
                    "AZURE_CLIENT_SECRET" => "s",
                    "AZURE_TENANT_ID" => "t2",
                    "AZURE_FEDERATED_TOKEN_FILE" => "/var/run/token",
                    "PATH" => "/usr/bin",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let kinds: Vec<_> = TokenSource::chain(&d, "t1", all)
            .iter()
            .map(TokenSource::kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "client_secret",
                "workload_identity",
                "managed_identity",
                "azure_cli"
            ]
        );
        // Workload identity needs the tenant in the environment.
        let no_tenant = |k: &str| {
            (k == "AZURE_CLIENT_ID" || k == "AZURE_FEDERATED_TOKEN_FILE").then(|| "v".to_string())
        };
        let kinds: Vec<_> = TokenSource::chain(&d, "t1", no_tenant)
            .iter()
            .map(TokenSource::kind)
            .collect();
        assert_eq!(kinds, ["managed_identity", "azure_cli"]);
        let wi = TokenSource::chain(&d, "t1", all).remove(1);
        assert!(
            matches!(&wi, TokenSource::WorkloadIdentity { tenant_id, .. } if tenant_id == "t2")
        );
    }

    #[test]
    fn cli_expiry() {
        let v = serde_json::json!({"accessToken": "x", "expires_on": 1_000_600});
        assert_eq!(cli_expires_in(&v, 1_000_000), Some(600));
        let v = serde_json::json!({"accessToken": "x", "expires_on": "1000600"});
        assert_eq!(cli_expires_in(&v, 1_000_000), Some(600));
        let v = serde_json::json!({"expires_on": 5});
        assert_eq!(cli_expires_in(&v, 1_000_000), Some(0));
        let local = chrono::Local::now() + chrono::Duration::seconds(1800);
        let v = serde_json::json!({"expiresOn": local.format("%Y-%m-%d %H:%M:%S%.6f").to_string()});
        let left = cli_expires_in(&v, chrono::Utc::now().timestamp()).unwrap();
        assert!((1790..=1800).contains(&left), "{left}");
        assert_eq!(cli_expires_in(&serde_json::json!({}), 0), None);
    }
}
