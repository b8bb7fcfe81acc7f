"""GPU containers around a CRIU capture and restore: the CUDA driver's checkpoint API first (issue 6).

CRIU cannot dump a process that holds GPU state. So before `runc checkpoint`, every CUDA process of the
container is locked and checkpointed (its device memory moves into its own host memory, its /dev/nvidia*
handles are released); CRIU then sees plain processes, and the app goes on after resume (restore, then
unlock), with --leave-running. After `docker start --checkpoint`, the restored processes are still in
the driver's `checkpointed` state: they are restored and unlocked before the runtime is released.

EXPERIMENTAL: tested against a fake driver only; no GPU has been lent to this project yet. The agent
uses it only with BEAMCTL_GPU_CHECKPOINTS=1 in its environment (snapshot_compat.refuse says so otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

from beamctl.agent import cuda_ckpt
from beamctl.agent.checkpoint import CheckpointFailed, RestoreFailed

LOCK_TIMEOUT_MS = 10_000  # the app's running kernels finish first; a stuck one fails the capture, not the app
ENABLE = "BEAMCTL_GPU_CHECKPOINTS"
T = TypeVar("T")


class GpuStateLost(CheckpointFailed):
    """The capture is over but the app's GPU state could not be brought back: the container is broken
    and must be replaced (the pool fails this start rather than serve from it)."""


def enabled(env: dict[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get(ENABLE, "") == "1"


def capture(cuda: cuda_ckpt.CudaCheckpoint, root_pid: int, run_capture: Callable[[], T],
            proc: Path = Path("/proc")) -> T:
    """suspend the container's CUDA processes, run_capture() (runc checkpoint --leave-running), resume."""
    pids = cuda_ckpt.cuda_pids(root_pid, proc)
    if not pids:
        raise CheckpointFailed("no process of the container has the GPU open (/dev/nvidia*): nothing for the "
                               "driver to checkpoint; was on_start run on the GPU?")
    try:
        cuda_ckpt.suspend(cuda, pids, LOCK_TIMEOUT_MS)
    except cuda_ckpt.CudaCheckpointError as e:  # suspend leaves nothing locked
        raise CheckpointFailed(f"CUDA checkpoint failed: {e.reason}") from None
    failure: CheckpointFailed | None = None
    try:
        result = run_capture()
    except CheckpointFailed as e:
        failure = e
    try:
        cuda_ckpt.resume(cuda, pids)
    except cuda_ckpt.CudaCheckpointError as e:
        raise GpuStateLost(f"the app's GPU state could not be brought back after the checkpoint: {e.reason}"
                           + (f" (and the capture failed: {failure.reason})" if failure else "")) from None
    if failure is not None:
        raise failure
    return result


def after_restore(cuda: cuda_ckpt.CudaCheckpoint, root_pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Restore and unlock every process of the restored container that the driver holds `checkpointed`
    (their /dev/nvidia* handles were released at capture, so they are found by asking the driver)."""
    held = []
    for pid in cuda_ckpt.process_tree(root_pid, proc):
        try:
            if cuda.state(pid) == "checkpointed":
                held.append(pid)
        except cuda_ckpt.CudaCheckpointError:
            continue  # not a CUDA process
    if not held:
        raise RestoreFailed("the restored container has no process in the driver's checkpointed state: the "
                            "snapshot was not taken with the GPU checkpoint")
    try:
        cuda_ckpt.resume(cuda, held)
    except cuda_ckpt.CudaCheckpointError as e:
        raise RestoreFailed(f"CUDA restore failed: {e.reason}") from None
    return held
