"""Where an agent keeps its state on its host."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_DIR = Path("/var/lib/beamctl")  # as root: the agent owns the host


def default_data_dir() -> Path:
    explicit = os.environ.get("BEAMCTL_AGENT_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return SYSTEM_DIR
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "beamctl"
