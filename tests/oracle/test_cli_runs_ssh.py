"""The real dstack CLI (PyPI dstack==0.22.5) against our server with an SSH fleet on a real
OpenSSH server on loopback: fleet apply, tasks detached and attached, ps, logs, stop, offers
(judged by gpuhunt on the same catalog), a service through the server proxy, fleet delete.

Needs root (the sshd test users come from scripts/sshd-test-env.sh, run here when missing).
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, SHARED, _free_port, _wait_healthy, build_server

DSTACK = pathlib.Path(sys.executable).parent / "dstack"
USER = "dstack-test"
TOKEN = "cli-runs-admin-token"


def _sh(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on a free loopback port with its own host key; `dstack-test` logs in with
    a generated key (kept in the fixture dir) and, as dstack's attach needs, with keys the
    agent adds to its ~/.ssh/authorized_keys."""
    if os.geteuid() != 0:
        pytest.fail("needs root: the SSH fleet test creates users and starts sshd")
    subprocess.run(["bash", str(ROOT / "scripts" / "sshd-test-env.sh")], check=True)
    # Directly under /tmp: sshd reads the authorized keys as the login user, who cannot
    # traverse pytest's private (0700) temp tree.
    import tempfile

    d = pathlib.Path(tempfile.mkdtemp(prefix="dstack-cli-sshd-", dir="/tmp"))
    os.chmod(d, 0o755)
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519"))
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "userkey"))
    ak = d / "ak"
    ak.mkdir()
    os.chmod(ak, 0o755)
    shutil.copy(d / "userkey.pub", ak / USER)
    os.chmod(ak / USER, 0o644)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile .ssh/authorized_keys {d}/ak/%u\nStrictModes no\nUsePAM no\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "AllowTcpForwarding yes\nMaxStartups 100\nMaxSessions 100\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    deadline = time.time() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        assert time.time() < deadline, "sshd did not start"
        time.sleep(0.1)
    try:
        yield {"port": port, "key": d / "userkey", "dir": d}
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, sshd):
    """Our server with a Lambda catalog, agent paths and ports private to this test."""
    binary = build_server()
    d = tmp_path_factory.mktemp("cli-runs")
    home = d / "home"
    home.mkdir()
    catalog = d / "catalog"
    catalog.mkdir()
    shutil.copy(SHARED / "catalog" / "lambdalabs_gpuhunt_v2.csv", catalog / "lambdalabs.csv")
    agent_home = d / "agent-home"
    port = _free_port()
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        DSTACK_SERVER_DIR=str(d / "server"),
        DSTACK_SERVER_PORT=str(port),
        DSTACK_SERVER_HOST="127.0.0.1",
        DSTACK_SERVER_ADMIN_TOKEN=TOKEN,
        DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1",
        GPUHUNT_CATALOG_DIR=str(catalog),
        DSTACK_AGENT_REMOTE_PATH=str(d / "bin" / "dstack-agent"),
        DSTACK_AGENT_HOME=str(agent_home),
        DSTACK_AGENT_SHIM_PORT=str(_free_port()),
        DSTACK_AGENT_RUNNER_PORT=str(_free_port()),
        DSTACK_SERVER_JOB_DISCONNECT_TIMEOUT="5",
    )
    url = f"http://127.0.0.1:{port}"
    log = open(d / "server.log", "a")

    def start():
        proc = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_healthy(url, proc, 60, "our server")
        return proc

    cli_env = dict(env)
    cli_env.pop("DSTACK_SERVER_PORT")
    s = {"url": url, "env": cli_env, "dir": d, "proj": d / "proj", "catalog": catalog,
         "agent_home": agent_home, "log": d / "server.log", "start": start, "proc": start()}
    s["proj"].mkdir()
    cli(s, "project", "add", "--name", "main", "--url", url, "--token", TOKEN, "-y")
    try:
        yield s
    finally:
        # Stop the agent the fleet started (its pid file is in the private agent home).
        pid = agent_home / "agent.pid"
        if pid.exists():
            subprocess.run(["kill", "-TERM", "--", "-" + pid.read_text().strip()], capture_output=True)
        s["proc"].kill()
        s["proc"].wait()


