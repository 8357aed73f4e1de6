"""A cloud fleet on the AWS backend, end to end with the real dstack CLI 0.22.5.

The cloud is moto (EC2 emulator, on loopback). The "VM" behind moto's instance is a real
OpenSSH server on loopback whose `ubuntu` user accepts exactly the keys that our backend put
into the instance's cloud-init user data (read back from moto by an AuthorizedKeysCommand) —
the same path a real VM's cloud-init takes. The server reaches every cloud instance at that
sshd (`DSTACK_SERVER_INSTANCE_SSH_OVERRIDE`), deploys the agent over SSH and runs the task.

Flow: backend create (credentials checked against moto) → `dstack apply` of a cloud fleet →
RunInstances in moto → IDLE → `dstack apply` of a task → logs → `dstack fleet delete` →
TerminateInstances in moto.
"""
import json
import pathlib
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
