"""Elastic cloud fleets (`nodes: 0..N`) with the real dstack CLI 0.22.5: runs get new capacity.

This is dstack 0.22's everyday cloud workflow: a fleet with no instances whose `nodes.max`
bounds what runs may create. Same setup as test_cli_cloud_aws.py (moto as EC2, a loopback
sshd as every "VM"). Checked here:

* the plan (`dstack apply`) offers the fleet's backend offers, filtered by the fleet's and
  the run's resources together; naming a fleet that does not exist gives no offers;
* a task creates an instance in the fleet for itself (placeholder → RunInstances in moto →
  PROVISIONING → agent deployed → BUSY), runs, and leaves the instance IDLE in the fleet;
* the next task reuses that idle instance (no second RunInstances);
* `nodes.max` is a hard limit: with the only instance busy, another task fails with
  `failed_to_start_due_to_no_capacity`;
* a run nobody can serve (no offer fits) fails with dstack's "No offers matching" message and
  leaves no placeholder behind; once the fleet's only slot holds an instance that does not
  fit, dstack's answer is "Fleet is at capacity".
"""
import json
import time

from cloud_env import api, cli, wait_run
from test_cli_cloud_aws import AWS, env, moto_instances, prepare_account  # noqa: F401
from test_cli_fleet_lifecycle import db_instances, fleet_instances, wait

FLEET = """type: fleet
name: elastic
nodes: 0..1
backends: [aws]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
spot_policy: on-demand
"""

TASK = """type: task
name: {name}
commands:
  - {command}
resources:
  cpu: 2..
  memory: {memory}
  disk: 1GB..
"""


def plan(s, resources, fleets=None):
    conf = {"type": "task", "commands": ["true"], "resources": resources}
    if fleets is not None:
        conf["fleets"] = fleets
    st, body = api(s, "/api/project/main/runs/get_plan",
                   {"run_spec": {"configuration": conf, "repo_id": None}})
    assert st == 200, body
    return body["job_plans"][0]


def test_elastic_fleet_creates_capacity_for_runs(env):
    prepare_account(env)
    st, body = api(env, "/api/project/main/backends/create_yaml", {"config_yaml": AWS.format(key="AKIATESTING")})
    assert st == 200, body
    (env["proj"] / "fleet.dstack.yml").write_text(FLEET)
    cli(env, "apply", "-f", "fleet.dstack.yml", "-y", "-d")
    assert fleet_instances(env, "elastic") == []
    assert moto_instances(env) == []

    # The plan: the fleet's backend offers (on-demand only, from the fleet's profile), the
    # run's memory narrowing them further.
    jp = plan(env, {"cpu": "2..", "memory": "2GB..", "disk": "1GB.."})
    offers = jp["offers"]
    assert offers and jp["total_offers"] == len(offers), jp
    assert all(o["backend"] == "aws" and not o["instance"]["resources"]["spot"] for o in offers), offers
    assert all(o["instance"]["resources"]["memory_mib"] >= 2048 for o in offers), offers
    assert offers[0]["instance"]["name"] == "t3.small", offers[0]
    assert plan(env, {"cpu": "2.."}, fleets=["no-such-fleet"])["offers"] == []
    out = cli(env, "offer", "--cpu", "2..", "--memory", "1GB..").stdout
    assert "t3.micro" in out, out

    # Nothing fits (the fleet allows on-demand only, the run asks for 4 TB): the run fails
    # with dstack's message and the placeholder it reserved is gone.
    st, body = api(env, "/api/project/main/runs/apply", {"plan": {"run_spec": {
        "run_name": "too-big", "repo_id": None,
        "configuration": {"type": "task", "commands": ["true"],
                          "resources": {"cpu": "2..", "memory": "4096GB.."}}}}, "force": False})
    assert st == 200, body
    run = wait_run(env, "too-big")
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason"] == "failed_to_start_due_to_no_capacity", json.dumps(run)[:3000]
    assert "No offers matching the run requirements in fleet" in (sub["termination_reason_message"] or ""), sub
    rows = db_instances(env, "elastic")
    assert rows and all(r["deleted"] for r in rows), rows
    assert moto_instances(env) == []

    # A task gets an instance of its own in the fleet, runs, and leaves it idle.
    (env["proj"] / "one.dstack.yml").write_text(
        TASK.format(name="first", command="echo made-for-me", memory="1GB.."))
    out = cli(env, "apply", "-f", "one.dstack.yml", "-y", "-d").stdout
    assert "t3.micro" in out, out  # the plan table the CLI printed
    run = wait_run(env, "first", timeout=240)
    assert run["status"] == "done", json.dumps(run)[:3000] + env["log"].read_text()[-5000:]
    assert "made-for-me" in cli(env, "logs", "first").stdout
    jpd = run["jobs"][0]["job_submissions"][-1]["job_provisioning_data"]
    assert jpd["backend"] == "aws" and jpd["instance_type"]["name"] == "t3.micro", jpd
    assert jpd["hostname"], jpd
    insts = wait("the instance idle again",
                 lambda: (lambda l: l if len(l) == 1 and l[0]["status"] == "idle" else None)(
                     fleet_instances(env, "elastic")), env)
    assert insts[0]["name"] == "elastic-0" and insts[0]["instance_num"] == 0, insts
    assert [i["State"]["Name"] for i in moto_instances(env)] == ["running"]

    # The next task reuses the idle instance.
    (env["proj"] / "two.dstack.yml").write_text(
        TASK.format(name="second", command="sleep 300", memory="1GB.."))
    cli(env, "apply", "-f", "two.dstack.yml", "-y", "-d")
    wait("the second task running",
         lambda: api(env, "/api/project/main/runs/get", {"run_name": "second"})[1].get("status") == "running",
         env)
    assert len(moto_instances(env)) == 1
    busy = fleet_instances(env, "elastic")
    assert [i["status"] for i in busy] == ["busy"], busy

    # nodes.max = 1 and that instance is busy: no capacity for a third task.
    (env["proj"] / "three.dstack.yml").write_text(
        TASK.format(name="third", command="echo three", memory="1GB.."))
    cli(env, "apply", "-f", "three.dstack.yml", "-y", "-d")
    run = wait_run(env, "third")
    sub = run["jobs"][0]["job_submissions"][-1]
    assert run["status"] == "failed" and sub["termination_reason"] == "failed_to_start_due_to_no_capacity", \
        json.dumps(run)[:3000]
    assert len(moto_instances(env)) == 1

    cli(env, "stop", "second", "-y")
    wait_run(env, "second")

    # The only slot holds an instance too small for this run: dstack's answer.
    st, body = api(env, "/api/project/main/runs/apply", {"plan": {"run_spec": {
        "run_name": "still-too-big", "repo_id": None,
        "configuration": {"type": "task", "commands": ["true"],
                          "resources": {"cpu": "2..", "memory": "4096GB.."}}}}, "force": False})
    assert st == 200, body
    sub = wait_run(env, "still-too-big")["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason_message"] == "Fleet is at capacity", sub

    cli(env, "fleet", "delete", "elastic", "-y")
    deadline = time.time() + 120
    while not all(i["State"]["Name"] in ("shutting-down", "terminated") for i in moto_instances(env)):
        assert time.time() < deadline, moto_instances(env)
        time.sleep(1)

