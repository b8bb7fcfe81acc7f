"""An OCI hook's mounts through capture and restore (issue 20, part 1 item 1), on the real engine, runc and CRIU.

Docker's `--gpus` runs NVIDIA's prestart hook, which bind-mounts libcuda & co. and /dev/nvidia* into the
container outside config.json; runc names only config.json's mounts to CRIU, so the dump failed ("doesn't have
a proper root mount"), and a restore needs the hook's mountpoints in a rootfs that never had them. There is no
GPU here, so a fake does the same thing the same way: a runtime registered with the engine (runc behind a
wrapper that adds a prestart hook to the bundle's config.json, as nvidia-container-runtime does) whose hook
enters the container's mount namespace and bind-mounts a host file onto /etc and a device node onto /dev.
The container's process holds both open, as a CUDA process holds libcuda mapped and /dev/nvidia* open.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from beamctl.agent import checkpoint as cp
from beamctl.agent import mountpoints
from beamctl.agent.containers import DockerContainers
from tests.agent.test_checkpoint import IMAGE, Engine

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("criu") is None or os.geteuid() != 0,
                                 reason="needs CRIU (scripts/setup.sh) and root")]

RUNTIME = "beamctl-test-hooked"
HOME = Path("/usr/local/lib/beamctl-test-hooked")  # root's: the engine runs what is named here
HOST_FILE = HOME / "from-the-host.txt"
HOST_DEVICE = Path("/dev/beamctl-test-null")  # c 1:3, as /dev/null: the engine's default device rules allow it
HOOK = f"""#!/usr/bin/env python3
# An OCI prestart hook like nvidia-container-cli's: it bind-mounts into the container's rootfs, outside config.json.
import json, os, subprocess, sys
state = json.load(sys.stdin)
root = json.load(open(os.path.join(state["bundle"], "config.json")))["root"]["path"]
root = root if root.startswith("/") else os.path.join(state["bundle"], root)
script = ("touch {{r}}/etc/hooked.txt && mount --bind {HOST_FILE} {{r}}/etc/hooked.txt && "
          "touch {{r}}/dev/hooked-null && mount --bind {HOST_DEVICE} {{r}}/dev/hooked-null").format(r=root)
