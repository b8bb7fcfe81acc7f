from __future__ import annotations

import shutil

import pytest


def need(tool: str) -> str:
    """The path of a tool the set-up script installs; a missing one fails (CI must have it)."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if shutil.which(f"/usr/sbin/{tool}") else None)
    if path is None:
        pytest.fail(f"{tool} is not installed: run ./scripts/setup.sh")
    return path
