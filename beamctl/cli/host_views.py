"""Text views for `beamctl hosts` (pure: values in, plain lines out: no markup, the values may hold `[`)."""

from __future__ import annotations

from typing import Any

from beamctl.units import human_bytes

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
    """One host's `check` result: a head line, the facts, one line per prerequisite (with its fix under it),
    and whether it can checkpoint; or the error and its hint."""
    head = f"{c.name}" + (f" ({c.target})" if c.target != c.name else "")
    if not c.ok:
        state = ("reachable, probe failed" if c.reachable else "unreachable" if c.kind == "HostUnreachable"
                 else "refused" if c.kind in _REFUSALS else "not checked")
        lines = [f"{head}: {state} [{c.kind}]", f"  error: {c.error}"]
        return lines + ([f"  hint: {c.hint}"] if c.hint else [])
    f = c.facts
    lines = [f"{head}: ok in {c.seconds:.1f} s"]
    cpus = f"{f.cpus} CPUs" if f.cpus else "? CPUs"
    lines.append(f"  system        {f.hostname}, Linux {f.kernel} {f.arch}, {cpus}, {size(f.memory_bytes)} memory")
    lines.append("  gpus          " + gpu_text(f))
    if f.agent_version:
        agent = f.agent_version
    else:
        agent = "installed, " + (f.agent_note or "version unknown") if f.agent_installed else "not installed"
    lines.append("  agent         " + agent)
    for p in c.prerequisites:
        lines.append(f"  {p.name:<13} {'ok' if p.ok else 'MISSING':<8} {p.found}")
        if p.fix:
            lines.append(f"  {'':<13} {'':<8} fix: {p.fix}")
    why_not = c.checkpoint_problem
    lines.append("  checkpoints   " + (f"no: {why_not}" if why_not else "yes"))
    lines += [f"  problem       {p}" for p in f.problems]
    return lines


def gpu_text(f: Any) -> str:
    if not f.gpus:
        return f"none: CPU-only ({f.gpu_note})" if f.gpu_note else "none: CPU-only"
    groups: dict[tuple[str, int | None, str], int] = {}
    for g in f.gpus:
        key = (g.canonical or g.name, g.memory_mib, g.driver)
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
    text += f", {len(bad)} failed ({', '.join(bad)})" if bad else ""
    missing = [f"{c.name} ({', '.join(p.name for p in c.prerequisites if not p.ok)})" for c in checks
               if c.ok and not all(p.ok for p in c.prerequisites)]
    return text + (f"; missing prerequisites: {', '.join(missing)}" if missing else "")


def criu_phrase(c: Any) -> str:
    """A host's CRIU after `hosts install` (criu.CriuResult), in one phrase."""
    if c.problem is not None:
        return f"checkpoints off: {c.problem}"
    how = {"installed": "installed", "present": "present"}.get(c.state, c.state)
    return f"checkpoints on: CRIU {c.version} {how}" + (f", network lock {c.network_lock}" if c.network_lock else "")


def install_lines(r: Any) -> list[str]:
    """One host's `hosts install` result (an ok one): its line, and the CRIU hint when checkpoints are off."""
    line = f"{r.host}: {r.action} {r.version} ({human_bytes(r.bytes_sent)} sent, {r.seconds:.1f} s)"
    reboot = ([f"  note: no systemd on {r.host}: the agent runs under a restart loop that a reboot ends; after "
               f"a reboot run: beamctl hosts install {r.host} (containers and volumes stay)"]
              if r.supervisor == "background" else [])
    if r.criu is None:
        return [line, *reboot]
    return [f"{line}; {criu_phrase(r.criu)}"] + ([f"  hint: {r.criu.hint}"] if r.criu.hint else []) + reboot
