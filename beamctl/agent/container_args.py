"""What to create for one container of one app version (pure): `create_args` decides everything about it
from the spec (tested as a whole value), and why a container stopped, from the engine's inspect. Secret
values enter here as environment of the container and go nowhere else."""

from __future__ import annotations

import secrets as _secrets
import signal
from pathlib import Path
from typing import Any

from beamctl.protocol.spec import RUNTIME_KEY, SECRETS_PATH, AppSpec

RUNTIME_PORT = 8000  # the runtime's HTTP server inside each container
STOP_TIMEOUT_S = 5  # SIGTERM, then SIGKILL: the runtime exits at once on SIGTERM
LABEL_APP, LABEL_VERSION, LABEL_AGENT = "dev.beamctl.app", "dev.beamctl.version", "dev.beamctl.agent"
LABEL_SPARE = "dev.beamctl.spare-gpus"  # a GPU app's container on GPUs other than its version's: which ones
GPU_FILE = "gpu.json"  # in a snapshot taken with the GPU checkpoint: its restore needs the driver too
MIN_NANO_CPUS = 10_000_000  # 0.01 CPU, the engine's smallest share
PIDS_LIMIT = 4096  # processes and threads of one container (a fork bomb stops here, not at the host)
LOG_OPTS = {"max-size": "20m", "max-file": "3"}  # the engine's json-file log of one container, at most
TMP_SHARE = 4  # /tmp is a tmpfs of at most a quarter of the memory limit (it counts against it)
# Kubernetes' "restricted" profile, as far as the runtime allows (DESIGN.md, "Containers"): no capability
# at all (the runtime binds a port above 1024 and reads and writes its own files: root in the container
# needs none; the GPU comes through device files, not capabilities), no privilege gained by exec (setuid
# binaries do nothing), a read-only root file system with a writable /tmp.
HARDENING: dict[str, Any] = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
                             "pids_limit": PIDS_LIMIT, "read_only": True,
                             "log_config": {"type": "json-file", "config": LOG_OPTS}}


def volume_dir(data_dir: Path, app: str, volume: str) -> Path:
    return data_dir / "volumes" / app / volume


def create_args(spec: AppSpec, version: int, agent_id: str, data_dir: Path,
                secret_values: dict[str, str], gpu_count: int = 0,
                gpu_devices: tuple[int, ...] | list[int] = (), secrets_file: Path | None = None,
                uid: int | None = None) -> dict[str, Any]:
    """Keyword arguments for the engine's container create, for one container of one version. A runtime
    that reads them from a file (spec.runtime_api 2) gets the secrets as `secrets_file` bound read-only,
    never as environment (which `docker inspect` shows), and the key it wants from the agent
    (`runtime_key`: for the agent's requests, not for the engine). `uid`: the app's own user here
    (app_users.py), which its processes run as and which owns its volumes and secrets file; None: root."""
    as_file = spec.runtime_api >= 2 and secrets_file is not None
    env = {"HOME": "/tmp", **spec.env, **({} if as_file else secret_values),  # HOME: the writable place
           "BEAMCTL_WORKERS": str(spec.workers), "BEAMCTL_TIMEOUT": str(spec.timeout_s),
           "BEAMCTL_PORT": str(RUNTIME_PORT)}
    if spec.cache_dir:
        env["BEAMCTL_MODEL_CACHE"] = spec.cache_dir  # the client's build cache is BEAMCTL_CACHE_DIR
    if spec.takes_snapshots:  # the runtime pauses after on_start until the agent releases it
        env["BEAMCTL_CHECKPOINT"] = "1"
    args: dict[str, Any] = {
        "image": spec.image,
        "command": ["serve"],
        "name": f"beamctl-{spec.app}-v{version}-{_secrets.token_hex(3)}",
        "environment": env,
        "labels": {LABEL_APP: spec.app, LABEL_VERSION: str(version), LABEL_AGENT: agent_id},
        "volumes": {str(volume_dir(data_dir, spec.app, v.name)): {"bind": v.mount_path, "mode": "rw"}
                    for v in spec.volumes},
        "nano_cpus": max(int(spec.cpu * 1e9), MIN_NANO_CPUS),  # 0 would be the engine's "unlimited"
        "mem_limit": spec.memory_bytes,
        "stop_signal": "SIGTERM",
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={max(spec.memory_bytes // TMP_SHARE, 16 << 20)}"},
        **HARDENING,
    }
    if uid is not None:
        args["user"] = f"{uid}:{uid}"
    if as_file:
        args["volumes"][str(secrets_file)] = {"bind": SECRETS_PATH, "mode": "ro"}
        args["runtime_key"] = secret_values.get(RUNTIME_KEY)
    if gpu_devices:  # pinned: these GPUs and no others (versions from before pinning: a count)
        args["gpus"] = [str(i) for i in gpu_devices]
    elif gpu_count:
        args["gpus"] = gpu_count
    return args


def size_text(n: int) -> str:
    """Bytes as beam.yaml writes them: 268435456 -> "256Mi", 1073741824 -> "1Gi"."""
    for unit, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


def death_reason(inspect: dict[str, Any]) -> str | None:
    """Why a container is not running, from the engine's inspect (None while it runs): out of memory
    (with its limit), a signal (exit code 128+N), or its exit code."""
    state = inspect.get("State") or {}
    if state.get("Running") and not state.get("OOMKilled"):
        return None
    code = int(state.get("ExitCode") or 0)
    limit = int((inspect.get("HostConfig") or {}).get("Memory") or 0)
    if state.get("OOMKilled"):
        return "killed: out of memory" + (f" (limit {size_text(limit)})" if limit else "")
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"killed by {name} (exit code {code})"
    error = state.get("Error") or ""
    return f"exited with code {code}" + (f": {error}" if error else "")
