"""The host's GPUs, from nvidia-smi. No nvidia-smi, or no GPU listed: a CPU-only host."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from beamctl.config.gpu import canonical_name

QUERY = "--query-gpu=index,name,memory.total,driver_version"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str  # as the driver says: "NVIDIA H100 80GB HBM3"
    canonical: str | None  # "H100", or None for a type beamctl does not name
    memory_mib: int | None  # None: [N/A] on unified-memory parts (GB10)
    driver: str


def parse(csv_text: str) -> list[Gpu]:
    out = []
    for line in csv_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        index, name, memory, driver = parts
        try:
            number = int(index)
        except ValueError:
            continue  # not a GPU line (nvidia-smi's own messages)
        mib = memory.split()[0] if memory.split() else ""
        out.append(Gpu(number, name, canonical_name(name), int(mib) if mib.isdigit() else None, driver))
    return out


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


def placement(requested: tuple[str, ...], gpus: list[Gpu]) -> tuple[str, int] | str:
    """The first requested `TYPE[:COUNT]` this host can give, as (type, count), else why not."""
    if not requested:
        return ("", 0)
    if not gpus:
        return f"this host has no GPU (nvidia-smi lists none); the app asks for {' or '.join(requested)}"
    for choice in requested:
        kind, _, count = choice.partition(":")
        n = int(count or 1)
        if sum(g.canonical == kind for g in gpus) >= n:
            return (kind, n)
    have = ", ".join(f"{g.name}" for g in gpus)
    return f"this host has {have}; the app asks for {' or '.join(requested)}"
