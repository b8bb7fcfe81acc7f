"""beam.yaml -> a content-addressed image: plan (what the image is made of, its tag) apart from doing.

The tag is `beamctl/<app>:<hash>` where the hash covers every input: the Dockerfile, the base
image's id, the resolved wheels, the runtime's files and the app's files. When the engine
already has that tag nothing is built; otherwise the image is built untagged and tagged
only once the build succeeded, so a failure never leaves a half-built image under the tag.
The dependencies image is built by the engine (`docker build`); the app image on it is
assembled here (assemble.py: our layer tars + config, `docker load`), as render_app describes.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from beamctl.config.model import AppConfig
from beamctl.image import assemble, context, render
from beamctl.image.engine import BuildFailed, Built, Engine
from beamctl.image.ignore import load_ignore

RUNTIME_SOURCE = Path(__file__).resolve().parent.parent / "runtime"
SPOOL_BYTES = 64 << 20  # build contexts up to this stay in memory on their way to the engine
ARCHIVE_SPOOL_BYTES = 4 << 20  # app image archives (code can be large) spill to disk above this
KEEP_DEFAULT = 3  # images kept per app by --prune: the current one and two to roll back to
DEPS_REPO = "beamctl/deps"  # dependencies images, named by the hash of what they hold

Progress = Callable[[Any], None]  # receives str notes and Step events


@dataclass(frozen=True)
class BuildPlan:
    tag: str
    inputs: str  # the full hash
    dockerfile: str
    app_files: context.AppFiles
    runtime_files: tuple[context.ContextFile, ...]
    with_packages: bool
    deps_tag: str  # the dependencies image the app image starts FROM
    deps_dockerfile: str
    app_image: render.AppImage  # what the app image adds (dockerfile is its text)


@dataclass(frozen=True)
class BuildResult:
    image: str
    id: str
    size_bytes: int
    layers_built: int
    layers_cached: int
    seconds: float
    reused: bool
    context_bytes: int
    pruned: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {"image": self.image, "id": self.id, "size_bytes": self.size_bytes,
                "layers_built": self.layers_built, "layers_cached": self.layers_cached,
                "seconds": round(self.seconds, 3), "reused": self.reused, "pruned": list(self.pruned)}


def context_excludes(config: AppConfig) -> tuple[str, ...]:
    """Paths of the app folder that never go into the image: the config file, volume folders."""
    out = []
    if config.file.parent == config.app_dir:
        out.append("/" + config.file.name)
    for volume in config.volumes:
        if volume.mount_path.startswith("/app/"):
            out.append("/" + volume.mount_path.removeprefix("/app/"))
    return tuple(out)


def plan(config: AppConfig, base_ref: str, base_id: str, python_exe: str, packages_key: str | None) -> BuildPlan:
    with_packages = packages_key is not None
    deps_dockerfile = render.render_deps(config, base_ref, python_exe, with_packages)
    deps_inputs = _hash(deps_dockerfile, base_id, packages_key or "-")
    deps_tag = f"{DEPS_REPO}:{deps_inputs[:16]}"
    dockerfile = render.render_app(config, deps_tag, python_exe)
    app_files = context.collect(config.app_dir, load_ignore(config.app_dir, context_excludes(config)))
    runtime_files = context.tree_files(RUNTIME_SOURCE, "runtime/")
    inputs = _hash(dockerfile, deps_inputs, context.digest(runtime_files), context.digest(app_files.files))
    return BuildPlan(f"beamctl/{config.name}:{inputs[:16]}", inputs, dockerfile, app_files, runtime_files,
                     with_packages, deps_tag, deps_dockerfile, render.app_image(config, python_exe))


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def execute(build_plan: BuildPlan, app: str, engine: Engine, site: Callable[[], Path] | None,
            progress: Progress) -> BuildResult:
    """Build and tag the planned image, or reuse it when the engine already has the tag."""
    started = time.monotonic()
    existing = engine.image_id(build_plan.tag)
    if existing:
        progress(f"reused {build_plan.tag}: nothing changed")
        return BuildResult(build_plan.tag, existing, engine.image_size(build_plan.tag), 0, 0,
                           time.monotonic() - started, True, build_plan.app_files.total_bytes)
    built_layers = cached_layers = 0
    if engine.image_id(build_plan.deps_tag) is None:
        files = list(context.tree_files(site(), "site/")) if build_plan.with_packages and site else []
        progress(f"dependencies: building {build_plan.deps_tag}")
        deps = _build(engine, build_plan.deps_dockerfile, files, progress)
        engine.tag(deps.id, build_plan.deps_tag)
        built_layers, cached_layers = deps.layers_built, deps.layers_cached
    else:
        progress(f"dependencies: {build_plan.deps_tag} (reused)")
    built, held = _assemble(engine, build_plan, progress)
    code, output = engine.check(built.id)
    lines = output.splitlines()
    last = next((l for l in lines if l.startswith("beamctl-runtime:")), lines[-1] if lines else f"exit code {code}")
    if code != 0:  # the image cannot run the app: it never gets the app's tag, and is removed
        if not held:  # (unless the engine held these exact bytes before, maybe under another tag)
            engine.remove(built.id)
        raise BuildFailed(f"the image was built but cannot run the app: {last}",
                          hint="fix the app's imports or python_packages and build again")
    progress(last)
    engine.tag(built.id, build_plan.tag)
    return BuildResult(build_plan.tag, built.id, engine.image_size(build_plan.tag),
                       built_layers + built.layers_built, cached_layers + built.layers_cached,
                       time.monotonic() - started, False, build_plan.app_files.total_bytes)


def _assemble(engine: Engine, build_plan: BuildPlan, progress: Progress) -> tuple[Built, bool]:
    """The app image: our layers and config written here, loaded into the engine (no docker build).

    Also says whether the engine held that image (same id) before."""
    parent = engine.image_config(build_plan.deps_tag)
    with tempfile.SpooledTemporaryFile(max_size=ARCHIVE_SPOOL_BYTES) as archive:
        image = assemble.assemble(parent, build_plan.app_image, build_plan.runtime_files,
                                  build_plan.app_files.files, archive)  # type: ignore[arg-type]
        runtime, code = image.own
        progress(f"app layers: runtime {_size(runtime.size)}{'' if runtime.new else ' (cached)'}, "
                 f"code {code.files} files {_size(code.size)}{'' if code.new else ' (cached)'}")
        held = engine.image_id(image.id) is not None
        archive.seek(0)
        loaded = engine.load(archive)  # type: ignore[arg-type]
    if loaded != image.id:
        raise BuildFailed(f"the engine loaded the app image as {loaded[:19]}, not {image.id[:19]}")
    new = sum(layer.new for layer in image.own)
    return Built(image.id, new, len(image.own) - new), held


def _build(engine: Engine, dockerfile: str, files: list[context.ContextFile], progress: Progress) -> Any:
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as tar:
        sent = context.write_tar(tar, dockerfile, files)  # type: ignore[arg-type]
        tar.seek(0)
        progress(f"context: {len(files)} files, {_size(sent)}")
        return engine.build(tar, {}, progress)  # type: ignore[arg-type]  (labels are in the Dockerfile)


def prune(engine: Engine, app: str, keep: int, current: str) -> tuple[str, ...]:
    """Remove all but the newest `keep` images of the app (never `current`)."""
    images = sorted(engine.app_images(app), key=lambda i: i.created, reverse=True)
    kept = {current}
    for image in images:
        if len(kept) >= keep:
            break
        kept.add(image.ref)
    removed = []
    for image in images:
        if image.ref not in kept:
            engine.remove(image.ref)
            removed.append(image.ref)
    return tuple(removed)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
