"""Where a ship's archive comes from.

`pick`: beamctl's own layer cache (image.assemble) when it holds every layer the hosts lack: an app
image beamctl assembled, so a code change ships without `docker save` (which reads the whole image at
~20 ms per MB); else `docker save`, streamed through layers.filter_archive.
"""

from __future__ import annotations

import subprocess
from typing import Any

from beamctl.fleet import layers
from beamctl.transport.errors import tail

SAVE_ARGV = ["docker", "save"]


def v1_cache() -> layers.V1Ids:
    from beamctl.paths import cache_dir

    return layers.V1Ids(cache_dir() / "v1ids.json")


def pick(image_ref: str, image_id: str, diff_ids: list[str], keep_from: int,
         staged: frozenset[str] = frozenset()) -> Any:
    """Where the group's archive comes from: beamctl's own layer cache when it holds every layer the
    group lacks (an assembled app image: no `docker save` at all), else `docker save`, filtered. The
    group lacks the layers from `keep_from` on, but for those its hosts kept (`staged`)."""
    from beamctl.image import layer_cache

    config = layer_cache.config_bytes(image_id)
    if config is not None:
        paths = {d: layer_cache.layer_path(d) for d in diff_ids[max(keep_from, 0):] if d not in staged}
        if all(p is not None for p in paths.values()):
            return CachedSource(config, paths, image_ref)  # type: ignore[arg-type]
    return SaveSource(image_ref, diff_ids, keep_from, staged)


class CachedSource:
    what = "from the layer cache"

    def __init__(self, config: bytes, paths: dict[str, Any], image_ref: str) -> None:
        self.config, self.paths, self.image_ref = config, paths, image_ref

    def start(self) -> None:
        pass

    def write(self, out: Any) -> None:
        from beamctl.image import assemble

        assemble.write_archive(out, self.config, self.paths, tags=(self.image_ref,))

    def stop(self) -> None:
        pass

    def failure(self) -> str | None:
        return None


class SaveSource:
    what = "docker save, filtered"

    def __init__(self, image_ref: str, diff_ids: list[str], keep_from: int,
                 staged: frozenset[str] = frozenset()) -> None:
        self.image_ref, self.diff_ids, self.keep_from, self.staged = image_ref, diff_ids, keep_from, staged
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([*SAVE_ARGV, self.image_ref], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def write(self, out: Any) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        layers.filter_archive(self.proc.stdout, out, self.diff_ids, self.keep_from, v1_cache(), self.staged)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def failure(self) -> str | None:
        if self.proc is None:
            return None
        if self.proc.wait() != 0:
            return tail(self.proc.stderr.read().decode(errors="replace")) if self.proc.stderr else "failed"
        return None
