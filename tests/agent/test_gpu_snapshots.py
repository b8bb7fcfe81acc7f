"""GPU containers around capture and restore (agent/gpu_snapshots.py), against the fake driver of
test_cuda_ckpt.py and a fake /proc; and how the snapshot book and the pool use it. No GPU here: the real
driver path is for a GPU host (bench/gpu_snapshot.py), these check the order and the failure handling."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from beamctl.agent import cuda_ckpt as cc
from beamctl.agent import gpu_snapshots as gs
from beamctl.agent import snapshots as snap_mod
from beamctl.agent.checkpoint import CheckpointFailed, RestoreFailed
from beamctl.protocol.gpus import Gpu
from beamctl.agent.snapshot_compat import refuse
from beamctl.agent.snapshots import Snapshots
from beamctl.agent.store import Store
from tests.agent.test_cuda_ckpt import CHECKPOINTED, FakeDriver, _proc


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A container: 100 (runtime, on the GPU) -> 101 (a helper without GPU) -> 102 (a GPU worker)."""
    proc = tmp_path / "proc"
    _proc(proc, 100, 1, "python3", ["/dev/nvidiactl", "/dev/nvidia0"])
    _proc(proc, 101, 100, "sh", ["/dev/null"])
    _proc(proc, 102, 101, "worker", ["/dev/nvidia-uvm"])
    _proc(proc, 7, 1, "elsewhere", ["/dev/nvidia0"])  # another container's process: never touched
    (proc / "100" / "root" / "dev").mkdir(parents=True)
    (proc / "100" / "root" / "dev" / "nvidiactl").touch()  # the container's own /dev, with the GPU's nodes
    return proc


def driver(tree: Path | None = None, **kw) -> tuple[cc.CudaCheckpoint, FakeDriver]:
    drv = FakeDriver(cuda=kw.pop("cuda", {100, 102, 7}), proc=tree, **kw)
    return cc.load(lib=drv), drv


def test_capture_suspends_runs_the_capture_and_resumes(tree: Path) -> None:
    cuda, drv = driver(tree)
    seen = []
    got = gs.capture(cuda, 100, lambda: seen.append(dict(drv.states)) or "images", tree)
    assert got == "images"
    assert seen == [{100: CHECKPOINTED, 102: CHECKPOINTED}]  # CRIU ran with both checkpointed
    assert drv.calls == [("lock", 100), ("lock", 102), ("checkpoint", 100), ("checkpoint", 102),
                         ("restore", 100), ("restore", 102), ("unlock", 100), ("unlock", 102)]
    assert drv.states == {100: 0, 102: 0}  # running again (--leave-running)


def test_a_failed_criu_capture_still_resumes_the_app(tree: Path) -> None:
    cuda, drv = driver(tree)

    def fails():
        raise CheckpointFailed("checkpoint failed (exit 1)")

    with pytest.raises(CheckpointFailed, match="exit 1"):
        gs.capture(cuda, 100, fails, tree)
    assert drv.states == {100: 0, 102: 0}


def test_a_failed_cuda_checkpoint_leaves_nothing_locked_and_runs_no_criu(tree: Path) -> None:
    cuda, drv = driver(tree, fail={("checkpoint", 102): 909})
    ran = []
    with pytest.raises(CheckpointFailed, match="CUDA checkpoint failed: CUDA checkpoint process 102 failed: "
                                               "CUDA_ERROR_TIMEOUT"):
        gs.capture(cuda, 100, lambda: ran.append(1), tree)
    assert ran == [] and drv.states == {100: 0, 102: 0}


def test_a_failed_resume_means_the_container_is_lost(tree: Path) -> None:
    cuda, drv = driver(tree, fail={("restore", 102): 2})
    with pytest.raises(gs.GpuStateLost, match="could not be brought back.*CUDA_ERROR_OUT_OF_MEMORY"):
        gs.capture(cuda, 100, lambda: "images", tree)


