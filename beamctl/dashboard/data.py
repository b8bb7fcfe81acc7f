"""What the dashboard shows, asked of the hosts the app commands would reach (the same Host values and
sessions): apps with their containers and checkpoints per host, the tasks table, one task's profile with
its waterfall, and merged logs. Each answer carries the hosts that did not answer, with why, beside what
the others said. No state of its own: every page asks the hosts again."""

from __future__ import annotations

import time
from typing import Any

from beamctl import waterfall
from beamctl.fleet import query
from beamctl.hosts.each import ask, ask_all, parallel

START_KINDS = ("cold", "warm", "restored")
TASK_LIMIT = 200  # rows per tasks page (newest first across hosts)
LOG_AROUND_S = 5.0  # a task page's log lines: from this long before the task to this long after it


def _errors(replies: list[Any]) -> list[dict[str, str]]:
    return [{"host": r.host, "error": r.error} for r in replies if r.error is not None]


class Board:
    def __init__(self, hosts: list[Any], app: str | None = None) -> None:
        self.hosts, self.app = hosts, app
        self.by_name = {h.name: h for h in hosts}

    def apps(self) -> dict[str, Any]:
        """Per app: per host its active version, image, containers with state, checkpoints, endpoint."""
        replies = ask_all(self.hosts, "status", app=self.app)
        apps: dict[str, dict[str, Any]] = {}
        for r in replies:
            if r.error is not None:
                continue
            for a in (r.result or {}).get("apps", []):
                entry = apps.setdefault(a["app"], {"app": a["app"], "hosts": [], "gateway": None})
                entry["gateway"] = entry["gateway"] or a.get("gateway")
                entry["hosts"].append({
                    "host": r.host, "active_version": a.get("active_version"), "image": a.get("image"),
                    "endpoint": a.get("endpoint"), "containers": a.get("containers") or [],
                    "scaling": a.get("scaling"),
                    "versions": [{"version": v["version"], "state": v["state"], "reason": v.get("reason"),
                                  "checkpoint": v.get("checkpoint")} for v in a.get("versions") or []]})
        return {"apps": sorted(apps.values(), key=lambda a: a["app"]),
                "hosts": [{"host": r.host, "ok": r.error is None,
                           "usage": (r.result or {}).get("host") if r.error is None else None} for r in replies],
                "errors": _errors(replies)}

    def tasks(self, app: str | None = None, status: str | None = None, start: str | None = None,
              limit: int = TASK_LIMIT) -> dict[str, Any]:
        app = app or self.app
        replies = ask_all(self.hosts, "tasks", app=app, limit=limit, **({"status": status} if status else {}))
        rows = query.merge_tasks(replies, limit)
        if start in START_KINDS:
            rows = [t for t in rows if t.get("start") == start]
        keep = ("task_id", "app", "version", "host", "status", "start", "total", "received", "error")
        return {"tasks": [{**{k: t.get(k) for k in keep}, "run": (t.get("phases") or {}).get("task_run")}
                          for t in rows], "errors": _errors(replies), "at": time.time()}

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The task, where it ran, the app's median restored and cold starts there, the waterfall, and the
        log lines around it; None when no host has it."""
        replies = ask_all(self.hosts, "task", task_id=task_id)
        found = query.first_found(replies)
        if found is None:
            return None
        task, host = found.result, self.by_name[found.host]
        recent = ask(host, "tasks", app=task["app"], limit=200)
        medians = waterfall.medians(recent.result if recent.ok else [])
        received = task.get("received") or time.time()
        logs = ask(host, "logs", app=task["app"], since=received - LOG_AROUND_S, tail=400)
        until = received + (task.get("total") or 0) + LOG_AROUND_S
        lines = [e for e in (logs.result or []) if e.get("ts", 0) <= until] if logs.ok else []
        return {"task": task, "host": found.host, "medians": medians, "svg": waterfall.svg(task, medians),
                "rows": [{"phase": k, "label": label, "start": s, "seconds": d}
                         for k, label, s, d in waterfall.rows(task)],
                "logs": lines, "errors": _errors(replies)}

    def logs(self, app: str, since: dict[str, float], tail: int = 200) -> dict[str, Any]:
        """Entries newer than each host's `since` (host -> time), merged by time."""
        def one(h: Any) -> Any:
            return ask(h, "logs", app=app, since=since.get(h.name, 0.0), tail=tail)

        replies = parallel(self.hosts, one)
        return {"entries": query.merge_logs(replies)[-tail:], "errors": _errors(replies)}
