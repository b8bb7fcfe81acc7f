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
CHECKPOINT = "CHECKPOINT"  # on_start done, paused until the agent has snapshotted us and releases us

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
        self.clock_offset = 0.0  # CLOCK_MONOTONIC here minus the host's: non-zero once restored from a snapshot
        self.restored = False
        self._released = threading.Event()
        self.ready_event = threading.Event()  # set with READY: a release waits on it to answer
        self.key: Optional[str] = None  # the agent's (settings.load_secrets): every request must carry it

    # checkpoint handshake: the main thread pauses, the agent's POST /checkpoint/release ends the pause
    def pause_for_checkpoint(self, wait_s: float) -> bool:
        """Wait (CHECKPOINT) for the agent to snapshot this process and release it; False: no release came."""
        self.state = CHECKPOINT
        released = self._released.wait(wait_s)
        self.clock_offset = read_clock_offset()  # a restored process wakes up here, in a new time namespace
        return released

    def release(self, restored: bool) -> None:
        self.restored = restored
        if restored:
            reseed()
        self._released.set()

    def host_clock(self, t: float) -> float:
        """One of our monotonic timestamps on the host's clock (the agent's)."""
        return t - self.clock_offset

    def mark(self, point: str) -> float:
        now = self.timings[point] = time.monotonic()
        return now

    def become_ready(self, pool: Pool) -> None:
        self.pool = pool
        self.mark("ready")
        self.state = READY  # last: a request that sees READY finds app and pool set
        self.ready_event.set()

    def count_served(self) -> None:
        with self._count_lock:
            self.served += 1

    def health(self) -> Dict[str, Any]:
        pool = self.pool
        return {"state": self.state, "pid": self.pid, "workers": self.settings.workers,
                "busy": pool.busy if pool else 0, "stuck": pool.stuck if pool else 0,
                "served": self.served, "timings": self.timings, "restored": self.restored,
                "clock_offset": self.clock_offset}


def reseed() -> None:
    """Every container restored from one snapshot would draw the same "random" numbers: the global
    generators of `random` and numpy (when the app imported them) get fresh seeds from the OS."""
    import sys

    if "random" in sys.modules:
        sys.modules["random"].seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:  # noqa: BLE001 - an odd numpy: no reseed rather than no start
            pass


def read_clock_offset(path: str = "/proc/self/timens_offsets") -> float:
    """Our time namespace's CLOCK_MONOTONIC offset in seconds (CRIU gives a restored process one)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] in ("monotonic", "1"):
                    return int(parts[1]) + int(parts[2]) / 1e9
    except OSError:
        pass  # a kernel without time namespaces
    return 0.0
