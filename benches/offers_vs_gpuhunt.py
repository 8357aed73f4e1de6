"""Side by side: dstack-sdk's offer index vs gpuhunt 0.1.34 on the 100k-row synthetic catalog.

For both engines it prints the catalog load time (parse every CSV + build what queries need)
and p50/p99 query latency over a fixed, mixed set of queries (each query's median over its
repetitions, then percentiles across queries), plus the ratios. Our side runs the `offers`
example in `--bench` mode (release build: benchmark figures only — tests never build release).

    PY=$(bash scripts/oracle-venv.sh)/bin/python
    $PY benches/offers_vs_gpuhunt.py                  # builds the release example, extracts the tarball
    $PY benches/offers_vs_gpuhunt.py --offers-bin target/release/examples/offers --catalog-dir DIR

Targets for our side: load <= 100 ms, p50 <= 100 us, p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DSTACK_SHARED_DIR", ROOT.parent / "shared"))
TARBALL = SHARED / "catalog" / "synthetic" / "synthetic_100k_seed42.tar.gz"
FLAGS = ["oci-spot", "lambda-arm", "gcp-a4", "gcp-g4", "gcp-dws-calendar-mode", "runpod-cpu", "runpod-cluster",
         "hotaisle-bm"]
PROVIDERS = ["aws", "azure", "verda", "gcp", "lambdalabs", "nebius", "oci", "runpod", "cloudrift"]


def query_set() -> list[dict]:
    """60 fixed queries: the research harness's 7 plus a deterministic mix of typical shapes."""
    base = dict(min_cpu=2, min_memory=8, min_disk_size=100, allowed_flags=FLAGS)
    queries = [
        dict(provider=PROVIDERS),
        dict(gpu_vendor="nvidia", min_gpu_count=0, **base),
        dict(gpu_name=["A100"], min_gpu_count=2, max_gpu_count=2, min_gpu_memory=80, max_gpu_memory=80, **base),
        dict(gpu_name=["H100", "H200"], min_gpu_count=8, max_gpu_count=8, spot=False, max_price=100, **base),
        dict(provider=["aws"], gpu_vendor="nvidia", min_gpu_count=1, **base),
        dict(min_compute_capability="9.0", min_gpu_memory=24, min_gpu_count=1, **base),
        dict(cpu_arch="x86", min_cpu=8, max_cpu=16, min_memory=8, max_gpu_count=0, allowed_flags=FLAGS),
    ]
    rng = random.Random(7)
    names = ["T4", "L4", "A10G", "L40S", "A100", "H100", "H200", "B200", "RTX4090", "MI300X", "v5litepod-8", "GH200"]
    while len(queries) < 60:
        q = dict(min_cpu=rng.choice([1, 2, 4]), min_memory=rng.choice([0, 8, 16]), allowed_flags=FLAGS)
        shape = rng.randrange(6)
        if shape == 0:  # dstack run with a GPU shorthand
            q.update(gpu_name=rng.sample(names, rng.choice([1, 1, 2])), min_gpu_count=rng.choice([1, 2, 8]))
        elif shape == 1:  # vendor + memory
            q.update(gpu_vendor=rng.choice(["nvidia", "amd"]), min_gpu_count=1, min_gpu_memory=rng.choice([24, 48, 80]))
        elif shape == 2:  # one backend, default resources
            q.update(provider=[rng.choice(PROVIDERS)], gpu_vendor="nvidia", min_gpu_count=0, min_disk_size=100)
        elif shape == 3:  # CPU-only
            q.update(max_gpu_count=0, cpu_arch=rng.choice(["x86", "arm"]), max_cpu=rng.choice([8, 32, 96]))
        elif shape == 4:  # compute capability
            q.update(min_compute_capability=rng.choice(["8.0", "8.9", "9.0"]), min_gpu_count=1,
                     max_price=rng.choice([5, 20, 60]))
        else:  # spot, price cap, a few backends
            q.update(spot=rng.choice([True, False]), max_price=rng.choice([1, 3, 10]), min_gpu_count=0,
                     provider=rng.sample(PROVIDERS, 3))
        queries.append(q)
    return queries


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[round((len(s) - 1) * p)]


def bench_ours(binary: str, cat_dir: str, qfile: str, repeat: int, runs: int) -> dict:
    reports = []
    for _ in range(runs):
        out = subprocess.run([binary, "--catalog-dir", cat_dir, "--queries-jsonl", qfile, "--bench", "--repeat",
                              str(repeat)], check=True, capture_output=True, text=True).stdout
        reports.append(json.loads(out))
    medians = [statistics.median(r["per_query"][i]["median_us"] for r in reports)
               for i in range(len(reports[0]["per_query"]))]
    return {
        "load_ms": statistics.median(r["load_ms"] for r in reports),
        "p50_us": percentile(medians, 0.50),
        "p99_us": percentile(medians, 0.99),
        "raw_p99_us": statistics.median(r["p99_us"] for r in reports),
        "matched": [q["matched"] for q in reports[0]["per_query"]],
        "index_mb": reports[0]["index_bytes"] / 2**20,
    }


