"""Starting a created container from a checkpoint through the engine (its SDK client or a docker CLI),
killing a restore that outlived its time, and running runc/CRIU commands within a time limit."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any


def engine_for(docker: Any) -> Any:
    """docker: an SDK client, or the path of a docker CLI."""
    return _Sdk(docker) if hasattr(docker, "api") else _Cli(str(docker))


def run_bounded(argv: list[str], timeout_s: float, on_timeout: Any) -> tuple[int | None, str]:
    """(exit status or None on timeout, output); on timeout the whole process group is killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # runc starts criu: both must go on a timeout
    try:
        out, _ = proc.communicate(timeout=max(timeout_s, 0.1))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        on_timeout()
        return None, out


def kill_restore(cid: str) -> None:
    """SIGKILL what the container's shim started (runc, criu, the half-restored tasks); the shim and
    the engine then clean up as after any failed start."""
    parents: dict[int, list[int]] = {}
    shim = None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
        if b"containerd-shim" in cmd and b"\0-id\0" + cid.encode() + b"\0" in cmd:
            shim = int(entry)
    todo = list(parents.get(shim, [])) if shim else []
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class _Sdk:
    """Through the docker SDK's client (the Engine API's start has a checkpoint parameter)."""

    def __init__(self, client: Any) -> None:
        self.client, self.api = client, client.api

    def root(self) -> Path:
        return Path(self.client.info()["DockerRootDir"])

    def start(self, cid: str, name: str, timeout_s: float) -> str | None:
        try:  # the SDK has no checkpoint parameter; the Engine API has
            res = self.api._post(self.api._url("/containers/{0}/start", cid), params={"checkpoint": name},
                                 timeout=timeout_s)
            self.api._raise_for_status(res)
            return None
        except Exception as e:  # docker.errors.APIError, requests' timeouts
            return str(getattr(e, "explanation", None) or e)

    def running(self, cid: str) -> bool:
        return bool(self.api.inspect_container(cid)["State"]["Running"])

    def kill(self, cid: str) -> None:
        self.api.kill(cid)


class _Cli:
    """Through a docker CLI (`docker start --checkpoint`)."""

    def __init__(self, docker: str) -> None:
        self.docker = docker

    def _call(self, *args: str, timeout_s: float = 30) -> tuple[int | None, str]:
        return run_bounded([self.docker, *args], timeout_s, on_timeout=lambda: None)

    def root(self) -> Path:
        return Path(self._call("info", "-f", "{{.DockerRootDir}}")[1].strip())

    def start(self, cid: str, name: str, timeout_s: float) -> str | None:
        rc, out = self._call("start", "--checkpoint", name, cid, timeout_s=timeout_s)
        return None if rc == 0 else (out.strip() or f"docker start exited {rc}")

    def running(self, cid: str) -> bool:
        return self._call("inspect", "-f", "{{.State.Running}}", cid)[1].strip() == "true"

    def kill(self, cid: str) -> None:
        self._call("kill", cid)
