"""The host's GPUs, from nvidia-smi (no nvidia-smi, or no GPU listed: a CPU-only host), and which of
them other apps hold."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from beamctl.protocol.gpus import Gpu, parse

QUERY = "--query-gpu=index,name,memory.total,driver_version,uuid"


def inventory() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, QUERY, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse(proc.stdout) if proc.returncode == 0 else []


HOLDING = ("starting", "active")  # version states whose GPUs are not free


def taken(rows: list[dict[str, Any]], exclude: str | None) -> dict[int, str]:
    """GPU index -> the app holding it, from other apps' starting or active versions' pinned devices (an
    app's own GPUs are free to its next version: old and new share them during a switch)."""
    out: dict[int, str] = {}
    for row in rows:
        if row.get("app") != exclude and row.get("state") in HOLDING:
            for i in (row.get("spec") or {}).get("gpu_devices") or ():
                out.setdefault(int(i), row["app"])
    return out


def clash(pinned: list[int], taken: dict[int, str]) -> str | None:
    """Why a version pinned to these GPUs cannot start again now (others hold some), or None."""
    held = sorted({taken[i] for i in pinned if i in taken})
    return f"used GPU(s) {', '.join(map(str, pinned))}, now held by {', '.join(held)}" if held else None


def device_rules(proc_devices: str) -> list[str]:
    """Device cgroup rules for the NVIDIA driver's character devices (/dev/nvidia*, nvidia-uvm, nvidia-caps),
    by their majors in /proc/devices' text: what a GPU container restored without the `--gpus` hook is let
    open (the hook allows them at a cold start; the restored /dev holds only the captured container's nodes)."""
    rules, section = [], ""
    for line in proc_devices.splitlines():
        if line.endswith(":"):
            section = line
            continue
        parts = line.split()
        if section.startswith("Character") and len(parts) == 2 and parts[0].isdigit() and \
                parts[1].startswith("nvidia"):
            rules.append(f"c {parts[0]}:* rwm")
    return sorted(set(rules), key=lambda r: int(r.split()[1].split(":")[0]))


def host_device_rules() -> list[str]:
    try:
        with open("/proc/devices") as f:
            return device_rules(f.read())
    except OSError:
        return []
