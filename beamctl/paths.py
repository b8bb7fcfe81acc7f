"""Where beamctl keeps things on the machine it runs on."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Caches shared by every app: wheels, site trees, schema verdicts ($BEAMCTL_CACHE_DIR overrides)."""
    explicit = os.environ.get("BEAMCTL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "beamctl"
