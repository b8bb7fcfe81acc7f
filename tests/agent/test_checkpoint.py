"""beamctl.agent.checkpoint: the pure parts, runc/docker replaced by scripts, and (integration) the real
engine + runc + CRIU: capture a container that listens on TCP and holds state, restore it into a new one."""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from beamctl.agent import checkpoint as cp
from beamctl.agent import leftovers
from beamctl.agent import snapshot_key as sk
from beamctl.protocol import criu as criu_rule

# ---- pure parts -----------------------------------------------------------------------------------

CPUINFO = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: sse2 avx fpu\n\nprocessor\t: 1\n" \
          "model name\t: AMD EPYC\nflags\t\t: sse2 avx fpu\n"


def test_timens_offsets_are_normalised_timespecs() -> None:
    text = "monotonic        -45 651000000\nboottime           0         0\n"
    assert cp.parse_timens_offsets(text) == {"monotonic": pytest.approx(-44.349), "boottime": 0.0}


def test_monotonic_offset_reads_proc(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7/timens_offsets").write_text("monotonic 12 500000000\nboottime 0 0\n")
    assert cp.monotonic_offset(7, proc=tmp_path) == pytest.approx(12.5)
    (tmp_path / "8").mkdir()  # a kernel without time namespaces: no file, no offset
    assert cp.monotonic_offset(8, proc=tmp_path) == 0.0
    with pytest.raises(FileNotFoundError):  # no such process
        cp.monotonic_offset(9, proc=tmp_path)


def test_the_real_offset_of_this_process_is_zero() -> None:
    assert cp.monotonic_offset(os.getpid()) == 0.0


def test_cpu_facts() -> None:
    model, flags = sk.cpu_facts(CPUINFO)
    assert model == "AMD EPYC"
    assert sk.cpu_facts(CPUINFO.replace("sse2 avx fpu", "fpu sse2 avx"))[1] == flags  # order does not matter
    assert sk.cpu_facts(CPUINFO.replace("avx ", ""))[1] != flags


def test_snapshot_key_and_matching() -> None:
    key = sk.snapshot_key("sha256:aa", "h1", kernel="6.18.44", cpuinfo=CPUINFO, criu="4.2.1")
    assert set(key) == set(sk.KEY_FIELDS)
    assert key["gpu"] is None and key["criu_version"] == "4.2.1" and key["kernel"] == "6.18.44"
    same = sk.snapshot_key("sha256:aa", "h1", kernel="6.18.44", cpuinfo=CPUINFO, criu="4.2.1")
    assert sk.key_matches(key, same)
    for changed, field in ((dict(kernel="6.19.0"), "kernel"), (dict(criu="4.3"), "criu_version"),
                           (dict(cpuinfo=CPUINFO.replace("avx", "avx2")), "cpu_flags_hash"),
                           (dict(gpu={"model": "H200", "driver": "580.159.04"}), "gpu")):
        other = sk.snapshot_key("sha256:aa", "h1", **{**dict(kernel="6.18.44", cpuinfo=CPUINFO, criu="4.2.1"),
                                                       **changed})
        assert not sk.key_matches(key, other) and sk.key_differences(key, other) == [field]
    assert sk.key_differences(key, {**key, "image_id": "sha256:bb", "create_args_hash": "h2"}) == \
        ["image_id", "create_args_hash"]
    assert not sk.key_matches(key, {k: v for k, v in key.items() if k != "format"})


def test_this_machines_key() -> None:
    key = sk.snapshot_key("sha256:aa", "h1")
    assert key["kernel"] == os.uname().release and key["cpu_model"]
    assert tuple(map(int, key["criu_version"].split(".")[:2])) >= (4, 2)  # scripts/install-criu.sh


def test_args_hash_ignores_the_name_only() -> None:
    args = {"image": "x", "name": "beamctl-a-v1-abc", "environment": {"A": "1", "TOKEN": "s"}}
    assert sk.args_hash(args) == sk.args_hash({**args, "name": "beamctl-a-v1-def"})
    assert sk.args_hash(args) != sk.args_hash({**args, "environment": {"A": "1", "TOKEN": "t"}})


# ---- capture/restore with runc and docker replaced by scripts -------------------------------------

def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def runc_root(tmp_path: Path) -> Path:
    (tmp_path / "root/CID").mkdir(parents=True)
    (tmp_path / "root/CID/state.json").write_text("{}")
    return tmp_path / "root"


# The fake runc gets: --root R checkpoint --image-path DIR --work-path WORK --leave-running ID
FAKE_DUMP = """\
    img=$5; work=$7; mkdir -p "$work"
    if [ -n "$FAIL_FIRST" ] && [ ! -e "$FAIL_FIRST" ]; then
        touch "$FAIL_FIRST"; echo "(00.1) Error (criu/sk-inet.c:1): inet: Connected TCP socket, consider using --tcp-established option." >"$work/dump.log"; exit 1
    fi
    if [ -n "$FAIL" ]; then
        printf '%s\\n' "(00.0) Error (criu/kerndat.c:1): rlimit: Can't setup RLIMIT_NOFILE" "(00.1) Warn: something" \\
            "(00.2) Error (criu/sockets.c:7): sockets: Can't get 1:16 opt: Operation not supported" >"$work/dump.log"
        echo "criu failed: type DUMP errno 0" >&2; exit 1
    fi
    echo log >"$work/dump.log"; head -c 1000 /dev/zero >"$img/pages-1.img"; echo x >"$img/inventory.img"
"""


def test_capture_modes_size_and_retry(tmp_path: Path, runc_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runc = _script(tmp_path / "runc", FAKE_DUMP)
    monkeypatch.setenv("FAIL_FIRST", str(tmp_path / "failed-once"))
    snap = tmp_path / "snaps/v1"
    res = cp.capture("CID", snap, 10, runc=runc, runc_root=str(runc_root))
    assert (res.attempts, res.size_bytes, res.snapshot_dir) == (2, 1002, snap)
    assert json.loads((snap / cp.MANIFEST).read_text()) == {"digest": "sha256-of-64MiB-chunks", "files": {
        "inventory.img": {"size": 2, "digest": "af783de711a03d4e784d3cd52d07738e879f8e3004e6bab584d4f5986f26ef1f"},
        "pages-1.img": {"size": 1000, "digest": "3fa2b684fa9d80f04b70187e6c9ff1c8dd422ce1846beb79cf5e1546c7062d41"}}}
    assert res.digest_s >= 0
    assert stat.S_IMODE(snap.stat().st_mode) == 0o700 and stat.S_IMODE((snap / "work").stat().st_mode) == 0o700
    for f in (snap / "pages-1.img", snap / "inventory.img", snap / "work/dump.log", snap / cp.MANIFEST):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    with pytest.raises(cp.CheckpointFailed, match="not empty"):
        cp.capture("CID", snap, 10, runc=runc, runc_root=str(runc_root))
    with pytest.raises(cp.CheckpointFailed, match="no runc state for container OTHER"):
        cp.capture("OTHER", tmp_path / "x", 10, runc=runc, runc_root=str(runc_root))


def test_capture_failure_reason_is_criu_s_last_error(tmp_path: Path, runc_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(cp.CheckpointFailed) as e:
        cp.capture("CID", tmp_path / "s", 10, runc=_script(tmp_path / "runc", FAKE_DUMP), runc_root=str(runc_root))
    assert e.value.reason == "checkpoint of CID failed (exit 1): sockets: Can't get 1:16 opt: Operation not supported"
    assert len(e.value.log_tail) == 1 and "RLIMIT" not in str(e.value)


def test_capture_timeout(tmp_path: Path, runc_root: Path) -> None:
    started = time.monotonic()
    with pytest.raises(cp.CheckpointFailed, match="timed out after 1 s"):
        cp.capture("CID", tmp_path / "s", 1, runc=_script(tmp_path / "runc", "sleep 30 & sleep 30\n"),
                   runc_root=str(runc_root))
    assert time.monotonic() - started < 5


def _fake_snapshot(snap: Path) -> None:
    (snap / "work").mkdir(parents=True)
    (snap / "work/dump.log").write_text("log")
    for name in ("inventory.img", "pages-1.img", "descriptors.json"):
        (snap / name).write_text(name)
    (snap / cp.MANIFEST).write_text(json.dumps({"files": {n: len(n) for n in
                                                          ("inventory.img", "pages-1.img", "descriptors.json")}}))


def test_restore_links_climb_to_root_and_are_removed(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    _fake_snapshot(snap)
    root = tmp_path / "docker"
    (root / "containers/NEW").mkdir(parents=True)
    seen = tmp_path / "seen"
    docker = _script(tmp_path / "docker-cli", f"""\
        [ "$1 $2 $3 $4" = "start --checkpoint snap NEW" ] || exit 9
        d={root}/containers/NEW/checkpoints/snap
        for f in "$d"/*; do printf '%s %s\\n' "$(basename "$f")" "$(cat "$f")"; done >{seen}
        ls -A "$d" | grep -c '^\\.beamctl-restore-' >>{seen}
        readlink "$d/pages-1.img" >>{seen}
    """)
    res = cp.restore(docker, "NEW", snap, "snap", docker_root=root)
    lines = seen.read_text().splitlines()
    # the manifest's files only (not the manifest, not work/), and the marker that finds containerd's copy
    assert lines[:4] == ["descriptors.json descriptors.json", "inventory.img inventory.img",
                         "pages-1.img pages-1.img", "1"]
    assert lines[4] == "../" * 32 + str((snap / "pages-1.img").resolve()).lstrip("/")
    assert res.container_id == "NEW" and not (root / "containers/NEW/checkpoints/snap").exists()
    failing = _script(tmp_path / "docker2", 'echo "Error response from daemon: failed to create shim"; exit 1\n')
    with pytest.raises(cp.RestoreFailed, match="restore into NEW failed: Error response from daemon"):
        cp.restore(failing, "NEW", snap, "snap", docker_root=root)
    with pytest.raises(cp.RestoreFailed, match="cannot link the snapshot into container GONE"):
        cp.restore(docker, "GONE", snap, "snap", docker_root=root)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def test_a_dead_agents_capture_is_waited_for_then_killed_and_only_ours(tmp_path: Path) -> None:
    import subprocess

    root = tmp_path / "snapshots"

    def runc(seconds: float, image_path: Path) -> subprocess.Popen:  # argv as checkpoint.capture runs runc
        # one process that never forks (a shell's child would carry the same argv until its exec)
        return subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))",
                                 str(seconds), "runc", "--root", "r", "checkpoint", "--image-path",
                                 str(image_path), "--work-path", "w", "--leave-running", "c" * 64],
                                start_new_session=True)

    quick, hung = runc(1.0, root / "app/v1.partial"), runc(60, root / "app/v2.partial")  # quick: still
    # running when stop_captures looks, on a loaded machine too
    other = runc(60, tmp_path / "other/snapshots/app/v1.partial")  # another agent's
    try:
        started = time.monotonic()
        found = leftovers.stop_captures(root, wait_s=3)
        assert found == sorted([quick.pid, hung.pid]), {p: _cmdline(p) for p in found}
        assert 3 <= time.monotonic() - started < 12
        assert quick.wait(5) == 0  # it ended by itself, within the wait
        assert hung.wait(5) == -9  # killed after it
        assert other.poll() is None
    finally:
        for proc in (quick, hung, other):
            proc.kill()
            proc.wait()


