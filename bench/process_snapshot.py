"""Dump and restore a plain process tree with CRIU (no Docker, no runc), GPU state included.

Why a second path beside checkpoint.py: GPU hosts may run no Docker engine (the H200 bench host runs none),
and the bench must time the raw phases. The GPU part is the driver's checkpoint API (cuda_ckpt): suspend()
moves device memory into the process's host memory before CRIU, resume() moves it back after. Phases are
timed separately: cuda_lock, cuda_checkpoint, criu_dump / criu_restore, cuda_restore, cuda_unlock.

What it takes (measured, FIELD-NOTES.md): the dumped tree must not share a terminal with anyone (start it
with setsid, stdio to files; else pass shell_job=True); regular files it has open must be unchanged at
restore (CRIU checks their sizes); its PIDs must be free at restore (outside a fresh PID namespace a second
restore while the first runs fails "Can't fork for PID: File exists"); whoever started it must reap it
after a dump that kills it, or its zombie keeps the PID.

Where the time goes on restore: CRIU reads the pages at ~1.5 GB/s from a cold disk; from the page cache or
tmpfs it is a memory copy. So a snapshot kept "hot" (images_dir on /dev/shm, or warm() run beforehand) is
the lever for restored starts well under a cold start. A tmpfs images_dir is RAM the host does not get back.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beamctl.agent import cuda_ckpt
from beamctl.agent.checkpoint import CheckpointError, check_sizes, criu_reason, log_lines
from beamctl.agent.engine_start import run_bounded

META = "beamctl-process.json"  # {"root_pid", "cuda_pids", "shell_job", "files": {name: size}}
PIDFILE = "restore.pid"
LOGS = ("dump.log", "restore.log", PIDFILE)  # written by CRIU, not part of the snapshot


class SnapshotError(CheckpointError):
    """reason + CRIU's error lines (str() shows both)."""


class SnapshotFailed(SnapshotError):
    """The dump failed. The process goes on running (CRIU resumes it; GPU state is resumed too)."""


class SnapshotRestoreFailed(SnapshotError):
    """The restore failed; nothing of the snapshot is left running."""


@dataclass(frozen=True)
class DumpResult:
    seconds: float  # the whole call
    size_bytes: int  # the images (what a restore reads)
    breakdown: dict[str, float] = field(default_factory=dict)  # seconds per phase
    cuda_pids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreResult:
    pid: int  # the tree's root, the same PID as when dumped
    seconds: float
    breakdown: dict[str, float] = field(default_factory=dict)


def dump(pid: int, images_dir: Path | str, *, leave_running: bool = False, criu: str = "criu",
         timeout_s: float = 120, shell_job: bool = False, cuda: Any = None, cuda_pids: list[int] | None = None,
         lock_timeout_ms: int = 10_000) -> DumpResult:
    """CRIU images of the process tree rooted at pid into images_dir (absent or empty; made 0700, files 0600).

    cuda: a cuda_ckpt.CudaCheckpoint to suspend the tree's GPU processes first (cuda_pids, default: those
    with /dev/nvidia* open). Without leave_running CRIU kills the tree once dumped; with it, or when the dump
    fails, the GPU processes are resumed. Raises SnapshotFailed (reason + CRIU's errors); the folder is then
    the caller's to remove."""
    images = Path(images_dir)
    images.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(images.iterdir()):
        raise SnapshotFailed(f"images folder {images} is not empty: give each snapshot its own folder")
    os.chmod(images, 0o700)
    started = time.monotonic()
    breakdown: dict[str, float] = {}
    gpu: list[int] = []
    if cuda is not None:
        gpu = list(cuda_pids) if cuda_pids is not None else sorted(cuda_ckpt.cuda_processes(cuda, pid))
        try:
            breakdown.update(cuda_ckpt.suspend(cuda, gpu, lock_timeout_ms))
        except cuda_ckpt.CudaCheckpointError as e:
            raise SnapshotFailed(f"GPU checkpoint of process {pid} failed (nothing dumped, app running): "
                                 f"{e.reason}") from None
    argv = [criu, "dump", "-t", str(pid), "-D", str(images), "-o", "dump.log", "-v4"]
    argv += ["--leave-running"] * leave_running + ["--shell-job"] * shell_job
    t = time.monotonic()
    rc, out = run_bounded(argv, timeout_s - (time.monotonic() - started), on_timeout=lambda: None)
    breakdown["criu_dump"] = time.monotonic() - t
    gpu_problem = _resume_after_dump(cuda, gpu, breakdown) if rc != 0 or leave_running else None
    if rc != 0:
        why = f"timed out after {timeout_s:.0f} s" if rc is None else f"failed (exit {rc})"
        reason, tail = criu_reason(f"CRIU dump of process {pid} {why}", log_lines(images / "dump.log"), out)
        raise SnapshotFailed(reason + (f"; and resuming its GPU state failed: {gpu_problem}" if gpu_problem else ""),
                             tail)
    if gpu_problem:  # leave_running: the app is stuck without its GPU state: say so
        raise SnapshotFailed(f"dumped, but resuming the GPU state of the running app failed: {gpu_problem}")
    files = {p.name: p.stat().st_size for p in sorted(images.iterdir()) if p.is_file() and p.name not in LOGS}
    (images / META).write_text(json.dumps({"root_pid": pid, "cuda_pids": gpu, "shell_job": shell_job,
                                           "files": files}, indent=1))
    for p in images.iterdir():
        os.chmod(p, 0o600)
    return DumpResult(time.monotonic() - started, sum(files.values()), breakdown, gpu)


