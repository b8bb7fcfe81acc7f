"""The agent's snapshot book (agent/snapshots.py) and the pool's checkpoint handshake, with fakes for the
engine and the runtime. The real runc/CRIU path is tests/agent/test_checkpoint_agent.py."""

from __future__ import annotations

import json
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from beamctl.agent import digests
from beamctl.agent import snapshots as snap_mod
from beamctl.agent.checkpoint import CaptureResult, CheckpointFailed, RestoreFailed
from beamctl.agent.pool import Pool
from beamctl.agent.snapshot_compat import cache_dir_note, refuse
from beamctl.agent.snapshots import Snapshots
from beamctl.agent.store import Store

SPEC = {"image": "beamctl/app:1", "gpu_count": 0, "cache_dir": "/data/cache",
        "volumes": [{"name": "data", "mount_path": "/data"}]}


class Engine:
    """Containers.capture/image_id as the snapshot book uses them; `fail` scripts the captures' errors."""

    def __init__(self, fail: list[str] | None = None) -> None:
        self.fail, self.captures = list(fail or []), 0

    def image_id(self, ref: str) -> str:
        return "sha256:" + "1" * 64

    def capture(self, container_id: str, folder: Path, timeout_s: float, gpu: bool = False):
        self.captures += 1
        folder.mkdir(mode=0o700)
        if self.fail:
            raise CheckpointFailed(self.fail.pop(0))
        (folder / "pages-1.img").write_bytes(b"x" * 1000)
        (folder / "manifest.json").write_text(digests.manifest_text(folder, ["pages-1.img"]))
        return CaptureResult(folder, 1000, 0.25, 1, 0.01)


@pytest.fixture
def book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(snap_mod, "BACKOFF_S", (0.0, 0.0))
    events: list[str] = []
    engine = Engine()
    store = Store(tmp_path / "agent.db")
    return Snapshots(tmp_path, store, engine, lambda app, m: events.append(m)), engine, store, events


def test_a_capture_lands_whole_root_only_with_its_key(book) -> None:
    snaps, engine, store, events = book
    assert snaps.wants_capture("app", 1)
    assert snaps.capture("app", 1, "c" * 64, "argshash", SPEC)
    folder = snaps.folder("app", 1)
    assert not folder.with_suffix(".partial").exists() and (folder / "pages-1.img").exists()
    assert stat.S_IMODE(snaps.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "key.json").stat().st_mode) == 0o600
    key = json.loads((folder / "key.json").read_text())
    assert key["image_id"] == engine.image_id("x") and key["create_args_hash"] == "argshash"
    assert snaps.describe("app") == {1: {"state": "ready", "reason": None, "size_bytes": 1000, "capture_s": 0.25,
                                         "in_memory": False}}  # the book's default budget: none held
    assert not snaps.wants_capture("app", 1)
    assert events[-1] == "checkpoint of v1 ready: 1.0 kB in 0.25 s + digests 0.01 s"


def test_transient_failures_are_retried_inside_one_start(book) -> None:
    snaps, engine, store, events = book
    engine.fail = ["checkpoint of c failed (exit 1): Can't dump ghost file", "timed out"]
    assert snaps.capture("app", 1, "c", "h", SPEC)
    assert engine.captures == 3 and "3 tries" in events[-1]


def test_a_failed_capture_is_recorded_and_not_retried_until_a_redeploy(book) -> None:
    snaps, engine, store, events = book
    engine.fail = ["a", "b", "c"]
    assert not snaps.capture("app", 1, "c", "h", SPEC)
    assert engine.captures == 3  # bounded
    row = store.snapshot("app", 1)
    assert row["state"] == "checkpoint_failed" and row["reason"] == "c" and row["failures"] == 1
    assert not snaps.folder("app", 1).exists() and not snaps.folder("app", 1).with_suffix(".partial").exists()
    assert not snaps.wants_capture("app", 1)  # cold boots do not try again...
    assert "a redeploy tries again" in events[-1]
    assert snaps.retry("app", 1) and snaps.wants_capture("app", 1)  # ...a redeploy does
    assert not snaps.retry("app", 1)