def bench_gpuhunt(cat_dir: str, queries: list[dict], repeat: int) -> dict:
    import gpuhunt
    import gpuhunt._internal.catalog as gcat
    import gpuhunt._internal.storage as storage

    logging.disable(logging.CRITICAL)
    providers = sorted(f[:-4] for f in os.listdir(cat_dir) if f.endswith(".csv"))
    t0 = time.perf_counter()
    loaded = {}
    for p in providers:
        with open(os.path.join(cat_dir, f"{p}.csv"), encoding="utf-8") as f:
            loaded[p] = list(storage.load(f, provider=p))
    catalog = gpuhunt.Catalog(balance_resources=False, auto_reload=False)
    catalog.catalog = {p: gcat.ProviderCatalog(version="bench", items=i) for p, i in loaded.items()}
    catalog.loaded_at = time.monotonic()
    load_s = time.perf_counter() - t0
    medians, matched = [], []
    for q in queries:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            result = catalog.query(**q)
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times) * 1e6)
        matched.append(len(result))
    return {"load_ms": load_s * 1e3, "p50_us": percentile(medians, 0.50), "p99_us": percentile(medians, 0.99),
            "matched": matched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog-dir", help="directory of <provider>.csv (default: extract the 100k tarball)")
    ap.add_argument("--offers-bin", help="prebuilt offers example (default: cargo build --release)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per query, ours")
    ap.add_argument("--runs", type=int, default=3, help="processes of ours (load time is their median)")
    ap.add_argument("--gpuhunt-repeat", type=int, default=3, help="timed runs per query, gpuhunt")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cat_dir = args.catalog_dir
        if cat_dir is None:
            with tarfile.open(TARBALL) as tar:
                tar.extractall(tmp, filter="data")
            cat_dir = str(next(pathlib.Path(tmp).rglob("*.csv")).parent)
        binary = args.offers_bin
        if binary is None:
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "dstack-sdk", "--example", "offers"],
                           cwd=ROOT, check=True)
            target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
            binary = str(target / "release" / "examples" / "offers")
        queries = query_set()
        qfile = os.path.join(tmp, "queries.jsonl")
        with open(qfile, "w") as f:
            f.writelines(json.dumps(q) + "\n" for q in queries)

        ours = bench_ours(binary, cat_dir, qfile, args.repeat, args.runs)
        theirs = bench_gpuhunt(cat_dir, queries, args.gpuhunt_repeat)

    assert ours["matched"] == theirs["matched"], "the two engines disagree on result sizes"
    print(f"catalog: {cat_dir}  queries: {len(queries)} (results: {min(theirs['matched'])}.."
          f"{max(theirs['matched'])} rows, same sizes on both sides)")
    print(f"dstack-sdk: {args.runs} processes x {args.repeat} runs/query; gpuhunt: {args.gpuhunt_repeat} runs/query; "
          f"index heap {ours['index_mb']:.1f} MiB")
    print(f"{'metric':<22}{'dstack-sdk':>14}{'gpuhunt':>14}{'gpuhunt/ours':>14}   target (ours)")
    line = "{:<22}{:>14}{:>14}{:>13.0f}x   {}"
    print(line.format("load", f"{ours['load_ms']:.1f} ms", f"{theirs['load_ms']:.0f} ms",
                      theirs["load_ms"] / ours["load_ms"], "<= 100 ms " + ok(ours["load_ms"] <= 100)))
    print(line.format("query p50", f"{ours['p50_us']:.1f} us", f"{theirs['p50_us'] / 1e3:.1f} ms",
                      theirs["p50_us"] / ours["p50_us"], "<= 100 us " + ok(ours["p50_us"] <= 100)))
    print(line.format("query p99", f"{ours['p99_us']:.1f} us", f"{theirs['p99_us'] / 1e3:.1f} ms",
                      theirs["p99_us"] / ours["p99_us"], "<= 1 ms " + ok(ours["p99_us"] <= 1000)))
    print(f"(ours, p99 over every timed run rather than per-query medians: {ours['raw_p99_us']:.1f} us)")
    if not (ours["load_ms"] <= 100 and ours["p50_us"] <= 100 and ours["p99_us"] <= 1000):
        sys.exit(1)


def ok(cond: bool) -> str:
    return "ok" if cond else "MISSED"


if __name__ == "__main__":
    main()
