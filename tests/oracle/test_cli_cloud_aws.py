"""A cloud fleet on the AWS backend, end to end with the real dstack CLI 0.22.5.

The cloud is moto (EC2 emulator, on loopback). The "VM" behind moto's instance is a real
OpenSSH server on loopback whose `ubuntu` user accepts exactly the keys that our backend put
into the instance's cloud-init user data (read back from moto by an AuthorizedKeysCommand) —
the same path a real VM's cloud-init takes. The server reaches every cloud instance at that
sshd (`DSTACK_SERVER_INSTANCE_SSH_OVERRIDE`), deploys the agent over SSH and runs the task.

Then an in-place fleet update: instances that no longer match the new `resources` are
recycled (`fleet_spec_mismatch`) and replaced by ones that do.

Flow: backend create (credentials checked against moto) → `dstack apply` of a cloud fleet →
RunInstances in moto → IDLE → `dstack apply` of a task → logs → `dstack fleet delete` →
TerminateInstances in moto.
"""
import json
import pathlib
import sqlite3
import subprocess
import sys
import time

import pytest

from cloud_env import VENV_BIN, api, cli, cloud_env, wait_fleet_instance, wait_port, wait_run  # noqa: F401
from conftest import _free_port

KEYS_SCRIPT = """#!{python}
# AuthorizedKeysCommand: the ssh_authorized_keys of every running instance's cloud-init user
# data in moto, i.e. what cloud-init on a real VM would have authorised.
import base64, boto3, yaml
ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url="{moto}",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
for r in ec2.describe_instances()["Reservations"]:
    for i in r["Instances"]:
        if i["State"]["Name"] not in ("pending", "running"):
            continue
        a = ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
        data = a.get("UserData", {{}}).get("Value")
        if not data:
            continue
        doc = yaml.safe_load(base64.b64decode(data).decode())
        for k in (doc or {{}}).get("ssh_authorized_keys", []):
            print(k)
"""


@pytest.fixture(scope="module")
def env():
    moto_bin = VENV_BIN / "moto_server"
    assert moto_bin.exists(), "moto_server missing: run `bash scripts/oracle-venv.sh`"
    moto_port = _free_port()
    moto = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(moto_port, moto, "moto")
    moto_url = f"http://127.0.0.1:{moto_port}"
    server_env = dict(
        GPUHUNT_CATALOG_DIR=str(pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "catalog" / "aws"),
        DSTACK_ENDPOINT_URL_AWS=moto_url,
        AWS_EC2_METADATA_DISABLED="true",
        # Fleet consolidation every few seconds instead of dstack's minutes.
        DSTACK_SERVER_FLEET_CONSOLIDATION_BACKOFF_UNIT="1",
        DSTACK_SERVER_FLEET_PROCESSING_INTERVAL="1",
    )
    with cloud_env(KEYS_SCRIPT.format(python=sys.executable, moto=moto_url), server_env, [moto]) as s:
        s["moto"] = moto_url
        yield s


