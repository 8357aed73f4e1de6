//! gpuhunt's catalog CSV format and its loader rules.
//!
//! A gpuhunt catalog is one CSV per provider (`<provider>.csv`; the provider is not a
//! column). v2 files have 14 columns (`instance_name, location, price, cpu, memory, gpu_count,
//! gpu_name, gpu_memory, spot, disk_size, gpu_vendor, flags, cpu_arch, provider_data`); v1
//! files stop after `flags`. Columns are looked up by header name, so their order does not
//! matter. Values are read as gpuhunt reads them (Python's `int`/`float` spellings, `True`/
//! `False` in any case, lowercased enums). Rows that gpuhunt would reject are skipped with a
//! warning naming the file and line; the backward-compatibility rules of gpuhunt's loader apply
//! (`tpu-` name prefix → vendor google; GPUs without a vendor → nvidia; no `cpu_arch` → x86).
//!
//! Large inputs are split at line ends and parsed on several threads; files without quoted
//! fields (the usual case) take a fast path that splits lines and commas directly.

use std::sync::Arc;

use super::CatalogError;
use super::accelerators::AcceleratorVendor;
use super::item::{CatalogItem, CpuArchitecture, ProviderData};

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
}
