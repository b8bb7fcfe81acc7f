"""A task's cold-start profile from the timestamps the agent and the runtime recorded. Pure.

All times are CLOCK_MONOTONIC seconds: containers share the host's monotonic clock, so the
runtime's timestamps and the agent's compare directly. Each phase is clipped to start no
earlier than the task's arrival (a task that joins a container already starting only waits
for what is left); what the phases do not cover is shown as `other`.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("queue", "image_load", "container_start", "imports", "application_start", "task_run", "other")


@dataclass(frozen=True)
class ContainerTimeline:
    create_start: float  # the agent begins: image lookup, then container create
    create_end: float  # the container's filesystem exists
    process_start: float | None = None  # the runtime's first statement
    imports_done: float | None = None
    on_start_start: float | None = None
    on_start_end: float | None = None
    ready_seen: float | None = None  # the agent saw READY


def _span(a: float | None, b: float | None, floor: float) -> float:
    if a is None or b is None:
        return 0.0
    return max(0.0, b - max(a, floor))


def phases(received: float, done: float, task_start: float, task_end: float,
           timeline: ContainerTimeline | None) -> tuple[str, dict[str, float]]:
    """(start kind, seconds per phase) for one task; the phases add up to done - received."""
    total = max(0.0, done - received)
    out = dict.fromkeys(PHASES, 0.0)
    cold = timeline is not None and (timeline.ready_seen is None or timeline.ready_seen > received)
    if cold:
        t = timeline
        out["queue"] = max(0.0, t.create_start - received)
        out["image_load"] = _span(t.create_start, t.create_end, received)
        out["container_start"] = _span(t.create_end, t.process_start, received)
        out["imports"] = _span(t.process_start, t.imports_done, received)
        out["application_start"] = _span(t.on_start_start, t.on_start_end, received)
    else:
        out["queue"] = max(0.0, task_start - received)
    out["task_run"] = max(0.0, task_end - task_start)
    out["other"] = max(0.0, total - sum(v for k, v in out.items() if k != "other"))
    return ("cold" if cold else "warm"), {k: round(v, 6) for k, v in out.items()}
