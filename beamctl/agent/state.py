"""What every part of the agent shares (deployments, tasks, deaths, housekeeping): the store, the engine,
the GPUs, the snapshots and one Pool per app, with the few helpers they all use. One object, handed to each."""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from beamctl.agent.exposure import Exposure
from beamctl.agent import gpus as _gpus
from beamctl.agent import logs as _logs
from beamctl.agent import app_users, private, secret_files, tokens, usage
from beamctl.agent.container_args import LABEL_SPARE, create_args
from beamctl.agent.containers import Containers
from beamctl.agent.paths import agent_id
from beamctl.agent.pool import Live, Pool
from beamctl.agent.scale import Scale
from beamctl.agent.resident import Resident
from beamctl.agent.snapshots import AppSnapshots, Snapshots
from beamctl.protocol.spec import AppSpec
from beamctl.agent.store import Store
from beamctl.protocol.errors import AgentError
from beamctl.protocol.gpus import Gpu, assign


class AgentState:
    def __init__(self, data_dir: Path, containers: Containers, gpus: list[Gpu] | None,
                 snapshot_ram: int) -> None:
        self.data_dir = data_dir
        private.secure(data_dir)  # root's alone, also a folder an older agent left readable
        for sub in ("volumes", "logs", "secrets", "tokens"):
            (data_dir / sub).mkdir(mode=private.DIR_MODE, exist_ok=True)
        self.store = Store(data_dir / "agent.db")
        for app, token in self.store.plain_tokens():  # an older agent's: moved out of the database
            tokens.save(data_dir, app, token)
            self.store.set_token(app, tokens.digest(token))
        self.containers = containers
        self.gpus = _gpus.inventory() if gpus is None else gpus
        self.snapshots = Snapshots(data_dir, self.store, containers, self.store.event, self.gpus,
                                   Resident(snapshot_ram, self.store.event))
        self.agent_id = agent_id(data_dir)
        self.pools: dict[str, Pool] = {}
        self.endpoint = ""  # set by the HTTP server: http://host:port
        self.exposure = Exposure(data_dir)  # where gateways reach this agent (agent/exposure.py)
        self.gateway_lock = threading.Lock()  # one change of this host's front door at a time
        self.stopping = threading.Event()  # the agent's background loops end
        self._lock = threading.Lock()
        self._placing = threading.Lock()  # GPU containers: from their create args until they are in a pool
        self._others_snapshotable: bool | None = None  # app_users.can_snapshot_others, asked once

    def pool(self, app: str) -> Pool:
        """The app's Pool, made on first use (serving its active version, if any)."""
        with self._lock:
            pool = self.pools.get(app)
            if pool is None:
                active = self.store.active_version(app)
                spec = self.spec(app, active) if active else {"workers": 1, "keep_warm_s": 180}
                pool = Pool(app, self.containers, lambda v: self.create_args(app, v), spec["workers"],
                            spec["keep_warm_s"], lambda m: self.store.event(app, m),
                            lambda live: self.retire(app, live),
                            AppSnapshots(self.snapshots, app, lambda v: self.spec(app, v)), Scale.of(spec),
                            lambda v, more: self.room(app, v, more),
                            lambda v: self._placing if self.spec(app, v).get("gpu_devices") else nullcontext())
                pool.version = active
                self.pools[app] = pool
            return pool

    def spec(self, app: str, version: int) -> dict[str, Any]:
        row = self.store.version(app, version)
        if row is None:
            raise AgentError(f"{app} has no version {version}")
        return row["spec"]

    def create_args(self, app: str, version: int) -> dict[str, Any]:
        spec_json = self.spec(app, version)
        spec = AppSpec.from_json(spec_json)
        secret_values = secret_files.read(self.secrets_path(app, version))
        uid = None if self.runs_as_root(spec) else self.store.app_uid(app, app_users.candidates())
        devices, spare = tuple(spec_json.get("gpu_devices") or ()), False
        if devices:  # the caller holds self._placing (Pool.placing) until the container is in its pool
            got = self.gpu_set(app, version, devices)
            if isinstance(got, str):
                raise AgentError(got)
            devices, spare = got
        args = create_args(spec, version, self.agent_id, self.data_dir, secret_values,
                           spec_json.get("gpu_count", 0), devices, self.secrets_path(app, version), uid)
        if spare:  # said on the container too: an agent that restarts knows which GPUs it holds
            args["spare"] = True
            args["labels"][LABEL_SPARE] = ",".join(str(d) for d in devices)
        uuids = {g.index: g.uuid for g in self.gpus if g.uuid}
        if devices and all(d in uuids for d in devices):  # pinned by UUID: the index may change at a reboot
            args["gpus"] = [uuids[d] for d in devices]
        return args

    def gpu_set(self, app: str, version: int, pinned: tuple[int, ...], more: int = 0
                ) -> tuple[tuple[int, ...], bool] | str:
        """The GPUs for one more container of `version`: its pinned ones unless a container of that very
        version has them (versions of one app share them during a switch, by design), else as many free
        GPUs of the same kind (a spare: True), none another app's version holds or any container uses;
        `more`: spares being made besides. Why none, as a string."""
        live = [c for pool in list(self.pools.values()) for c in list(pool.live) if c.state in ("starting", "ready")]
        mine = list(self.pools[app].live) if app in self.pools else []
        own = {int(g) for c in mine if c.version == version and c.state in ("starting", "ready") for g in c.gpus}
        if not own & set(pinned) and not more:
            return pinned, False
        in_use = {int(g) for c in live for g in c.gpus if g.isdigit()}
        kind = next((g.canonical for g in self.gpus if g.index == pinned[0]), None)
        held = set(self.taken(app)) | in_use | set(pinned)
        free = [g.index for g in self.gpus if g.canonical == kind and g.index not in held]
        n = len(pinned)
        if len(free) < n * (more + 1):
            return (f"no free {kind} GPU for another container ({len(free)} free of {len(self.gpus)}; "
                    f"{len(in_use)} in use by containers here)")
        return tuple(free[n * more:n * (more + 1)]), True

    def room(self, app: str, version: int, creating: int) -> str | None:
        """Why one more container of the app's `version` does not fit on this host now, or None: the CPUs
        and memory of every container the agent runs (and `creating` more of this one's) stay within the
        host's, and each container of a GPU app gets GPUs of its own (`gpu_set`)."""
        spec = self.spec(app, version)
        if spec.get("gpu_devices"):
            got = self.gpu_set(app, version, tuple(spec["gpu_devices"]), creating)
            if isinstance(got, str):
                return got
        elif spec.get("gpu_count"):
            return "a GPU app deployed before GPUs were pinned runs one container per host (redeploy it)"
        cpu, memory = float(spec.get("cpu") or 1.0), int(spec.get("memory_bytes") or 0)
        used_cpu, used_mem = cpu * creating, memory * creating
        for name, pool in list(self.pools.items()):  # unlocked copies: the caller holds its pool's lock,
            # and taking another's could deadlock with that pool's own scale-out
            for v in [c.version for c in list(pool.live) if c.state in ("starting", "ready")]:
                other = self.spec(name, v)
                used_cpu += float(other.get("cpu") or 1.0)
                used_mem += int(other.get("memory_bytes") or 0)
        total = usage.meminfo(usage.read_text("/proc/meminfo"))
        host_cpus, host_mem = os.cpu_count() or 1, total[1] if total else 0
        if used_cpu + cpu > host_cpus + 1e-9:
            return f"the host's {host_cpus} CPUs are taken ({used_cpu:g} by running containers; one more needs {cpu:g})"
        if host_mem and used_mem + memory > host_mem:
            return (f"the host's memory is taken ({used_mem >> 20} MiB of {host_mem >> 20} MiB by running "
                    f"containers; one more needs {memory >> 20} MiB)")
        return None

    def runs_as_root(self, spec: AppSpec) -> bool:
        """Root in its containers: asked for (run_as_root), or a version with snapshots on a host where
        CRIU could not snapshot the app's own user (app_users.can_snapshot_others)."""
        if self._others_snapshotable is None:
            self._others_snapshotable = app_users.can_snapshot_others()
        return spec.as_root or (spec.takes_snapshots and not self._others_snapshotable)

    def token_for(self, app: str, wanted: str | None = None) -> str | None:
        """The app's endpoint token here, made (or `wanted`, the client's) on its first deploy."""
        if self.store.has_app(app):
            return tokens.read(self.data_dir, app)
        token = wanted or tokens.new()
        tokens.save(self.data_dir, app, token)
        self.store.ensure_app(app, tokens.digest(token))
        return token

    def rotate_token(self, app: str, token: str | None,
                     said: str = "endpoint token rotated: the old one no longer works") -> None:
        """A new token for the app (the client's, so every host gets the same; else a new one)."""
        if not self.store.has_app(app):
            raise AgentError(f"{app} was never deployed here")
        token = token or tokens.new()
        if not tokens.well_formed(token):
            raise AgentError("a token is at least 32 characters of A-Z, a-z, 0-9, - and _", kind="input")
        tokens.save(self.data_dir, app, token)
        self.store.set_token(app, tokens.digest(token))
        self.store.event(app, said)

    def secrets_path(self, app: str, version: int) -> Path:
        return self.data_dir / "secrets" / f"{app}-v{version}.json"

    def retire(self, app: str, live: Live) -> None:
        """A container out of service: stopped, its output kept in logs/<app>.log, removed."""
        live.close()
        self.containers.stop(live.id)
        _logs.save(self.data_dir, app, live.id, self.containers.logs(live.id))
        self.containers.remove(live.id)

    def taken(self, app: str | None) -> dict[int, str]:
        """GPU index -> the app whose starting or active version holds it (`app`'s own count as free)."""
        return _gpus.taken(self.store.versions_in(_gpus.HOLDING), app)

    def assign(self, gpu: tuple[str, ...], app: str | None) -> tuple[str, tuple[int, ...]]:
        got = assign(gpu, self.gpus, self.taken(app))
        if isinstance(got, str):
            raise AgentError(got, hint="deploy to a host with a free GPU of that kind, or change gpu in beam.yaml")
        return got

    def app_endpoint(self, app: str) -> str | None:
        return f"{self.endpoint}/apps/{app}" if self.endpoint else None

