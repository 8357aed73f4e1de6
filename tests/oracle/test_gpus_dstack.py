"""`gpus/list` (`dstack offer --group-by ...`) equals dstack 0.22.5's own grouping code
(`services/gpus.py`) applied to the same offers, for every group_by combination, on a
catalog with two backends (Lambda's real catalog + the synthetic RunPod catalog, whose
offers are always AVAILABLE)."""
import itertools
import json
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request

import pytest

from conftest import SHARED, _free_port, _wait_healthy, build_server
from dstack._internal.core.models.instances import InstanceOfferWithAvailability
from dstack._internal.server.schemas.gpus import ListGpusResponse
from dstack._internal.server.services import gpus as dgpus

TOKEN = "gpus-admin-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpus")
    cat = d / "catalog"
    cat.mkdir()
    shutil.copy(SHARED / "catalog" / "lambdalabs_gpuhunt_v2.csv", cat / "lambdalabs.csv")
    with tarfile.open(SHARED / "catalog" / "synthetic" / "synthetic_100k_seed42.tar.gz") as tar:
        member = tar.getmember("synth100k/runpod.csv")
        member.name = "runpod.csv"
        tar.extract(member, cat, filter="data")
    port = _free_port()
    env = dict(os.environ, HOME=str(d), DSTACK_SERVER_DIR=str(d / "server"),
               DSTACK_SERVER_PORT=str(port), DSTACK_SERVER_HOST="127.0.0.1",
               DSTACK_SERVER_ADMIN_TOKEN=TOKEN, DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1",
               GPUHUNT_CATALOG_DIR=str(cat))
    proc = subprocess.Popen([str(build_server())], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, proc, 60, "our server")
    s = {"url": url}
    for conf in ("type: lambda\ncreds:\n  type: api_key\n  api_key: 0123456789abcdef\n",
                 "type: runpod\ncreds:\n  type: api_key\n  api_key: 0123456789abcdef\n"):
        post(s, "/api/project/main/backends/create_yaml", {"config_yaml": conf})
    try:
        yield s
    finally:
        proc.kill()
        proc.wait()


def post(s, path, body):
    req = urllib.request.Request(s["url"] + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def run_spec(resources):
    return {"configuration": {"type": "task", "commands": [":"], "image": "scratch", "user": "root",
                              "resources": resources}, "ssh_key_pub": "ssh-ed25519 AAAA x"}


GROUPS = [[]] + [list(c) for n in (1, 2, 3) for c in itertools.combinations(["backend", "region", "count"], n)
                 if not ("region" in c and "backend" not in c)]


@pytest.mark.parametrize("resources", [
    {"gpu": {"name": ["A100", "H100"], "count": {"min": 1}}},
    {"gpu": {"count": {"min": 2, "max": 8}}, "memory": {"min": 64}},
])
@pytest.mark.parametrize("group_by", GROUPS)
def test_grouping_equals_dstack(server, resources, group_by):
    spec = run_spec(resources)
    plan = post(server, "/api/project/main/runs/get_plan",
                {"run_spec": spec, "max_offers": 10000, "for_offers_only": True})
    offers = [InstanceOfferWithAvailability.model_validate(o) for o in plan["job_plans"][0]["offers"]]
    assert plan["job_plans"][0]["total_offers"] == len(offers) > 0
    ours = post(server, "/api/project/main/gpus/list", {"run_spec": spec, "group_by": group_by})
    theirs = ListGpusResponse(gpus=dgpus._get_gpus_grouped(offers, set(group_by), False))
    assert ours == theirs.model_dump(mode="json", exclude_none=True)


def test_cpu_only_and_bad_group_by(server):
    spec = run_spec({"gpu": 0, "cpu": {"min": 16}})
    plan = post(server, "/api/project/main/runs/get_plan",
                {"run_spec": spec, "max_offers": 10000, "for_offers_only": True})
    offers = [InstanceOfferWithAvailability.model_validate(o) for o in plan["job_plans"][0]["offers"]]
    for group_by in ([], ["backend"], ["backend", "region"], ["count"]):
        ours = post(server, "/api/project/main/gpus/list", {"run_spec": spec, "group_by": group_by})
        theirs = ListGpusResponse(gpus=[], cpus=dgpus._get_cpus_grouped(offers, set(group_by), False))
        assert ours == theirs.model_dump(mode="json", exclude_none=True)
    with pytest.raises(urllib.error.HTTPError) as e:
        post(server, "/api/project/main/gpus/list", {"run_spec": spec, "group_by": ["region"]})
    assert e.value.code == 400
    assert "region" in json.loads(e.value.read())["detail"][0]["msg"]
