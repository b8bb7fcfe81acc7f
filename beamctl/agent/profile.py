"""A task's cold-start profile from the timestamps the agent and the runtime recorded. Pure.

All times are CLOCK_MONOTONIC seconds: containers share the host's monotonic clock, so the
runtime's timestamps and the agent's compare directly. Each phase is clipped to start no
earlier than the task's arrival (a task that joins a container already starting only waits
for what is left); what the phases do not cover is shown as `other`.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("queue", "image_load", "container_start", "imports", "application_start", "task_run", "other")
# a start restored from a checkpoint: the snapshot's restore (CRIU, then the runtime's release) stands in
# for container start, imports and on_start
RESTORED_PHASES = ("queue", "image_load", "checkpoint_restore", "task_run", "other")


@dataclass(frozen=True)
class ContainerTimeline:
    create_start: float  # the agent begins: image lookup, then container create
    create_end: float  # the container's filesystem exists
    process_start: float | None = None  # the runtime's first statement
    imports_done: float | None = None
    on_start_start: float | None = None
    on_start_end: float | None = None
    ready_seen: float | None = None  # the agent saw READY
    capture_start: float | None = None  # a cold start that snapshotted itself after on_start (issue 6)
    capture_end: float | None = None
    restore_start: float | None = None  # a start restored from a snapshot: no process_start..on_start
    restore_end: float | None = None

    @property
    def restored(self) -> bool:
        return self.restore_start is not None


def _span(a: float | None, b: float | None, floor: float) -> float:
    if a is None or b is None:
        return 0.0
    return max(0.0, b - max(a, floor))


def phases(received: float, done: float, task_start: float, task_end: float,
           timeline: ContainerTimeline | None) -> tuple[str, dict[str, float]]:
    """(start kind: cold | restored | warm, seconds per phase) for one task; the phases add up to
    done - received. A cold start that captured a snapshot has a `checkpoint_capture` phase too."""
    total = max(0.0, done - received)
    cold = timeline is not None and (timeline.ready_seen is None or timeline.ready_seen > received)
    restored = cold and timeline.restored
    out = dict.fromkeys(RESTORED_PHASES if restored else PHASES, 0.0)
    if cold:
        t = timeline
        out["queue"] = max(0.0, t.create_start - received)
        out["image_load"] = _span(t.create_start, t.create_end, received)
        if restored:
            out["checkpoint_restore"] = _span(t.restore_start, t.restore_end, received)
        else:
            out["container_start"] = _span(t.create_end, t.process_start, received)
            out["imports"] = _span(t.process_start, t.imports_done, received)
            out["application_start"] = _span(t.on_start_start, t.on_start_end, received)
            if t.capture_start is not None:
                out["checkpoint_capture"] = _span(t.capture_start, t.capture_end, received)
    else:
        out["queue"] = max(0.0, task_start - received)
    out["task_run"] = max(0.0, task_end - task_start)
    out["other"] = 0.0
    out["other"] = max(0.0, total - sum(out.values()))
    kind = "restored" if restored else "cold" if cold else "warm"
    return kind, {k: round(v, 6) for k, v in out.items()}
