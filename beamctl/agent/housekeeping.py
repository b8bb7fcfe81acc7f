"""Housekeeping: what a (re)started agent finds (tasks cut off, starts that died with it, containers to
adopt or remove), idle containers reaped (scale to zero), and `stop`."""

from __future__ import annotations

import time
from typing import Any

from beamctl.agent import gateway as _gateway
from beamctl.agent import logs as _logs
from beamctl.agent.pool import Live, Pool
from beamctl.agent.profile import ContainerTimeline
from beamctl.agent.state import AgentState
from beamctl.protocol.errors import AgentError

REAP_EVERY_S = 0.5  # how often idle containers are looked for
GATEWAY_EVERY_S = 2.0  # how often a gateway host's HAProxy is looked for
STOP_DRAIN_S = 30  # `stop` waits this long for running tasks before stopping their containers
STARTING_AT_DEATH = "the agent stopped during its start"


class Housekeeping:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.store, self.containers, self.snapshots, self.pools = (state.store, state.containers,
                                                                   state.snapshots, state.pools)

    def recover(self) -> None:
        """After a (re)start: cut-off tasks are marked lost; healthy containers are adopted, not killed."""
        lost = self.store.mark_lost()
        for row in self.store.versions_in(("starting",)):  # their start died with the agent: GPUs freed
            self.store.set_version_state(row["app"], row["version"], "failed", STARTING_AT_DEATH)
            self.store.event(row["app"], f"v{row['version']} failed: {STARTING_AT_DEATH}")
        for app in self.store.apps():
            if self.store.active_version(app) is not None:
                self.state.pool(app)
        for info in self.containers.list(self.state.agent_id):
            pool = self.pools.get(info.app)
            if pool and info.running and info.version == pool.version and self._adopt(pool, info):
                self.store.event(info.app, f"agent restarted: adopted container {info.id[:12]} of v{info.version}")
                continue
            self.containers.stop(info.id)
            _logs.save(self.state.data_dir, info.app, info.id, self.containers.logs(info.id))
            self.containers.remove(info.id)
        for app in self.store.apps():  # what was kept for the next start of an app that no longer runs
            if app not in self.pools:
                self.containers.forget(app)
        if lost:
            self.store.event("-", f"agent restarted: {lost} task(s) were cut off")
        self.heal_gateway()

    def heal_gateway(self) -> None:
        """This host's front door: HAProxy started again when it routes apps and none runs."""
        try:
            with self.state.gateway_lock:
                started = _gateway.heal(self.state.data_dir)
        except AgentError as e:
            self.store.event("-", f"gateway: HAProxy is not running and did not start: {e.message}")
            return
        if started:
            self.store.event("-", "gateway: HAProxy was not running; started it again")

    def _adopt(self, pool: Pool, info: Any) -> bool:
        container_id = info.id
        pinned = tuple(str(d) for d in (self.state.spec(info.app, info.version).get("gpu_devices") or ()))
        live = Live(container_id, pool.version or 0, ContainerTimeline(0.0, 0.0, ready_seen=0.0),
                    gpus=info.spare_gpus or pinned, spare=bool(info.spare_gpus))  # the GPUs it holds
        try:
            live.key = pool.make_args(live.version).get("runtime_key") if live.version else None
            live.address = self.containers.address(container_id)
            status, health = live.request("GET", "/health", None, timeout=2)
        except Exception:  # noqa: BLE001 - not healthy: not adopted
            return False
        if status != 200 or health.get("state") != "READY":
            return False
        live.state, live.last_used = "ready", time.monotonic()
        with pool.cond:
            pool.live.append(live)
        return True

    def reap_forever(self) -> None:
        checked = time.monotonic()
        while not self.state.stopping.wait(REAP_EVERY_S):
            self.reap(time.monotonic())
            if time.monotonic() - checked >= GATEWAY_EVERY_S:
                checked = time.monotonic()
                self.heal_gateway()

    def reap(self, now: float) -> None:
        for app, pool in list(self.pools.items()):
            for live in pool.idle_out(now):
                if live.version == pool.version:
                    self.store.event(app, f"scaled to zero after {now - live.last_used:.0f} s idle")
                else:
                    self.store.event(app, f"retired container {live.id[:12]} of v{live.version}")
                self.state.retire(app, live)
            pool.keep_min()  # min_containers: those that died (or were never started) start again

    def stop(self, app: str) -> dict[str, Any]:
        pool = self.pools.get(app)
        if pool is None or pool.version is None:
            if not self.store.has_app(app):
                raise AgentError(f"{app} was never deployed here")
            return {"app": app, "stopped_version": None, "already_stopped": True}  # stopping it again: done
        version = pool.version
        deadline = time.monotonic() + STOP_DRAIN_S
        with pool.cond:  # running tasks finish first (bounded)
            while any(c.busy for c in pool.live) and time.monotonic() < deadline:
                pool.cond.wait(0.2)
        for live in pool.drain():
            self.state.retire(app, live)
        self.store.set_active(app, None)
        self.store.set_version_state(app, version, "stopped")
        self.snapshots.delete(app, version)
        self.containers.forget(app)
        self.store.event(app, f"stopped v{version} (volumes kept)")
        return {"app": app, "stopped_version": version}
