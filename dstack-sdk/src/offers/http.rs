//! Loading gpuhunt's published catalogs over HTTP (the v3 per-provider layout).
//!
//! For each provider: `GET {base}/{provider}/version` gives a text version such as
//! `20250821-1234`; `GET {base}/{provider}/{version}/catalog.zip` gives a zip holding
//! `{provider}.csv`. The base is `GPUHUNT_CATALOG_URL` or gpuhunt's bucket. Providers are
//! fetched concurrently; see [`reload`](super::reload) for the failure rules.

use std::sync::Arc;
use std::time::Duration;

use super::CatalogError;
use super::catalog::{Catalog, ProviderCatalog};
use super::providers::OFFLINE_PROVIDERS;
use super::reload::{ProviderUpdate, Reloaded, apply_updates};

/// The environment variable that overrides the catalog base URL.
pub const CATALOG_URL_ENV: &str = "GPUHUNT_CATALOG_URL";

/// gpuhunt's default catalog base URL.
pub const DEFAULT_CATALOG_URL: &str = "https://dstack-gpu-pricing.s3.eu-west-1.amazonaws.com/v3";

/// A gpuhunt v3 catalog server and the providers to load from it.
#[derive(Debug, Clone)]
pub struct HttpCatalogSource {
    client: reqwest::Client,
    base_url: Arc<str>,
    providers: Vec<String>,
}

/// Builds the default HTTP client (installing the ring TLS provider once).
fn default_client() -> Result<reqwest::Client, CatalogError> {
    // Another part of the process may have installed a provider already; that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| CatalogError::Http {
            url: String::new(),
            message: format!("cannot build HTTP client: {e}"),
        })
}

impl HttpCatalogSource {
    /// A source at `base_url` (trailing slashes are ignored) for gpuhunt's offline providers.
    pub fn new(base_url: &str) -> Result<Self, CatalogError> {
        Ok(Self::with_client(default_client()?, base_url))
    }

