#!/usr/bin/env python3
"""Side by side: runs and plans on our dstack-server vs the real dstack server 0.22.5.

Both servers get the same state (background processing off so it stays put):
  * a `runpod` backend, with the 100k-row synthetic gpuhunt catalog (GPUHUNT_CATALOG_DIR);
  * 10 SSH fleets of 10 IDLE instances each (8x A100 80GB hosts) + 1 elastic cloud fleet
    (`nodes: 0..10`, `backends: [runpod]`) so that `dstack apply` plans also get catalog offers;
  * 1,000 runs of a 3-node task (3,000 jobs).
Ours is seeded through its own API (backend, fleets, one real `runs/apply`), then the rows
are cloned with sqlite3; dstack's through its own test helpers
(`dstack._internal.server.testing.common`). The request bodies are the ones the dstack
0.22.5 Python client builds (`dstack apply`, `dstack offer`, `dstack ps`, `dstack ps -a`).

Then: closed-loop load (benches/api_load.rs, 1 and then 50 concurrent clients, 5 s per route), and RSS
with 1,000 instances: a fresh server with background processing ON, VmRSS before and after
1,000 IDLE SSH instances (10 fleets x 100) are written into its database and listed once.

    python3 benches/runs_vs_dstack.py        # uses scripts/oracle-venv.sh for dstack

Env: CONCURRENCY (default "1,50"), SECONDS_PER_ROUTE (5), SKIP_BUILD=1 (use the release
binaries already in $CARGO_TARGET_DIR), N_RUNS (1000), ROUTES=list (only routes whose name contains a word), ONLY=ours (skip the dstack side: a quick
look at our own figures while working; the ratios need both). Takes about 6 minutes; prints one table
(both servers, ratios), the RSS lines, then every figure as JSON.

What is not the same on both sides: only the `runpod` backend, because dstack's other catalog
backends ask the cloud for availability or quotas on every offer refresh (no network here).
`dstack apply` plans follow the same fleet choice on both sides: every fleet's instance
offers and the elastic fleet's backend offers (capped at 100) are weighed, and the plan lists
the chosen fleet's offers.

Internal modes (run with the oracle venv's python): --gen, --seed-dstack, --seed-dstack-instances.
"""
import json
import os
import pathlib
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Closed-loop clients: 1 (the latency of one request) and 50 (the shared-load figure).
CONCS = [int(c) for c in os.environ.get("CONCURRENCY", "1,50").split(",")]
SECS = int(os.environ.get("SECONDS_PER_ROUTE", "5"))
CATALOG = ROOT.parent / "shared/catalog/synthetic/synthetic_100k_seed42.tar.gz"
if not CATALOG.exists():
    CATALOG = pathlib.Path("/work/shared/catalog/synthetic/synthetic_100k_seed42.tar.gz")
TOKEN = "bench-token"
N_FLEETS, HOSTS_PER_FLEET, N_RUNS = 10, 10, int(os.environ.get("N_RUNS", "1000"))
RSS_FLEETS, RSS_HOSTS_PER_FLEET = 10, 100

TASK = {
    "type": "task",
    "name": "train",
    "commands": ["pip install -r requirements.txt", "torchrun --nnodes=$DSTACK_NODES_NUM train.py"],
    "env": {"WANDB_MODE": "offline"},
    "resources": {"gpu": "A100:8", "disk": "200GB.."},
}


def host(fleet, i):
    return f"10.{fleet // 250}.{fleet % 250}.{i + 1}"


# ---------------------------------------------------------------------------------------------
# Modes that run inside the oracle venv (dstack importable).
# ---------------------------------------------------------------------------------------------

def _capture(group_cls, method, *args, **kwargs):
    """The body the dstack Python client sends for one call."""
    import logging

    seen = {}

    class Stop(Exception):
        pass

    def fake(path, body=None, **_):
        seen["path"], seen["body"] = path, body
        raise Stop()

    try:
        getattr(group_cls(fake, logging.getLogger("x")), method)(*args, **kwargs)
    except Stop:
        pass
    return {"path": seen["path"], "body": json.loads(seen["body"])}


