"""The bridge (agent/bridge.py) brings back an agent whose restart loop a reboot ended: it starts the loop
an install left (supervise.sh) when nothing listens and no loop runs, and never a second loop."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from beamctl.agent import bridge

LISTEN = """import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8)
while True:
    c, _ = s.accept()
    f = c.makefile("rwb")
    for line in f:
        f.write(b'{"ok": true, "result": "pong"}\\n'); f.flush()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the bridge revives an agent as root only")
def test_no_agent_and_no_loop_starts_the_installed_loop_once(tmp_path: Path):
    data, root = tmp_path / "data", tmp_path / "root"
    data.mkdir()
    root.mkdir()
    (root / "fake_agent.py").write_text(LISTEN)
    script = root / "supervise.sh"  # as the installer writes it: a loop that restarts the agent
    script.write_text(f"#!/bin/sh\necho $$ >{data}/supervisor.pid\nwhile :; do\n    {sys.executable} "
                      f"{root}/fake_agent.py {data}/agent.sock\n    sleep 2\ndone\n")
    script.chmod(0o755)
    (data / "supervisor.pid").write_text(str(os.getpid()))  # from before the reboot: names another process
    assert not bridge._supervising(data)
    try:
        assert bridge.revive(data, root, wait_s=10)  # nothing listened, no loop ran: started, and it answers
        pid = int((data / "supervisor.pid").read_text())
        assert bridge._supervising(data)
        talk = bridge.Bridge(data / "agent.sock")
        assert talk.forward(b'{"op": "status"}\n') == b'{"ok": true, "result": "pong"}\n'
        talk.close()
        assert not bridge.revive(data, root, wait_s=1)  # a loop runs: never a second one
        assert int((data / "supervisor.pid").read_text()) == pid
    finally:
        if (data / "supervisor.pid").exists():
            os.killpg(int((data / "supervisor.pid").read_text()), signal.SIGKILL)  # its own session


def test_nothing_installed_means_no_revival(tmp_path: Path):
    assert not bridge.revive(tmp_path, tmp_path / "nowhere", wait_s=0.5)
    assert not (tmp_path / "agent.log").exists()