    /// Like [`new`](Self::new), with a caller-built client (proxies, timeouts, …).
    pub fn with_client(client: reqwest::Client, base_url: &str) -> Self {
        Self {
            client,
            base_url: base_url.trim_end_matches('/').into(),
            providers: OFFLINE_PROVIDERS.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// The source at `GPUHUNT_CATALOG_URL`, or at [`DEFAULT_CATALOG_URL`].
    pub fn from_env() -> Result<Self, CatalogError> {
        let url =
            std::env::var(CATALOG_URL_ENV).unwrap_or_else(|_| DEFAULT_CATALOG_URL.to_string());
        Self::new(&url)
    }

    /// Loads these providers instead of gpuhunt's offline providers.
    pub fn with_providers<S: AsRef<str>>(mut self, providers: impl IntoIterator<Item = S>) -> Self {
        self.providers = providers
            .into_iter()
            .map(|p| p.as_ref().to_lowercase())
            .collect();
        self
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The providers this source loads.
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, CatalogError> {
        let http_error = |e: reqwest::Error| CatalogError::Http {
            url: url.to_string(),
            message: e.to_string(),
        };
        let response = self.client.get(url).send().await.map_err(http_error)?;
        let response = response.error_for_status().map_err(http_error)?;
        Ok(response.bytes().await.map_err(http_error)?.to_vec())
    }

    /// The latest published version of `provider`'s catalog.
    pub async fn latest_version(&self, provider: &str) -> Result<String, CatalogError> {
        let url = format!("{}/{provider}/version", self.base_url);
        let body = self.get(&url).await?;
        let text = std::str::from_utf8(&body).map_err(|e| CatalogError::Http {
            url: url.clone(),
            message: format!("version is not UTF-8: {e}"),
        })?;
        Ok(text.trim().to_string())
    }

    /// Downloads and parses `provider`'s catalog at `version`.
    pub async fn fetch(
        &self,
        provider: &str,
        version: &str,
    ) -> Result<ProviderCatalog, CatalogError> {
        let url = format!("{}/{provider}/{version}/catalog.zip", self.base_url);
        let body = self.get(&url).await?;
        let (provider, version) = (provider.to_string(), version.to_string());
        tokio::task::spawn_blocking(move || {
            ProviderCatalog::from_zip_bytes(&provider, version, &body, &url)
        })
        .await
        .map_err(|e| CatalogError::Http {
            url: String::new(),
            message: format!("catalog parsing task failed: {e}"),
        })?
    }

    /// One provider's reload step: skip if `loaded_version` is current, else download.
    async fn update(
        &self,
        provider: &str,
        pinned: Option<&str>,
        loaded_version: Option<&str>,
    ) -> ProviderUpdate {
        let version = match pinned {
            Some(v) => v.to_string(),
            None => match self.latest_version(provider).await {
                Ok(v) => v,
                Err(e) => return ProviderUpdate::Failed(e),
            },
        };
        if loaded_version == Some(version.as_str()) {
            tracing::debug!(provider, version, "catalog is up to date");
            return ProviderUpdate::UpToDate;
        }
        tracing::debug!(provider, version, "downloading catalog");
        match self.fetch(provider, &version).await {
            Ok(catalog) => ProviderUpdate::Loaded(catalog),
            Err(e) => ProviderUpdate::Failed(e),
        }
    }

    /// Loads every provider concurrently, reusing `previous`'s providers whose version is
    /// unchanged. `version` pins every provider to one version (then any failure is an error).
    pub async fn reload(
        &self,
        previous: Option<&Catalog>,
        version: Option<&str>,
    ) -> Result<Reloaded, CatalogError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, provider) in self.providers.iter().enumerate() {
            let source = self.clone();
            let provider = provider.clone();
            let pinned = version.map(str::to_string);
            let loaded = previous
                .and_then(|c| c.provider(&provider))
                .map(|p| p.version().to_string());
            tasks.spawn(async move {
                let update = source
                    .update(&provider, pinned.as_deref(), loaded.as_deref())
                    .await;
                (i, provider, update)
            });
        }
        let mut updates = Vec::with_capacity(self.providers.len());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(done) => updates.push(done),
                Err(e) => {
                    return Err(CatalogError::Http {
                        url: self.base_url.to_string(),
                        message: format!("load task failed: {e}"),
                    });
                }
            }
        }
        updates.sort_by_key(|(i, _, _)| *i);
        apply_updates(
            previous,
            updates.into_iter().map(|(_, p, u)| (p, u)).collect(),
            version,
        )
    }

    /// Loads a fresh catalog (every provider's latest version, or `version` for all).
    pub async fn load(&self, version: Option<&str>) -> Result<Catalog, CatalogError> {
        let reloaded = self.reload(None, version).await?;
        Ok(reloaded
            .catalog
            .unwrap_or_else(|| Catalog::from_providers([])))
    }
}

