//! Per-provider catalogs, the loaded catalog and its local sources.
//!
//! Sources: a directory of `<provider>.csv` files ([`Catalog::from_dir`], honouring
//! `GPUHUNT_CATALOG_DIR` through [`Catalog::from_env_dir`]), a zip of CSVs
//! ([`Catalog::from_zip`]), in-memory CSVs ([`ProviderCatalog::from_csv`]), or gpuhunt's v3 HTTP
//! layout (`Catalog::load_http`, behind the `http` feature). The CSV rules are in
//! [`format`](mod@super::format).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::CatalogError;
use super::filter::QueryFilter;
use super::format::{CsvInput, parse_catalog_csv, parse_catalog_csvs};
use super::index::{CatalogIndex, RowRef};
use super::item::CatalogItem;
use super::providers::{is_known_provider, is_online_provider, provider_sort_key};

/// The environment variable that points gpuhunt (and [`Catalog::from_env_dir`]) at a local
/// directory of `<provider>.csv` files instead of the published catalogs.
pub const CATALOG_DIR_ENV: &str = "GPUHUNT_CATALOG_DIR";

/// The loaded catalog of one provider: gpuhunt's `ProviderCatalog{version, items}`.
///
/// Cheap to clone: the items are shared.
#[derive(Clone)]
pub struct ProviderCatalog {
    name: String,
    version: String,
    items: Arc<Vec<CatalogItem>>,
}

impl ProviderCatalog {
    /// A provider catalog from items in the provider's own order (normally price ascending).
    /// The name is lowercased and every item's `provider` is set to it.
    pub fn new(name: &str, version: impl Into<String>, mut items: Vec<CatalogItem>) -> Self {
        let name = name.to_lowercase();
        let shared: Arc<str> = Arc::from(name.as_str());
        for item in items.iter_mut().filter(|i| *i.provider != *name) {
            item.provider = Arc::clone(&shared);
        }
        Self {
            name,
            version: version.into(),
            items: Arc::new(items),
        }
    }

    /// Parses `<provider>.csv` content; malformed rows are skipped with a warning.
    pub fn from_csv(
        name: &str,
        version: impl Into<String>,
        data: &[u8],
        source: &str,
    ) -> Result<Self, CatalogError> {
        let name = name.to_lowercase();
        let parsed = parse_catalog_csv(data, &name, source)?;
        Ok(Self {
            name,
            version: version.into(),
            items: Arc::new(parsed.items),
        })
    }

    /// Reads and parses a CSV file; the version is derived from the file's size and mtime.
    pub fn from_csv_path(name: &str, path: &Path) -> Result<Self, CatalogError> {
        let data = std::fs::read(path).map_err(|e| CatalogError::io(path, e))?;
        let version = file_version(path)?;
        Self::from_csv(name, version, &data, &path.display().to_string())
    }

    /// Reads `<provider>.csv` from a v3 `catalog.zip`.
    pub fn from_zip_bytes(
        name: &str,
        version: impl Into<String>,
        zip: &[u8],
        source: &str,
    ) -> Result<Self, CatalogError> {
        let name = name.to_lowercase();
        let entry = format!("{name}.csv");
        let mut archive = open_zip(zip, source)?;
        let mut file = archive.by_name(&entry).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => CatalogError::MissingZipEntry {
                file: source.to_string(),
                entry: entry.clone(),
            },
            other => CatalogError::Zip {
                file: source.to_string(),
                message: other.to_string(),
            },
        })?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| CatalogError::Zip {
            file: source.to_string(),
            message: e.to_string(),
        })?;
        Self::from_csv(&name, version, &data, &format!("{source}!{entry}"))
    }

    /// The provider name (lowercase).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The catalog version (`YYYYMMDD-<run>` for published catalogs; a file stamp for local
    /// files).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The items, in the provider's order.
    pub fn items(&self) -> &[CatalogItem] {
        &self.items
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the provider has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the items are in non-decreasing price order (under `f64::total_cmp`, the order
    /// the merge uses).
    pub fn is_price_sorted(&self) -> bool {
        self.items
            .windows(2)
            .all(|w| w[0].price.total_cmp(&w[1].price).is_le())
    }
}

fn open_zip<'a>(
    zip: &'a [u8],
    source: &str,
) -> Result<zip::ZipArchive<std::io::Cursor<&'a [u8]>>, CatalogError> {
    zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| CatalogError::Zip {
        file: source.to_string(),
        message: e.to_string(),
    })
}

