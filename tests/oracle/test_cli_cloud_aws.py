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
import base64
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT, _free_port, _wait_healthy, build_server

VENV_BIN = pathlib.Path(sys.executable).parent
DSTACK = VENV_BIN / "dstack"
TOKEN = "cloud-admin-token"

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


def _wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{what} did not start"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("needs root: the test creates users and starts sshd")
    subprocess.run(["bash", str(ROOT / "scripts" / "sshd-test-env.sh")], check=True)
    moto_bin = VENV_BIN / "moto_server"
    assert moto_bin.exists(), "moto_server missing: run `bash scripts/oracle-venv.sh`"
    procs = []
    d = pathlib.Path(tempfile.mkdtemp(prefix="dstack-cloud-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        moto_port = _free_port()
        moto = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(moto_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(moto)
        _wait_port(moto_port, moto, "moto")
        moto_url = f"http://127.0.0.1:{moto_port}"
        # The "VM": sshd whose keys come from the instances' user data.
        # sshd runs the command only if every directory up to / is root-owned and not
        # writable by others, which rules out /tmp.
        keys_dir = pathlib.Path("/usr/local/lib/dstack-sdk-test")
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o755)
        keys = keys_dir / f"keys-{moto_port}.py"
        keys.write_text(KEYS_SCRIPT.format(python=sys.executable, moto=moto_url))
        os.chmod(keys, 0o755)
        d_keys = keys
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
        ssh_port = _free_port()
        (d / "sshd_config").write_text(
            f"Port {ssh_port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile none\nAuthorizedKeysCommand {keys}\nAuthorizedKeysCommandUser root\n"
            "StrictModes no\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nMaxStartups 100\n"
            "MaxSessions 100\nSubsystem sftp /usr/lib/openssh/sftp-server\n"
        )
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                stderr=open(d / "sshd.log", "w"))
        procs.append(sshd)
        _wait_port(ssh_port, sshd, "sshd")
        # Our server, with the AWS endpoint at moto and the test AWS catalog.
        port = _free_port()
        home = d / "home"
        home.mkdir()
        e = dict(os.environ)
        e.update(
            HOME=str(home), DSTACK_SERVER_DIR=str(d / "server"), DSTACK_SERVER_PORT=str(port),
            DSTACK_SERVER_HOST="127.0.0.1", DSTACK_SERVER_ADMIN_TOKEN=TOKEN,
            DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1",
            GPUHUNT_CATALOG_DIR=str(ROOT / "tests" / "fixtures" / "catalog" / "aws"),
            DSTACK_ENDPOINT_URL_AWS=moto_url,
            DSTACK_SERVER_INSTANCE_SSH_OVERRIDE=f"127.0.0.1:{ssh_port}",
            DSTACK_AGENT_REMOTE_PATH=str(d / "bin" / "dstack-agent"),
            DSTACK_AGENT_HOME=str(d / "agent-home"),
            DSTACK_AGENT_SHIM_PORT=str(_free_port()),
            DSTACK_AGENT_RUNNER_PORT=str(_free_port()),
            AWS_EC2_METADATA_DISABLED="true",
        )
        log = open(d / "server.log", "w")
        server = subprocess.Popen([str(build_server())], env=e, stdout=log, stderr=subprocess.STDOUT)
        procs.append(server)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server, 60, "our server")
        cli_env = dict(e)
        cli_env.pop("DSTACK_SERVER_PORT")
        proj = d / "proj"
        proj.mkdir()
        s = {"url": url, "env": cli_env, "proj": proj, "log": d / "server.log", "moto": moto_url, "dir": d}
        cli(s, "project", "add", "--name", "main", "--url", url, "--token", TOKEN, "-y")
        yield s
    finally:
        pid = d / "agent-home" / "agent.pid"
        if pid.exists():
            subprocess.run(["kill", "-TERM", "--", "-" + pid.read_text().strip()], capture_output=True)
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)
        for k in pathlib.Path("/usr/local/lib/dstack-sdk-test").glob(f"keys-*.py"):
            k.unlink(missing_ok=True)


def cli(s, *args, check=True, timeout=240):
    r = subprocess.run([str(DSTACK), *args], env=s["env"], cwd=s["proj"], capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"dstack {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                             f"--- server log tail ---\n{s['log'].read_text()[-5000:]}")
    return r


def api(s, path, body):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(s["url"] + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


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
    deadline = time.time() + 240
    while True:
        st, fleet = api(env, "/api/project/main/fleets/get", {"name": "cloud"})
        inst = (fleet.get("instances") or [{}])[0] if st == 200 else {}
        if inst.get("status") in ("idle", "terminated"):
            break
        assert time.time() < deadline, f"fleet not ready: {json.dumps(fleet)[:2000]}\n{env['log'].read_text()[-4000:]}"
        time.sleep(1)
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
    deadline = time.time() + 120
    while True:
        st, run = api(env, "/api/project/main/runs/get", {"run_name": "on-cloud"})
        if run.get("status") in ("done", "failed", "terminated"):
            break
        assert time.time() < deadline, json.dumps(run)[:2000]
        time.sleep(1)
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
