//! Reloading catalogs: per-provider version checks, keeping a provider's previous catalog when
//! its new one cannot be loaded, and a shared handle that readers snapshot.
//!
//! The rules are gpuhunt's `Catalog.load`:
//! - a provider whose latest version equals the loaded one is not downloaded again;
//! - a provider that fails keeps its previously loaded catalog (with a warning);
//! - the reload fails only if *every* provider failed;
//! - with a pinned version, any failure fails the reload, so versions are never mixed.
//!
//! Every reload that changes something builds a new [`Catalog`] (and index); unchanged
//! providers share their items with the previous one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::CatalogError;
use super::catalog::{Catalog, ProviderCatalog, csv_files_in, file_version};

/// gpuhunt's reload interval (15 minutes).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// What happened to one provider during a reload.
#[derive(Debug)]
pub enum ProviderUpdate {
    /// The loaded version is still the latest; nothing was downloaded.
    UpToDate,
    /// A new version was loaded.
    Loaded(ProviderCatalog),
    /// Loading failed; the previous catalog (if any) is kept.
    Failed(CatalogError),
}

/// The outcome of a reload.
#[derive(Debug)]
pub struct Reloaded {
    /// The new catalog, or `None` when nothing changed and the previous one stays current.
    pub catalog: Option<Catalog>,
    /// Providers that were (re)loaded.
    pub updated: Vec<String>,
    /// Providers that failed and kept their previous catalog (if they had one).
    pub failed: Vec<(String, CatalogError)>,
}

