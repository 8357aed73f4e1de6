//! Server-wide settings every backend receives.

use std::time::Duration;

use super::endpoint::Endpoints;
use super::retry::Backoff;
use crate::offers::{Catalog, SharedCatalog};

/// The env var that overrides the agent download URL template.
pub const AGENT_DOWNLOAD_URL_ENV: &str = "DSTACK_AGENT_DOWNLOAD_URL";

/// The env var with the server's URL as instances reach it (dstack's `DSTACK_SERVER_URL`):
/// when set and [`AGENT_DOWNLOAD_URL_ENV`] is not, VMs download the agent from the server
/// ([`AgentDownload::FromServer`]).
pub const SERVER_URL_ENV: &str = "DSTACK_SERVER_URL";

/// The default agent download URL template (`{version}`, `{arch}` = `amd64` / `arm64`).
pub const DEFAULT_AGENT_DOWNLOAD_URL: &str = "https://github.com/dstack-sdk/dstack-sdk/releases/download/v{version}/dstack-server-linux-{arch}";

/// The path under the server URL that serves the server's own agent binary
/// (`{arch}` = `amd64` / `arm64`), used by [`AgentDownload::FromServer`].
pub const SERVER_AGENT_PATH: &str = "/agent/download/dstack-server-linux-{arch}";

/// Where VMs download the host agent (`dstack-server agent`) from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentDownload {
    /// A URL template with `{version}` and `{arch}` placeholders.
    Template(String),
    /// The server serves its own binary at `<base_url>` + [`SERVER_AGENT_PATH`].
    FromServer {
        /// The server's URL as instances reach it.
        base_url: String,
    },
}

impl AgentDownload {
    /// `DSTACK_AGENT_DOWNLOAD_URL` when set; else the server itself when `DSTACK_SERVER_URL`
    /// is set; else [`DEFAULT_AGENT_DOWNLOAD_URL`].
    pub fn from_env() -> Self {
        Self::from_values(
            std::env::var(AGENT_DOWNLOAD_URL_ENV).ok().as_deref(),
            std::env::var(SERVER_URL_ENV).ok().as_deref(),
        )
    }

    /// [`Self::from_env`] with the two values given: an explicit download URL template wins,
    /// then the server's own URL, then the default template (blank values count as unset).
    pub fn from_values(download_url: Option<&str>, server_url: Option<&str>) -> Self {
        let set = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(String::from);
        if let Some(url) = set(download_url) {
            Self::Template(url)
        } else if let Some(base_url) = set(server_url) {
            Self::FromServer { base_url }
        } else {
            Self::Template(DEFAULT_AGENT_DOWNLOAD_URL.to_string())
        }
    }

    /// The URL for `version` and `arch` (`amd64` / `arm64`).
    pub fn url(&self, version: &str, arch: &str) -> String {
        let template = match self {
            Self::Template(t) => t.clone(),
            Self::FromServer { base_url } => {
                format!("{}{}", base_url.trim_end_matches('/'), SERVER_AGENT_PATH)
            }
        };
        template
            .replace("{version}", version)
            .replace("{arch}", arch)
    }
}

/// What the engine passes to every backend it builds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendSettings {
    /// This server's id, tagged on every resource (`dstack_server_id`) so a sweep can find
    /// resources the database does not know.
    pub server_id: String,
    /// Where instances download the host agent.
    pub agent_download: AgentDownload,
    /// The agent version put into the download URL.
    pub agent_version: String,
    /// Per-service endpoint overrides (emulators, private endpoints).
    pub endpoints: Endpoints,
    /// Retries for throttling and transient errors.
    pub retry: Backoff,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// The offer catalog (gpuhunt format).
    pub catalog: SharedCatalog,
}

impl BackendSettings {
    /// Settings with defaults: agent URL from `DSTACK_AGENT_DOWNLOAD_URL` (or the default
    /// template), endpoint overrides from the environment, default back-off, and the catalog
    /// of `GPUHUNT_CATALOG_DIR` (empty when unset or unreadable).
    pub fn new(server_id: impl Into<String>) -> Self {
        let catalog = match Catalog::from_env_dir() {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot load the catalog directory; no offers");
                Catalog::from_providers([])
            }
            None => Catalog::from_providers([]),
        };
        Self {
            server_id: server_id.into(),
            agent_download: AgentDownload::from_env(),
            agent_version: crate::SERVER_VERSION.to_string(),
            endpoints: Endpoints::from_env(),
            retry: Backoff::default(),
            request_timeout: Duration::from_secs(60),
            catalog: SharedCatalog::new(catalog),
        }
    }

    /// Uses `catalog` for offers.
    pub fn with_catalog(mut self, catalog: SharedCatalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// Sets the agent download.
    pub fn with_agent_download(mut self, download: AgentDownload) -> Self {
        self.agent_download = download;
        self
    }

    /// Sets the endpoint overrides.
    pub fn with_endpoints(mut self, endpoints: Endpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn agent_url_templates() {
        let t = AgentDownload::Template("https://x/{version}/agent-{arch}".into());
        assert_eq!(t.url("0.1.0", "arm64"), "https://x/0.1.0/agent-arm64");
        let s = AgentDownload::FromServer {
            base_url: "http://10.0.0.1:3000/".into(),
        };
        assert_eq!(
            s.url("0.1.0", "amd64"),
            "http://10.0.0.1:3000/agent/download/dstack-server-linux-amd64"
        );
    }

    #[test]
    fn agent_download_defaults_to_the_server_url() {
        // No download URL: the server's own route when its URL is known.
        let d = AgentDownload::from_values(None, Some("https://dstack.example.com/"));
        assert_eq!(
            d,
            AgentDownload::FromServer {
                base_url: "https://dstack.example.com/".into()
            }
        );
        assert_eq!(
            d.url("0.22.5", "arm64"),
            "https://dstack.example.com/agent/download/dstack-server-linux-arm64"
        );
        // An explicit template wins over the server URL.
        assert_eq!(
            AgentDownload::from_values(Some("https://x/{arch}"), Some("http://s:3000")),
            AgentDownload::Template("https://x/{arch}".into())
        );
        // Neither (or blank values): the release download.
        for (d, s) in [(None, None), (Some(" "), Some(""))] {
            assert_eq!(
                AgentDownload::from_values(d, s),
                AgentDownload::Template(DEFAULT_AGENT_DOWNLOAD_URL.into())
            );
        }
        // The bootstrap of a VM uses it.
        let settings = BackendSettings::new("sid").with_agent_download(AgentDownload::from_values(
            None,
            Some("http://10.1.2.3:3000"),
        ));
        let b = crate::backends::common::cloud_init::AgentBootstrap::new(&settings, "amd64");
        assert_eq!(
            b.download_url,
            "http://10.1.2.3:3000/agent/download/dstack-server-linux-amd64"
        );
    }
}
