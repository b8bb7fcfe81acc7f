"""The agent killed (kill -9, by the pid in DATA/agent.json) mid-capture (of a call's cold boot, and of a new
version's deploy) and mid-restore of a checkpointed app, on the real engine, runc and CRIU, through the real
CLI (issue 13's fault tier).

One app whose on_start fills 400 MiB with random bytes, so that a capture (runc checkpoint + the digests)
and a restore (docker start --checkpoint) each last long enough to be cut off: the test waits for the
capture's `.partial` folder, or for the restore's link folder in Docker's container folder, and kills the
agent then. Each checks: the call in flight names its task, which `tasks` shows `lost`; the next call
succeeds within one start (which kind, and why, at each test); the snapshot's state in `status` says what
happened; nothing is left behind (no `.partial` folder, no process holding the snapshot folder, no
container outside the pool, no unpacked restore folder of containerd's); the volume's data is intact.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_agent_engine import containers_of, docker
from tests.agent.test_agent_engine import Host
from tests.agent.test_agent_killed_engine import kill_agent, lost_task, start

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("criu") is None or os.geteuid() != 0,
                                 reason="needs CRIU (scripts/setup.sh) and root")]
WINDOW_WAIT_S = 120  # a cold boot (400 MiB on_start) reaching its capture, or a call reaching its restore
SETTLE_S = 15  # what a killed agent's runc/criu or Docker start still does ends within this

YAML = """\
on_start: app:setup
keep_warm_seconds: 2
memory: 1Gi
checkpoint_enabled: true
volumes:
  - name: data
    mount_path: /data
"""
CODE = """\
import hashlib, os

STATE = {}


def setup():
    path = "/data/on_start_count"
    n = int(open(path).read()) + 1 if os.path.exists(path) else 1
    open(path, "w").write(str(n))
    big = bytearray(os.urandom(400 << 20))  # a 400 MiB snapshot: its capture and restore take a while
    STATE.update(big=big, digest=hashlib.sha256(big[::512]).hexdigest(), boot=n)


def handler(**inputs):
    big = STATE["big"]
    return {"boot": STATE["boot"], "intact": len(big) == 400 << 20
            and hashlib.sha256(big[::512]).hexdigest() == STATE["digest"]}
"""



@pytest.fixture(scope="module")
def app(host: Host) -> tuple[str, Path]:
    name, folder = host.app("ckill", YAML, CODE)
    (host.volume(name)).mkdir(parents=True, exist_ok=True)
    (host.volume(name) / "keep.txt").write_text("the user's data\n")
    host.ok("deploy", "-f", str(folder))  # captured during the deploy
    assert snapshot(host, name)["state"] == "ready"
    return name, folder


def snapshot(host: Host, name: str) -> dict[str, Any]:
    return host.status(name)["versions"][0]["checkpoint"]


def snapshots_dir(host: Host, name: str) -> Path:
    return host.agent_dir / "snapshots" / name


def on_start_count(host: Host, name: str) -> int:
    return int((host.volume(name) / "on_start_count").read_text())


def holders(folder: Path, but: int) -> list[str]:
    """Processes (not pid `but`) with an open file, cwd or argument in `folder`: a runc or CRIU left behind."""
    where, found = str(folder), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == but:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            links = [os.readlink(proc / "cwd")]
            links += [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if where in argv or any(link.startswith(where) for link in links):
            found.append(f"{proc.name} {argv[:200]}")
    return found


@functools.cache
def docker_root() -> Path:
    return Path(docker("info", "-f", "{{.DockerRootDir}}").strip())


def ours(folder: str, host: Host) -> bool:
    """A folder of links to snapshot files (Docker's checkpoint folder, containerd's unpacked copy) that
    point into this host's agent folder."""
    mark = str(host.agent_dir).lstrip("/")
    try:
        return any(mark in os.readlink(os.path.join(folder, f)) for f in os.listdir(folder)
                   if os.path.islink(os.path.join(folder, f)))
    except OSError:
        return False


def restore_links(host: Host) -> list[str]:
    return [d for d in glob.glob(str(docker_root() / "containers/*/checkpoints/*")) if ours(d, host)]


def unpacked_left(host: Host) -> list[str]:
    return [d for d in glob.glob("/tmp/ctrd-checkpoint*") if ours(d, host)]


