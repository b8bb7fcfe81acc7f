"""Whether and under what a snapshot may exist: `refuse` (never, for this version), the key a snapshot is
restored under (host facts: beamctl's format, kernel, CPU, CRIU; the image, the container's create args, the
pinned GPUs' models and driver; compared field by field by snapshot_key.key_differences), and runc's and CRIU's
failures in words a user can act on. snapshots.py keeps the book of states."""

from __future__ import annotations

import threading
import time
from typing import Any

from beamctl.agent import gpu_snapshots, snapshot_key
from beamctl.protocol.criu import criu_too_old

FACTS_TTL_S = 60.0  # host facts (kernel, CPU, CRIU version) are re-read this often


class SnapshotKeys:
    def __init__(self, containers: Any, gpus: list[Any]) -> None:
        self.containers = containers
        self.gpus = gpus  # the agent's inventory (gpus.Gpu): a GPU snapshot's key names the models
        self._facts: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def criu_too_old(self) -> str | None:
        """Read CRIU's version now (`hosts install` may have just replaced it: the cached facts go too)."""
        version = snapshot_key.criu_version()
        with self._lock:
            if self._facts is not None and self._facts[1].get("criu_version") != version:
                self._facts = None
        return criu_too_old(version)

    def key(self, image: str, args_hash: str, devices: tuple[int, ...] | list[int] = ()) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._facts is None or now - self._facts[0] > FACTS_TTL_S:
                base = snapshot_key.snapshot_key("", "")
                self._facts = now, {k: base[k] for k in ("format", "kernel", "cpu_model", "cpu_flags_hash",
                                                         "criu_version", "gpu")}
            facts = dict(self._facts[1])
        gpu = None
        if devices:  # the pinned GPUs themselves (by UUID), their models and the driver: a snapshot's device
            # memory goes back onto the GPU it came from, never onto another one that took its index
            by_index = {g.index: g for g in self.gpus}
            gpu = {"models": [by_index[i].canonical if i in by_index else "?" for i in devices],
                   "uuids": [by_index[i].uuid if i in by_index else "?" for i in devices],
                   "driver": next((by_index[i].driver for i in devices if i in by_index), "?")}
        return {**facts, "image_id": self.containers.image_id(image), "create_args_hash": args_hash, "gpu": gpu}


def refuse(spec: dict[str, Any]) -> str | None:
    """Why this version cannot be snapshotted at all, or None."""
    from beamctl.agent.cuda_ckpt import gpu_refusal

    gpus = spec.get("gpu_count") or 0
    if gpus == 1 and not gpu_snapshots.enabled():
        return (f"GPU checkpoints are experimental and off on this host (the driver's checkpoint API has not "
                f"been run on a GPU by beamctl's tests yet): set {gpu_snapshots.ENABLE}=1 in the agent's "
                f"environment to try them; this version boots cold")
    return gpu_refusal(gpus)


def explain(reason: str) -> str:
    """runc's and CRIU's words for the failures a user can fix, said so that they can."""
    if '"criu": executable file not found' in reason or "No such file or directory: 'criu'" in reason:
        return ("CRIU is not installed on this host (runc found no `criu` in PATH): `beamctl hosts install` "
                "brings CRIU >= 4.2 to a host; then deploy again")
    if "Connected TCP socket" in reason:  # CRIU's own hint (--tcp-established) is not for the user
        return ("the app held an open TCP connection when on_start returned, and CRIU cannot snapshot one: "
                "close connections (database, HTTP keep-alive, ...) before on_start returns, or open them in "
                "the handler on first use; then deploy again (CRIU: Connected TCP socket)")
    if "No such file or directory: 'runc'" in reason:
        return "runc is not installed on this host (Docker's runtime is needed for checkpoints); deploy again after"
    return reason


def cache_dir_note(spec: dict[str, Any]) -> str:
    """The usual cause of big or failing snapshots: a model cache inside the container, not on a volume."""
    cache = spec.get("cache_dir")
    if not cache:
        return ""
    mounts = [v["mount_path"].rstrip("/") + "/" for v in spec.get("volumes") or ()]
    if any((cache.rstrip("/") + "/").startswith(m) for m in mounts):
        return ""
    return (f" (cache_dir {cache} is not on a volume: the weights live inside the container and the "
            f"snapshot, and a new container does not have them; mount a volume there)")
