"""A snapshot's key: what must be equal, between the host that captured it and the one restoring it, for
CRIU to restore it (image, create arguments, kernel, CPU model and flags, CRIU version, pinned GPUs, and
beamctl's format); and the CRIU version every capture needs. Pure but for reading this machine's facts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

# 2: app containers join a network sandbox (agent/sandboxes.py). A format-1 snapshot was taken in Docker's
# own network: it is `incompatible` (the next cold boot captures again), not a failed restore.
# 3: the manifest holds a digest of every file (issue 13); a format-2 snapshot has sizes only: recaptured.
KEY_FORMAT = 3
KEY_FIELDS = ("format", "image_id", "create_args_hash", "kernel", "cpu_model", "cpu_flags_hash",
              "criu_version", "gpu")
def args_hash(create_args: dict[str, Any]) -> str:
    """Hash of a container's create arguments minus its (random) name: env and secrets included."""
    kept = {k: v for k, v in create_args.items() if k != "name"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def cpu_facts(cpuinfo: str) -> tuple[str, str]:
    """/proc/cpuinfo -> (model name, hash of the flags): CRIU restores only onto a CPU with them."""
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    flag_text = " ".join(sorted(set(flags[1].split()))) if flags else ""
    return (model[1].strip() if model else platform.machine()), hashlib.sha256(flag_text.encode()).hexdigest()[:16]


def criu_version(criu: str = "criu") -> str:
    out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"^Version:\s*(\S+)", out, re.M)
    return m[1] if m else ""


def snapshot_key(image_id: str, create_args_hash: str, *, kernel: str | None = None,
                 cpuinfo: str | None = None, criu: str | None = None, gpu: dict | None = None) -> dict:
    """What must be equal for a snapshot to be restored here; None facts are read from this machine.
    gpu: {"model": ..., "driver": ...} once GPU snapshots exist (cuda-checkpoint); None for CPU apps."""
    model, flags = cpu_facts(cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text())
    return {"format": KEY_FORMAT, "image_id": image_id, "create_args_hash": create_args_hash,
            "kernel": kernel or os.uname().release, "cpu_model": model, "cpu_flags_hash": flags,
            "criu_version": criu if criu is not None else criu_version(), "gpu": gpu}


def key_differences(a: dict, b: dict) -> list[str]:
    return [f for f in KEY_FIELDS if a.get(f) != b.get(f)]


def key_matches(a: dict, b: dict) -> bool:
    return not key_differences(a, b)
