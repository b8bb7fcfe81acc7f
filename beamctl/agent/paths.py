"""The agent's identity on its host (its data dir: protocol/layout.py)."""

from __future__ import annotations

import secrets
from pathlib import Path


def agent_id(data_dir: Path) -> str:
    """This host's agent id, made once and kept in the data dir."""
    path = data_dir / "agent-id"
    if not path.exists():
        path.write_text(secrets.token_hex(8))
    return path.read_text().strip()
