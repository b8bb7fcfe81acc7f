"""The agent's door (beamctl/agent/door.py, control.py): what a client sends is checked before any of it
is used: framing, argument types, app names, a deploy's spec. Through the real control socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from beamctl.agent import control, door
from beamctl.protocol.spec import AppSpec, VolumeSpec
from beamctl.protocol.wire import MAX_LINE_BYTES


class Agent:
    """Records what reached it: nothing refused at the door may."""

    def __init__(self) -> None:
        self.reached: list = []

    def tasks(self, app=None, limit=20, status=None):
        self.reached.append(("tasks", app, limit))
        return []

    def status(self, app=None):
        self.reached.append(("status", app))
        return {}


@pytest.fixture
def sock(tmp_path):
    agent = Agent()
    server = control.serve(agent, tmp_path / "agent.sock")
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(tmp_path / "agent.sock"))
    s.settimeout(10)
    yield agent, s
    s.close()
    server.shutdown()
    server.server_close()


def ask(s: socket.socket, line: bytes) -> dict:
    s.sendall(line + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(data)
        data += chunk
    return json.loads(data)


def test_lines_that_are_not_requests_are_answered_and_the_connection_serves_on(sock):
    agent, s = sock
    for line, words in ((b"[1, 2]", "a request is a JSON object"), (b"not json", "the request is not JSON"),
                        (b'{"op": "tasks", "args": [1]}', "the arguments must be a JSON object"),
                        (b'{"op": "tasks", "args": {"limit": "abc"}}', "limit must be an integer, not str"),
                        (b'{"op": "tasks", "args": {"limit": true}}', "limit must be an integer, not bool"),
                        (b'{"op": "status", "args": {"app": "../../../tmp/x"}}', "'../../../tmp/x' is not an app name")):
        answer = ask(s, line)
        assert answer["ok"] is False and words in answer["error"], (line, answer)
    assert agent.reached == []
    assert ask(s, b'{"op": "tasks", "args": {"limit": 5}}') == {"ok": True, "result": []}
    assert agent.reached == [("tasks", None, 5)]


def test_a_line_over_the_limit_is_refused_without_reading_on(sock):
    _, s = sock
    s.sendall(b'{"op": "status", "args": {"app": "' + b"a" * (MAX_LINE_BYTES + 10))  # no newline: never ends
    data = s.recv(65536)
    assert json.loads(data)["error"] == f"request larger than {MAX_LINE_BYTES >> 20} MiB"
    assert s.recv(65536) == b""  # and the connection closed


GOOD = AppSpec("demo", "beamctl/demo:0123456789abcdef", volumes=(VolumeSpec("models", "/models"),),
               env={"A": "1"}, secret_names=("KEY",))


@pytest.mark.parametrize("change, words", [
    ({"app": "../../../tmp/x"}, "is not an app name"),
    ({"app": "x\n"}, "is not an app name"),
    ({"image": "--privileged"}, "is not an image reference"),
    ({"volumes": (VolumeSpec("../etc", "/data"),)}, "is not a volume name"),
    ({"volumes": (VolumeSpec("d", "//proc"),)}, "would hide /proc"),
    ({"volumes": (VolumeSpec("d", "/data:ro"),)}, "contains :"),
    ({"volumes": (VolumeSpec("d", "data"),)}, "must be absolute"),
    ({"env": {"A\nB": "1"}}, "is not an environment variable name"),
    ({"env": {"A": "x\0y"}}, "holds a NUL"),
    ({"cpu": 1e-10}, "cpu 1e-10 is outside"),
    ({"memory_bytes": 10 ** 30}, "is outside 1 byte-64Ti"),
])
def test_a_spec_a_client_could_not_have_written_is_refused(change, words):
    spec = AppSpec(**{**GOOD.__dict__, **change})
    assert door.spec_problem(GOOD, {"KEY": "v"}) is None
    why = door.spec_problem(spec, {"KEY": "v"})
    assert why is not None and words in why, why


def test_a_deploy_with_such_a_spec_writes_nothing(tmp_path):
    from beamctl.agent.service import Agent as RealAgent

    agent = RealAgent(tmp_path, containers=SimpleNamespace(usage=lambda ids: ({}, {})), gpus=[])
    bad = {**GOOD.to_json(), "app": "../../../tmp/escaped"}
    answer = control.handle(agent, {"op": "deploy", "args": {"spec_json": bad, "secret_values": {"KEY": "v"}}})
    assert answer["ok"] is False and "deploy refused" in answer["error"] and answer["data"]["kind"] == "input"
    assert not any("escaped" in str(p) for p in Path(tmp_path).rglob("*"))
    assert not (tmp_path.parent.parent / "tmp" / "escaped").exists()
