"""The container engine as the image builder sees it: a narrow interface, and Docker behind it.

`Engine` is what the build code calls; `DockerEngine` implements it with the docker SDK
(imported only here, lazily: it costs ~200 ms); `beamctl.image.fake.FakeEngine` records
calls for unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Protocol

from beamctl.errors import BeamctlError, EnvironmentProblem
from beamctl.image.render import LABEL_APP
from beamctl.image.steps import BuildLog, Step, explain_failure

ENGINE_HINT = ("start it with `sudo ./scripts/setup.sh` (or `sudo systemctl start docker`); "
               "DOCKER_HOST selects another engine")
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
    created: str  # RFC 3339 from the engine; sorts by time


class Engine(Protocol):
    def image_id(self, ref: str) -> str | None: ...
    def image_size(self, ref: str) -> int: ...
    def build(self, context: BinaryIO, labels: dict[str, str], on_step: Callable[[Step], None]) -> Built: ...
    def tag(self, image_id: str, ref: str) -> None: ...
    def check(self, image_id: str) -> tuple[int, str]: ...
    def app_images(self, app: str) -> list[ImageInfo]: ...
    def remove(self, ref: str) -> None: ...


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
                    created = self.client.api.inspect_image(image["Id"])["Created"]
                    out.append(ImageInfo(ref, image["Id"], created))
        return out

    def remove(self, ref: str) -> None:
        """Remove a tag, or an untagged image by id."""
        self.client.api.remove_image(ref, force=ref.startswith("sha256:"))


def _short(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip().splitlines()[-1][:300] if str(text).strip() else type(e).__name__
