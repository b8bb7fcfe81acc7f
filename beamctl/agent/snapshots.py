"""Checkpoints as the agent runs them (issue 6): when to capture, where snapshots live, whether a cold
start may restore one, and the state users see in `status` and `logs`.

The CRIU work is agent/checkpoint.py's, reached through Containers.capture/restore. Per app version:

    (none) --cold boot, paused after on_start--> capturing --> ready | checkpoint_failed
    ready --key differs (kernel, CPU, CRIU, image, args)--> incompatible (deleted; the next cold boot recaptures)
    ready --restore fails, or a file does not match its digest--> restore_failed (deleted; cold boots
          until a redeploy retries)

A snapshot holds the process's memory, secrets included: DATA/snapshots/APP/vN is 0700, its files 0600,
written as vN.partial and renamed when whole (with key.json, the facts it may be restored under, made by
snapshot_compat.py), and deleted when its version stops serving. Nothing here raises into a start (a failed
optimisation only costs the app its fast cold starts, never a container) but GpuStateLost: a container
whose GPU state could not be brought back after a capture must not serve.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from beamctl.agent import checkpoint, digests, leftovers, snapshot_key
from beamctl.agent.container_args import GPU_FILE
from beamctl.agent.gpu_snapshots import GpuStateLost
from beamctl.agent.resident import Resident
from beamctl.agent.snapshot_compat import SnapshotKeys, cache_dir_note, explain, refuse
from beamctl.agent.store import Store
from beamctl.protocol.spec import takes_snapshots
from beamctl.units import human_bytes

CAPTURE_TIMEOUT_S = 300.0  # one runc checkpoint; ~1 s per GB here
CAPTURE_TRIES = 3  # inside one start (the runtime stays paused between tries), with back-off:
BACKOFF_S = (0.5, 1.5)
RESTORE_BASE_S = 20.0  # a restore's timeout: this plus the snapshot read at a slow disk's pace
RESTORE_BYTES_PER_S = 150e6
KEY_FILE = "key.json"
# no retry helps (an app's open TCP connection was already retried by checkpoint.capture, for the agent's own
# just-closed ones)
PERMANENT = ("no runc state", "No such file or directory: 'runc'", "not supported", "not installed",
             "open TCP connection")


class Snapshots:
    def __init__(self, data_dir: Path, store: Store, containers: Any,
                 on_event: Callable[[str, str], None], gpus: list[Any] | None = None,
                 resident: Resident | None = None) -> None:
        self.root = data_dir / "snapshots"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.store, self.containers, self.on_event = store, containers, on_event
        self.keys = SnapshotKeys(containers, gpus or [])
        self._lock = threading.Lock()
        self._capturing: set[tuple[str, int]] = set()  # one capture per version at a time (one .partial)
        self._hashed: dict[tuple[str, int], dict[str, tuple[int, ...]]] = {}  # held in memory and verified:
        # each file's digests.identity() when it was hashed (see verify)
        for pid in leftovers.stop_captures(self.root):  # an agent that died during a capture: its runc first
            on_event("-", f"agent restarted: the capture it did not finish (runc pid {pid}) ended")
        for partial in self.root.glob("*/*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        for folder in leftovers.remove_unpacked(self.root):  # ... or during a restore
            on_event("-", f"agent restarted: removed {folder}, the unpacked snapshot links of a restore it "
                          f"did not finish")
        for app, version in store.snapshots_in("capturing"):
            store.set_snapshot(app, version, state="incompatible", reason="the agent stopped during its capture")
        self.resident = resident or Resident(0)  # ready snapshots held in memory (resident.py)
        ready = store.snapshots_in("ready")
        if ready and self.resident.budget:  # read back from disk after an agent restart: in the background
            threading.Thread(target=lambda: [self._hold(a, v) for a, v in ready], daemon=True,
                             name="hold-snapshots").start()

    def folder(self, app: str, version: int) -> Path:
        return self.root / app / f"v{version}"

    # capture ------------------------------------------------------------------------------------
    def wants_capture(self, app: str, version: int) -> bool:
        row = self.store.snapshot(app, version)
        return row is None or row["state"] == "incompatible"

    def capture(self, app: str, version: int, container_id: str, args_hash: str, spec: dict[str, Any]) -> bool:
        """Snapshot the paused container; records ready or checkpoint_failed. Raises only GpuStateLost
        (recorded too): the capture is over but the container lost its GPU state, so it must not serve."""
        refusal = refuse(spec)
        if refusal:
            return self._failed(app, version, refusal, spec)
        with self._lock:
            if (app, version) in self._capturing:
                return False  # another container of this version is being captured: this one just serves
            self._capturing.add((app, version))
        try:
            return self._capture(app, version, container_id, args_hash, spec)
        finally:
            with self._lock:
                self._capturing.discard((app, version))

    def _capture(self, app: str, version: int, container_id: str, args_hash: str, spec: dict[str, Any]) -> bool:
        self.store.set_snapshot(app, version, state="capturing", reason=None)
        self.on_event(app, f"checkpoint of v{version}: capturing container {container_id[:12]}")
        final, partial = self.folder(app, version), self.folder(app, version).with_suffix(".partial")
        final.parent.mkdir(mode=0o700, exist_ok=True)
        try:
            too_old = self.keys.criu_too_old()
            key = self.keys.key(spec["image"], args_hash, spec.get("gpu_devices") or ())
        except Exception as e:  # noqa: BLE001 - the image gone, CRIU unreadable: no capture, no harm
            return self._failed(app, version, explain(f"{type(e).__name__}: {e}"), spec)
        if too_old:  # no tries: each would keep the runtime paused and end in CRIU's error
            return self._failed(app, version, too_old, spec)
        for attempt in range(1, CAPTURE_TRIES + 1):
            shutil.rmtree(partial, ignore_errors=True)
            try:
                result = self.containers.capture(container_id, partial, CAPTURE_TIMEOUT_S, gpu=bool(key["gpu"]))
                break
            except Exception as e:  # noqa: BLE001 - CheckpointFailed, or an engine error: a failed capture
                error = explain(e.reason if isinstance(e, checkpoint.CheckpointError) else f"{type(e).__name__}: {e}")
                if isinstance(e, GpuStateLost):  # the container is broken: recorded, then the pool replaces it
                    shutil.rmtree(partial, ignore_errors=True)
                    self._failed(app, version, error, spec)
                    raise
                if attempt == CAPTURE_TRIES or any(p in error for p in PERMANENT):
                    shutil.rmtree(partial, ignore_errors=True)
                    return self._failed(app, version, error, spec)
                time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S)) - 1])
        _write_private(partial / KEY_FILE, json.dumps(key, indent=1))
        if key["gpu"]:
            _write_private(partial / GPU_FILE, json.dumps(key["gpu"]))
        self._forget(app, version)  # whatever was known of an earlier snapshot of this version
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)
        self.store.set_snapshot(app, version, state="ready", reason=None, size_bytes=result.size_bytes,
                                capture_s=round(result.seconds, 3), failures=0)
        if self.resident.budget:  # not on the paused runtime's time: its first task is waiting
            threading.Thread(target=self._hold, args=(app, version), daemon=True, name="hold-snapshot").start()
        tries = f", {attempt} tries" if attempt > 1 else ""
        self.on_event(app, f"checkpoint of v{version} ready: {human_bytes(result.size_bytes)} in "
                           f"{result.seconds:.2f} s{tries} + digests {result.digest_s:.2f} s")
        return True

    def _hold(self, app: str, version: int) -> None:
        def ready() -> bool:
            row = self.store.snapshot(app, version)
            return row is not None and row["state"] == "ready" and self.folder(app, version).is_dir()

        try:
            if ready() and self.resident.keep(app, version, self.folder(app, version)):
                if not ready():
                    self.resident.release(app, version)  # deleted while its files were being locked
                else:
                    self._hash_held(app, version)
        except OSError:  # deleted meanwhile
            self.resident.release(app, version)

    def _hash_held(self, app: str, version: int) -> None:
        """Check the files just locked in memory against their digests (one thread: the app's first tasks
        may be running); a match is remembered with each file's identity, so restores need not hash them."""
        folder = self.folder(app, version)
        try:
            manifest = digests.parse_manifest((folder / checkpoint.MANIFEST).read_text())
        except ValueError:
            manifest = None
        before = {name: digests.identity(folder / name) for name in manifest.files} if manifest else {}
        why = digests.damage(folder, manifest, workers=1) if manifest else "damaged: unreadable manifest"
        if why is None and before == {name: digests.identity(folder / name) for name in before}:
            with self._lock:
                self._hashed[(app, version)] = before
            return
        self.resident.release(app, version)  # the next start's own check finds it and falls back to cold
        self.on_event(app, f"checkpoint of v{version} not held in memory: {why or 'changed while hashed'}")

    def verify(self, app: str, version: int) -> None:
        """Raise checkpoint.RestoreFailed("damaged: ...") unless every image file of the snapshot has the size
        and digest its capture recorded. A restore reads the files on disk, through the page cache (the
        links that docker start --checkpoint hands CRIU point at them). Of a snapshot held in memory every
        page of those files is locked in the page cache (resident.py: MAP_SHARED + mlock) and was hashed
        after it was locked (_hash_held); CRIU reads exactly those pages, and any write to a file through
        the file system since changes its size, mtime or ctime (digests.identity). So a held file whose
        identity is unchanged since it was hashed is not hashed again; any other file is, every time."""
        folder = self.folder(app, version)
        try:
            manifest = digests.parse_manifest((folder / checkpoint.MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise checkpoint.RestoreFailed(f"damaged: no readable {checkpoint.MANIFEST} ({type(e).__name__})") \
                from None
        with self._lock:
            seen = dict(self._hashed.get((app, version), {})) if self.resident.held(app, version) else {}
        skip = frozenset(name for name, ident in seen.items() if _identity(folder / name) == ident)
        why = digests.damage(folder, manifest, skip)
        if why is not None:
            raise checkpoint.RestoreFailed(why)

    def _forget(self, app: str, version: int) -> None:
        """Out of memory, and no longer known verified."""
        with self._lock:
            self._hashed.pop((app, version), None)
        self.resident.release(app, version)

    def _failed(self, app: str, version: int, reason: str, spec: dict[str, Any]) -> bool:
        reason = reason + cache_dir_note(spec)
        row = self.store.snapshot(app, version)
        self.store.set_snapshot(app, version, state="checkpoint_failed", reason=reason, size_bytes=None,
                                failures=(row["failures"] if row else 0) + 1)
        self.on_event(app, f"checkpoint of v{version} failed: {reason}; cold starts boot the app "
                           f"(a redeploy tries again)")
        return False

    # restore ------------------------------------------------------------------------------------
    def restorable(self, app: str, version: int, args_hash: str, image: str,
                   devices: tuple[int, ...] | list[int] = ()) -> tuple[Path, float] | None:
        """(folder, restore timeout) when this version has a snapshot that may be restored here."""
        row = self.store.snapshot(app, version)
        if row is None or row["state"] != "ready":
            return None
        folder = self.folder(app, version)
        try:
            key = json.loads((folder / KEY_FILE).read_text())
        except (OSError, ValueError) as e:
            self._incompatible(app, version, f"its key cannot be read ({type(e).__name__})")
            return None
        differ = snapshot_key.key_differences(key, self.keys.key(image, args_hash, devices))
        if differ:
            names = ["beamctl's snapshot format" if f == "format" else f for f in differ]
            self._incompatible(app, version, f"{', '.join(names)} changed since it was captured")
            return None
        return folder, RESTORE_BASE_S + (row["size_bytes"] or 0) / RESTORE_BYTES_PER_S

    def outdated(self, app: str, version: int, args_hash: str, image: str,
                 devices: tuple[int, ...] | list[int] = ()) -> bool:
        """A ready snapshot that this host can no longer restore (kernel, CPU, CRIU or beamctl's format
        changed since): marked incompatible now, so that a redeploy captures it again at once."""
        row = self.store.snapshot(app, version)
        return row is not None and row["state"] == "ready" and \
            self.restorable(app, version, args_hash, image, devices) is None

    def _incompatible(self, app: str, version: int, why: str) -> None:
        self._forget(app, version)
        shutil.rmtree(self.folder(app, version), ignore_errors=True)
        self.store.set_snapshot(app, version, state="incompatible", reason=why, size_bytes=None)
        self.on_event(app, f"checkpoint of v{version} incompatible: {why}; cold boot, then a new capture")

    def restored(self, app: str, version: int, container_id: str, seconds: float) -> None:
        self.resident.touch(app, version)
        self.on_event(app, f"container {container_id[:12]} of v{version} restored from its checkpoint "
                           f"in {seconds:.2f} s")

    def restore_failed(self, app: str, version: int, reason: str, spec: dict[str, Any]) -> None:
        reason = reason + ("" if reason.startswith("damaged:") else cache_dir_note(spec))
        self._forget(app, version)
        shutil.rmtree(self.folder(app, version), ignore_errors=True)
        row = self.store.snapshot(app, version)
        if row is None:  # deleted meanwhile (its version stopped serving): nothing to mark
            return
        self.store.set_snapshot(app, version, state="restore_failed", reason=reason, size_bytes=None,
                                failures=(row["failures"] if row else 0) + 1)
        self.on_event(app, f"restore of v{version} failed: {reason}; this start boots cold, and so do the "
                           f"next (a redeploy captures again)")

    # deploys and retirement -------------------------------------------------------------------
    def retry(self, app: str, version: int) -> bool:
        """A redeploy: a version whose capture or restore failed may capture again. True if it was failed."""
        row = self.store.snapshot(app, version)
        if row is None or row["state"] not in ("checkpoint_failed", "restore_failed"):
            return False
        self.store.set_snapshot(app, version, state="incompatible", reason="retrying after: " + (row["reason"] or ""))
        return True

    def delete(self, app: str, version: int) -> None:
        """The version stopped serving: its snapshot goes (it holds memory, secrets included, and disk)."""
        folder = self.folder(app, version)
        existed = folder.exists()
        self._forget(app, version)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(folder.with_suffix(".partial"), ignore_errors=True)
        try:
            folder.parent.rmdir()  # the app's folder, when this was its last snapshot (`stop`)
        except OSError:
            pass  # another version's snapshot is in it, or it is gone already
        self.store.delete_snapshot(app, version)
        if existed:
            self.on_event(app, f"checkpoint of v{version} deleted (v{version} no longer serves)")

    def describe(self, app: str) -> dict[int, dict[str, Any]]:
        return {v: {"state": r["state"], "reason": r["reason"], "size_bytes": r["size_bytes"],
                    "capture_s": r["capture_s"], "in_memory": self.resident.held(app, v)}
                for v, r in self.store.snapshots(app).items()}


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        return digests.identity(path)
    except OSError:
        return None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class AppSnapshots:
    """Snapshots as one app's Pool sees them: by version; the spec of each version from `spec_of`."""

    def __init__(self, snapshots: Snapshots, app: str, spec_of: Callable[[int], dict[str, Any]]) -> None:
        self.snapshots, self.app, self.spec_of = snapshots, app, spec_of

    def enabled(self, version: int) -> bool:
        return takes_snapshots(self.spec_of(version))

    def wants_capture(self, version: int) -> bool:
        return self.enabled(version) and self.snapshots.wants_capture(self.app, version)

    def capture(self, version: int, container_id: str, args_hash: str) -> bool:
        return self.snapshots.capture(self.app, version, container_id, args_hash, self.spec_of(version))

    def restorable(self, version: int, args_hash: str) -> tuple[Path, float] | None:
        if not self.enabled(version):
            return None
        spec = self.spec_of(version)
        return self.snapshots.restorable(self.app, version, args_hash, spec["image"], spec.get("gpu_devices") or ())

    def outdated(self, version: int, args_hash: str) -> bool:
        spec = self.spec_of(version)
        return self.enabled(version) and self.snapshots.outdated(self.app, version, args_hash, spec["image"],
                                                                 spec.get("gpu_devices") or ())

    def verify(self, version: int) -> None:
        self.snapshots.verify(self.app, version)

    def restored(self, version: int, container_id: str, seconds: float) -> None:
        self.snapshots.restored(self.app, version, container_id, seconds)

    def restore_failed(self, version: int, reason: str) -> None:
        self.snapshots.restore_failed(self.app, version, reason, self.spec_of(version))