def restore(images_dir: Path | str, *, criu: str = "criu", timeout_s: float = 120, cuda: Any = None,
            cuda_pids: list[int] | None = None) -> RestoreResult:
    """Restore a dump()ed tree (detached: it is not our child). Returns its root pid, the same as dumped.

    cuda: a CudaCheckpoint to resume the GPU processes recorded at dump (or cuda_pids) after CRIU. On any
    failure the restored tree is killed and SnapshotRestoreFailed raised. Size timeout_s to the snapshot:
    ~1.5 GB/s from a cold disk."""
    images = Path(images_dir).resolve()
    meta = _verified(images)
    pidfile = images / PIDFILE
    pidfile.unlink(missing_ok=True)  # CRIU creates it exclusively
    argv = [criu, "restore", "-D", str(images), "-o", "restore.log", "-v4", "--restore-detached",
            "--pidfile", str(pidfile)] + ["--shell-job"] * bool(meta.get("shell_job"))
    started = time.monotonic()
    rc, out = run_bounded(argv, timeout_s, on_timeout=lambda: None)
    breakdown = {"criu_restore": time.monotonic() - started}
    log = log_lines(images / "restore.log")
    if rc != 0:
        why = f"timed out after {timeout_s:.0f} s" if rc is None else f"failed (exit {rc})"
        _kill_restored(pidfile)  # a timed-out restore may have left a running tree behind
        raise SnapshotRestoreFailed(*criu_reason(f"CRIU restore from {images} {why}", log, out))
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as e:
        raise SnapshotRestoreFailed(f"CRIU restored from {images} but wrote no readable pidfile: {e}") from None
    if cuda is not None:
        gpu = list(cuda_pids) if cuda_pids is not None else list(meta.get("cuda_pids", []))
        try:
            breakdown.update(cuda_ckpt.resume(cuda, gpu))
        except cuda_ckpt.CudaCheckpointError as e:
            _kill_restored(pidfile)
            raise SnapshotRestoreFailed(f"GPU restore of process {pid} failed (killed it): {e.reason}") from None
    return RestoreResult(pid, time.monotonic() - started, breakdown)


def warm(images_dir: Path | str, *, threads: int = 8, chunk: int = 16 << 20) -> tuple[int, float]:
    """Read the snapshot's files into the page cache, in parallel, so a later restore copies from memory
    instead of reading the disk at CRIU's ~1.5 GB/s. Returns (bytes read, seconds).

    posix_fadvise(WILLNEED) starts readahead on each whole file; the reads (threads x chunk, each thread a
    stripe of the chunks) make sure the pages are in before we return. Worth it when the restore's moment
    is known in advance (a scale-up decision), or as the cheap alternative to a tmpfs images_dir."""
    started = time.monotonic()
    jobs: list[tuple[Path, int, int]] = []
    for p in sorted(Path(images_dir).iterdir()):
        if not p.is_file() or p.name in LOGS:
            continue
        size = p.stat().st_size
        _fadvise_willneed(p, size)
        jobs += [(p, off, min(chunk, size - off)) for off in range(0, size, chunk)]
    total = [0] * threads
    errors: list[BaseException] = []

    def work(k: int) -> None:
        buf = bytearray(chunk)
        fds: dict[Path, int] = {}
        try:
            for path, off, n in jobs[k::threads]:
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY)
                total[k] += os.preadv(fds[path], [memoryview(buf)[:n]], off)
        except OSError as e:
            errors.append(e)
        finally:
            for fd in fds.values():
                os.close(fd)

    pool = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise SnapshotError(f"cannot read snapshot {images_dir} into memory: {errors[0]}")
    return sum(total), time.monotonic() - started


def images_size(images_dir: Path | str) -> int:
    return sum(p.stat().st_size for p in Path(images_dir).iterdir() if p.is_file() and p.name not in LOGS)


# ---- helpers ------------------------------------------------------------------------------------
def _resume_after_dump(cuda: Any, gpu: list[int], breakdown: dict[str, float]) -> str | None:
    """Give the still-running app its GPU state back; the reason when that failed."""
    if cuda is None or not gpu:
        return None
    try:
        breakdown.update(cuda_ckpt.resume(cuda, gpu))
    except cuda_ckpt.CudaCheckpointError as e:
        return e.reason
    return None


def _verified(images: Path) -> dict:
    """The dump's META, every image present with its recorded size. CRIU 4.2.1 does not check: given a
    short pages-N.img its restorer retries preadv at EOF forever."""
    try:
        meta = json.loads((images / META).read_text())
        sizes = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SnapshotRestoreFailed(f"no readable {META} in {images} (not a finished dump?): {e}") from None
    check_sizes(images, sizes, SnapshotRestoreFailed, "dumped")
    return meta


def _kill_restored(pidfile: Path) -> None:
    """SIGKILL the restored root named by CRIU's pidfile, best effort. No pidfile: CRIU failed before the
    tree ran, and it kills its half-restored tasks itself (never guess a PID: it may be someone else's)."""
    try:
        pid = int(pidfile.read_text().strip())
        if os.getpgid(pid) == pid:  # a setsid-started app leads its group: the whole tree goes
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def _fadvise_willneed(path: Path, size: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
