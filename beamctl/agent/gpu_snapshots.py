"""GPU containers around a CRIU capture and restore: the CUDA driver's checkpoint API first (issue 6).

CRIU cannot dump a process that holds GPU state. So before `runc checkpoint`, every CUDA process of the
container is locked and checkpointed (its device memory moves into its own host memory, its /dev/nvidia*
handles are released); CRIU then sees plain processes, and the app goes on after resume (restore, then
unlock), with --leave-running. After `docker start --checkpoint`, the restored processes are still in
the driver's `checkpointed` state: they are restored and unlocked before the runtime is released.

EXPERIMENTAL: capture and after_restore ran on an H200 (driver 580) against a live CUDA process, the
driver steps around CRIU in bench/gpu_snapshot.py; inside a container only against a fake driver (that
machine had no Docker). The agent uses it only with BEAMCTL_GPU_CHECKPOINTS=1 in its environment
(snapshot_compat.refuse says so otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, TypeVar

from beamctl.agent import cuda_ckpt
from beamctl.agent.checkpoint import CheckpointFailed, RestoreFailed

MEMORY_FILE = "gpu-memory.json"  # in a GPU snapshot: the device memory its processes held at capture
FREE_QUERY = "--query-gpu=uuid,memory.free"
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
    """suspend the container's CUDA processes, run_capture() (runc checkpoint --leave-running), resume.
    The CUDA processes are those the driver knows (cuda_ckpt.cuda_processes: an NVML-only one too, whose
    files the checkpoint releases as well, as seen on an H200); once they are checkpointed, a process of
    the container still holding /dev/nvidia* (a child forked from a CUDA process) fails the capture by
    name before CRIU runs: CRIU could not dump it."""
    known = cuda_ckpt.cuda_processes(cuda, root_pid, proc)
    if not known:
        raise CheckpointFailed("no process of the container is known to the CUDA driver: nothing for it to "
                               "checkpoint; was on_start run on the GPU?")
    pids = sorted(known)
    try:
        cuda_ckpt.suspend(cuda, pids, LOCK_TIMEOUT_MS)
    except cuda_ckpt.CudaCheckpointError as e:  # suspend leaves nothing locked
        raise CheckpointFailed(f"CUDA checkpoint failed: {e.reason}") from None
    failure: CheckpointFailed | None = None
    holders = cuda_ckpt.gpu_holders(cuda_ckpt.process_tree(root_pid, proc), proc)
    try:
        if holders:
            raise CheckpointFailed(_holders_reason(holders, known))
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


def _holders_reason(holders: dict[int, str], known: dict[int, str]) -> str:
    """Why CRIU cannot dump the container: processes still holding /dev/nvidia* after the checkpoint."""
    forked = {p: n for p, n in holders.items() if p not in known}
    released_not = {p: n for p, n in holders.items() if p in known}
    parts = []
    if forked:
        parts.append(", ".join(f"process {p} ({n})" for p, n in sorted(forked.items()))
                     + " still holds /dev/nvidia* without the CUDA driver knowing it: a child forked from a CUDA "
                       "process (a DataLoader or multiprocessing worker started with fork) inherits the GPU's "
                       "files but not the driver's state, so the checkpoint cannot release them; start such "
                       "workers with the 'spawn' method, or before the app first uses CUDA")
    if released_not:
        parts.append(", ".join(f"process {p} ({n})" for p, n in sorted(released_not.items()))
                     + " still holds /dev/nvidia* after the driver's checkpoint")
    return "after the CUDA checkpoint, " + "; ".join(parts) + ": CRIU cannot dump the container"


def after_restore(cuda: cuda_ckpt.CudaCheckpoint, root_pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Restore and unlock every process of the restored container that the driver holds `checkpointed`
    (their /dev/nvidia* handles were released at capture, so they are found by asking the driver).

    One owner of the GPU steps: the agent (hosts/criu.py points CRIU's plugin folder at an empty one, so
    no CRIU CUDA plugin restores them first). Should a host's CRIU load one anyway, it restores and
    unlocks the processes itself; finding them all running, this takes the restore as done rather than
    throw a good one away. A process `failed` (or in a state this code does not know) fails the restore."""
    if not (proc / str(root_pid) / "root" / "dev" / "nvidiactl").exists() and (proc / str(root_pid)).exists():
        raise RestoreFailed("the restored container has no /dev/nvidiactl: it was not started with the GPU "
                            "its snapshot needs")
    known = cuda_ckpt.cuda_processes(cuda, root_pid, proc)
    if not known:
        raise RestoreFailed("the restored container has no process the CUDA driver knows: the snapshot was "
                            "not taken with the GPU checkpoint")
    bad = {p: st for p, st in known.items() if st not in cuda_ckpt.RESUMABLE}
    if bad:
        raise RestoreFailed("CUDA restore failed: " + "; ".join(f"process {p} is {st} in the driver"
                                                                for p, st in sorted(bad.items())))
    held = sorted(p for p, st in known.items() if st in ("checkpointed", "locked"))
    if not held:
        return []  # all running: a CRIU CUDA plugin did the steps (see above)
    try:
        cuda_ckpt.resume(cuda, held)
    except cuda_ckpt.CudaCheckpointError as e:
        raise RestoreFailed(f"CUDA restore failed: {e.reason}") from None
    return held


Smi = Callable[..., "str | None"]  # nvidia-smi's CSV for a query (usage._smi), None when it cannot say


def device_memory(root_pid: int, smi: Smi, proc: Path = Path("/proc")) -> int | None:
    """Bytes of GPU memory the container's processes hold now (nvidia-smi's compute apps), None if unknown."""
    from beamctl.agent import usage

    text = smi(usage.APPS_QUERY)
    if text is None:
        return None
    held = usage.gpu_processes(text)
    return sum(held.get(p, 0) for p in cuda_ckpt.process_tree(root_pid, proc))


def record_memory(folder: Path, held: int | None) -> None:
    if held is not None:
        (folder / MEMORY_FILE).write_text(json.dumps({"bytes": held}))


def restore_refusal(folder: Path, uuids: list[str], smi: Smi) -> str | None:
    """Why this GPU snapshot must not be restored now (its pinned GPU has less free memory than it held),
    or None. A restore that runs out of GPU memory leaves its processes `failed` in the driver, and every
    later restore of them fails too (cuda-checkpoint#44): better a cold boot, said why, than that."""
    try:
        needed = int(json.loads((folder / MEMORY_FILE).read_text())["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not measured at capture: nothing to compare
    text = smi(FREE_QUERY)
    if text is None:
        return None
    free: dict[str, int] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[1].isdigit():
            free[parts[0]] = int(parts[1]) << 20
    for uuid in uuids:
        if uuid in free and free[uuid] < needed:
            return (f"GPU {uuid} has {free[uuid] >> 20} MiB free, the snapshot held {needed >> 20} MiB: "
                    "restoring it would run out of GPU memory")
    return None


def pinned_uuids(folder: Path) -> list[str]:
    from beamctl.agent.container_args import GPU_FILE

    try:
        return [u for u in json.loads((folder / GPU_FILE).read_text()).get("uuids", []) if u and u != "?"]
    except (OSError, ValueError, AttributeError):
        return []

