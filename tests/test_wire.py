"""protocol/wire.py's AgentClient over a scripted transport: a kept stream that died while idle is replaced
before the request goes out (nothing was sent on it), but an answer cut off after sending is never resent
(the agent may have acted on it)."""

from __future__ import annotations

import io
import json

import pytest

from beamctl.protocol.wire import AgentClient, Stream


class Dead(io.BytesIO):
    def write(self, data):
        raise OSError("Socket is closed")


class Transport:
    """Each open() gives the next scripted stream: ("ok"|"dead"|"cut"); records what each stream was sent."""

    def __init__(self, *kinds):
        self.kinds, self.sent, self.timeouts = list(kinds), [], []

    def open(self):
        kind = self.kinds.pop(0)
        writer = Dead() if kind == "dead" else io.BytesIO()
        self.sent.append(writer)
        answers = b"" if kind == "cut" else b"".join(
            json.dumps({"ok": True, "result": i}).encode() + b"\n" for i in range(3))
        return Stream(io.BytesIO(answers), writer, self.timeouts.append)


def test_a_kept_stream_that_died_while_idle_is_replaced_and_the_request_goes_out_once():
    t = Transport("ok", "ok")
    client = AgentClient(t)
    assert client.request("status", timeout=5) == {"ok": True, "result": 0}
    t.sent[0].write = Dead().write  # the connection under the kept stream went away
    assert client.request("call", timeout=9, app="a") == {"ok": True, "result": 0}
    assert [json.loads(line)["op"] for line in t.sent[1].getvalue().splitlines()] == ["call"]
    assert t.timeouts == [5, 9]


def test_an_answer_cut_off_after_sending_is_an_error_not_a_resend():
    t = Transport("cut", "ok")
    client = AgentClient(t)
    with pytest.raises(ConnectionError):
        client.request("deploy", spec_json={})
    assert len(t.sent) == 1 and json.loads(t.sent[0].getvalue())["op"] == "deploy"
    assert client.request("status") == {"ok": True, "result": 0}  # the next request opens a new stream
