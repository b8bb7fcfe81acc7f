"""Tasks: `call` runs one on the app's pool and records it with its phases; `task` and `tasks` read them back."""

from __future__ import annotations

import json
import time
from typing import Any

from beamctl.protocol.wire import TASK_ID_RE, new_task_id
from beamctl.agent.deaths import Deaths
from beamctl.agent.pool import StartFailed
from beamctl.agent.profile import phases
from beamctl.agent.container_args import size_text
from beamctl.protocol.spec import MAX_INPUT_BYTES, health_timeout
from beamctl.agent.state import AgentState
from beamctl.protocol.errors import AgentError

HTTP_SLACK_S = 10  # beyond the task timeout, for the runtime to answer


class Tasks:
    def __init__(self, state: AgentState, deaths: Deaths) -> None:
        self.state, self.deaths = state, deaths
        self.store, self.pools = state.store, state.pools

    def input_limit(self, app: str) -> int:
        """The most bytes of JSON a task of the app's serving version takes (its beam.yaml's max_input_size)."""
        pool = self.pools.get(app)
        if pool is None or pool.version is None:
            return MAX_INPUT_BYTES
        return int(self.state.spec(app, pool.version).get("max_input_bytes") or MAX_INPUT_BYTES)

    def call(self, app: str, inputs: Any, task_id: str | None = None) -> dict[str, Any]:
        """Run one task. `task_id`: the client's (TASK_ID_RE), so that it can name the task even if the
        agent dies before answering; else one is made here."""
        if not isinstance(inputs, dict):
            raise AgentError("a task's input must be a JSON object, like {\"name\": \"Ada\"}", kind="input")
        if task_id is not None and (not isinstance(task_id, str) or not TASK_ID_RE.match(task_id)):
            raise AgentError(f"not a task id: {str(task_id)[:40]!r} (t- and 12 hex digits)", kind="input")
        if task_id is not None and self.store.task(task_id) is not None:
            raise AgentError(f"task {task_id} exists already", kind="input")
        pool = self.pools.get(app)
        if pool is None or pool.version is None:
            raise AgentError(f"{app} is not deployed here", hint="run `beamctl deploy` first")
        limit = self.input_limit(app)
        size = len(json.dumps(inputs, ensure_ascii=False, separators=(",", ":")).encode())
        if size > limit:
            raise AgentError(f"the inputs are {size} bytes, more than {app}'s max_input_size ({size_text(limit)})",
                             kind="input", hint="put big data in a volume and send its path, or raise "
                                                "max_input_size in beam.yaml")
        received, received_wall = time.monotonic(), time.time()
        task_id = task_id or new_task_id()
        self.store.task_started(task_id, app, received_wall)
        spec = self.state.spec(app, pool.version)
        version, live, payload, waited_for = pool.version, None, {}, []
        try:
            live = pool.acquire(timeout=health_timeout(spec) + spec["timeout_s"], waited_for=waited_for)
            version = live.version
            _, payload = live.request("POST", "/tasks", {"task_id": task_id, "inputs": inputs},
                                      timeout=spec["timeout_s"] + HTTP_SLACK_S)
        except StartFailed as e:
            payload = {"status": "failed", "error": f"the container could not start: {e.reason}"}
        except Exception as e:  # noqa: BLE001 - the runtime died or hung: the task failed, the agent goes on
            payload = {"status": "failed", "error": self.deaths.lost_contact(app, pool, live, e)}
        finally:
            if live is not None:
                pool.release(live)
        done = time.monotonic()
        timings = payload.get("timings") or {}
        kind, phase_s = phases(received, done, timings.get("start", done), timings.get("end", done),
                               live.timeline if live else None)
        task = {"task_id": task_id, "app": app, "version": version, "status": payload.get("status", "failed"),
                "start": kind, "received": received_wall, "finished": time.time(), "phases": phase_s,
                "total": round(done - received, 6), "result": payload.get("result"),
                "error": payload.get("error"), "trace": payload.get("trace"),
                "container": live.id[:12] if live else None,
                "queued": f"no other container could start: {waited_for[-1]}" if waited_for else None}
        self.store.task_finished(task)
        return task

    def task(self, task_id: str) -> dict[str, Any]:
        task = self.store.task(task_id)
        if task is None:
            raise AgentError(f"no task {task_id} on this host")
        return task

    def tasks(self, app: str | None = None, limit: int = 20, status: str | None = None) -> list[dict[str, Any]]:
        return self.store.tasks(app, limit, status)