def test_one_capture_per_version_at_a_time(book) -> None:
    snaps, engine, store, _ = book
    started, go = threading.Event(), threading.Event()
    real = engine.capture

    def slow(container_id, folder, timeout_s, gpu=False):
        started.set()
        go.wait(5)
        return real(container_id, folder, timeout_s, gpu)

    engine.capture = slow
    first = threading.Thread(target=snaps.capture, args=("app", 1, "c1", "h", SPEC))
    first.start()
    assert started.wait(5)
    assert snaps.capture("app", 1, "c2", "h", SPEC) is False  # the second container just serves
    go.set()
    first.join(5)
    assert engine.captures == 1 and store.snapshot("app", 1)["state"] == "ready"


def test_an_open_tcp_connection_is_explained_for_the_app_author(book) -> None:
    snaps, engine, store, _ = book
    engine.fail = ["checkpoint of c failed (exit 1): inet: Connected TCP socket, consider using "
                   "--tcp-established option."] * 3
    assert not snaps.capture("app", 1, "c", "h", SPEC)
    assert engine.captures == 1  # checkpoint.capture already retried it (the agent's own closing connections)
    reason = store.snapshot("app", 1)["reason"]
    assert reason.startswith("the app held an open TCP connection when on_start returned")
    assert "--tcp-established" not in reason and "Connected TCP socket" in reason


def test_permanent_failures_are_not_retried(book) -> None:
    snaps, engine, _, _ = book
    engine.fail = ["no runc state for container c in /run/docker/runtime-runc/moby (not running?)"]
    assert not snaps.capture("app", 1, "c", "h", SPEC)
    assert engine.captures == 1


def test_a_missing_criu_is_said_plainly_and_not_retried(book) -> None:
    snaps, engine, store, _ = book
    engine.fail = ['checkpoint of c failed (exit 1): level=error msg="CRIU version check failed: exec: '
                   '"criu": executable file not found in $PATH"']
    assert not snaps.capture("app", 1, "c", "h", SPEC)
    assert engine.captures == 1
    assert store.snapshot("app", 1)["reason"].startswith("CRIU is not installed on this host")


def test_a_too_old_criu_is_refused_in_one_line_without_a_try(book, tmp_path: Path, monkeypatch) -> None:
    snaps, engine, store, events = book
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "criu").write_text("#!/bin/sh\necho 'Version: 4.1.1'\n")  # Debian trixie's
    (bin_dir / "criu").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert not snaps.capture("app", 1, "c", "h", SPEC)
    assert engine.captures == 0  # the runtime was not kept paused for tries that cannot work
    assert store.snapshot("app", 1)["reason"] == \
        "CRIU 4.1.1 < 4.2 (4.1 cannot checkpoint TCP sockets on kernels >= 6.16)"


def test_refusals_and_the_cache_dir_note(book) -> None:
    snaps, engine, store, _ = book
    assert "2 GPUs are not supported" in refuse({"gpu_count": 2})
    assert refuse({"gpu_count": 0}) is None
    assert not snaps.capture("app", 1, "c", "h", {**SPEC, "gpu_count": 2})
    assert engine.captures == 0 and "NCCL" in store.snapshot("app", 1)["reason"]
    assert cache_dir_note(SPEC) == ""
    assert "not on a volume" in cache_dir_note({**SPEC, "cache_dir": "/root/.cache"})
    assert cache_dir_note({**SPEC, "cache_dir": "/database"}) != ""  # a prefix of the name is not a mount


def test_restore_needs_a_ready_snapshot_with_an_equal_key(book) -> None:
    snaps, engine, store, events = book
    assert snaps.restorable("app", 1, "h", "img") is None  # none yet
    snaps.capture("app", 1, "c", "h", SPEC)
    folder, timeout = snaps.restorable("app", 1, "h", "img")
    assert folder == snaps.folder("app", 1) and timeout == pytest.approx(snap_mod.RESTORE_BASE_S, abs=0.1)
    assert snaps.restorable("app", 1, "other-args", "img") is None  # different create args
    assert store.snapshot("app", 1)["state"] == "incompatible" and not folder.exists()
    assert "create_args_hash changed" in events[-1] and snaps.wants_capture("app", 1)


