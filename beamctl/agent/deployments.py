"""Deploy and rollback: the per-app lock, a deploy of what already serves (unchanged, maybe recaptured),
and the start-and-switch path both share (start a version, wait for READY, make it the one that serves)."""

from __future__ import annotations

import re
import secrets as _secrets
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from beamctl.agent import app_users, door, tokens
from beamctl.agent import gpus as _gpus
from beamctl.agent import secret_files
from beamctl.agent.snapshot_key import args_hash
from beamctl.agent.container_args import volume_dir
from beamctl.agent.pool import Pool
from beamctl.agent.scale import Scale
from beamctl.protocol.spec import RUNTIME_KEY, AppSpec
from beamctl.agent.state import AgentState
from beamctl.protocol.errors import AgentError
from beamctl.agent.versions import rollback_target, unchanged



KEEP_SECRETS = 5  # versions whose secret values stay on disk (for a rollback): the newest ones


class Deployments:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.store, self.containers, self.snapshots = state.store, state.containers, state.snapshots
        self._deploying: dict[str, tuple[threading.Lock, dict[str, Any]]] = {}
        self._gpu_lock = threading.Lock()

    def check_placement(self, gpu: list[str], app: str | None = None) -> dict[str, Any]:
        """Refuse early (before a build) what deploy would refuse: no free GPU of the kinds asked for here
        (`app`'s own GPUs count as free: its next version takes them over); else which it would get."""
        choice, devices = self.state.assign(tuple(gpu), app)
        return {"gpu": choice, "devices": list(devices)}

    def deploy(self, spec_json: dict[str, Any], secret_values: dict[str, str],
               health_timeout: float | None = None, token: str | None = None) -> dict[str, Any]:
        """health_timeout: None is the spec's (its rollout.health_timeout). `token`: the app's endpoint
        token on every host (the client's choice); it replaces another one here once the deploy is done."""
        try:
            spec = AppSpec.from_json(spec_json)
            why = door.spec_problem(spec, secret_values)
        except (TypeError, ValueError, AttributeError) as e:
            why = f"the spec is malformed: {e}"
        if why is not None:
            raise AgentError(f"deploy refused: {why}", kind="input")
        health_timeout = spec.health_timeout if health_timeout is None else health_timeout
        missing = [n for n in spec.secret_names if n not in secret_values]
        if missing:
            raise AgentError(f"no value for secret(s) {', '.join(missing)}")
        if token is not None and not tokens.well_formed(token):
            raise AgentError("deploy refused: a token is at least 32 characters of A-Z, a-z, 0-9, - and _",
                             kind="input")
        self.state.assign(spec.gpu, spec.app)  # refused before anything is written
        with self._app_lock(spec.app, "deploy", spec.image):
            result = self._deploy(spec, secret_values, health_timeout, token)
        if token is not None and result.get("status") == "ready" and result.get("token") != token:
            self.state.rotate_token(spec.app, token, "the app's endpoint token is now the one of all its hosts; "
                                                     "the one this host had no longer works")
            result = {**result, "token": token}
        return result

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

    def _deploy(self, spec: AppSpec, secret_values: dict[str, str], health_timeout: float,
                token: str | None = None) -> dict[str, Any]:
        for v in spec.volumes:  # created once, never deleted by beamctl
            volume_dir(self.state.data_dir, spec.app, v.name).mkdir(parents=True, exist_ok=True)
        if not self.containers.has_image(spec.image):
            raise AgentError(f"image {spec.image} is not on this host")
        with self._gpu_lock:  # two apps deploying at once never get the same GPU
            devices = self.state.assign(spec.gpu, spec.app)[1]
            stored = {**spec.to_json(), "gpu_count": len(devices), "gpu_devices": list(devices)}
            same = self._unchanged(spec, secret_values, stored, health_timeout)
            if same is not None:
                return same
            version = self.store.new_version(spec.app, spec.image, stored)
        key = {RUNTIME_KEY: _secrets.token_hex(32)} if spec.runtime_api >= 2 else {}  # its runtime's, for us
        secret_files.write(self.state.secrets_path(spec.app, version), {**secret_values, **key})  # a failed
        # deploy never changes what the serving version starts with
        token = self.state.token_for(spec.app, token)
        self.store.event(spec.app, f"deploying v{version} ({spec.image})")
        if not spec.as_root and self.state.runs_as_root(spec):
            self.store.event(spec.app, f"v{version} {app_users.ROOT_FOR_SNAPSHOTS}")
        result = self._start_and_switch(spec, version, token, health_timeout)
        if result.get("status") == "ready":
            self._prune_secrets(spec.app, version)
        return result

    def _prune_secrets(self, app: str, newest: int) -> None:
        """Secret values of versions more than KEEP_SECRETS behind the newest go (a rotated value does not stay
        on disk forever); the active one's always stay. Such a version can no longer be rolled back to."""
        active = self.store.active_version(app)
        ours = re.compile(re.escape(app) + r"-v([0-9]+)\.json")  # not app demo-v2's for app demo
        for path in (self.state.data_dir / "secrets").glob(f"{app}-v*.json"):
            m = ours.fullmatch(path.name)
            if m and int(m.group(1)) <= newest - KEEP_SECRETS and int(m.group(1)) != active:
                path.unlink(missing_ok=True)

    def _unchanged(self, spec: AppSpec, secret_values: dict[str, str], stored: dict[str, Any],
                   health_timeout: float) -> dict[str, Any] | None:
        """A deploy of exactly what is serving (image, spec, secrets): nothing to do, the version stays."""
        active = self.store.active_version(spec.app)
        row = self.store.version(spec.app, active) if active is not None else None
        if row is None or self.state.pool(spec.app).version != active:
            return None
        try:
            then = secret_files.read(self.state.secrets_path(spec.app, active))
            then.pop(RUNTIME_KEY, None)
        except (OSError, ValueError):
            return None
        if not unchanged(row, stored, then, secret_values):
            return None
        self.store.event(spec.app, f"deploy of {spec.image}: unchanged, v{active} keeps serving")
        pool = self.state.pool(spec.app)
        if spec.takes_snapshots and (self.snapshots.retry(spec.app, active) or pool.snapshots.outdated(
                active, args_hash(self.state.create_args(spec.app, active)))):
            self._recapture(spec.app, active, health_timeout)
        return {**self._ready(spec, active, self.state.token_for(spec.app)), "unchanged": True}

    def _recapture(self, app: str, version: int, health_timeout: float) -> None:
        """A redeploy after a failed capture or restore: one more container of the serving version boots,
        is captured (tries and back-off inside) and serves beside the other until idle. Bounded by the
        deploy's wait; the result is in the version's snapshot state."""
        pool = self.state.pool(app)
        self.store.event(app, f"redeploy: capturing v{version}'s checkpoint again")
        live = pool.start(version)
        deadline = time.monotonic() + health_timeout
        with pool.cond:
            while live.state == "starting" and time.monotonic() < deadline:
                pool.cond.wait(0.5)

    def _ready(self, spec: AppSpec, version: int, token: str | None) -> dict[str, Any]:
        return {"app": spec.app, "version": version, "image": spec.image, "status": "ready", "reason": None,
                "token": token, "endpoint": self.state.app_endpoint(spec.app), "serving": version,
                "checkpoint": self.snapshots.describe(spec.app).get(version)}

    def _start_and_switch(self, spec: AppSpec, version: int, token: str, health_timeout: float,
                          previous_state: str = "retired") -> dict[str, Any]:
        """Deploy and rollback alike: start `version` (create args from its stored spec and secrets),
        wait for READY, switch the app to it; the one it replaces gets `previous_state`."""
        pool = self.state.pool(spec.app)
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
                self.state.retire(spec.app, live)
            return self._start_failed(spec, pool, version, reason, tail)
        previous = pool.version
        with pool.cond:
            pool.version, pool.workers, pool.keep_warm_s = version, spec.workers, spec.keep_warm_s
            pool.scale = Scale.of(spec.to_json())
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
                 health_timeout: float | None = None) -> dict[str, Any]:
        """Bring an earlier version back: `version`, else the newest retired one before the active one.
        Started like a deploy (its stored spec and secrets; health_timeout None: the one it was deployed
        with); the replaced one becomes "rolled_back"."""
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

    def _rollback(self, app: str, row: dict[str, Any], health_timeout: float | None) -> dict[str, Any]:
        target, spec = row["version"], AppSpec.from_json(row["spec"])
        health_timeout = spec.health_timeout if health_timeout is None else health_timeout
        active = self.store.active_version(app)  # again, under the lock
        if active == target:
            raise AgentError(f"v{target} of {app} is already serving")
        if not self.containers.has_image(row["image"]):
            raise AgentError(f"image {row['image']} of v{target} was pruned; deploy again")
        if (spec.secret_names or spec.runtime_api >= 2) and not self.state.secrets_path(app, target).exists():
            raise AgentError(f"v{target}'s secret values are no longer kept here (only the last {KEEP_SECRETS} "
                             "versions keep theirs)", hint="deploy that version's code again")
        clash = _gpus.clash(row["spec"].get("gpu_devices") or [], self.state.taken(app))
        if clash:
            raise AgentError(f"v{target} {clash}", hint="stop that app first, or deploy again to get free GPUs")
        if spec.gpu and not row["spec"].get("gpu_devices"):  # recorded before pinning: the host must have them
            self.state.assign(spec.gpu, app)
        token = self.state.token_for(app)
        frm = f"v{active}" if active is not None else "nothing serving"
        self.store.event(app, f"rolling back from {frm} to v{target} ({row['image']})")
        result = self._start_and_switch(spec, target, token, health_timeout, previous_state="rolled_back")
        if result["status"] != "ready":  # the old version keeps its state: it may be tried again
            self.store.set_version_state(app, target, row["state"], f"rollback to it failed: {result['reason']}")
            self.store.event(app, f"rollback from {frm} to v{target} failed: {result['reason']}")
        else:
            self.store.event(app, f"rolled back from {frm} to v{target}")
        return {**result, "rolled_back_from": active}
