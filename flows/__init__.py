"""Prefect orchestration of the stages. Importing this package keeps Prefect's state inside the
project and its telemetry off, unless the environment already says otherwise."""

import os
from pathlib import Path

_defaults = {
    "PREFECT_HOME": str(Path.cwd() / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}
for _k, _v in _defaults.items():
    os.environ.setdefault(_k, _v)