/// A version stamp for a local file: its size and modification time.
pub(crate) fn file_version(path: &Path) -> Result<String, CatalogError> {
    let meta = std::fs::metadata(path).map_err(|e| CatalogError::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(
            || "unknown".to_string(),
            |d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        );
    Ok(format!("file-{mtime}-{}", meta.len()))
}

/// The `<provider>.csv` files of a directory, as (provider, path), sorted by provider.
pub(crate) fn csv_files_in(dir: &Path) -> Result<Vec<(String, PathBuf)>, CatalogError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| CatalogError::io(dir, e))? {
        let path = entry.map_err(|e| CatalogError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "csv")
            && path.is_file()
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            files.push((stem.to_lowercase(), path));
        }
    }
    files.sort();
    Ok(files)
}

/// A loaded catalog: every provider's items plus the index that answers queries.
///
/// Built once per load (or reload) and then read-only; share it behind an `Arc`.
pub struct Catalog {
    providers: Vec<ProviderCatalog>,
    index: CatalogIndex,
}

impl Catalog {
    /// A catalog from provider catalogs. Providers are put in canonical order (gpuhunt's
    /// provider order, then others by name), which is also the tie-break between providers for
    /// offers of equal price. A repeated provider replaces the earlier one.
    pub fn from_providers(providers: impl IntoIterator<Item = ProviderCatalog>) -> Self {
        let mut by_name: HashMap<String, ProviderCatalog> = HashMap::new();
        for p in providers {
            by_name.insert(p.name.clone(), p);
        }
        let mut providers: Vec<ProviderCatalog> = by_name.into_values().collect();
        providers.sort_by_cached_key(|p| provider_sort_key(&p.name));
        let index = CatalogIndex::build(&providers);
        Self { providers, index }
    }

