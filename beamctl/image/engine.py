"""The container engine as the image builder sees it: a narrow interface, and Docker behind it.

`Engine` is what the build code calls; `DockerEngine` implements it with the docker SDK
(imported only here, lazily: it costs ~200 ms); `beamctl.image.fake.FakeEngine` records
calls for unit tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Protocol

from beamctl.errors import BeamctlError, EnvironmentProblem
from beamctl.image.render import LABEL_APP
from beamctl.image.steps import BuildLog, Step, explain_failure

ENGINE_HINT = ("start it with `sudo systemctl start docker` (no Docker Engine yet: install one, e.g. Debian's "
               "`apt-get install docker.io`); DOCKER_HOST selects another engine")
CHECK_TIMEOUT_S = 300  # importing the handler module can load big libraries (torch: ~4 s)


class BuildFailed(BeamctlError):
    """The engine could not build the image; nothing was tagged."""


@dataclass(frozen=True)
class Built:
    id: str
    layers_built: int
    layers_cached: int


@dataclass(frozen=True)
class ImageInfo:
    ref: str
    id: str
    created: str  # RFC 3339, UTC, nanoseconds: sorts by time. When it was tagged (assembled images
    # all carry their dependencies image's creation time), else when it was created


class Engine(Protocol):
    def image_id(self, ref: str) -> str | None: ...
    def image_size(self, ref: str) -> int: ...
    def build(self, context: BinaryIO, labels: dict[str, str], on_step: Callable[[Step], None]) -> Built: ...
    def tag(self, image_id: str, ref: str) -> None: ...
    def check(self, image_id: str) -> tuple[int, str]: ...
    def app_images(self, app: str) -> list[ImageInfo]: ...
    def remove(self, ref: str) -> None: ...
    def load(self, archive: BinaryIO) -> str: ...
    def image_config(self, ref: str) -> dict[str, Any]: ...


class DockerEngine:
    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> DockerEngine:
        import docker

        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except docker.errors.DockerException as e:
            raise EnvironmentProblem(f"cannot reach the Docker Engine: {_short(e)}", hint=ENGINE_HINT) from None
        return cls(client)

    def image_id(self, ref: str) -> str | None:
        import docker

        try:
            return self.client.api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            return None

    def image_size(self, ref: str) -> int:
        return int(self.client.api.inspect_image(ref)["Size"])

    def build(self, context: BinaryIO, labels: dict[str, str], on_step: Callable[[Step], None]) -> Built:
        import docker

        log = BuildLog(on_step)
        try:
            stream = self.client.api.build(fileobj=context, custom_context=True, rm=True, forcerm=True,
                                           decode=True, labels=labels, pull=False, timeout=None)
            for chunk in stream:
                if "error" in chunk:
                    log.finish()
                    message, hint = explain_failure(chunk["error"], log.tail)
                    raise BuildFailed(message, hint)
                log.feed(chunk.get("stream", ""))
                if "aux" in chunk and "ID" in chunk["aux"]:
                    log.image_id = chunk["aux"]["ID"]
        except docker.errors.APIError as e:
            message, hint = explain_failure(_short(e), log.tail)
            raise BuildFailed(message, hint) from None
        log.finish()
        if not log.image_id:
            raise BuildFailed("the engine finished the build without naming an image")
        return Built(log.image_id, log.built, log.cached)

    def tag(self, image_id: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        self.client.api.tag(image_id, repo, tag)

    def check(self, image_id: str) -> tuple[int, str]:
        """Run the image's check mode (its default command) with no network; (exit code, output)."""
        api = self.client.api
        container = api.create_container(image_id, network_disabled=True, labels={LABEL_APP: "check"})
        try:
            api.start(container)
            code = api.wait(container, timeout=CHECK_TIMEOUT_S)["StatusCode"]
            output = api.logs(container, stdout=True, stderr=True).decode(errors="replace")
        finally:
            api.remove_container(container, force=True)
        return code, output.strip()

    def app_images(self, app: str) -> list[ImageInfo]:
        out = []
        for image in self.client.api.images(filters={"label": f"{LABEL_APP}={app}"}):
            for ref in image.get("RepoTags") or []:
                if ref.startswith(f"beamctl/{app}:"):
                    out.append(ImageInfo(ref, image["Id"], _when(self.client.api.inspect_image(image["Id"]))))
        return out

    def remove(self, ref: str) -> None:
        """Remove a tag, or an untagged image by id."""
        self.client.api.remove_image(ref, force=ref.startswith("sha256:"))

    def load(self, archive: BinaryIO) -> str:
        """`docker load` an archive (untagged); returns the loaded image's id."""
        import docker

        loaded: str | None = None
        last = ""
        try:
            for chunk in self.client.api.load_image(archive, quiet=True):
                if chunk.get("error") or chunk.get("errorDetail"):
                    detail = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message", "")
                    hint = ("the engine lacks a layer of the dependencies image (removed during the build?): "
                            "build again" if "layer.tar: no such file" in str(detail) else None)
                    raise BuildFailed(f"the engine could not load the app image: {_first_line(str(detail))}", hint)
                text = str(chunk.get("stream") or "")
                last = text.strip() or last
                found = _LOADED_ID.search(text)
                if found:
                    loaded = found.group(1)
        except docker.errors.APIError as e:
            raise BuildFailed(f"the engine could not load the app image: {_short(e)}") from None
        if loaded is None:
            raise BuildFailed(f"the engine loaded the app image without naming it{': ' + last if last else ''}")
        return loaded

    def image_config(self, ref: str) -> dict[str, Any]:
        """The image's config as in its JSON (architecture, os, created, config, rootfs, history)."""
        from beamctl.image.assemble import config_from_inspect

        return config_from_inspect(self.client.api.inspect_image(ref), self.client.api.history(ref))


def _when(inspect: dict[str, Any]) -> str:
    tagged = str((inspect.get("Metadata") or {}).get("LastTagTime") or "")
    text = tagged if tagged and not tagged.startswith("0001-") else str(inspect.get("Created") or "")
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", text)
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')[:9]}Z" if m else text


_LOADED_ID = re.compile(r"Loaded image ID: (sha256:[0-9a-f]{64})")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no reason given"


def _short(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip().splitlines()[-1][:300] if str(text).strip() else type(e).__name__
