"""The host's GPUs, from nvidia-smi. No nvidia-smi, or no GPU listed: a CPU-only host."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any
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
    """The first requested `TYPE[:COUNT]` this host has, as (type, count), else why not (busy or not)."""
    got = assign(requested, gpus, {})
    return got if isinstance(got, str) else (got[0].partition(":")[0], len(got[1]))


def assign(requested: tuple[str, ...], gpus: list[Gpu], taken: dict[int, str]
           ) -> tuple[str, tuple[int, ...]] | str:
    """The first requested `TYPE[:COUNT]` this host can give from GPUs no other app holds (`taken`:
    index -> app), as (that request, the device indices), else why not."""
    if not requested:
        return ("", ())
    if not gpus:
        return f"this host has no GPU (nvidia-smi lists none); the app asks for {' or '.join(requested)}"
    busy = []
    for choice in requested:
        kind, _, count = choice.partition(":")
        n = int(count or 1)
        mine = [g.index for g in gpus if g.canonical == kind]
        free = [i for i in mine if i not in taken]
        if len(free) >= n:
            return (choice, tuple(free[:n]))
        if len(mine) >= n:
            busy += [f"GPU {i} ({kind}): {taken[i]}" for i in mine if i in taken]
    if busy:
        return (f"not enough free GPUs here for {' or '.join(requested)}: in use by other apps: "
                f"{', '.join(dict.fromkeys(busy))}")
    have = ", ".join(f"{g.name}" for g in gpus)
    return f"this host has {have}; the app asks for {' or '.join(requested)}"


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
