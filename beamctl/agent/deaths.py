"""Containers that die: the engine's die events take a dead container out of its pool at once; a task whose
request failed asks the engine, then the container's /health, whether the container is gone."""

from __future__ import annotations

import threading
import time

from beamctl.agent.pool import Live, Pool
from beamctl.agent.state import AgentState

DEAF_PROBE_S = 1.0  # after a failed task request: a container that does not answer /health this fast is lost
DEATH_SETTLE_S = 1.0  # ...and the engine gets this long to report its exit (OOM, signal) before "deaf"


class Deaths:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.store, self.containers, self.pools = state.store, state.containers, state.pools

    def watch_forever(self) -> None:
        """The engine's die events: a dead container leaves its pool at once (the next task starts a new
        one). The stream is opened again if it ends (an engine restart)."""
        while not self.state.stopping.is_set():
            try:
                for container_id, why in self.containers.deaths(self.state.agent_id):
                    self.container_died(container_id, why)
            except Exception as e:  # noqa: BLE001 - the engine went away: failed requests still say it
                self.store.event("-", f"engine events stopped ({type(e).__name__}: {e}); reconnecting")
            self.state.stopping.wait(1.0)

    def container_died(self, container_id: str, why: str) -> bool:
        for app, pool in list(self.pools.items()):
            live = pool.find(container_id)
            if live is not None:
                return self._lose(app, pool, live, why)
        return False

    def _lose(self, app: str, pool: Pool, live: Live, why: str) -> bool:
        if not pool.lose(live, why):
            return False
        live.abort()
        self.store.event(app, f"container {live.id[:12]} of v{live.version} died: {why}")
        threading.Thread(target=self.state.retire, args=(app, live), daemon=True, name=f"retire-{app}").start()
        return True

    def lost_contact(self, app: str, pool: Pool, live: Live | None, error: Exception) -> str:
        """A task's request to its container failed: why, as the engine or a health probe tells it. A
        container that died or does not answer its health check leaves the pool (the next task starts a
        new one); one that answers stays (only this task was lost)."""
        said = f"{type(error).__name__}: {error}"
        if live is None:
            return f"lost contact with the container: {said}"
        why = live.death or self._dead_or_deaf(live)
        if why is None:
            return f"lost contact with the container (it still answers): {said}"
        self._lose(app, pool, live, why)
        return f"container {live.id[:12]} of v{live.version} died during the task: {why}"

    def _dead_or_deaf(self, live: Live) -> str | None:
        try:
            why = self.containers.death(live.id)
            if why is not None:
                return why
            status, _ = live.request("GET", "/health", None, timeout=DEAF_PROBE_S)
            if status == 200:
                return None
        except Exception:  # noqa: BLE001 - no answer is the answer
            pass
        deadline = time.monotonic() + DEATH_SETTLE_S  # the engine may not have seen the exit yet
        while time.monotonic() < deadline:
            try:
                why = self.containers.death(live.id)
            except Exception as e:  # noqa: BLE001 - the engine does not answer either
                return f"it stopped answering, and so did the Docker Engine ({type(e).__name__}: {e})"
            if why is not None:
                return why
            time.sleep(0.05)
        return "it stopped answering (its process runs, its network does not answer)"
