"""Reaching the agent on this machine: its socket, and starting it when it is not running."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from beamctl.errors import EnvironmentProblem
from beamctl.protocol.layout import default_data_dir
from beamctl.protocol.wire import AgentClient, Stream

START_WAIT_S = 20  # the agent answers within ~1 s; the engine may be slow after a boot


class LocalTransport:
    """A connection to the agent on this machine."""

    def __init__(self, socket_path: Path, timeout: float | None = None) -> None:
        self.socket_path, self.timeout = socket_path, timeout

    def open(self) -> Stream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        return Stream(sock.makefile("rb"), sock.makefile("wb"),
                      lambda t: sock.settimeout(t if t is not None else self.timeout))


def local_agent(autostart: bool = True, data_dir: Path | None = None) -> AgentClient:
    data_dir = data_dir or default_data_dir()
    sock = data_dir / "agent.sock"
    client = _try(sock)
    if client is not None:
        return client
    if not autostart:
        raise EnvironmentProblem(f"no agent is running on this machine ({sock})",
                                 hint="`beamctl deploy` starts one")
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "agent-start.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # commands run at once start one agent; the others wait for it
        return _try(sock) or _start(data_dir, sock)


def _start(data_dir: Path, sock: Path) -> AgentClient:
    log = (data_dir / "agent.log").open("ab")
    argv = [sys.executable, "-m", "beamctl.agent", "--data-dir", str(data_dir)]
    http = os.environ.get("BEAMCTL_AGENT_HTTP")
    if http:
        argv += ["--http", http]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            cwd="/", env=agent_env(os.environ))
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        client = _try(sock)
        if client is not None:
            return client
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = (data_dir / "agent.log").read_text(errors="replace").strip().splitlines()[-3:]
    raise EnvironmentProblem("the local agent did not start: " + (" / ".join(tail) or "no output"),
                             hint=f"see {data_dir / 'agent.log'}")


def agent_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The agent's environment: what it needs, never the deploying user's secrets."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH"}
    return {k: v for k, v in env.items() if k in keep or k.startswith(("DOCKER_", "BEAMCTL_AGENT_"))}


def _try(sock: Path) -> AgentClient | None:
    if not sock.exists():
        return None
    client = AgentClient(LocalTransport(sock))
    try:
        answer = client.request("version")
    except OSError:
        return None
    return client if answer.get("ok") else None
