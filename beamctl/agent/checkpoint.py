"""Capture a running app container with CRIU and restore it into a new Docker container (issue 6).

The measured design (docs/checkpoint-spike.md; Docker 20.10, containerd 1.6, runc 1.1, CRIU >= 4.2):
- capture: `runc --root /run/docker/runtime-runc/moby checkpoint --leave-running` straight on Docker's
  container, images into our own folder (0700, files 0600). 0.65-1.05 s for 1.1 GB, the app frozen only
  that long; `docker checkpoint create` took 31-43 s (containerd packs the images through its content
  store) and kept the app frozen ~6 s. An open TCP connection to the container fails the dump
  ("Connected TCP socket"): the caller closes its connections first; we retry that one error twice.
- restore: into a container the caller created with the *same* create arguments, through
  `docker start --checkpoint NAME`, where NAME is a folder in DockerRootDir/containers/ID/checkpoints
  of relative symlinks to the snapshot's files (Docker 20.10 refuses --checkpoint-dir). The links
  climb to / ("../" x 32) because CRIU opens pages from inside the container's mount namespace, where an
  absolute host path does not resolve; so the tar Docker makes holds only links: 1.3-1.7 s for 1.1 GB
  instead of 39-45 s with copies. Docker manages the result as usual (inspect, logs, stop, rm, a new IP).
  containerd leaks its unpacked folder /tmp/ctrd-checkpoint* on every such start: we remove ours (found
  by a marker file in the folder), and read the shim's restore.log while the start runs (the shim
  deletes it on failure) to give CRIU's reason.
- the restored process lives in a new time namespace: its CLOCK_MONOTONIC = host's + monotonic_offset().
- a snapshot holds the process's environment (secrets included), hostname and memory: key it by image,
  create arguments, kernel, CPU, CRIU (snapshot_key) and never restore one whose key differs.
This module only drives runc/Docker; which container, when, and where snapshots live is the caller's.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamctl.agent import digests
from beamctl.agent.engine_start import engine_for, kill_restore, run_bounded

RUNC_ROOT = "/run/docker/runtime-runc/moby"  # dockerd 20.10's runc state for its containers
CTRD_TMP = "/tmp/ctrd-checkpoint*"  # containerd 1.6 unpacks a start's checkpoint here (and leaves it)
UP = "../" * 32  # a relative link climbs to / from wherever containerd unpacks it
MANIFEST = "manifest.json"  # each image file's size and digest (digests.py): written by capture, checked by restore
MARKER = ".beamctl-restore-"  # + token: a file in the link folder, so our ctrd-checkpoint folder is known
HARMLESS = ("RLIMIT_NOFILE", "interrupted system call")  # printed on every CRIU run / every 4.2 dump
TAIL_LINES = 6


class CheckpointError(Exception):
    def __init__(self, reason: str, log_tail: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.log_tail = reason, log_tail or []

    def __str__(self) -> str:
        return "\n".join([self.reason, *("  " + line for line in self.log_tail)])


class CheckpointFailed(CheckpointError):
    """The capture failed; with --leave-running the container goes on running."""


class RestoreFailed(CheckpointError):
    """The restore failed; the container is not running (the caller removes it or boots it cold)."""


@dataclass(frozen=True)
class CaptureResult:
    snapshot_dir: Path
    size_bytes: int
    seconds: float  # runc checkpoint (the tries included)
    attempts: int
    digest_s: float = 0.0  # then the files' digests, for the manifest


@dataclass(frozen=True)
class RestoreResult:
    container_id: str
    seconds: float  # the start call
    log_tail: list[str]  # the end of CRIU's restore.log (timings), as read during the start


def capture(container_id: str, snapshot_dir: Path, timeout_s: float, *, runc: str = "runc",
            runc_root: str = RUNC_ROOT, attempts: int = 3) -> CaptureResult:
    """CRIU images of the running container (full id) into snapshot_dir (absent or empty), CRIU's log
    into snapshot_dir/work, and MANIFEST (the images' sizes and digests). On failure the folder is the caller's."""
    if not (Path(runc_root) / container_id / "state.json").exists():
        raise CheckpointFailed(f"no runc state for container {container_id[:12]} in {runc_root} (not running?)")
    snapshot_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(snapshot_dir.iterdir()):
        raise CheckpointFailed(f"snapshot folder {snapshot_dir} is not empty")
    os.chmod(snapshot_dir, 0o700)
    work = snapshot_dir / "work"
    argv = [runc, "--root", runc_root, "checkpoint", "--image-path", str(snapshot_dir),
            "--work-path", str(work), "--leave-running", container_id]
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        work.mkdir(mode=0o700)
        left = timeout_s - (time.monotonic() - started)
        rc, out = run_bounded(argv, left, on_timeout=lambda: thaw(container_id))
        if rc == 0:
            break
        lines = log_lines(work / "dump.log")
        if rc is not None and attempt < attempts and any("Connected TCP socket" in ln for ln in lines):
            _empty(snapshot_dir)
            time.sleep(0.05)  # the container closes its end of a just-closed connection within ms
            continue
        why = "timed out after %.0f s" % timeout_s if rc is None else f"failed (exit {rc})"
        raise CheckpointFailed(*criu_reason(f"checkpoint of {container_id[:12]} {why}", lines, out))
    seconds = time.monotonic() - started
    names = sorted(p.name for p in snapshot_dir.iterdir() if p.is_file())
    (snapshot_dir / MANIFEST).write_text(digests.manifest_text(snapshot_dir, names))  # from the page cache
    digest_s = time.monotonic() - started - seconds
    for folder, _dirs, files in os.walk(snapshot_dir):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)
    return CaptureResult(snapshot_dir, sum((snapshot_dir / n).stat().st_size for n in names), seconds, attempt,
                         digest_s)


def restore(docker: Any, new_container_id: str, snapshot_dir: Path, name: str, *,
            docker_root: Path | None = None, timeout_s: float = 60) -> RestoreResult:
    """Start the created container new_container_id (full id) from a capture()d snapshot_dir.

    docker: a docker SDK client, or the path of a docker CLI ("docker"). Returns with the container
    running, or raises RestoreFailed with it not running. A restore still going after timeout_s is
    killed (size it to the snapshot: CRIU reads pages at 0.7-1.4 GB/s here). The link folder and
    containerd's unpacked copy are removed either way."""
    eng = engine_for(docker)
    root = docker_root or eng.root()
    cid = new_container_id
    links = root / "containers" / cid / "checkpoints" / name
    marker = MARKER + secrets.token_hex(8)
    try:
        images = _verified(snapshot_dir.resolve())
        try:
            links.parent.mkdir(mode=0o700, exist_ok=True)  # fails when Docker has no such container
            links.mkdir(mode=0o700)
            for image in images:
                os.symlink(UP + str(image).lstrip("/"), links / image.name)
            (links / marker).touch(mode=0o600)
        except OSError as e:
            raise RestoreFailed(f"cannot link the snapshot into container {cid[:12]}: {e}") from None
        watch = _Tail(root / "containerd/daemon/io.containerd.runtime.v2.task/moby" / cid / "restore.log")
        watch.start()
        started = time.monotonic()
        head = f"restore into {cid[:12]} failed"
        try:
            err = eng.start(cid, name, timeout_s)
            seconds = time.monotonic() - started
            if err is not None and seconds >= timeout_s:
                kill_restore(cid)  # the engine's start call goes on until its runc and criu are gone
                head, err = f"restore into {cid[:12]} timed out after {timeout_s:.0f} s (stopped)", ""
        finally:
            log = watch.stop()
        if err is not None:
            if eng.running(cid):
                eng.kill(cid)
            raise RestoreFailed(*criu_reason(head, log, err))
        return RestoreResult(cid, seconds, log[-TAIL_LINES:])
    finally:
        shutil.rmtree(links, ignore_errors=True)
        for leftover in glob.glob(CTRD_TMP):
            if os.path.lexists(os.path.join(leftover, marker)):
                shutil.rmtree(leftover, ignore_errors=True)


def _verified(snapshot_dir: Path) -> list[Path]:
    """The snapshot's image files, each present with the size capture() recorded. CRIU 4.2.1 does not
    check: given a short pages-N.img its restorer retries preadv at EOF forever, logging each try.
    (Their digests are the caller's to check: the agent knows which files it holds verified in memory.)"""
    try:
        sizes = digests.parse_manifest((snapshot_dir / MANIFEST).read_text()).sizes()
    except (OSError, ValueError) as e:
        raise RestoreFailed(f"no readable {MANIFEST} in {snapshot_dir}: {e}") from None
    check_sizes(snapshot_dir, sizes)
    return [snapshot_dir / file for file in sorted(sizes)]


def check_sizes(folder: Path, sizes: dict[str, int], error: type[CheckpointError] = RestoreFailed,
                when: str = "captured") -> None:
    """Every file named in `sizes` present in `folder` with that size, else `error` saying which."""
    for file, size in sizes.items():
        try:
            got = (folder / file).stat().st_size
        except OSError:
            raise error(f"snapshot {folder} lacks {file}") from None
        if got != size:
            raise error(f"snapshot file {file} has {got} bytes, {size} when {when} (damaged)")


def parse_timens_offsets(text: str) -> dict[str, float]:
    """'monotonic -45 651000000' -> {'monotonic': -44.349}: the kernel prints a normalised timespec."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[0]] = int(parts[1]) + int(parts[2]) / 1e9
    return out


def monotonic_offset(pid: int, proc: Path = Path("/proc")) -> float:
    """Seconds to subtract from the process's CLOCK_MONOTONIC to get the host's (0 when not restored)."""
    try:
        text = (proc / str(pid) / "timens_offsets").read_text()
    except FileNotFoundError:
        if (proc / str(pid)).exists():
            return 0.0  # a kernel without time namespaces: nothing was ever offset
        raise
    return parse_timens_offsets(text).get("monotonic", 0.0)


# ---- helpers ------------------------------------------------------------------------------------
def thaw(container_id: str) -> None:
    """A killed dump may leave the container frozen (cgroup v1 freezer): thaw it, best effort."""
    for state in glob.glob(f"/sys/fs/cgroup/freezer/*/{container_id}/freezer.state"):
        try:
            Path(state).write_text("THAWED")
        except OSError:
            pass


def _empty(folder: Path) -> None:
    for p in folder.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def criu_reason(head: str, log: list[str], output: str) -> tuple[str, list[str]]:
    """One line (head: CRIU's first error, the cause; the rest follow from it; else the command's last
    output line) + CRIU's error lines (else the log's last lines)."""
    errors = [ln for ln in log if "Error" in ln and not any(h in ln for h in HARMLESS)]
    said = [ln.strip() for ln in output.splitlines() if ln.strip()]
    why = re.sub(r"^\(\s*[\d.]+\)\s*Error \([^)]*\):\s*", "", errors[0]) if errors else (said[-1] if said else "")
    tail = errors[:TAIL_LINES] or [ln for ln in log if not any(h in ln for h in HARMLESS)][-TAIL_LINES:]
    return (f"{head}: {why[:300]}" if why else head), tail


class _Tail(threading.Thread):
    """Keeps the latest text of a file the shim deletes on failure (read every 5 ms)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.text, self.cut, self.done = path, "", False, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self._read()

    def _read(self) -> None:  # the end only: a looping CRIU writes its log at ~25 MB/s
        try:
            with self.path.open("rb") as f:
                start = max(f.seek(0, os.SEEK_END) - 8192, 0)
                f.seek(start)
                text = f.read().decode(errors="replace")
            if text:
                self.text, self.cut = text, start > 0
        except OSError:
            pass

    def stop(self) -> list[str]:
        self.done.set()
        self.join()
        self._read()
        return self.text.splitlines()[1 if self.cut else 0:]
