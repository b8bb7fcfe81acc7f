"""A fake host beside the real ones (host.py): an agent kept in memory that answers the control
operations with the real agent's shapes, for the fast unit tier of every app command over one host or
many. Failures are scripted per operation: `fail={"deploy": ConnectionError("reset")}` raises (the host
went away mid-way), `fail={"call": "no such app"}` is the agent's refusal, and `answers={op: answer}`
replaces an answer outright (a dict, or a function of the arguments)."""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any, Callable

import beamctl
from beamctl.errors import BeamctlError
from beamctl.protocol.gpus import Gpu, placement


class FakeAgent:
    """Versions, tasks, logs and deploy locks of one agent, in memory."""

    def __init__(self, gpus: tuple[Gpu, ...] = (), start_fails: dict[int, str] | None = None) -> None:
        self.gpus = tuple(gpus)
        self.start_fails = dict(start_fails or {})  # version -> why its container does not start
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.active: dict[str, int | None] = {}
        self.task_rows: list[dict[str, Any]] = []
        self.log_rows: list[dict[str, Any]] = []
        self.locks: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self._clock = itertools.count(1)

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        return getattr(self, "op_" + op)(**args)

    def op_version(self) -> dict[str, Any]:
        return {"version": beamctl.__version__, "pid": 4242, "endpoint": None,
                "gpus": [g.__dict__ for g in self.gpus]}

    def op_check_placement(self, gpu: list[str], app: str | None = None) -> dict[str, Any]:
        got = placement(tuple(gpu), list(self.gpus))
        if isinstance(got, str):
            raise Refused(got, "deploy to a host with a free GPU of that kind, or change gpu in beam.yaml")
        return {"gpu": got[0], "devices": list(range(got[1]))}

    def _start(self, app: str, version: int, image: str) -> dict[str, Any]:
        why = self.start_fails.get(version)
        serving = self.active.get(app)
        if why is not None:
            self._log(app, f"v{version} did not start: {why}")
            return {"app": app, "version": version, "image": image, "status": "failed", "reason": why,
                    "log_tail": ["Traceback (most recent call last):", why], "serving": serving}
        self.active[app] = version
        self._log(app, f"v{version} ready")
        return {"app": app, "version": version, "image": image, "status": "ready", "reason": None,
                "token": self.tokens.get(app, "tok"), "endpoint": f"http://127.0.0.1:8000/{app}", "serving": version,
                "checkpoint": None}

    def op_deploy(self, spec_json: dict[str, Any], secret_values: dict[str, str],
                  health_timeout: float | None = None, token: str | None = None) -> dict[str, Any]:
        app = spec_json["app"]
        if token is not None:
            self.tokens[app] = token
        rows = self.versions.setdefault(app, [])
        rows.append({"version": len(rows) + 1, "spec": spec_json})
        return self._start(app, len(rows), spec_json["image"])

    def op_rollback(self, app: str, version: int | None = None, health_timeout: float | None = None) -> dict[str, Any]:
        active = self.active.get(app)
        target = version or (active - 1 if active else None)
        if not target or target == active or target > len(self.versions.get(app, [])):
            raise Refused(f"no earlier version of {app} to roll back to")
        return {**self._start(app, target, self.versions[app][target - 1]["spec"]["image"]),
                "rolled_back_from": active}

    def op_call(self, app: str, inputs: Any, task_id: str | None = None) -> dict[str, Any]:
        if not self.active.get(app):
            raise Refused(f"{app} is not deployed here", "run `beamctl deploy` first")
        first = not any(t["app"] == app for t in self.task_rows)
        phases = {"queue": 0.001, "task_run": 0.002, **({"container_start": 0.5, "on_start": 1.0} if first else {})}
        row = {"task_id": task_id or "t-" + secrets.token_hex(6), "app": app, "version": self.active[app],
               "status": "succeeded", "start": "cold" if first else "warm", "result": {"echo": inputs},
               "error": None, "phases": phases, "total": sum(phases.values()),
               "received": time.time() + next(self._clock) * 1e-6}  # a time, in the order of the calls
        self.task_rows.append(row)
        self._log(app, f"task {row['task_id']} succeeded", row["task_id"])
        return row

    def op_task(self, task_id: str) -> dict[str, Any]:
        for row in self.task_rows:
            if row["task_id"] == task_id:
                return row
        raise Refused(f"no task {task_id}")

    def op_tasks(self, app: str | None = None, limit: int = 20, status: str | None = None) -> list[dict[str, Any]]:
        rows = [t for t in self.task_rows if (app is None or t["app"] == app) and (status is None or
                                                                                  t["status"] == status)]
        return sorted(rows, key=lambda t: t["received"], reverse=True)[:limit]

    def op_status(self, app: str | None = None) -> dict[str, Any]:
        names = [app] if app else sorted(self.versions)
        return {"apps": [{"app": a, "active_version": self.active.get(a), "endpoint": None, "token": self.tokens.get(a),
                          "image": (self.versions[a][self.active[a] - 1]["spec"]["image"] if self.active.get(a)
                                    else None),
                          "lock": None, "containers": [{"id": f"c0ffee{self.active[a]:06d}", "state": "ready",
                                                        "busy": 0, "idle_s": 0, "version": self.active.get(a)}]
                          if self.active.get(a) else [],
                          "versions": []} for a in names if a in self.versions]}

    def op_logs(self, app: str, since: float = 0.0, tail: int = 200, task_id: str | None = None) -> list[dict[str, Any]]:
        if app not in self.versions:
            raise Refused(f"{app} was never deployed here")
        rows = [e for e in self.log_rows if e["app"] == app and e["ts"] > since
                and (task_id is None or e.get("task_id") == task_id)]
        return rows[-tail:]

    def op_stop(self, app: str) -> dict[str, Any]:
        if app not in self.versions:
            raise Refused(f"{app} was never deployed here")
        stopped, self.active[app] = self.active.get(app), None
        if stopped is None:
            return {"app": app, "stopped_version": None, "already_stopped": True}
        return {"app": app, "stopped_version": stopped}

    def op_token_rotate(self, app: str, token: str | None = None) -> dict[str, Any]:
        if app not in self.versions:
            raise Refused(f"{app} was never deployed here")
        self.tokens[app] = token or secrets.token_urlsafe(32)
        return {"app": app, "rotated": True}

    def op_lock_acquire(self, app: str, holder: dict[str, Any]) -> dict[str, Any]:
        held = self.locks.get(app)
        if held is not None and held["token"] != holder["token"]:
            return {"acquired": False, "holder": {k: v for k, v in held.items() if k != "token"}}
        self.locks[app] = dict(holder)
        return {"acquired": True, "token": holder["token"]}

    def op_lock_renew(self, app: str, token: str) -> bool:
        return (self.locks.get(app) or {}).get("token") == token

    def op_lock_release(self, app: str, token: str) -> bool:
        if (self.locks.get(app) or {}).get("token") == token:
            del self.locks[app]
            return True
        return False

    def op_lock_break(self, app: str) -> dict[str, Any] | None:
        held = self.locks.pop(app, None)
        return {k: v for k, v in held.items() if k != "token"} if held else None

    def _log(self, app: str, text: str, task_id: str | None = None) -> None:
        self.log_rows.append({"ts": time.time() + next(self._clock) * 1e-6, "app": app, "source": "agent",
                              "text": text, "task_id": task_id})


