"""`beamctl init`: a beam.yaml whose comments are the schema's own descriptions, an app.py, and
the schema itself beside them for editors.

The template is rendered from the schema, so the explanations cannot drift from what
`validate` accepts (tests/test_scaffold.py validates what this writes).
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamctl.config.schema import SCHEMA_PATH, load_schema
from beamctl.errors import UsageError

WIDTH = 88  # comment lines wrap here
# Where init puts the schema, relative to beam.yaml's folder: editors (yaml-language-server) resolve
# the modeline's relative path against the YAML file, so it works offline; ours to refresh.
SCHEMA_FILE = ".beamctl/beam.schema.json"

# The example values init writes, in the order they appear. Keys left out of a fresh
# app (hosts, rollout) are written commented out, with their description.
_EXAMPLE: dict[str, Any] = {
    "name": None,  # from the folder's name
    "handler": "app:handler",
    "on_start": "app:load_model",
    "gpu": "none",
    "cpu": 1,
    "memory": "2Gi",
    "workers": 1,
    "timeout": 180,
    "keep_warm_seconds": 180,
    "image": {"python_version": "3.11", "python_packages": [], "system_packages": [], "commands": []},
    "volumes": [{"name": "models", "mount_path": "/models"}],
    "cache_dir": "/models/cache",
    "checkpoint_enabled": False,
    "run_as_root": False,
    "max_input_size": "32Mi",
    "env": {"LOG_LEVEL": "info"},
    "secrets": [],
}
_COMMENTED: dict[str, Any] = {"autoscaler": {"max_containers": 4, "tasks_per_container": 1, "min_containers": 0},
                               "hosts": ["user@gpu-host:22"],
                               "gateway": {"host": "gw1", "port": 8443, "certificate": "tls/app.pem"},
                               "rollout": {"max_parallel": 2, "health_timeout": 300}}

APP_PY = '''\
"""A beamctl app. `beamctl call` sends a task; its inputs arrive as keyword arguments."""


def load_model():
    """on_start: runs once per container, before any task. Load weights here, under cache_dir."""
    return {"greeting": "hello"}


def handler(context, **inputs):
    """One task. context.on_start_value is what load_model returned; context.task_id names the task."""
    name = inputs.get("name", "world")
    return {"message": f"{context.on_start_value['greeting']}, {name}"}
'''


def app_name(folder: Path) -> str:
    """A folder name -> a valid app name (DNS label)."""
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:63].rstrip("-")
    return name or "app"


def render_beam_yaml(name: str) -> str:
    schema = load_schema()
    props = schema["properties"]
    out = [f"# yaml-language-server: $schema={SCHEMA_FILE}",
           "# beam.yaml: one beamctl app. `beamctl schema` prints the full schema; `beamctl validate` checks this file.",
           ""]
    for key, value in _EXAMPLE.items():
        out += _field(key, name if key == "name" else value, props[key], indent="")
    for key, value in _COMMENTED.items():
        out += [line if line.startswith("#") else f"# {line}" for line in _field(key, value, props[key], "") if line]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _field(key: str, value: Any, prop: dict[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}# {part}" for part in textwrap.wrap(prop["description"], WIDTH - len(indent) - 2)]
    if isinstance(value, dict) and "properties" in prop:
        lines.append(f"{indent}{key}:")
        for sub, sub_value in value.items():
            lines += _field(sub, sub_value, prop["properties"][sub], indent + "  ")
        return lines + [""] if not indent else lines
    if isinstance(value, list) and value and isinstance(value[0], dict):
        lines.append(f"{indent}{key}:")
        for item in value:
            pairs = [f"{k}: {_scalar(v)}" for k, v in item.items()]
            lines += [f"{indent}  - {pairs[0]}"] + [f"{indent}    {p}" for p in pairs[1:]]
    elif isinstance(value, dict):
        lines.append(f"{indent}{key}:")
        lines += [f"{indent}  {k}: {_scalar(v)}" for k, v in value.items()]
    else:
        lines.append(f"{indent}{key}: {_scalar(value)}")
    return lines + ([""] if not indent else [])


def _scalar(value: Any) -> str:
    """Plain when YAML reads it back as the same string, else JSON (which is YAML): "3.11", [], false."""
    import yaml

    if isinstance(value, str) and re.fullmatch(r"[\w/][\w./:@-]*", value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


@dataclass(frozen=True)
class SchemaFile:
    path: Path
    state: str  # "created" | "refreshed" (it held other bytes) | "current" (it held these already)


@dataclass(frozen=True)
class Scaffold:
    files: list[Path]  # beam.yaml, app.py
    schema: SchemaFile


def schema_target(path: Path) -> Path:
    """`schema --write PATH`: a folder means its SCHEMA_FILE (the place init uses), else PATH itself."""
    return path / SCHEMA_FILE if path.is_dir() else path


def write_schema(path: Path) -> SchemaFile:
    """Put this beamctl's schema at `path` (folders made); an older or edited copy is replaced."""
    data = SCHEMA_PATH.read_bytes()
    nearest = next(p for p in path.parents if p.exists())  # the root at the latest
    if not nearest.is_dir():
        raise UsageError(f"cannot write {path}: {nearest} is a file, not a folder")
    try:
        old = path.read_bytes() if path.is_file() else None
        if old == data:
            return SchemaFile(path, "current")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")  # renamed into place: never half a schema
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}")
    return SchemaFile(path, "created" if old is None else "refreshed")


def init_app(folder: Path, name: str | None = None, force: bool = False) -> Scaffold:
    """Write beam.yaml, app.py and the schema into `folder`; refuse to overwrite the first two unless
    `force` (the schema is beamctl's own: refreshed whenever it differs)."""
    files = {folder / "beam.yaml": None, folder / "app.py": APP_PY}
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}",
                         hint="pick another folder, or pass --force to overwrite")
    name = name or app_name(folder)
    if not re.fullmatch(load_schema()["properties"]["name"]["pattern"], name):
        raise UsageError(f"'{name}' is not a valid app name",
                         hint="use lowercase letters, digits and '-', starting with a letter (--name my-app)")
    files[folder / "beam.yaml"] = render_beam_yaml(name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write into {folder}: {e.strerror}")
    return Scaffold(list(files), write_schema(folder / SCHEMA_FILE))
