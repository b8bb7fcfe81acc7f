"""`deploy --dry-run`: what a deploy would do on each host, found out without doing any of it: no install,
no lock, nothing sent, nothing started. It asks each agent (version, placement, the app's status) and, on
the remote hosts, which of the image's layers each engine already holds. The image is built here first
(cached), since what a host lacks is decided by the image's layers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import beamctl
from beamctl.errors import BeamctlError
from beamctl.hosts.each import ask, each, parallel


@dataclass
class HostPlan:
    host: str
    agent: str  # "current" | "would be installed" | "would be upgraded from X" | why it did not answer
    action: str  # what the deploy would do there, in words
    serving: int | None = None  # the app's active version there now
    layers_missing: int | None = None  # of the image's layers the host's engine lacks (None: not asked)
    layers_total: int | None = None
    bytes_missing: int | None = None  # those layers' size before compression (None: not known)
    checkpoint: str | None = None  # the serving version's snapshot state

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(hosts: list[Any], app: str, prefs: tuple[str, ...], image: Any,
         survey: Callable[[Any, Any], Survey] | None = None) -> list[HostPlan]:
    """One HostPlan per host, in their order. `survey(host, image) -> Survey` for a remote host (default:
    over its SSH connection)."""
    from beamctl.fleet.rollout import place

    survey = survey or layer_survey
    about = {r.host: r for r in parallel(hosts, lambda h: ask(h, "version"))}
    answered = [h for h in hosts if about[h.name].ok]
    placed = None
    if answered and prefs:
        try:
            placed = place(answered, prefs, app)
        except BeamctlError as e:  # no host can take it: the plan says so, as the deploy would refuse
            placed = e
    return [p.result if p.ok else HostPlan(p.host, "?", f"unknown: {p.error}")
            for p in each(hosts, lambda h: _one(h, app, about[h.name], placed, image, survey))]


def _one(host: Any, app: str, about: Any, placed: Any, image: Any, survey: Callable) -> HostPlan:
    version = beamctl.__version__
    if not about.ok:
        agent = "would be installed (no agent answered)" if not host.local else "would be started"
        return HostPlan(host.name, agent, f"install the agent, then start v1 ({about.error})")
    theirs = (about.result or {}).get("version")
    agent = "current" if theirs == version else f"would be upgraded from {theirs}"
    if isinstance(placed, Exception):
        return HostPlan(host.name, agent, f"refused: {placed.message}")
    if placed is not None and host.name in placed.skipped:
        return HostPlan(host.name, agent, f"skipped: {placed.skipped[host.name]}")
    status = ask(host, "status", app=app)
    row = next(iter((status.result or {}).get("apps", [])), {}) if status.ok else {}
    serving, active_image = row.get("active_version"), row.get("image")
    snap = next((v.get("checkpoint") for v in row.get("versions") or [] if v.get("version") == serving), None)
    lacks = survey(host, image) if not host.local else Survey(None, None)
    if serving and active_image == image.image:
        action = f"unchanged image: v{serving} keeps serving (a new version only if settings or secrets changed)"
    else:
        action = (f"start a new version, then retire v{serving}" if serving else "start the first version")
    return HostPlan(host.name, agent, action, serving, lacks.missing, lacks.total, lacks.bytes,
                    (snap or {}).get("state"))


class Survey(NamedTuple):
    """What a host lacks of the image: layers (of total) and their bytes before compression."""

    missing: int | None
    total: int | None
    bytes: int | None = None


def layer_survey(host: Any, image: Any) -> Survey:
    """What the host lacks (as a ship would send it: neither held by its engine nor kept from a cut send),
    over the host's SSH connection."""
    from beamctl.fleet import layers, ship

    ours = ship.local_layers(image.image)
    conn = host.connection()
    if ship.remote_id(conn, host.name, image.image) == image.id:
        return Survey(0, len(ours), 0)
    held, staged = ship.held_layers(conn, host.name)
    keep_from = layers.present_prefix(ours, held)
    lacks = [d for d in ours[keep_from:] if d not in staged]
    sizes = ship.layer_sizes(image.image, image.id, ours)
    return Survey(len(lacks), len(ours), sum(sizes[d] for d in lacks) if sizes is not None else None)