class Refused(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class FakeHost:
    """A Host (host.py) whose agent is a FakeAgent; `asked` records every request as (op, args)."""

    def __init__(self, name: str = "local", agent: FakeAgent | None = None, local: bool = False,
                 fail: dict[str, Any] | None = None, answers: dict[str, Any] | None = None) -> None:
        self.name, self.local = name, local
        self.agent = agent or FakeAgent()
        self.fail = dict(fail or {})
        self.answers = dict(answers or {})
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.installs = 0
        self.attached: list[tuple[list[str], bool]] = []
        self.attach_exit = 0
        self.closed = False

    def request(self, op: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        self.asked.append((op, args))
        failure = self.fail.get(op)
        if isinstance(failure, BaseException):
            raise failure
        if isinstance(failure, str):
            return {"ok": False, "error": failure, "hint": None}
        if op in self.answers:
            answer = self.answers[op]
            return answer(args) if callable(answer) else answer
        try:
            return {"ok": True, "result": self.agent.handle(op, args)}
        except Refused as e:
            return {"ok": False, "error": e.message, "hint": e.hint}

    def install(self, progress: Callable[[Any], None], force: bool = False) -> None:
        self.installs += 1
        failure = self.fail.get("install")
        if failure is not None:
            raise failure if isinstance(failure, BaseException) else BeamctlError(failure)

    def attach(self, argv: list[str], tty: bool) -> int:
        """Recorded in `attached`; the exit status is `attach_exit`."""
        self.attached.append((argv, tty))
        return self.attach_exit

    def ops(self) -> list[str]:
        """The operations asked, without the deploy lock's."""
        return [op for op, _ in self.asked if not op.startswith("lock_")]

    def close(self) -> None:
        self.closed = True
