"""The agent's operations: deploy, rollback, call, tasks, status, logs, stop. Transport-free: the control
socket and the HTTP endpoint both call these, and tests can too."""

from __future__ import annotations

import os
import secrets as _secrets
import threading
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

from beamctl.agent import gpus as _gpus
from beamctl.agent import locks as _locks
from beamctl.agent import logs as _logs
from beamctl.agent import secret_files
from beamctl.agent.checkpoint import args_hash
from beamctl.agent.control import TASK_ID_RE, new_task_id
from beamctl.agent.containers import Containers, create_args, volume_dir
from beamctl.agent.paths import agent_id
from beamctl.agent.pool import Live, Pool, StartFailed
from beamctl.agent.profile import ContainerTimeline, phases
from beamctl.agent.resident import Resident
from beamctl.agent.snapshots import AppSnapshots, Snapshots
from beamctl.agent.spec import AppSpec
from beamctl.agent.store import Store
from beamctl.agent.versions import rollback_target, unchanged

HEALTH_TIMEOUT_S = 300  # on_start of a big model (weights from disk, CUDA init) can take minutes
REAP_EVERY_S = 0.5  # how often idle containers are looked for
HTTP_SLACK_S = 10  # beyond the task timeout, for the runtime to answer
STOP_DRAIN_S = 30  # `stop` waits this long for running tasks before stopping their containers
STARTING_AT_DEATH = "the agent stopped during its start"
DEAF_PROBE_S = 1.0  # after a failed task request: a container that does not answer /health this fast is lost
DEATH_SETTLE_S = 1.0  # ...and the engine gets this long to report its exit (OOM, signal) before "deaf"


class AgentError(Exception):
    def __init__(self, message: str, hint: str | None = None, **data: Any) -> None:
        super().__init__(message)
        self.message, self.hint, self.data = message, hint, data  # data["kind"]: "input" for bad inputs


