"""What the cloud end-to-end tests share: a "VM" and our server, around any cloud emulator.

The "VM" behind an emulated cloud instance is a real OpenSSH server on loopback whose `ubuntu`
user accepts exactly the keys the backend handed to the cloud for its instances (an
AuthorizedKeysCommand reads them back from the emulator: user data in moto, `ssh-keys`
metadata in the GCP fake) — the path cloud-init or the guest agent takes on a real VM. Our
server reaches every cloud instance at that sshd (`DSTACK_SERVER_INSTANCE_SSH_OVERRIDE`),
deploys the agent over SSH and runs tasks there.

    with cloud_env(keys_script, {"DSTACK_ENDPOINT_URL_AWS": url, ...}) as s:
        cli(s, "apply", ...)
"""
import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from conftest import ROOT, _free_port, _wait_healthy, build_server

VENV_BIN = pathlib.Path(sys.executable).parent
DSTACK = VENV_BIN / "dstack"
TOKEN = "cloud-admin-token"
# sshd runs an AuthorizedKeysCommand only if every directory up to / is root-owned and not
# writable by others, which rules out /tmp.
KEYS_DIR = pathlib.Path("/usr/local/lib/dstack-sdk-test")


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{what} did not start"
            time.sleep(0.1)


@contextlib.contextmanager
def cloud_env(keys_script: str, server_env: dict, procs=None):
    """Starts the VM sshd (AuthorizedKeysCommand = `keys_script`, a Python program printing
    one key per line) and our server with `server_env`; adds project `main` to the CLI.
    `procs` are emulator processes to stop afterwards. Yields the test state dict."""
    if os.geteuid() != 0:
        raise AssertionError("needs root: the test creates users and starts sshd")
    subprocess.run(["bash", str(ROOT / "scripts" / "sshd-test-env.sh")], check=True)
    procs = list(procs or [])
    d = pathlib.Path(tempfile.mkdtemp(prefix="dstack-cloud-", dir="/tmp"))
    os.chmod(d, 0o755)
    KEYS_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(KEYS_DIR, 0o755)
    keys = KEYS_DIR / f"keys-{os.getpid()}-{d.name}.py"
    try:
        keys.write_text(keys_script)
        os.chmod(keys, 0o755)
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
        wait_port(ssh_port, sshd, "sshd")
        port = _free_port()
        home = d / "home"
        home.mkdir()
        e = dict(os.environ)
        e.update(
            HOME=str(home), DSTACK_SERVER_DIR=str(d / "server"), DSTACK_SERVER_PORT=str(port),
            DSTACK_SERVER_HOST="127.0.0.1", DSTACK_SERVER_ADMIN_TOKEN=TOKEN,
            DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1",
            DSTACK_SERVER_INSTANCE_SSH_OVERRIDE=f"127.0.0.1:{ssh_port}",
            DSTACK_AGENT_REMOTE_PATH=str(d / "bin" / "dstack-agent"),
            DSTACK_AGENT_HOME=str(d / "agent-home"),
            DSTACK_AGENT_SHIM_PORT=str(_free_port()),
            DSTACK_AGENT_RUNNER_PORT=str(_free_port()),
        )
        e.update(server_env)
        log = open(d / "server.log", "w")
        server = subprocess.Popen([str(build_server())], env=e, stdout=log, stderr=subprocess.STDOUT)
        procs.append(server)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server, 60, "our server")
        cli_env = dict(e)
        cli_env.pop("DSTACK_SERVER_PORT")
        proj = d / "proj"
        proj.mkdir()
        s = {"url": url, "env": cli_env, "proj": proj, "log": d / "server.log", "dir": d}
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
        keys.unlink(missing_ok=True)


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


def wait_fleet_instance(s, fleet, timeout=240):
    """Polls `fleets/get` until the fleet's first instance is idle (or terminated); returns it."""
    deadline = time.time() + timeout
    while True:
        st, body = api(s, "/api/project/main/fleets/get", {"name": fleet})
        inst = (body.get("instances") or [{}])[0] if st == 200 else {}
        if inst.get("status") in ("idle", "terminated"):
            return inst
        assert time.time() < deadline, f"fleet not ready: {json.dumps(body)[:2000]}\n{s['log'].read_text()[-4000:]}"
        time.sleep(1)


def wait_run(s, name, timeout=120):
    """Polls `runs/get` until the run is finished; returns it."""
    deadline = time.time() + timeout
    while True:
        st, run = api(s, "/api/project/main/runs/get", {"run_name": name})
        if run.get("status") in ("done", "failed", "terminated"):
            return run
        assert time.time() < deadline, json.dumps(run)[:2000]
        time.sleep(1)
