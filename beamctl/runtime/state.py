"""The one Runtime object `serve` builds: start-up state, timings, the app and its workers."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:  # not imported at run time: the HTTP server starts before the app's modules load
    from .app import App
    from .pool import Pool
    from .settings import Settings

STARTING, READY, FAILED = "STARTING", "READY", "FAILED"  # FAILED lasts only until the process exits

# Monotonic seconds (CLOCK_MONOTONIC, shared with the host): the agent lines them up with its own.
START_POINTS = ("process_start", "imports_done", "on_start_start", "on_start_end", "ready")


class Runtime:
    def __init__(self, settings: Settings, process_start: float) -> None:
        self.settings = settings
        self.state = STARTING
        self.timings: Dict[str, Optional[float]] = dict.fromkeys(START_POINTS)
        self.timings["process_start"] = process_start
        self.app: Optional[App] = None
        self.pool: Optional[Pool] = None
        self.served = 0  # tasks answered with a status, succeeded or failed
        self._count_lock = threading.Lock()
        self.pid = os.getpid()

    def mark(self, point: str) -> float:
        now = self.timings[point] = time.monotonic()
        return now

    def become_ready(self, pool: Pool) -> None:
        self.pool = pool
        self.mark("ready")
        self.state = READY  # last: a request that sees READY finds app and pool set

    def count_served(self) -> None:
        with self._count_lock:
            self.served += 1

    def health(self) -> Dict[str, Any]:
        pool = self.pool
        return {"state": self.state, "pid": self.pid, "workers": self.settings.workers,
                "busy": pool.busy if pool else 0, "stuck": pool.stuck if pool else 0,
                "served": self.served, "timings": self.timings}