def resources_model():
    import gpuhunt
    from dstack._internal.core.models.instances import Disk, Gpu, Resources

    gpu = Gpu(name="A100", memory_mib=80 * 1024, vendor=gpuhunt.AcceleratorVendor.NVIDIA)
    return Resources(cpus=96, memory_mib=1024 * 1024, gpus=[gpu] * 8, spot=False,
                     disk=Disk(size_mib=2 * 1024 * 1024))


def gen():
    """Prints the request bodies (as the 0.22.5 client builds them) as JSON."""
    from dstack._internal.core.models.configurations import TaskConfiguration
    from dstack._internal.core.models.fleets import (
        ApplyFleetPlanInput, FleetConfiguration, FleetNodesSpec, FleetSpec, SSHHostParams, SSHKey, SSHParams)
    from dstack._internal.core.models.profiles import Profile
    from dstack._internal.core.models.runs import ApplyRunPlanInput, RunSpec
    from dstack._internal.server.testing.common import get_private_key_string
    from dstack.api.server._fleets import FleetsAPIClient
    from dstack.api.server._runs import RunsAPIClient

    key = SSHKey(public="", private=get_private_key_string())
    fleets = []
    for f in range(N_FLEETS):
        conf = FleetConfiguration(
            name=f"ssh-{f}",
            ssh_config=SSHParams(user="ubuntu", ssh_key=key,
                                 hosts=[SSHHostParams(hostname=host(f, i)) for i in range(HOSTS_PER_FLEET)]),
        )
        spec = FleetSpec(configuration=conf, configuration_path="fleet.dstack.yml", profile=Profile())
        fleets.append(_capture(FleetsAPIClient, "apply_plan", "main", ApplyFleetPlanInput(spec=spec)))
    cloud = FleetConfiguration(name="cloud", nodes=FleetNodesSpec(min=0, target=0, max=10), backends=["runpod"])
    cloud_spec = FleetSpec(configuration=cloud, configuration_path="cloud.dstack.yml", profile=Profile())
    fleets.append(_capture(FleetsAPIClient, "apply_plan", "main", ApplyFleetPlanInput(spec=cloud_spec)))

    pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench bench@host"
    plan_spec = RunSpec(run_name=None, repo_id=None, repo_data=None, configuration_path=".dstack.yml",
                        configuration=TaskConfiguration.model_validate(TASK), profile=Profile(name="default"),
                        ssh_key_pub=pub)
    runs_spec = RunSpec(run_name="train-0", repo_id=None, repo_data=None, configuration_path=".dstack.yml",
                        configuration=TaskConfiguration.model_validate({**TASK, "nodes": 3, "name": "train-0"}),
                        profile=Profile(name="default"), ssh_key_pub=pub)
    out = {
        "fleets": fleets,
        "get_plan": _capture(RunsAPIClient, "get_plan", "main", plan_spec),
        "get_plan_offers": _capture(RunsAPIClient, "get_plan", "main", plan_spec, max_offers=50,
                                    for_offers_only=True),
        "apply": _capture(RunsAPIClient, "apply_plan", "main",
                          ApplyRunPlanInput(run_spec=runs_spec, current_resource=None)),
        # `dstack ps` (only active, 100) and `dstack ps -a` (all, 100); job_submissions_limit=1.
        "ps": _capture(RunsAPIClient, "list", project_name="main", repo_id=None, only_active=True,
                       limit=100, job_submissions_limit=1),
        "ps_all": _capture(RunsAPIClient, "list", project_name="main", repo_id=None, only_active=False,
                           limit=100, job_submissions_limit=1),
        "resources": resources_model().model_dump(mode="json"),
    }
    print(json.dumps(out))


def _dstack_session(db):
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    import dstack._internal.server.services.encryption  # noqa: F401  (installs the identity cipher)

    engine = create_async_engine(f"sqlite+aiosqlite:///{db}", connect_args={"timeout": 60})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(conn, _):
        conn.execute("PRAGMA synchronous=OFF")

    return engine, async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def _batch_commits(session, every=200):
    """The helpers commit after every object; commit every `every` calls instead (fast seeding)."""
    real, n = session.commit, [0]

    async def commit():
        n[0] += 1
        if n[0] % every == 0:
            await real()

    session.commit = commit
    return real