def test_no_gpu_process_no_capture(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _proc(proc, 100, 1, "python3", ["/dev/null"])
    with pytest.raises(CheckpointFailed, match="no process of the container is known to the CUDA driver"):
        gs.capture(driver(proc, cuda={7})[0], 100, lambda: "x", proc)


def test_after_restore_resumes_the_checkpointed_processes(tree: Path) -> None:
    cuda, drv = driver()
    drv.states = {100: CHECKPOINTED, 102: CHECKPOINTED, 7: CHECKPOINTED}  # as CRIU brought them back
    assert gs.after_restore(cuda, 100, tree) == [100, 102]
    assert drv.states == {100: 0, 102: 0, 7: CHECKPOINTED} and ("unlock", 7) not in drv.calls
    drv.states = {100: CHECKPOINTED}
    drv.fail = {("restore", 100): 2}
    with pytest.raises(RestoreFailed, match="CUDA restore failed"):
        gs.after_restore(cuda, 100, tree)


def test_a_restore_a_crius_cuda_plugin_finished_is_kept(tree: Path) -> None:
    """A host whose CRIU loads its CUDA plugin restores and unlocks the processes itself: all running.
    That restore is good: kept (it was thrown away, and the container booted cold)."""
    cuda, drv = driver()
    drv.states = {100: 0, 102: 0}
    assert gs.after_restore(cuda, 100, tree) == [] and drv.calls == []


def test_a_failed_process_or_a_missing_device_fails_the_restore(tree: Path) -> None:
    cuda, drv = driver()
    drv.states = {100: CHECKPOINTED, 102: 3}  # failed: after an out-of-memory restore (cuda-checkpoint#44)
    with pytest.raises(RestoreFailed, match="process 102 is failed in the driver"):
        gs.after_restore(cuda, 100, tree)
    assert drv.calls == []  # nothing half-resumed
    with pytest.raises(RestoreFailed, match="no process the CUDA driver knows"):
        gs.after_restore(driver(cuda={7})[0], 100, tree)
    (tree / "100" / "root" / "dev" / "nvidiactl").unlink()
    with pytest.raises(RestoreFailed, match="has no /dev/nvidiactl"):
        gs.after_restore(cuda, 100, tree)


def test_an_nvml_only_process_is_checkpointed_with_the_app(tree: Path) -> None:
    """On the H200 the driver knew an NVML-only process (GetState `running`) and its checkpoint released
    that process's /dev/nvidia* files: the capture goes on, with it suspended beside the app."""
    _proc(tree, 103, 100, "nvidia-smi", ["/dev/nvidiactl"])
    cuda, drv = driver(tree, cuda={100, 102, 103, 7})
    seen = []
    assert gs.capture(cuda, 100, lambda: seen.append(dict(drv.states)) or "images", tree) == "images"
    assert seen == [{100: CHECKPOINTED, 102: CHECKPOINTED, 103: CHECKPOINTED}]
    assert drv.states == {100: 0, 102: 0, 103: 0}


def test_a_forked_child_still_holding_the_gpu_fails_the_capture_by_name(tree: Path) -> None:
    """A child forked from the CUDA process inherits its /dev/nvidia* files; the driver refuses it
    (NOT_INITIALIZED on the H200) and its files outlive the checkpoint: CRIU could not dump it."""
    _proc(tree, 103, 100, "pt_data_worker", ["/dev/nvidiactl", "/dev/nvidia0"])
    cuda, drv = driver(tree)
    ran = []
    with pytest.raises(CheckpointFailed) as e:
        gs.capture(cuda, 100, lambda: ran.append(1), tree)
    assert e.value.reason.startswith("after the CUDA checkpoint, process 103 (pt_data_worker) still holds "
                                     "/dev/nvidia* without the CUDA driver knowing it: a child forked")
    assert "'spawn' method" in e.value.reason and "NVML" not in e.value.reason
    assert ran == [] and drv.states == {100: 0, 102: 0}  # CRIU never ran; the app runs on


def test_a_known_process_the_checkpoint_did_not_release_is_named_too(tree: Path) -> None:
    cuda, drv = driver(None)  # no fake /proc to move fds in: the checkpoint leaves them all open
    with pytest.raises(CheckpointFailed, match=r"process 100 \(python3\), process 102 \(worker\) still holds "
                                               r"/dev/nvidia\* after the driver's checkpoint: CRIU cannot dump"):
        gs.capture(cuda, 100, lambda: "images", tree)
    assert drv.states == {100: 0, 102: 0}


def test_single_gpu_checkpoints_are_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gs.ENABLE, raising=False)
    assert "experimental" in refuse({"gpu_count": 1}) and gs.ENABLE in refuse({"gpu_count": 1})
    monkeypatch.setenv(gs.ENABLE, "1")
    assert refuse({"gpu_count": 1}) is None
    assert "2 GPUs are not supported" in refuse({"gpu_count": 2})


class Engine:
    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.calls = error, []

    def image_id(self, ref):
        return "sha256:" + "2" * 64

    def capture(self, container_id, folder, timeout_s, gpu=False):
        self.calls.append(gpu)
        folder.mkdir(mode=0o700)
        if self.error:
            raise self.error
        (folder / "pages-1.img").write_bytes(b"x")
        return SimpleNamespace(size_bytes=1, seconds=0.1, digest_s=0.0)


SPEC = {"image": "img", "gpu_count": 1, "gpu_devices": [1], "volumes": []}
GPUS = [Gpu(0, "NVIDIA H100 80GB HBM3", "H100", 81559, "580.65", "GPU-aaaa"),
        Gpu(1, "NVIDIA H200", "H200", 143771, "580.65", "GPU-bbbb")]