def test_unpacked_restore_links_left_by_a_dead_agent_are_removed_and_only_ours(tmp_path: Path) -> None:
    root = tmp_path / "data/snapshots"
    (root / "app/v1").mkdir(parents=True)

    def unpacked(name: str, target: Path, marker: bool = True) -> Path:
        folder = tmp_path / f"ctrd-checkpoint{name}"
        folder.mkdir()
        os.symlink(cp.UP + str(target / "pages-1.img").lstrip("/"), folder / "pages-1.img")
        if marker:
            (folder / (cp.MARKER + "0123")).touch()
        return folder

    ours = unpacked("111", root / "app/v1")
    other_agent = unpacked("222", tmp_path / "other/snapshots/app/v1")
    not_ours = unpacked("333", root / "app/v1", marker=False)  # not a restore of beamctl's
    prefix = unpacked("444", tmp_path / "data/snapshots-old/app/v1")  # a sibling whose name starts the same
    removed = leftovers.remove_unpacked(root, str(tmp_path / "ctrd-checkpoint*"))
    assert removed == [str(ours)] and not ours.exists()
    assert other_agent.exists() and not_ours.exists() and prefix.exists()


def test_restore_refuses_a_damaged_snapshot_before_criu_sees_it(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    _fake_snapshot(snap)
    never = _script(tmp_path / "docker-cli", "exit 9\n")
    root = tmp_path / "docker"
    (root / "containers/NEW").mkdir(parents=True)
    (snap / "pages-1.img").write_text("pages")  # truncated: CRIU 4.2.1 would loop forever
    with pytest.raises(cp.RestoreFailed, match="pages-1.img has 5 bytes, 11 when captured"):
        cp.restore(never, "NEW", snap, "snap", docker_root=root)
    (snap / "pages-1.img").unlink()
    with pytest.raises(cp.RestoreFailed, match="lacks pages-1.img"):
        cp.restore(never, "NEW", snap, "snap", docker_root=root)
    (snap / cp.MANIFEST).unlink()
    with pytest.raises(cp.RestoreFailed, match="no readable manifest.json"):
        cp.restore(never, "NEW", snap, "snap", docker_root=root)
    assert not (root / "containers/NEW/checkpoints").exists()


# ---- the real engine, runc and CRIU ---------------------------------------------------------------

IMAGE = "beamctl/base:bookworm-python3.11"
LABEL = "dev.beamctl.test=checkpoint"
# A TCP server holding state in memory: GET /count answers the number of earlier requests.
APP = """
import http.server, socket
n = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global n
        body = f"{n} {socket.gethostname()}".encode(); n += 1
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def get_text(address: str, path: str = "/", deadline_s: float = 20) -> str:
    """GET http://ADDRESS/PATH on a new connection, retried until the server answers (a just-started or
    just-restored container) or deadline_s has passed."""
    host, _, port = address.rpartition(":")
    end = time.monotonic() + deadline_s
    while True:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            return conn.getresponse().read().decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def _get(ip: str, deadline_s: float = 20) -> tuple[int, str]:
    count, host = get_text(f"{ip}:8000", "/count", deadline_s).split()
    return int(count), host


class Engine:
    def __init__(self) -> None:
        docker = pytest.importorskip("docker")
        try:
            self.client = docker.from_env(timeout=120)
            self.client.ping()
            self.client.api.inspect_image(IMAGE)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"no Docker engine or no {IMAGE}: {e}")
        if shutil.which("runc") is None or tuple(map(int, sk.criu_version().split(".")[:2])) < (4, 2):
            pytest.skip("needs runc and CRIU >= 4.2 (scripts/setup.sh)")
        self.api, self.made = self.client.api, []

    def create(self) -> str:  # the same create arguments every time, as the agent's restore does
        cid = self.api.create_container(IMAGE, command=["python3", "-c", APP], labels=dict([LABEL.split("=")]),
                                        host_config=self.api.create_host_config(mem_limit=256 << 20))["Id"]
        self.made.append(cid)
        return cid

    def state(self, cid: str) -> dict:
        return self.api.inspect_container(cid)

    def ip(self, cid: str) -> str:
        return self.state(cid)["NetworkSettings"]["IPAddress"]

    def cleanup(self) -> None:
        import docker

        for cid in self.made:
            try:
                self.api.remove_container(cid, force=True)
            except docker.errors.NotFound:
                pass


def _our_ctrd_dirs(snap_root: Path) -> list[str]:
    """containerd's unpacked copies whose links point into our snapshots (another run's are not ours)."""
    ours = []
    for d in glob.glob(cp.CTRD_TMP):
        try:
            if any(str(snap_root).lstrip("/") in os.readlink(os.path.join(d, f)) for f in os.listdir(d)
                   if os.path.islink(os.path.join(d, f))):
                ours.append(d)
        except OSError:
            pass
    return ours


@pytest.fixture
def engine() -> Engine:
    eng = Engine()
    yield eng
    eng.cleanup()


@pytest.mark.integration
def test_capture_and_restore_a_tcp_server_with_state(engine: Engine, tmp_path: Path) -> None:
    orig = engine.create()
    engine.api.start(orig)
    ip = engine.ip(orig)
    assert _get(ip)[0] == 0
    count, orig_host = _get(ip)
    assert count == 1
    snap = tmp_path / "snaps/v1"
    cap = cp.capture(orig, snap, timeout_s=60)
    print(f"\ncapture: {cap.seconds:.3f} s, {cap.size_bytes / 1e6:.1f} MB, attempts {cap.attempts}")
    assert cap.size_bytes > 1e6 and (snap / "pages-1.img").exists()
    assert stat.S_IMODE(snap.stat().st_mode) == 0o700
    for folder, dirs, files in os.walk(snap):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(os.lstat(os.path.join(folder, f)).st_mode) == 0o600, f
    assert _get(ip)[0] == 2  # --leave-running: the original goes on serving
    assert cp.monotonic_offset(engine.state(orig)["State"]["Pid"]) == 0.0

    for how in ("cli", "sdk"):  # two restores from one snapshot, one per way of calling docker
        new = engine.create()
        res = cp.restore("docker" if how == "cli" else engine.client, new, snap, "snap")
        state = engine.state(new)["State"]
        print(f"restore ({how}): {res.seconds:.3f} s")
        assert state["Running"] and res.container_id == new
        new_ip = engine.ip(new)
        assert new_ip != ip
        assert _get(new_ip) == (2, orig_host)  # the counter as captured; the original's hostname
        assert _get(new_ip)[0] == 3
        assert cp.monotonic_offset(state["Pid"]) < 0  # a new time namespace: the clock resumes from the dump
        assert not (Path("/var/lib/docker/containers") / new / "checkpoints/snap").exists()
        engine.api.stop(new, timeout=5)
    assert _our_ctrd_dirs(tmp_path) == []
    assert _get(ip)[0] == 3  # the original was never touched


@pytest.fixture
def captured(engine: Engine, tmp_path: Path) -> tuple[str, str, Path]:
    """(original's id, its address, its snapshot) after one request."""
    orig = engine.create()
    engine.api.start(orig)
    ip = engine.ip(orig)
    assert _get(ip)[0] == 0
    snap = tmp_path / "snap"
    cp.capture(orig, snap, timeout_s=60)
    return orig, ip, snap


def _fails_cleanly(engine: Engine, snap: Path, match: str, **kw) -> cp.RestoreFailed:
    new = engine.create()
    started = time.monotonic()
    with pytest.raises(cp.RestoreFailed, match=match) as e:
        cp.restore(engine.client, new, snap, "snap", **kw)
    print(f"\nfailed restore: {time.monotonic() - started:.3f} s; {e.value}")
    assert "\n" not in e.value.reason and len(e.value.reason) < 500
    assert not engine.state(new)["State"]["Running"]
    assert _our_ctrd_dirs(snap.parent) == []
    assert not (Path("/var/lib/docker/containers") / new / "checkpoints/snap").exists()
    engine.api.remove_container(new, force=True)
    return e.value


@pytest.mark.integration
def test_a_truncated_snapshot_is_refused(engine: Engine, captured: tuple[str, str, Path]) -> None:
    orig, ip, snap = captured
    pages = snap / "pages-1.img"
    os.truncate(pages, pages.stat().st_size // 2)
    _fails_cleanly(engine, snap, r"pages-1.img has \d+ bytes, \d+ when captured")
    assert _get(ip)[0] == 1


@pytest.mark.integration
def test_criu_s_reason_for_a_damaged_image(engine: Engine, captured: tuple[str, str, Path]) -> None:
    orig, ip, snap = captured
    core = snap / "core-1.img"
    core.write_bytes(b"\0" * core.stat().st_size)  # same size: only CRIU can tell
    err = _fails_cleanly(engine, snap, "restore into .* failed: Head magic doesn.t match for core-1.img")
    assert err.log_tail and any("Error" in line for line in err.log_tail), err  # kept: the shim deletes it
    assert _get(ip)[0] == 1


@pytest.mark.integration
def test_a_hanging_restore_is_stopped(engine: Engine, captured: tuple[str, str, Path]) -> None:
    """A short pages file behind the manifest's back: CRIU 4.2.1 would retry its read forever."""
    orig, ip, snap = captured
    pages = snap / "pages-1.img"
    os.truncate(pages, pages.stat().st_size // 2)
    manifest = json.loads((snap / cp.MANIFEST).read_text())
    manifest["files"]["pages-1.img"]["size"] = pages.stat().st_size
    (snap / cp.MANIFEST).write_text(json.dumps(manifest))
    started = time.monotonic()
    err = _fails_cleanly(engine, snap, "timed out after 5 s", timeout_s=5)
    assert err.reason.startswith("restore into ") and err.reason.endswith(" timed out after 5 s (stopped)")
    assert time.monotonic() - started < 30
    assert _get(ip)[0] == 1


@pytest.mark.integration
def test_capture_of_a_stopped_container_fails(engine: Engine, tmp_path: Path) -> None:
    cid = engine.create()
    with pytest.raises(cp.CheckpointFailed, match="no runc state"):
        cp.capture(cid, tmp_path / "s", timeout_s=30)


@pytest.mark.integration
def test_an_open_connection_fails_the_capture_and_the_app_goes_on(engine: Engine, tmp_path: Path) -> None:
    orig = engine.create()
    engine.api.start(orig)
    ip = engine.ip(orig)
    assert _get(ip)[0] == 0
    conn = http.client.HTTPConnection(ip, 8000, timeout=5)
    conn.connect()  # an agent's kept-alive connection, not closed before the capture
    try:
        with pytest.raises(cp.CheckpointFailed, match="Connected TCP socket") as e:
            cp.capture(orig, tmp_path / "s", timeout_s=60, attempts=2)
        print(f"\n{e.value}")
        assert e.value.reason.startswith(f"checkpoint of {orig[:12]} failed (exit 1): ")
    finally:
        conn.close()
    assert _get(ip)[0] == 1  # --leave-running resumed it


def test_criu_versions_that_cannot_checkpoint_an_app_container():
    assert criu_rule.criu_too_old("4.1.1") == "CRIU 4.1.1 < 4.2 (4.1 cannot checkpoint TCP sockets on kernels >= 6.16)"
    assert criu_rule.criu_too_old("3.17") == "CRIU 3.17 < 4.2 (3.17 cannot checkpoint TCP sockets on kernels >= 6.16)"
    assert [criu_rule.criu_too_old(v) for v in ("4.2", "4.2.1", "4.10", "5.0", "", "weird", None)] == [None] * 7
    assert (criu_rule.version_parts("4.2.1"), criu_rule.version_parts("4.10"), criu_rule.version_parts("x")) == ((4, 2, 1), (4, 10), None)