def test_a_snapshot_of_an_older_format_is_incompatible(book) -> None:
    snaps, engine, store, events = book  # format 1: taken in Docker's network, before sandboxes
    snaps.capture("app", 1, "c", "h", SPEC)
    key_file = snaps.folder("app", 1) / "key.json"
    key_file.write_text(json.dumps({**json.loads(key_file.read_text()), "format": 1}))
    assert snaps.restorable("app", 1, "h", "img") is None
    assert store.snapshot("app", 1)["state"] == "incompatible" and snaps.wants_capture("app", 1)
    assert "beamctl's snapshot format changed since it was captured" in events[-1]


def test_a_failed_restore_deletes_and_sticks_until_a_redeploy(book) -> None:
    snaps, engine, store, events = book
    snaps.capture("app", 1, "c", "h", SPEC)
    snaps.restore_failed("app", 1, "restore into c failed", SPEC)
    assert not snaps.folder("app", 1).exists() and store.snapshot("app", 1)["state"] == "restore_failed"
    assert snaps.restorable("app", 1, "h", "img") is None and not snaps.wants_capture("app", 1)
    assert snaps.retry("app", 1) and snaps.wants_capture("app", 1)


def test_a_capture_cut_by_an_agent_restart_is_cleaned_and_captured_again(book, tmp_path: Path) -> None:
    snaps, engine, store, _ = book
    store.set_snapshot("app", 3, state="capturing")
    partial = snaps.folder("app", 3).with_suffix(".partial")
    partial.mkdir(parents=True)
    again = Snapshots(tmp_path, store, engine, lambda app, m: None)  # the agent starts again
    assert not partial.exists() and store.snapshot("app", 3)["state"] == "incompatible"
    assert again.wants_capture("app", 3)


def test_delete_goes_with_the_version(book) -> None:
    snaps, engine, store, events = book
    snaps.capture("app", 1, "c", "h", SPEC)
    snaps.capture("app", 2, "c", "h", SPEC)
    snaps.delete("app", 1)
    assert not snaps.folder("app", 1).exists() and store.snapshot("app", 1) is None
    assert events[-1] == "checkpoint of v1 deleted (v1 no longer serves)"
    assert snaps.folder("app", 2).exists()
    snaps.delete("app", 2)  # the app's last snapshot (`stop`): no empty snapshots/app/ left
    assert not (snaps.root / "app").exists() and snaps.root.exists()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_file_fails_the_check_and_its_restore_is_marked_damaged(book) -> None:
    snaps, engine, store, events = book
    snaps.capture("app", 1, "c", "h", SPEC)
    snaps.verify("app", 1)  # whole
    _flip(snaps.folder("app", 1) / "pages-1.img", 500)
    with pytest.raises(RestoreFailed) as e:
        snaps.verify("app", 1)
    assert e.value.reason == "damaged: pages-1.img does not match its digest"
    snaps.restore_failed("app", 1, e.value.reason, SPEC)  # what the pool does with it
    row = store.snapshot("app", 1)
    assert (row["state"], row["reason"]) == ("restore_failed", "damaged: pages-1.img does not match its digest")
    assert not snaps.folder("app", 1).exists()
    (snaps.folder("app", 2) / "x").mkdir(parents=True)  # a folder without a manifest
    with pytest.raises(RestoreFailed, match=r"^damaged: no readable manifest.json \(FileNotFoundError\)$"):
        snaps.verify("app", 2)


