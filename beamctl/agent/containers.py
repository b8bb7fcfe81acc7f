"""The narrow container runtime the agent drives (`Containers`) and the one that talks to the engine
(`DockerContainers`). What to create is container_args.py's (pure)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

from beamctl.agent.container_args import (GPU_FILE, HARDENING, LABEL_AGENT, LABEL_APP, LABEL_SPARE, LABEL_VERSION,
                                          RUNTIME_PORT, STOP_TIMEOUT_S, death_reason)
from beamctl.agent import app_users, mountpoints, seal
from beamctl.agent.sandboxes import LABEL_SANDBOX, Sandboxes

@dataclass(frozen=True)
class ContainerInfo:
    id: str
    app: str
    version: int
    running: bool
    spare_gpus: tuple[str, ...] = ()  # a spare's GPUs (LABEL_SPARE): its version's pinned ones are known


class Containers(Protocol):
    def has_image(self, ref: str) -> bool: ...
    def create(self, args: dict[str, Any]) -> str: ...
    def start(self, container_id: str) -> str: ...  # returns the runtime's address, "host:port"
    def address(self, container_id: str) -> str: ...
    def exit_code(self, container_id: str) -> int | None: ...  # None while running
    def death(self, container_id: str) -> str | None: ...  # death_reason; None while it runs
    def deaths(self, agent_id: str) -> Iterator[tuple[str, str]]: ...  # blocks: (app container id, why)
    def stop(self, container_id: str) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def logs(self, container_id: str, tail: int | None = None) -> list[tuple[float, str]]: ...
    def list(self, agent_id: str) -> list[ContainerInfo]: ...
    def forget(self, app: str) -> None: ...  # the app stopped here: what was kept for its next start goes
    def image_id(self, ref: str) -> str: ...
    def usage(self, container_ids: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]: ...  # usage.py
    # issue 6: CRIU snapshots (agent/checkpoint.py); both raise checkpoint.CheckpointError subclasses
    # gpu: the container's CUDA processes go through the driver's checkpoint API too (gpu_snapshots.py);
    # restore does that when the snapshot holds GPU_FILE
    def capture(self, container_id: str, folder: Path, timeout_s: float, gpu: bool = False) -> Any: ...
    def restore(self, container_id: str, folder: Path, timeout_s: float) -> Any: ...  # RestoreResult


QUIESCE_LOCK_MS = 5_000  # a restored CUDA process's running kernels finish before its stop


class DockerContainers:
    def __init__(self, client: Any) -> None:
        self.client, self.api = client, client.api
        self._docker_root: Path | None = None  # DockerRootDir, asked once (restores link snapshots into it)
        self._host_cpus = 0  # the engine's NCPU, asked with it (a restore runs with all of them)
        self._cuda_lib: Any = None  # cuda_ckpt.CudaCheckpoint, loaded on the first GPU capture or restore
        self._gpu_restored: set[str] = set()  # containers restored with GPU state: quiesced before a stop
        self.sandboxes = Sandboxes(self.api, LABEL_APP, LABEL_AGENT)  # network namespaces made ahead
        self._sampler: Any = None  # usage.Sampler, from the first `status`

    def has_image(self, ref: str) -> bool:
        import docker

        try:
            self.api.inspect_image(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    def create(self, args: dict[str, Any]) -> str:
        args = dict(args)
        args.pop("runtime_key", None)  # the agent's, for its requests
        binds = args.pop("volumes")
        uid = int(args["user"].split(":")[0]) if args.get("user") else None
        for path in binds:  # nosuid,nodev (seal.py); where the agent may not mount, the 0700 parents guard
            if Path(path).is_dir():
                seal.seal(Path(path))
            if uid is not None:  # the app's own user's (app_users.py): its volumes, its secrets file
                (app_users.own if Path(path).is_dir() else app_users.own_file)(Path(path), uid)
        app = args["labels"][LABEL_APP]
        network = self.sandboxes.network_mode(app, args["image"], args["labels"][LABEL_AGENT])
        limits = {k: args.pop(k) for k in ("nano_cpus", "mem_limit", "tmpfs", *HARDENING) if k in args}
        gpus, restore_target = args.pop("gpus", 0), args.pop("restore_target", False)
        if gpus and restore_target:  # no `--gpus` hook: it would run again in runc's restore (mountpoints.py);
            from beamctl.agent.gpus import host_device_rules  # CRIU brings back its mounts, these its access

            limits["device_cgroup_rules"] = host_device_rules()
            gpus = 0
        host_config = self.api.create_host_config(binds=binds, device_requests=_gpus(gpus),
                                                  network_mode=network, **limits)
        try:
            cid = self.api.create_container(host_config=host_config, volumes=[b["bind"] for b in binds.values()],
                                            **args)["Id"]
        except BaseException:
            self.sandboxes.unbind_failed(app, network)
            raise
        self.sandboxes.bound(cid, app, network)
        return cid

    def image_id(self, ref: str) -> str:
        return self.api.inspect_image(ref)["Id"]

    def usage(self, container_ids: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The host's CPU, memory and GPU use, and each container's (usage.py)."""
        from beamctl.agent import usage

        if self._sampler is None:
            self._sampler = usage.Sampler(self.api)
        return self._sampler.get(container_ids)

    def capture(self, container_id: str, folder: Path, timeout_s: float, gpu: bool = False) -> Any:
        from beamctl.agent import checkpoint

        cid = self._full_id(container_id)
        pid = self._pid(cid)
        if not gpu:
            result = checkpoint.capture(cid, folder, timeout_s)
        else:
            from beamctl.agent import gpu_snapshots, usage

            held = gpu_snapshots.device_memory(pid, usage._smi)  # before the driver moves it to host memory
            result = gpu_snapshots.capture(self._cuda(checkpoint.CheckpointFailed), pid,
                                           lambda: checkpoint.capture(cid, folder, timeout_s))
            gpu_snapshots.record_memory(folder, held)
        try:  # it runs on (--leave-running): what a restore must mount onto
            mountpoints.record(pid, folder)
        except OSError as e:
            raise checkpoint.CheckpointFailed(f"cannot read the container's mounts after its capture: {e}") from None
        return result

    def restore(self, container_id: str, folder: Path, timeout_s: float) -> Any:
        from beamctl.agent import checkpoint

        if self._docker_root is None:
            info = self.client.info()
            self._docker_root, self._host_cpus = Path(info["DockerRootDir"]), int(info.get("NCPU") or 0)
        cid = self._full_id(container_id)
        gpu = (folder / GPU_FILE).exists()
        if gpu:  # refused before CRIU runs: a cold boot, said why
            from beamctl.agent import gpu_snapshots, usage

            why = gpu_snapshots.restore_refusal(folder, gpu_snapshots.pinned_uuids(folder), usage._smi)
            if why is not None:
                raise checkpoint.RestoreFailed(why)
        # CRIU (and the driver, for GPU state) restore the process inside the container's cgroup, so the app's
        # CPU limit would throttle the copy of its memory: a 0.25-CPU app restored in 0.52 s, not 0.36 s
        # (bench/autoscale.py). The restore runs with the host's CPUs; the limit is back before the runtime is
        # released (pool.py), so the app never serves above it; an agent killed in between leaves a runtime
        # that was never released, which the next agent removes rather than adopts (housekeeping.py).
        info = self.api.inspect_container(cid)
        wanted = mountpoints.prepare(info, folder)  # an OCI hook's mounts come back onto them
        limit = self._lift_cpu_limit(info)
        result = checkpoint.restore(self.client, cid, folder, "beamctl", docker_root=self._docker_root,
                                    timeout_s=timeout_s)
        pid = self._pid(cid)
        lost = mountpoints.lost(pid, wanted)
        if lost:
            self.api.kill(cid)
            raise checkpoint.RestoreFailed(f"the restored container lacks the mount at {lost[0]} (an OCI hook's, "
                                           f"as the captured one had{f'; {len(lost) - 1} more' if len(lost) > 1 else ''})")
        if gpu:
            from beamctl.agent import gpu_snapshots

            self._gpu_restored.add(cid)
            gpu_snapshots.after_restore(self._cuda(checkpoint.RestoreFailed), pid)
        if limit:
            try:
                self._set_cpus(cid, limit)
            except Exception as e:  # noqa: BLE001 - never an app over its CPU limit: this restore fails instead
                self.api.kill(cid)
                raise checkpoint.RestoreFailed(f"could not put the CPU limit back after the restore: {e}") from None
        return result

    def _lift_cpu_limit(self, info: dict[str, Any]) -> int:
        """The created container's (inspected) CPU limit (NanoCpus), raised to all the host's CPUs for its
        restore; 0 when it has none to lift."""
        limit = int(info["HostConfig"].get("NanoCpus") or 0)
        everything = self._host_cpus * 10**9
        if not 0 < limit < everything:
            return 0
        self._set_cpus(info["Id"], everything)
        return limit

    def _set_cpus(self, container_id: str, nano_cpus: int) -> None:
        # the SDK's update_container has no NanoCpus; the engine's update endpoint takes it (API >= 1.25)
        res = self.api._post_json(self.api._url("/containers/{0}/update", container_id), data={"NanoCpus": nano_cpus})
        self.api._result(res, True)

    def _cuda(self, error: type[Exception]) -> Any:
        from beamctl.agent import cuda_ckpt

        if self._cuda_lib is None:
            try:
                self._cuda_lib = cuda_ckpt.load()
            except cuda_ckpt.CudaCheckpointError as e:
                raise error(e.reason) from None
        return self._cuda_lib

    def _pid(self, container_id: str) -> int:
        return int(self.api.inspect_container(container_id)["State"]["Pid"])

    def _full_id(self, container_id: str) -> str:
        return container_id if len(container_id) == 64 else self.api.inspect_container(container_id)["Id"]

    def start(self, container_id: str) -> str:
        self.api.start(container_id)
        return self.address(container_id)

    def address(self, container_id: str) -> str:
        sandbox = self.sandboxes.sandbox_of(container_id)
        if sandbox is None:
            info = self.api.inspect_container(container_id)
            mode = info["HostConfig"]["NetworkMode"]
            if not mode.startswith("container:"):
                return f"{info['NetworkSettings']['IPAddress']}:{RUNTIME_PORT}"
            sandbox = mode.removeprefix("container:")
        return f"{self.sandboxes.address(sandbox)}:{RUNTIME_PORT}"

    def exit_code(self, container_id: str) -> int | None:
        state = self.api.inspect_container(container_id)["State"]
        return None if state["Running"] or state["Status"] == "created" else int(state["ExitCode"])

    def death(self, container_id: str) -> str | None:
        import docker

        try:
            return death_reason(self.api.inspect_container(container_id))
        except docker.errors.NotFound:
            return "the container was removed"

    def deaths(self, agent_id: str) -> Iterator[tuple[str, str]]:
        """The engine's `die` events of this agent's containers as (app container id, why), as they come;
        a network sandbox's death is the death of the app container in it. Blocks; ends if the engine's
        event stream does."""
        filters = {"type": "container", "event": ["die"], "label": f"{LABEL_AGENT}={agent_id}"}
        for event in self.api.events(decode=True, filters=filters):
            cid = event.get("id") or (event.get("Actor") or {}).get("ID", "")
            if LABEL_SANDBOX in ((event.get("Actor") or {}).get("Attributes") or {}):
                for user in self.sandboxes.users_of(cid):
                    yield user, f"its network sandbox {cid[:12]} stopped"
            elif cid:
                yield cid, self.death(cid) or "it stopped"

    def stop(self, container_id: str) -> None:
        import docker

        try:
            self._quiesce_gpu(container_id)
            self.api.stop(container_id, timeout=STOP_TIMEOUT_S)
        except docker.errors.NotFound:
            pass

    def _quiesce_gpu(self, container_id: str) -> None:
        """A container restored with GPU state: its CUDA processes locked and checkpointed before the stop's
        signals. SIGKILL of a restored CUDA process that still holds its GPU can hang the driver, and the
        host with it (NVIDIA/cuda-checkpoint#53, driver 595); a checkpointed one holds nothing there."""
        cid = next((c for c in self._gpu_restored if c.startswith(container_id)), None)
        if cid is None or self._cuda_lib is None:
            return
        self._gpu_restored.discard(cid)
        from beamctl.agent import cuda_ckpt

        pids = sorted(cuda_ckpt.cuda_processes(self._cuda_lib, self._pid(cid)))
        for problem in cuda_ckpt.quiesce(self._cuda_lib, pids, QUIESCE_LOCK_MS):
            print(f"beamctl-agent: before stopping {cid[:12]}: {problem}", file=sys.stderr, flush=True)

    def remove(self, container_id: str) -> None:
        import docker

        try:
            self.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        self.sandboxes.released(container_id)

    def forget(self, app: str) -> None:
        self.sandboxes.forget(app)

    def logs(self, container_id: str, tail: int | None = None) -> list[tuple[float, str]]:
        import docker

        try:
            raw = self.api.logs(container_id, timestamps=True, tail=tail if tail else "all")
        except docker.errors.NotFound:
            return []
        # "\n" only: progress bars write "\r" pieces inside one line; the last piece is what was shown
        lines = raw.decode(errors="replace").split("\n")
        return [_stamped(_shown(line)) for line in lines if line.strip()]

    def list(self, agent_id: str) -> list[ContainerInfo]:
        """The agent's app containers (its start-up scan: the sandboxes found are taken stock of too)."""
        rows = self.api.containers(all=True, filters={"label": f"{LABEL_AGENT}={agent_id}"})
        self.sandboxes.adopt(rows)
        out = []
        for c in rows:
            labels = c["Labels"]
            if LABEL_SANDBOX in labels:
                continue
            spare = tuple(g for g in (labels.get(LABEL_SPARE) or "").split(",") if g.isdigit())
            out.append(ContainerInfo(c["Id"], labels[LABEL_APP], int(labels[LABEL_VERSION]), c["State"] == "running",
                                     spare))
        return out


def _gpus(wanted: int | list[str]) -> list[Any] | None:
    if not wanted:
        return None
    import docker

    if isinstance(wanted, list):
        return [docker.types.DeviceRequest(device_ids=wanted, capabilities=[["gpu"]])]
    return [docker.types.DeviceRequest(count=wanted, capabilities=[["gpu"]])]


def _shown(line: str) -> str:
    """'STAMP a\rb\rc' -> 'STAMP c': what a terminal would have shown of a line redrawn with \r."""
    stamp, _, text = line.partition(" ")
    pieces = [p for p in text.split("\r") if p.strip()]
    return f"{stamp} {pieces[-1] if pieces else ''}"


def _stamped(line: str) -> tuple[float, str]:
    """'2026-11-28T21:00:00.123456789Z text' -> (epoch seconds, text)."""
    from datetime import datetime

    stamp, _, text = line.partition(" ")
    try:
        whole, _, frac = stamp.rstrip("Z").partition(".")
        ts = datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{frac or 0}")
    except ValueError:
        return 0.0, line
    return ts, text
