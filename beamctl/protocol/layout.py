"""Where the agent lives on a host, as the installer lays it out and the client reaches it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = "/opt/beamctl/agent"  # the agent's venv (hosts install)
PYTHON = f"{ROOT}/venv/bin/python"
DATA_DIR = "/var/lib/beamctl"  # as root: the agent owns the host
AGENT_ARGV = (PYTHON, "-m", "beamctl.agent", "--data-dir", DATA_DIR)
BRIDGE_ARGV = (PYTHON, "-m", "beamctl.agent.bridge", "--data-dir", DATA_DIR)  # control lines over SSH
VERSION_ARGV = (PYTHON, "-m", "beamctl.agent", "--version")
LOAD_ARGV = (PYTHON, "-m", "beamctl.agent.load_image")  # zstd docker-save stream on stdin -> docker load
STAGED_DIR = f"{DATA_DIR}/incoming"  # layers a cut ship left whole (agent/load_image.py), root-only
STAGED_ARGV = (*LOAD_ARGV, "--staged")  # their diffIDs, one per line
LOAD_STEP_PREFIX = "beamctl-load: "  # the loader's stderr line naming the step that failed


def default_data_dir() -> Path:
    """This machine's agent data dir: $BEAMCTL_AGENT_DIR, else DATA_DIR as root, else the user's data dir."""
    explicit = os.environ.get("BEAMCTL_AGENT_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path(DATA_DIR)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "beamctl"
