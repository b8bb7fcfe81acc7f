"""Text views for `beamctl hosts` (pure: values in, lines out)."""

from __future__ import annotations

from typing import Any

GIB = 1 << 30
_REFUSALS = {"HostKeyUnknown", "HostKeyChanged", "AuthFailed", "KeyNeedsPassphrase"}


def size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"


def inventory_lines(entries: list[Any]) -> list[str]:
    if not entries:
        return []
    width = max(len(e.name) for e in entries)
    twidth = max(len(e.target) for e in entries)
    lines = []
    for e in entries:
        labels = " ".join(f"{k}={v}" for k, v in e.labels.items())
        lines.append(f"{e.name:<{width}}  {e.target:<{twidth}}  {labels}".rstrip())
    return lines


def check_lines(c: Any) -> list[str]:
    """One host's `check` result: a head line, then one line per fact (or the error and its hint)."""
    head = f"{c.name}" + (f" ({c.target})" if c.target != c.name else "")
    if not c.ok:
        state = ("reachable, probe failed" if c.reachable else "unreachable" if c.kind == "HostUnreachable"
                 else "refused" if c.kind in _REFUSALS else "not checked")
        lines = [f"{head}: {state} [{c.kind}]", f"  error: {c.error}"]
        return lines + ([f"  hint: {c.hint}"] if c.hint else [])
    f = c.facts
    lines = [f"{head}: ok in {c.seconds:.1f} s"]
    cpus = f"{f.cpus} CPUs" if f.cpus else "? CPUs"
    lines.append(f"  system  {f.hostname}, Linux {f.kernel} {f.arch}, {cpus}, {size(f.memory_bytes)} memory")
    lines.append("  docker  " + (f"{f.docker_version} (data root {f.docker_root})" if f.docker_version
                                 else f"unavailable: {f.docker_error}"))
    lines.append("  gpus    " + gpu_text(f))
    lines.append("  criu    " + (criu_text(f.criu_version, f.criu_network_lock) if f.criu_version else
                                 f"unavailable: {f.criu_error} (checkpoints need CRIU >= 4.2)"))
    disks = "; ".join(f"{d.path} {size(d.free_bytes)} free of {size(d.size_bytes)}" for d in f.disks)
    lines.append("  disk    " + (disks or "?"))
    if f.agent_version:
        agent = f.agent_version
    else:
        agent = "installed, " + (f.agent_note or "version unknown") if f.agent_installed else "not installed"
    lines.append("  agent   " + agent)
    lines += [f"  problem {p}" for p in f.problems]
    return lines


def gpu_text(f: Any) -> str:
    if not f.gpus:
        return f"none: CPU-only ({f.gpu_note})" if f.gpu_note else "none: CPU-only"
    groups: dict[tuple[str, int | None, str], int] = {}
    for g in f.gpus:
        key = (g.type or g.name, g.memory_mib, g.driver)
        groups[key] = groups.get(key, 0) + 1
    parts = []
    for (name, mib, driver), count in groups.items():
        memory = size(mib << 20) if mib is not None else "? memory"
        parts.append(f"{count}x {name} ({memory}, driver {driver})")
    return ", ".join(parts)


def summary(checks: list[Any]) -> str:
    bad = [c.name for c in checks if not c.ok]
    n = len(checks)
    text = f"{n} host{'s' * (n != 1)}: {n - len(bad)} ok"
    return text + (f", {len(bad)} failed ({', '.join(bad)})" if bad else "")


def criu_text(version: str, network_lock: str | None) -> str:
    """CRIU's version, with a warning when checkpoints cannot work with it (4.1 cannot dump a TCP socket
    on kernels >= 6.16; scripts/install-criu.sh installs 4.2), or when runc's CRIU locks container
    networks with iptables (network_lock: /etc/criu/runc.conf's choice, None for CRIU's default)."""
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return version
    if parts < (4, 2):
        return f"{version} [yellow](checkpoints need CRIU >= 4.2: scripts/install-criu.sh)[/]"
    if network_lock in ("nftables", "skip"):
        return f"{version}, network lock {network_lock}"
    return (f"{version} [yellow](network lock {network_lock or 'iptables'}: 70-85 ms more per checkpoint "
            f"capture and restore; scripts/install-criu.sh sets nftables in /etc/criu/runc.conf)[/]")
