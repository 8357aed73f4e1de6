//! Criterion benchmarks of the offer catalog: CSV parsing + index build, and typical queries.
//!
//! By default a deterministic 100k-row synthetic catalog is generated in memory (9 providers,
//! shaped like gpuhunt's). Set `OFFERS_BENCH_CATALOG_DIR` to a directory of `<provider>.csv`
//! files (e.g. the extracted `synthetic_100k_seed42.tar.gz`) to benchmark that instead:
//!
//! ```text
//! cargo bench -p dstack-sdk --bench offers
//! ```
//!
//! For a side-by-side comparison with gpuhunt, see `benches/offers_vs_gpuhunt.py`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dstack_sdk::offers::{Catalog, ProviderCatalog, QueryFilter};
use serde_json::json;

const HEADER: &str = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n";

const PROVIDERS: &[(&str, usize, bool)] = &[
    ("gcp", 38_000, false),
    ("aws", 26_000, false),
    ("azure", 24_000, false),
    ("runpod", 3_500, true),
    ("oci", 3_000, false),
    ("verda", 2_000, true),
    ("nebius", 1_600, false),
    ("lambdalabs", 1_500, true),
    ("cloudrift", 400, true),
];

const GPUS: &[(&str, &str, u32, f64)] = &[
    ("T4", "nvidia", 16, 0.35),
    ("L4", "nvidia", 24, 0.70),
    ("A10G", "nvidia", 24, 1.0),
    ("L40S", "nvidia", 48, 1.8),
    ("A100", "nvidia", 40, 2.9),
    ("A100", "nvidia", 80, 3.7),
    ("H100", "nvidia", 80, 6.0),
    ("H200", "nvidia", 141, 7.5),
    ("B200", "nvidia", 180, 11.0),
    ("V100", "nvidia", 16, 2.5),
    ("RTX4090", "nvidia", 24, 0.5),
    ("MI300X", "amd", 192, 4.0),
    ("Gaudi2", "intel", 96, 2.0),
];

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// CSV text of one synthetic provider, sorted by price.
fn synthetic_csv(rng: &mut Rng, rows: usize, has_disk: bool) -> String {
    let mut lines: Vec<(f64, String)> = (0..rows)
        .map(|i| {
            let spot = rng.below(3) == 0;
            let disk = if has_disk { format!("{}", [50, 100, 200, 500][rng.below(4)]) } else { String::new() };
            let flags = if rng.below(30) == 0 { "oci-spot" } else { "" };
            let (line, price) = if rng.below(2) == 0 {
                let (name, vendor, mem, rate) = GPUS[rng.below(GPUS.len())];
                let count = [1, 1, 2, 4, 8, 8][rng.below(6)];
                let price = rate * count as f64 * (0.9 + 0.45 * rng.unit()) * if spot { 0.4 } else { 1.0 };
                let cpu = count * [4, 8, 16, 24][rng.below(4)];
                (
                    format!(
                        "{}-{count}x-{},loc-{},{price:.5},{cpu},{}.0,{count},{name},{mem}.0,{},{disk},{vendor},{flags},x86,{{}}",
                        name.to_lowercase(),
                        i % 97,
                        rng.below(40),
                        cpu * 8,
                        if spot { "True" } else { "False" }
                    ),
                    price,
                )
            } else {
                let cpu = [1, 2, 4, 8, 16, 32, 64, 96][rng.below(8)];
                let price = 0.02 * cpu as f64 * (0.9 + 0.45 * rng.unit());
                let arch = if rng.below(4) == 0 { "arm" } else { "x86" };
                (
                    format!(
                        "cpu{cpu}-{},loc-{},{price:.5},{cpu},{}.0,0,,,{},{disk},,{flags},{arch},{{}}",
                        i % 53,
                        rng.below(40),
                        cpu * 4,
                        if spot { "True" } else { "False" }
                    ),
                    price,
                )
            };
            (price, line)
        })
        .collect();
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut csv = String::from(HEADER);
    for (_, line) in lines {
        csv.push_str(&line);
        csv.push('\n');
    }
    csv
}

/// The CSV texts to benchmark: `OFFERS_BENCH_CATALOG_DIR` or the synthetic catalog.
fn csv_files() -> std::io::Result<Vec<(String, String)>> {
    let Some(dir) = std::env::var_os("OFFERS_BENCH_CATALOG_DIR") else {
        let mut rng = Rng(42);
        return Ok(PROVIDERS
            .iter()
            .map(|&(name, rows, disk)| (name.to_string(), synthetic_csv(&mut rng, rows, disk)))
            .collect());
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            && path.extension().is_some_and(|x| x == "csv")
        {
            files.push((stem.to_string(), std::fs::read_to_string(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

fn load(files: &[(String, String)]) -> Result<Catalog, dstack_sdk::offers::CatalogError> {
    let providers = files
        .iter()
        .map(|(name, csv)| ProviderCatalog::from_csv(name, "bench", csv.as_bytes(), name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Catalog::from_providers(providers))
}

fn benches(c: &mut Criterion) {
    let (files, catalog) = match csv_files().map_err(|e| e.to_string()).and_then(|files| {
        let catalog = load(&files).map_err(|e| e.to_string())?;
        Ok((files, catalog))
    }) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("offers bench: cannot load the catalog: {error}");
            return;
        }
    };
    let flags = json!([
        "oci-spot",
        "lambda-arm",
        "gcp-a4",
        "gcp-g4",
        "gcp-dws-calendar-mode",
        "runpod-cpu",
        "runpod-cluster",
        "hotaisle-bm"
    ]);
    let mut group = c.benchmark_group("offers_load");
    group.sample_size(10);
    group.bench_function("parse_and_index", |b| b.iter(|| black_box(load(&files))));
    group.finish();

    let queries = [
        ("no_filter", json!({})),
        (
            "dstack_default",
            json!({"min_cpu": 2, "min_memory": 8, "min_gpu_count": 0, "gpu_vendor": "nvidia", "min_disk_size": 100, "allowed_flags": flags}),
        ),
        (
            "a100_80gb_x2",
            json!({"gpu_name": ["A100"], "min_gpu_count": 2, "max_gpu_count": 2, "min_gpu_memory": 80, "max_gpu_memory": 80, "min_cpu": 2, "min_memory": 8, "allowed_flags": flags}),
        ),
        (
            "h100_h200_x8_on_demand",
            json!({"gpu_name": ["H100", "h200"], "min_gpu_count": 8, "max_gpu_count": 8, "spot": false, "max_price": 100}),
        ),
        (
            "aws_nvidia",
            json!({"provider": ["aws"], "gpu_vendor": "nvidia", "min_gpu_count": 1}),
        ),
        (
            "cc_9_24gb",
            json!({"min_compute_capability": "9.0", "min_gpu_memory": 24, "min_gpu_count": 1}),
        ),
        (
            "cpu_only_x86",
            json!({"cpu_arch": "x86", "min_cpu": 8, "max_cpu": 16, "max_gpu_count": 0, "allowed_flags": flags}),
        ),
    ];
    let mut group = c.benchmark_group("offers_query");
    for (name, q) in queries {
        let Ok(filter) = QueryFilter::from_json(&q) else {
            eprintln!("offers bench: invalid query {name}");
            continue;
        };
        group.bench_function(name, |b| {
            b.iter(|| black_box(catalog.query(black_box(&filter)).map(|r| r.len())))
        });
    }
    group.finish();
}

criterion_group!(offers, benches);
criterion_main!(offers);
