"""Checkpoint/restore through the agent, against the real Docker Engine, runc and CRIU (issue 6).

Driven through the real CLI like test_agent_engine.py. One app with `checkpoint_enabled: true` whose
on_start counts its runs in a volume and builds ~20 MB of state; the tests run in file order and
share it (deploy -> restore -> agent restart -> corrupt -> key change -> capture failure -> redeploy).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_agent_engine import Host, stop_process

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("criu") is None or os.geteuid() != 0,
                                 reason="needs CRIU (scripts/setup.sh) and root")]

YAML = """\
on_start: app:setup
keep_warm_seconds: 2
checkpoint_enabled: true
volumes:
  - name: data
    mount_path: /data
"""
CODE = """\
import os, socket

VERSION = {version}
STATE = {{}}


def setup():
    path = "/data/on_start_count"
    n = int(open(path).read()) + 1 if os.path.exists(path) else 1
    open(path, "w").write(str(n))
    STATE["weights"] = bytearray(range(256)) * 80000  # ~20 MB that a restore must bring back
    STATE["boot"] = n
    if os.path.exists("/data/hold_tcp"):  # something CRIU refuses: an open TCP connection (loopback)
        server = socket.create_server(("127.0.0.1", 0))
        STATE["conn"] = (server, socket.create_connection(server.getsockname()), server.accept())


def handler(x=0):
    w = STATE["weights"]
    return {{"v": VERSION, "x": x, "boot": STATE["boot"], "weights": len(w), "sum": sum(w[::4096])}}
"""
EXPECTED_SUM = sum((bytearray(range(256)) * 80000)[::4096])



@pytest.fixture(scope="module")
def app(host: Host) -> tuple[str, Path]:
    name, folder = host.app("ckpt", YAML, CODE.format(version=1))
    host.ok("deploy", "-f", str(folder))
    return name, folder


def snapshot_of(host: Host, name: str, version: int) -> dict[str, Any] | None:
    v = next(v for v in host.status(name)["versions"] if v["version"] == version)
    return v["checkpoint"]


def on_start_count(host: Host, name: str) -> int:
    return int((host.volume(name) / "on_start_count").read_text())


def folder_of(host: Host, name: str, version: int) -> Path:
    return host.agent_dir / "snapshots" / name / f"v{version}"


def cold_call(host: Host, name: str, x: int) -> dict[str, Any]:
    host.wait_scaled_to_zero(name)
    task = host.call(name, {"x": x})
    assert task["status"] == "succeeded", task
    assert task["result"] == {"v": task["result"]["v"], "x": x, "boot": task["result"]["boot"],
                              "weights": 20480000, "sum": EXPECTED_SUM}
    return task


def held_in_memory(host: Host, name: str, version: int, want: bool = True, wait_s: float = 30) -> bool:
    """The snapshot's `in_memory` in status (the agent locks it in the background), waited for."""
    deadline = time.monotonic() + wait_s
    while (snapshot_of(host, name, version) or {}).get("in_memory", False) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return (snapshot_of(host, name, version) or {}).get("in_memory", False)