async def _main_project(session):
    from sqlalchemy import select
    from dstack._internal.server.models import ProjectModel

    return (await session.execute(select(ProjectModel).where(ProjectModel.name == "main"))).scalar_one()


async def _seed_ssh_fleets(session, project, n_fleets, hosts_per_fleet, prefix, first=0):
    from dstack._internal.core.models.backends.base import BackendType
    from dstack._internal.core.models.fleets import FleetConfiguration, FleetSpec, SSHHostParams, SSHParams, SSHKey
    from dstack._internal.core.models.instances import InstanceAvailability, InstanceOfferWithAvailability, InstanceType
    from dstack._internal.core.models.instances import InstanceStatus
    from dstack._internal.core.models.profiles import Profile
    from dstack._internal.server.testing import common as t

    res = resources_model()
    key = SSHKey(public="", private=t.get_private_key_string())
    for f in range(first, first + n_fleets):
        conf = FleetConfiguration(name=f"{prefix}{f}", ssh_config=SSHParams(
            user="ubuntu", ssh_key=key, hosts=[SSHHostParams(hostname=host(f, i)) for i in range(hosts_per_fleet)]))
        fleet = await t.create_fleet(session, project, spec=FleetSpec(
            configuration=conf, configuration_path="fleet.dstack.yml", profile=Profile()))
        for i in range(hosts_per_fleet):
            itype = InstanceType(name="ssh", resources=res)
            offer = InstanceOfferWithAvailability(backend=BackendType.REMOTE, instance=itype, region="remote",
                                                  price=0.0, availability=InstanceAvailability.AVAILABLE)
            jpd = t.get_job_provisioning_data(dockerized=True, backend=BackendType.REMOTE, region="remote",
                                              hostname=host(f, i), internal_ip=host(f, i), price=0.0,
                                              instance_type=itype)
            await t.create_instance(session, project, fleet=fleet, status=InstanceStatus.IDLE,
                                    backend=BackendType.REMOTE, region="remote", price=0.0,
                                    name=f"{prefix}{f}-{i}", instance_num=i, offer=offer,
                                    job_provisioning_data=jpd,
                                    remote_connection_info=t.get_remote_connection_info(host=host(f, i)),
                                    total_blocks=1)


async def seed_dstack(db, blobs_path):
    from datetime import datetime, timedelta, timezone

    from dstack._internal.core.models.backends.base import BackendType
    from dstack._internal.core.models.fleets import FleetSpec
    from dstack._internal.core.models.runs import JobStatus, RunSpec, RunStatus
    from dstack._internal.server.testing import common as t

    blobs = json.loads(pathlib.Path(blobs_path).read_text())
    engine, Session = _dstack_session(db)
    async with Session() as session:
        final_commit = _batch_commits(session)
        project = await _main_project(session)
        from sqlalchemy import select
        from dstack._internal.server.models import UserModel
        user = (await session.execute(select(UserModel).where(UserModel.name == "admin"))).scalar_one()
        await t.create_backend(session, project.id, BackendType.RUNPOD,
                               config={"type": "runpod", "regions": None, "community_cloud": True},
                               auth={"type": "api_key", "api_key": "bench"})
        await _seed_ssh_fleets(session, project, N_FLEETS, HOSTS_PER_FLEET, "ssh-")
        cloud = blobs["fleets"][-1]["body"]["plan"]["spec"]
        await t.create_fleet(session, project, spec=FleetSpec.model_validate(cloud))
        repo = await t.create_repo(session, project.id)
        await session.flush()  # the repo's id
        spec = RunSpec.model_validate(blobs["apply"]["body"]["plan"]["run_spec"])
        # create_job derives the job specs from the run spec each time (the slow part of
        # seeding); derive them once for train-0 and rename, as the clone on our side does.
        from dstack._internal.server.services.jobs import JobSpec
        derive, cache = t.get_job_specs_from_run_spec, {}

        async def job_specs(run_spec, **kw):
            if "tpl" not in cache:
                tpl = run_spec.model_copy(deep=True)
                tpl.run_name = "train-0"
                cache["tpl"] = [js.model_dump_json() for js in await derive(run_spec=tpl, **kw)]
            return [JobSpec.model_validate_json(js.replace('"train-0', f'"{run_spec.run_name}'))
                    for js in cache["tpl"]]

        t.get_job_specs_from_run_spec = job_specs
        t0 = datetime.now(timezone.utc) - timedelta(hours=2)
        for r in range(N_RUNS):
            s = spec.model_copy(deep=True)
            s.run_name = f"train-{r}"
            s.configuration.name = s.run_name
            at = t0 + timedelta(seconds=r)
            run = await t.create_run(session, project, repo, user, run_name=s.run_name, run_spec=s,
                                     status=RunStatus.SUBMITTED, submitted_at=at)
            for j in range(3):
                await t.create_job(session, run, job_num=j, status=JobStatus.SUBMITTED, submitted_at=at,
                                   last_processed_at=at)
        await final_commit()
    await engine.dispose()


