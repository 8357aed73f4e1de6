#!/usr/bin/env python3
"""Side by side: our dstack-server vs the real dstack server (PyPI dstack[server]==0.22.5).

Starts both on loopback, waits for them, measures idle RSS, then runs the same closed-loop
load (benches/api_load.rs: 50 concurrent clients, 5 s per route) against each and prints
p50/p99 per route and the ratios.

    python3 benches/server_vs_dstack.py          # uses scripts/oracle-venv.sh for dstack
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONC = int(os.environ.get("CONCURRENCY", "50"))
SECS = int(os.environ.get("SECONDS_PER_ROUTE", "5"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthcheck", timeout=1) as r:
                if b"running" in r.read():
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def rss_kib(pid):
    total = 0
    # The Python server may fork workers: count the whole process tree.
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except FileNotFoundError:
        pass
    for p in pids:
        for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def main():
    venv = subprocess.run(["bash", str(ROOT / "scripts/oracle-venv.sh")], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "server-bin", "--bin", "dstack-server", "--example", "api_load"], cwd=ROOT, check=True)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    token = "bench-token"
    results = {}
    for name in ("ours", "dstack"):
        tmp = tempfile.mkdtemp()
        port = free_port()
        env = dict(os.environ, HOME=tmp, DSTACK_SERVER_DIR=tmp + "/server", DSTACK_SERVER_ADMIN_TOKEN=token,
                   DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1", DSTACK_SERVER_PORT=str(port), DSTACK_SERVER_HOST="127.0.0.1",
                   DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED="1", DSTACK_SERVER_LOG_LEVEL="warn")
        cmd = [str(target / "dstack-server")] if name == "ours" else [venv + "/bin/dstack", "server", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait(url)
            time.sleep(2)
            idle = rss_kib(proc.pid)
            load = subprocess.run([str(target / "examples" / "api_load"), url, token, str(CONC), str(SECS)],
                                  capture_output=True, text=True, check=True)
            results[name] = {"idle_rss_mib": idle / 1024, "routes": json.loads(load.stdout)}
        finally:
            proc.kill()
            proc.wait()
    print(f"{'route':32} {'ours p50/p99 ms':>18} {'dstack p50/p99 ms':>20} {'p99 ratio':>10} {'rps ours/dstack':>16}")
    for route, o in results["ours"]["routes"].items():
        d = results["dstack"]["routes"][route]
        ratio = (d["p99_ms"] or 0) / (o["p99_ms"] or 1)
        print(f"{route:32} {o['p50_ms']:8.2f}/{o['p99_ms']:<8.2f} {d['p50_ms']:10.2f}/{d['p99_ms']:<8.2f} {ratio:9.1f}x {o['rps']:8.0f}/{d['rps']:<8.0f}")
    print(f"idle RSS: ours {results['ours']['idle_rss_mib']:.1f} MiB, dstack {results['dstack']['idle_rss_mib']:.1f} MiB")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
