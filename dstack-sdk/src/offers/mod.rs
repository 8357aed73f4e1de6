//! gpuhunt-format offer catalogs, a columnar index and the gpuhunt-exact matcher.
//!
//! This module is a drop-in for gpuhunt 0.1.34's offline catalog: the same rows ([`item`]),
//! CSV format and loader rules ([`format`](mod@format)), sources and reloads ([`catalog`], [`reload`],
//! `http`), query filter and predicate ([`filter`]) and result order ([`order`]), answered from
//! an index built once per load ([`index`]) instead of a scan per query.
//!
//! ```
//! use dstack_sdk::offers::{Catalog, CatalogItem, ProviderCatalog, QueryFilter};
//!
//! let csv = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n\
//!            cpu_4x,us-east-1,0.2,4,16,0,,,False,,,,x86,{}\n\
//!            gpu_1x_a10,us-east-1,0.75,30,200,1,A10,24,False,,nvidia,,x86,{}\n";
//! let lambda = ProviderCatalog::from_csv("lambdalabs", "local", csv.as_bytes(), "lambdalabs.csv")?;
//! let catalog = Catalog::from_providers([lambda]);
//!
//! let filter: QueryFilter = serde_json::from_value(serde_json::json!({
//!     "provider": "LambdaLabs", "gpu_name": ["a10"], "min_gpu_count": 0,
//! }))?;
//! let offers = catalog.query(&filter)?;
//! let names: Vec<&str> = offers.iter().map(|o| &*o.instance_name).collect();
//! assert_eq!(names, ["cpu_4x", "gpu_1x_a10"]); // min_gpu_count=0 lets CPU-only rows through
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

pub mod accelerators;
pub mod catalog;
pub mod filter;
pub mod format;
#[cfg(feature = "http")]
pub mod http;
pub mod index;
pub mod item;
pub mod order;
pub mod providers;
pub mod reload;

pub use accelerators::{
    AcceleratorInfo, AcceleratorVendor, ComputeCapability, KNOWN_ACCELERATORS, find_accelerators,
};
pub use catalog::{
    CATALOG_DIR_ENV, Catalog, ProviderCatalog, QueryIter, QueryResult, catalog_dir_from_env,
};
pub use filter::{QueryFilter, matches};
pub use format::{CATALOG_V2_FIELDS, ParsedCsv, SkippedRow, parse_catalog_csv};
#[cfg(feature = "http")]
pub use http::{CATALOG_URL_ENV, DEFAULT_CATALOG_URL, HttpCatalogSource};
pub use index::{CatalogIndex, RowRef};
pub use item::{CatalogItem, CpuArchitecture, ProviderData};
pub use order::{merge_by_price, select_offers, sort_available_first};
pub use providers::{OFFLINE_PROVIDERS, ONLINE_PROVIDERS};
pub use reload::{ProviderUpdate, RELOAD_INTERVAL, Reloaded, SharedCatalog};

/// Errors of catalog loading and querying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A local file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A catalog file is not readable CSV (e.g. not UTF-8).
    #[error("cannot parse catalog {file}: {message}")]
    Csv {
        /// The file (or archive entry).
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A zip archive could not be read.
    #[error("cannot read zip archive {file}: {message}")]
    Zip {
        /// The archive.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A zip archive lacks the expected `<provider>.csv`.
    #[error("zip archive {file} has no entry {entry}")]
    MissingZipEntry {
        /// The archive.
        file: String,
        /// The missing entry name.
        entry: String,
    },
    /// Downloading a catalog failed.
    #[error("request to {url} failed: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A query named a provider that gpuhunt does not know.
    #[error("unknown provider: {0}")]
    UnknownProvider(String),
    /// A query named an online provider that this catalog does not hold.
    #[error("provider is not loaded: {0}")]
    ProviderNotLoaded(String),
    /// A query filter could not be parsed.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A provider could not be loaded at an explicitly requested version.
    #[error("failed to load the {provider} catalog {version}: {source}")]
    PinnedVersion {
        /// The provider.
        provider: String,
        /// The requested version.
        version: String,
        /// Why it failed.
        #[source]
        source: Box<CatalogError>,
    },
    /// No provider could be loaded.
    #[error("failed to load catalogs of all providers: {0}")]
    AllProvidersFailed(#[source] Box<CatalogError>),
}

impl CatalogError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CatalogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The SDK error kind this error maps to.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind;
        match self {
            CatalogError::Http { .. } => ErrorKind::Transport,
            CatalogError::UnknownProvider(_) | CatalogError::InvalidQuery(_) => {
                ErrorKind::Validation
            }
            CatalogError::ProviderNotLoaded(_) => ErrorKind::BackendNotAvailable,
            CatalogError::PinnedVersion { source, .. }
            | CatalogError::AllProvidersFailed(source) => source.kind(),
            CatalogError::Io { .. }
            | CatalogError::Csv { .. }
            | CatalogError::Zip { .. }
            | CatalogError::MissingZipEntry { .. } => ErrorKind::Internal,
        }
    }
}

impl From<CatalogError> for crate::Error {
    fn from(e: CatalogError) -> Self {
        match &e {
            CatalogError::UnknownProvider(_) => {
                crate::Error::validation(&["provider"], e.to_string())
            }
            _ => crate::Error::new(e.kind(), e.to_string()),
        }
    }
}
