"""What a GPU is to beamctl and how an app's GPU request fits a host's GPUs: the rules the agent applies
when it starts a version and the client applies when it places an app (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from beamctl.config.gpu import canonical_name


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str  # as the driver says: "NVIDIA H100 80GB HBM3"
    canonical: str | None  # "H100", or None for a type beamctl does not name
    memory_mib: int | None  # None: [N/A] on unified-memory parts (GB10)
    driver: str
    uuid: str = ""  # "GPU-5f3c...": which physical GPU, whatever its index after a reboot ("" if not asked)


def parse(csv_text: str, strict: bool = False) -> list[Gpu]:
    """nvidia-smi's `index, name, memory.total, driver_version[, uuid]` lines. Lines that are not GPUs (its
    own messages) are skipped, or, `strict`, a ValueError."""
    out = []
    for line in csv_text.strip().splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) not in (4, 5):
                raise ValueError(f"{len(parts)} fields, not index, name, memory, driver[, uuid]")
            index, name, memory, driver, *rest = parts
            number = int(index)
        except ValueError:
            if strict:
                raise
            continue
        mib = memory.split()[0] if memory.split() else ""
        out.append(Gpu(number, name, canonical_name(name), int(mib) if mib.isdigit() else None, driver,
                       rest[0] if rest and rest[0].startswith("GPU-") else ""))
    return out


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
