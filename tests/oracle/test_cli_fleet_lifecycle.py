"""The fleet and instance lifecycle of cloud fleets, with the real dstack CLI 0.22.5.

Same setup as test_cli_cloud_aws.py (whose fixtures this module reuses): moto as EC2 and a
loopback sshd as every "VM". The server's lifecycle intervals are shortened through their
environment variables so that the real transitions happen within seconds:

* `idle_duration`: IDLE instances above `nodes.min` are terminated in the cloud
  (`idle_timeout`) and disappear from `dstack fleet`;
* health checks: an instance whose agent stops answering shows `unreachable: true`, and
  `false` again once the agent is back;
* `nodes.min`: an instance that died behind the server's back (terminated in moto, agent
  gone) is terminated with `unreachable` after the deadline and replaced by a new one.
"""
import json
import os
import sqlite3
import subprocess
import time

import pytest

from test_cli_cloud_aws import AWS, api, cli, ec2, env, moto_instances, prepare_account  # noqa: F401

INTERVALS = {
    "DSTACK_SERVER_INSTANCE_CHECK_INTERVAL": "1",
    "DSTACK_SERVER_INSTANCE_UNREACHABLE_TIMEOUT": "15",
    "DSTACK_SERVER_FLEET_PROCESSING_INTERVAL": "1",
    "DSTACK_SERVER_FLEET_CONSOLIDATION_BACKOFF_UNIT": "1",
}

RESOURCES = """backends: [aws]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
spot_policy: on-demand
"""


@pytest.fixture(scope="module")
def fast_intervals():
    """Set before `env` starts the server (which copies os.environ)."""
    old = {k: os.environ.get(k) for k in INTERVALS}
    os.environ.update(INTERVALS)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def cloud(fast_intervals, env):  # noqa: F811 (env is the imported fixture)
    prepare_account(env)
    st, body = api(env, "/api/project/main/backends/create_yaml", {"config_yaml": AWS.format(key="AKIATESTING")})
    assert st == 200, body
    return env


def db_instances(s, fleet):
    """The stored rows, deleted ones included (what the API no longer shows)."""
    con = sqlite3.connect(str(s["dir"] / "server" / "data" / "sqlite.db"))
    try:
        rows = con.execute(
            "SELECT i.id, i.instance_num, i.status, i.deleted, i.termination_reason, "
            "i.termination_reason_message, i.job_provisioning_data FROM instances i "
            "JOIN fleets f ON f.id = i.fleet_id WHERE f.name = ? ORDER BY i.created_at", (fleet,)
        ).fetchall()
    finally:
        con.close()
    keys = ["id", "num", "status", "deleted", "reason", "message", "jpd"]
    return [dict(zip(keys, r)) for r in rows]


def moto_state(s, instance_id):
    for i in moto_instances(s):
        tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
        if tags.get("dstack_instance_id") == instance_id:
            return i["State"]["Name"]
    return None


def fleet_instances(s, name):
    st, fleet = api(s, "/api/project/main/fleets/get", {"name": name})
    assert st == 200, fleet
    return fleet.get("instances") or []


def unreachable(s, name, instance_id):
    """The `unreachable` flag of one instance (None while it is not listed)."""
    for i in fleet_instances(s, name):
        if i["id"] == instance_id:
            return i["unreachable"]
    return None


def wait(what, cond, s, timeout=240):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.time() < deadline, f"timed out waiting for {what}\n{s['log'].read_text()[-6000:]}"
        time.sleep(0.5)


def kill_agent(s):
    pid = s["dir"] / "agent-home" / "agent.pid"
    subprocess.run(["kill", "-TERM", "--", "-" + pid.read_text().strip()], capture_output=True)


