"""The CUDA driver's process checkpoint API (libcuda.so.1, driver >= 570), through ctypes.

Why: CRIU cannot dump a process holding GPU state (device memory, /dev/nvidia* mappings). The driver can
move that state into the process's own host memory first: lock (no new CUDA calls) -> checkpoint (device
memory copied to host, GPU references and /dev/nvidia* fds released), after which CRIU sees a plain process.
After CRIU restores it: restore (device memory copied back) -> unlock. Measured on an H200 (driver 580,
8.8 GB on the GPU): lock 0.3 ms, checkpoint 4.7 s, restore 1.6 s, unlock 1 ms (FIELD-NOTES.md).

Stdlib only, so the agent needs neither torch nor cuda-python. The library handle is injectable (anything
with the cu* functions, returning ints) so the logic is tested without a GPU. Struct layouts are the CUDA
12.8-13.x ABI: every args struct is 64 bytes, reserved fields zeroed; we pass no GPU remapping.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

STATES = {0: "running", 1: "locked", 2: "checkpointed", 3: "failed", 4: "checkpointing", 5: "restoring"}
# cuGetErrorName covers every code; this covers the ones the checkpoint calls return, for a fake or a
# driver whose cuGetErrorName itself fails.
ERROR_NAMES = {0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
               3: "CUDA_ERROR_NOT_INITIALIZED", 4: "CUDA_ERROR_DEINITIALIZED", 100: "CUDA_ERROR_NO_DEVICE",
               101: "CUDA_ERROR_INVALID_DEVICE", 304: "CUDA_ERROR_OPERATING_SYSTEM",
               401: "CUDA_ERROR_ILLEGAL_STATE", 500: "CUDA_ERROR_NOT_FOUND", 800: "CUDA_ERROR_NOT_PERMITTED",
               801: "CUDA_ERROR_NOT_SUPPORTED", 909: "CUDA_ERROR_TIMEOUT", 999: "CUDA_ERROR_UNKNOWN"}
MIN_DRIVER_API = 12080  # cuDriverGetVersion of the first drivers (570) with the checkpoint API


class LockArgs(ctypes.Structure):
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint), ("reserved1", ctypes.c_uint64 * 7)]


class CheckpointArgs(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


class RestoreArgs(ctypes.Structure):
    _fields_ = [("gpuPairs", ctypes.c_void_p), ("gpuPairsCount", ctypes.c_uint),
                ("reserved", ctypes.c_char * (52 - ctypes.sizeof(ctypes.c_void_p))), ("reserved1", ctypes.c_uint64)]


class UnlockArgs(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


for _s in (LockArgs, CheckpointArgs, RestoreArgs, UnlockArgs):
    assert ctypes.sizeof(_s) == 64, _s  # the driver reads 64 bytes: a wrong layout must never reach it


class CudaCheckpointError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CudaCheckpoint:
    """One loaded driver library. Every call takes the pid of a CUDA process on this machine (not this one)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    def driver_version(self) -> int:
        """cuDriverGetVersion: 13000 for CUDA 13.0 (driver 580)."""
        v = ctypes.c_int(0)
        self._check(self.lib.cuDriverGetVersion(ctypes.pointer(v)), "cuDriverGetVersion")
        return v.value

    def lock(self, pid: int, timeout_ms: int) -> None:
        """Block the process's further CUDA calls once its running work is done (0 = wait forever)."""
        args = LockArgs(timeoutMs=max(int(timeout_ms), 0))
        self._check(self.lib.cuCheckpointProcessLock(pid, ctypes.pointer(args)), "lock", pid)

    def checkpoint(self, pid: int) -> None:
        """Copy a locked process's device memory into its host memory and release the GPU."""
        self._check(self.lib.cuCheckpointProcessCheckpoint(pid, ctypes.pointer(CheckpointArgs())), "checkpoint", pid)

    def restore(self, pid: int) -> None:
        """Reacquire the GPU and copy the device memory back (same GPU, no remapping)."""
        self._check(self.lib.cuCheckpointProcessRestore(pid, ctypes.pointer(RestoreArgs())), "restore", pid)

    def unlock(self, pid: int) -> None:
        self._check(self.lib.cuCheckpointProcessUnlock(pid, ctypes.pointer(UnlockArgs())), "unlock", pid)

    def state(self, pid: int) -> str:
        """'running', 'locked', 'checkpointed', 'failed' (or a newer driver's state, named state-N)."""
        s = ctypes.c_int(-1)
        self._check(self.lib.cuCheckpointProcessGetState(pid, ctypes.pointer(s)), "get state of", pid)
        return STATES.get(s.value, f"state-{s.value}")

    def restore_thread_id(self, pid: int) -> int:
        """The tid of the driver's restore thread in the process (CRIU's own CUDA plugin waits on it)."""
        tid = ctypes.c_int(0)
        self._check(self.lib.cuCheckpointProcessGetRestoreThreadId(pid, ctypes.pointer(tid)),
                    "get restore thread of", pid)
        return tid.value

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        try:
            if self.lib.cuGetErrorName(code, ctypes.pointer(name)) == 0 and name.value:
                return name.value.decode()
        except (AttributeError, OSError):
            pass
        return ERROR_NAMES.get(code, f"CUresult {code}")

    def _check(self, rc: int, what: str, pid: int | None = None) -> None:
        if rc != 0:
            target = f" process {pid}" if pid is not None else ""
            raise CudaCheckpointError(f"CUDA {what}{target} failed: {self.error_name(rc)}")


