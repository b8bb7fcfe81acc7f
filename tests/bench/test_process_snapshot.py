"""bench/process_snapshot.py with the real CRIU: a Python process holding 50 MB of random bytes and a
counter is dumped, restored (same PID, same memory, same counter) and asked for its checksum by SIGUSR1;
the GPU steps are driven through a fake driver (test_cuda_ckpt.FakeDriver) around the real CRIU."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beamctl.agent import cuda_ckpt as cc
from bench import process_snapshot as ps
from tests.agent.test_cuda_ckpt import FakeDriver



def criu_test(fn):
    """Real CRIU: skipped (before any fixture starts a process) without criu on PATH or without root."""
    for mark in (pytest.mark.integration,
                 pytest.mark.skipif(shutil.which("criu") is None, reason="needs CRIU on PATH (scripts/install-criu.sh)"),
                 pytest.mark.skipif(os.geteuid() != 0, reason="CRIU dumps and restores need root")):
        fn = mark(fn)
    return fn


APP = r"""
import hashlib, os, signal, sys
out = sys.argv[1]
buf = bytearray(os.urandom(50 << 20))
n = 0
def report(*_):
    global n
    n += 1
    with open(out + ".tmp", "w") as f:  # opened and closed each time: CRIU finds no file of ours open
        f.write(f"{hashlib.sha256(buf).hexdigest()} {n} {os.getpid()}")
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, report)
report()
while True:
    signal.pause()
"""
PR_SET_CHILD_SUBREAPER = 36


class App:
    """The process under test, started as an agent would: own session, stdio to files."""

    def __init__(self, folder: Path) -> None:
        self.state = folder / "state"
        (folder / "app.py").write_text(APP)
        with open(folder / "app.py") as stdin, open(folder / "app.log", "w") as log:
            self.proc = subprocess.Popen([sys.executable, str(folder / "app.py"), str(self.state)], stdin=stdin,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.first = self.wait_report(1)

    def wait_report(self, n: int, pid: int | None = None) -> tuple[str, int, int]:
        deadline = time.monotonic() + 15  # a loaded CI machine
        while time.monotonic() < deadline:
            try:
                digest, count, at = self.state.read_text().split()
                if int(count) == n:
                    return digest, int(count), int(at)
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        raise AssertionError(f"no report {n} from {pid or self.pid}: {self.state.read_text()!r}")

    def ask(self, pid: int, n: int) -> tuple[str, int, int]:
        os.kill(pid, signal.SIGUSR1)
        return self.wait_report(n, pid)


@pytest.fixture
def reaper():
    """A restored tree is reparented to the nearest subreaper: be it, so we can reap what we kill (pid 1
    here may not reap). Yields kill(pid): SIGKILL + wait."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    mine: list[int] = []

    def kill(pid: int) -> None:
        mine.append(pid)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        except ProcessLookupError:
            pass

    yield kill
    for pid in mine:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def app(tmp_path: Path, reaper):
    a = App(tmp_path)
    yield a
    reaper(a.pid)
    if a.proc.poll() is None:
        a.proc.kill()
    a.proc.wait()


# ---- without CRIU -------------------------------------------------------------------------------

def test_restore_refuses_an_unfinished_or_damaged_snapshot(tmp_path: Path) -> None:
    with pytest.raises(ps.SnapshotRestoreFailed, match="no readable beamctl-process.json .*not a finished dump"):
        ps.restore(tmp_path)
    (tmp_path / "pages-1.img").write_bytes(b"x" * 100)
    (tmp_path / ps.META).write_text(json.dumps({"root_pid": 5, "cuda_pids": [], "files": {"pages-1.img": 4096}}))
    with pytest.raises(ps.SnapshotRestoreFailed, match=r"pages-1.img has 100 bytes, 4096 when dumped \(damaged\)"):
        ps.restore(tmp_path, criu="/nonexistent/criu")  # refused before CRIU runs (it would loop forever)
    (tmp_path / "pages-1.img").unlink()
    with pytest.raises(ps.SnapshotRestoreFailed, match="lacks pages-1.img"):
        ps.restore(tmp_path)


def test_dump_refuses_a_used_folder_and_says_why_a_gpu_step_failed(tmp_path: Path) -> None:
    (tmp_path / "old.img").write_text("x")
    with pytest.raises(ps.SnapshotFailed, match="is not empty: give each snapshot its own folder"):
        ps.dump(os.getpid(), tmp_path)
    drv = FakeDriver(cuda={42}, fail={("lock", 42): 909})
    with pytest.raises(ps.SnapshotFailed, match=r"GPU checkpoint of process 42 failed \(nothing dumped, app "
                                               r"running\): CUDA lock process 42 failed: CUDA_ERROR_TIMEOUT"):
        ps.dump(42, tmp_path / "new", cuda=cc.load(lib=drv), cuda_pids=[42], criu="/nonexistent/criu")
    assert drv.calls == [("lock", 42)] and not any((tmp_path / "new").iterdir())


def test_warm_reads_every_image(tmp_path: Path) -> None:
    for i, size in enumerate((0, 1, 5 << 20, (3 << 20) + 7)):
        (tmp_path / f"pages-{i}.img").write_bytes(os.urandom(size))
    (tmp_path / "dump.log").write_text("not read")
    got, seconds = ps.warm(tmp_path, threads=3, chunk=1 << 20)
    assert got == ps.images_size(tmp_path) == (8 << 20) + 8 and seconds >= 0


