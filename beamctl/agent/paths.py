"""Where an agent keeps its state on its host."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SYSTEM_DIR = Path("/var/lib/beamctl")  # as root: the agent owns the host


def default_data_dir() -> Path:
    explicit = os.environ.get("BEAMCTL_AGENT_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return SYSTEM_DIR
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "beamctl"


def agent_id(data_dir: Path) -> str:
    """This host's agent id, made once and kept in the data dir."""
    path = data_dir / "agent-id"
    if not path.exists():
        path.write_text(secrets.token_hex(8))
    return path.read_text().strip()
