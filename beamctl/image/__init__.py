"""Image build: beam.yaml -> base image -> wheels -> Dockerfile -> a tagged image (DESIGN.md)."""

from __future__ import annotations

from beamctl.config.model import AppConfig
from beamctl.image.build import BuildResult, Progress, execute, plan, prune


def build_app(config: AppConfig, progress: Progress, keep: int | None = None) -> BuildResult:
    """The whole build for one app on the local engine; `keep` prunes older images of the app."""
    from beamctl.paths import cache_dir
    from beamctl.image import base, wheels
    from beamctl.image.engine import DockerEngine

    engine = DockerEngine.connect()
    image = config.image
    base_image = base.resolve_base(engine.client, image.python_version, image.base_image, progress)
    progress(f"base: {base_image.ref} (Python {base_image.python})")
    requirements = (wheels.read_requirements(image.requirements) if image.requirements
                    else list(image.python_packages))
    cache = cache_dir()
    platform = base_image.platform  # the base's glibc: manylinux2014 alone would pick old releases
    resolved = (wheels.resolve(requirements, base_image.python, cache, progress, platform=platform)
                if requirements else None)
    build_plan = plan(config, base_image.ref, base_image.id, base_image.python_exe,
                      resolved.key if resolved else None)
    if build_plan.app_files.secrets_skipped:
        progress(f"left out of the image (they look like credentials): "
                 f"{', '.join(build_plan.app_files.secrets_skipped)}")
    site = ((lambda: wheels.install_tree(resolved, base_image.python, cache, progress, platform=platform))
            if resolved else None)
    result = execute(build_plan, config.name, engine, site, progress)
    if keep is not None:
        pruned = prune(engine, config.name, keep, result.image)
        result = BuildResult(**{**result.__dict__, "pruned": pruned})
    return result