    /// Loads every `<provider>.csv` of a directory (the provider is the lowercased file stem).
    /// Files are parsed in parallel. Each provider's version is a stamp of the file's size and
    /// mtime, so [`reload_dir`](super::reload::reload_dir) re-reads only changed files.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let files = csv_files_in(dir.as_ref())?;
        let mut loaded = Vec::with_capacity(files.len());
        for (name, path) in &files {
            let data = std::fs::read(path).map_err(|e| CatalogError::io(path, e))?;
            loaded.push((name, path.display().to_string(), file_version(path)?, data));
        }
        let inputs: Vec<CsvInput<'_>> = loaded
            .iter()
            .map(|(name, source, _, data)| CsvInput {
                provider: name,
                source,
                data,
            })
            .collect();
        let parsed = parse_catalog_csvs(&inputs);
        let mut providers = Vec::with_capacity(files.len());
        for ((name, _, version, _), result) in loaded.iter().zip(parsed) {
            providers.push(ProviderCatalog::new(name, version.clone(), result?.items));
        }
        Ok(Self::from_providers(providers))
    }

    /// Loads the directory named by `GPUHUNT_CATALOG_DIR`, or returns `None` when it is unset.
    pub fn from_env_dir() -> Option<Result<Self, CatalogError>> {
        catalog_dir_from_env().map(Self::from_dir)
    }

    /// Loads every `*.csv` entry of a zip file (the provider is the entry's lowercased file
    /// stem), e.g. a v3 `catalog.zip`.
    pub fn from_zip(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| CatalogError::io(path, e))?;
        Self::from_zip_bytes(&data, &file_version(path)?, &path.display().to_string())
    }

    /// Loads every `*.csv` entry of an in-memory zip, giving each provider `version`.
    pub fn from_zip_bytes(zip: &[u8], version: &str, source: &str) -> Result<Self, CatalogError> {
        let mut archive = open_zip(zip, source)?;
        let zip_error = |e: zip::result::ZipError| CatalogError::Zip {
            file: source.to_string(),
            message: e.to_string(),
        };
        let mut providers = Vec::new();
        for i in 0..archive.len() {
            let mut file = archive.by_index(i).map_err(zip_error)?;
            if !file.is_file() {
                continue;
            }
            let entry = file.name().map_err(zip_error)?.to_string();
            let base = entry.rsplit('/').next().unwrap_or(&entry);
            let Some(stem) = base.strip_suffix(".csv") else {
                continue;
            };
            let name = stem.to_lowercase();
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(|e| CatalogError::Zip {
                file: source.to_string(),
                message: e.to_string(),
            })?;
            providers.push(ProviderCatalog::from_csv(
                &name,
                version,
                &data,
                &format!("{source}!{entry}"),
            )?);
        }
        Ok(Self::from_providers(providers))
    }

    /// The providers, in canonical order.
    pub fn providers(&self) -> &[ProviderCatalog] {
        &self.providers
    }

    /// One provider's catalog by name (any case).
    pub fn provider(&self, name: &str) -> Option<&ProviderCatalog> {
        let lower = name.to_lowercase();
        self.providers.iter().find(|p| p.name == lower)
    }

    /// Total number of items over all providers.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the catalog holds no items.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// The columnar index.
    pub fn index(&self) -> &CatalogIndex {
        &self.index
    }

    /// Every item, in merged price order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &CatalogItem> + '_ {
        (0..self.index.len()).map(|row| self.item(self.index.row_ref(row)))
    }

    fn item(&self, r: RowRef) -> &CatalogItem {
        &self.providers[r.provider as usize].items[r.position as usize]
    }

    /// The offers matching `filter`, with gpuhunt's semantics and order: each provider's
    /// matches in the provider's order, merged by price (ties: canonical provider order).
    ///
    /// Errors like gpuhunt: a provider name that gpuhunt does not know (and that this catalog
    /// does not hold) is [`CatalogError::UnknownProvider`]; an online provider that this
    /// catalog does not hold is [`CatalogError::ProviderNotLoaded`].
    pub fn query(&self, filter: &QueryFilter) -> Result<QueryResult<'_>, CatalogError> {
        self.query_limited(filter, None)
    }

    /// [`query`](Self::query), stopping after the first `limit` offers when given.
    pub fn query_limited(
        &self,
        filter: &QueryFilter,
        limit: Option<usize>,
    ) -> Result<QueryResult<'_>, CatalogError> {
        let selected = self.select_providers(filter)?;
        let rows = self.index.query(filter, selected.as_deref(), limit);
        Ok(QueryResult {
            catalog: self,
            rows,
        })
    }

    /// Resolves the filter's providers to provider indices (`None`: all providers).
    fn select_providers(&self, filter: &QueryFilter) -> Result<Option<Vec<usize>>, CatalogError> {
        let Some(requested) = &filter.provider else {
            return Ok(None);
        };
        let lower: Vec<String> = requested.iter().map(|p| p.to_lowercase()).collect();
        let loaded = |p: &str| self.providers.iter().any(|c| c.name == p);
        // gpuhunt validates every name first, then fails on online providers it cannot query.
        if let Some((raw, _)) = requested
            .iter()
            .zip(&lower)
            .find(|(_, p)| !loaded(p) && !is_known_provider(p))
        {
            return Err(CatalogError::UnknownProvider(raw.clone()));
        }
        if let Some(p) = lower.iter().find(|p| !loaded(p) && is_online_provider(p)) {
            return Err(CatalogError::ProviderNotLoaded(p.clone()));
        }
        Ok(Some(
            self.providers
                .iter()
                .enumerate()
                .filter(|(_, c)| lower.contains(&c.name))
                .map(|(i, _)| i)
                .collect(),
        ))
    }
}

impl fmt::Debug for ProviderCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderCatalog")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("items", &self.items.len())
            .finish()
    }
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let providers: Vec<(&str, &str, usize)> = self
            .providers
            .iter()
            .map(|p| (p.name(), p.version(), p.len()))
            .collect();
        f.debug_struct("Catalog")
            .field("providers", &providers)
            .field("rows", &self.len())
            .finish()
    }
}

/// The directory named by `GPUHUNT_CATALOG_DIR`, when set (and non-empty).
pub fn catalog_dir_from_env() -> Option<PathBuf> {
    std::env::var_os(CATALOG_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The offers a query matched, in result order. Holds row ids; items are borrowed from the
/// catalog on access.
#[derive(Debug, Clone)]
pub struct QueryResult<'a> {
    catalog: &'a Catalog,
    rows: Vec<u32>,
}

impl<'a> QueryResult<'a> {
    /// Number of matched offers.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `i`-th offer.
    pub fn get(&self, i: usize) -> Option<&'a CatalogItem> {
        let catalog = self.catalog;
        self.rows
            .get(i)
            .map(|&row| catalog.item(catalog.index.row_ref(row as usize)))
    }

    /// The offers, in order.
    pub fn iter(&self) -> QueryIter<'_, 'a> {
        QueryIter {
            catalog: self.catalog,
            rows: self.rows.iter(),
        }
    }

    /// Where each offer lives: (provider index in [`Catalog::providers`], position in that
    /// provider's items).
    pub fn refs(&self) -> impl ExactSizeIterator<Item = RowRef> + '_ {
        self.rows
            .iter()
            .map(|&row| self.catalog.index.row_ref(row as usize))
    }

    /// Keeps only the first `n` offers.
    pub fn truncate(&mut self, n: usize) {
        self.rows.truncate(n);
    }

    /// Clones the offers out.
    pub fn to_items(&self) -> Vec<CatalogItem> {
        self.iter().cloned().collect()
    }
}

