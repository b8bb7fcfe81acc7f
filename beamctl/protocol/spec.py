"""What beamctl hands the agent for one deploy: the app's runtime settings, as plain data.

The agent never reads beam.yaml: an AppSpec crosses the control socket (and, later, SSH) as JSON.
Secret values travel beside it, never inside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from beamctl.config.model import AppConfig


RUNTIME_API = 2  # what the runtime in images this beamctl builds understands (beamctl/runtime/settings.py)
SECRETS_PATH = "/run/beamctl/secrets.json"  # in the container: the version's secret values, bound read-only
RUNTIME_KEY = "BEAMCTL_RUNTIME_KEY"  # among them: the key the agent sends in KEY_HEADER
KEY_HEADER = "X-Beamctl-Key"
MAX_INPUT_BYTES = 32 << 20  # beam.yaml's max_input_size default (and what a record from before gets)


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    mount_path: str


@dataclass(frozen=True)
class AppSpec:
    app: str
    image: str
    workers: int = 1
    timeout_s: int = 180
    keep_warm_s: int = 180
    cpu: float = 1.0
    memory_bytes: int = 1 << 30
    gpu: tuple[str, ...] = ()  # canonical "TYPE" or "TYPE:COUNT", in order of preference
    volumes: tuple[VolumeSpec, ...] = ()
    cache_dir: str | None = None
    checkpoint_enabled: bool = False
    env: dict[str, str] = field(default_factory=dict)
    secret_names: tuple[str, ...] = ()
    health_timeout_s: float | None = None  # rollout.health_timeout at its deploy (None: a record from before)
    runtime_api: int = 1  # 2: its image's runtime reads secrets and the agent's key from SECRETS_PATH
    as_root: bool = True  # False: as the app's own uid on the host (a record from before: root, as it ran)
    max_input_bytes: int = MAX_INPUT_BYTES  # a task's inputs, as JSON, at most
    max_containers: int = 1  # beam.yaml's autoscaler, per host (agent/pool.Scale)
    tasks_per_container: int = 0  # 0: workers
    min_containers: int = 0

    @property
    def health_timeout(self) -> float:
        return health_timeout(self.to_json())

    @property
    def takes_snapshots(self) -> bool:
        return takes_snapshots(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AppSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["gpu"] = tuple(known.get("gpu", ()))
        known["secret_names"] = tuple(known.get("secret_names", ()))
        known["volumes"] = tuple(VolumeSpec(**v) for v in known.get("volumes", ()))
        return cls(**known)


def health_timeout(spec_json: dict[str, Any]) -> float:
    """Seconds a start of this version (its stored spec) may take to READY: its deploy's, else the schema's
    default (a record from before the spec carried it)."""
    if spec_json.get("health_timeout_s") is not None:
        return float(spec_json["health_timeout_s"])
    from beamctl.config.schema import field_of

    return float(field_of("rollout", "health_timeout")["default"])


def takes_snapshots(spec_json: dict[str, Any]) -> bool:
    """Whether this version (its stored spec) is snapshotted after on_start, and its later cold starts
    restore: the one place that decides (the runtime's pause, a capture, a recapture on redeploy)."""
    return bool(spec_json.get("checkpoint_enabled"))


def spec_from_config(config: AppConfig, image: str) -> AppSpec:
    return AppSpec(
        app=config.name, image=image, workers=config.workers, timeout_s=config.timeout_s,
        keep_warm_s=config.keep_warm_s, cpu=config.cpu, memory_bytes=config.memory_bytes,
        gpu=tuple(str(g) for g in config.gpu),
        volumes=tuple(VolumeSpec(v.name, v.mount_path) for v in config.volumes),
        cache_dir=config.cache_dir, checkpoint_enabled=config.checkpoint_enabled,
        env=dict(config.env), secret_names=config.secrets, health_timeout_s=config.rollout.health_timeout_s,
        runtime_api=RUNTIME_API, as_root=config.run_as_root, max_input_bytes=config.max_input_bytes,
        max_containers=config.autoscaler.max_containers,
        tasks_per_container=config.autoscaler.tasks_per_container or 0,
        min_containers=config.autoscaler.min_containers,
    )
