"""Job commands our server plans equal the shell commands dstack 0.22.5's own job
configurators build for the same run spec (tasks, services, dev environments; IDE hints,
setup/init order, background `&` commands), joined the way dstack joins them."""
import json
import urllib.request

import pytest

from dstack._internal.core.models.runs import RunSpec
from dstack._internal.server.services.jobs.configurators import base
from dstack._internal.server.services.jobs.configurators.dev import DevEnvironmentJobConfigurator
from dstack._internal.server.services.jobs.configurators.service import ServiceJobConfigurator
from dstack._internal.server.services.jobs.configurators.task import TaskJobConfigurator

CASES = [
    (TaskJobConfigurator, {"type": "task", "commands": ["echo a", "python3 x.py &", "wait"]}),
    (ServiceJobConfigurator, {"type": "service", "port": 8000, "commands": ["python3 -m http.server 8000"]}),
    (DevEnvironmentJobConfigurator, {"type": "dev-environment", "ide": "vscode", "init": ["echo hi"]}),
    (DevEnvironmentJobConfigurator, {"type": "dev-environment", "ide": "vscode", "version": "abc123"}),
    (DevEnvironmentJobConfigurator, {"type": "dev-environment", "ide": "cursor"}),
    (DevEnvironmentJobConfigurator, {"type": "dev-environment", "ide": "zed", "setup": ["echo s"], "init": ["a", "b &"]}),
    (DevEnvironmentJobConfigurator, {"type": "dev-environment", "init": ["echo plain"]}),
]


@pytest.mark.parametrize("configurator,conf", CASES)
def test_commands_equal_dstack(our_server, configurator, conf):
    spec = {"run_name": "cmd-check", "configuration": conf, "ssh_key_pub": "ssh-ed25519 AAAA x"}
    req = urllib.request.Request(
        our_server["url"] + "/api/project/main/runs/get_plan",
        data=json.dumps({"run_spec": spec}).encode(),
        headers={"Authorization": f"Bearer {our_server['token']}"},
    )
    ours = json.load(urllib.request.urlopen(req))["job_plans"][0]["job_spec"]["commands"]
    rs = RunSpec.model_validate(spec)
    group = rs.configuration.node_groups[0] if configurator is TaskJobConfigurator else None
    theirs = configurator(rs, secrets={})._shell_commands(group)
    assert ours[:3] == ["/bin/bash", "-i", "-c"]
    assert ours[3] == base._join_shell_commands(theirs)