# ---- with CRIU ----------------------------------------------------------------------------------

@criu_test
@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_dump_kill_restore_keeps_memory_and_pid(app: App, tmp_path: Path, reaper, where: str,
                                                request: pytest.FixtureRequest) -> None:
    if where == "tmpfs":
        if not Path("/dev/shm").is_dir():
            pytest.skip("no /dev/shm")
        images = Path("/dev/shm") / f"beamctl-test-{os.getpid()}-{tmp_path.name}"
        request.addfinalizer(lambda: shutil.rmtree(images, ignore_errors=True))
    else:
        images = tmp_path / "snap"
    res = ps.dump(app.pid, images, timeout_s=30)
    assert app.proc.wait(timeout=5) == -signal.SIGKILL  # CRIU killed it once dumped; reaped: its PID is free
    assert res.size_bytes > 50e6 and set(res.breakdown) == {"criu_dump"} and res.cuda_pids == []
    assert stat.S_IMODE(images.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in images.iterdir())
    back = ps.restore(images, timeout_s=30)
    try:
        assert back.pid == app.pid and set(back.breakdown) == {"criu_restore"}
        digest, count, at = app.ask(back.pid, 2)
        assert (digest, at) == (app.first[0], app.pid) and count == 2  # the same bytes, the counter went on
        print(f"\n[{where}] {res.size_bytes / 1e6:.1f} MB: dump {res.seconds:.3f} s "
              f"(criu {res.breakdown['criu_dump']:.3f}), restore {back.seconds:.3f} s")
    finally:
        reaper(back.pid)


@criu_test
def test_leave_running_then_restore_after_the_original_ends(app: App, tmp_path: Path, reaper) -> None:
    res = ps.dump(app.pid, tmp_path / "snap", leave_running=True, timeout_s=30)
    assert app.ask(app.pid, 2)[1] == 2 and app.ask(app.pid, 3)[1] == 3  # the original goes on
    with pytest.raises(ps.SnapshotRestoreFailed, match="CRIU restore from .* failed") as e:
        ps.restore(tmp_path / "snap", timeout_s=30)  # its PID is still taken
    assert e.value.log_tail and app.ask(app.pid, 4)[1] == 4  # a failed restore leaves the original alone
    app.proc.kill()
    app.proc.wait()
    back = ps.restore(tmp_path / "snap", timeout_s=30)
    try:
        digest, count, _ = app.ask(back.pid, 2)  # the counter as dumped (1), not as the original left it (4)
        assert digest == app.first[0] and count == 2 and res.seconds < 10
    finally:
        reaper(back.pid)


@criu_test
def test_gpu_steps_wrap_criu_in_order(app: App, tmp_path: Path, reaper) -> None:
    drv = FakeDriver(cuda={app.pid})
    cuda = cc.load(lib=drv)
    res = ps.dump(app.pid, tmp_path / "snap", cuda=cuda, cuda_pids=[app.pid], timeout_s=30)
    app.proc.wait(timeout=5)
    assert drv.calls == [("lock", app.pid), ("checkpoint", app.pid)]
    assert list(res.breakdown) == ["cuda_lock", "cuda_checkpoint", "criu_dump"] and res.cuda_pids == [app.pid]
    drv.calls.clear()
    back = ps.restore(tmp_path / "snap", cuda=cuda, timeout_s=30)  # the pids come from the dump's record
    try:
        assert drv.calls == [("restore", app.pid), ("unlock", app.pid)]
        assert list(back.breakdown) == ["criu_restore", "cuda_restore", "cuda_unlock"]
        assert app.ask(back.pid, 2)[0] == app.first[0]
    finally:
        reaper(back.pid)


@criu_test
def test_a_failed_dump_gives_the_gpu_state_back_and_names_criu_s_reason(tmp_path: Path) -> None:
    gone = 4_000_000  # above any pid_max: no such process (the fake driver is told it has a context)
    drv = FakeDriver(cuda={gone})
    with pytest.raises(ps.SnapshotFailed, match=f"CRIU dump of process {gone} failed .*No such process") as e:
        ps.dump(gone, tmp_path / "snap", cuda=cc.load(lib=drv), cuda_pids=[gone], timeout_s=30)
    assert any("Error" in line for line in e.value.log_tail)
    assert drv.calls == [("lock", gone), ("checkpoint", gone), ("restore", gone), ("unlock", gone)]


@criu_test
def test_a_failed_gpu_restore_kills_the_restored_process(app: App, tmp_path: Path, reaper) -> None:
    drv = FakeDriver(cuda={app.pid})
    ps.dump(app.pid, tmp_path / "snap", cuda=cc.load(lib=drv), cuda_pids=[app.pid], timeout_s=30)
    app.proc.wait(timeout=5)
    drv.fail[("restore", app.pid)] = 2
    with pytest.raises(ps.SnapshotRestoreFailed, match=f"GPU restore of process {app.pid} failed .*OUT_OF_MEMORY"):
        ps.restore(tmp_path / "snap", cuda=cc.load(lib=drv), timeout_s=30)
    reaper(app.pid)  # reaps the killed restored process (it is ours as subreaper)
    assert not Path(f"/proc/{app.pid}").exists()