impl Catalog {
    /// Loads gpuhunt's published catalogs: from `GPUHUNT_CATALOG_DIR` when set (as gpuhunt
    /// does), otherwise over HTTP from `GPUHUNT_CATALOG_URL` or gpuhunt's bucket.
    pub async fn load_http() -> Result<Catalog, CatalogError> {
        if let Some(dir) = super::catalog::catalog_dir_from_env() {
            return tokio::task::spawn_blocking(move || Catalog::from_dir(dir))
                .await
                .map_err(|e| CatalogError::Csv {
                    file: "catalog directory".into(),
                    message: e.to_string(),
                })?;
        }
        HttpCatalogSource::from_env()?.load(None).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::offers::SharedCatalog;

    const HEADER: &str = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n";

    /// Routes of the fake catalog server: path → body (missing paths answer 404), plus a log of
    /// requested paths.
    #[derive(Clone, Default)]
    struct Server {
        routes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        /// Starts the server on a free port; returns its base URL.
        fn start(&self) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let me = self.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        continue;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    me.log.lock().unwrap().push(path.clone());
                    let body = me.routes.lock().unwrap().get(&path).cloned();
                    let (status, body) = match body {
                        Some(b) => ("200 OK", b),
                        None => ("404 Not Found", b"not found".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
            });
            format!("http://{addr}/v3/")
        }

        fn publish(&self, provider: &str, version: &str, rows: &[(&str, f64)]) {
            let body: String = rows
                .iter()
                .map(|(n, p)| format!("{n},loc,{p},2,8,0,,,False,,,,,\n"))
                .collect();
            let csv = format!("{HEADER}{body}");
            let mut zip = std::io::Cursor::new(Vec::new());
            {
                let mut w = zip::ZipWriter::new(&mut zip);
                w.start_file(
                    format!("{provider}.csv"),
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
                w.write_all(csv.as_bytes()).unwrap();
                w.finish().unwrap();
            }
            let mut routes = self.routes.lock().unwrap();
            routes.insert(
                format!("/v3/{provider}/version"),
                format!("{version}\n").into_bytes(),
            );
            routes.insert(
                format!("/v3/{provider}/{version}/catalog.zip"),
                zip.into_inner(),
            );
        }

        fn set_version_only(&self, provider: &str, version: &str) {
            self.routes.lock().unwrap().insert(
                format!("/v3/{provider}/version"),
                version.as_bytes().to_vec(),
            );
        }

        fn count(&self, path: &str) -> usize {
            self.log
                .lock()
                .unwrap()
                .iter()
                .filter(|p| *p == path)
                .count()
        }
    }

    fn source(base: &str) -> HttpCatalogSource {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        HttpCatalogSource::with_client(client, base).with_providers(["aws", "GCP"])
    }

    fn names(c: &Catalog) -> Vec<String> {
        c.iter().map(|i| i.instance_name.to_string()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loads_and_reloads_over_http() {
        let server = Server::default();
        let base = server.start();
        server.publish("aws", "20250101-1", &[("a1", 1.0), ("a2", 3.0)]);
        server.publish("gcp", "20250101-7", &[("g1", 2.0)]);
        let src = source(&base);
        assert_eq!(src.base_url(), base.trim_end_matches('/'));

        let first = src.load(None).await.unwrap();
        assert_eq!(names(&first), ["a1", "g1", "a2"]);
        assert_eq!(first.provider("aws").unwrap().version(), "20250101-1");

        // aws announces a new version whose zip is missing; gcp is unchanged.
        server.set_version_only("aws", "20250101-2");
        let r = src.reload(Some(&first), None).await.unwrap();
        assert!(r.catalog.is_none(), "nothing new could be loaded");
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, "aws");
        assert_eq!(
            server.count("/v3/gcp/20250101-7/catalog.zip"),
            1,
            "unchanged versions are not downloaded"
        );

        // the shared handle keeps serving the previous aws catalog
        let shared = SharedCatalog::new(first);
        assert!(!shared.apply(r));
        assert_eq!(
            shared.snapshot().provider("aws").unwrap().version(),
            "20250101-1"
        );

        // once published, the new aws version replaces the old one
        server.publish("aws", "20250101-2", &[("a3", 0.5)]);
        let r = src.reload(Some(&shared.snapshot()), None).await.unwrap();
        assert_eq!(r.updated, ["aws"]);
        assert!(shared.apply(r));
        assert_eq!(names(&shared.snapshot()), ["a3", "g1"]);

        // every provider failing is an error, and the current catalog stays
        server.routes.lock().unwrap().clear();
        let err = src
            .reload(Some(&shared.snapshot()), None)
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::AllProvidersFailed(_)), "{err}");
        assert_eq!(shared.snapshot().len(), 2);

        // a pinned version fails as a whole
        server.publish("aws", "pinned", &[("p", 1.0)]);
        let err = src.reload(None, Some("pinned")).await.unwrap_err();
        assert!(
            matches!(err, CatalogError::PinnedVersion { ref provider, .. } if provider == "gcp"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_reload_swaps_catalogs() {
        let server = Server::default();
        let base = server.start();
        server.publish("aws", "1", &[("a1", 1.0)]);
        server.publish("gcp", "1", &[("g1", 2.0)]);
        let src = source(&base);
        let shared = SharedCatalog::new(src.load(None).await.unwrap());
        server.publish("gcp", "2", &[("g2", 2.0), ("g3", 4.0)]);
        let task = crate::offers::reload::spawn_periodic_reload(
            shared.clone(),
            crate::offers::reload::CatalogSource::Http(src),
            Duration::from_millis(50),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while shared.snapshot().len() != 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        assert_eq!(names(&shared.snapshot()), ["a1", "g2", "g3"]);
    }
}
