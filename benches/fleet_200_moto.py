#!/usr/bin/env python3
"""A 200-instance cloud fleet on the AWS backend against moto (issue 6): how long from
`dstack apply` of the fleet until every instance has its cloud instance (RunInstances done,
status `provisioning`), how long from `fleets/delete` until every instance is `terminated`,
and how many EC2 API calls that took, by action.

    ~/.cache/dstack-sdk/oracle-venv/bin/python benches/fleet_200_moto.py

(Plain `python3` works too: the script re-runs itself under the oracle venv, which has
`boto3`, `moto_server` and the dstack 0.22.5 CLI; `bash scripts/oracle-venv.sh` makes it.)

Env: NODES (default 200); HOLD (seconds to wait once all are created, default 20: the
instances must still be `provisioning` then, see below); DSTACK_SERVER_BIN (default `$CARGO_TARGET_DIR/debug/dstack-server`,
built with `cargo build -p server-bin` unless SKIP_BUILD=1; point it at
`.../release/dstack-server` for release figures); KEEP=1 keeps the temp dir (server log);
DSTACK_SERVER_PIPELINE_WORKERS is passed to the server (instance pipeline workers, default 10).
Prints one table, then every figure as JSON on the last line.

Setup: moto_server on loopback behind a tiny counting reverse proxy (moto keeps no call
log): the server's `DSTACK_ENDPOINT_URL_AWS` is the proxy, which records each call's action
(`Action=` of the EC2 query protocol, `X-Amz-Target` of JSON services), status and moto's
latency. The account is prepared directly against moto (not counted): an image for
`os_images`, an internet gateway route. The fleet is applied with the real dstack 0.22.5
CLI (`dstack apply -f fleet.dstack.yml -y -d`, so the body is the CLI's), deleted with
`POST /api/project/main/fleets/delete`.

The "VMs" never run sshd. So that SSH does not distort the figures, every cloud instance is
reached at `DSTACK_SERVER_INSTANCE_SSH_OVERRIDE=127.0.0.1:<closed port>`: each deploy
attempt is refused at once (no connect timeouts holding pipeline workers), and the instance
stays `provisioning` (retried every 7 s until the 10 min deploy deadline) instead of
waiting on unreachable addresses. Those attempts are counted from the server log.

dstack's published figures (not run here): 50 instances ~90 s, 200 instances 3-4 min,
bounded by EC2 RunInstances rate limits.
"""
import http.client
import http.server
import json
import os
import pathlib
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = pathlib.Path(os.environ.get("ORACLE_VENV", pathlib.Path.home() / ".cache/dstack-sdk/oracle-venv"))
NODES = int(os.environ.get("NODES", "200"))
HOLD = float(os.environ.get("HOLD", "20"))
TOKEN = "bench-token"
CATALOG = ROOT / "tests" / "fixtures" / "catalog" / "aws"

try:
    import boto3  # noqa: F401
except ImportError:
    py = VENV / "bin" / "python"
    if not py.exists():
        sys.exit("no oracle venv: run `bash scripts/oracle-venv.sh`")
    os.execv(str(py), [str(py), *sys.argv])
import boto3  # noqa: E402


def cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# The counting reverse proxy in front of moto.
# ---------------------------------------------------------------------------------------------

CALLS = []  # (t_start, action, status, seconds)
CALLS_LOCK = threading.Lock()