sys.exit(subprocess.run(["nsenter", "-t", str(state["pid"]), "-m", "sh", "-c", script]).returncode)
"""
WRAPPER = f"""#!/bin/sh
# runc, with the hook added to the bundle's config.json on create (as nvidia-container-runtime adds its own),
# and on restore too when the container's environment asks (as dockerd puts --gpus' hook into every spec)
bundle=""; prev=""
for a in "$@"; do
  case "$prev" in --bundle|-b) bundle=$a ;; esac
  case "$a" in --bundle=*) bundle=${{a#--bundle=}} ;; esac
  prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  python3 - "$bundle/config.json" "$*" <<'PY'
import json, sys
path, argv = sys.argv[1], sys.argv[2].split()
spec = json.load(open(path))
again = "BEAMCTL_TEST_HOOK_ON_RESTORE=1" in spec["process"].get("env", [])
if "create" in argv or ("restore" in argv and again):
    hooks = spec.setdefault("hooks", {{}}).setdefault("prestart", [])
    if not any(h["path"] == "{HOME}/hook" for h in hooks):
        hooks.append({{"path": "{HOME}/hook"}})
        json.dump(spec, open(path, "w"))
PY
fi
exec runc "$@"
"""
# fd 3: the host's file, fd 4: the device node, both through the hook's mounts, held by PID 1
HOLDER = ["sh", "-c", "exec 3</etc/hooked.txt 4<>/dev/hooked-null; exec sleep 1000000"]


def _registered(client) -> bool:
    return client.info().get("Runtimes", {}).get(RUNTIME, {}).get("path") == str(HOME / "runtime")


@pytest.fixture(scope="module")
def hooked() -> Engine:
    """The engine, with the hooked runtime registered (daemon.json's `runtimes` is reloaded on SIGHUP)."""
    engine = Engine()
    if "external mnt[]" not in Path("/etc/criu/runc.conf").read_text(errors="replace"):
        pytest.fail("/etc/criu/runc.conf lacks `external mnt[]`: run scripts/setup.sh (hosts install adds it too)")
    HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, text in (("hook", HOOK), ("runtime", WRAPPER)):
        (HOME / name).write_text(text)
        os.chmod(HOME / name, 0o755)
    HOST_FILE.write_text("from the host\n")
    if not HOST_DEVICE.exists():
        os.mknod(HOST_DEVICE, 0o666 | 0o020000, os.makedev(1, 3))
    if not _registered(engine.client):
        conf = Path("/etc/docker/daemon.json")
        settings = json.loads(conf.read_text()) if conf.exists() else {}
        settings.setdefault("runtimes", {})[RUNTIME] = {"path": str(HOME / "runtime")}
        conf.write_text(json.dumps(settings, indent=2) + "\n")
        os.kill(int(Path("/var/run/docker.pid").read_text()), signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not _registered(engine.client):
            assert time.monotonic() < deadline, "the engine did not take the hooked runtime from daemon.json"
            time.sleep(0.2)
    yield engine
    engine.cleanup()


def create(engine: Engine, again: bool = False) -> str:
    env = ["BEAMCTL_TEST_HOOK_ON_RESTORE=1"] if again else []
    cid = engine.api.create_container(IMAGE, command=HOLDER, environment=env, labels={"dev.beamctl.test": "hooks"},
                                      host_config=engine.api.create_host_config(runtime=RUNTIME))["Id"]
    engine.made.append(cid)
    return cid


def in_container(cid: str, command: str) -> str:
    return subprocess.run(["docker", "exec", cid, "sh", "-c", command], capture_output=True, text=True,
                          timeout=30).stdout


def captured(engine: Engine, tmp_path: Path, again: bool = False) -> tuple[DockerContainers, Path]:
    first = create(engine, again)
    engine.api.start(first)
    assert in_container(first, "cat /proc/1/fd/3") == "from the host\n"  # the hook did mount it
    containers = DockerContainers(engine.client)
    snap = tmp_path / "snap"
    containers.capture(first, snap, 60)  # failed before: "./dev/hooked-null doesn't have a proper root mount"
    return containers, snap


def test_a_containers_hook_mounts_are_captured_and_restored(hooked: Engine, tmp_path: Path) -> None:
    containers, snap = captured(hooked, tmp_path)
    assert mountpoints.Mountpoint("/etc/hooked.txt", False) in mountpoints.recorded(snap)
    new = create(hooked)  # its runtime adds the hook on create only (nvidia-container-runtime's way)
    containers.restore(new, snap, 60)  # failed before: "Can't stat mountpoint .../etc/hooked.txt"
    assert hooked.api.inspect_container(new)["State"]["Running"]
    assert in_container(new, "cat /proc/1/fd/3") == "from the host\n"  # the restored fd, on the host's file
    assert in_container(new, "readlink /proc/1/fd/4") == "/dev/hooked-null\n"
    mounts = in_container(new, "cat /proc/self/mountinfo")
    assert f"{HOST_FILE} /etc/hooked.txt " in mounts and "/beamctl-test-null /dev/hooked-null " in mounts


def test_a_hook_that_runs_again_in_the_restore_fails_it_with_the_mount_it_lost(hooked: Engine,
                                                                                tmp_path: Path) -> None:
    """runc runs the spec's prestart hooks during its restore too: this one mounts into the namespace CRIU is
    building, and the file's mount is gone from the result. A restore without it must not go on."""
    containers, snap = captured(hooked, tmp_path, again=True)
    new = create(hooked, again=True)
    with pytest.raises(cp.RestoreFailed, match="lacks the mount at /etc/hooked.txt"):
        containers.restore(new, snap, 60)
    assert not hooked.api.inspect_container(new)["State"]["Running"]


def test_a_damaged_mountpoint_record_is_refused_before_criu(hooked: Engine, tmp_path: Path) -> None:
    containers, snap = captured(hooked, tmp_path)
    (snap / mountpoints.MOUNTPOINTS).write_text('{"mountpoints": [["../../etc/x", false]]}')
    new = create(hooked)
    with pytest.raises(cp.RestoreFailed, match="damaged: mountpoints.json"):
        containers.restore(new, snap, 60)
    assert hooked.api.inspect_container(new)["State"]["Status"] == "created"  # CRIU never ran


def test_a_gpu_restore_target_asks_the_engine_for_device_rules_not_the_gpus_hook(monkeypatch) -> None:
    """The container a GPU snapshot is restored into (pool.py: restore_target) gets no device request, so
    Docker puts no NVIDIA hook into its spec, and the driver's device rules instead; any other GPU container
    asks for its GPUs (which this engine, with no NVIDIA driver, refuses at start)."""
    import docker

    from beamctl.agent import gpus
    from tests.agent.test_sandboxes import Host

    host = Host()
    monkeypatch.setattr(gpus, "host_device_rules", lambda: ["c 195:* rwm", "c 508:* rwm"])
    try:
        cid = host.dc.create(host.args("gpuapp", "restored", gpus=["GPU-5f1e0c2a"], restore_target=True))
        config = host.api.inspect_container(cid)["HostConfig"]
        assert not config.get("DeviceRequests") and config["DeviceCgroupRules"] == ["c 195:* rwm", "c 508:* rwm"]
        cold = host.dc.create(host.args("gpuapp", "cold", gpus=["GPU-5f1e0c2a"]))
        config = host.api.inspect_container(cold)["HostConfig"]
        assert [r["DeviceIDs"] for r in config["DeviceRequests"]] == [["GPU-5f1e0c2a"]]
        assert not config.get("DeviceCgroupRules")
        if shutil.which("nvidia-container-runtime-hook") is None:  # how dockerd finds its NVIDIA driver
            with pytest.raises(docker.errors.APIError, match="device driver"):
                host.api.start(cold)  # the request is made (and refused here: no NVIDIA driver)
    finally:
        host.cleanup()
