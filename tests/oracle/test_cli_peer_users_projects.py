"""The real dstack CLI and Python API (PyPI dstack==0.22.5) against our server: users,
projects, members, backends and secrets, as a team would use them."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from dstack.api.server import APIClient
from dstack._internal.core.errors import ClientError, ResourceNotExistsError, ServerClientError
from dstack._internal.server.schemas.projects import MemberSetting
from dstack._internal.core.models.users import GlobalRole, ProjectRole

DSTACK = pathlib.Path(sys.executable).parent / "dstack"


def cli(server, *args, check=True):
    env = dict(server["env"])
    env.pop("DSTACK_SERVER_PORT", None)
    r = subprocess.run([str(DSTACK), *args], env=env, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"dstack {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def test_project_add_and_api_client(our_server):
    s = our_server
    cli(s, "project", "add", "--name", "main", "--url", s["url"], "--token", s["token"], "-y")
    cfg = yaml.safe_load((s["home"] / ".dstack" / "config.yml").read_text())
    assert any(p["name"] == "main" and p["url"] == s["url"] for p in cfg["projects"])
    # A wrong token is refused by `project add`.
    bad = cli(s, "project", "add", "--name", "other", "--url", s["url"], "--token", "nope", "-y", check=False)
    assert bad.returncode != 0

    api = APIClient(s["url"], s["token"])
    me = api.users.get_my_user()
    assert me.username == "admin" and me.creds.token == s["token"]
    alice = api.users.create("alice", GlobalRole.USER)
    assert alice.username == "alice"
    api.users.create("bob", GlobalRole.USER)
    assert {u.username for u in api.users.list()} >= {"admin", "alice", "bob"}
    with pytest.raises(ServerClientError):
        api.users.create("alice", GlobalRole.USER)

    assert api.users.get_user("alice").username == "alice"
    alice_token = api.users.refresh_token("alice").creds.token
    as_alice = APIClient(s["url"], alice_token)
    p = as_alice.projects.create("team")
    assert p.project_name == "team" and p.owner.username == "alice"
    p = as_alice.projects.add_members("team", [MemberSetting(username="bob", project_role=ProjectRole.MANAGER)])
    assert {(m.user.username, m.project_role) for m in p.members} == {
        ("alice", ProjectRole.ADMIN),
        ("bob", ProjectRole.MANAGER),
    }
    assert "team" in [p.project_name for p in api.projects.list()]

    # Backends from YAML: create, update, read back, delete.
    yml = "type: lambda\nregions: [us-east-1]\ncreds:\n  type: api_key\n  api_key: LAMBDA-KEY\n"
    as_alice._request("/api/project/team/backends/create_yaml", body=json.dumps({"config_yaml": yml}))
    got = as_alice._request("/api/project/team/backends/lambda/get_yaml").json()
    assert got["name"] == "lambda" and "LAMBDA-KEY" in got["config_yaml"]
    yml2 = yml.replace("us-east-1", "us-west-1")
    as_alice._request("/api/project/team/backends/update_yaml", body=json.dumps({"config_yaml": yml2}))
    team = as_alice.projects.get("team")
    assert [getattr(b.name, "value", b.name) for b in team.backends] == ["lambda"]
    assert team.backends[0].config.regions == ["us-west-1"]
    assert "LAMBDA-KEY" not in team.model_dump_json()
    from dstack._internal.core.models.backends.base import BackendType
    as_alice.backends.delete("team", [BackendType.LAMBDA])
    assert as_alice.projects.get("team").backends == []

    # Secrets.
    sec = as_alice.secrets.create_or_update("team", "HF_TOKEN", "hf_abc")
    assert sec.value == "hf_abc"
    assert [x.name for x in as_alice.secrets.list("team")] == ["HF_TOKEN"]
    assert as_alice.secrets.get("team", "HF_TOKEN").value == "hf_abc"
    as_alice.secrets.delete("team", ["HF_TOKEN"])
    assert as_alice.secrets.list("team") == []


def test_non_member_gets_dstack_errors(our_server):
    s = our_server
    api = APIClient(s["url"], s["token"])
    api.users.create("eve", GlobalRole.USER)
    eve = APIClient(s["url"], api.users.refresh_token("eve").creds.token)
    with pytest.raises(ClientError):
        eve.projects.get("main")  # 403: not a member
    with pytest.raises(ClientError):
        eve.secrets.list("main")
    with pytest.raises(ClientError):
        eve.users.create("mallory", GlobalRole.USER)
    with pytest.raises((ResourceNotExistsError, ClientError)):
        eve.projects.get("no-such-project")
