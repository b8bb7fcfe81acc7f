"""An in-memory Engine for unit tests: it records what it was asked and 'builds' instantly."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

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
    loads: list[dict[str, bytes]] = field(default_factory=list)  # the files of each archive loaded
    load_fails_with: str | None = None
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> config, for image_config

    def image_id(self, ref: str) -> str | None:
        if ref.startswith("sha256:"):
            return ref if ref in self.configs and ref not in self.removed_ids else None
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
        image_id = f"sha256:{digest}"
        made = [l for l in lines if l.split()[0] in ("RUN", "COPY")]
        parent = next((l.split()[1] for l in lines if l.startswith("FROM ")), "")
        diff_ids = [*self._parent_layers(parent),
                    *("sha256:" + hashlib.sha256(f"{digest}/{i}".encode()).hexdigest() for i in range(len(made)))]
        self.configs[image_id] = {"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                                  "config": {"Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
                                             "Labels": {"dev.beamctl.deps": "1"}, "Cmd": ["python3"]},
                                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                                  "history": [{"created": "2026-01-01T00:00:00Z", "created_by": l} for l in made]}
        return Built(image_id, len(made), 0)

    def _parent_layers(self, ref: str) -> list[str]:
        config = self.configs.get(self.images.get(ref, ref))
        if config is None:  # a base image the fake never built: one layer of its own
            return ["sha256:" + hashlib.sha256(ref.encode()).hexdigest()]
        return list(config["rootfs"]["diff_ids"])

    def image_config(self, ref: str) -> dict[str, Any]:
        return json.loads(json.dumps(self.configs[self.images.get(ref, ref)]))

    def load(self, archive: BinaryIO) -> str:
        """Like `docker load`: every layer the manifest lists must be held already or be in the archive."""
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        self.loads.append(files)
        if self.load_fails_with:
            raise BuildFailed(self.load_fails_with)
        (entry,) = json.loads(files["manifest.json"])
        config = json.loads(files[entry["Config"]])
        held = {d for c in self.configs.values() for d in c["rootfs"]["diff_ids"]}
        for diff_id, path in zip(config["rootfs"]["diff_ids"], entry["Layers"]):
            if diff_id not in held:
                data = files.get(path)
                if data is None or "sha256:" + hashlib.sha256(data).hexdigest() != diff_id:
                    raise BuildFailed(f"the engine could not load the app image: layer {path} missing or wrong")
        image_id = "sha256:" + hashlib.sha256(files[entry["Config"]]).hexdigest()
        self.configs[image_id] = config
        return image_id

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