/// Combines per-provider `updates` with the `previous` catalog under gpuhunt's rules (see the
/// [module docs](self)). `pinned_version` is the version explicitly requested, if any.
pub fn apply_updates(
    previous: Option<&Catalog>,
    updates: Vec<(String, ProviderUpdate)>,
    pinned_version: Option<&str>,
) -> Result<Reloaded, CatalogError> {
    let mut loaded: Vec<ProviderCatalog> = Vec::new();
    let mut failed: Vec<(String, CatalogError)> = Vec::new();
    let mut succeeded = 0usize;
    for (provider, update) in updates {
        match update {
            ProviderUpdate::UpToDate => succeeded += 1,
            ProviderUpdate::Loaded(catalog) => {
                succeeded += 1;
                loaded.push(catalog);
            }
            ProviderUpdate::Failed(error) => {
                if let Some(version) = pinned_version {
                    return Err(CatalogError::PinnedVersion {
                        provider,
                        version: version.to_string(),
                        source: Box::new(error),
                    });
                }
                tracing::warn!(
                    provider = provider.as_str(),
                    error = %error,
                    "failed to load the {provider} catalog; keeping the previously loaded catalog, if any"
                );
                failed.push((provider, error));
            }
        }
    }
    if succeeded == 0
        && let Some((_, error)) = failed.pop()
    {
        return Err(CatalogError::AllProvidersFailed(Box::new(error)));
    }
    let updated: Vec<String> = loaded.iter().map(|p| p.name().to_string()).collect();
    let catalog = if loaded.is_empty() && previous.is_some() {
        None
    } else {
        let mut providers: HashMap<String, ProviderCatalog> = previous
            .map(|c| {
                c.providers()
                    .iter()
                    .map(|p| (p.name().to_string(), p.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for p in loaded {
            providers.insert(p.name().to_string(), p);
        }
        Some(Catalog::from_providers(providers.into_values()))
    };
    Ok(Reloaded {
        catalog,
        updated,
        failed,
    })
}

/// Reloads a directory of `<provider>.csv` files, re-reading only files whose size or mtime
/// changed. A provider whose file disappeared or cannot be read keeps its previous catalog.
pub fn reload_dir(previous: Option<&Catalog>, dir: &Path) -> Result<Reloaded, CatalogError> {
    let mut files = csv_files_in(dir)?;
    if let Some(prev) = previous {
        for p in prev.providers() {
            if !files.iter().any(|(name, _)| name == p.name()) {
                files.push((p.name().to_string(), dir.join(format!("{}.csv", p.name()))));
            }
        }
    }
    let updates = super::format::parallel_map(&files, |(name, path)| {
        let update = match file_version(path) {
            Err(e) => ProviderUpdate::Failed(e),
            Ok(version)
                if previous
                    .and_then(|c| c.provider(name))
                    .is_some_and(|p| p.version() == version) =>
            {
                ProviderUpdate::UpToDate
            }
            Ok(_) => match ProviderCatalog::from_csv_path(name, path) {
                Ok(p) => ProviderUpdate::Loaded(p),
                Err(e) => ProviderUpdate::Failed(e),
            },
        };
        (name.clone(), update)
    });
    apply_updates(previous, updates, None)
}

/// A catalog shared between readers and a reloader: readers take cheap snapshots; a reload
/// swaps in a new catalog without blocking queries that are running on the old one.
#[derive(Debug, Clone)]
pub struct SharedCatalog {
    current: Arc<RwLock<Arc<Catalog>>>,
}

impl SharedCatalog {
    /// Shares `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(catalog))),
        }
    }

    /// The current catalog.
    pub fn snapshot(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Makes `catalog` the current one.
    pub fn replace(&self, catalog: Catalog) {
        let catalog = Arc::new(catalog);
        match self.current.write() {
            Ok(mut guard) => *guard = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
    }

    /// Applies a reload outcome: swaps in its catalog when it has one. Returns whether it did.
    pub fn apply(&self, reloaded: Reloaded) -> bool {
        match reloaded.catalog {
            Some(catalog) => {
                self.replace(catalog);
                true
            }
            None => false,
        }
    }

    /// Reloads from a directory (see [`reload_dir`]) and swaps in the result. The returned
    /// outcome lists what was updated and what failed; its `catalog` has been taken (it is now
    /// the current one) and is `None`.
    pub fn reload_dir(&self, dir: &Path) -> Result<Reloaded, CatalogError> {
        let mut reloaded = reload_dir(Some(&self.snapshot()), dir)?;
        if let Some(catalog) = reloaded.catalog.take() {
            self.replace(catalog);
        }
        Ok(reloaded)
    }
}

/// Where a periodic reloader gets catalogs from.
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub enum CatalogSource {
    /// A directory of `<provider>.csv` files (`GPUHUNT_CATALOG_DIR`).
    Dir(std::path::PathBuf),
    /// gpuhunt's v3 HTTP layout.
    Http(super::http::HttpCatalogSource),
}

#[cfg(feature = "http")]
impl CatalogSource {
    /// `GPUHUNT_CATALOG_DIR` when set, else the HTTP catalogs at `GPUHUNT_CATALOG_URL` (or
    /// gpuhunt's default bucket) — gpuhunt's precedence.
    pub fn from_env() -> Result<Self, CatalogError> {
        match super::catalog::catalog_dir_from_env() {
            Some(dir) => Ok(CatalogSource::Dir(dir)),
            None => Ok(CatalogSource::Http(
                super::http::HttpCatalogSource::from_env()?,
            )),
        }
    }

    /// Loads (or reloads, given the `previous` catalog) from this source.
    pub async fn reload(&self, previous: Option<Arc<Catalog>>) -> Result<Reloaded, CatalogError> {
        match self {
            CatalogSource::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || reload_dir(previous.as_deref(), &dir))
                    .await
                    .map_err(|e| CatalogError::Csv {
                        file: "catalog directory".into(),
                        message: e.to_string(),
                    })?
            }
            CatalogSource::Http(http) => http.reload(previous.as_deref(), None).await,
        }
    }
}

/// Spawns a task that reloads `shared` from `source` every `interval` (gpuhunt uses
/// [`RELOAD_INTERVAL`]), logging failures and keeping the current catalog on error.
/// Abort the returned handle to stop it.
#[cfg(feature = "http")]
pub fn spawn_periodic_reload(
    shared: SharedCatalog,
    source: CatalogSource,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match source.reload(Some(shared.snapshot())).await {
                Ok(reloaded) => {
                    let updated = reloaded.updated.clone();
                    if shared.apply(reloaded) {
                        tracing::info!(?updated, "offer catalog reloaded");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "offer catalog reload failed; keeping the current catalog")
                }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HEADER: &str = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n";

    fn provider(name: &str, version: &str, rows: usize) -> ProviderCatalog {
        let body: String = (0..rows)
            .map(|i| format!("{name}-{i},loc,{i},1,1,0,,,False,,,,,\n"))
            .collect();
        ProviderCatalog::from_csv(name, version, format!("{HEADER}{body}").as_bytes(), "test")
            .unwrap()
    }

    #[test]
    fn failures_keep_previous_and_all_failing_errors() {
        let prev = Catalog::from_providers([provider("aws", "1", 2), provider("gcp", "1", 3)]);
        let r = apply_updates(
            Some(&prev),
            vec![
                (
                    "aws".into(),
                    ProviderUpdate::Failed(CatalogError::InvalidQuery("boom".into())),
                ),
                (
                    "gcp".into(),
                    ProviderUpdate::Loaded(provider("gcp", "2", 1)),
                ),
            ],
            None,
        )
        .unwrap();
        let cat = r.catalog.unwrap();
        assert_eq!(cat.provider("aws").unwrap().version(), "1");
        assert_eq!(cat.provider("gcp").unwrap().version(), "2");
        assert_eq!(cat.len(), 3);
        assert_eq!(r.failed.len(), 1);

        let unchanged = apply_updates(
            Some(&cat),
            vec![("aws".into(), ProviderUpdate::UpToDate)],
            None,
        )
        .unwrap();
        assert!(unchanged.catalog.is_none());

        let all_failed = apply_updates(
            Some(&cat),
            vec![(
                "aws".into(),
                ProviderUpdate::Failed(CatalogError::InvalidQuery("x".into())),
            )],
            None,
        );
        assert!(matches!(
            all_failed,
            Err(CatalogError::AllProvidersFailed(_))
        ));

        let pinned = apply_updates(
            Some(&cat),
            vec![
                ("gcp".into(), ProviderUpdate::UpToDate),
                (
                    "aws".into(),
                    ProviderUpdate::Failed(CatalogError::InvalidQuery("x".into())),
                ),
            ],
            Some("20250101-1"),
        );
        assert!(matches!(pinned, Err(CatalogError::PinnedVersion { .. })));
    }

    #[test]
    fn dir_reload_reads_only_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("aws.csv"),
            format!("{HEADER}a,l,1,1,1,0,,,False,,,,,\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("gcp.csv"),
            format!("{HEADER}g,l,1,1,1,0,,,False,,,,,\n"),
        )
        .unwrap();
        let shared = SharedCatalog::new(Catalog::from_dir(dir.path()).unwrap());
        let before = shared.snapshot();

        let r = reload_dir(Some(&before), dir.path()).unwrap();
        assert!(r.catalog.is_none() && r.updated.is_empty());

        std::fs::write(
            dir.path().join("gcp.csv"),
            format!("{HEADER}g,l,1,1,1,0,,,False,,,,,\ng2,l,2,1,1,0,,,False,,,,,\n"),
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("aws.csv")).unwrap();
        let r = shared.reload_dir(dir.path()).unwrap();
        assert_eq!(r.failed.len(), 1, "the vanished aws.csv is reported");
        assert_eq!(r.updated, ["gcp"]);
        let after = shared.snapshot();
        assert_eq!(after.provider("gcp").unwrap().len(), 2);
        assert_eq!(
            after.provider("aws").unwrap().len(),
            1,
            "aws keeps its previous catalog"
        );
        assert_eq!(
            before.provider("gcp").unwrap().len(),
            1,
            "old snapshots are untouched"
        );
    }
}
