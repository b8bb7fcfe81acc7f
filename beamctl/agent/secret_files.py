"""A version's secret values on the host: one JSON file per version, 0600, replaced atomically.

Written before the version starts (a failed deploy never changes what the serving version starts
with), read when a version (re)starts or a rollback brings it back; never in argv, logs or status.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write(path: Path, values: dict[str, str]) -> None:
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f)
    os.replace(path.with_suffix(".tmp"), path)


def read(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
