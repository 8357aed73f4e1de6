//! Query a directory of gpuhunt catalogs (`<provider>.csv`) with gpuhunt's filter keywords.
//!
//! ```text
//! # one query, one JSON object per matching offer (JSONL), in result order
//! cargo run -p dstack-sdk --example offers -- --catalog-dir DIR \
//!     --query-json '{"provider": ["aws"], "gpu_name": "A100", "min_gpu_count": 2, "spot": false}'
//!
//! # many queries (one JSON object per line); prints one JSON array per query, or
//! # {"error": "..."} for a query gpuhunt would reject
//! cargo run -p dstack-sdk --example offers -- --catalog-dir DIR --queries-jsonl queries.jsonl [--compact]
//!
//! # load time and per-query latency of a query set (use a release build for real figures)
//! cargo run --release -p dstack-sdk --example offers -- --catalog-dir DIR --queries-jsonl q.jsonl --bench
//! ```
//!
//! Query keys are gpuhunt `QueryFilter` fields (`provider`, `cpu_arch`, `min_cpu`, `max_cpu`,
//! `min_memory`, …, `gpu_vendor`, `gpu_name`, `min_compute_capability` as `"X.Y"`, `spot`,
//! `allowed_flags`); an unknown key is an error. `--compact` prints each offer as
//! `[provider, position]` (its index among the provider's parsed rows) instead of an object.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use dstack_sdk::offers::{Catalog, QueryFilter, QueryResult};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Query gpuhunt-format offer catalogs with gpuhunt's semantics")]
struct Args {
    /// Directory of `<provider>.csv` catalogs.
    #[arg(long, env = "GPUHUNT_CATALOG_DIR")]
    catalog_dir: PathBuf,
    /// One query: a JSON object of gpuhunt QueryFilter fields.
    #[arg(long, conflicts_with = "queries_jsonl")]
    query_json: Option<String>,
    /// A file with one query (JSON object) per line.
    #[arg(long)]
    queries_jsonl: Option<PathBuf>,
    /// Print offers as `[provider, position]` pairs (batch mode).
    #[arg(long, requires = "queries_jsonl")]
    compact: bool,
    /// Time loading and every query of `--queries-jsonl` instead of printing offers.
    #[arg(long, requires = "queries_jsonl")]
    bench: bool,
    /// Timed repetitions of each query in `--bench` mode.
    #[arg(long, default_value_t = 20)]
    repeat: usize,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let catalog = Catalog::from_dir(&args.catalog_dir)
        .with_context(|| format!("loading catalogs from {}", args.catalog_dir.display()))?;
    let load = started.elapsed();

    if let Some(json) = &args.query_json {
        let value: Value = serde_json::from_str(json).context("--query-json is not valid JSON")?;
        let filter = QueryFilter::from_json(&value)?;
        let offers = catalog.query(&filter)?;
        let mut out = BufWriter::new(std::io::stdout().lock());
        for offer in &offers {
            serde_json::to_writer(&mut out, offer)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(());
    }
    let Some(path) = &args.queries_jsonl else {
        bail!("give --query-json or --queries-jsonl")
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if !line.trim().is_empty() {
            lines.push(line);
        }
    }
    let queries: Vec<Result<QueryFilter, String>> = lines
        .iter()
        .map(|l| {
            let value: Value = serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}"))?;
            QueryFilter::from_json(&value).map_err(|e| e.to_string())
        })
        .collect();
    if args.bench {
        return bench(&catalog, load.as_secs_f64(), &queries, args.repeat.max(1));
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for query in &queries {
        match query
            .as_ref()
            .map_err(String::clone)
            .and_then(|q| catalog.query(q).map_err(|e| e.to_string()))
        {
            Ok(offers) => write_batch_line(&mut out, &catalog, &offers, args.compact)?,
            Err(error) => serde_json::to_writer(&mut out, &json!({ "error": error }))?,
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn write_batch_line(
    out: &mut impl Write,
    catalog: &Catalog,
    offers: &QueryResult<'_>,
    compact: bool,
) -> anyhow::Result<()> {
    if compact {
        let refs: Vec<(&str, u32)> = offers
            .refs()
            .map(|r| (catalog.providers()[r.provider as usize].name(), r.position))
            .collect();
        serde_json::to_writer(out, &refs)?;
    } else {
        serde_json::to_writer(out, &offers.iter().collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Prints a JSON report: load time, per-query medians and p50/p99 over every timed run.
fn bench(
    catalog: &Catalog,
    load_s: f64,
    queries: &[Result<QueryFilter, String>],
    repeat: usize,
) -> anyhow::Result<()> {
    let mut samples_us = Vec::new();
    let mut per_query = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        let q = query
            .as_ref()
            .map_err(|e| anyhow::anyhow!("query {}: {e}", i + 1))?;
        let matched = catalog.query(q)?.len(); // warm-up
        let mut times = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let t = Instant::now();
            let result = catalog.query(q)?;
            std::hint::black_box(&result);
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        samples_us.extend_from_slice(&times);
        times.sort_by(f64::total_cmp);
        per_query.push(json!({ "matched": matched, "median_us": times[times.len() / 2] }));
    }
    samples_us.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        samples_us
            .get(((samples_us.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    let report = json!({
        "rows": catalog.len(),
        "providers": catalog.providers().len(),
        "index_bytes": catalog.index().heap_bytes(),
        "load_ms": load_s * 1e3,
        "queries": queries.len(),
        "repeat": repeat,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": samples_us.last(),
        "per_query": per_query,
    });
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
