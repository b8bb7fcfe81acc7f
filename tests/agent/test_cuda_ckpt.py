"""beamctl.agent.cuda_ckpt: the checkpoint API's logic against a fake driver (call order, all-or-nothing
suspend, error names), the /proc walk on a fake tree, the multi-GPU refusal; the real driver on a GPU host."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import pytest

from beamctl.agent import cuda_ckpt as cc

gpu = pytest.mark.skipif(not Path("/dev/nvidia0").exists(), reason="needs an NVIDIA GPU (/dev/nvidia0)")

NAMES = {1: b"CUDA_ERROR_INVALID_VALUE", 3: b"CUDA_ERROR_NOT_INITIALIZED", 304: b"CUDA_ERROR_OPERATING_SYSTEM",
         401: b"CUDA_ERROR_ILLEGAL_STATE", 801: b"CUDA_ERROR_NOT_SUPPORTED", 909: b"CUDA_ERROR_TIMEOUT"}
RUNNING, LOCKED, CHECKPOINTED = 0, 1, 2


# What the real driver answered on an H200 (driver 580.159.04; bench/gpu_driver_probe.py, docs/h200/):
NOT_INITIALIZED = 3  # a process that never opened the driver, and a child forked from a CUDA process
GONE = 304  # CUDA_ERROR_OPERATING_SYSTEM: a pid with no process


class FakeDriver:
    """libcuda's checkpoint calls as a state machine per pid; records (call, pid) in order. As the real
    driver answers: the processes in `cuda` are those that opened the driver in their own right (a CUDA
    context, a bare cuInit, or NVML alone: the driver knows all three, and its checkpoint releases their
    /dev/nvidia* files); any call about another process fails with NOT_INITIALIZED (a forked child that
    only inherited the files too), about a pid in `gone` with GONE; a step out of order with
    ILLEGAL_STATE. fail: {(call, pid): CUresult} makes that call fail without changing state."""

    def __init__(self, cuda: set[int] | tuple[int, ...] = (), fail: dict[tuple[str, int], int] | None = None,
                 version: int = 13000, proc: Path | None = None, gone: set[int] | tuple[int, ...] = ()) -> None:
        self.cuda, self.proc, self.gone = set(cuda), proc, set(gone)  # proc: a fake /proc (fds released)
        self.fail, self.version = dict(fail or {}), version
        self.calls: list[tuple[str, int]] = []
        self.states: dict[int, int] = {}
        self.timeouts: dict[int, int] = {}

    def _step(self, call: str, pid: int, source: int, target: int) -> int:
        self.calls.append((call, pid))
        if (call, pid) in self.fail:
            return self.fail[(call, pid)]
        if pid not in self.cuda:
            return self.unknown(pid)
        if self.states.get(pid, RUNNING) != source:
            return 401  # CUDA_ERROR_ILLEGAL_STATE, as the driver answers a step out of order
        self.states[pid] = target
        if self.proc is not None and call in ("checkpoint", "restore"):
            self._move_gpu_fds(pid, back=call == "restore")
        return 0

    def _move_gpu_fds(self, pid: int, back: bool) -> None:
        """The driver's checkpoint releases the process's /dev/nvidia* files; restore opens them again."""
        fds, kept = self.proc / str(pid) / "fd", self.proc / str(pid) / "fd.released"
        src, dst = (kept, fds) if back else (fds, kept)
        dst.mkdir(exist_ok=True)
        for link in list(src.iterdir()) if src.is_dir() else []:
            if os.readlink(link).startswith("/dev/nvidia"):
                os.rename(link, dst / link.name)

    def cuInit(self, flags: int) -> int:
        return 0

    def cuDriverGetVersion(self, out) -> int:
        out.contents.value = self.version
        return 0

    def cuGetErrorName(self, code: int, out) -> int:
        if code not in NAMES:
            return 1
        out[0] = NAMES[code]
        return 0

    def cuCheckpointProcessLock(self, pid: int, args) -> int:
        self.timeouts[pid] = args.contents.timeoutMs
        return self._step("lock", pid, RUNNING, LOCKED)

    def cuCheckpointProcessCheckpoint(self, pid: int, args) -> int:
        return self._step("checkpoint", pid, LOCKED, CHECKPOINTED)

    def cuCheckpointProcessRestore(self, pid: int, args) -> int:
        return self._step("restore", pid, CHECKPOINTED, LOCKED)

    def cuCheckpointProcessUnlock(self, pid: int, args) -> int:
        return self._step("unlock", pid, LOCKED, RUNNING)

    def unknown(self, pid: int) -> int:
        return GONE if pid in self.gone else NOT_INITIALIZED

    def cuCheckpointProcessGetState(self, pid: int, out) -> int:
        if pid not in self.cuda:
            return self.unknown(pid)
        out.contents.value = self.states.get(pid, RUNNING)
        return 0

    def cuCheckpointProcessGetRestoreThreadId(self, pid: int, out) -> int:
        if pid not in self.cuda:
            return self.unknown(pid)
        out.contents.value = pid + 1
        return 0


def fake(**kw) -> tuple[cc.CudaCheckpoint, FakeDriver]:
    drv = FakeDriver(**kw)
    return cc.load(lib=drv), drv


def test_structs_are_the_driver_s_64_byte_layouts() -> None:
    for s in (cc.LockArgs, cc.CheckpointArgs, cc.RestoreArgs, cc.UnlockArgs):
        assert ctypes.sizeof(s) == 64
    assert cc.LockArgs.timeoutMs.offset == 0 and cc.LockArgs.reserved1.offset == 8
    assert cc.RestoreArgs.gpuPairsCount.offset == 8 and cc.RestoreArgs.reserved1.offset == 56


def test_single_calls_states_and_error_names() -> None:
    cuda, drv = fake(cuda={5, 6})
    assert cuda.driver_version() == 13000 and cuda.state(5) == "running"
    cuda.lock(5, 2500)
    assert drv.timeouts[5] == 2500 and cuda.state(5) == "locked"
    cuda.checkpoint(5)
    assert cuda.state(5) == "checkpointed" and cuda.restore_thread_id(5) == 6
    with pytest.raises(cc.CudaCheckpointError, match=r"CUDA unlock process 5 failed: CUDA_ERROR_ILLEGAL_STATE"):
        cuda.unlock(5)  # still checkpointed: the driver refuses
    cuda.restore(5)
    cuda.unlock(5)
    assert cuda.state(5) == "running"
    drv.states[6] = 3
    assert cuda.state(6) == "failed"
    drv.states[6] = 17
    assert cuda.state(6) == "state-17"
    assert cuda.error_name(909) == "CUDA_ERROR_TIMEOUT"  # from the driver
    assert cuda.error_name(100) == "CUDA_ERROR_NO_DEVICE"  # the driver has no name for it here: our table
    assert cuda.error_name(12345) == "CUresult 12345"
    with pytest.raises(cc.CudaCheckpointError, match="get state of process 8 failed: CUDA_ERROR_NOT_INITIALIZED"):
        cuda.state(8)  # never opened the driver: it knows no state of it (the fake is as strict)
    with pytest.raises(cc.CudaCheckpointError, match="lock process 8 failed: CUDA_ERROR_NOT_INITIALIZED"):
        cuda.lock(8, 100)
    lock_fails, _ = fake(cuda={7}, fail={("lock", 7): 909})
    with pytest.raises(cc.CudaCheckpointError) as e:
        lock_fails.lock(7, 100)
    assert e.value.reason == "CUDA lock process 7 failed: CUDA_ERROR_TIMEOUT"


def test_suspend_locks_all_then_checkpoints_all_and_resume_reverses() -> None:
    cuda, drv = fake(cuda={11, 12})
    times = cc.suspend(cuda, [11, 12], timeout_ms=3000)
    assert drv.calls == [("lock", 11), ("lock", 12), ("checkpoint", 11), ("checkpoint", 12)]
    assert set(times) == {"cuda_lock", "cuda_checkpoint"} and drv.timeouts == {11: 3000, 12: 3000}
    drv.calls.clear()
    times = cc.resume(cuda, [11, 12])
    assert drv.calls == [("restore", 11), ("restore", 12), ("unlock", 11), ("unlock", 12)]
    assert set(times) == {"cuda_restore", "cuda_unlock"} and drv.states == {11: RUNNING, 12: RUNNING}
    drv.calls.clear()
    cc.resume(cuda, [11, 12])  # nothing to do for running processes: no calls, no error
    assert drv.calls == []


def test_a_failed_checkpoint_midway_leaves_nothing_locked() -> None:
    cuda, drv = fake(cuda={11, 12, 13}, fail={("checkpoint", 12): 801})
    with pytest.raises(cc.CudaCheckpointError, match="CUDA checkpoint process 12 failed: CUDA_ERROR_NOT_SUPPORTED"):
        cc.suspend(cuda, [11, 12, 13], timeout_ms=0)
    assert drv.calls == [("lock", 11), ("lock", 12), ("lock", 13), ("checkpoint", 11), ("checkpoint", 12),
                         ("restore", 11), ("unlock", 11), ("unlock", 12), ("unlock", 13)]
    assert all(s == RUNNING for s in drv.states.values())


def test_a_failed_lock_unlocks_the_ones_before() -> None:
    cuda, drv = fake(cuda={11, 12, 13}, fail={("lock", 13): 909})
    with pytest.raises(cc.CudaCheckpointError, match="lock process 13 failed: CUDA_ERROR_TIMEOUT"):
        cc.suspend(cuda, [11, 12, 13], timeout_ms=10)
    assert drv.calls == [("lock", 11), ("lock", 12), ("lock", 13), ("unlock", 11), ("unlock", 12)]
    assert all(s == RUNNING for s in drv.states.values())


def test_a_failed_rollback_is_named_too() -> None:
    cuda, drv = fake(cuda={11, 12}, fail={("checkpoint", 12): 801, ("unlock", 11): 1})
    with pytest.raises(cc.CudaCheckpointError) as e:
        cc.suspend(cuda, [11, 12], timeout_ms=10)
    assert e.value.reason == ("CUDA checkpoint process 12 failed: CUDA_ERROR_NOT_SUPPORTED; rollback also failed: "
                              "CUDA unlock process 11 failed: CUDA_ERROR_INVALID_VALUE")
    assert drv.states[12] == RUNNING  # the others were still rolled back


def test_resume_failure_names_the_process() -> None:
    cuda, drv = fake(cuda={11, 12}, fail={("restore", 12): 2})
    cc.suspend(cuda, [11, 12], timeout_ms=10)
    with pytest.raises(cc.CudaCheckpointError, match="CUDA restore process 12 failed: CUDA_ERROR_OUT_OF_MEMORY"):
        cc.resume(cuda, [11, 12])
    del drv.fail[("restore", 12)]
    cc.resume(cuda, [11, 12])  # a retry finishes the job: 11 is skipped by state
    assert drv.states == {11: RUNNING, 12: RUNNING}


def test_load_refusals(tmp_path: Path) -> None:
    with pytest.raises(cc.CudaCheckpointError, match=r"no NVIDIA driver library .*nope\.so.*install the NVIDIA driver"):
        cc.load(str(tmp_path / "nope.so"))
    with pytest.raises(cc.CudaCheckpointError, match=r"speaks CUDA 12\.4; checkpoints need driver >= 570"):
        cc.load(lib=FakeDriver(version=12040))


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this host has a GPU")
def test_load_without_a_driver_says_so() -> None:
    with pytest.raises(cc.CudaCheckpointError, match="no NVIDIA driver library libcuda.so.1|cuInit"):
        cc.load()


def _proc(root: Path, pid: int, ppid: int, comm: str, fds: list[str]) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")
    for i, target in enumerate(fds):
        os.symlink(target, d / "fd" / str(i))


def test_cuda_pids_walks_the_tree_and_keeps_the_gpu_holders(tmp_path: Path) -> None:
    _proc(tmp_path, 100, 1, "app", ["/dev/null", "pipe:[123]"])
    _proc(tmp_path, 101, 100, "weird) S 5 (name", ["/dev/nvidia0", "/dev/nvidiactl"])  # ')' in the name
    _proc(tmp_path, 102, 101, "worker", ["/dev/nvidia-uvm"])
    _proc(tmp_path, 103, 100, "logger", ["/tmp/log"])
    _proc(tmp_path, 200, 1, "other-app", ["/dev/nvidia0"])  # not in the tree
    (tmp_path / "self").mkdir()
    (tmp_path / "300").mkdir()  # vanished while we read: no stat, skipped
    assert cc.cuda_pids(100, proc=tmp_path) == [101, 102]
    assert cc.cuda_pids(102, proc=tmp_path) == [102]
    assert cc.cuda_pids(103, proc=tmp_path) == []
    _proc(tmp_path, 104, 1, "gpu-root", ["/dev/nvidia1"])
    assert cc.cuda_pids(104, proc=tmp_path) == [104]


def test_resume_refuses_a_failed_process_and_touches_nothing() -> None:
    """After a restore that hit GPU out-of-memory the driver leaves the process failed and every later
    restore fails (cuda-checkpoint#44): resume names it and makes no call, rather than skip it silently."""
    cuda, drv = fake(cuda={11, 12})
    cc.suspend(cuda, [11, 12], timeout_ms=10)
    drv.states[12] = 3
    drv.calls.clear()
    with pytest.raises(cc.CudaCheckpointError, match="process 12 is failed in the CUDA driver"):
        cc.resume(cuda, [11, 12])
    assert drv.calls == []
    drv.states[12] = 17
    with pytest.raises(cc.CudaCheckpointError, match="process 12 is state-17"):
        cc.resume(cuda, [11, 12])


def test_the_driver_says_which_processes_are_its_own(tmp_path: Path) -> None:
    """On the H200 the driver answered GetState for a CUDA process, a bare cuInit and an NVML-only one
    (`running`, each lockable, and its checkpoint released their /dev/nvidia* files), and refused a
    child forked from the CUDA process (NOT_INITIALIZED) though it holds the inherited files."""
    _proc(tmp_path, 100, 1, "python3", ["/dev/nvidiactl", "/dev/nvidia0"])  # CUDA
    _proc(tmp_path, 101, 100, "nvidia-smi", ["/dev/nvidiactl"])  # NVML only: known to the driver all the same
    _proc(tmp_path, 102, 100, "forked", ["/dev/nvidia0"])  # a fork: the fds, not the driver's attention
    _proc(tmp_path, 103, 100, "mapped", [])  # a context reached through mappings only: no fd
    cuda, drv = fake(cuda={100, 101, 103})
    drv.states[103] = LOCKED
    assert cc.cuda_processes(cuda, 100, tmp_path) == {100: "running", 101: "running", 103: "locked"}
    assert cc.cuda_pids(100, proc=tmp_path) == [100, 101, 102]  # what open files alone would have said
    assert cc.gpu_holders([100, 101, 103], tmp_path) == {100: "python3", 101: "nvidia-smi"}
    with pytest.raises(cc.CudaCheckpointError, match="process 102 failed: CUDA_ERROR_NOT_INITIALIZED"):
        cuda.state(102)


def test_a_restored_process_is_locked_and_checkpointed_before_it_is_killed() -> None:
    cuda, drv = fake(cuda={11, 12, 13}, gone={99})
    drv.states[12] = LOCKED
    assert cc.quiesce(cuda, [11, 12, 13, 99], timeout_ms=500) == [
        "CUDA get state of process 99 failed: CUDA_ERROR_OPERATING_SYSTEM"]
    assert drv.states == {11: CHECKPOINTED, 12: CHECKPOINTED, 13: CHECKPOINTED}
    assert drv.calls == [("lock", 11), ("checkpoint", 11), ("checkpoint", 12), ("lock", 13), ("checkpoint", 13)]


def test_cuda_pids_of_this_process_on_a_host_without_gpu_use() -> None:
    assert cc.cuda_pids(os.getpid()) == []  # pytest holds no /dev/nvidia*


def test_gpu_refusal() -> None:
    assert cc.gpu_refusal(0) is None and cc.gpu_refusal(1) is None
    why = cc.gpu_refusal(4)
    assert why is not None and why.startswith("checkpoints of apps with 4 GPUs are not supported")
    assert "NCCL" in why and why.endswith("use one GPU or set checkpoint_enabled: false")


@gpu
def test_the_real_driver_has_the_checkpoint_api() -> None:
    cuda = cc.load()
    assert cuda.driver_version() >= cc.MIN_DRIVER_API
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        # never opened the driver: refused, with the code FakeDriver gives (seen on an H200, driver 580)
        with pytest.raises(cc.CudaCheckpointError, match="CUDA_ERROR_NOT_INITIALIZED"):
            cuda.state(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
