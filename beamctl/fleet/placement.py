"""GPU-aware placement across hosts: which hosts of the fleet take an app, and with which GPU.

An app's `gpu:` is a list in order of preference (`("H100", "A100-80")`); a host takes the app when
its agent's `check_placement` accepts it (the agent knows which of its GPUs are free), and it uses the
first preference it can place. A CPU app (no preference) goes to every host that answers. When no host
can take the app, `NoGpuPlacement` lists the fleet's GPUs per host, so the user sees what there is.

`gather` asks the agents (in threads); `place`, `fleet_summary` and `describe_gpus` are pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from beamctl.errors import BeamctlError, ExitCode
from beamctl.hosts.each import Reply, ask, each
from beamctl.protocol.errors import AgentFailed
from beamctl.protocol.gpus import Gpu, placement as _host_placement


@dataclass(frozen=True)
class HostGpus:
    """What one host said: its GPUs and whether it can place the app; or why it did not answer."""

    gpus: tuple[Gpu, ...] = ()
    refusal: str | None = None  # the agent's check_placement refusal; None: it can place the app
    error: str | None = None  # the host did not answer (unreachable, timeout, agent failed): why
    choice: str | None = None  # the preference the agent said it would use, when its answer names one
    hint: str | None = None  # the agent's hint with its refusal

    @property
    def answered(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Placement:
    """Hosts that take the app (host -> the preference it will use; None for a CPU app) and hosts skipped
    (host -> a one-line reason), both in the fleet's order."""

    chosen: dict[str, str | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(self.chosen)


class NoGpuPlacement(BeamctlError):
    """No host of the fleet can take the app. Exit 2 (CONFIG) when hosts answered: the fleet has no free
    GPU of the kinds beam.yaml asks for, nothing was changed, and the fix is `gpu:` or the hosts; exit 4
    (REMOTE) when no host answered at all, so nothing is known about their GPUs."""

    def __init__(self, prefs: tuple[str, ...], fleet: Mapping[str, HostGpus], skipped: Mapping[str, str]) -> None:
        self.prefs, self.fleet, self.skipped = tuple(prefs), dict(fleet), dict(skipped)
        answered = any(h.answered for h in fleet.values())
        self.exit_code = ExitCode.CONFIG if answered or not fleet else ExitCode.REMOTE
        if not fleet:
            super().__init__("no hosts to place the app on", hint="list the hosts under hosts: in beam.yaml")
            return
        if not answered:
            head = "no host answered, so none can take the app"
            hint = "check the hosts with `beamctl hosts check`, then deploy again"
        elif prefs:
            head = f"no host has {_wanted(prefs)}" + (f" (preference: {', '.join(prefs)})" if len(prefs) > 1 else "")
            hint = (f"change gpu: in beam.yaml (a list is an order of preference), or add a host with "
                    f"{_wanted(prefs[:1])} (beamctl hosts add)")
        else:
            head = "no host can take the app"
            hint = "check the hosts with `beamctl hosts check`"
        super().__init__(f"{head}. Fleet: {fleet_summary(fleet, prefs)}", hint=hint)


# --- pure parts ----------------------------------------------------------------------------------------

def place(prefs: tuple[str, ...], fleet: Mapping[str, HostGpus]) -> Placement:
    """The hosts that take an app asking for `prefs` (canonical `TYPE[:COUNT]`, in order of preference;
    empty: CPU only). Raises NoGpuPlacement when none does."""
    prefs = tuple(prefs)
    chosen: dict[str, str | None] = {}
    skipped: dict[str, str] = {}
    for host, info in fleet.items():
        if info.error is not None:
            skipped[host] = f"did not answer: {info.error}"
        elif not prefs:
            chosen[host] = None
        elif info.refusal is not None:
            skipped[host] = info.refusal
        else:
            chosen[host] = info.choice or _first_fit(prefs, info.gpus)
    if not chosen:
        raise NoGpuPlacement(prefs, fleet, skipped)
    return Placement(chosen, skipped)


def _first_fit(prefs: tuple[str, ...], gpus: tuple[Gpu, ...]) -> str:
    """The first preference the host's GPUs hold; the agent said yes, so the first one if none seems to."""
    return next((p for p in prefs if not isinstance(_host_placement((p,), list(gpus)), str)), prefs[0])


def describe_gpus(gpus: tuple[Gpu, ...] | list[Gpu]) -> str:
    """'2x RTX4090 (24 GiB, driver 570.1)', one group per kind of board; 'none' without GPUs."""
    if not gpus:
        return "none"
    groups = Counter((g.canonical or g.name, g.memory_mib, g.driver) for g in gpus)
    parts = []
    for (kind, mib, driver), n in groups.items():
        facts = ([f"{round(mib / 1024)} GiB"] if mib else []) + ([f"driver {driver}"] if driver else [])
        parts.append(f"{n}x {kind}" + (f" ({', '.join(facts)})" if facts else ""))
    return ", ".join(parts)


def fleet_summary(fleet: Mapping[str, HostGpus], prefs: tuple[str, ...] = ()) -> str:
    """'gpu-a: 2x RTX4090 (24 GiB, driver 570.1); gpu-b: none; gpu-c: did not answer (reason)'.
    A host that has a preferred kind of GPU and still refused says why (busy, ...)."""
    kinds = {p.partition(":")[0] for p in prefs}
    parts = []
    for host, info in fleet.items():
        if info.error is not None:
            parts.append(f"{host}: did not answer ({info.error})")
            continue
        text = f"{host}: {describe_gpus(info.gpus)}"
        if info.refusal and any(g.canonical in kinds for g in info.gpus):
            text += f" (refused: {info.refusal})"
        parts.append(text)
    return "; ".join(parts)


def _wanted(prefs: tuple[str, ...]) -> str:
    """('H100', 'A100-80:2') -> 'a free H100 or 2 free A100-80'."""
    words = []
    for p in prefs:
        kind, _, count = p.partition(":")
        words.append(f"{count} free {kind}" if count and count != "1" else f"a free {kind}")
    return " or ".join(words)


def gpus_from_about(about: Any) -> tuple[Gpu, ...]:
    """The agent's `version` answer (about()) -> its GPUs; entries it cannot read are left out."""
    listed = about.get("gpus") if isinstance(about, dict) else None
    out = []
    for g in listed if isinstance(listed, list) else []:
        try:
            mib = g.get("memory_mib")
            out.append(Gpu(int(g.get("index", len(out))), str(g["name"]), g.get("canonical"),
                           int(mib) if mib is not None else None, str(g.get("driver") or "")))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return tuple(out)


# --- asking the agents ---------------------------------------------------------------------------------

def gather(hosts: list[Any], prefs: tuple[str, ...], app: str | None = None) -> dict[str, HostGpus]:
    """Each host's GPUs (`version`) and, when `prefs` are given, its `check_placement` answer; all hosts
    at once."""
    found = each(hosts, lambda h: _ask_host(h, tuple(prefs), app))
    return {r.host: r.result if r.ok else HostGpus(error=_unprefixed(r.host, r.error or "")) for r in found}


def _ask_host(host: Any, prefs: tuple[str, ...], app: str | None = None) -> HostGpus:
    about = ask(host, "version")
    if not about.ok:
        return HostGpus(error=_why(host.name, about))
    gpus = gpus_from_about(about.result)
    if not prefs:
        return HostGpus(gpus)
    fit = ask(host, "check_placement", gpu=list(prefs), **({"app": app} if app else {}))  # its own GPUs are free to it
    if isinstance(fit.exc, AgentFailed) and not fit.stopped:
        return HostGpus(gpus, refusal=fit.exc.message, hint=fit.exc.hint)
    if not fit.ok:
        return HostGpus(gpus, error=_why(host.name, fit))
    result = fit.result
    choice = result.get("gpu") if isinstance(result, dict) and isinstance(result.get("gpu"), str) else None
    return HostGpus(gpus, choice=choice)


def _why(host: str, reply: Reply) -> str:
    """Why a host gave no usable answer, without its name (the summary names it)."""
    text = reply.exc.message if isinstance(reply.exc, AgentFailed) else reply.error or "the agent failed"
    return _unprefixed(host, text)


def _unprefixed(host: str, message: str) -> str:
    """'gpu-c: unreachable: ...' -> 'unreachable: ...' (the summary names the host already)."""
    return message[len(host) + 2:] if message.startswith(f"{host}: ") else message
