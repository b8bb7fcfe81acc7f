"""The containers of one app on this host: start cold (or restored), serve warm, scale out with the
queue, scale in to `min_containers` (zero by default).

Each container runs `workers` tasks at once. When the tasks waiting and running exceed
`containers x tasks_per_container`, more containers start at once (up to `max_containers` on this host,
each only where the host has room: `room`); a waiting task takes whichever container frees a slot first,
not the one started for it. Containers start in threads of their own; every waiting task is told when one
is READY or FAILED. A container idle for keep_warm_s stops, unless that would leave fewer than
`min_containers`, which housekeeping starts again when they die (`keep_min`). A container that died or
stopped answering leaves the pool at once (`lose`); the queue starts another if it still needs one.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from typing import Any, Callable

from beamctl.agent.scale import Scale
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
FAILED_PAUSE_S = 5.0  # after a failed start, no scale-out for this long while other containers serve


class Pool:
    def __init__(self, app: str, containers: Containers, make_args: Callable[[int], dict[str, Any]],
                 workers: int, keep_warm_s: int, on_event: Callable[[str], None],
                 on_retire: Callable[[Live], None], snapshots: Any = None, scale: Scale = Scale(),
                 room: Callable[[int, int], str | None] = lambda version, more: None,
                 placing: Callable[[int], Any] = lambda version: contextlib.nullcontext()) -> None:
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
        self.scale = scale
        self.room = room  # (version, containers being created) -> why another does not fit here, or None
        self.placing = placing  # version -> a lock held from its create args until it is in the pool (GPUs)
        self.creating = 0  # containers being created (outside the lock), counted as the pool's already
        self.waiting = 0  # tasks in acquire() with no slot yet
        self.blocked: str | None = None  # why the queue could not start the container it wanted

    # starting ---------------------------------------------------------------------------------
    def start(self, version: int) -> Live:
        """Create and start one container of `version`; returns at once, READY comes later."""
        t0 = time.monotonic()
        live = Live("", version, ContainerTimeline(t0, t0))
        with self.placing(version):  # GPUs: what the args give is taken once the container is in the pool
            self._create_into(live)
            live.timeline = ContainerTimeline(t0, time.monotonic())
            with self.cond:
                self.live.append(live)
        threading.Thread(target=self._boot, args=(live,), daemon=True, name=f"boot-{self.app}").start()
        return live

    def _create_into(self, live: Live) -> None:
        """A new container of live's version (the caller holds `placing`): its id, args' hash, key, GPUs."""
        args = self.make_args(live.version)
        live.spare = bool(args.pop("spare", False))  # on GPUs not its version's: no snapshot (state.py)
        self.containers.has_image(args["image"])  # the image is on this host (image load, measured)
        live.args_hash, live.key = args_hash(args), args.get("runtime_key")
        live.restore_from = None  # a spare's GPUs are not the snapshot's
        if self.snapshots is not None and not live.spare:
            live.restore_from = self.snapshots.restorable(live.version, live.args_hash)
        if live.restore_from is not None and args.get("gpus"):
            args["restore_target"] = True  # a GPU restore's container runs without the --gpus hook (mountpoints.py)
        live.id = self.containers.create(args)
        gpus = args.get("gpus")
        live.gpus = tuple(str(g) for g in gpus) if isinstance(gpus, list) else ()

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
            if self.snapshots is not None and not live.spare and self.snapshots.wants_capture(live.version):
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
        if self.snapshots is None or live.restore_from is None:  # none to restore (asked at its create)
            return False
        folder, timeout_s = live.restore_from
        began, live.restoring = time.monotonic(), True
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
            live.restoring, live.gpus = False, ()  # its GPUs go to the container that replaces it
            with self.placing(live.version):
                self._create_into(live)
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
    def acquire(self, timeout: float, waited_for: list[str] | None = None) -> Live:
        """A READY container of the current version with a free worker slot: the least busy one, else the
        first that frees one (the queue starts containers meanwhile: `_scale_out`). `waited_for` hears why
        the queue could not start the container it wanted while this task waited (no room, no GPU)."""
        since = time.monotonic()
        deadline = since + timeout
        with self.cond:
            self.waiting += 1
            try:
                while True:
                    if self.version is None:
                        raise StartFailed(f"{self.app} is not deployed here (or was stopped)", [])
                    current = self._current()
                    free = [c for c in current if c.state == "ready" and c.busy < self.workers]
                    if free:
                        chosen = min(free, key=lambda c: c.busy)
                        chosen.busy += 1
                        return chosen
                    if (self._failure is not None and self._failure_at >= since and not current
                            and not self.creating and self._failure_version == self.version):
                        raise self._failure  # the start this task waited for failed, and no other is coming
                    self._scale_out(current)
                    if self.blocked and waited_for is not None and self.blocked not in waited_for:
                        waited_for.append(self.blocked)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        why = f"; {self.blocked}" if self.blocked else ""
                        raise StartFailed(f"no container of {self.app} became free within {timeout:.0f} s{why}", [])
                    self.cond.wait(min(left, 1.0))
            finally:
                self.waiting -= 1

    def _current(self) -> list[Live]:
        return [c for c in self.live if c.version == self.version and c.state in ("ready", "starting")]

    def _scale_out(self, current: list[Live]) -> None:
        """Start the containers the queue wants and the host has room for (under the lock)."""
        version = self.version
        if version is None:
            return
        have = len(current) + self.creating
        demand = self.waiting + sum(c.busy for c in current)
        want = self.scale.wanted(demand, self.workers) - have
        if want <= 0:
            return
        if (self._failure is not None and have and self._failure_version == version
                and time.monotonic() - self._failure_at < FAILED_PAUSE_S):
            return  # a start just failed: the containers there serve on, no crash loop of new ones
        for _ in range(want):
            have = len(current) + self.creating
            why = self.room(version, self.creating) if have else None  # the first always starts, as ever
            if why:
                if why != self.blocked:
                    self.on_event(f"cannot start container {have + 1} of v{version}: {why}")
                self.blocked = why
                return
            self.blocked = None
            self.on_event(f"cold start of v{version}" if not have else
                          f"scaling out: container {have + 1} of v{version} for {demand} tasks "
                          f"(at most {self.scale.max_containers} here)")
            self.creating += 1
            threading.Thread(target=self._spawn, args=(version,), daemon=True, name=f"scale-{self.app}").start()

    def _spawn(self, version: int) -> None:
        try:
            self.start(version)
        except Exception as e:  # noqa: BLE001 - the engine refused the create: waiting tasks are told
            failure = StartFailed(f"could not create a container: {type(e).__name__}: {e}", [])
            self.on_event(f"container of v{version} FAILED: {failure.reason}")
            with self.cond:
                self._failure, self._failure_at, self._failure_version = failure, time.monotonic(), version
        finally:
            with self.cond:
                self.creating -= 1
                self.cond.notify_all()

    def keep_min(self) -> None:
        """Start what `min_containers` wants and is missing (housekeeping: a kept-warm one died)."""
        with self.cond:
            if self.version is not None and self.version not in self.pending:
                self._scale_out(self._current())

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
            keep = self.scale.min_containers - sum(c not in gone for c in self._current())
            if keep > 0:  # min_containers stay: the most recently used of the idle ones
                idle = sorted((c for c in gone if c.version == self.version), key=lambda c: c.last_used)
                for c in idle[-keep:]:
                    gone.remove(c)
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
