"""dstack's side of the oracle for the server-config kinds.

`normalize(kind, input)` validates `input` with dstack's own pydantic models and returns what
dstack would dump (`model_dump(mode="json")`), or `None` when `kind` is not one of:

* ``server_config``: a ``config.yml`` text (or an already-parsed mapping), loaded as the server
  loads it (``yaml.safe_load`` + ``ServerConfig.model_validate``, which reads the files that
  credentials name);
* ``backend_config``: a backend config with credentials (a mapping, or YAML text), validated as
  ``backends/create`` and ``create_yaml`` validate it (``BackendConfigWithCreds``);
* ``backend_config_no_creds``: a backend config without credentials, as ``BackendInfo.config``
  validates it (``AnyBackendConfigWithoutCreds``);
* ``wire:<Model>`` (``wire:Run``, ``wire:User``, ...): an API response body, read as a client
  reads it (unknown keys ignored) and dumped as the server sends it.

Invalid input raises (pydantic ``ValidationError``, ``yaml.YAMLError``, ``ValueError``).
"""

from typing import Any, Optional

import yaml

KINDS = ("server_config", "backend_config", "backend_config_no_creds")

# `wire:<name>` kinds: the dstack model each name stands for (module, class).
WIRE_MODELS = {
    "User": ("users", "User"),
    "UserWithCreds": ("users", "UserWithCreds"),
    "Project": ("projects", "Project"),
    "Member": ("projects", "Member"),
    "Secret": ("secrets", "Secret"),
    "Instance": ("instances", "Instance"),
    "InstanceOfferWithAvailability": ("instances", "InstanceOfferWithAvailability"),
    "JobSpec": ("runs", "JobSpec"),
    "JobSubmission": ("runs", "JobSubmission"),
    "JobProvisioningData": ("runs", "JobProvisioningData"),
    "Job": ("runs", "Job"),
    "Run": ("runs", "Run"),
    "RunPlan": ("runs", "RunPlan"),
    "JobSubmissionLogs": ("logs", "JobSubmissionLogs"),
}


def _load(input: Any) -> Any:
    if isinstance(input, str):
        return yaml.safe_load(input)
    return input


def _wire(name: str, input: Any) -> Optional[dict]:
    import importlib

    from dstack._internal.core.models.common import validate_extra_ignore

    if name not in WIRE_MODELS:
        return None
    module, cls = WIRE_MODELS[name]
    model = getattr(importlib.import_module(f"dstack._internal.core.models.{module}"), cls)
    return validate_extra_ignore(model, input).model_dump(mode="json")


def normalize(kind: str, input: Any) -> Optional[dict]:
    if kind.startswith("wire:"):
        return _wire(kind[len("wire:"):], input)
    if kind not in KINDS:
        return None
    # Imported lazily: the server modules are heavy and only these kinds need them.
    from pydantic import TypeAdapter

    from dstack._internal.core.backends.models import (
        AnyBackendConfigWithoutCreds,
        BackendConfigWithCreds,
    )
    from dstack._internal.server.services.config import ServerConfig

    data = _load(input)
    if kind == "server_config":
        return ServerConfig.model_validate(data).model_dump(mode="json")
    if kind == "backend_config":
        return BackendConfigWithCreds.model_validate(data).root.model_dump(mode="json")
    config = TypeAdapter(AnyBackendConfigWithoutCreds).validate_python(data)
    return config.model_dump(mode="json")
