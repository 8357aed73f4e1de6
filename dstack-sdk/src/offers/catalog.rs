//! Catalog rows, gpuhunt's CSV formats, per-provider catalogs and the whole loaded catalog.
//!
//! A gpuhunt catalog is one CSV per provider (`<provider>.csv`; the provider is not a
//! column). v2 files have 14 columns (`instance_name, location, price, cpu, memory, gpu_count,
//! gpu_name, gpu_memory, spot, disk_size, gpu_vendor, flags, cpu_arch, provider_data`); v1
//! files stop after `flags`. Columns are looked up by header name, so their order does not
//! matter. Rows that gpuhunt would reject are skipped with a warning naming the file and line;
//! the backward-compatibility rules of gpuhunt's loader apply (`tpu-` name prefix → vendor
//! google; GPUs without a vendor → nvidia; no `cpu_arch` → x86).
//!
//! Sources: a directory ([`Catalog::from_dir`], honouring `GPUHUNT_CATALOG_DIR` through
//! [`Catalog::from_env_dir`]), a zip of CSVs ([`Catalog::from_zip`]), or gpuhunt's v3 HTTP
//! layout (`Catalog::load_http`, behind the `http` feature).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::CatalogError;
use super::accelerators::AcceleratorVendor;
use super::filter::QueryFilter;
use super::index::{CatalogIndex, RowRef};
use super::providers::{is_known_provider, is_online_provider, provider_sort_key};

/// The environment variable that points gpuhunt (and [`Catalog::from_env_dir`]) at a local
/// directory of `<provider>.csv` files instead of the published catalogs.
pub const CATALOG_DIR_ENV: &str = "GPUHUNT_CATALOG_DIR";

/// The columns of a v2 catalog file, in their published order.
pub const CATALOG_V2_FIELDS: [&str; 14] = [
    "instance_name",
    "location",
    "price",
    "cpu",
    "memory",
    "gpu_count",
    "gpu_name",
    "gpu_memory",
    "spot",
    "disk_size",
    "gpu_vendor",
    "flags",
    "cpu_arch",
    "provider_data",
];

/// How many malformed rows of one file are logged one by one before a summary.
const MAX_ROW_WARNINGS: usize = 20;

/// A CPU instruction-set architecture, as gpuhunt's `CPUArchitecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum CpuArchitecture {
    /// `x86` (x86-64).
    #[default]
    X86,
    /// `arm` (AArch64).
    Arm,
}

impl CpuArchitecture {
    /// The lowercase name used in catalogs.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuArchitecture::X86 => "x86",
            CpuArchitecture::Arm => "arm",
        }
    }

    /// Parses like gpuhunt's `CPUArchitecture.cast`: lowercased, then exact.
    pub fn parse(value: &str) -> Option<Self> {
        let lower;
        let value = if value.is_ascii() {
            value
        } else {
            lower = value.to_lowercase();
            &lower
        };
        [CpuArchitecture::X86, CpuArchitecture::Arm]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(value))
    }
}

impl fmt::Display for CpuArchitecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CpuArchitecture {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not a valid CPUArchitecture"))
    }
}

