"""`python3 -m beamctl.agent.bridge [--data-dir DIR]`: the agent's control socket on stdin/stdout.

What `SshTransport(host, [python, "-m", "beamctl.agent.bridge"])` runs on a host, so an AgentClient
on the client drives that host's agent: each request line read from stdin goes to DIR/agent.sock and
the agent's answer line goes to stdout. Without a running agent, the restart loop an install left on a
host without systemd is started again (`revive`: a reboot ended it); where there is none, every request
gets one JSON line `{"ok": false, "error": "no agent is running on this host"}`. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from beamctl.protocol.errors import AGENT_STOPPED
from beamctl.protocol.layout import ROOT, default_data_dir
from beamctl.protocol.wire import MAX_LINE_BYTES

NO_AGENT = "no agent is running on this host"
CONNECT_TIMEOUT_S = 5.0
REVIVE_WAIT_S = 30.0  # an agent restarted by the bridge answers within this (it adopts its containers first)


def _error(message: str, hint: str | None = None, kind: str | None = None) -> bytes:
    return json.dumps({"ok": False, "error": message, "hint": hint,
                       **({"data": {"kind": kind}} if kind else {})}).encode() + b"\n"


class Bridge:
    """One kept-open connection to the agent's socket, reopened when the agent went away."""

    def __init__(self, sock_path: Path) -> None:
        self.sock_path = sock_path
        self._io: tuple[Any, Any, socket.socket] | None = None

    def _open(self) -> tuple[Any, Any, socket.socket] | None:
        if self._io is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(CONNECT_TIMEOUT_S)
            try:
                s.connect(str(self.sock_path))
            except OSError:
                s.close()
                return None
            s.settimeout(None)  # a call may run for a long time; the client's side decides
            self._io = (s.makefile("rb"), s.makefile("wb"), s)
        return self._io

    def close(self) -> None:
        if self._io is not None:
            for f in self._io:
                f.close()
            self._io = None

    def forward(self, line: bytes) -> bytes:
        """The agent's answer to one request line (always one line)."""
        if len(line) > MAX_LINE_BYTES:
            return _error("request too large")
        io = self._open()
        if io is None and revive(self.sock_path.parent, Path(ROOT)):
            io = self._open()
        if io is None:
            return _error(NO_AGENT, f"nothing listens on {self.sock_path}; run: beamctl hosts install")
        reader, writer, _ = io
        try:
            writer.write(line if line.endswith(b"\n") else line + b"\n")
            writer.flush()
            answer = reader.readline()
        except OSError:
            answer = b""
        if not answer:
            self.close()
            return _error("the agent closed the connection (restarting?)", "retry in a few seconds",
                          kind=AGENT_STOPPED)
        return answer


def revive(data_dir: Path, root: Path, wait_s: float = REVIVE_WAIT_S) -> bool:
    """Start the agent's restart loop again where an install left one (a host without systemd) and none
    runs: a reboot of such a host (or a restart of its container) ends the loop, and the first request
    after it brings the agent back instead of answering "no agent". True once its socket accepts."""
    script = root / "supervise.sh"
    if not script.is_file() or os.geteuid() != 0 or _supervising(data_dir):
        return False
    log = open(data_dir / "agent.log", "ab")
    try:
        subprocess.Popen([str(script)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    finally:
        log.close()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(data_dir / "agent.sock"))
            return True
        except OSError:
            time.sleep(0.1)
        finally:
            probe.close()
    return False


def _supervising(data_dir: Path) -> bool:
    """A restart loop runs now (its pid file names a process running supervise.sh: a pid from before a
    reboot may name anything)."""
    try:
        pid = int((data_dir / "supervisor.pid").read_text().strip())
        return b"supervise.sh" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def pump(stdin: BinaryIO, stdout: BinaryIO, sock_path: Path) -> None:
    bridge = Bridge(sock_path)
    try:
        for line in stdin:
            if not line.strip():
                continue
            stdout.write(bridge.forward(line))
            stdout.flush()
    finally:
        bridge.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beamctl-agent-bridge", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    try:
        pump(sys.stdin.buffer, sys.stdout.buffer, data_dir / "agent.sock")
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
