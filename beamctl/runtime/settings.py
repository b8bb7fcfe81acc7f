"""What `serve` is told by its environment: the image's ENV plus what the agent sets per container."""

from __future__ import annotations

import os
from typing import Mapping, Optional

DEFAULT_PORT = 8000
DEFAULT_WORKERS = 1  # beam.yaml `workers`: tasks one container runs at the same time
DEFAULT_TIMEOUT_S = 180.0  # beam.yaml `timeout`: seconds one task may run
MAX_WORKERS = 256  # the schema's maximum
DEFAULT_CHECKPOINT_WAIT_S = 600.0  # a paused runtime serves anyway if no agent ever releases it
# The agent binds the version's secret values here (read-only), so `docker inspect` shows none of them;
# RUNTIME_KEY among them is the key the agent sends in KEY_HEADER: nobody else may talk to this runtime
# (another container on the same bridge reaches its port). The same names are in beamctl/protocol/spec.py.
SECRETS_PATH = "/run/beamctl/secrets.json"
RUNTIME_KEY = "BEAMCTL_RUNTIME_KEY"
KEY_HEADER = "X-Beamctl-Key"


class SettingsError(Exception):
    """An environment variable has a value `serve` cannot use; the message names it."""


class Settings:
    __slots__ = ("app", "handler", "on_start", "app_dir", "port", "workers", "timeout_s", "cache_dir",
                 "checkpoint", "checkpoint_wait_s")

    def __init__(self, env: Mapping[str, str], app_dir: str) -> None:
        self.app = env.get("BEAMCTL_APP", "app")
        self.handler = env.get("BEAMCTL_HANDLER", "")
        if not self.handler:
            raise SettingsError("BEAMCTL_HANDLER is not set; the image was not built by beamctl")
        self.on_start: Optional[str] = env.get("BEAMCTL_ON_START") or None
        self.app_dir = app_dir
        self.port = _number(env, "BEAMCTL_PORT", int, DEFAULT_PORT, 1, 65535)
        self.workers = _number(env, "BEAMCTL_WORKERS", int, DEFAULT_WORKERS, 1, MAX_WORKERS)
        self.timeout_s = _number(env, "BEAMCTL_TIMEOUT", float, DEFAULT_TIMEOUT_S, 0.001, 86400 * 7)
        self.cache_dir: Optional[str] = env.get("BEAMCTL_MODEL_CACHE") or None  # beam.yaml cache_dir
        # checkpoint_enabled: after on_start, pause for the agent's snapshot until it releases us
        self.checkpoint = env.get("BEAMCTL_CHECKPOINT", "") == "1"
        self.checkpoint_wait_s = _number(env, "BEAMCTL_CHECKPOINT_WAIT", float, DEFAULT_CHECKPOINT_WAIT_S,
                                         0.001, 86400)


def _number(env: Mapping[str, str], name: str, kind: type, default, low, high):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise SettingsError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'} "
                            f"from {low} to {high}")
    return value


def load_secrets(path: str = SECRETS_PATH) -> Optional[str]:
    """The secret values into this process's environment (the app reads them there, as ever); returns the
    runtime key (kept out of the environment), or None without a secrets file (an older agent: secret
    values in the environment already, and no key)."""
    import json

    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: not a JSON object")
    key = values.pop(RUNTIME_KEY, None)
    os.environ.update({k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, str)})
    return key if isinstance(key, str) and key else None


def export_cache_dir(path: str) -> None:
    """Point the model libraries' caches at `path` (before the app imports them) and create it."""
    os.makedirs(path, exist_ok=True)
    for var in ("HF_HOME", "TRANSFORMERS_CACHE", "TORCH_HOME"):
        os.environ[var] = path
