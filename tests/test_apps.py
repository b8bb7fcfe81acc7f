"""`call` when the agent stops mid-request (issue 13, item 6): the words, the exit code, the task id the
client made; with a fake agent at the protocol level (its stream ends, as a killed agent's does), and
hosts/each.py's reading of such a stream. The real agent killed mid-call: tests/agent/test_faults_engine.py."""

from __future__ import annotations

import json
import socketserver
import threading
from contextlib import contextmanager

import pytest

from beamctl.agent import control
from beamctl.errors import ExitCode
from beamctl.fleet import query
from beamctl.hosts.each import ask
from beamctl.hosts.fake import FakeHost
from beamctl.protocol import wire
from beamctl.protocol.errors import AGENT_STOPPED, AgentStopped, stopped_message


@pytest.mark.parametrize("args, want", [
    (("call", "hello", "t-0123456789ab", None),
     ("the agent stopped during task t-0123456789ab of hello; it will show as lost in: beamctl tasks hello", None)),
    (("call", "hello", "t-0123456789ab", "gpu1"),
     ("the agent on gpu1 stopped during task t-0123456789ab of hello; it will show as lost in: beamctl tasks hello "
      "--host gpu1", None)),
    (("deploy", "hello", None, None),
     ("the agent stopped during the deploy of hello",
      "deploy again: the agent starts again, and takes this deploy's lock over as stale")),
    (("status", None, None, None),
     ("the agent stopped while answering status", "run the command again (that starts the agent)")),
])
def test_stopped_message_word_for_word(args, want):
    assert stopped_message(*args) == want


def test_agent_stopped_is_an_environment_problem_not_an_internal_error():
    e = AgentStopped("call", "hello", "t-0123456789ab")
    assert e.exit_code == ExitCode.ENVIRONMENT == 3
    assert (e.op, e.app, e.task_id, e.host) == ("call", "hello", "t-0123456789ab", None)


class DiesOnCall(socketserver.StreamRequestHandler):
    """Answers `version`; on `call` records the request and ends the stream without an answer."""

    seen: list = []

    def handle(self):
        for line in self.rfile:
            request = json.loads(line)
            self.seen.append(request)
            if request["op"] == "call":
                return
            self.wfile.write(json.dumps({"ok": True, "result": {"version": "x"}}).encode() + b"\n")
            self.wfile.flush()


@contextmanager
def dying_agent(data_dir):
    DiesOnCall.seen = []
    server = socketserver.ThreadingUnixStreamServer(str(data_dir / "agent.sock"), DiesOnCall)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield DiesOnCall.seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_local_call_cut_off_names_the_task_id_it_sent(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("BEAMCTL_AGENT_DIR", str(tmp_path))
    with dying_agent(tmp_path) as seen:
        r = cli("call", "hello", '{"name": "Ada"}', cwd=tmp_path)
    sent = [s for s in seen if s["op"] == "call"]
    assert len(sent) == 1 and sent[0]["args"]["inputs"] == {"name": "Ada"}
    task_id = sent[0]["args"]["task_id"]
    assert wire.TASK_ID_RE.match(task_id)
    assert r.code == 3 and r.out == ""
    assert r.err == (f"error: the agent stopped during task {task_id} of hello; it will show as lost in: "
                     f"beamctl tasks hello\n")


def fleet_agent(stop_by):
    """A host's agent that serves `hello` and stops during the call, as the SSH bridge reports it."""
    serving = {"ok": True, "result": {"apps": [{"app": "hello", "active_version": 3, "containers": []}]}}
    stopped = {"ok": False, "error": "the agent closed the connection (restarting?)",
               "hint": "retry in a few seconds", "data": {"kind": AGENT_STOPPED}}  # what agent/bridge.py answers
    if stop_by == "eof":
        return FakeHost("gpu1", fail={"call": ConnectionError("the agent closed the connection")},
                        answers={"status": serving})
    return FakeHost("gpu1", answers={"status": serving, "call": stopped})


@pytest.mark.parametrize("stop_by", ["eof", "bridge"])
@pytest.mark.parametrize("hosts", [1, 3])
def test_a_call_on_a_host_cut_off_names_the_host_and_the_task(monkeypatch, cli, tmp_path, stop_by, hosts):
    agent = fleet_agent(stop_by)
    idle = [FakeHost(f"idle{i}") for i in range(hosts - 1)]  # serve nothing: the call goes to gpu1
    monkeypatch.setattr(query, "hosts_of", lambda entries, ssh=None: [*idle, agent])
    r = cli("call", "hello", "--host", "gpu1", cwd=tmp_path)
    task_id = next(args for op, args in agent.asked if op == "call")["task_id"]
    assert wire.TASK_ID_RE.match(task_id)
    assert r.code == 3, r.err
    assert r.err.splitlines()[-1] == (f"error: the agent on gpu1 stopped during task {task_id} of hello; it will "
                                      f"show as lost in: beamctl tasks hello --host gpu1")


def test_ask_marks_a_stream_that_ended_but_not_a_refusal_or_a_timeout():
    def ended(outcome):
        return ask(FakeHost("h", fail={"call": outcome}), "call", app="hello", task_id="t-0123456789ab")

    for broke in (ConnectionResetError(), EOFError()):
        reply = ended(broke)
        assert reply.stopped is True and isinstance(reply.exc, AgentStopped)
        assert reply.exc.message.startswith("the agent on h stopped during task t-0123456789ab of hello")
    assert ended(TimeoutError("timed out")).stopped is False
    refused = ended("hello is not deployed here")
    assert (refused.stopped, refused.error) == (False, "hello is not deployed here")


def test_the_agent_takes_the_clients_task_id_and_refuses_a_bad_or_used_one(tmp_path):
    from beamctl.agent.service import Agent

    agent = Agent(tmp_path, containers=None, gpus=[])
    ask = lambda **args: control.handle(agent, {"op": "call", "args": args})  # noqa: E731
    bad = ask(app="hello", inputs={}, task_id="../x")
    assert bad["ok"] is False and bad["error"] == "not a task id: '../x' (t- and 12 hex digits)"
    agent.store.task_started("t-0123456789ab", "hello", 1.0)
    used = ask(app="hello", inputs={}, task_id="t-0123456789ab")
    assert used["ok"] is False and used["error"] == "task t-0123456789ab exists already"
    assert ask(app="hello", inputs={}, task_id="t-aaaaaaaaaaaa")["error"] == "hello is not deployed here"


def test_an_unexpected_exception_in_an_op_is_answered_never_a_dropped_connection(capsys):
    class Broken:
        def status(self):
            raise KeyError("oops")

    answer = control.handle(Broken(), {"op": "status"})
    assert answer == {"ok": False, "error": "the agent failed in status: KeyError: 'oops'",
                      "hint": "see agent.log in the agent's data dir"}
    assert "Traceback" in capsys.readouterr().err  # into agent.log


def test_the_bridge_marks_an_agent_that_stopped_mid_request_as_the_fleet_call_reads_it(tmp_path):
    import io

    from beamctl.agent import bridge

    out = io.BytesIO()
    with dying_agent(tmp_path):
        bridge.pump(io.BytesIO(b'{"op": "version"}\n{"op": "call", "args": {}}\n'), out, tmp_path / "agent.sock")
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["ok"] is True and "data" not in first
    assert second == {"ok": False, "error": "the agent closed the connection (restarting?)",
                      "hint": "retry in a few seconds", "data": {"kind": AGENT_STOPPED}}

    assert ask(FakeHost("gpu1", answers={"call": second}), "call").stopped is True
