"""What the agent takes from a client, checked at its door: the control socket's framing (one JSON
object per line, at most MAX_LINE_BYTES, read no further), each argument's type, app names, and a deploy's
spec as a whole (names, paths, sizes: beamctl/mounts.py, the rules beam.yaml is checked by), so nothing a client sends can name a file outside the agent's
folder or reach the engine unchecked. The client checked beam.yaml already; the agent does not trust
that it did."""

from __future__ import annotations

import re
from typing import Any

from beamctl.mounts import MAX_INPUT, MAX_MEMORY, memory_bytes, mount_problem
from beamctl.protocol.spec import AppSpec

APP_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,300}")  # the engine judges the rest; no space, no option
NUMBER = (int, float)
# argument -> the types it may have (bool is no number here); anything else is the op's own business
ARG_TYPES: dict[str, tuple[type, ...]] = {
    "app": (str,), "task_id": (str,), "limit": (int,), "tail": (int,), "since": NUMBER, "version": (int,),
    "status": (str,), "health_timeout": NUMBER, "token": (str,), "gpu": (list,), "spec_json": (dict,),
    "secret_values": (dict,), "inputs": (dict,), "holder": (dict,),
    "port": (int,), "tls": (bool,), "servers": (list,), "bind": (str,), "pem": (str,), "listen": (str,),
    "allow": (list,), "url": (str,), "gateway": (str,),
}


def args_problem(args: Any) -> str | None:
    """Why these op arguments are refused, or None."""
    if not isinstance(args, dict):
        return "the arguments must be a JSON object"
    for name, value in args.items():
        want = ARG_TYPES.get(name)
        if value is None or want is None:
            continue
        if (isinstance(value, bool) and bool not in want) or not isinstance(value, want):
            kinds = " or ".join({int: "an integer", float: "a number", str: "a string", list: "a list",
                                 dict: "an object", bool: "true or false"}[t] for t in want)
            return f"{name} must be {kinds}, not {type(value).__name__}"
    app = args.get("app")
    if isinstance(app, str) and not APP_NAME.fullmatch(app):
        return f"{app!r} is not an app name"
    return None


def spec_problem(spec: AppSpec, secret_values: dict[str, Any]) -> str | None:
    """Why a deploy's spec (and its secret values) is refused, or None."""
    if not APP_NAME.fullmatch(spec.app):
        return f"{spec.app!r} is not an app name"
    if not isinstance(spec.image, str) or not IMAGE.fullmatch(spec.image):
        return f"{spec.image!r} is not an image reference"
    if not 0.01 <= float(spec.cpu) <= 512 or spec.cpu != spec.cpu:
        return f"cpu {spec.cpu!r} is outside 0.01-512"
    if not 0 < int(spec.memory_bytes) <= memory_bytes(MAX_MEMORY):
        return f"memory {spec.memory_bytes!r} bytes is outside 1 byte-{MAX_MEMORY}"
    if not isinstance(spec.as_root, bool):
        return "as_root must be true or false"
    if isinstance(spec.max_input_bytes, bool) or not isinstance(spec.max_input_bytes, int) \
            or not 0 < spec.max_input_bytes <= memory_bytes(MAX_INPUT):
        return f"max_input_bytes {spec.max_input_bytes!r} is outside 1 byte-{MAX_INPUT}"
    counts = (spec.max_containers, spec.tasks_per_container, spec.min_containers)
    if any(isinstance(n, bool) or not isinstance(n, int) for n in counts) or not (
            1 <= spec.max_containers <= 64 and 0 <= spec.tasks_per_container <= 1024
            and 0 <= spec.min_containers <= spec.max_containers):
        return f"autoscaler counts out of range: max {spec.max_containers!r}, per container " \
               f"{spec.tasks_per_container!r}, min {spec.min_containers!r}"
    if not 1 <= int(spec.workers) <= 256 or not 0 < float(spec.timeout_s) <= 7 * 86400:
        return "workers or timeout out of range"
    for v in spec.volumes:
        if not VOLUME_NAME.fullmatch(v.name):
            return f"{v.name!r} is not a volume name"
        why = mount_problem(v.mount_path) if v.mount_path.startswith("/") else "a mount path must be absolute"
        if why:
            return f"volume {v.name}: {why}"
    names = [*spec.env, *spec.secret_names, *secret_values]
    bad = next((n for n in names if not isinstance(n, str) or not ENV_NAME.fullmatch(n)), None)
    if bad is not None:
        return f"{bad!r} is not an environment variable name"
    values = [*spec.env.values(), *secret_values.values()]
    if any(not isinstance(v, str) or "\0" in v for v in values):
        return "an environment or secret value is not a string, or holds a NUL"
    if spec.cache_dir is not None and (not isinstance(spec.cache_dir, str) or "\0" in spec.cache_dir):
        return "cache_dir is not a path"
    return None


HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def servers(value: list[Any]) -> tuple[tuple[str, str], ...]:
    """A gateway's servers, [[host name, "address:port"], ...], checked: names as the inventory's, addresses IPs."""
    import ipaddress

    from beamctl.protocol.errors import AgentError

    out = []
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise AgentError("servers must be [[host name, address:port], ...]", kind="input")
        name, address = item
        host, _, port = address.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            ok = 0 < int(port) < 65536
        except ValueError:
            ok = False
        if not HOST_NAME.fullmatch(name) or not ok:
            raise AgentError(f"bad server {name!r} at {address!r}", kind="input")
        out.append((name, address))
    return tuple(out)