def kill9_and_restart(s, pause=1.0):
    """kill -9 the server, wait, start it again on the same directory and port."""
    s["proc"].kill()
    s["proc"].wait()
    time.sleep(pause)
    s["proc"] = s["start"]()


def cli(s, *args, check=True, timeout=180, input=None):
    r = subprocess.run([str(DSTACK), *args], env=s["env"], cwd=s["proj"], capture_output=True,
                       text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(
            f"dstack {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
            f"--- server log tail ---\n{s['log'].read_text()[-4000:]}"
        )
    return r


def write(s, name, text):
    (s["proj"] / name).write_text(text)
    return name


def api(s, path, body):
    req = urllib.request.Request(s["url"] + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def run_status(s, name):
    return api(s, "/api/project/main/runs/get", {"run_name": name})


def wait_run(s, name, pred, limit=90):
    deadline = time.time() + limit
    while True:
        run = run_status(s, name)
        if pred(run):
            return run
        assert time.time() < deadline, f"run {name} stuck in {run['status']}: {json.dumps(run)[:2000]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fleet(server, sshd):
    conf = write(server, "fleet.dstack.yml", f"""type: fleet
name: loop
ssh_config:
  user: {USER}
  port: {sshd['port']}
  identity_file: {sshd['key']}
  hosts: [127.0.0.1]
""")
    # Detached, then kill -9 while the agent is being installed: after the restart the
    # install resumes and the instance becomes idle.
    cli(server, "apply", "-f", conf, "-y", "-d", timeout=300)
    deadline = time.time() + 30
    while "deploying the agent" not in server["log"].read_text():
        assert time.time() < deadline, "the install never started"
        time.sleep(0.05)
    kill9_and_restart(server)
    deadline = time.time() + 180
    while True:
        out = cli(server, "fleet").stdout
        if "idle" in out:
            return out
        assert time.time() < deadline, f"fleet never became idle:\n{out}"
        time.sleep(1)


TASK = """type: task
name: {name}
commands:
  - echo hello
  - python3 -c 'print(2+2)'
resources:
  disk: 1GB..
"""


def test_fleet_apply_shows_an_idle_ssh_instance(server, fleet):
    assert "ssh" in fleet and "idle" in fleet
    lst = cli(server, "fleet", "list").stdout
    assert "loop" in lst


def test_task_detached_ps_and_logs(server, fleet):
    conf = write(server, "task-d.dstack.yml", TASK.format(name="hello-d"))
    r = cli(server, "apply", "-f", conf, "-y", "-d")
    assert "submitted" in r.stdout.lower()
    run = wait_run(server, "hello-d", lambda r: r["status"] in ("done", "failed", "terminated"))
    assert run["status"] == "done", json.dumps(run)[:2000]
    ps = cli(server, "ps", "-a").stdout
    assert "hello-d" in ps and "exited (0)" in ps
    logs = cli(server, "logs", "hello-d").stdout
    lines = [l.strip() for l in logs.splitlines() if l.strip()]
    assert "hello" in lines and "4" in lines, logs
    assert "cannot set terminal process group" not in logs


def test_task_attached_streams_logs_and_exits_zero(server, fleet):
    conf = write(server, "task-a.dstack.yml", TASK.format(name="hello-a"))
    r = cli(server, "apply", "-f", conf, "-y", timeout=240)
    lines = [l.strip() for l in r.stdout.splitlines()]
    assert "hello" in lines and "4" in lines, r.stdout + r.stderr
    assert r.returncode == 0
    assert run_status(server, "hello-a")["status"] == "done"


def test_files_are_uploaded_and_placed(server, fleet):
    data = server["proj"] / "data"
    data.mkdir(exist_ok=True)
    (data / "note.txt").write_text("from-files\n")
    target = server["dir"] / "placed" / "note2.txt"
    conf = write(server, "files.dstack.yml", f"""type: task
name: withfiles
files:
  - data
  - data/note.txt:{target}
commands:
  - cat data/note.txt
  - cat {target}
resources:
  disk: 1GB..
""")
    cli(server, "apply", "-f", conf, "-y", "-d")
    run = wait_run(server, "withfiles", lambda r: r["status"] in ("done", "failed", "terminated"))
    assert run["status"] == "done", json.dumps(run)[:2000]
    lines = [l.strip() for l in cli(server, "logs", "withfiles").stdout.splitlines()]
    assert lines.count("from-files") == 2


def test_long_task_is_stopped(server, fleet):
    conf = write(server, "sleep.dstack.yml", """type: task
name: sleeper
commands:
  - echo started
  - sleep 600
resources:
  disk: 1GB..
""")
    cli(server, "apply", "-f", conf, "-y", "-d")
    wait_run(server, "sleeper", lambda r: r["status"] == "running")
    assert "running" in cli(server, "ps").stdout
    # A fleet with a running job cannot be deleted (dstack's "Fleet is in use").
    r = cli(server, "fleet", "delete", "loop", "-y", check=False)
    assert r.returncode != 0 and "in use" in (r.stdout + r.stderr), r.stdout + r.stderr
    cli(server, "stop", "sleeper", "-y")
    run = wait_run(server, "sleeper", lambda r: r["status"] in ("terminated", "failed", "done"), 60)
    assert run["status"] == "terminated" and run["termination_reason"] == "stopped_by_user"
    job = run["jobs"][0]["job_submissions"][-1]
    assert job["status"] == "terminated"
    assert "stopped" in cli(server, "ps", "-a").stdout
    # The instance is free again.
    wait_run(server, "sleeper", lambda r: True)
    deadline = time.time() + 30
    while "idle" not in cli(server, "fleet").stdout:
        assert time.time() < deadline
        time.sleep(1)


def test_offer_lists_catalog_offers_like_gpuhunt(server, fleet):
    """`dstack offer` through our server equals dstack's own offer code (its
    requirements_to_query_filter and catalog_item_to_offer) over gpuhunt on the same CSV."""
    import gpuhunt
    import gpuhunt._internal.catalog as gcat
    import gpuhunt._internal.storage as gstorage
    from dstack._internal.core.backends.base.offers import get_catalog_offers
    from dstack._internal.core.models.backends.base import BackendType
    from dstack._internal.core.models.runs import Requirements

    api(server, "/api/project/main/backends/create_yaml",
        {"config_yaml": "type: lambda\ncreds:\n  type: api_key\n  api_key: 0123456789abcdef\n"})
    for args in (["--gpu", "A100"], ["--gpu", "H100:8"], ["--cpu", "30..", "--memory", "200GB.."]):
        r = cli(server, "offer", *args, "--max-offers", "20", "--format", "json")
        ours = json.loads(r.stdout)
        got = [(o["instance"]["name"], o["region"], o["price"], o["instance"]["resources"]["disk"]["size_mib"])
               for o in ours["offers"]]
        assert got and all(o["backend"] == "lambda" for o in ours["offers"]), args

        with open(server["catalog"] / "lambdalabs.csv", encoding="utf-8") as f:
            items = list(gstorage.load(f, provider="lambdalabs"))
        cat = gpuhunt.Catalog(balance_resources=False, auto_reload=False)
        cat.catalog = {"lambdalabs": gcat.ProviderCatalog(version="test", items=items)}
        cat.loaded_at = time.monotonic()
        req = Requirements.model_validate(ours["requirements"])
        offers = get_catalog_offers(BackendType.LAMBDA, requirements=req, catalog=cat)
        want = [(o.instance.name, o.region, o.price, o.instance.resources.disk.size_mib) for o in offers]
        assert ours["total_offers"] == len(want), args
        assert got == want[:20], args


def test_service_through_the_server_proxy(server, fleet):
    port = _free_port()
    conf = write(server, "svc.dstack.yml", f"""type: service
name: web
port: {port}
commands:
  - mkdir -p web && echo service-ok > web/index.html && cd web && python3 -m http.server {port}
resources:
  disk: 1GB..
""")
    cli(server, "apply", "-f", conf, "-y", "-d")
    run = wait_run(server, "web", lambda r: r["status"] == "running")
    assert run["service"]["url"] == "/proxy/services/main/web/"
    url = server["url"] + "/proxy/services/main/web/"
    deadline = time.time() + 30
    body = None
    while body is None:
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read().decode()
        except urllib.error.HTTPError as e:
            assert e.code in (502, 503) and time.time() < deadline, e.read()
            time.sleep(0.5)
    assert body.strip() == "service-ok"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code in (401, 403)
    cli(server, "stop", "web", "-y")
    wait_run(server, "web", lambda r: r["status"] in ("terminated", "failed", "done"), 60)


def test_restart_mid_task_loses_no_log_line(server, fleet):
    conf = write(server, "count.dstack.yml", """type: task
name: counter
commands:
  - for i in $(seq 1 60); do echo line-$i; sleep 0.1; done
resources:
  disk: 1GB..
""")
    cli(server, "apply", "-f", conf, "-y", "-d")
    wait_run(server, "counter", lambda r: r["status"] == "running")
    time.sleep(1.5)
    kill9_and_restart(server)
    run = wait_run(server, "counter", lambda r: r["status"] in ("done", "failed", "terminated"), 120)
    assert run["status"] == "done", json.dumps(run)[:2000]
    logs = cli(server, "logs", "counter").stdout
    lines = [l.strip() for l in logs.splitlines() if l.strip().startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 61)], logs


def test_retry_resubmits_a_failed_job_after_the_backoff(server, fleet):
    conf = write(server, "flaky.dstack.yml", """type: task
name: flaky
commands:
  - echo attempt
  - exit 3
retry:
  on_events: [error]
  duration: 1h
resources:
  disk: 1GB..
""")
    cli(server, "apply", "-f", conf, "-y", "-d")
    run = wait_run(server, "flaky", lambda r: r["status"] == "pending", 60)
    first = run["jobs"][0]["job_submissions"][0]
    assert first["status"] == "failed" and first["exit_status"] == 3
    # dstack's first back-off is 15 s.
    t0 = time.time()
    run = wait_run(server, "flaky", lambda r: len(r["jobs"][0]["job_submissions"]) >= 2, 60)
    assert time.time() - t0 > 5
    assert run["jobs"][0]["job_submissions"][-1]["submission_num"] == 1
    cli(server, "stop", "flaky", "-y")
    run = wait_run(server, "flaky", lambda r: r["status"] in ("terminated", "failed", "done"), 60)
    assert run["status"] == "terminated"


def test_max_duration_stops_the_job(server, fleet):
    conf = write(server, "long.dstack.yml", """type: task
name: bounded
commands:
  - sleep 602
max_duration: 4s
resources:
  disk: 1GB..
""")
    cli(server, "apply", "-f", conf, "-y", "-d")
    run = wait_run(server, "bounded", lambda r: r["status"] in ("terminated", "failed", "done"), 60)
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason"] == "max_duration_exceeded", json.dumps(run)[:2000]
    assert sub["status"] == "terminated"


def test_agent_crash_fails_the_job_with_a_clear_message(server, fleet):
    conf = write(server, "crash.dstack.yml", """type: task
name: crashy
commands:
  - echo up
  - sleep 601
resources:
  disk: 1GB..
""")
    cli(server, "apply", "-f", conf, "-y", "-d")
    wait_run(server, "crashy", lambda r: r["status"] == "running")
    pid = (server["agent_home"] / "agent.pid").read_text().strip()
    subprocess.run(["kill", "-KILL", "--", "-" + pid], capture_output=True)
    subprocess.run(["kill", "-KILL", pid], capture_output=True)
    try:
        run = wait_run(server, "crashy", lambda r: r["status"] in ("failed", "terminated", "done"), 90)
        sub = run["jobs"][0]["job_submissions"][-1]
        assert run["status"] == "failed", json.dumps(run)[:2000]
        assert sub["termination_reason"] == "instance_unreachable"
        assert "has not answered" in sub["termination_reason_message"]
        assert "crashy" in cli(server, "ps", "-a").stdout
    finally:
        subprocess.run(["pkill", "-f", "sleep 601"], capture_output=True)


def test_fleet_delete_cleans_up(server, fleet):
    cli(server, "fleet", "delete", "loop", "-y", timeout=120)
    deadline = time.time() + 60
    while True:
        fleets = api(server, "/api/project/main/fleets/list", {})
        if not fleets:
            break
        assert time.time() < deadline, fleets
        time.sleep(1)
    shim_port = int(server["env"]["DSTACK_AGENT_SHIM_PORT"])
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", shim_port), timeout=1).close()
        except OSError:
            break
        assert time.time() < deadline, "the agent still listens after fleet delete"
        time.sleep(0.5)
