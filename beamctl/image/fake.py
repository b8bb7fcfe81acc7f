"""An in-memory Engine for unit tests: it records what it was asked and 'builds' instantly."""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from beamctl.image.engine import Built, BuildFailed, ImageInfo
from beamctl.image.steps import Step


@dataclass
class FakeEngine:
    images: dict[str, str] = field(default_factory=dict)  # ref -> id
    created: dict[str, str] = field(default_factory=dict)  # ref -> timestamp
    builds: list[dict[str, bytes]] = field(default_factory=list)  # the files of each context
    labels: list[dict[str, str]] = field(default_factory=list)
    fail_with: str | None = None
    check_result: tuple[int, str] = (0, "beamctl-runtime: ok")
    checked: list[str] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)
    clock: int = 0

    def image_id(self, ref: str) -> str | None:
        return self.images.get(ref)

    def image_size(self, ref: str) -> int:
        return 1000

    def build(self, context: BinaryIO, labels: dict[str, str], on_step: Callable[[Step], None]) -> Built:
        with tarfile.open(fileobj=context, mode="r|") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        self.builds.append(files)
        self.labels.append(labels)
        if self.fail_with:
            raise BuildFailed(self.fail_with)
        lines = files["Dockerfile"].decode().splitlines()[1:]
        for i, line in enumerate(lines, 1):
            on_step(Step(i, len(lines), line, False, line.split()[0] in ("RUN", "COPY")))
        digest = hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()
        return Built(f"sha256:{digest}", sum(l.split()[0] in ("RUN", "COPY") for l in lines), 0)

    def tag(self, image_id: str, ref: str) -> None:
        self.clock += 1
        self.images[ref] = image_id
        self.created[ref] = f"2026-01-01T00:00:{self.clock:02d}Z"

    def check(self, image_id: str) -> tuple[int, str]:
        self.checked.append(image_id)
        return self.check_result

    def app_images(self, app: str) -> list[ImageInfo]:
        return [ImageInfo(ref, i, self.created[ref]) for ref, i in self.images.items()
                if ref.startswith(f"beamctl/{app}:")]

    def remove(self, ref: str) -> None:
        if ref.startswith("sha256:"):
            self.removed_ids.append(ref)
        else:
            del self.images[ref]
