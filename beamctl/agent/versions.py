"""Which version a rollback brings back, and whether a deploy changes anything: pure choices over the
app's version records."""

from __future__ import annotations

import json
from typing import Any

ROLLBACK_FROM = ("retired", "stopped")  # states of versions that served and were replaced normally


def rollback_target(app: str, rows: list[dict[str, Any]], active: int | None, version: int | None) -> int | str:
    """The version a rollback starts, or why there is none. Without `version`: the newest version older
    than the active one that served and was replaced by a deploy or a stop (never a failed one, nor one
    already rolled back). With `version`: that one, unless it never served (failed, starting) or serves now."""
    states = {r["version"]: r["state"] for r in rows}
    if version is not None:
        if version not in states:
            return f"{app} has no version {version} here"
        if version == active:
            return f"v{version} of {app} is already serving"
        if states[version] in ("failed", "starting"):
            return f"v{version} of {app} never served (state {states[version]}); it cannot be rolled back to"
        return version
    if active is None:
        return f"nothing of {app} is serving here; name the version to bring back"
    earlier = [v for v, state in states.items() if v < active and state in ROLLBACK_FROM]
    if not earlier:
        return f"no earlier version of {app} to roll back to"
    return max(earlier)


NOT_RUNTIME = ("health_timeout_s",)  # how long a deploy waits is not what runs: a change is no new version


def unchanged(active_row: dict[str, Any], spec: dict[str, Any], secrets_then: dict[str, str],
              secrets_now: dict[str, str]) -> bool:
    """A deploy of exactly what serves: same spec (image included; compared as stored, JSON, but for how
    long a start may take) and secrets."""
    def running(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k not in NOT_RUNTIME}
    return running(active_row.get("spec") or {}) == running(json.loads(json.dumps(spec))) and \
        secrets_then == secrets_now
