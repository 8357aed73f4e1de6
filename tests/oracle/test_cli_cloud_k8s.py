"""The Kubernetes backend, end to end with the real dstack CLI 0.22.5.

The cluster is the fake Kubernetes API server of `tests/support/fake_k8s.rs`, run as a process
(`cargo --example fake_k8s`, `tests/support/fake_k8s_server.rs`) with a kubelet that really
runs the pods on this machine, each on its own loopback address (its `ClusterIP` service gets
the same one):

* the project's SSH jump pod is OpenSSH's `sshd` on the "node" (127.0.0.1) at the NodePort
  given as `proxy_jump.port`, accepting the keys the pod's command and the server's key
  installer put into its `authorized_keys`;
* a job pod runs our agent binary (`dstack-server agent`) in runner mode, as the pod's
  command runs `dstack-runner`: the runner API on 10999 and the job's SSH server on 10022
  with the `--ssh-authorized-key` keys of the pod's command; deleting the pod kills it.

Our server gets the backend as the Backends page writes it (`kubeconfig` inline,
`proxy_jump: {hostname, port}`) and an elastic fleet on it (dstack 0.22 runs need a fleet).
Then, with the CLI as users run it:

* `dstack apply` attached: the CLI SSHes to the job pod through the jump pod (`ProxyJump`),
  streams the logs and exits 0; the run is done and its pod and service are deleted;
* `dstack apply -d` + `dstack logs`;
* a service reached through our server's proxy `/proxy/services/main/<run>/` (which goes to
  the pod through the jump pod too);
* `dstack stop` of a long task: terminated, pod deleted.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from cloud_env import TOKEN, api, cli, cloud_env, wait_port, wait_run
from conftest import _free_port, build_example, build_server

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
users:
- name: dstack
  user:
    token: good-token
contexts:
- name: fake
  context:
    cluster: fake
    user: dstack
current-context: fake
"""

FLEET = """type: fleet
name: k8s
nodes: 0..2
backends: [kubernetes]
"""

RESOURCES = """resources:
  cpu: 1..
  memory: 0.5GB..
  disk: 1GB..
"""


def backend_yaml(url, jump_port):
    """The backend as the Backends page configures it (kubeconfig inline instead of a file)."""
    kubeconfig = "".join("    " + l + "\n" for l in KUBECONFIG.format(url=url).splitlines())
    return ("type: kubernetes\nkubeconfig:\n  filename: kubeconfig\n  data: |\n" + kubeconfig +
            f"proxy_jump:\n  hostname: 127.0.0.1\n  port: {jump_port}\n")


@pytest.fixture(scope="module")
def env():
    port = _free_port()
    work = pathlib.Path(tempfile.mkdtemp(prefix="dstack-k8s-", dir="/tmp"))
    os.chmod(work, 0o755)
    kubelet_log = open(work / "kubelet.log", "w")
    fake = subprocess.Popen(
        [str(build_example("fake_k8s")), f"127.0.0.1:{port}", str(build_server()), str(work / "cluster")],
        stdout=subprocess.DEVNULL, stderr=kubelet_log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, fake, "fake Kubernetes")
        # Job pods are reached through the jump pod, never through the "VM" sshd of cloud_env.
        server_env = dict(DSTACK_SERVER_INSTANCE_SSH_OVERRIDE="")
        with cloud_env("#!/bin/sh\n", server_env) as s:
            s["fake"] = url
            s["work"] = work
            s["jump_port"] = _free_port()
            yield s
    finally:
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/_fake/shutdown", method="POST"), timeout=30)
        except OSError:
            pass
        fake.kill()
        fake.wait()
        kubelet_log.close()
        shutil.rmtree(work, ignore_errors=True)


def objects(s, kind):
    with urllib.request.urlopen(f"{s['fake']}/_fake/objects/{kind}", timeout=5) as r:
        return json.loads(r.read())


def job_objects(s):
    """Names of the job pods and their services and secrets (the jump pod's excluded)."""
    out = []
    for kind in ("pods", "services", "secrets"):
        for o in objects(s, kind):
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "dstack-ssh-proxy":
                out.append(f"{kind}/{o['metadata']['name']}")
    return out


def wait_no_job_objects(s, timeout=30):
    deadline = time.time() + timeout
    while job_objects(s):
        assert time.time() < deadline, job_objects(s)
        time.sleep(0.5)


def diag(s):
    logs = ""
    for p in sorted((s["work"] / "cluster" / "pods").glob("*/pod.log")):
        logs += f"--- {p.parent.name} ---\n{p.read_text()[-3000:]}\n"
    return (f"{logs}--- kubelet ---\n{(s['work'] / 'kubelet.log').read_text()[-3000:]}\n"
            f"--- server ---\n{s['log'].read_text()[-6000:]}")


def write(s, name, text):
    (s["proj"] / name).write_text(text)
    return name


def test_backend_and_fleet(env):
    st, body = api(env, "/api/project/main/backends/create_yaml",
                   {"config_yaml": backend_yaml(env["fake"], env["jump_port"]).replace("good-token", "bad")})
    assert st == 400 and "invalid_credentials" in json.dumps(body), body
    st, body = api(env, "/api/project/main/backends/create_yaml",
                   {"config_yaml": backend_yaml(env["fake"], env["jump_port"])})
    assert st == 200, body
    cli(env, "apply", "-f", write(env, "fleet.dstack.yml", FLEET), "-y", "-d")
    st, fleet = api(env, "/api/project/main/fleets/get", {"name": "k8s"})
    assert st == 200 and fleet["instances"] == [], fleet
    out = cli(env, "offer").stdout
    assert "kubernetes" in out and "cpu-node-1" in out, out