def nothing_left(host: Host, name: str) -> None:
    """No .partial folder, no process in the snapshot folder, no container outside the pool, no link
    folder: waited for up to SETTLE_S (what the dead agent started may still be ending)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        pool = {c["id"] for c in host.status(name)["containers"]}
        left = [f"folder {p}" for p in snapshots_dir(host, name).glob("*.partial")]
        left += [f"process {p}" for p in holders(snapshots_dir(host, name), host.agent_pid())]
        left += [f"container {c} (not in the pool {sorted(pool)})" for c in containers_of(name) if c[:12] not in pool]
        left += [f"unpacked restore folder {d}" for d in unpacked_left(host)]
        left += [f"link folder {d}" for d in restore_links(host)]
        if not left:
            return
        assert time.monotonic() < deadline, left
        time.sleep(0.3)


def dumping_into(host: Host, partial: Path) -> Any:
    """True once the capture's .partial folder exists and a process other than the agent (its runc or
    CRIU) works in it: the folder is made a moment before runc starts, and a kill in that moment would
    cut off no dump at all."""
    return lambda: partial.exists() and bool(holders(partial.parent, host.agent_pid()))


def wait_then_kill(host: Host, call: subprocess.Popen, found: Any, what: str) -> None:
    deadline = time.monotonic() + WINDOW_WAIT_S
    while not found():
        if call.poll() is not None or time.monotonic() > deadline:
            call.kill()
            pytest.fail(f"never saw {what} (call exit {call.returncode}): {call.communicate()}")
        time.sleep(0.01)
    kill_agent(host)


def test_the_agent_killed_mid_capture(host, app):
    """The cut-off capture is `incompatible` (the agent stopped during it) with nothing of it left, and the
    next call boots COLD (there is no snapshot to restore) and captures again; the one after restores."""
    name, _ = app
    host.wait_scaled_to_zero(name)
    key = next(snapshots_dir(host, name).glob("v*")) / "key.json"
    key.write_text(json.dumps({**json.loads(key.read_text()), "criu_version": "3.17"}))  # the next start recaptures
    count = on_start_count(host, name)
    call = start(host, "call", name)
    partial = snapshots_dir(host, name) / "v1.partial"
    wait_then_kill(host, call, dumping_into(host, partial), "runc or CRIU at work in the capture's .partial folder")
    dumping = holders(snapshots_dir(host, name), 0)  # the dead agent's runc and CRIU, still at it
    assert dumping and not (partial / "manifest.json").exists()  # the kill came mid-capture

    task = lost_task(host, name, call)
    assert (task["status"], task["error"]) == ("lost", "the agent stopped while the task ran"), task
    snap = snapshot(host, name)
    assert (snap["state"], snap["reason"]) == ("incompatible", "the agent stopped during its capture"), snap
    nothing_left(host, name)

    after = host.call(name)
    assert (after["status"], after["start"]) == ("succeeded", "cold"), after
    assert after["result"] == {"boot": count + 2, "intact": True}  # the cut-off boot ran on_start too
    assert snapshot(host, name)["state"] == "ready"  # captured again by that cold boot
    nothing_left(host, name)
    host.wait_scaled_to_zero(name)
    again = host.call(name)
    assert (again["start"], again["result"]) == ("restored", {"boot": count + 2, "intact": True}), again
    assert (host.volume(name) / "keep.txt").read_text() == "the user's data\n"


def test_the_agent_killed_mid_restore(host, app):
    """The cut-off restore's container does not survive the agent's restart (it was no READY container of
    the pool), nor do its link folders; the snapshot stays `ready` (nothing was wrong with it), so the
    next call RESTORES again."""
    name, _ = app
    assert snapshot(host, name)["state"] == "ready"
    host.wait_scaled_to_zero(name)
    count = on_start_count(host, name)
    call = start(host, "call", name)
    wait_then_kill(host, call, lambda: bool(restore_links(host)), "the restore's link folder")

    task = lost_task(host, name, call)
    assert (task["status"], task["error"]) == ("lost", "the agent stopped while the task ran"), task
    nothing_left(host, name)
    assert snapshot(host, name)["state"] == "ready"

    after = host.call(name)
    assert (after["status"], after["start"], after["result"]) == \
        ("succeeded", "restored", {"boot": count, "intact": True}), after
    assert on_start_count(host, name) == count  # no boot ran on_start
    # the cut-off restore ran with the host's CPUs (containers.py); what serves now has the app's own limit
    assert [json.loads(docker("inspect", "-f", "{{json .HostConfig.NanoCpus}}", c)) for c in containers_of(name)] \
        == [10**9]
    nothing_left(host, name)
    assert (host.volume(name) / "keep.txt").read_text() == "the user's data\n"


def test_the_agent_killed_mid_capture_of_a_new_versions_deploy(host, app):
    """The deploy of v2 is cut off in v2's capture: v2 is `failed` (the agent stopped during its start),
    v1 goes on serving and its snapshot stays `ready`, so the next call RESTORES v1; a redeploy then
    brings the new code with a snapshot of its own."""
    name, folder = app
    host.wait_scaled_to_zero(name)
    v1_boot = host.call(name)["result"]["boot"]  # restored: the boot its snapshot was taken after
    (folder / "app.py").write_text(CODE + "\nNEW = True\n")
    deploy = start(host, "deploy", "-f", str(folder))
    partial = snapshots_dir(host, name) / "v2.partial"
    wait_then_kill(host, deploy, dumping_into(host, partial), "runc or CRIU at work in v2's .partial folder")
    assert holders(snapshots_dir(host, name), 0) and not (partial / "manifest.json").exists()
    _, err = deploy.communicate(timeout=60)
    assert deploy.returncode == 3, err

    status = host.status(name)  # starts the agent again
    versions = {v["version"]: v for v in status["versions"]}
    assert status["active_version"] == 1
    assert (versions[2]["state"], versions[2]["reason"]) == ("failed", "the agent stopped during its start")
    assert versions[1]["checkpoint"]["state"] == "ready"
    nothing_left(host, name)
    host.wait_scaled_to_zero(name)
    after = host.call(name)
    assert (after["status"], after["start"], after["result"]) == \
        ("succeeded", "restored", {"boot": v1_boot, "intact": True}), after

    out = host.ok("deploy", "-f", str(folder), "--json").json()  # the new code again: a version of its own
    version = host.status(name)["active_version"]
    assert version > 2 and out["hosts"][0]["checkpoint"]["state"] == "ready", out
    nothing_left(host, name)
    host.wait_scaled_to_zero(name)
    assert host.call(name)["start"] == "restored"
    assert (host.volume(name) / "keep.txt").read_text() == "the user's data\n"
