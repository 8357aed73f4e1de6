"""A cloud fleet on the GCP backend, end to end with the real dstack CLI 0.22.5.

The cloud is the fake Compute Engine REST server of `tests/support/fake_gcp.rs`, run as a
process (`cargo --example fake_gcp`); our server's GCP backend (google-cloud-compute-v1,
signing its requests with a test service-account key) talks to it through
`DSTACK_ENDPOINT_URL_GCP`. The "VM" is a local sshd that accepts the keys found in the
instances' `ssh-keys` metadata (see `cloud_env.py`).

Flow: backend create (credentials checked against the fake) → `dstack apply` of a cloud fleet →
instances.insert → RUNNING → agent deployed over SSH → IDLE → `dstack apply` of a task →
logs → `dstack fleet delete` → instances.delete.
"""
import json
import pathlib
import subprocess
import sys
import time
import urllib.request

import pytest

from cloud_env import api, cli, cloud_env, wait_fleet_instance, wait_port, wait_run
from conftest import ROOT, _free_port, build_example

GOOD_EMAIL = "dstack@test-project.iam.gserviceaccount.com"

KEYS_SCRIPT = """#!{python}
# AuthorizedKeysCommand: the `ssh-keys` metadata of the fake's instances.
import urllib.request
print(urllib.request.urlopen("{fake}/_fake/authorized_keys", timeout=5).read().decode(), end="")
"""


def sa_key(email):
    return json.dumps({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": (ROOT / "tests" / "fixtures" / "gcp" / "test-sa-key.pem").read_text(),
        "client_email": email,
        "client_id": "123456789012345678901",
        "token_uri": "https://oauth2.googleapis.com/token",
    })


def backend_yaml(email):
    return "type: gcp\nproject_id: test-project\nregions: [us-central1]\ncreds:\n" \
           "  type: service_account\n  filename: key.json\n  data: " + json.dumps(sa_key(email)) + "\n"


@pytest.fixture(scope="module")
def env():
    port = _free_port()
    fake = subprocess.Popen([str(build_example("fake_gcp")), f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, fake, "fake GCP")
    url = f"http://127.0.0.1:{port}"
    server_env = dict(
        GPUHUNT_CATALOG_DIR=str(ROOT / "tests" / "fixtures" / "catalog" / "gcp"),
        DSTACK_ENDPOINT_URL_GCP=url,
    )
    with cloud_env(KEYS_SCRIPT.format(python=sys.executable, fake=url), server_env, [fake]) as s:
        s["fake"] = url
        yield s


def fake_instances(s):
    with urllib.request.urlopen(s["fake"] + "/_fake/instances", timeout=5) as r:
        return json.loads(r.read())


def test_backend_credentials_are_checked(env):
    st, body = api(env, "/api/project/main/backends/create_yaml",
                   {"config_yaml": backend_yaml("intruder@test-project.iam.gserviceaccount.com")})
    assert st == 400 and "invalid_credentials" in json.dumps(body), body
    st, body = api(env, "/api/project/main/backends/create_yaml", {"config_yaml": backend_yaml(GOOD_EMAIL)})
    assert st == 200, body


def test_cloud_fleet_runs_a_task_and_is_terminated(env):
    (env["proj"] / "fleet.dstack.yml").write_text("""type: fleet
name: gcloud
nodes: 1
backends: [gcp]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
spot_policy: on-demand
""")
    cli(env, "apply", "-f", "fleet.dstack.yml", "-y", "-d")
    inst = wait_fleet_instance(env, "gcloud")
    assert inst["status"] == "idle", json.dumps(inst)[:2000] + env["log"].read_text()[-4000:]
    assert inst["backend"] == "gcp" and inst["instance_type"]["name"] == "e2-standard-2"
    ours = fake_instances(env)
    assert len(ours) == 1 and ours[0]["zone"].startswith("us-central1"), ours
    assert inst["id"] in json.dumps(ours[0]["labels"]), ours

    (env["proj"] / "task.dstack.yml").write_text("""type: task
name: on-gcp
commands:
  - echo hello-from-gcp
fleets: [gcloud]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
""")
    cli(env, "apply", "-f", "task.dstack.yml", "-y", "-d")
    run = wait_run(env, "on-gcp")
    assert run["status"] == "done", json.dumps(run)[:3000]
    assert "hello-from-gcp" in cli(env, "logs", "on-gcp").stdout

    cli(env, "fleet", "delete", "gcloud", "-y")
    deadline = time.time() + 120
    while fake_instances(env):
        assert time.time() < deadline, fake_instances(env)
        time.sleep(1)