_SIGNATURES = {  # name: argument types; every one returns CUresult (int)
    "cuInit": [ctypes.c_uint],
    "cuDriverGetVersion": [ctypes.POINTER(ctypes.c_int)],
    "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    "cuCheckpointProcessLock": [ctypes.c_int, ctypes.POINTER(LockArgs)],
    "cuCheckpointProcessCheckpoint": [ctypes.c_int, ctypes.POINTER(CheckpointArgs)],
    "cuCheckpointProcessRestore": [ctypes.c_int, ctypes.POINTER(RestoreArgs)],
    "cuCheckpointProcessUnlock": [ctypes.c_int, ctypes.POINTER(UnlockArgs)],
    "cuCheckpointProcessGetState": [ctypes.c_int, ctypes.POINTER(ctypes.c_int)],
    "cuCheckpointProcessGetRestoreThreadId": [ctypes.c_int, ctypes.POINTER(ctypes.c_int)],
}


def load(path: str = "libcuda.so.1", *, lib: Any = None) -> CudaCheckpoint:
    """The driver at path (or an injected lib), initialised, checked to have the checkpoint API.

    cuInit runs in *this* process: it opens /dev/nvidiactl here, never in the process to be dumped, so
    call it from the controller (agent, script), not from inside the app's process tree."""
    if lib is None:
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise CudaCheckpointError(f"no NVIDIA driver library {path} ({e}): install the NVIDIA driver "
                                      f"(>= 570) on this host, or set checkpoint_enabled: false") from None
        missing = [n for n in _SIGNATURES if not hasattr(lib, n)]
        if missing:
            raise CudaCheckpointError(f"{path} lacks {', '.join(missing)}: the checkpoint API needs NVIDIA "
                                      f"driver >= 570; upgrade the driver or set checkpoint_enabled: false")
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
    cuda = CudaCheckpoint(lib)
    cuda._check(lib.cuInit(0), "cuInit")
    version = cuda.driver_version()
    if version < MIN_DRIVER_API:
        raise CudaCheckpointError(f"the NVIDIA driver speaks CUDA {version // 1000}.{version % 1000 // 10}; "
                                  f"checkpoints need driver >= 570 (CUDA 12.8): upgrade it")
    return cuda


def suspend(cuda: CudaCheckpoint, pids: list[int], timeout_ms: int) -> dict[str, float]:
    """Lock every process, then checkpoint every one: all-or-nothing.

    Locking all first means no process of the app makes CUDA calls while another is being checkpointed.
    On a failure the ones already done are restored and all locked ones unlocked, so nothing is left
    locked; the error names the failed step (and any rollback step that failed too).
    Returns seconds per phase: {"cuda_lock": ..., "cuda_checkpoint": ...}."""
    locked: list[int] = []
    done: list[int] = []
    t0 = time.monotonic()
    try:
        for pid in pids:
            cuda.lock(pid, timeout_ms)
            locked.append(pid)
        t1 = time.monotonic()
        for pid in pids:
            cuda.checkpoint(pid)
            done.append(pid)
    except CudaCheckpointError as e:
        problems = _rollback(cuda, done, locked)
        if problems:
            raise CudaCheckpointError(f"{e.reason}; rollback also failed: {'; '.join(problems)}") from None
        raise
    return {"cuda_lock": t1 - t0, "cuda_checkpoint": time.monotonic() - t1}


RESUMABLE = ("running", "locked", "checkpointed")


