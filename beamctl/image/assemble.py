"""The app image, assembled by beamctl instead of `docker build`: layer tars, config, `docker load`.

The app image is its dependencies image plus two layers (the runtime, then the app's code) and a
few settings (render.AppImage). beamctl writes those layers itself as deterministic tars (sorted,
mtime 0, root owner, 0644/0755, parent folders included), writes the image config JSON (sorted
keys, no clock: `created` is the dependencies image's), and hands the engine an archive in
`docker save`'s format whose manifest lists every layer but which carries tars for our layers
only: `docker load` never opens the tar of a layer whose chain the engine already holds. So:

- the image id is sha256 of the config bytes: the same inputs give the same id on every machine;
- a code change changes only the code layer's diffID (and the config, so the id);
- the layer tars stay in a local cache (`layers/<diffid hex>.tar`) with each image's config
  (`configs/<id hex>.json`), so shipping to a host needs no `docker save` for them: see
  layer_cache.py (`layer_path`, `config_bytes`, `own_layers`) and `write_archive`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterable, Sequence

from beamctl.image import layer_cache
from beamctl.image.context import ContextFile
from beamctl.image.layer_cache import CONFIGS, LABEL_PARENT_LAYERS, LAYERS, hex_of, prune_cache
from beamctl.image.render import AppImage

EPOCH = "1970-01-01T00:00:00Z"
COPY_BUFFER = 1 << 20
# container settings an image inherits from its parent (OnBuild triggers do not: they run once)
INHERITED = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
             "StopSignal", "StopTimeout", "Healthcheck", "Shell")


@dataclass(frozen=True)
class Layer:
    diff_id: str  # "sha256:" + sha256 of the uncompressed tar
    path: Path  # in the layer cache
    size: int
    files: int
    created_by: str
    new: bool  # False: the cache held these exact bytes already


@dataclass(frozen=True)
class Assembled:
    id: str  # "sha256:" + sha256(config)
    config: bytes
    diff_ids: tuple[str, ...]  # the whole chain, the dependencies image's layers first
    own: tuple[Layer, ...]  # ours: the top of the chain
    archive_bytes: int


# ---------------------------------------------------------------- layer tars

def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer_entries(files: Iterable[ContextFile], src_prefix: str, dest_dir: str) -> list[tuple[str, ContextFile | None]]:
    """(path in the layer, file or None for a folder), sorted, every parent folder included."""
    dest = dest_dir.strip("/")
    entries: dict[str, ContextFile | None] = {}
    for f in files:
        if not f.arcname.startswith(src_prefix):
            raise ValueError(f"{f.arcname} is not under {src_prefix}")
        name = f"{dest}/{f.arcname[len(src_prefix):]}"
        entries[name] = f
    folders = {dest}
    for name in list(entries):
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    for folder in folders:
        parts = folder.split("/")
        for i in range(1, len(parts) + 1):
            entries.setdefault("/".join(parts[:i]), None)
    return sorted(entries.items())


def write_layer(out: IO[bytes], entries: Sequence[tuple[str, ContextFile | None]]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, f in entries:
            if f is None:
                tar.addfile(_info(name + "/", tarfile.DIRTYPE, 0o755))
            else:
                with f.path.open("rb") as fh:
                    tar.addfile(_info(name, tarfile.REGTYPE, 0o755 if f.executable else 0o644, f.size), fh)


class _Hashing:
    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def build_layer(files: Iterable[ContextFile], src_prefix: str, dest_dir: str) -> Layer:
    """Write one layer's tar into the cache (atomically) while hashing it."""
    entries = layer_entries(files, src_prefix, dest_dir)
    layers = layer_cache.folder(LAYERS)
    fd, tmp = tempfile.mkstemp(dir=layers, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as raw:
            out = _Hashing(raw)
            write_layer(out, entries)  # type: ignore[arg-type]
        diff_id = "sha256:" + out.hash.hexdigest()
        final = layers / f"{out.hash.hexdigest()}.tar"
        new = not final.is_file()
        os.replace(tmp, final)  # also when it was there: refreshes its age for prune_cache
    except BaseException:
        layer_cache.unlink(Path(tmp))
        raise
    return Layer(diff_id, final, out.size, sum(f is not None for _, f in entries),
                 f"COPY {src_prefix} {dest_dir}", new)


# ---------------------------------------------------------------- the config

def _rfc3339(seconds: int | float) -> str:
    return datetime.fromtimestamp(int(seconds), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_NOP = "/bin/sh -c #(nop)"
_LAYER_STEP = re.compile(r"^(RUN|COPY|ADD|WORKDIR)\b")  # BuildKit's words; `#(nop) ` ones from the legacy builder


def _layer_step(created_by: str) -> bool:
    if created_by.startswith(_NOP):
        return bool(_LAYER_STEP.match(created_by[len(_NOP):].strip()))
    return created_by.startswith("/bin/sh -c ") or bool(_LAYER_STEP.match(created_by))


def config_from_inspect(inspect: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """An image's config (as in its JSON) from the engine's inspect and history answers.

    History entries say only their size, not whether they made a layer: size > 0 did; of the empty
    ones, those that look like layer steps (RUN/COPY/ADD/WORKDIR, not `#(nop)` settings) are taken
    until the count matches the image's layers; failing that, one plain entry per layer."""
    diff_ids = list((inspect.get("RootFS") or {}).get("Layers") or [])
    entries = list(reversed(history or []))  # the engine answers newest first
    made = [int(e.get("Size") or 0) > 0 for e in entries]
    missing = len(diff_ids) - sum(made)
    for i, e in enumerate(entries):
        if missing <= 0:
            break
        if not made[i] and _layer_step(e.get("CreatedBy") or ""):
            made[i], missing = True, missing - 1
    hist: list[dict[str, Any]] = []
    if missing == 0:
        for e, layer in zip(entries, made):
            h: dict[str, Any] = {"created": _rfc3339(e.get("Created") or 0)}
            if e.get("CreatedBy"):
                h["created_by"] = e["CreatedBy"]
            if e.get("Comment"):
                h["comment"] = e["Comment"]
            if not layer:
                h["empty_layer"] = True
            hist.append(h)
    else:
        hist = [{"created": EPOCH, "comment": "layer of the parent image"} for _ in diff_ids]
    config: dict[str, Any] = {
        "architecture": inspect.get("Architecture") or "amd64",
        "os": inspect.get("Os") or "linux",
        "created": inspect.get("Created") or EPOCH,
        "config": dict(inspect.get("Config") or {}),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": hist,
    }
    if inspect.get("Variant"):
        config["variant"] = inspect["Variant"]
    return config


def image_config(parent: dict[str, Any], spec: AppImage, own: Sequence[Layer]) -> bytes:
    """The app image's config JSON: the parent's, plus our settings, layers and history."""
    pc = parent.get("config") or {}
    config = {k: pc[k] for k in INHERITED if pc.get(k) not in (None, "", [], {})}
    env = list(config.get("Env") or [])
    for key, value in spec.env:  # ours replace the parent's value in place, like ENV does
        line = f"{key}={value}"
        at = next((i for i, e in enumerate(env) if e.split("=", 1)[0] == key), None)
        if at is None:
            env.append(line)
        else:
            env[at] = line
    parent_layers = list(parent["rootfs"]["diff_ids"])
    labels = {**(config.get("Labels") or {}), **dict(spec.labels), LABEL_PARENT_LAYERS: str(len(parent_layers))}
    config.update(Env=env, Labels=labels, WorkingDir=spec.workdir, Entrypoint=list(spec.entrypoint),
                  Cmd=list(spec.cmd))
    created = parent.get("created") or EPOCH
    settings = " ".join([*(f"LABEL {k}={v}" for k, v in spec.labels),
                         "ENV " + " ".join(f"{k}={v}" for k, v in spec.env), f"WORKDIR {spec.workdir}",
                         f"ENTRYPOINT {json.dumps(list(spec.entrypoint))}", f"CMD {json.dumps(list(spec.cmd))}"])
    history = list(parent.get("history") or [])
    for i, layer in enumerate(own):
        history.append({"created": created, "created_by": layer.created_by, "comment": "beamctl"})
        if i == 0:
            history.append({"created": created, "created_by": settings, "comment": "beamctl",
                            "empty_layer": True})
    doc = {
        "architecture": parent.get("architecture") or "amd64",
        "os": parent.get("os") or "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": parent_layers + [l.diff_id for l in own]},
        "history": history,
    }
    if parent.get("variant"):
        doc["variant"] = parent["variant"]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------- the archive for docker load

def write_archive(out: IO[bytes], config: bytes, send: dict[str, Path], tags: Sequence[str] = ()) -> int:
    """`docker save`-format archive of the image `config` describes, with tars only for the layers
    in `send` (diffID -> tar file); the engine must hold the others. `tags` (repo:tag) are applied by
    `docker load`; the build passes none (it tags after the check). Returns the bytes written."""
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    unknown = set(send) - set(diff_ids)
    if unknown:
        raise ValueError(f"layers not in the image: {sorted(unknown)}")
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": list(tags) or None,
                            "Layers": [f"{hex_of(d)}/layer.tar" for d in diff_ids]}]).encode()
    counting = _Hashing(out)
    with tarfile.open(fileobj=counting, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for name, data in (("manifest.json", manifest), (config_name, config)):
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), _Reader(data))
        for d in diff_ids:
            if d in send:
                path = send[d]
                tar.addfile(_info(hex_of(d) + "/", tarfile.DIRTYPE, 0o755))
                with path.open("rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    tar.addfile(_info(f"{hex_of(d)}/layer.tar", tarfile.REGTYPE, 0o644, size), fh)
    return counting.size


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.at + n
        chunk, self.at = self.data[self.at:end], min(end, len(self.data))
        return chunk


def assemble(parent: dict[str, Any], spec: AppImage, runtime_files: Sequence[ContextFile],
             app_files: Sequence[ContextFile], archive: IO[bytes]) -> Assembled:
    """Write our layers into the cache, the config into the cache, and the load archive to `archive`."""
    groups = {spec.copies[0][0]: list(runtime_files), spec.copies[1][0]: list(app_files)}
    own = tuple(build_layer(groups[src], src, dst) for src, dst in spec.copies)
    config = image_config(parent, spec, own)
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    layer_cache.write_atomic(layer_cache.folder(CONFIGS), f"{hex_of(image_id)}.json", config)
    size = write_archive(archive, config, {l.diff_id: l.path for l in own})
    try:
        prune_cache(protect=[l.diff_id for l in own])
    except OSError:
        pass  # a cache: trimming it is best effort
    return Assembled(image_id, config, tuple(json.loads(config)["rootfs"]["diff_ids"]), own, size)