class Agent:
    def __init__(self, data_dir: Path, containers: Containers, gpus: list[_gpus.Gpu] | None = None,
                 snapshot_ram: int = 0) -> None:
        self.data_dir = data_dir
        for sub in ("volumes", "logs"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        (data_dir / "secrets").mkdir(mode=0o700, exist_ok=True)
        self.store = Store(data_dir / "agent.db")
        self.containers = containers
        self.gpus = _gpus.inventory() if gpus is None else gpus
        self.snapshots = Snapshots(data_dir, self.store, containers, self.store.event, self.gpus,
                                   Resident(snapshot_ram, self.store.event))
        self.agent_id = agent_id(data_dir)
        self.pools: dict[str, Pool] = {}
        self._deploying: dict[str, tuple[threading.Lock, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._gpu_lock = threading.Lock()
        self._stop = threading.Event()
        self.endpoint = ""  # set by the HTTP server: http://host:port

    # life ---------------------------------------------------------------------------------------
    def about(self) -> dict[str, Any]:
        from beamctl import __version__

        return {"version": __version__, "pid": os.getpid(), "endpoint": self.endpoint,
                "gpus": [{"name": g.name, "canonical": g.canonical, "memory_mib": g.memory_mib,
                          "driver": g.driver, "index": g.index} for g in self.gpus]}

    def check_placement(self, gpu: list[str], app: str | None = None) -> dict[str, Any]:
        """Refuse early (before a build) what deploy would refuse: no free GPU of the kinds asked for here
        (`app`'s own GPUs count as free: its next version takes them over); else which it would get."""
        choice, devices = self._assign(tuple(gpu), app)
        return {"gpu": choice, "devices": list(devices)}

    def _taken(self, app: str | None) -> dict[int, str]:
        return _gpus.taken(self.store.versions_in(_gpus.HOLDING), app)

    def _assign(self, gpu: tuple[str, ...], app: str | None) -> tuple[str, tuple[int, ...]]:
        got = _gpus.assign(gpu, self.gpus, self._taken(app))
        if isinstance(got, str):
            raise AgentError(got, hint="deploy to a host with a free GPU of that kind, or change gpu in beam.yaml")
        return got

    def recover(self) -> None:
        """After a (re)start: cut-off tasks are marked lost; healthy containers are adopted, not killed."""
        lost = self.store.mark_lost()
        for row in self.store.versions_in(("starting",)):  # their start died with the agent: GPUs freed
            self.store.set_version_state(row["app"], row["version"], "failed", STARTING_AT_DEATH)
            self.store.event(row["app"], f"v{row['version']} failed: {STARTING_AT_DEATH}")
        for app in self.store.apps():
            if self.store.active_version(app) is not None:
                self._pool(app)
        for info in self.containers.list(self.agent_id):
            pool = self.pools.get(info.app)
            if pool and info.running and info.version == pool.version and self._adopt(pool, info.id):
                self.store.event(info.app, f"agent restarted: adopted container {info.id[:12]} of v{info.version}")
                continue
            self.containers.stop(info.id)
            _logs.save(self.data_dir, info.app, info.id, self.containers.logs(info.id))
            self.containers.remove(info.id)
        for app in self.store.apps():  # what was kept for the next start of an app that no longer runs
            if app not in self.pools:
                self.containers.forget(app)
        if lost:
            self.store.event("-", f"agent restarted: {lost} task(s) were cut off")

    def _adopt(self, pool: Pool, container_id: str) -> bool:
        live = Live(container_id, pool.version or 0, ContainerTimeline(0.0, 0.0, ready_seen=0.0))
        try:
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
        while not self._stop.wait(REAP_EVERY_S):
            self.reap(time.monotonic())

    def reap(self, now: float) -> None:
        for app, pool in list(self.pools.items()):
            for live in pool.idle_out(now):
                if live.version == pool.version:
                    self.store.event(app, f"scaled to zero after {now - live.last_used:.0f} s idle")
                else:
                    self.store.event(app, f"retired container {live.id[:12]} of v{live.version}")
                self._retire(app, live)

    def shutdown(self) -> None:
        self._stop.set()

    # containers that die ------------------------------------------------------------------------
    def watch_deaths_forever(self) -> None:
        """The engine's die events: a dead container leaves its pool at once (the next task starts a new
        one). The stream is opened again if it ends (an engine restart)."""
        while not self._stop.is_set():
            try:
                for container_id, why in self.containers.deaths(self.agent_id):
                    self.container_died(container_id, why)
            except Exception as e:  # noqa: BLE001 - the engine went away: failed requests still say it
                self.store.event("-", f"engine events stopped ({type(e).__name__}: {e}); reconnecting")
            self._stop.wait(1.0)

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
        threading.Thread(target=self._retire, args=(app, live), daemon=True, name=f"retire-{app}").start()
        return True

    def _lost_contact(self, app: str, pool: Pool, live: Live | None, error: Exception) -> str:
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
            why = self.containers.death(live.id)
            if why is not None:
                return why
            time.sleep(0.05)
        return "it stopped answering (its process runs, its network does not answer)"

    # deploy ---------------------------------------------------------------------------------------
    def deploy(self, spec_json: dict[str, Any], secret_values: dict[str, str],
               health_timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
        spec = AppSpec.from_json(spec_json)
        missing = [n for n in spec.secret_names if n not in secret_values]
        if missing:
            raise AgentError(f"no value for secret(s) {', '.join(missing)}")
        self._assign(spec.gpu, spec.app)  # refused before anything is written
        with self._app_lock(spec.app, "deploy", spec.image):
            return self._deploy(spec, secret_values, health_timeout)

    @contextmanager
    def _app_lock(self, app: str, op: str, image: str) -> Iterator[None]:
        """One deploy or rollback of an app at a time on this host; a second is refused with the holder."""
        lock, holder = self._deploying.setdefault(app, (threading.Lock(), {}))
        if not lock.acquire(blocking=False):
            raise AgentError(f"a {holder.get('op', 'deploy')} of {app} is already running here (since "
                             f"{time.strftime('%H:%M:%S', time.localtime(holder.get('since', 0)))}, "
                             f"image {holder.get('image')})", hint=f"wait for it to finish, then {op} again")
        try:
            holder.update(since=time.time(), image=image, op=op)
            yield
        finally:
            lock.release()

    def _deploy(self, spec: AppSpec, secret_values: dict[str, str], health_timeout: float) -> dict[str, Any]:
        for v in spec.volumes:  # created once, never deleted by beamctl
            volume_dir(self.data_dir, spec.app, v.name).mkdir(parents=True, exist_ok=True)
        if not self.containers.has_image(spec.image):
            raise AgentError(f"image {spec.image} is not on this host")
        with self._gpu_lock:  # two apps deploying at once never get the same GPU
            devices = self._assign(spec.gpu, spec.app)[1]
            stored = {**spec.to_json(), "gpu_count": len(devices), "gpu_devices": list(devices)}
            same = self._unchanged(spec, secret_values, stored, health_timeout)
            if same is not None:
                return same
            version = self.store.new_version(spec.app, spec.image, stored)
        secret_files.write(self._secrets_path(spec.app, version), secret_values)  # per version: a failed
        # deploy never changes what the serving version starts with
        token = self.store.ensure_app(spec.app, _secrets.token_urlsafe(32))
        self.store.event(spec.app, f"deploying v{version} ({spec.image})")
        return self._start_and_switch(spec, version, token, health_timeout)

    def _unchanged(self, spec: AppSpec, secret_values: dict[str, str], stored: dict[str, Any],
                   health_timeout: float) -> dict[str, Any] | None:
        """A deploy of exactly what is serving (image, spec, secrets): nothing to do, the version stays."""
        active = self.store.active_version(spec.app)
        row = self.store.version(spec.app, active) if active is not None else None
        if row is None or self._pool(spec.app).version != active:
            return None
        try:
            then = secret_files.read(self._secrets_path(spec.app, active))
        except (OSError, ValueError):
            return None
        if not unchanged(row, stored, then, secret_values):
            return None
        self.store.event(spec.app, f"deploy of {spec.image}: unchanged, v{active} keeps serving")
        pool = self._pool(spec.app)
        if spec.checkpoint_enabled and (self.snapshots.retry(spec.app, active) or pool.snapshots.outdated(
                active, args_hash(self._create_args(spec.app, active)))):
            self._recapture(spec.app, active, health_timeout)
        return {**self._ready(spec, active, self.store.token(spec.app)), "unchanged": True}

    def _recapture(self, app: str, version: int, health_timeout: float) -> None:
        """A redeploy after a failed capture or restore: one more container of the serving version boots,
        is captured (tries and back-off inside) and serves beside the other until idle. Bounded by the
        deploy's wait; the result is in the version's snapshot state."""
        pool = self._pool(app)
        self.store.event(app, f"redeploy: capturing v{version}'s checkpoint again")
        live = pool.start(version)
        deadline = time.monotonic() + health_timeout
        with pool.cond:
            while live.state == "starting" and time.monotonic() < deadline:
                pool.cond.wait(0.5)

    def _ready(self, spec: AppSpec, version: int, token: str | None) -> dict[str, Any]:
        return {"app": spec.app, "version": version, "image": spec.image, "status": "ready", "reason": None,
                "token": token, "endpoint": self._endpoint(spec.app), "serving": version,
                "checkpoint": self.snapshots.describe(spec.app).get(version)}

    def _endpoint(self, app: str) -> str | None:
        return f"{self.endpoint}/apps/{app}" if self.endpoint else None

    def _start_and_switch(self, spec: AppSpec, version: int, token: str, health_timeout: float,
                          previous_state: str = "retired") -> dict[str, Any]:
        """Deploy and rollback alike: start `version` (create args from its stored spec and secrets),
        wait for READY, switch the app to it; the one it replaces gets `previous_state`."""
        pool = self._pool(spec.app)
        with pool.cond:
            pool.pending.add(version)  # the reaper leaves the new container alone until the switch
        try:
            return self._await_switch(spec, pool, version, token, health_timeout, previous_state)
        finally:
            with pool.cond:
                pool.pending.discard(version)

    def _await_switch(self, spec: AppSpec, pool: Pool, version: int, token: str,
                      health_timeout: float, previous_state: str = "retired") -> dict[str, Any]:
        try:
            live = pool.start(version)
        except Exception as e:  # noqa: BLE001 - a start that cannot begin fails this start, not the agent
            return self._start_failed(spec, pool, version, f"could not start a container: {type(e).__name__}: "
                                      f"{e}", [])
        deadline = time.monotonic() + health_timeout
        with pool.cond:
            while live.state == "starting" and time.monotonic() < deadline:
                pool.cond.wait(0.5)
        if live.state != "ready":
            reason = live.failure.reason if live.failure else f"not READY within {health_timeout:.0f} s"
            tail = live.failure.log_tail if live.failure else []
            if live.failure is None:
                with pool.cond:
                    if live in pool.live:
                        pool.live.remove(live)
                self._retire(spec.app, live)
            return self._start_failed(spec, pool, version, reason, tail)
        previous = pool.version
        with pool.cond:
            pool.version, pool.workers, pool.keep_warm_s = version, spec.workers, spec.keep_warm_s
            pool.cond.notify_all()
        self.store.set_version_state(spec.app, version, "active")
        self.store.set_active(spec.app, version)
        if previous is not None and previous != version:
            self.store.set_version_state(spec.app, previous, previous_state)
            self.snapshots.delete(spec.app, previous)
        self.store.event(spec.app, f"v{version} is serving" + (
            f"; v{previous} {previous_state.replace('_', ' ')}" if previous else ""))
        return self._ready(spec, version, token)

    def _start_failed(self, spec: AppSpec, pool: Pool, version: int, reason: str, tail: list[str]
                      ) -> dict[str, Any]:
        self.store.set_version_state(spec.app, version, "failed", reason)
        self.snapshots.delete(spec.app, version)
        serving = pool.version
        if serving is None:
            self.containers.forget(spec.app)
        return {"app": spec.app, "version": version, "image": spec.image, "status": "failed",
                "reason": reason, "log_tail": tail, "serving": serving}

    # rollback -------------------------------------------------------------------------------------
    def rollback(self, app: str, version: int | None = None,
                 health_timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
        """Bring an earlier version back: `version`, else the newest retired one before the active one.
        Started like a deploy (its stored spec and secrets); the replaced one becomes "rolled_back"."""
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise AgentError(f"a version is a number, like 2, not {version!r}", kind="input")
        rows = self.store.versions(app)
        if not rows:
            raise AgentError(f"{app} was never deployed here")
        target = rollback_target(app, rows, self.store.active_version(app), version)
        if isinstance(target, str):
            raise AgentError(target, hint="`beamctl status` lists its versions")
        row = next(r for r in rows if r["version"] == target)
        with self._app_lock(app, "rollback", row["image"]):
            return self._rollback(app, row, health_timeout)

    def _rollback(self, app: str, row: dict[str, Any], health_timeout: float) -> dict[str, Any]:
        target, spec = row["version"], AppSpec.from_json(row["spec"])
        active = self.store.active_version(app)  # again, under the lock
        if active == target:
            raise AgentError(f"v{target} of {app} is already serving")
        if not self.containers.has_image(row["image"]):
            raise AgentError(f"image {row['image']} of v{target} was pruned; deploy again")
        clash = _gpus.clash(row["spec"].get("gpu_devices") or [], self._taken(app))
        if clash:
            raise AgentError(f"v{target} {clash}", hint="stop that app first, or deploy again to get free GPUs")
        if spec.gpu and not row["spec"].get("gpu_devices"):  # recorded before pinning: the host must have them
            self._assign(spec.gpu, app)
        token = self.store.ensure_app(app, _secrets.token_urlsafe(32))
        frm = f"v{active}" if active is not None else "nothing serving"
        self.store.event(app, f"rolling back from {frm} to v{target} ({row['image']})")
        result = self._start_and_switch(spec, target, token, health_timeout, previous_state="rolled_back")
        if result["status"] != "ready":  # the old version keeps its state: it may be tried again
            self.store.set_version_state(app, target, row["state"], f"rollback to it failed: {result['reason']}")
            self.store.event(app, f"rollback from {frm} to v{target} failed: {result['reason']}")
        else:
            self.store.event(app, f"rolled back from {frm} to v{target}")
        return {**result, "rolled_back_from": active}

    def _pool(self, app: str) -> Pool:
        with self._lock:
            pool = self.pools.get(app)
            if pool is None:
                active = self.store.active_version(app)
                spec = self._spec(app, active) if active else {"workers": 1, "keep_warm_s": 180}
                pool = Pool(app, self.containers, lambda v: self._create_args(app, v), spec["workers"],
                            spec["keep_warm_s"], lambda m: self.store.event(app, m),
                            lambda live: self._retire(app, live),
                            AppSnapshots(self.snapshots, app, lambda v: self._spec(app, v)))
                pool.version = active
                self.pools[app] = pool
            return pool

    def _spec(self, app: str, version: int) -> dict[str, Any]:
        row = self.store.version(app, version)
        if row is None:
            raise AgentError(f"{app} has no version {version}")
        return row["spec"]

    def _create_args(self, app: str, version: int) -> dict[str, Any]:
        spec_json = self._spec(app, version)
        secret_values = secret_files.read(self._secrets_path(app, version))
        return create_args(AppSpec.from_json(spec_json), version, self.agent_id, self.data_dir, secret_values,
                           spec_json.get("gpu_count", 0), spec_json.get("gpu_devices") or ())

    def _secrets_path(self, app: str, version: int) -> Path:
        return self.data_dir / "secrets" / f"{app}-v{version}.json"

    def _retire(self, app: str, live: Live) -> None:
        live.close()
        self.containers.stop(live.id)
        _logs.save(self.data_dir, app, live.id, self.containers.logs(live.id))
        self.containers.remove(live.id)

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
        received, received_wall = time.monotonic(), time.time()
        task_id = task_id or new_task_id()
        self.store.task_started(task_id, app, received_wall)
        spec = self._spec(app, pool.version)
        version, live, payload = pool.version, None, {}
        try:
            live = pool.acquire(timeout=HEALTH_TIMEOUT_S + spec["timeout_s"])
            version = live.version
            _, payload = live.request("POST", "/tasks", {"task_id": task_id, "inputs": inputs},
                                      timeout=spec["timeout_s"] + HTTP_SLACK_S)
        except StartFailed as e:
            payload = {"status": "failed", "error": f"the container could not start: {e.reason}"}
        except Exception as e:  # noqa: BLE001 - the runtime died or hung: the task failed, the agent goes on
            payload = {"status": "failed", "error": self._lost_contact(app, pool, live, e)}
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
                "error": payload.get("error"), "container": live.id[:12] if live else None}
        self.store.task_finished(task)
        return task

    def task(self, task_id: str) -> dict[str, Any]:
        task = self.store.task(task_id)
        if task is None:
            raise AgentError(f"no task {task_id} on this host")
        return task

    def tasks(self, app: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return self.store.tasks(app, limit)

    # status, logs, stop -------------------------------------------------------------------------------
    def status(self, app: str | None = None) -> dict[str, Any]:
        apps = [app] if app else self.store.apps()
        out = []
        for name in apps:
            token = self.store.token(name)
            if token is None:
                raise AgentError(f"{name} was never deployed here")
            pool = self.pools.get(name)
            now = time.monotonic()
            live = [{"id": c.id[:12], "version": c.version, "state": c.state, "busy": c.busy,
                     "idle_s": round(now - c.last_used, 1) if c.state == "ready" and not c.busy else 0}
                    for c in (pool.live if pool else [])]
            versions = self.store.versions(name)
            active = self.store.active_version(name)
            snaps = self.snapshots.describe(name)
            out.append({"app": name, "active_version": active,
                        "image": next((v["image"] for v in versions if v["version"] == active), None),
                        "containers": live, "token": token, "lock": _locks.read(self.data_dir, name),
                        "endpoint": self._endpoint(name),
                        "versions": [{**{k: v[k] for k in ("version", "image", "state", "reason", "created")},
                                      "checkpoint": snaps.get(v["version"])} for v in versions[-5:]]})
        return {"agent": {"data_dir": str(self.data_dir), "pid": os.getpid(), "endpoint": self.endpoint,
                          "gpus": [g.name for g in self.gpus]}, "apps": out}

    def logs(self, app: str, since: float = 0.0, tail: int = 200, task_id: str | None = None) -> list[dict[str, Any]]:
        if self.store.token(app) is None:
            raise AgentError(f"{app} was never deployed here")
        pool = self.pools.get(app)
        running = [(c.id, self.containers.logs(c.id)) for c in (pool.live if pool else [])]
        return _logs.merged(self.data_dir, app, running, list(self.store.events(app, since)), since, tail, task_id)

    def stop(self, app: str) -> dict[str, Any]:
        pool = self.pools.get(app)
        if pool is None or pool.version is None:
            raise AgentError(f"{app} is not running here")
        version = pool.version
        deadline = time.monotonic() + STOP_DRAIN_S
        with pool.cond:  # running tasks finish first (bounded)
            while any(c.busy for c in pool.live) and time.monotonic() < deadline:
                pool.cond.wait(0.2)
        for live in pool.drain():
            self._retire(app, live)
        self.store.set_active(app, None)
        self.store.set_version_state(app, version, "stopped")
        self.snapshots.delete(app, version)
        self.containers.forget(app)
        self.store.event(app, f"stopped v{version} (volumes kept)")
        return {"app": app, "stopped_version": version}


def _lock_op(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as e:  # a bad app name or holder
        raise AgentError(str(e), kind="input") from None