def make_proxy(upstream_port):
    local = threading.local()

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _forward(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            action = self.headers.get("X-Amz-Target")
            if not action:
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                if body and b"Action=" in body:
                    q = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                action = (q.get("Action") or [f"{self.command} {self.path.split('?')[0]}"])[0]
            else:
                action = action.split(".")[-1]
            t0 = time.time()
            conn = getattr(local, "conn", None)
            for attempt in range(2):
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=300)
                    local.conn = conn
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = local.conn = None
                    if attempt:
                        raise
            dt = time.time() - t0
            with CALLS_LOCK:
                CALLS.append((t0, action, r.status, dt))
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    port = free_port()
    srv = Server(("127.0.0.1", port), Proxy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, port


def calls_between(t_from, t_to):
    out = {}
    with CALLS_LOCK:
        for t, a, st, _ in CALLS:
            if t_from <= t < t_to:
                key = a if st < 400 else f"{a} ({st})"
                out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Our server.
# ---------------------------------------------------------------------------------------------

def server_bin():
    if os.environ.get("DSTACK_SERVER_BIN"):
        return pathlib.Path(os.environ["DSTACK_SERVER_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/dstack-sdk/target"))
    if not os.environ.get("SKIP_BUILD"):
        env = dict(os.environ, CARGO_TARGET_DIR=str(target))
        subprocess.run(["cargo", "build", "-q", "-p", "server-bin", "--bin", "dstack-server"],
                       cwd=ROOT, env=env, check=True)
    return target / "debug" / "dstack-server"


def api(url, path, body, timeout=120):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def list_instances(url):
    st, body = api(url, "/api/instances/list", {"project_names": ["main"], "limit": 1000})
    assert st == 200, body
    return body


AWS_YAML = """type: aws
regions: [us-east-1]
creds:
  type: access_key
  access_key: AKIATESTING
  secret_key: testing
os_images:
  cpu:
    name: dstack-vm-cpu-*
    owner: self
    user: ubuntu
  nvidia:
    name: dstack-vm-cpu-*
    owner: self
    user: ubuntu
"""

FLEET_YAML = """type: fleet
name: big
nodes: {nodes}
backends: [aws]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
spot_policy: on-demand
"""


def moto_instances(ec2):
    pages = ec2.get_paginator("describe_instances").paginate()
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


def prepare_account(ec2):
    """What a real account has and moto lacks: an image for `os_images`, and an internet
    gateway route in the default VPC (public subnets)."""
    ec2.register_image(Name="dstack-vm-cpu-1", RootDeviceName="/dev/sda1")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    rt = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"][0]
    ec2.create_route(RouteTableId=rt["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)


def main():
    procs = []
    d = pathlib.Path(tempfile.mkdtemp(prefix="fleet200-", dir="/tmp"))
    binary = server_bin()
    res = {"nodes": NODES, "server_bin": str(binary)}
    try:
        moto_port = free_port()
        moto = subprocess.Popen([str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(moto)
        wait_port(moto_port, moto, "moto")
        moto_url = f"http://127.0.0.1:{moto_port}"
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_url,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        prepare_account(ec2)
        proxy, proxy_port = make_proxy(moto_port)

        port = free_port()
        closed = free_port()  # nothing listens here: SSH attempts are refused at once
        home = d / "home"
        home.mkdir()
        env = dict(os.environ)
        env.update(
            HOME=str(home), DSTACK_SERVER_DIR=str(d / "server"), DSTACK_SERVER_PORT=str(port),
            DSTACK_SERVER_HOST="127.0.0.1", DSTACK_SERVER_ADMIN_TOKEN=TOKEN,
            DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1", GPUHUNT_CATALOG_DIR=str(CATALOG),
            DSTACK_ENDPOINT_URL_AWS=f"http://127.0.0.1:{proxy_port}",
            DSTACK_SERVER_INSTANCE_SSH_OVERRIDE=f"127.0.0.1:{closed}",
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.setdefault("RUST_LOG", "info")
        log_path = d / "server.log"
        log = open(log_path, "w")
        server = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(server)
        wait_port(port, server, "our server")
        url = f"http://127.0.0.1:{port}"
        cli_env = dict(env)
        cli_env.pop("DSTACK_SERVER_PORT")
        proj = d / "proj"
        proj.mkdir()

        def cli(*args):
            r = subprocess.run([str(VENV / "bin" / "dstack"), *args], env=cli_env, cwd=proj,
                               capture_output=True, text=True, timeout=600)
            if r.returncode:
                raise SystemExit(f"dstack {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}\n"
                                 f"{log_path.read_text()[-4000:]}")
            return r

        cli("project", "add", "--name", "main", "--url", url, "--token", TOKEN, "-y")
        st, body = api(url, "/api/project/main/backends/create_yaml", {"config_yaml": AWS_YAML})
        assert st == 200, body
        (proj / "fleet.dstack.yml").write_text(FLEET_YAML.format(nodes=NODES))

        # --- apply ---------------------------------------------------------------------------
        t_setup_end = time.time()
        cpu0 = {"moto": cpu_s(moto.pid), "server": cpu_s(server.pid), "proxy+bench": cpu_s(os.getpid())}
        t0 = time.time()
        cli("apply", "-f", "fleet.dstack.yml", "-y", "-d")
        res["cli_apply_s"] = round(time.time() - t0, 2)
        first_created = {}  # instance id -> seconds since t0 when first seen with a backend
        t_rows = t_first = None
        failed = []
        while True:
            now = time.time() - t0
            insts = list_instances(url)
            if t_rows is None and len(insts) >= NODES:
                t_rows = now
            for i in insts:
                if i.get("backend") and i["id"] not in first_created:
                    first_created[i["id"]] = now
                if i["status"] == "terminated" and i["id"] not in failed:
                    failed.append(i["id"])
            if first_created and t_first is None:
                t_first = now
            prov = sum(1 for i in insts if i["status"] == "provisioning" and i.get("backend"))
            if len(first_created) >= NODES:
                t_all = now
                res["provisioning_when_all_created"] = prov
                break
            if now > 900 or len(failed) >= NODES:
                raise SystemExit(f"stuck: {len(first_created)} created, {prov} provisioning, "
                                 f"{len(failed)} terminated\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        t_apply_end = time.time()
        cpu1 = {"moto": cpu_s(moto.pid), "server": cpu_s(server.pid), "proxy+bench": cpu_s(os.getpid())}
        res["cpu_s_apply"] = {k: round(cpu1[k] - cpu0[k], 1) for k in cpu0}
        run_times = sorted(t - t0 for t, a, st, _ in CALLS if a == "RunInstances" and st < 400 and t >= t0)
        res.update(
            rows_created_s=round(t_rows, 2), first_provisioning_s=round(t_first, 2),
            all_provisioning_s=round(t_all, 2), instances_terminated_during_apply=len(failed),
            run_instances_first_s=round(run_times[0], 2) if run_times else None,
            run_instances_last_s=round(run_times[-1], 2) if run_times else None,
            provisioning_rate_per_s=round(NODES / max(t_all - (t_first or 0), 1e-9), 2),
        )
        res["calls_apply"] = calls_between(t0, t_apply_end)
        res["moto_instances"] = len(moto_instances(ec2))
        # Hold: the SSH deploy attempts (refused at once) must leave the instances provisioning.
        time.sleep(HOLD)
        insts = list_instances(url)
        res["hold_s"] = HOLD
        res["statuses_after_hold"] = {s: sum(1 for i in insts if i["status"] == s)
                                      for s in sorted({i["status"] for i in insts})}

        # --- delete --------------------------------------------------------------------------
        t1 = time.time()
        st, body = api(url, "/api/project/main/fleets/delete", {"names": ["big"]})
        assert st == 200, body
        res["delete_api_s"] = round(time.time() - t1, 2)
        while True:
            now = time.time() - t1
            insts = list_instances(url)
            live = [i for i in insts if i["status"] != "terminated"]
            if not live:
                t_term = now
                break
            if now > 900:
                raise SystemExit(f"delete stuck: {len(live)} not terminated\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        states = [i["State"]["Name"] for i in moto_instances(ec2)]
        res["all_terminated_s"] = round(t_term, 2)
        res["moto_states_after_delete"] = {s: states.count(s) for s in sorted(set(states))}
        time.sleep(1)
        res["calls_delete"] = calls_between(t1, time.time())
        with CALLS_LOCK:
            lat = [dt for t, _a, _st, dt in CALLS if t >= t0]
            by = {}
            for t, a, _st, dt in CALLS:
                if t >= t0:
                    by.setdefault(a, []).append(dt)
        res["moto_latency_ms"] = {
            "all_p50": round(statistics.median(lat) * 1000, 1) if lat else None,
            **{a: round(statistics.mean(v) * 1000, 1) for a, v in sorted(by.items())},
        }
        res["calls_setup"] = calls_between(0, t_setup_end)
        text = log_path.read_text()
        res["ssh_deploy_attempts"] = text.count("deploying the agent") - text.count("deploying the agent over SSH")
        res["ssh_deploy_retries"] = text.count("will retry the deploy")
        res["ssh_deploy_failed"] = text.count("deploy failed")
        proxy.shutdown()
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        if os.environ.get("KEEP"):
            print(f"kept {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)

    n_apply = sum(res["calls_apply"].values())
    n_delete = sum(res["calls_delete"].values())
    rows = [
        ("dstack apply (CLI: plan + fleets/apply)", f"{res['cli_apply_s']:.1f} s", ""),
        (f"all {NODES} instance rows exist", f"{res['rows_created_s']:.1f} s", ""),
        ("first instance provisioning", f"{res['first_provisioning_s']:.1f} s", ""),
        (f"first / last RunInstances", f"{res['run_instances_first_s']} / {res['run_instances_last_s']} s", ""),
        (f"all {NODES} have a cloud instance", f"{res['all_provisioning_s']:.1f} s",
         "dstack: 50 ~90 s, 200 3-4 min"),
        ("EC2 calls, apply phase", str(n_apply), json.dumps(res["calls_apply"])),
        (f"statuses {HOLD:.0f} s later", "", json.dumps(res["statuses_after_hold"])),
        ("SSH deploy attempts (refused)", str(res["ssh_deploy_attempts"]), ""),
        ("fleets/delete call", f"{res['delete_api_s']:.2f} s", ""),
        (f"all {NODES} terminated after delete", f"{res['all_terminated_s']:.1f} s", ""),
        ("EC2 calls, delete phase", str(n_delete), json.dumps(res["calls_delete"])),
        ("moto latency p50", f"{res['moto_latency_ms']['all_p50']} ms", ""),
        ("CPU seconds during apply", "", json.dumps(res["cpu_s_apply"])),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"fleet of {NODES} on aws (moto), server {binary}")
    for a, b, c in rows:
        print(f"  {a:<{w}}  {b:>14}  {c}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