def test_attached_task_streams_logs_through_the_jump_pod(env):
    conf = write(env, "task.dstack.yml", """type: task
name: hello-k8s
commands:
  - echo hello-k8s
  - sleep 10
  - echo bye-k8s
""" + RESOURCES)
    r = cli(env, "apply", "-f", conf, "-y", check=False, timeout=300)
    lines = [l.strip() for l in r.stdout.splitlines()]
    assert "hello-k8s" in lines and "bye-k8s" in lines, r.stdout + r.stderr + diag(env)
    assert r.returncode == 0, r.stdout + r.stderr
    run = wait_run(env, "hello-k8s")
    assert run["status"] == "done", json.dumps(run)[:3000]
    jpd = run["latest_job_submission"]["job_provisioning_data"]
    assert jpd["backend"] == "kubernetes" and jpd["dockerized"] is False, jpd
    assert jpd["ssh_proxy"] == {"hostname": "127.0.0.1", "username": "root", "port": env["jump_port"]}, jpd
    assert jpd["hostname"].startswith("127.1.") and jpd["ssh_port"] == 10022, jpd
    # The server's key installer added the run's key to the jump pod (forwarding only).
    ak = next((env["work"] / "cluster" / "pods").glob("*ssh-jump-pod/home/.ssh/authorized_keys")).read_text()
    assert 'command="/bin/false" ' in ak, ak
    wait_no_job_objects(env)
    jump = [p["metadata"]["name"] for p in objects(env, "pods")]
    assert jump == ["dstack-main-ssh-jump-pod"], jump
    # The pod was the fleet's instance while it ran; it ended with its job.
    st, fleet = api(env, "/api/project/main/fleets/get", {"name": "k8s"})
    assert all(i["status"] == "terminated" for i in fleet["instances"]), fleet


def test_detached_task_and_logs(env):
    conf = write(env, "task-d.dstack.yml", """type: task
name: detached-k8s
commands:
  - echo line-one
  - echo line-two
""" + RESOURCES)
    cli(env, "apply", "-f", conf, "-y", "-d")
    run = wait_run(env, "detached-k8s")
    assert run["status"] == "done", json.dumps(run)[:3000] + diag(env)
    lines = [l.strip() for l in cli(env, "logs", "detached-k8s").stdout.splitlines()]
    assert "line-one" in lines and "line-two" in lines, lines
    assert "exited (0)" in cli(env, "ps", "-a").stdout
    wait_no_job_objects(env)


def test_service_through_the_server_proxy(env):
    port = _free_port()
    conf = write(env, "svc.dstack.yml", f"""type: service
name: web-k8s
port: {port}
commands:
  - mkdir -p web && echo service-on-k8s > web/index.html
  - cd web && python3 -m http.server {port}
""" + RESOURCES)
    cli(env, "apply", "-f", conf, "-y", "-d")
    deadline = time.time() + 120
    while True:
        st, run = api(env, "/api/project/main/runs/get", {"run_name": "web-k8s"})
        if run.get("status") == "running":
            break
        assert run.get("status") not in ("failed", "terminated", "done") and time.time() < deadline, \
            json.dumps(run)[:3000] + diag(env)
        time.sleep(1)
    assert run["service"]["url"] == "/proxy/services/main/web-k8s/", run["service"]
    url = env["url"] + "/proxy/services/main/web-k8s/"
    deadline = time.time() + 30
    body = None
    while body is None:
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read()
            assert e.code in (502, 503) and time.time() < deadline, (e.code, detail, diag(env))
            time.sleep(0.5)
    assert body.strip() == "service-on-k8s", body
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code in (401, 403)
    cli(env, "stop", "web-k8s", "-y")
    run = wait_run(env, "web-k8s", 60)
    assert run["status"] == "terminated", json.dumps(run)[:3000]
    wait_no_job_objects(env)


def test_stop_of_a_long_task_deletes_its_pod(env):
    conf = write(env, "long.dstack.yml", """type: task
name: long-k8s
commands:
  - sleep 617
""" + RESOURCES)
    cli(env, "apply", "-f", conf, "-y", "-d")
    deadline = time.time() + 120
    while True:
        st, run = api(env, "/api/project/main/runs/get", {"run_name": "long-k8s"})
        if run.get("status") == "running":
            break
        assert time.time() < deadline, json.dumps(run)[:3000] + diag(env)
        time.sleep(1)
    pods = [o for o in job_objects(env) if o.startswith("pods/")]
    assert len(pods) == 1 and pods[0].startswith("pods/long-k8s-0-0-"), pods
    assert "running" in cli(env, "ps").stdout
    cli(env, "stop", "long-k8s", "-y")
    run = wait_run(env, "long-k8s", 60)
    assert run["status"] == "terminated", json.dumps(run)[:3000]
    assert run["latest_job_submission"]["termination_reason"] == "terminated_by_user", run
    wait_no_job_objects(env)
    # The kubelet killed the pod's processes: no `sleep 617` is left.
    left = subprocess.run(["pgrep", "-f", "^sleep 617$"], capture_output=True, text=True).stdout
    assert not left.strip(), left
