"""beamctl's cache of the app images it assembled (image/assemble.py): each own layer's tar
(`layers/<diffid hex>.tar`) and each image's config (`configs/<id hex>.json`), 0600 in 0700 folders
under paths.cache_dir(), so shipping to a host needs no `docker save` for them (fleet/sources.py).
Trimmed after each assembly to KEEP_LAYER_BYTES, least recently written first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterable

LAYERS = "layers"  # under paths.cache_dir()
CONFIGS = "configs"
LABEL_PARENT_LAYERS = "dev.beamctl.parent-layers"  # how many of the image's layers are its deps image's
KEEP_LAYER_BYTES = 4 << 30  # the layer cache is trimmed (oldest first) to this after each assembly
KEEP_CONFIGS = 2000
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


def cache_root() -> Path:
    from beamctl.paths import cache_dir

    return cache_dir()


def folder(name: str) -> Path:
    d = cache_root() / name
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if d.stat().st_mode & 0o077:
        d.chmod(0o700)
    return d


def hex_of(digest: str) -> str:
    m = _DIGEST.match(digest or "")
    if not m:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return m.group(1)


def layer_path(diff_id: str) -> Path | None:
    """The cached tar of a layer beamctl wrote (an app image's own layers), or None."""
    try:
        path = cache_root() / LAYERS / f"{hex_of(diff_id)}.tar"
    except ValueError:
        return None
    return path if path.is_file() else None


def config_bytes(image_id: str) -> bytes | None:
    """The exact config JSON of an image beamctl assembled (its id is sha256 of these bytes), or None."""
    try:
        data = (cache_root() / CONFIGS / f"{hex_of(image_id)}.json").read_bytes()
    except (ValueError, OSError):
        return None
    return data if "sha256:" + hashlib.sha256(data).hexdigest() == image_id else None


def own_layers(config: bytes) -> tuple[list[str], int]:
    """(every diffID of the image, how many of them belong to its dependencies image)."""
    doc = json.loads(config)
    diff_ids = list(doc["rootfs"]["diff_ids"])
    parent = int((doc.get("config", {}).get("Labels") or {}).get(LABEL_PARENT_LAYERS, len(diff_ids)))
    return diff_ids, parent


def write_atomic(directory: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, directory / name)
    except BaseException:
        unlink(Path(tmp))
        raise
    return directory / name


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def prune_cache(keep_bytes: int = KEEP_LAYER_BYTES, protect: Iterable[str] = ()) -> list[str]:
    """Trim the layer cache to keep_bytes, least recently written first (never `protect`); returns
    the diffIDs removed. A removed layer only costs a `docker save` when it is shipped."""
    root = cache_root()
    keep = {f"{hex_of(d)}.tar" for d in protect}
    removed: list[str] = []
    now = time.time()
    layers = root / LAYERS
    if layers.is_dir():
        entries = []
        for p in layers.iterdir():
            try:
                st = p.stat()
            except OSError:
                continue
            if p.name.startswith(".tmp-"):
                if now - st.st_mtime > 3600:  # left by a killed build
                    unlink(p)
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries, key=lambda e: (e[0], e[2].name)):
            if total <= keep_bytes:
                break
            if p.name in keep:
                continue
            unlink(p)
            total -= size
            removed.append("sha256:" + p.stem)
    configs = root / CONFIGS
    if configs.is_dir():
        files = sorted(configs.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in files[KEEP_CONFIGS:]:
            unlink(p)
    return removed