def locked_bytes(pid: int) -> int:
    return int(re.search(r"^VmLck:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)) * 1024


def cpu_quota(pid: int) -> tuple[int, int]:
    """(quota, period) in µs of the process's CPU cgroup, cgroup v1 or v2 (found through /proc/PID/cgroup)."""
    lines = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    for _, controllers, path in lines:  # v1 (or hybrid): the cpu controller's own hierarchy
        if "cpu" in controllers.split(","):
            folder = next(Path(f, path.lstrip("/")) for f in glob.glob("/sys/fs/cgroup/cpu*/")
                          if Path(f, path.lstrip("/"), "cpu.cfs_quota_us").exists())
            return int((folder / "cpu.cfs_quota_us").read_text()), int((folder / "cpu.cfs_period_us").read_text())
    path = next(path for _, controllers, path in lines if controllers == "")  # v2: one hierarchy
    quota, period = (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max").read_text().split()
    return (-1 if quota == "max" else int(quota)), int(period)


def events(host: Host, name: str) -> str:
    return host.ok("logs", name, "-n", "500").out + host.ok("logs", name, "-n", "500").err


def test_capture_after_on_start_root_only(host: Host, app: tuple[str, Path]) -> None:
    name, _ = app
    snap = snapshot_of(host, name, 1)
    assert snap["state"] == "ready" and snap["size_bytes"] > 20_000_000, snap
    folder = folder_of(host, name, 1)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.parent.stat().st_mode) == 0o700
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    key = json.loads((folder / "key.json").read_text())
    assert key["kernel"] == os.uname().release and key["image_id"].startswith("sha256:")
    assert not folder.with_suffix(".partial").exists()
    assert on_start_count(host, name) == 1
    assert "checkpoint: [green]ready" not in host.ok("status", name).out  # markup rendered, not printed
    assert "checkpoint: ready" in host.ok("status", name).out
    # held in memory by the agent (resident.py): every file of it locked, as the kernel counts it
    assert held_in_memory(host, name, 1)
    images = [p for p in folder.iterdir() if p.is_file()]  # not CRIU's log (work/): restores do not read it
    assert locked_bytes(host.agent_pid()) >= sum(p.stat().st_size for p in images) > 20_000_000
    assert ", in memory" in host.ok("status", name).out


def test_scale_to_zero_then_a_cold_start_restores(host: Host, app: tuple[str, Path]) -> None:
    name, _ = app
    task = cold_call(host, name, 7)
    assert task["start"] == "restored" and task["result"]["boot"] == 1
    assert on_start_count(host, name) == 1  # on_start did not run again
    profile = host.ok("profile", task["task_id"], "--json").json()
    assert profile["start"] == "restored"
    assert set(profile["phases"]) == {"queue", "image_load", "checkpoint_restore", "task_run", "other"}
    assert profile["phases"]["checkpoint_restore"] > 0
    assert abs(sum(profile["phases"].values()) - profile["total"]) <= 0.05 * profile["total"] + 0.002
    assert "checkpoint restore" in host.ok("profile", task["task_id"]).out
    warm = host.call(name, {"x": 8})
    assert warm["start"] == "warm" and warm["result"]["sum"] == EXPECTED_SUM


def test_a_restore_runs_with_the_hosts_cpus_and_the_app_serves_under_its_own_limit(host: Host,
                                                                                    app: tuple[str, Path]) -> None:
    """The app's CPU limit (cpu: 1, the default) would throttle CRIU's copy of its memory inside the container's
    cgroup: the restore runs with all the engine's CPUs, and the limit is back before the container serves."""
    import docker

    name, _ = app
    client = docker.from_env()
    cores = int(client.info()["NCPU"])
    host.wait_scaled_to_zero(name)
    seen: dict[str, set[int]] = {}
    done = threading.Event()

    def watch() -> None:  # the engine's view of every container of the app while the call runs
        while not done.is_set():
            for c in client.api.containers(all=True, filters={"label": f"dev.beamctl.app={name}"}):
                try:
                    nano = client.api.inspect_container(c["Id"])["HostConfig"]["NanoCpus"]
                except docker.errors.NotFound:
                    continue
                seen.setdefault(c["Id"], set()).add(int(nano))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        task = cold_call(host, name, 11)
    finally:
        done.set()
        watcher.join()
    assert task["start"] == "restored"
    (cid,) = [c["Id"] for c in client.api.containers(filters={"label": f"dev.beamctl.app={name}"})]  # from zero
    info = client.api.inspect_container(cid)
    assert info["HostConfig"]["NanoCpus"] == 10**9  # its own limit, as it serves
    quota, period = cpu_quota(int(info["State"]["Pid"]))
    assert quota == period  # the kernel's, not only the engine's record: one CPU
    if cores > 1:
        assert cores * 10**9 in seen[cid], seen[cid]  # lifted while it restored
    else:
        assert seen[cid] == {10**9}  # nothing above one CPU to lift to


def test_restore_after_an_agent_restart(host: Host, app: tuple[str, Path]) -> None:
    name, _ = app
    stop_process(host.agent_pid())
    task = cold_call(host, name, 9)  # the CLI starts a new agent, which finds the snapshot on disk
    assert task["start"] == "restored" and on_start_count(host, name) == 1
    assert held_in_memory(host, name, 1)  # and locks it in memory again


def test_a_corrupted_snapshot_boots_cold_and_is_not_retried(host: Host, app: tuple[str, Path]) -> None:
    name, folder = app
    pages = max(folder_of(host, name, 1).glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(pages, "r+b") as f:
        f.truncate(pages.stat().st_size // 2)
    task = cold_call(host, name, 10)
    assert task["start"] == "cold" and task["result"]["boot"] == 2 and on_start_count(host, name) == 2
    snap = snapshot_of(host, name, 1)
    assert snap["state"] == "restore_failed" and "damaged" in snap["reason"], snap
    assert not folder_of(host, name, 1).exists()  # a failed snapshot is deleted
    assert "restore of v1 failed" in events(host, name)

    again = cold_call(host, name, 11)  # not retried forever: cold again, no capture
    assert again["start"] == "cold" and snapshot_of(host, name, 1)["state"] == "restore_failed"

    host.ok("deploy", "-f", str(folder))  # an unchanged redeploy captures again
    assert host.status(name)["active_version"] == 1
    assert snapshot_of(host, name, 1)["state"] == "ready"
    assert cold_call(host, name, 12)["start"] == "restored"


def test_flipped_bytes_fail_the_digest_boot_cold_and_a_redeploy_recaptures(host: Host,
                                                                           app: tuple[str, Path]) -> None:
    name, folder = app
    pages = max(folder_of(host, name, 1).glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(pages, "r+b") as f:  # same size: only the digest can tell (held in memory: the file changed)
        f.seek(pages.stat().st_size // 2)
        flipped = bytes(b ^ 0x5A for b in f.read(64))
        f.seek(pages.stat().st_size // 2)
        f.write(flipped)
    count = on_start_count(host, name)
    task = cold_call(host, name, 30)  # and its result is right
    assert task["start"] == "cold" and on_start_count(host, name) == count + 1
    snap = snapshot_of(host, name, 1)
    assert (snap["state"], snap["reason"]) == ("restore_failed", f"damaged: {pages.name} does not match its digest")
    host.ok("deploy", "-f", str(folder))
    assert cold_call(host, name, 31)["start"] == "restored"


def test_a_key_mismatch_boots_cold_and_recaptures(host: Host, app: tuple[str, Path]) -> None:
    name, _ = app
    key_file = folder_of(host, name, 1) / "key.json"
    key = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**key, "criu_version": "3.17"}))  # as if CRIU was upgraded since
    count = on_start_count(host, name)
    task = cold_call(host, name, 13)
    assert task["start"] == "cold" and on_start_count(host, name) == count + 1
    assert "criu_version changed" in events(host, name)
    assert snapshot_of(host, name, 1)["state"] == "ready"  # recaptured by that cold boot
    assert json.loads(key_file.read_text())["criu_version"] != "3.17"
    assert cold_call(host, name, 14)["start"] == "restored"


def test_an_unchanged_redeploy_recaptures_a_snapshot_this_host_can_no_longer_restore(
        host: Host, app: tuple[str, Path]) -> None:
    name, folder = app
    key_file = folder_of(host, name, 1) / "key.json"
    key_file.write_text(json.dumps({**json.loads(key_file.read_text()), "format": 1}))  # an older agent's
    count = on_start_count(host, name)
    out = host.ok("deploy", "-f", str(folder), "--json").json()
    assert out["hosts"][0]["checkpoint"]["state"] == "ready", out  # captured again by the deploy itself
    assert on_start_count(host, name) == count + 1
    assert json.loads(key_file.read_text())["format"] != 1
    assert "beamctl's snapshot format changed since it was captured" in events(host, name)
    assert cold_call(host, name, 15)["start"] == "restored"  # the first start after it is restored


def test_a_failed_capture_falls_back_to_cold_boots_and_a_redeploy_retries(host: Host,
                                                                          app: tuple[str, Path]) -> None:
    name, folder = app
    (host.volume(name) / "hold_tcp").write_text("1")
    (folder / "app.py").write_text(CODE.format(version=2))
    host.ok("deploy", "-f", str(folder))  # the deploy succeeds: a failed capture never fails a deploy
    status = host.status(name)
    assert status["active_version"] == 2
    snap = snapshot_of(host, name, 2)
    assert snap["state"] == "checkpoint_failed" and "open TCP connection" in snap["reason"], snap
    assert snapshot_of(host, name, 1) is None and not folder_of(host, name, 1).exists()  # retired: deleted
    assert "checkpoint_failed" in host.ok("status", name).out

    task = cold_call(host, name, 15)  # calls work by cold boot
    assert task["start"] == "cold" and task["result"]["v"] == 2

    (host.volume(name) / "hold_tcp").unlink()
    host.ok("deploy", "-f", str(folder))  # unchanged image: retries the capture
    assert host.status(name)["active_version"] == 2
    assert snapshot_of(host, name, 2)["state"] == "ready"
    restored = cold_call(host, name, 16)
    assert restored["start"] == "restored" and restored["result"]["v"] == 2


def test_stop_deletes_the_snapshot(host: Host, app: tuple[str, Path]) -> None:
    name, _ = app
    assert folder_of(host, name, 2).exists()
    assert held_in_memory(host, name, 2)
    host.ok("stop", name)
    assert not folder_of(host, name, 2).exists() and not folder_of(host, name, 2).parent.exists()
    assert snapshot_of(host, name, 2) is None
    assert locked_bytes(host.agent_pid()) < 1_000_000  # its memory was let go with it
