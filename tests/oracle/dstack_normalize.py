"""Normalises a JSONL corpus with dstack 0.22.5's own pydantic models (the oracle).

Each input line is `{"kind": K, "input": V}`; each output line is `{"ok": <normalised json>}` or
`{"err": "<message>"}`, in the same order. `examples/normalize.rs` prints the same thing using
`dstack_sdk::spec::normalize::normalize`, and `test_spec_dstack.py` compares the two.

Kinds (the input is a JSON value unless said otherwise):
  range_int, range_memory, memory, compute_capability, gpu, cpu, disk, resources,
  duration, off_duration, idle_duration, env, port, service_port, mount_point, file_mapping,
  repo, entity_reference, retry, utilization_policy, schedule, instance_selector,
  fleet_nodes, profile, requirements, ssh_params, backend_options:
      the value parsed as that dstack type and dumped with `model_dump(mode="json")`.
  configuration: a `.dstack.yml` (YAML text, or an already-parsed object) parsed with
      `parse_apply_configuration` (task, service, dev-environment, fleet, volume, gateway).
  fleet_spec, run_spec_configuration: `FleetSpec` / `RunConfiguration` objects.
  resources_defaults: `{resources, image?, docker?}` -> `set_default_gpu_spec` +
      `set_default_gpu_spec_vendor` applied to the parsed resources, dumped.
  fleet_requirements: a `FleetSpec` -> `get_fleet_requirements`, dumped.
  query: `{requirements, ignore_disk?}` -> `requirements_to_query_filter`, as a dict of the
      QueryFilter fields (tuples as lists, enums as values).
  combine: `{fleet_profile, run_profile, fleet_requirements, run_requirements}` ->
      `{"profile": <combined or null>, "requirements": <combined or null>}`.
  any other kind: delegated to `dstack_kinds_server.normalize` (server config.yml and backend
      configs), as `dstack_sdk::spec::normalize` delegates to `spec::server_config`.

Usage: python dstack_normalize.py CORPUS.jsonl [...]  (or stdin when no file is given)
"""

import dataclasses
import enum
import json
import logging
import pathlib
import sys
import warnings

import yaml

warnings.filterwarnings("ignore")
# dstack logs deprecation notices (e.g. the `tpu-` GPU name prefix); they are not answers.
logging.disable(logging.WARNING)

from pydantic import TypeAdapter  # noqa: E402

# Imported first: importing server.services.fleets on its own hits a circular import.
import dstack._internal.server.services.backends  # noqa: E402,F401

from dstack._internal.core.backends.base.offers import requirements_to_query_filter  # noqa: E402
from dstack._internal.core.backends.profile_options import AnyBackendProfileOptions  # noqa: E402
from dstack._internal.core.models.common import EntityReference  # noqa: E402
from dstack._internal.core.models.configurations import (  # noqa: E402
    MountPointOrShorthand,
    PortMappingOrShorthand,
    RepoSpec,
    RunConfiguration,
    ServiceConfigurationParams,
    parse_apply_configuration,
)
from dstack._internal.core.models.duration import (  # noqa: E402
    Duration,
    OptionalIdleDuration,
    OptionalOffableDuration,
)
from dstack._internal.core.models.envs import Env  # noqa: E402
from dstack._internal.core.models.files import FilePathMapping  # noqa: E402
from dstack._internal.core.models.fleets import FleetNodesSpec, FleetSpec, SSHParams  # noqa: E402
from dstack._internal.core.models.profiles import (  # noqa: E402
    InstanceSelectorOrShorthand,
    Profile,
    ProfileRetry,
    Schedule,
    UtilizationPolicy,
)
from dstack._internal.core.models.resources import (  # noqa: E402
    ComputeCapability,
    CPUSpec,
    DiskSpec,
    GPUSpec,
    Memory,
    Range,
    ResourcesSpec,
)
from dstack._internal.core.models.runs import Requirements  # noqa: E402
from dstack._internal.server.services.fleets import get_fleet_requirements  # noqa: E402
from dstack._internal.server.services.requirements.combine import (  # noqa: E402
    combine_fleet_and_run_profiles,
    combine_fleet_and_run_requirements,
)
from dstack._internal.server.services.resources import (  # noqa: E402
    set_default_gpu_spec,
    set_default_gpu_spec_vendor,
)
from typing import List, Optional, Union  # noqa: E402


def _adapter_kind(tp):
    adapter = TypeAdapter(tp)

    def run(value):
        return adapter.dump_python(adapter.validate_python(value), mode="json")

    return run


def _model_kind(model):
    def run(value):
        return model.model_validate(value).model_dump(mode="json")

    return run


