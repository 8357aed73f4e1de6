"""dstack's side of the oracle for the server-config kinds.

`normalize(kind, input)` validates `input` with dstack's own pydantic models and returns what
dstack would dump (`model_dump(mode="json")`), or `None` when `kind` is not one of:

* ``server_config``: a ``config.yml`` text (or an already-parsed mapping), loaded as the server
  loads it (``yaml.safe_load`` + ``ServerConfig.model_validate``, which reads the files that
  credentials name);
* ``backend_config``: a backend config with credentials (a mapping, or YAML text), validated as
  ``backends/create`` and ``create_yaml`` validate it (``BackendConfigWithCreds``);
* ``backend_config_no_creds``: a backend config without credentials, as ``BackendInfo.config``
  validates it (``AnyBackendConfigWithoutCreds``).

Invalid input raises (pydantic ``ValidationError``, ``yaml.YAMLError``, ``ValueError``).
"""

from typing import Any, Optional

import yaml

KINDS = ("server_config", "backend_config", "backend_config_no_creds")


def _load(input: Any) -> Any:
    if isinstance(input, str):
        return yaml.safe_load(input)
    return input


def normalize(kind: str, input: Any) -> Optional[dict]:
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