def start_agent(s):
    """Starts the agent loop the way the server's deploy does."""
    e = s["env"]
    home, binary = e["DSTACK_AGENT_HOME"], e["DSTACK_AGENT_REMOTE_PATH"]
    script = (
        'echo $$ > "$0/agent.pid"; set -a; . "$0/agent.env"; set +a; '
        'while true; do "$1" agent --home "$0" --shim-port "$2" --runner-port "$3" '
        '>> "$0/agent.log" 2>&1; sleep 3; done'
    )
    subprocess.Popen(["setsid", "sh", "-c", script, home, binary, e["DSTACK_AGENT_SHIM_PORT"],
                      e["DSTACK_AGENT_RUNNER_PORT"]], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def test_idle_instances_are_terminated_after_idle_duration(cloud):
    (cloud["proj"] / "idle.dstack.yml").write_text("""type: fleet
name: idle
nodes:
  min: 0
  target: 2
  max: 2
idle_duration: 25s
""" + RESOURCES)
    cli(cloud, "apply", "-f", "idle.dstack.yml", "-y", "-d")
    insts = wait("two idle instances",
                 lambda: (lambda l: l if len(l) == 2 and all(i["status"] == "idle" for i in l) else None)(
                     fleet_instances(cloud, "idle")), cloud)
    ids = [i["id"] for i in insts]
    assert all(moto_state(cloud, i) == "running" for i in ids)
    listing = cli(cloud, "fleet").stdout
    assert " idle " in listing and "$0.0104" in listing, listing
    # Both exceed idle_duration (min 0): terminated in moto, gone from the fleet.
    wait("both terminated in moto",
         lambda: all(moto_state(cloud, i) in ("shutting-down", "terminated") for i in ids), cloud, 120)
    wait("fleet empty", lambda: fleet_instances(cloud, "idle") == [], cloud, 60)
    rows = db_instances(cloud, "idle")
    assert len(rows) == 2, rows
    for r in rows:
        assert r["status"] == "TERMINATED" and r["deleted"] == 1, r
        assert r["reason"] == "idle_timeout", r
        assert r["message"].startswith("Instance idle for "), r
    listing = cli(cloud, "fleet").stdout
    print(listing)
    assert "$0.0104" not in listing, listing
    # min 0: nothing is recreated.
    time.sleep(5)
    assert len(db_instances(cloud, "idle")) == 2
    cli(cloud, "fleet", "delete", "idle", "-y")


def test_unreachable_instance_is_flagged_then_replaced_below_min(cloud):
    (cloud["proj"] / "keep.dstack.yml").write_text("""type: fleet
name: keep
nodes:
  min: 1
""" + RESOURCES)
    cli(cloud, "apply", "-f", "keep.dstack.yml", "-y", "-d")
    first = wait("an idle instance",
                 lambda: (lambda l: l[0] if len(l) == 1 and l[0]["status"] == "idle" else None)(
                     fleet_instances(cloud, "keep")), cloud)
    assert first["unreachable"] is False and first["instance_num"] == 0

    # The agent stops answering: flagged unreachable, and reachable again when it is back.
    kill_agent(cloud)
    wait("unreachable: true", lambda: unreachable(cloud, "keep", first["id"]) is True, cloud, 60)
    start_agent(cloud)
    wait("unreachable: false", lambda: unreachable(cloud, "keep", first["id"]) is False, cloud, 60)
    assert fleet_instances(cloud, "keep")[0]["status"] == "idle"

    # The VM dies behind the server's back: terminated with `unreachable` after the deadline
    # (15 s here, 20 min by default) and replaced, since the fleet would be below nodes.min.
    ec2(cloud).terminate_instances(InstanceIds=[json.loads(db_instances(cloud, "keep")[0]["jpd"])["instance_id"]])
    kill_agent(cloud)
    wait("unreachable: true", lambda: unreachable(cloud, "keep", first["id"]) is True, cloud, 60)
    second = wait("a replacement idle instance",
                  lambda: (lambda l: l[0] if len(l) == 1 and l[0]["id"] != first["id"]
                           and l[0]["status"] == "idle" else None)(fleet_instances(cloud, "keep")),
                  cloud, 240)
    assert second["instance_num"] == 0 and second["unreachable"] is False
    assert moto_state(cloud, second["id"]) == "running"
    rows = {r["id"]: r for r in db_instances(cloud, "keep")}
    old = rows[first["id"]]
    assert old["status"] == "TERMINATED" and old["deleted"] == 1 and old["reason"] == "unreachable", old
    listing = cli(cloud, "fleet").stdout
    assert " keep " in listing and "$0.0104" in listing, listing
    cli(cloud, "fleet", "delete", "keep", "-y")
    wait("replacement terminated in moto",
         lambda: moto_state(cloud, second["id"]) in ("shutting-down", "terminated"), cloud, 120)