impl Serialize for CpuArchitecture {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CpuArchitecture {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One offer of a provider's catalog: gpuhunt's `CatalogItem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// Provider name (lowercase), e.g. `aws`.
    #[serde(with = "arc_str")]
    pub provider: Arc<str>,
    /// The provider's instance type name.
    #[serde(with = "arc_str")]
    pub instance_name: Arc<str>,
    /// Region or zone.
    #[serde(with = "arc_str")]
    pub location: Arc<str>,
    /// Price in USD per hour.
    pub price: f64,
    /// Number of vCPUs.
    pub cpu: i64,
    /// RAM in GB.
    pub memory: f64,
    /// Number of GPUs/accelerators (0 for CPU-only offers; 1 for a TPU slice).
    pub gpu_count: i64,
    /// GPU model (for TPUs, the TPU type, e.g. `v5litepod-8`).
    #[serde(with = "opt_arc_str")]
    pub gpu_name: Option<Arc<str>>,
    /// Memory per GPU in GB.
    pub gpu_memory: Option<f64>,
    /// Whether this is a spot (preemptible) offer.
    pub spot: bool,
    /// Disk size in GB, when fixed by the offer.
    pub disk_size: Option<f64>,
    /// GPU vendor; always set when `gpu_count` is non-zero.
    pub gpu_vendor: Option<AcceleratorVendor>,
    /// Flags that hide the offer from clients that do not allow them.
    #[serde(default)]
    pub flags: Vec<String>,
    /// CPU architecture.
    #[serde(default)]
    pub cpu_arch: CpuArchitecture,
    /// Provider-specific data (JSON; `{}` when absent).
    #[serde(default)]
    pub provider_data: ProviderData,
}

/// The provider-specific JSON of a catalog row, gpuhunt's `provider_data` (a JSON object,
/// `{}` when absent). Derefs to the [`serde_json::Value`]; the common empty object is stored
/// without allocating, which keeps large catalogs compact.
#[derive(Clone, Default, PartialEq)]
pub struct ProviderData(Option<Box<serde_json::Value>>);

static EMPTY_OBJECT: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::Value::Object(serde_json::Map::new()));

impl ProviderData {
    /// Wraps a JSON value.
    pub fn new(value: serde_json::Value) -> Self {
        if value == *EMPTY_OBJECT {
            Self(None)
        } else {
            Self(Some(Box::new(value)))
        }
    }

    /// The JSON value.
    pub fn as_value(&self) -> &serde_json::Value {
        self.0.as_deref().unwrap_or(&EMPTY_OBJECT)
    }

    /// Unwraps the JSON value.
    pub fn into_value(self) -> serde_json::Value {
        self.0.map_or_else(|| EMPTY_OBJECT.clone(), |v| *v)
    }
}

impl std::ops::Deref for ProviderData {
    type Target = serde_json::Value;

    fn deref(&self) -> &serde_json::Value {
        self.as_value()
    }
}

impl fmt::Debug for ProviderData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_value(), f)
    }
}

impl From<serde_json::Value> for ProviderData {
    fn from(value: serde_json::Value) -> Self {
        Self::new(value)
    }
}

impl PartialEq<serde_json::Value> for ProviderData {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.as_value() == other
    }
}

impl Serialize for ProviderData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ProviderData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Self::new)
    }
}

/// Serde for the shared (`Arc<str>`) strings of [`CatalogItem`].
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(deserializer).map(Arc::from)
    }
}

/// Serde for `Option<Arc<str>>`.
mod opt_arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Arc<str>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serializer.serialize_some(&**v),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Arc<str>>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map(Arc::from))
    }
}

/// Shares repeated strings (instance names, locations, GPU names) between rows.
#[derive(Default)]
struct Interner(
    std::collections::HashSet<Arc<str>, std::hash::BuildHasherDefault<super::index::Fnv>>,
);

impl Interner {
    fn intern(&mut self, value: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(value) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(value);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

/// A row that the CSV loader skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// Why the row was rejected, in gpuhunt's words.
    pub reason: String,
}

/// The result of parsing one provider's CSV.
#[derive(Debug, Clone, Default)]
pub struct ParsedCsv {
    /// The rows that parsed, in file order.
    pub items: Vec<CatalogItem>,
    /// The rows that were skipped (each was logged as a warning).
    pub skipped: Vec<SkippedRow>,
}

/// Positions of the known columns in one file's header (`None`: column absent).
struct Columns([Option<usize>; 14]);

impl Columns {
    fn from_header(header: &csv::StringRecord) -> Self {
        let mut cols = [None; 14];
        // Like a dict built from the header, the last column of a repeated name wins.
        for (pos, name) in header.iter().enumerate() {
            if let Some(field) = CATALOG_V2_FIELDS.iter().position(|f| *f == name) {
                cols[field] = Some(pos);
            }
        }
        Self(cols)
    }
}

/// Field ids, in [`CATALOG_V2_FIELDS`] order.
mod field {
    pub const INSTANCE_NAME: usize = 0;
    pub const LOCATION: usize = 1;
    pub const PRICE: usize = 2;
    pub const CPU: usize = 3;
    pub const MEMORY: usize = 4;
    pub const GPU_COUNT: usize = 5;
    pub const GPU_NAME: usize = 6;
    pub const GPU_MEMORY: usize = 7;
    pub const SPOT: usize = 8;
    pub const DISK_SIZE: usize = 9;
    pub const GPU_VENDOR: usize = 10;
    pub const FLAGS: usize = 11;
    pub const CPU_ARCH: usize = 12;
    pub const PROVIDER_DATA: usize = 13;
}

/// The fields of one CSV record.
trait Fields {
    fn field(&self, pos: usize) -> Option<&str>;
}

impl Fields for csv::StringRecord {
    fn field(&self, pos: usize) -> Option<&str> {
        self.get(pos)
    }
}

impl Fields for [&str] {
    fn field(&self, pos: usize) -> Option<&str> {
        self.get(pos).copied()
    }
}

struct Row<'r, F: Fields + ?Sized> {
    record: &'r F,
    cols: &'r Columns,
}

impl<'r, F: Fields + ?Sized> Row<'r, F> {
    fn get(&self, f: usize) -> Option<&'r str> {
        self.cols.0[f].and_then(|pos| self.record.field(pos))
    }

    fn required(&self, f: usize) -> Result<&'r str, String> {
        match self.get(f) {
            None => Err(format!(
                "Required field '{}' is missing",
                CATALOG_V2_FIELDS[f]
            )),
            Some("") => Err(format!(
                "Required field '{}' is empty",
                CATALOG_V2_FIELDS[f]
            )),
            Some(v) => Ok(v),
        }
    }

    fn optional(&self, f: usize) -> Option<&'r str> {
        self.get(f).filter(|v| !v.is_empty())
    }

    fn required_with<T>(&self, f: usize, load: fn(&str) -> Option<T>) -> Result<T, String> {
        let raw = self.required(f)?;
        load(raw).ok_or_else(|| cannot_parse(f, raw))
    }

    fn optional_with<T>(&self, f: usize, load: fn(&str) -> Option<T>) -> Result<Option<T>, String> {
        self.optional(f)
            .map(|raw| load(raw).ok_or_else(|| cannot_parse(f, raw)))
            .transpose()
    }
}

fn cannot_parse(f: usize, raw: &str) -> String {
    format!("Cannot parse field '{}': {raw:?}", CATALOG_V2_FIELDS[f])
}

/// Builds one item from a CSV row with gpuhunt's `item_from_row` rules.
fn item_from_row<F: Fields + ?Sized>(
    row: &Row<'_, F>,
    provider: &Arc<str>,
    strings: &mut Interner,
) -> Result<CatalogItem, String> {
    let gpu_count = row.required_with(field::GPU_COUNT, parse_py_int)?;
    let mut gpu_name = row.optional(field::GPU_NAME);
    let mut gpu_vendor = row.optional_with(field::GPU_VENDOR, AcceleratorVendor::parse)?;
    // Catalogs that predate the vendor column mark TPUs with a `tpu-` prefix and imply
    // NVIDIA for every other accelerator.
    if let Some(tpu) = gpu_name.and_then(|n| n.strip_prefix("tpu-")) {
        gpu_name = Some(tpu);
        gpu_vendor.get_or_insert(AcceleratorVendor::Google);
    } else if gpu_vendor.is_none() && gpu_count != 0 {
        gpu_vendor = Some(AcceleratorVendor::Nvidia);
    }
    let cpu_arch = row
        .optional_with(field::CPU_ARCH, CpuArchitecture::parse)?
        .unwrap_or_default();
    let provider_data = match row.get(field::PROVIDER_DATA) {
        None | Some("") | Some("{}") => ProviderData::default(),
        Some(raw) => serde_json::from_str::<serde_json::Value>(raw)
            .map(ProviderData::new)
            .map_err(|e| format!("Cannot parse field 'provider_data': {e}"))?,
    };
    Ok(CatalogItem {
        provider: Arc::clone(provider),
        instance_name: strings.intern(row.required(field::INSTANCE_NAME)?),
        location: strings.intern(row.required(field::LOCATION)?),
        price: row.required_with(field::PRICE, parse_py_float)?,
        cpu: row.required_with(field::CPU, parse_py_int)?,
        memory: row.required_with(field::MEMORY, parse_py_float)?,
        gpu_count,
        gpu_name: gpu_name.map(|n| strings.intern(n)),
        gpu_memory: row.optional_with(field::GPU_MEMORY, parse_py_float)?,
        spot: row.required_with(field::SPOT, parse_py_bool)?,
        disk_size: row.optional_with(field::DISK_SIZE, parse_py_float)?,
        gpu_vendor,
        flags: row
            .get(field::FLAGS)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        cpu_arch,
        provider_data,
    })
}

/// Parses one provider's catalog CSV (v2 or v1 columns). `source` names the file in warnings.
///
/// Malformed rows are skipped and logged (the first few one by one, then a summary); a file
/// that is not UTF-8 is an error for the whole file, as in gpuhunt. Large files are parsed on
/// several threads.
pub fn parse_catalog_csv(
    data: &[u8],
    provider: &str,
    source: &str,
) -> Result<ParsedCsv, CatalogError> {
    let input = CsvInput {
        provider,
        source,
        data,
    };
    parse_catalog_csvs(std::slice::from_ref(&input))
        .pop()
        .unwrap_or_else(|| Ok(ParsedCsv::default()))
}

/// One catalog CSV to parse.
pub(crate) struct CsvInput<'a> {
    /// The provider (lowercase).
    pub provider: &'a str,
    /// The file name used in messages.
    pub source: &'a str,
    /// The raw bytes.
    pub data: &'a [u8],
}

/// A file whose header has been read.
struct PreparedCsv<'a> {
    text: &'a str,
    cols: Columns,
    /// Byte offset of the first data record.
    body_start: usize,
    /// Line number of the first data record.
    body_line: u64,
}

/// A slice of a file's data records, parsed on its own.
struct CsvChunk {
    file: usize,
    start: usize,
    end: usize,
    /// The chunk holds no quote character, so records are lines and fields split on commas.
    plain: bool,
}

/// What one chunk produced; line numbers are relative to the chunk's first line (1-based).
#[derive(Default)]
struct ChunkOutput {
    items: Vec<CatalogItem>,
    skipped: Vec<SkippedRow>,
    newlines: u64,
}

/// Smallest chunk worth a separate job.
const MIN_CHUNK_BYTES: usize = 128 * 1024;

fn prepare_csv<'a>(input: &CsvInput<'a>) -> Result<PreparedCsv<'a>, CatalogError> {
    let text = std::str::from_utf8(input.data).map_err(|e| CatalogError::Csv {
        file: input.source.to_string(),
        message: format!("not valid UTF-8: {e}"),
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut header = csv::StringRecord::new();
    let has_header = reader
        .read_record(&mut header)
        .map_err(|e| CatalogError::Csv {
            file: input.source.to_string(),
            message: e.to_string(),
        })?;
    let body_start = if has_header {
        reader.position().byte() as usize
    } else {
        text.len()
    };
    let body_start = body_start.min(text.len());
    let body_line = 1 + count_newlines(&text.as_bytes()[..body_start]);
    Ok(PreparedCsv {
        text,
        cols: Columns::from_header(&header),
        body_start,
        body_line,
    })
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b == b'\n')).sum()
}

/// Splits a file's records into chunks of about `target` bytes at line ends. Only files without
/// any quote character are split: then every newline ends a record.
fn chunk_csv(file: usize, prepared: &PreparedCsv<'_>, target: usize, out: &mut Vec<CsvChunk>) {
    let bytes = prepared.text.as_bytes();
    let end = bytes.len();
    let mut start = prepared.body_start;
    let plain = !bytes[start..].contains(&b'"');
    if plain {
        while end - start > target + target / 2 {
            match bytes[start + target..].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let cut = start + target + nl + 1;
                    out.push(CsvChunk {
                        file,
                        start,
                        end: cut,
                        plain,
                    });
                    start = cut;
                }
                None => break,
            }
        }
    }
    out.push(CsvChunk {
        file,
        start,
        end,
        plain,
    });
}

fn parse_chunk(
    input: &CsvInput<'_>,
    prepared: &PreparedCsv<'_>,
    chunk: &CsvChunk,
) -> Result<ChunkOutput, CatalogError> {
    let text = &prepared.text[chunk.start..chunk.end];
    let newlines = count_newlines(text.as_bytes());
    let mut out = ChunkOutput {
        items: Vec::with_capacity(usize::try_from(newlines).unwrap_or(0) + 1),
        skipped: Vec::new(),
        newlines,
    };
    let provider: Arc<str> = Arc::from(input.provider);
    let mut strings = Interner::default();
    let plain_ok = chunk.plain
        && parse_plain_lines(text, &prepared.cols, |row, line| {
            match item_from_row(&row, &provider, &mut strings) {
                Ok(item) => out.items.push(item),
                Err(reason) => out.skipped.push(SkippedRow { line, reason }),
            }
        });
    if plain_ok {
        return Ok(out);
    }
    // Quoted fields (or stray carriage returns): the full CSV reader.
    out.items.clear();
    out.skipped.clear();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    let csv_error = |e: csv::Error| CatalogError::Csv {
        file: input.source.to_string(),
        message: e.to_string(),
    };
    while reader.read_record(&mut record).map_err(csv_error)? {
        let line = record.position().map_or(0, |p| p.line());
        let row = Row {
            record: &record,
            cols: &prepared.cols,
        };
        match item_from_row(&row, &provider, &mut strings) {
            Ok(item) => out.items.push(item),
            Err(reason) => out.skipped.push(SkippedRow { line, reason }),
        }
    }
    Ok(out)
}

/// Splits quote-free CSV text into records (lines, `\n` or `\r\n`; blank lines skipped) and
/// fields (split on commas), which is exactly what a CSV reader does when nothing is quoted.
/// Returns `false`, having stopped, at a carriage return that does not end a line (old Mac
/// line ends): the caller then uses the full reader.
fn parse_plain_lines(
    text: &str,
    cols: &Columns,
    mut emit: impl FnMut(Row<'_, [&str]>, u64),
) -> bool {
    let bytes = text.as_bytes();
    let mut fields: Vec<&str> = Vec::with_capacity(CATALOG_V2_FIELDS.len());
    let (mut line, mut line_start, mut field_start) = (1u64, 0usize, 0usize);
    let mut i = 0;
    while i <= bytes.len() {
        match bytes.get(i) {
            Some(b',') => {
                fields.push(&text[field_start..i]);
                field_start = i + 1;
            }
            Some(b'\r') if bytes.get(i + 1) != Some(&b'\n') => return false,
            Some(b'\n') | None => {
                let end = if i > line_start && bytes[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                if end > line_start {
                    fields.push(&text[field_start..end]);
                    emit(
                        Row {
                            record: fields.as_slice(),
                            cols,
                        },
                        line,
                    );
                }
                fields.clear();
                line += 1;
                line_start = i + 1;
                field_start = i + 1;
            }
            Some(_) => {}
        }
        i += 1;
    }
    true
}

/// Parses several catalog CSVs, spreading their records over threads; results are in input
/// order and identical to parsing each file on its own.
pub(crate) fn parse_catalog_csvs(inputs: &[CsvInput<'_>]) -> Vec<Result<ParsedCsv, CatalogError>> {
    let prepared: Vec<Result<PreparedCsv<'_>, CatalogError>> =
        inputs.iter().map(prepare_csv).collect();
    let total: usize = inputs.iter().map(|i| i.data.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One share per thread: a file is split only when it alone would outweigh a thread's
    // share (splitting costs a copy when the pieces are joined).
    let target = (total / threads).max(MIN_CHUNK_BYTES);
    let mut chunks = Vec::new();
    for (file, p) in prepared.iter().enumerate() {
        if let Ok(p) = p {
            chunk_csv(file, p, target, &mut chunks);
        }
    }
    // Largest first, so that the threads finish together.
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(chunks[i].end - chunks[i].start));
    let outputs = parallel_map(&order, |&i| {
        let chunk = &chunks[i];
        match &prepared[chunk.file] {
            Ok(p) => parse_chunk(&inputs[chunk.file], p, chunk),
            Err(_) => Ok(ChunkOutput::default()),
        }
    });
    let mut by_chunk: Vec<Option<Result<ChunkOutput, CatalogError>>> =
        (0..chunks.len()).map(|_| None).collect();
    for (i, out) in order.into_iter().zip(outputs) {
        by_chunk[i] = Some(out);
    }

    // Line numbers: each file's chunks follow each other from its first data line.
    let mut next_line: Vec<u64> = prepared
        .iter()
        .map(|p| p.as_ref().map_or(1, |p| p.body_line))
        .collect();
    let mut results: Vec<Result<ParsedCsv, CatalogError>> = prepared
        .into_iter()
        .map(|p| p.map(|_| ParsedCsv::default()))
        .collect();
    let mut expected: Vec<usize> = vec![0; inputs.len()];
    for (chunk, out) in chunks.iter().zip(&by_chunk) {
        if let Some(Ok(out)) = out {
            expected[chunk.file] += out.items.len();
        }
    }
    for (chunk, out) in chunks.iter().zip(by_chunk) {
        let Some(out) = out else { continue };
        let slot = &mut results[chunk.file];
        let Ok(parsed) = slot else { continue };
        match out {
            Err(e) => *slot = Err(e),
            Ok(mut out) => {
                let first_line = next_line[chunk.file];
                next_line[chunk.file] = first_line + out.newlines;
                for skipped in &mut out.skipped {
                    skipped.line += first_line - 1;
                }
                if parsed.items.is_empty() {
                    parsed.items = out.items;
                    parsed
                        .items
                        .reserve(expected[chunk.file] - parsed.items.len());
                } else {
                    parsed.items.append(&mut out.items);
                }
                parsed.skipped.append(&mut out.skipped);
            }
        }
    }
    for (input, result) in inputs.iter().zip(&results) {
        if let Ok(parsed) = result {
            warn_skipped(input, &parsed.skipped);
        }
    }
    results
}

fn warn_skipped(input: &CsvInput<'_>, skipped: &[SkippedRow]) {
    let (provider, source) = (input.provider, input.source);
    for row in skipped.iter().take(MAX_ROW_WARNINGS) {
        tracing::warn!(
            file = source,
            line = row.line,
            "skipping malformed row in {provider} catalog at {source}:{}: {}",
            row.line,
            row.reason
        );
    }
    if skipped.len() > MAX_ROW_WARNINGS {
        tracing::warn!(
            file = source,
            "skipped {} more malformed rows in {provider} catalog at {source}",
            skipped.len() - MAX_ROW_WARNINGS
        );
    }
}

/// Python's `str.strip()` + underscore rules shared by `int()` and `float()`: whitespace around
/// the number is allowed, and single underscores are allowed between two digits.
fn py_numeric_text(value: &str) -> Option<std::borrow::Cow<'_, str>> {
    let trimmed = value.trim();
    if !trimmed.contains('_') {
        return Some(trimmed.into());
    }
    let bytes = trimmed.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_' {
            let before = i.checked_sub(1).and_then(|j| bytes.get(j));
            let after = bytes.get(i + 1);
            if !(before.is_some_and(u8::is_ascii_digit) && after.is_some_and(u8::is_ascii_digit)) {
                return None;
            }
        }
    }
    Some(trimmed.replace('_', "").into())
}

/// Parses an integer the way Python's `int(str)` does (for the values catalogs hold).
pub(crate) fn parse_py_int(value: &str) -> Option<i64> {
    // Fast path: plain digits, the catalogs' usual spelling.
    if !value.is_empty() && value.len() <= 18 && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            value
                .bytes()
                .fold(0i64, |n, b| n * 10 + i64::from(b - b'0')),
        );
    }
    let text = py_numeric_text(value)?;
    let digits = text.strip_prefix(['+', '-']).unwrap_or(&text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses a float the way Python's `float(str)` does (including `inf`/`nan` spellings).
pub(crate) fn parse_py_float(value: &str) -> Option<f64> {
    // Fast path: digits, dot, exponent and signs only — a grammar Python and Rust agree on.
    let plain = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-');
    if value.bytes().all(plain) {
        return value.parse().ok();
    }
    let text = py_numeric_text(value)?;
    let body = text.strip_prefix(['+', '-']).unwrap_or(&text);
    let is_special = ["inf", "infinity", "nan"]
        .iter()
        .any(|s| body.eq_ignore_ascii_case(s));
    // Rust accepts a few spellings Python does not (none in practice); keep to digits, one
    // dot and an exponent, or the special names.
    if !is_special
        && !body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    text.parse().ok()
}

/// gpuhunt's `_load_bool`: `true`/`false` in any case, nothing else.
fn parse_py_bool(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The loaded catalog of one provider: gpuhunt's `ProviderCatalog{version, items}`.
///
/// Cheap to clone: the items are shared.
#[derive(Debug, Clone)]
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

/// Runs `f` over `inputs` on up to `available_parallelism` threads, keeping input order.
pub(crate) fn parallel_map<I: Sync, O: Send>(inputs: &[I], f: impl Fn(&I) -> O + Sync) -> Vec<O> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(inputs.len());
    if threads <= 1 {
        return inputs.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, O)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(input) = inputs.get(i) else { break };
                        done.push((i, f(input)));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

/// A loaded catalog: every provider's items plus the index that answers queries.
///
/// Built once per load (or reload) and then read-only; share it behind an `Arc`.
#[derive(Debug)]
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
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a CatalogItem> + '_ {
        let catalog = self.catalog;
        self.rows
            .iter()
            .map(move |&row| catalog.item(catalog.index.row_ref(row as usize)))
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
    type IntoIter = Box<dyn Iterator<Item = &'a CatalogItem> + 'q>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HEADER: &str = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n";

    fn parse(body: &str) -> ParsedCsv {
        parse_catalog_csv(format!("{HEADER}{body}").as_bytes(), "aws", "aws.csv").unwrap()
    }

    #[test]
    fn parses_v2_rows() {
        let p = parse(
            "g5.xlarge,us-east-1,1.006,4,16.0,1,A10G,24.0,False,,nvidia,,x86,{}\n\
             m7i.large,us-east-1,0.1,2,8,0,,,True,100,,a b,ARM,\"{\"\"k\"\": 1}\"\n",
        );
        assert!(p.skipped.is_empty());
        let [g, c] = &p.items[..] else {
            panic!("{:?}", p.items)
        };
        assert_eq!(&*g.provider, "aws");
        assert_eq!(g.gpu_vendor, Some(AcceleratorVendor::Nvidia));
        assert_eq!(g.gpu_memory, Some(24.0));
        assert_eq!(g.disk_size, None);
        assert_eq!(c.cpu_arch, CpuArchitecture::Arm);
        assert_eq!(c.flags, vec!["a", "b"]);
        assert!(c.spot);
        assert_eq!(c.gpu_vendor, None);
        assert_eq!(c.disk_size, Some(100.0));
        assert_eq!(c.provider_data, serde_json::json!({"k": 1}));
    }

    #[test]
    fn skips_malformed_rows_with_line_numbers() {
        let p = parse(
            "ok,loc,1,2,3,0,,,False,,,,,\n\
             bad-price,loc,x,2,3,0,,,False,,,,,\n\
             ,loc,1,2,3,0,,,False,,,,,\n\
             bad-spot,loc,1,2,3,0,,,yes,,,,,\n\
             bad-cpu,loc,1,2.0,3,0,,,False,,,,,\n\
             bad-vendor,loc,1,2,3,1,X,,False,,nvidya,,,\n\
             bad-arch,loc,1,2,3,0,,,False,,,,riscv,\n\
             bad-json,loc,1,2,3,0,,,False,,,,,{\n\
             short,loc,1\n\
             ok2,loc, 1_0.5 ,+4,3,0,,,TRUE,,,,,\n",
        );
        assert_eq!(
            p.items
                .iter()
                .map(|i| &*i.instance_name)
                .collect::<Vec<_>>(),
            ["ok", "ok2"]
        );
        assert_eq!(p.items[1].price, 10.5);
        assert_eq!(p.items[1].cpu, 4);
        assert_eq!(
            p.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7, 8, 9, 10]
        );
        assert!(
            p.skipped[1].reason.contains("'instance_name' is empty"),
            "{:?}",
            p.skipped[1]
        );
        assert!(
            p.skipped[7].reason.contains("'gpu_count' is missing"),
            "{:?}",
            p.skipped[7]
        );
    }

    #[test]
    fn v1_rows_and_backward_compat() {
        let v1 = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags\n\
                  v5litepod-8,us-west4-a,9.6,224,384,1,tpu-v5litepod-8,128,False,,,\n\
                  p4d,us-east-1,32.7,96,1152,8,A100,40,True,,,\n\
                  tpu-named-amd,x,1,1,1,1,tpu-foo,,False,,amd,\n";
        let p = parse_catalog_csv(v1.as_bytes(), "gcp", "gcp.csv").unwrap();
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        assert_eq!(p.items[0].gpu_name.as_deref(), Some("v5litepod-8"));
        assert_eq!(p.items[0].gpu_vendor, Some(AcceleratorVendor::Google));
        assert_eq!(p.items[0].cpu_arch, CpuArchitecture::X86);
        assert_eq!(p.items[1].gpu_vendor, Some(AcceleratorVendor::Nvidia));
        assert_eq!(p.items[2].gpu_name.as_deref(), Some("foo"));
        assert_eq!(p.items[2].gpu_vendor, Some(AcceleratorVendor::Amd));
        assert_eq!(p.items[0].provider_data, serde_json::json!({}));
    }

    #[test]
    fn columns_are_found_by_name_and_blank_lines_ignored() {
        let csv = "spot,price,instance_name,location,cpu,memory,gpu_count,extra\n\nFalse,2.5,n,l,1,2,0,zz\n";
        let p = parse_catalog_csv(csv.as_bytes(), "oci", "oci.csv").unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].price, 2.5);
    }

    #[test]
    fn invalid_utf8_fails_the_file() {
        let mut data = HEADER.as_bytes().to_vec();
        data.extend_from_slice(b"n\xff,l,1,1,1,0,,,False,,,,,\n");
        assert!(matches!(
            parse_catalog_csv(&data, "aws", "aws.csv"),
            Err(CatalogError::Csv { .. })
        ));
    }

    #[test]
    fn chunked_parsing_matches_single_pass() {
        let mut body = String::new();
        for i in 0..20_000 {
            if i % 997 == 0 {
                body.push_str(&format!("bad-{i},loc,x,2,8,0,,,False,,,,,\n"));
            } else {
                body.push_str(&format!(
                    "n{i},loc-{},{}.5,{},8.0,0,,,False,,,,x86,{{}}\n",
                    i % 7,
                    i / 10,
                    i % 64
                ));
            }
        }
        let chunked = parse(&body);
        // a quote anywhere in the records disables chunking
        let single = parse(&format!("{body}q,loc,1,2,8,0,,,False,,,,x86,\"{{}}\"\n"));
        assert!(body.len() > 4 * MIN_CHUNK_BYTES);
        assert_eq!(chunked.items.len() + 1, single.items.len());
        assert_eq!(chunked.items[..], single.items[..chunked.items.len()]);
        assert_eq!(chunked.skipped, single.skipped);
        assert_eq!(chunked.skipped[1].line, 999);
    }

    #[test]
    fn plain_splitting_matches_the_csv_reader() {
        let bodies = [
            "a,l,1,2,8,0,,,False,,,,,\r\nb,l,2,2,8,0,,,False,,,,,\r\n",
            "a,l,1,2,8,0,,,False,,,,,\n\n\r\nbad,l,x,2,8\r\n,,,\nc,l,3,2,8,0,,,True,,,,arm,{}",
            "a,l,1,2,8,0,,,False,,,,,\rb,l,2,2,8,0,,,False,,,,,\n",
            "a,l,1,2,8,0,,,False,,,,, x , extra,fields\n",
        ];
        for body in bodies {
            let plain = parse(body);
            let sep = if body.ends_with('\n') { "" } else { "\n" };
            let quoted = parse(&format!("{body}{sep}q,l,9,2,8,0,,,False,,,,,\"{{}}\"\n"));
            assert_eq!(
                plain.items[..],
                quoted.items[..plain.items.len()],
                "{body:?}"
            );
            assert_eq!(plain.items.len() + 1, quoted.items.len(), "{body:?}");
            let reasons = |p: &ParsedCsv| {
                p.skipped
                    .iter()
                    .map(|s| s.reason.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(reasons(&plain), reasons(&quoted), "{body:?}");
        }
        // physical line numbers, blank lines included (as Python's `line_num`)
        let lines: Vec<u64> = parse(bodies[1]).skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [5, 6]);
    }

    #[test]
    fn python_number_rules() {
        assert_eq!(parse_py_int(" 7 "), Some(7));
        assert_eq!(parse_py_int("1_000"), Some(1000));
        assert_eq!(parse_py_int("1__0"), None);
        assert_eq!(parse_py_int("4.0"), None);
        assert_eq!(parse_py_int("-3"), Some(-3));
        assert_eq!(parse_py_float("1e3"), Some(1000.0));
        assert_eq!(parse_py_float(".5"), Some(0.5));
        assert!(parse_py_float("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_py_float("-Infinity"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_py_float("_1"), None);
        assert_eq!(parse_py_float("0x10"), None);
        assert_eq!(parse_py_float(""), None);
    }

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