def test_a_gpu_snapshot_is_keyed_by_the_pinned_gpus_model_and_driver(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(gs.ENABLE, "1")
    engine = Engine()
    snaps = Snapshots(tmp_path, Store(tmp_path / "a.db"), engine, lambda a, m: None, GPUS)
    assert snaps.capture("app", 1, "c", "h", SPEC)
    assert engine.calls == [True]
    folder = snaps.folder("app", 1)
    assert json.loads((folder / "key.json").read_text())["gpu"] == {"models": ["H200"], "uuids": ["GPU-bbbb"],
                                                                    "driver": "580.65"}
    assert (folder / "gpu.json").exists()
    assert snaps.restorable("app", 1, "h", "img", [1]) is not None
    assert snaps.restorable("app", 1, "h", "img", [0]) is None  # onto an H100: incompatible
    assert "gpu changed" in snaps.describe("app")[1]["reason"]


def test_a_gpu_snapshot_goes_back_onto_its_own_gpu_only(tmp_path: Path, monkeypatch) -> None:
    """Another H200 that took index 1 after a reboot is not the GPU the snapshot came from: cold boot."""
    monkeypatch.setenv(gs.ENABLE, "1")
    store, engine = Store(tmp_path / "a.db"), Engine()
    assert Snapshots(tmp_path, store, engine, lambda a, m: None, GPUS).capture("app", 1, "c", "h", SPEC)
    same = Snapshots(tmp_path, store, engine, lambda a, m: None, GPUS)
    assert same.restorable("app", 1, "h", "img", [1]) is not None
    swapped = [GPUS[0], Gpu(1, "NVIDIA H200", "H200", 143771, "580.65", "GPU-cccc")]
    other = Snapshots(tmp_path, store, engine, lambda a, m: None, swapped)
    assert other.restorable("app", 1, "h", "img", [1]) is None and "gpu changed" in other.describe("app")[1]["reason"]


def test_gpus_are_pinned_by_uuid_when_the_driver_says_them() -> None:
    from beamctl.protocol.gpus import parse

    gpus = parse("0, NVIDIA H200, 143771, 580.65.06, GPU-5f3c0a9e-1d2b-4c3d-8e9f-0a1b2c3d4e5f\n"
                 "1, NVIDIA H200, 143771, 580.65.06\n", strict=True)
    assert [g.uuid for g in gpus] == ["GPU-5f3c0a9e-1d2b-4c3d-8e9f-0a1b2c3d4e5f", ""]  # an older query: none


def test_a_lost_gpu_state_is_recorded_and_raised_for_the_pool(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(gs.ENABLE, "1")
    monkeypatch.setattr(snap_mod, "BACKOFF_S", (0.0, 0.0))
    store = Store(tmp_path / "a.db")
    snaps = Snapshots(tmp_path, store, Engine(gs.GpuStateLost("lost")), lambda a, m: None, GPUS)
    with pytest.raises(gs.GpuStateLost):
        snaps.capture("app", 1, "c", "h", SPEC)
    assert store.snapshot("app", 1)["state"] == "checkpoint_failed"
    assert not snaps.folder("app", 1).with_suffix(".partial").exists()


def test_the_pool_replaces_a_container_whose_gpu_state_was_lost() -> None:
    from tests.agent.test_snapshots import Hooks, Runtime, pool_with, wait_started

    runtime = Runtime()
    try:
        pool, _, events = pool_with(Hooks(capture_error=gs.GpuStateLost("CUDA restore failed")), runtime)
        live = pool.start(1)
        wait_started(pool, live)
        assert live.state == "failed" and "CUDA restore failed; the container is replaced" in live.failure.reason
        assert runtime.released == []  # never released into service
    finally:
        runtime.shutdown()


def test_a_restore_onto_a_gpu_without_room_for_it_is_refused_before_criu(tree: Path, tmp_path: Path) -> None:
    """The snapshot's device memory is measured at capture; a restore onto its GPU with less free than that
    is refused (a cold boot, said why): a restore that runs out of GPU memory leaves the processes failed
    for good (cuda-checkpoint#44)."""
    answers = {"--query-compute-apps=pid,used_memory": "100, 6000\n102, 2000\n7, 9999\n",
               gs.FREE_QUERY: "GPU-bbbb, 7000\nGPU-aaaa, 50000\n"}
    smi = lambda query: answers.get(query)  # noqa: E731
    held = gs.device_memory(100, smi, tree)
    assert held == 8000 << 20  # the container's processes (100 and 102), not another container's (7)
    folder = tmp_path / "snap"
    folder.mkdir()
    gs.record_memory(folder, held)
    (folder / "gpu.json").write_text(json.dumps({"models": ["H200"], "uuids": ["GPU-bbbb"], "driver": "580"}))
    assert gs.pinned_uuids(folder) == ["GPU-bbbb"]
    why = gs.restore_refusal(folder, ["GPU-bbbb"], smi)
    assert why == ("GPU GPU-bbbb has 7000 MiB free, the snapshot held 8000 MiB: restoring it would run out of "
                   "GPU memory")
    assert gs.restore_refusal(folder, ["GPU-aaaa"], smi) is None  # room enough there
    assert gs.restore_refusal(folder, ["GPU-bbbb"], lambda q: None) is None  # nvidia-smi silent: not refused
    (folder / gs.MEMORY_FILE).unlink()
    assert gs.restore_refusal(folder, ["GPU-bbbb"], smi) is None  # not measured at capture