def test_files_held_in_memory_are_hashed_once_until_they_change(book, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from beamctl.agent.resident import Resident
    from tests.agent.test_resident import FakeLibc

    _, engine, store, _ = book
    events: list[str] = []
    snaps = Snapshots(tmp_path, store, engine, lambda app, m: events.append(m),
                      resident=Resident(10_000, libc=FakeLibc()))
    snaps.capture("app", 1, "c", "h", SPEC)
    assert _waited(lambda: ("app", 1) in snaps._hashed)  # hashed after it was locked, in the background
    hashed: list[list[str]] = []
    real = digests.digest_files
    monkeypatch.setattr(digests, "digest_files", lambda folder, names, workers=None: hashed.append(names) or
                        real(folder, names, workers))
    snaps.verify("app", 1)
    assert hashed == [[]]  # held and unchanged: sizes only
    _flip(snaps.folder("app", 1) / "pages-1.img", 0)  # a write in place: same size, new mtime/ctime
    with pytest.raises(RestoreFailed, match="pages-1.img does not match its digest"):
        snaps.verify("app", 1)
    assert hashed[-1] == ["pages-1.img"]
    snaps.resident.release("app", 1)  # not held (evicted): hashed every time, changed or not
    _flip(snaps.folder("app", 1) / "pages-1.img", 0)
    snaps.verify("app", 1)
    assert hashed[-1] == ["pages-1.img"]


def test_a_snapshot_damaged_on_disk_is_not_held(book, tmp_path: Path) -> None:
    from beamctl.agent.resident import Resident
    from tests.agent.test_resident import FakeLibc

    _, engine, store, _ = book
    Snapshots(tmp_path, store, engine, lambda app, m: None).capture("app", 1, "c", "h", SPEC)  # budget 0
    _flip(tmp_path / "snapshots/app/v1/pages-1.img", 3)
    events: list[str] = []
    libc = FakeLibc()
    again = Snapshots(tmp_path, store, engine, lambda app, m: events.append(m), resident=Resident(10_000, libc=libc))
    assert _waited(lambda: bool(events))  # the agent restarts and reads it in: found, let go
    assert events == ["checkpoint of v1 not held in memory: damaged: pages-1.img does not match its digest"]
    assert libc.locked == {} and ("app", 1) not in again._hashed


# the pool's handshake with a fake runtime ------------------------------------------------------------

class Runtime(ThreadingHTTPServer):
    """/health says CHECKPOINT until POST /checkpoint/release; then READY."""

    def __init__(self) -> None:
        self.state, self.released = "CHECKPOINT", []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def health(self) -> dict:
        return {"state": self.state, "timings": {"process_start": 1.0, "on_start_start": 1.0, "on_start_end": 2.0}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._send(self.server.health())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.released.append(body)
        self.server.state = "READY"
        self._send(self.server.health())

    def _send(self, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a) -> None:
        pass


class Containers:
    def __init__(self, address: str) -> None:
        self.address_, self.created, self.removed, self.restores = address, [], [], []

    def has_image(self, ref):
        return True

    def create(self, args):
        self.created.append(f"c{len(self.created) + 1}")
        return self.created[-1]

    def start(self, cid):
        return self.address_

    def address(self, cid):
        return self.address_

    def exit_code(self, cid):
        return None

    def logs(self, cid, tail=None):
        return []

    def stop(self, cid):
        pass

    def remove(self, cid):
        self.removed.append(cid)

    def restore(self, cid, folder, timeout_s):
        self.restores.append(cid)
        raise RestoreFailed("restore into c1 failed: damaged")


class Hooks:
    def __init__(self, capture_error: Exception | None = None, restorable=None, damaged: str = "") -> None:
        self.capture_error, self.found, self.calls, self.damaged = capture_error, restorable, [], damaged

    def wants_capture(self, version):
        return True

    def capture(self, version, cid, args_hash):
        self.calls.append(("capture", cid))
        if self.capture_error:
            raise self.capture_error
        return True

    def restorable(self, version, args_hash):
        return self.found

    def verify(self, version):
        self.calls.append(("verify",))
        if self.damaged:
            raise RestoreFailed(self.damaged)

    def restore_failed(self, version, reason):
        self.calls.append(("restore_failed", reason))

    def restored(self, *a):
        self.calls.append(("restored",))


def pool_with(hooks: Hooks, runtime: Runtime) -> tuple[Pool, Containers, list[str]]:
    events: list[str] = []
    containers = Containers(f"127.0.0.1:{runtime.server_address[1]}")
    pool = Pool("app", containers, lambda v: {"image": "img", "name": f"n{time.time_ns()}"}, 1, 60,
                events.append, lambda live: None, hooks)
    pool.version = 1
    return pool, containers, events


def wait_started(pool: Pool, live) -> None:
    deadline = time.monotonic() + 10
    with pool.cond:
        while live.state == "starting" and time.monotonic() < deadline:
            pool.cond.wait(0.1)


def test_the_runtime_is_always_released_even_when_the_capture_blows_up() -> None:
    runtime = Runtime()
    try:
        pool, _, events = pool_with(Hooks(capture_error=RuntimeError("bug")), runtime)
        live = pool.start(1)
        wait_started(pool, live)
        assert live.state == "ready" and runtime.released == [{"restored": False}]
        assert any("went wrong: RuntimeError: bug" in e for e in events)
        assert live.timeline.on_start_end == 2.0 and live.timeline.capture_start is None
    finally:
        runtime.shutdown()


def test_a_capture_is_timed_into_the_timeline() -> None:
    runtime = Runtime()
    try:
        hooks = Hooks()
        pool, _, _ = pool_with(hooks, runtime)
        live = pool.start(1)
        wait_started(pool, live)
        assert hooks.calls == [("capture", "c1")] and live.state == "ready"
        assert live.timeline.capture_end >= live.timeline.capture_start > 0
    finally:
        runtime.shutdown()


def test_a_failed_restore_removes_the_container_and_boots_a_fresh_one_cold(tmp_path: Path) -> None:
    runtime = Runtime()
    try:
        hooks = Hooks(restorable=(tmp_path, 5.0))
        pool, containers, events = pool_with(hooks, runtime)
        live = pool.start(1)
        wait_started(pool, live)
        assert containers.restores == ["c1"] and containers.removed == ["c1"] and live.id == "c2"
        assert ("restore_failed", "restore into c1 failed: damaged") in hooks.calls
        assert live.state == "ready" and not live.timeline.restored  # booted cold (and captured)
        assert runtime.released == [{"restored": False}]
    finally:
        runtime.shutdown()


def test_a_file_that_fails_its_digest_is_never_restored(tmp_path: Path) -> None:
    runtime = Runtime()
    try:
        hooks = Hooks(restorable=(tmp_path, 5.0), damaged="damaged: pages-1.img does not match its digest")
        pool, containers, _ = pool_with(hooks, runtime)
        live = pool.start(1)
        wait_started(pool, live)
        assert containers.restores == [] and containers.removed == ["c1"] and live.id == "c2"
        assert hooks.calls[:2] == [("verify",), ("restore_failed", "damaged: pages-1.img does not match its digest")]
        assert live.state == "ready" and not live.timeline.restored and runtime.released == [{"restored": False}]
    finally:
        runtime.shutdown()


def _waited(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def test_ready_snapshots_are_held_in_memory_until_they_go(book, tmp_path: Path) -> None:
    from beamctl.agent.resident import Resident
    from tests.agent.test_resident import FakeLibc

    _, engine, store, _ = book
    libc = FakeLibc()
    snaps = Snapshots(tmp_path, store, engine, lambda app, m: None, resident=Resident(10_000, libc=libc))
    snaps.capture("app", 1, "c", "h", SPEC)
    assert _waited(lambda: snaps.describe("app")[1]["in_memory"])  # held in the background after the capture
    assert sorted(Path(p).name for p, _ in libc.locked.values()) == ["key.json", "manifest.json", "pages-1.img"]
    snaps.delete("app", 1)
    assert libc.locked == {} and snaps.describe("app") == {}

    snaps.capture("app", 2, "c", "h", SPEC)
    assert _waited(lambda: snaps.resident.held("app", 2))
    snaps.restore_failed("app", 2, "restore into c failed", SPEC)
    assert libc.locked == {}  # let go before its files were deleted

    snaps.capture("app", 3, "c", "h", SPEC)
    restarted = FakeLibc()  # the agent starts again: its ready snapshots are held again
    again = Snapshots(tmp_path, store, engine, lambda app, m: None, resident=Resident(10_000, libc=restarted))
    assert _waited(lambda: again.resident.held("app", 3)) and len(restarted.locked) == 3
