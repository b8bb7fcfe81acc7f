"""The containers of one app on this host: start cold, serve warm, scale to zero.

One container per app at a time (it runs `workers` tasks at once); a task that finds no free
slot waits for one. A container is started by the first task (or deploy) that needs it, in
a thread of its own, and every waiting task is told when it is READY or FAILED; while one is
being started, no other task starts another (a burst from zero waits for the one).
A container that died or stopped answering leaves the pool at once (`lose`: the engine's die
event or a failed request says so), so the next task starts a new one.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any, Callable

from beamctl.agent.snapshot_key import args_hash
from beamctl.agent.containers import Containers
from beamctl.agent.gpu_snapshots import GpuStateLost
from beamctl.agent.live import Live, StartFailed
from beamctl.agent.profile import ContainerTimeline

HEALTH_POLL_S = 0.005  # READY is seen within 5 ms at first: the gap shows up as "other" in profiles
HEALTH_POLL_MAX_S = 0.025  # ...backing off to 25 ms, so polling does not eat a core during long on_starts
EXIT_POLL_S = 0.25  # how often a starting container is checked for having died (an engine inspect)
LOG_TAIL_LINES = 20  # lines of a failed container's output shown to the user
RELEASE_TIMEOUT_S = 30  # POST /checkpoint/release: the runtime answers once READY
PAUSED = "CHECKPOINT"  # the runtime's state after on_start when checkpoint_enabled: waiting for release


class Pool:
    def __init__(self, app: str, containers: Containers, make_args: Callable[[int], dict[str, Any]],
                 workers: int, keep_warm_s: int, on_event: Callable[[str], None],
                 on_retire: Callable[[Live], None], snapshots: Any = None) -> None:
        self.app = app
        self.containers = containers
        self.make_args = make_args  # version -> create arguments
        self.workers, self.keep_warm_s = workers, keep_warm_s
        self.version: int | None = None
        self.live: list[Live] = []
        self.cond = threading.Condition()
        self.on_event, self.on_retire = on_event, on_retire
        self.snapshots = snapshots  # snapshots.AppSnapshots (issue 6), or None: never capture or restore
        self._failure: StartFailed | None = None
        self._failure_at = 0.0
        self._failure_version: int | None = None
        self.pending: set[int] = set()  # versions a deploy is starting: never idled out meanwhile
        self._creating = False  # a task is creating a container (outside the lock): others wait for it

    # starting ---------------------------------------------------------------------------------
    def start(self, version: int, reserve: bool = False) -> Live:
        """Create and start one container of `version`; returns at once, READY comes later.
        `reserve`: the caller holds one worker slot of it from now on."""
        t0 = time.monotonic()
        args = self.make_args(version)
        self.containers.has_image(args["image"])  # the image is on this host (image load, measured)
        container_id = self.containers.create(args)
        live = Live(container_id, version, ContainerTimeline(t0, time.monotonic()), busy=int(reserve),
                    args_hash=args_hash(args), key=args.get("runtime_key"))
        with self.cond:
            self.live.append(live)
        threading.Thread(target=self._boot, args=(live,), daemon=True, name=f"boot-{self.app}").start()
        return live

    def _boot(self, live: Live) -> None:
        try:
            restored = self._restore(live)
            if not restored:
                self._cold_boot(live)
            state, t = "ready", live.timeline
            how = ("restored start" if restored else "cold start") + f" {t.ready_seen - t.create_start:.2f} s"
            if not restored:
                how += f", on_start {(t.on_start_end or 0) - (t.on_start_start or 0):.2f} s"
            self.on_event(f"container {live.id[:12]} of v{live.version} READY ({how})")
        except Exception as e:  # noqa: BLE001 - any failure to start is this container's failure
            failure = e if isinstance(e, StartFailed) else StartFailed(f"could not start: {e}", [])
            live.failure, state = failure, "failed"
            self.on_event(f"container {live.id[:12]} of v{live.version} FAILED: {failure.reason}")
        with self.cond:
            live.state = state
            live.last_used = time.monotonic()
            if live.failure is not None:
                self.live.remove(live)
                self._failure, self._failure_at = live.failure, time.monotonic()
                self._failure_version = live.version
            self.cond.notify_all()
        if state == "failed":
            self.on_retire(live)

    def _cold_boot(self, live: Live) -> None:
        """Start the created container: the app's imports and on_start run (then a capture, if wanted)."""
        live.address = self.containers.start(live.id)
        health = self._wait_ready(live)
        capture: tuple[float, float] | tuple[None, None] = (None, None)
        if health.get("state") == PAUSED:
            capture = self._capture_and_release(live)
        timings, t = health.get("timings", {}), live.timeline
        live.timeline = ContainerTimeline(t.create_start, t.create_end, timings.get("process_start"),
                                          timings.get("imports_done"), timings.get("on_start_start"),
                                          timings.get("on_start_end"), time.monotonic(), *capture)

    def _capture_and_release(self, live: Live) -> tuple[float, float] | tuple[None, None]:
        """The runtime is paused after on_start: snapshot it if this version wants one, and ALWAYS release
        it (a failed optimisation must never wedge a healthy container). (capture start, end) or Nones."""
        began = ended = None
        broken: GpuStateLost | None = None
        try:
            if self.snapshots is not None and self.snapshots.wants_capture(live.version):
                live.close()  # CRIU refuses a process with an open TCP connection
                began = time.monotonic()
                self.snapshots.capture(live.version, live.id, live.args_hash)
                ended = time.monotonic()
        except GpuStateLost as e:  # not a failed optimisation: this container cannot use its GPU any more
            broken = e
        except Exception as e:  # noqa: BLE001 - the capture's own failures are recorded by it; this is a bug
            self.on_event(f"checkpoint of v{live.version} went wrong: {type(e).__name__}: {e}")
        finally:
            if broken is None:
                self._release(live, restored=False)
        if broken is not None:
            raise StartFailed(f"{broken.reason}; the container is replaced", [])
        return (began, ended) if began is not None and ended is not None else (None, None)

    def _release(self, live: Live, restored: bool) -> dict[str, Any]:
        last: Exception | None = None
        deadline = time.monotonic() + RELEASE_TIMEOUT_S
        while time.monotonic() < deadline:  # a just-restored container may take a moment to accept
            try:
                status, health = live.request("POST", "/checkpoint/release", {"restored": restored},
                                              timeout=max(deadline - time.monotonic(), 0.1))
            except (OSError, http.client.HTTPException, ValueError) as e:
                last = e
                time.sleep(0.02)
                continue
            if status == 200 and health.get("state") == "READY":
                return health
            raise StartFailed(f"the runtime did not resume after its checkpoint: HTTP {status} {health}", [])
        raise StartFailed(f"the runtime did not answer its checkpoint release: {last}", [])

    def _restore(self, live: Live) -> bool:
        """Start the created container from its version's snapshot, if there is a usable one. On a failed
        restore the container is replaced by a fresh one (a cold boot follows) and False is returned."""
        if self.snapshots is None:
            return False
        found = self.snapshots.restorable(live.version, live.args_hash)
        if found is None:
            return False
        folder, timeout_s = found
        began = time.monotonic()
        try:
            self.snapshots.verify(live.version)  # digests (issue 13): a damaged file is never restored
            self.containers.restore(live.id, folder, timeout_s)
            live.address = self.containers.address(live.id)
            self._release(live, restored=True)
        except Exception as e:  # noqa: BLE001 - RestoreFailed, a dead runtime: this start boots cold instead
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            self.snapshots.restore_failed(live.version, reason)
            live.close()
            self.containers.stop(live.id)
            self.containers.remove(live.id)
            args = self.make_args(live.version)
            live.id, live.args_hash = self.containers.create(args), args_hash(args)
            return False
        ended = time.monotonic()
        t = live.timeline
        live.timeline = ContainerTimeline(t.create_start, t.create_end, ready_seen=ended,
                                          restore_start=began, restore_end=ended)
        self.snapshots.restored(live.version, live.id, ended - began)
        return True

    def _wait_ready(self, live: Live) -> dict[str, Any]:
        next_exit_check = 0.0
        pause = HEALTH_POLL_S
        while True:
            now = time.monotonic()
            if now >= next_exit_check:
                code = self.containers.exit_code(live.id)
                if code is not None:
                    tail = [text for _, text in self.containers.logs(live.id, tail=LOG_TAIL_LINES)]
                    line = next((l for l in tail if l.startswith("beamctl-runtime:") and "failed" in l), None)
                    raise StartFailed(line.removeprefix("beamctl-runtime: ") if line else
                                      f"the container exited with code {code} before it was READY", tail)
                next_exit_check = now + EXIT_POLL_S
            try:
                status, health = live.request("GET", "/health", None, timeout=2)
                if status == 200 and health.get("state") in ("READY", PAUSED):
                    return health
            except (OSError, http.client.HTTPException, ValueError):
                pass  # not listening yet
            time.sleep(pause)
            pause = min(pause * 1.2, HEALTH_POLL_MAX_S)

    # serving ----------------------------------------------------------------------------------
    def acquire(self, timeout: float) -> Live:
        """A READY container of the current version with a free worker slot (starting one if needed).

        A task that starts a container holds a slot in it from the start (busy=1), so no other
        task and no scale-to-zero can take the container away before that task runs.
        """
        since = time.monotonic()
        deadline = since + timeout
        mine: Live | None = None
        with self.cond:
            while True:
                if mine is not None:
                    if mine.state == "ready":
                        return mine
                    if mine.failure is not None:
                        raise mine.failure
                else:
                    if self.version is None:
                        raise StartFailed(f"{self.app} is not deployed here (or was stopped)", [])
                    current = [c for c in self.live
                               if c.version == self.version and c.state in ("ready", "starting")]
                    free = next((c for c in current if c.state == "ready" and c.busy < self.workers), None)
                    if free:
                        free.busy += 1
                        return free
                    if (self._failure is not None and self._failure_at >= since
                            and self._failure_version == self.version):
                        raise self._failure  # the start this task waited for failed
                    if not current and not self._creating:
                        self.on_event(f"cold start of v{self.version}")
                        version, self._creating = self.version, True
                        self.cond.release()
                        try:
                            mine = self.start(version, reserve=True)
                        except Exception as e:  # noqa: BLE001 - the engine refused the create
                            raise StartFailed(f"could not create a container: {type(e).__name__}: {e}", []) \
                                from None
                        finally:
                            self.cond.acquire()
                            self._creating = False
                            self.cond.notify_all()
                        continue
                left = deadline - time.monotonic()
                if left <= 0:
                    if mine is not None:
                        mine.busy -= 1
                    raise StartFailed(f"no container of {self.app} became free within {timeout:.0f} s", [])
                self.cond.wait(min(left, 1.0))

    def release(self, live: Live) -> None:
        with self.cond:
            live.busy -= 1
            live.last_used = time.monotonic()
            self.cond.notify_all()

    def find(self, container_id: str) -> Live | None:
        with self.cond:
            return next((c for c in self.live if c.id == container_id), None)

    def lose(self, live: Live, why: str) -> bool:
        """The container died or stopped answering: it leaves the pool now (tasks running in it fail on
        their own). True the first time only; the caller retires it."""
        with self.cond:
            if live.death is not None or live not in self.live or live.state != "ready":
                return False
            live.state, live.death = "dead", why
            self.live.remove(live)
            self.cond.notify_all()
        return True

    # scaling to zero and retiring -------------------------------------------------------------
    def idle_out(self, now: float) -> list[Live]:
        """Containers idle past keep_warm (and those of old versions with no work) leave the pool."""
        with self.cond:
            gone = [c for c in self.live if c.state == "ready" and c.busy == 0 and c.version not in self.pending
                    and (c.version != self.version or now - c.last_used >= self.keep_warm_s)]
            for c in gone:
                c.state = "stopping"
                self.live.remove(c)
        return gone

    def drain(self) -> list[Live]:
        """Every container leaves the pool (stop); the caller has let running tasks finish."""
        with self.cond:
            gone, self.live = self.live, []
            self.version = None
            self.cond.notify_all()
        return gone
