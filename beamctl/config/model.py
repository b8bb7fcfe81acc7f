"""Stage 4 of the config pipeline: the typed, frozen model the rest of beamctl uses.

Defaults come from the schema's `default` keywords, applied here once. Nothing outside
the config package sees the raw dict.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from beamctl.config.gpu import GpuChoice, parse_choice
from beamctl.mounts import APP_ROOT, container_path, memory_bytes  # noqa: F401 (re-exported: config's users)
from beamctl.config.hosts import Host, parse_host



@dataclass(frozen=True)
class Entrypoint:
    module: str
    function: str

    @classmethod
    def parse(cls, text: str) -> Entrypoint:
        module, _, function = text.partition(":")
        return cls(module, function)

    def module_file_candidates(self, app_dir: Path) -> tuple[Path, Path]:
        base = app_dir.joinpath(*self.module.split("."))
        return base.with_suffix(".py"), base / "__init__.py"

    def __str__(self) -> str:
        return f"{self.module}:{self.function}"


@dataclass(frozen=True)
class Volume:
    name: str
    mount_path: str  # absolute and normalised, inside the container


@dataclass(frozen=True)
class ImageSpec:
    python_version: str
    python_packages: tuple[str, ...]
    requirements: Path | None
    system_packages: tuple[str, ...]
    commands: tuple[str, ...]
    base_image: str | None


@dataclass(frozen=True)
class RolloutConfig:
    max_parallel: int | None  # hosts deployed to at once; None: all of them
    health_timeout_s: float  # per host, seconds to wait for READY


@dataclass(frozen=True)
class AutoscalerConfig:
    max_containers: int  # per host
    tasks_per_container: int | None  # None: workers
    min_containers: int


@dataclass(frozen=True)
class GatewayConfig:
    host: str  # an inventory name or an SSH target
    port: int
    certificate: Path | None  # None: plain HTTP
    bind: str  # "": every address
    url: str | None  # None: made from the gateway host's address

    @property
    def tls(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class AppConfig:
    file: Path
    app_dir: Path
    name: str
    handler: Entrypoint
    on_start: Entrypoint | None
    gpu: tuple[GpuChoice, ...]  # in order of preference; empty: CPU only
    cpu: float
    memory: str
    memory_bytes: int
    workers: int
    timeout_s: int
    keep_warm_s: int
    autoscaler: AutoscalerConfig
    image: ImageSpec
    volumes: tuple[Volume, ...]
    cache_dir: str | None  # absolute, inside one volume
    checkpoint_enabled: bool
    run_as_root: bool
    max_input_bytes: int
    env: Mapping[str, str]
    secrets: tuple[str, ...]
    hosts: tuple[Host, ...]  # empty: the local machine
    rollout: RolloutConfig
    gateway: GatewayConfig | None = None

    @property
    def gpu_count(self) -> int:
        return max((g.count for g in self.gpu), default=0)


def _env_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def build(data: dict[str, Any], schema: dict[str, Any], file: Path) -> AppConfig:
    """Data that passed every check -> AppConfig, defaults applied from the schema."""
    props = schema["properties"]
    get = lambda key: data.get(key, props[key].get("default"))  # noqa: E731
    image = data.get("image", {})
    image_props = props["image"]["properties"]
    img = lambda key: image.get(key, image_props[key].get("default"))  # noqa: E731
    rollout = data.get("rollout", props["rollout"]["default"])
    rollout_props = props["rollout"]["properties"]
    scaler = data.get("autoscaler", props["autoscaler"]["default"])
    scaler_props = props["autoscaler"]["properties"]
    app_dir = file.parent
    gpu_raw = get("gpu")
    gpu_list = gpu_raw if isinstance(gpu_raw, list) else [gpu_raw or "none"]
    memory = get("memory")
    return AppConfig(
        file=file,
        app_dir=app_dir,
        name=data["name"],
        handler=Entrypoint.parse(data["handler"]),
        on_start=Entrypoint.parse(data["on_start"]) if "on_start" in data else None,
        gpu=tuple(c for c in (parse_choice(g) for g in gpu_list) if c is not None),
        cpu=float(get("cpu")),
        memory=memory,
        memory_bytes=memory_bytes(memory),
        workers=get("workers"),
        timeout_s=get("timeout"),
        keep_warm_s=get("keep_warm_seconds"),
        autoscaler=AutoscalerConfig(
            max_containers=scaler.get("max_containers", scaler_props["max_containers"]["default"]),
            tasks_per_container=scaler.get("tasks_per_container"),
            min_containers=scaler.get("min_containers", scaler_props["min_containers"]["default"]),
        ),
        image=ImageSpec(
            python_version=img("python_version"),
            python_packages=tuple(img("python_packages")),
            requirements=app_dir / image["requirements"] if "requirements" in image else None,
            system_packages=tuple(img("system_packages")),
            commands=tuple(img("commands")),
            base_image=image.get("base_image"),
        ),
        volumes=tuple(Volume(v["name"], container_path(v["mount_path"])) for v in get("volumes")),
        cache_dir=container_path(data["cache_dir"]) if "cache_dir" in data else None,
        checkpoint_enabled=get("checkpoint_enabled"),
        run_as_root=get("run_as_root"),
        max_input_bytes=memory_bytes(get("max_input_size")),
        env=MappingProxyType({k: _env_value(v) for k, v in get("env").items()}),
        secrets=tuple(get("secrets")),
        hosts=tuple(parse_host(h) for h in data.get("hosts", [])),
        rollout=RolloutConfig(
            max_parallel=rollout.get("max_parallel"),
            health_timeout_s=float(rollout.get("health_timeout", rollout_props["health_timeout"]["default"])),
        ),
        gateway=_gateway(data.get("gateway"), app_dir),
    )


def _gateway(gw: dict[str, Any] | None, app_dir: Path) -> GatewayConfig | None:
    if gw is None:
        return None
    plain = bool(gw.get("plain_http"))
    return GatewayConfig(host=gw["host"], port=gw.get("port") or (80 if plain else 443),
                         certificate=None if plain else app_dir / gw["certificate"],
                         bind=gw.get("bind") or "", url=gw.get("url"))