async def seed_dstack_instances(db):
    engine, Session = _dstack_session(db)
    async with Session() as session:
        final_commit = _batch_commits(session)
        project = await _main_project(session)
        await _seed_ssh_fleets(session, project, RSS_FLEETS, RSS_HOSTS_PER_FLEET, "big-")
        await final_commit()
    await engine.dispose()


# ---------------------------------------------------------------------------------------------
# Our server: seeding with sqlite3 (the schema is dstack-sdk/migrations/sqlite).
# ---------------------------------------------------------------------------------------------

def ours_finish_seed(db, resources):
    """Marks the SSH instances IDLE with the host's resources (what a finished deploy writes)
    and clones the one applied run (3 jobs) into N_RUNS runs."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    for row in con.execute("SELECT * FROM instances WHERE remote_connection_info IS NOT NULL").fetchall():
        offer = json.loads(row["offer"]) if row["offer"] else None
        jpd = json.loads(row["job_provisioning_data"]) if row["job_provisioning_data"] else None
        if offer:
            offer["instance"]["resources"] = resources
        if jpd:
            jpd["instance_type"]["resources"] = resources
            jpd["internal_ip"] = jpd.get("internal_ip") or jpd.get("hostname")
        con.execute("UPDATE instances SET status = 'IDLE', offer = ?, job_provisioning_data = ?, "
                    "total_blocks = COALESCE(total_blocks, 1), started_at = created_at WHERE id = ?",
                    (json.dumps(offer) if offer else None, json.dumps(jpd) if jpd else None, row["id"]))
    run = con.execute("SELECT * FROM runs").fetchone()
    jobs = con.execute("SELECT * FROM jobs WHERE run_id = ?", (run["id"],)).fetchall()
    base_name = run["run_name"]
    rcols, jcols = run.keys(), jobs[0].keys()
    for r in range(1, N_RUNS):
        rid, name = str(uuid.uuid4()), f"{base_name.rsplit('-', 1)[0]}-{r}"
        rv = dict(run)
        rv.update(id=rid, run_name=name,
                  run_spec=run["run_spec"].replace(f'"{base_name}"', f'"{name}"'),
                  submitted_at=_shift(run["submitted_at"], r), last_processed_at=_shift(run["submitted_at"], r))
        con.execute(f"INSERT INTO runs ({','.join(rcols)}) VALUES ({','.join('?' * len(rcols))})",
                    [rv[c] for c in rcols])
        for j in jobs:
            jv = dict(j)
            jv.update(id=str(uuid.uuid4()), run_id=rid, run_name=name,
                      job_name=j["job_name"].replace(base_name, name, 1),
                      job_spec_data=j["job_spec_data"].replace(f'"{base_name}', f'"{name}'),
                      submitted_at=rv["submitted_at"], last_processed_at=rv["submitted_at"])
            con.execute(f"INSERT INTO jobs ({','.join(jcols)}) VALUES ({','.join('?' * len(jcols))})",
                        [jv[c] for c in jcols])
    con.commit()
    con.close()


def _shift(ts, seconds):
    """An RFC 3339 timestamp moved by `seconds` (keeps the stored format)."""
    from datetime import datetime, timedelta

    d = datetime.fromisoformat(ts.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    out = d.isoformat(timespec="microseconds").replace("+00:00", "Z" if ts.endswith("Z") else "+00:00")
    return out


def ours_templates(db):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    fleet = dict(con.execute("SELECT * FROM fleets WHERE name = 'ssh-0'").fetchone())
    inst = dict(con.execute("SELECT * FROM instances WHERE fleet_id = ? ORDER BY instance_num LIMIT 1",
                            (fleet["id"],)).fetchone())
    con.close()
    return fleet, inst


def ours_seed_instances(db, fleet_tpl, inst_tpl):
    """RSS_FLEETS x RSS_HOSTS_PER_FLEET IDLE SSH instances, cloned from a seeded one."""
    con = sqlite3.connect(db, timeout=60)
    project_id = con.execute("SELECT id FROM projects WHERE name = 'main'").fetchone()[0]
    old_host = host(0, 0)
    for f in range(RSS_FLEETS):
        fid, fname = str(uuid.uuid4()), f"big-{f}"
        spec = json.loads(fleet_tpl["spec"])
        spec["configuration"]["name"] = fname
        spec["configuration"]["ssh_config"]["hosts"] = [{"hostname": host(f, i)} for i in range(RSS_HOSTS_PER_FLEET)]
        fv = dict(fleet_tpl, id=fid, name=fname, project_id=project_id, spec=json.dumps(spec))
        con.execute(f"INSERT INTO fleets ({','.join(fv)}) VALUES ({','.join('?' * len(fv))})", list(fv.values()))
        for i in range(RSS_HOSTS_PER_FLEET):
            h = host(f, i)
            iv = dict(inst_tpl, id=str(uuid.uuid4()), name=f"{fname}-{i}", instance_num=i, fleet_id=fid,
                      project_id=project_id,
                      job_provisioning_data=(inst_tpl["job_provisioning_data"] or "").replace(f'"{old_host}"', f'"{h}"') or None,
                      remote_connection_info=inst_tpl["remote_connection_info"].replace(f'"{old_host}"', f'"{h}"'))
            con.execute(f"INSERT INTO instances ({','.join(iv)}) VALUES ({','.join('?' * len(iv))})",
                        list(iv.values()))
    con.commit()
    con.close()


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthcheck", timeout=1) as r:
                if b"running" in r.read():
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def post(url, path, body, timeout=120):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rss_kib(pid):
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            for line in pathlib.Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def serve_catalog(catalog_dir, root):
    """gpuhunt's v3 layout (`<provider>/version`, `<provider>/<version>/catalog.zip`) on a local
    HTTP server, so that dstack's `gpuhunt.default_catalog()` loads the same CSVs into memory
    once, as it does from S3 (with GPUHUNT_CATALOG_DIR gpuhunt still tries S3 first and then
    re-parses the CSV on every query)."""
    import functools
    import http.server
    import threading
    import zipfile

    version = "20260101-1"
    for csv in pathlib.Path(catalog_dir).glob("*.csv"):
        d = pathlib.Path(root) / csv.stem
        (d / version).mkdir(parents=True, exist_ok=True)
        (d / "version").write_text(version)
        with zipfile.ZipFile(d / version / "catalog.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.write(csv, csv.name)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}"


class Server:
    def __init__(self, name, cmd, tmp, catalog, background):
        self.name, self.cmd, self.tmp = name, cmd, tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, HOME=tmp, DSTACK_SERVER_DIR=tmp + "/server", DSTACK_SERVER_ADMIN_TOKEN=TOKEN,
                        DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1", DSTACK_SERVER_PORT=str(self.port),
                        DSTACK_SERVER_HOST="127.0.0.1", DSTACK_SERVER_LOG_LEVEL="warn",
                        # Otherwise a restart syncs backends with the default config.yml (deletes them).
                        DSTACK_SERVER_CONFIG_DISABLED="1")
        self.env.pop("GPUHUNT_CATALOG_DIR", None)
        self.env.pop("GPUHUNT_CATALOG_URL", None)
        # Ours loads the CSV directory once at startup; dstack loads the v3 HTTP layout once.
        self.env["GPUHUNT_CATALOG_DIR" if name == "ours" else "GPUHUNT_CATALOG_URL"] = catalog[name]
        if not background:
            self.env["DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED"] = "1"
        self.db = tmp + "/server/data/sqlite.db"
        self.proc = None

    def start(self):
        cmd = self.cmd + (["--host", "127.0.0.1", "--port", str(self.port)] if self.name == "dstack" else [])
        self.log = open(self.tmp + f"/{self.name}.log", "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait(self.url)
        return self

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def check(status_body, what):
    status, body = status_body
    if status != 200:
        raise RuntimeError(f"{what}: HTTP {status}: {body[:500]!r}")
    return json.loads(body)


def cpu_seconds(pid):
    """User + system CPU seconds of a process and its children (dstack's server forks none; ours neither)."""
    total = 0.0
    pids = [pid]
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    pids += [int(p) for p in out.split()]
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def load(target, url, routes, pid):
    """Closed-loop load per route and concurrency; adds the server's CPU ms per request, the
    figure that does not depend on what else runs on the machine."""
    res = {}
    for conc in CONCS:
        for rt in routes:
            cpu0 = cpu_seconds(pid)
            out = subprocess.run([str(target / "examples" / "api_load"), url, TOKEN, str(conc), str(SECS),
                                  json.dumps([rt])], capture_output=True, text=True, check=True)
            cpu = cpu_seconds(pid) - cpu0
            for k, v in json.loads(out.stdout).items():
                v["server_cpu_ms_per_req"] = 1000 * cpu / max(1, v.get("requests") or 1)
                res[f"{k} @{conc}"] = v
    return res


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--gen":
        return gen()
    if len(sys.argv) > 1 and sys.argv[1] == "--seed-dstack":
        import asyncio
        return asyncio.run(seed_dstack(sys.argv[2], sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "--seed-dstack-instances":
        import asyncio
        return asyncio.run(seed_dstack_instances(sys.argv[2]))

    venv = subprocess.run(["bash", str(ROOT / "scripts/oracle-venv.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()
    vpy = venv + "/bin/python"
    if not os.environ.get("SKIP_BUILD"):
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "server-bin", "--no-default-features", "--bin", "dstack-server",
                        "--example", "api_load"], cwd=ROOT, check=True)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    work = tempfile.mkdtemp(prefix="runs-bench-")
    with tarfile.open(CATALOG) as tf:
        tf.extractall(work + "/catalog")
    catalog_dir = next(p.parent for p in pathlib.Path(work + "/catalog").rglob("aws.csv"))
    catalog = {"ours": str(catalog_dir), "dstack": serve_catalog(catalog_dir, work + "/catalog-http")}
    blobs = json.loads(subprocess.run([vpy, __file__, "--gen"], capture_output=True, text=True, check=True).stdout)
    blobs_path = work + "/blobs.json"
    pathlib.Path(blobs_path).write_text(json.dumps(blobs))
    routes = [
        {"name": "runs/get_plan (dstack apply)", **blobs["get_plan"]},
        {"name": "runs/get_plan (dstack offer)", **blobs["get_plan_offers"]},
        {"name": "runs/list (dstack ps)", **blobs["ps"]},
        {"name": "runs/list (dstack ps -a)", **blobs["ps_all"]},
        {"name": "runs/list {limit:100}", "path": "/api/runs/list", "body": {"limit": 100}},
    ]
    if os.environ.get("ROUTES"):
        routes = [r for r in routes if any(w in r["name"] for w in os.environ["ROUTES"].split(","))]
    cmds = {"ours": [str(target / "dstack-server")], "dstack": [venv + "/bin/dstack", "server"]}
    results, templates = {}, None
    sides = [n for n in ("ours", "dstack") if n in os.environ.get("ONLY", "ours,dstack").split(",")]
    for name in sides:
        r = results[name] = {}
        tmp = tempfile.mkdtemp(prefix=f"{name}-", dir=work)
        s = Server(name, cmds[name], tmp, catalog, background=False)
        # 1. Seed.
        s.start()
        if name == "ours":
            check(post(s.url, "/api/project/main/backends/create_yaml",
                       {"config_yaml": "type: runpod\ncommunity_cloud: true\ncreds:\n  type: api_key\n  api_key: bench\n"}),
                  "backends/create_yaml")
            for f in blobs["fleets"]:
                check(post(s.url, f["path"], f["body"]), "fleets/apply")
            check(post(s.url, blobs["apply"]["path"], blobs["apply"]["body"]), "runs/apply")
            s.stop()
            ours_finish_seed(s.db, blobs["resources"])
            templates = ours_templates(s.db)
        else:
            s.stop()
            subprocess.run([vpy, __file__, "--seed-dstack", s.db, blobs_path], check=True)
        # 2. Load.
        s.start()
        sanity = {}
        for rt in routes:
            st, body = post(s.url, rt["path"], rt["body"])
            j = json.loads(body) if st == 200 else None
            sanity[rt["name"]] = {"status": st, "bytes": len(body),
                                  "items": (len(j) if isinstance(j, list) else
                                            sum(len(jp.get("offers", [])) for jp in j.get("job_plans", []))
                                            if isinstance(j, dict) else None)}
            if st != 200:
                print(f"{name} {rt['name']}: HTTP {st}: {body[:300]!r}", file=sys.stderr)
        r["sanity"] = sanity
        time.sleep(1)
        r["routes"] = load(target, s.url, routes, s.proc.pid)
        r["rss_seeded_mib"] = rss_kib(s.proc.pid) / 1024
        s.stop()
        # 3. RSS with 1,000 instances, background processing on.
        tmp2 = tempfile.mkdtemp(prefix=f"{name}-rss-", dir=work)
        s = Server(name, cmds[name], tmp2, catalog, background=True).start()
        try:
            check(post(s.url, "/api/instances/list", {}), "instances/list")
            time.sleep(3)
            before = rss_kib(s.proc.pid)
            if name == "ours":
                ours_seed_instances(s.db, *templates)
            else:
                subprocess.run([vpy, __file__, "--seed-dstack-instances", s.db], check=True)
            listed = check(post(s.url, "/api/instances/list", {}), "instances/list")
            check(post(s.url, "/api/fleets/list", {}), "fleets/list")
            after_list = rss_kib(s.proc.pid)
            time.sleep(10)
            after = rss_kib(s.proc.pid)
            n = RSS_FLEETS * RSS_HOSTS_PER_FLEET
            r["rss"] = {"before_kib": before, "after_list_kib": after_list, "after_10s_kib": after,
                        "listed": len(listed), "kib_per_instance": (max(after, after_list) - before) / n}
        finally:
            s.stop()
    shutil.rmtree(work, ignore_errors=True)
    if sides != ["ours", "dstack"]:
        for name in sides:
            for route, a in results[name]["routes"].items():
                print(f"{name:7} {route:34} p50/p99 {a['p50_ms'] or 0:8.2f}/{a['p99_ms'] or 0:<8.2f} ms  rps {a['rps']:8.0f}"
                      f"  server CPU {a['server_cpu_ms_per_req']:.2f} ms/req  errors {a['errors']}")
            print(f"{name:7} RSS: {results[name]['rss']['kib_per_instance']:.1f} KiB/instance")
        print(json.dumps(results))
        return 0

    o, d = results["ours"], results["dstack"]
    print(f"{'route @concurrency':34} {'ours p50/p99 ms':>17} {'dstack p50/p99 ms':>19} {'p99 ratio':>9} {'rps ours/dstack':>16}  errors")
    for route in o["routes"]:
        a, b = o["routes"][route], d["routes"].get(route, {})
        ratio = (b.get("p99_ms") or 0) / (a["p99_ms"] or 1)
        print(f"{route:34} {a['p50_ms'] or 0:8.2f}/{a['p99_ms'] or 0:<8.2f} {b.get('p50_ms') or 0:9.1f}/{b.get('p99_ms') or 0:<9.1f}"
              f" {ratio:8.0f}x {a['rps']:8.0f}/{b.get('rps', 0):<7.1f}  {a['errors']}/{b.get('errors')}")
    print("items per response (offers or runs):",
          {k: (o["sanity"][k]["items"], d["sanity"][k]["items"]) for k in o["sanity"]})
    for n_, x in (("ours", o), ("dstack", d)):
        rs = x["rss"]
        print(f"RSS {n_}: seeded+loaded {x['rss_seeded_mib']:.1f} MiB; 1,000 instances: before {rs['before_kib'] / 1024:.1f} MiB, "
              f"after list {rs['after_list_kib'] / 1024:.1f} MiB, +10 s {rs['after_10s_kib'] / 1024:.1f} MiB "
              f"({rs['listed']} listed) -> {rs['kib_per_instance']:.1f} KiB/instance")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