def resume(cuda: CudaCheckpoint, pids: list[int]) -> dict[str, float]:
    """Restore every checkpointed process, then unlock every one. Returns {"cuda_restore", "cuda_unlock"}.

    A process already past a step (running after a failed earlier resume, say) is not an error: the
    step is skipped by state, so a caller can retry resume() after fixing the cause. A process in the
    driver's `failed` state (or one this code does not know) is: nothing is done, and the error names it.
    After a restore that hit GPU out-of-memory the driver leaves the process `failed`, and every later
    restore of it fails too (NVIDIA/cuda-checkpoint#44): its container must be replaced, not retried."""
    states = {pid: cuda.state(pid) for pid in pids}
    bad = {pid: st for pid, st in states.items() if st not in RESUMABLE}
    if bad:
        raise CudaCheckpointError("; ".join(f"process {pid} is {st} in the CUDA driver" for pid, st in bad.items())
                                  + ": its GPU state cannot be brought back (the container must be replaced)")
    t0 = time.monotonic()
    for pid in pids:
        if cuda.state(pid) == "checkpointed":
            cuda.restore(pid)
    t1 = time.monotonic()
    for pid in pids:
        if cuda.state(pid) == "locked":
            cuda.unlock(pid)
    return {"cuda_restore": t1 - t0, "cuda_unlock": time.monotonic() - t1}


def _rollback(cuda: CudaCheckpoint, done: list[int], locked: list[int]) -> list[str]:
    problems = []
    for pid in done:
        try:
            cuda.restore(pid)
        except CudaCheckpointError as e:
            problems.append(e.reason)
    for pid in locked:
        try:
            cuda.unlock(pid)
        except CudaCheckpointError as e:
            problems.append(e.reason)
    return problems


def cuda_processes(cuda: CudaCheckpoint, pid: int, proc: Path = Path("/proc")) -> dict[int, str]:
    """The processes of the tree rooted at pid that the CUDA driver knows, with their state: it answers
    `cuCheckpointProcessGetState` for a process that opened the driver itself (as CRIU's CUDA plugin and
    NVIDIA's Dynamo find them) and refuses any other. Seen on an H200 (driver 580, docs/h200/): a CUDA
    context, a bare cuInit and NVML alone all count, and each can be locked and checkpointed, which
    releases its /dev/nvidia* files; a child forked from a CUDA process holds the inherited files but is
    refused (CUDA_ERROR_NOT_INITIALIZED), as is a process that never opened the driver; a gone pid gets
    CUDA_ERROR_OPERATING_SYSTEM. So an open /dev/nvidia* file says less than the driver does."""
    found = {}
    for p in process_tree(pid, proc):
        try:
            found[p] = cuda.state(p)
        except CudaCheckpointError:
            continue
    return found


def gpu_holders(pids: list[int], proc: Path = Path("/proc")) -> dict[int, str]:
    """Of these processes, those with a /dev/nvidia* file open, with their name: after the driver's
    checkpoint none may be left, or CRIU cannot dump the container."""
    return {p: _comm(proc / str(p)) for p in pids if _has_nvidia_fd(proc / str(p) / "fd")}


def _comm(d: Path) -> str:
    try:
        return (d / "stat").read_text().split("(", 1)[1].rsplit(")", 1)[0]
    except (OSError, IndexError):
        return "?"


def quiesce(cuda: CudaCheckpoint, pids: list[int], timeout_ms: int) -> list[str]:
    """Before a restored CUDA process is killed: lock it and checkpoint it, so it holds no GPU state when
    SIGKILL comes. Killing a restored CUDA process that still holds its GPU can hang the driver, and with
    it the host (NVIDIA/cuda-checkpoint#53, driver 595). Best effort: what failed is returned, to be said."""
    problems = []
    for pid in pids:
        try:
            state = cuda.state(pid)
            if state == "running":
                cuda.lock(pid, timeout_ms)
                state = "locked"
            if state == "locked":
                cuda.checkpoint(pid)
        except CudaCheckpointError as e:
            problems.append(e.reason)
    return problems


def cuda_pids(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The processes of the tree rooted at pid (pid included) that have a /dev/nvidia* device open.

    These are the ones to suspend before CRIU: a process with GPU state left in it makes the dump fail.
    Read from /proc (ppid from stat, fds from fd/ links); processes that vanish meanwhile are skipped."""
    return sorted(p for p in process_tree(pid, proc) if _has_nvidia_fd(proc / str(p) / "fd"))


def process_tree(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """pid and every process below it, from /proc's ppid links (the order of a depth-first walk)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            ppid = int((proc / entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def _has_nvidia_fd(fd_dir: Path) -> bool:
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(fd_dir / name).startswith("/dev/nvidia"):
                return True
        except OSError:
            continue
    return False


def gpu_refusal(gpu_count: int) -> str | None:
    """Why an app with gpu_count GPUs cannot be checkpointed, or None when it can (0 or 1 GPU)."""
    if gpu_count <= 1:
        return None
    return (f"checkpoints of apps with {gpu_count} GPUs are not supported: the driver's checkpoint API "
            f"snapshots one process's device state, and a multi-GPU app's peer mappings/NCCL communicators "
            f"cannot be restored consistently; use one GPU or set checkpoint_enabled: false")