impl<'q, 'a> IntoIterator for &'q QueryResult<'a> {
    type Item = &'a CatalogItem;
    type IntoIter = QueryIter<'q, 'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterates the offers of a [`QueryResult`], in order.
#[derive(Debug, Clone)]
pub struct QueryIter<'q, 'a> {
    catalog: &'a Catalog,
    rows: std::slice::Iter<'q, u32>,
}

impl<'a> Iterator for QueryIter<'_, 'a> {
    type Item = &'a CatalogItem;

    fn next(&mut self) -> Option<&'a CatalogItem> {
        let catalog = self.catalog;
        self.rows
            .next()
            .map(|&row| catalog.item(catalog.index.row_ref(row as usize)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.rows.size_hint()
    }
}

impl ExactSizeIterator for QueryIter<'_, '_> {}

impl DoubleEndedIterator for QueryIter<'_, '_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let catalog = self.catalog;
        self.rows
            .next_back()
            .map(|&row| catalog.item(catalog.index.row_ref(row as usize)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HEADER: &str = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n";

    fn write_zip(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for (name, body) in entries {
                w.start_file(*name, opts).unwrap();
                std::io::Write::write_all(&mut w, body.as_bytes()).unwrap();
            }
            w.finish().unwrap();
        }
        buf.into_inner()
    }

    #[test]
    fn loads_zip_archives() {
        let aws = format!("{HEADER}a,l,2,1,1,0,,,False,,,,,\n");
        let gcp = format!("{HEADER}g,l,1,1,1,0,,,False,,,,,\n");
        let zip = write_zip(&[("aws.csv", &aws), ("sub/gcp.csv", &gcp), ("README", "x")]);
        let cat = Catalog::from_zip_bytes(&zip, "v1", "test.zip").unwrap();
        assert_eq!(
            cat.providers().iter().map(|p| p.name()).collect::<Vec<_>>(),
            ["aws", "gcp"]
        );
        assert_eq!(
            cat.iter().map(|i| &*i.instance_name).collect::<Vec<_>>(),
            ["g", "a"]
        );
        let p = ProviderCatalog::from_zip_bytes("aws", "v1", &zip, "test.zip").unwrap();
        assert_eq!(p.len(), 1);
        assert!(matches!(
            ProviderCatalog::from_zip_bytes("oci", "v1", &zip, "test.zip"),
            Err(CatalogError::MissingZipEntry { .. })
        ));
        assert!(matches!(
            Catalog::from_zip_bytes(b"nope", "v1", "bad.zip"),
            Err(CatalogError::Zip { .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.zip");
        std::fs::write(&path, &zip).unwrap();
        assert_eq!(Catalog::from_zip(&path).unwrap().len(), 2);
    }

    #[test]
    fn loads_directories_and_validates_providers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("lambdalabs.csv"),
            format!("{HEADER}l,l,1,1,1,0,,,False,,,,,\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("AWS.csv"),
            format!("{HEADER}a,l,1,1,1,0,,,False,,,,,\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let cat = Catalog::from_dir(dir.path()).unwrap();
        assert_eq!(
            cat.providers().iter().map(|p| p.name()).collect::<Vec<_>>(),
            ["aws", "lambdalabs"]
        );
        assert!(cat.providers()[0].version().starts_with("file-"));
        let q = |p: &[&str]| QueryFilter {
            provider: Some(p.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert_eq!(cat.query(&q(&["LambdaLabs"])).unwrap().len(), 1);
        assert_eq!(cat.query(&q(&["gcp"])).unwrap().len(), 0);
        assert_eq!(cat.query(&q(&[])).unwrap().len(), 0);
        assert!(matches!(
            cat.query(&q(&["nope"])),
            Err(CatalogError::UnknownProvider(_))
        ));
        assert!(matches!(
            cat.query(&q(&["VastAI"])),
            Err(CatalogError::ProviderNotLoaded(_))
        ));
        assert_eq!(cat.query(&QueryFilter::default()).unwrap().len(), 2);
    }
}
