"""The agent's operations, as control.py (by name, control.OPS) and http_api.py call them: deploy, rollback,
call, task(s), status, logs, stop, the deploy locks; recover, reap and the die-event watch for __main__.
Transport-free: tests call them too. Each part holds its own logic over one shared AgentState:
deployments.py, tasks.py, deaths.py, housekeeping.py; status and logs read across them, here."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from beamctl.protocol.gpus import Gpu
from beamctl.agent import locks as _locks
from beamctl.agent import logs as _logs
from beamctl.agent import door as _door
from beamctl.agent import gateway as _gateway
from beamctl.agent import tokens as _tokens
from beamctl.agent.containers import Containers
from beamctl.agent.deaths import Deaths
from beamctl.agent.deployments import Deployments
from beamctl.agent.housekeeping import Housekeeping
from beamctl.agent.state import AgentState
from beamctl.protocol.errors import AgentError
from beamctl.agent.tasks import Tasks


class Agent:
    def __init__(self, data_dir: Path, containers: Containers, gpus: list[Gpu] | None = None,
                 snapshot_ram: int = 0) -> None:
        self.state = state = AgentState(data_dir, containers, gpus, snapshot_ram)
        self.data_dir, self.store, self.containers, self.gpus = data_dir, state.store, containers, state.gpus
        self.snapshots, self.agent_id, self.pools = state.snapshots, state.agent_id, state.pools
        self._deployments, self._housekeeping = Deployments(state), Housekeeping(state)
        self._deaths = Deaths(state)
        self._tasks = Tasks(state, self._deaths)

    @property
    def endpoint(self) -> str:
        return self.state.endpoint

    @endpoint.setter
    def endpoint(self, value: str) -> None:  # set by the HTTP server: http://host:port
        self.state.endpoint = value

    # life ---------------------------------------------------------------------------------------
    def about(self) -> dict[str, Any]:
        from beamctl import __version__

        return {"version": __version__, "pid": os.getpid(), "endpoint": self.endpoint,
                "gpus": [{"name": g.name, "canonical": g.canonical, "memory_mib": g.memory_mib,
                          "driver": g.driver, "index": g.index} for g in self.gpus]}

    def recover(self) -> None:
        self._housekeeping.recover()

    def reap_forever(self) -> None:
        self._housekeeping.reap_forever()

    def reap(self, now: float) -> None:
        self._housekeeping.reap(now)

    def watch_deaths_forever(self) -> None:
        self._deaths.watch_forever()

    def container_died(self, container_id: str, why: str) -> bool:
        return self._deaths.container_died(container_id, why)

    def shutdown(self) -> None:
        self.state.stopping.set()

    # deploy, rollback ---------------------------------------------------------------------------
    def check_placement(self, gpu: list[str], app: str | None = None) -> dict[str, Any]:
        return self._deployments.check_placement(gpu, app)

    def deploy(self, spec_json: dict[str, Any], secret_values: dict[str, str],
               health_timeout: float | None = None, token: str | None = None) -> dict[str, Any]:
        result = self._deployments.deploy(spec_json, secret_values, health_timeout, token)
        return self._with_gateway(str(spec_json.get("app")), result)

    def rollback(self, app: str, version: int | None = None,
                 health_timeout: float | None = None) -> dict[str, Any]:
        return self._with_gateway(app, self._deployments.rollback(app, version, health_timeout))

    def _with_gateway(self, app: str, result: dict[str, Any]) -> dict[str, Any]:
        """A result the client follows with the app's front door, when it has one (stop, rollback, rotate)."""
        where = self.state.exposure.gateway_of(app)
        return {**result, "gateway": where} if where else result

    # deploy locks (held across a whole fleet deploy by the client; agent/locks.py) -------------------
    def lock_acquire(self, app: str, holder: dict[str, Any]) -> dict[str, Any]:
        return _lock_op(_locks.acquire, self.data_dir, app, holder)

    def lock_renew(self, app: str, token: str) -> bool:
        return _lock_op(_locks.renew, self.data_dir, app, token)

    def lock_release(self, app: str, token: str) -> bool:
        return _lock_op(_locks.release, self.data_dir, app, token)

    def lock_break(self, app: str) -> dict[str, Any] | None:
        return _lock_op(_locks.break_, self.data_dir, app)

    # tasks ----------------------------------------------------------------------------------------
    def call(self, app: str, inputs: Any, task_id: str | None = None) -> dict[str, Any]:
        return self._tasks.call(app, inputs, task_id)

    def input_limit(self, app: str) -> int:
        return self._tasks.input_limit(app)

    def task(self, task_id: str) -> dict[str, Any]:
        return self._tasks.task(task_id)

    def tasks(self, app: str | None = None, limit: int = 20, status: str | None = None) -> list[dict[str, Any]]:
        return self._tasks.tasks(app, limit, status)

    # status, logs, stop -------------------------------------------------------------------------------
    def status(self, app: str | None = None) -> dict[str, Any]:
        apps = [app] if app else self.store.apps()
        for name in apps:
            if not self.store.has_app(name):
                raise AgentError(f"{name} was never deployed here")
        running = [c.id for name in apps for c in (self.pools[name].live if name in self.pools else []) if c.id]
        host, used = self.containers.usage(running)
        out = []
        for name in apps:
            token = _tokens.read(self.data_dir, name)
            pool = self.pools.get(name)
            now = time.monotonic()
            live = [{"id": c.id[:12], "version": c.version, "busy": c.busy,
                     "state": "restoring" if c.state == "starting" and c.restoring else c.state,
                     "idle_s": round(now - c.last_used, 1) if c.state == "ready" and not c.busy else 0,
                     "usage": used.get(c.id)}
                    for c in (pool.live if pool else [])]
            versions = self.store.versions(name)
            active = self.store.active_version(name)
            snaps = self.snapshots.describe(name)
            out.append({"app": name, "active_version": active,
                        "image": next((v["image"] for v in versions if v["version"] == active), None),
                        "containers": live, "scaling": _scaling(pool), "token": token, "lock": _locks.read(self.data_dir, name),
                        "endpoint": self.state.app_endpoint(name),
                        "gateway": self.state.exposure.gateway_of(name),
                        "versions": [{**{k: v[k] for k in ("version", "image", "state", "reason", "created")},
                                      "checkpoint": snaps.get(v["version"])} for v in versions[-5:]]})
        return {"agent": {"data_dir": str(self.data_dir), "pid": os.getpid(), "endpoint": self.endpoint,
                          "gpus": [g.name for g in self.gpus]}, "host": host, "apps": out}

    def logs(self, app: str, since: float = 0.0, tail: int = 200, task_id: str | None = None) -> list[dict[str, Any]]:
        if not self.store.has_app(app):
            raise AgentError(f"{app} was never deployed here")
        pool = self.pools.get(app)
        running = [(c.id, self.containers.logs(c.id)) for c in (pool.live if pool else [])]
        return _logs.merged(self.data_dir, app, running, list(self.store.events(app, since)), since, tail, task_id)

    def stop(self, app: str) -> dict[str, Any]:
        return self._with_gateway(app, self._housekeeping.stop(app))

    def token_rotate(self, app: str, token: str | None = None) -> dict[str, Any]:
        self.state.rotate_token(app, token)
        return self._with_gateway(app, {"app": app, "rotated": True})

    # the front door (beam.yaml `gateway:`): on the gateway host, and where a gateway reaches this agent ----
    def gateway_serve(self, app: str, port: int, tls: bool, token: str, servers: list[Any],
                      bind: str = "", pem: str | None = None) -> dict[str, Any]:
        door = _gateway.Door(app, port, bind, tls, _tokens.digest(token).removeprefix(_tokens.PREFIX),
                             _door.servers(servers))
        if tls and not pem:
            raise AgentError("a TLS front door needs its certificate", kind="input")
        with self.state.gateway_lock:
            _gateway.set_door(self.data_dir, door, pem)
        self.store.event(app, f"gateway: port {port} routes to {', '.join(n for n, _ in door.servers) or 'no host'}")
        return _gateway.status(self.data_dir)

    def gateway_update(self, app: str, token: str | None = None, servers: list[Any] | None = None
                       ) -> dict[str, Any]:
        """The app's route with a new token or servers (stop, rollback, token rotate); the rest as it was."""
        with self.state.gateway_lock:
            old = next((d for d in _gateway.doors(self.data_dir) if d.app == app), None)
            if old is None:
                raise AgentError(f"this host's front door does not route {app}")
            door = dataclasses.replace(
                old, digest=_tokens.digest(token).removeprefix(_tokens.PREFIX) if token else old.digest,
                servers=_door.servers(servers) if servers is not None else old.servers)
            _gateway.set_door(self.data_dir, door, None)
        return _gateway.status(self.data_dir)

    def gateway_remove(self, app: str) -> dict[str, Any]:
        with self.state.gateway_lock:
            removed = _gateway.remove_door(self.data_dir, app)
        return {"removed": removed, **_gateway.status(self.data_dir)}

    def gateway_status(self) -> dict[str, Any]:
        return _gateway.status(self.data_dir)

    def gateway_unexpose(self, app: str) -> dict[str, Any]:
        """The app no longer has a gateway (or another one): this host forgets the old one."""
        return {"forgot": self.state.exposure.forget(app)}

    def gateway_expose(self, app: str, listen: str, allow: list[Any], url: str, gateway: str) -> dict[str, Any]:
        if not self.store.has_app(app):
            raise AgentError(f"{app} was never deployed here")
        return self.state.exposure.expose(app, listen, [str(a) for a in allow], url, gateway)


def _lock_op(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as e:  # a bad app name or holder
        raise AgentError(str(e), kind="input") from None


def _scaling(pool: Any) -> dict[str, Any] | None:
    """The app's autoscaler on this host: its counts, the tasks waiting for a slot, and why the last
    container it wanted could not start (None: it could)."""
    if pool is None:
        return None
    scale = pool.scale
    return {"max_containers": scale.max_containers, "min_containers": scale.min_containers,
            "tasks_per_container": scale.tasks_per_container or pool.workers, "workers": pool.workers,
            "waiting": pool.waiting, "starting": pool.creating, "blocked": pool.blocked}
