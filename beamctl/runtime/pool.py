"""A fixed set of worker threads that run handlers, at most `size` at a time, each with a time limit.

The threads are started once; a task is handed to an idle one (a semaphore slot guarantees there
is one), and the request thread waits for it with the task's timeout. Python cannot stop a thread,
so a handler that runs past its timeout keeps its worker and its slot until it returns: it counts
as busy (and stuck) until then, and the container serves with one worker fewer meanwhile.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional


class Job:
    """One handler run. `start`/`end` are monotonic seconds around the call; `error` is what it raised."""

    __slots__ = ("fn", "label", "done", "start", "end", "result", "error", "abandoned")

    def __init__(self, fn: Callable[[], Any], label: str) -> None:
        self.fn = fn
        self.label = label  # the task id, for the log
        self.done = threading.Event()
        self.start: Optional[float] = None
        self.end: Optional[float] = None
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.abandoned = False  # its caller stopped waiting (timeout)


class Pool:
    def __init__(self, size: int, on_late: Callable[[Job], None]) -> None:
        self.size = size
        self.on_late = on_late  # called (in the worker) when an abandoned job finally returns
        self.busy = 0  # handlers running now, stuck ones included
        self.stuck = 0  # handlers still running after their caller gave up on them
        self._slots = threading.Semaphore(size)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        for i in range(size):
            threading.Thread(target=self._work, name=f"beamctl-worker-{i}", daemon=True).start()

    def run(self, fn: Callable[[], Any], label: str, timeout_s: float) -> Job:
        """Run `fn` on a worker, waiting for a free one first; returns the Job, done or abandoned."""
        self._slots.acquire()
        job = Job(fn, label)
        self._jobs.put(job)
        if job.done.wait(timeout_s):
            return job
        with self._lock:
            if not job.done.is_set():  # it may have finished between the wait and the lock
                job.abandoned = True
                self.stuck += 1
        return job

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            with self._lock:
                self.busy += 1
            job.start = time.monotonic()
            try:
                job.result = job.fn()
            except BaseException as e:  # noqa: BLE001 - SystemExit from a handler must not end the worker
                job.error = e
            job.end = time.monotonic()
            with self._lock:
                self.busy -= 1
                if job.abandoned:
                    self.stuck -= 1
                job.done.set()
            self._slots.release()
            if job.abandoned:
                self.on_late(job)
            job = None  # drop the result before waiting for the next task