def ec2(s):
    import boto3

    return boto3.client("ec2", region_name="us-east-1", endpoint_url=s["moto"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def moto_instances(s):
    return [i for r in ec2(s).describe_instances()["Reservations"] for i in r["Instances"]]


def prepare_account(s):
    """What a real account has and moto lacks: an image for `os_images`, and an internet
    gateway route in the default VPC (public subnets)."""
    c = ec2(s)
    c.register_image(Name="dstack-vm-cpu-1", RootDeviceName="/dev/sda1")
    vpc = c.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    igw = c.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    c.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    rt = c.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"][0]
    c.create_route(RouteTableId=rt["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)


AWS = """type: aws
regions: [us-east-1]
creds:
  type: access_key
  access_key: {key}
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


def test_backend_credentials_are_checked(env):
    prepare_account(env)
    # moto accepts any key: a good one is accepted and stored.
    st, body = api(env, "/api/project/main/backends/create_yaml", {"config_yaml": AWS.format(key="AKIATESTING")})
    assert st == 200, body


def test_cloud_fleet_runs_a_task_and_is_terminated(env):
    (env["proj"] / "fleet.dstack.yml").write_text("""type: fleet
name: cloud
nodes: 1
backends: [aws]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
spot_policy: on-demand
""")
    cli(env, "apply", "-f", "fleet.dstack.yml", "-y", "-d")
    inst = wait_fleet_instance(env, "cloud")
    assert inst["status"] == "idle", json.dumps(inst)[:2000] + env["log"].read_text()[-4000:]
    assert inst["backend"] == "aws" and inst["instance_type"]["name"] == "t3.micro"
    ours = moto_instances(env)
    assert len(ours) == 1 and ours[0]["State"]["Name"] == "running"
    tags = {t["Key"]: t["Value"] for t in ours[0].get("Tags", [])}
    assert tags.get("dstack_instance_id") == inst["id"]
    assert "cloud" in cli(env, "fleet").stdout

    (env["proj"] / "task.dstack.yml").write_text("""type: task
name: on-cloud
commands:
  - echo hello-from-the-cloud
fleets: [cloud]
resources:
  cpu: 2..
  memory: 1GB..
  disk: 1GB..
""")
    cli(env, "apply", "-f", "task.dstack.yml", "-y", "-d")
    run = wait_run(env, "on-cloud")
    assert run["status"] == "done", json.dumps(run)[:3000]
    assert "hello-from-the-cloud" in cli(env, "logs", "on-cloud").stdout

    cli(env, "fleet", "delete", "cloud", "-y")
    deadline = time.time() + 120
    while True:
        states = [i["State"]["Name"] for i in moto_instances(env)]
        if states and all(s_ in ("shutting-down", "terminated") for s_ in states):
            break
        assert time.time() < deadline, states
        time.sleep(1)


def instance_row(s, iid):
    """(status, termination_reason, message) of an instance row, deleted or not."""
    con = sqlite3.connect(str(s["dir"] / "server" / "data" / "sqlite.db"))
    try:
        return con.execute("SELECT status, termination_reason, termination_reason_message "
                           "FROM instances WHERE id = ?", (iid,)).fetchone()
    finally:
        con.close()


def fleet_instances(s, name):
    st, body = api(s, "/api/project/main/fleets/get", {"name": name})
    assert st == 200, body
    return body["instances"]


def test_fleet_update_recycles_instances_that_no_longer_match(env):
    """dstack 0.22.5 updates a cloud fleet's `resources` in place; its FleetPipeline then
    terminates IDLE instances that do not match the new spec (`fleet_spec_mismatch`) and
    creates replacements to keep `nodes`."""
    fleet = """type: fleet
name: upd
nodes: 1
backends: [aws]
resources:
  cpu: 2..
  memory: {memory}
  disk: 1GB..
spot_policy: on-demand
"""
    (env["proj"] / "upd.dstack.yml").write_text(fleet.format(memory="1GB.."))
    cli(env, "apply", "-f", "upd.dstack.yml", "-y", "-d")
    first = wait_fleet_instance(env, "upd")
    assert first["status"] == "idle" and first["instance_type"]["name"] == "t3.micro", first

    (env["proj"] / "upd.dstack.yml").write_text(fleet.format(memory="2GB.."))
    out = cli(env, "apply", "-f", "upd.dstack.yml", "-y", "-d").stdout
    st, body = api(env, "/api/project/main/fleets/get", {"name": "upd"})
    assert body["id"] == first["fleet_id"], "the fleet was re-created, not updated:\n" + out
    assert body["spec"]["configuration"]["resources"]["memory"]["min"] == 2.0, body["spec"]

    deadline = time.time() + 180
    while True:
        old = instance_row(env, first["id"])
        new = [i for i in fleet_instances(env, "upd") if i["id"] != first["id"]]
        if old[0] == "TERMINATED" and new and new[0]["status"] == "idle":
            break
        assert time.time() < deadline, f"{old} {new}" + env["log"].read_text()[-4000:]
        time.sleep(1)
    assert old[1:] == ("fleet_spec_mismatch", "Instance does not match fleet spec"), old
    assert new[0]["instance_type"]["name"] == "t3.small", new[0]
    assert new[0]["instance_num"] == 0, new[0]
    states = {i["InstanceId"]: i["State"]["Name"] for i in moto_instances(env)}
    old_vm = [k for k, v in states.items() if v in ("shutting-down", "terminated")]
    assert old_vm, states

    cli(env, "fleet", "delete", "upd", "-y")
