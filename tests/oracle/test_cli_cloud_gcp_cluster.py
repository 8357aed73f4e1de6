"""A `placement: cluster` cloud fleet on the GCP backend, with the real dstack CLI 0.22.5.

moto implements no EC2 placement groups, so the engine's placement-group path is judged here
against the fake Compute REST server (resource policies with region operations; see
`tests/support/fake_gcp.rs`). Flow: an elastic cluster fleet (`nodes: 0..2`) → a task creates
the first instance, which creates the fleet's COLLOCATED resource policy and is inserted with
it → a second task, while the first still runs, gets a second instance in the same policy →
`dstack fleet delete` deletes both instances and then the policy.
"""
import json
import sqlite3
import time
import urllib.request

from cloud_env import api, cli, wait_run
from test_cli_cloud_gcp import GOOD_EMAIL, backend_yaml, env, fake_instances  # noqa: F401
from test_cli_fleet_lifecycle import wait


def policies(s):
    con = sqlite3.connect(str(s["dir"] / "server" / "data" / "sqlite.db"))
    try:
        return con.execute("SELECT name, region, deleted FROM placement_groups ORDER BY created_at").fetchall()
    finally:
        con.close()


def policy_exists(s, region, name):
    with urllib.request.urlopen(s["fake"] + "/_fake/resource_policies", timeout=5) as r:
        return {"project": "test-project", "region": region, "name": name} in json.loads(r.read())


TASK = """type: task
name: {name}
commands:
  - {command}
fleets: [cluster]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
"""


def test_cluster_fleet_instances_share_one_placement_policy(env):
    st, body = api(env, "/api/project/main/backends/create_yaml", {"config_yaml": backend_yaml(GOOD_EMAIL)})
    assert st == 200, body
    (env["proj"] / "cluster.dstack.yml").write_text("""type: fleet
name: cluster
placement: cluster
nodes: 0..2
backends: [gcp]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
spot_policy: on-demand
""")
    cli(env, "apply", "-f", "cluster.dstack.yml", "-y", "-d")
    assert policies(env) == [] and fake_instances(env) == []

    (env["proj"] / "one.dstack.yml").write_text(TASK.format(name="first", command="sleep 300"))
    cli(env, "apply", "-f", "one.dstack.yml", "-y", "-d")
    wait("the first task running",
         lambda: api(env, "/api/project/main/runs/get", {"run_name": "first"})[1].get("status") == "running",
         env)
    [(name, region, deleted)] = policies(env)
    assert name.startswith("cluster-") and name.endswith("-pg") and not deleted
    assert policy_exists(env, region, name)
    [vm] = fake_instances(env)
    assert any(p.endswith(f"/resourcePolicies/{name}") for p in vm["resourcePolicies"]), vm

    # The second instance joins the same policy (no new one is created).
    (env["proj"] / "two.dstack.yml").write_text(TASK.format(name="second", command="echo second-node"))
    cli(env, "apply", "-f", "two.dstack.yml", "-y", "-d")
    run = wait_run(env, "second", timeout=180)
    assert run["status"] == "done", json.dumps(run)[:3000] + env["log"].read_text()[-4000:]
    vms = fake_instances(env)
    assert len(vms) == 2, vms
    assert all(any(p.endswith(f"/resourcePolicies/{name}") for p in v["resourcePolicies"]) for v in vms), vms
    assert len(policies(env)) == 1

    cli(env, "stop", "first", "-y")
    wait_run(env, "first")
    cli(env, "fleet", "delete", "cluster", "-y")
    wait("the VMs and then the policy deleted",
         lambda: fake_instances(env) == [] and not policy_exists(env, region, name)
         and policies(env)[0][2] == 1, env, timeout=120)
    st, _ = api(env, "/api/project/main/fleets/get", {"name": "cluster"})
    assert st == 400, "the fleet is gone once its placement group is"