def _configuration(value):
    if isinstance(value, str):
        value = yaml.safe_load(value)
    return parse_apply_configuration(value).model_dump(mode="json")


def _service_port(value):
    # The `port` field of a service, validated as dstack validates it inside a service.
    params = ServiceConfigurationParams.model_validate({"port": value})
    return params.model_dump(mode="json")["port"]


def _resources_defaults(value):
    resources = ResourcesSpec.model_validate(value.get("resources", {}))
    gpu = set_default_gpu_spec(resources)
    set_default_gpu_spec_vendor(gpu_spec=gpu, image=value.get("image"), docker=value.get("docker"))
    return resources.model_dump(mode="json")


def _fleet_requirements(value):
    spec = FleetSpec.model_validate(value)
    return get_fleet_requirements(spec).model_dump(mode="json")


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _query(value):
    req = value.get("requirements")
    requirements = None if req is None else Requirements.model_validate(req)
    q = requirements_to_query_filter(requirements, ignore_disk=bool(value.get("ignore_disk")))
    return {f.name: _plain(getattr(q, f.name)) for f in dataclasses.fields(q)}


def _combine(value):
    profile = combine_fleet_and_run_profiles(
        Profile.model_validate(value["fleet_profile"]),
        Profile.model_validate(value["run_profile"]),
    )
    requirements = combine_fleet_and_run_requirements(
        Requirements.model_validate(value["fleet_requirements"]),
        Requirements.model_validate(value["run_requirements"]),
    )
    return {
        "profile": None if profile is None else profile.model_dump(mode="json"),
        "requirements": None if requirements is None else requirements.model_dump(mode="json"),
    }


KINDS = {
    "range_int": _adapter_kind(Range[int]),
    "range_memory": _adapter_kind(Range[Memory]),
    "memory": _adapter_kind(Memory),
    "compute_capability": _adapter_kind(ComputeCapability),
    "gpu": _adapter_kind(GPUSpec),
    "cpu": _adapter_kind(CPUSpec),
    "disk": _adapter_kind(DiskSpec),
    "resources": _adapter_kind(ResourcesSpec),
    "duration": _adapter_kind(Duration),
    "off_duration": _adapter_kind(OptionalOffableDuration),
    "idle_duration": _adapter_kind(OptionalIdleDuration),
    "env": _adapter_kind(Env),
    "port": _adapter_kind(PortMappingOrShorthand),
    "service_port": _service_port,
    "mount_point": _adapter_kind(MountPointOrShorthand),
    "file_mapping": _adapter_kind(FilePathMapping),
    "repo": _adapter_kind(RepoSpec),
    "entity_reference": _adapter_kind(EntityReference),
    "retry": _adapter_kind(Optional[Union[ProfileRetry, bool]]),
    "utilization_policy": _adapter_kind(UtilizationPolicy),
    "schedule": _adapter_kind(Schedule),
    "instance_selector": _adapter_kind(InstanceSelectorOrShorthand),
    "fleet_nodes": _adapter_kind(FleetNodesSpec),
    "ssh_params": _adapter_kind(SSHParams),
    "backend_options": _adapter_kind(List[AnyBackendProfileOptions]),
    "profile": _model_kind(Profile),
    "requirements": _model_kind(Requirements),
    "configuration": _configuration,
    "fleet_spec": _model_kind(FleetSpec),
    "run_spec_configuration": lambda v: RunConfiguration.model_validate(v).model_dump(mode="json"),
    "resources_defaults": _resources_defaults,
    "fleet_requirements": _fleet_requirements,
    "query": _query,
    "combine": _combine,
}


def _other_kind(kind, value):
    # Kinds owned elsewhere (server config.yml, backend configs): `dstack_kinds_server.py`.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import dstack_kinds_server

    result = dstack_kinds_server.normalize(kind, value)
    if result is None and kind not in getattr(dstack_kinds_server, "KINDS", ()):
        raise KeyError(f"unknown kind {kind!r}")
    return result


def normalize_line(line: str) -> dict:
    case = json.loads(line)
    kind = case["kind"]
    fn = KINDS.get(kind) or (lambda value: _other_kind(kind, value))
    try:
        return {"ok": fn(case["input"])}
    except Exception as e:  # noqa: BLE001 - every rejection is an answer here
        return {"err": f"{type(e).__name__}: {e}"}


def main() -> None:
    paths = sys.argv[1:]
    streams = [open(p, encoding="utf-8") for p in paths] if paths else [sys.stdin]
    for stream in streams:
        for line in stream:
            if not line.strip():
                continue
            print(json.dumps(normalize_line(line)), flush=False)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
