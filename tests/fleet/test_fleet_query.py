"""The app commands across the fleet (beamctl/fleet/query.py): pure merging and picking with fake answers,
which agents a command asks, then two real test hosts: status, call, tasks, profile, logs, a paused host."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from beamctl.cli import views
from beamctl.errors import ExitCode
from beamctl.fleet import query
from beamctl.hosts import each
from beamctl.hosts.each import Reply
from beamctl.hosts.fake import FakeHost
from tests.fleet.conftest import hello_on_two_hosts

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"


# --- pure parts ----------------------------------------------------------------------------------------

def status_of(app, busy=(), active=1, states=None):
    states = states or ["ready"] * len(busy)
    return {"apps": [{"app": app, "active_version": active, "image": "img", "endpoint": None, "token": "t",
                      "containers": [{"id": f"c{i}", "version": active, "state": s, "busy": b, "idle_s": 0}
                                     for i, (b, s) in enumerate(zip(busy, states))], "versions": []}]}


def test_call_picks_the_least_busy_host_that_serves_the_app():
    replies = [Reply("a", status_of("app", busy=[2, 1])), Reply("b", status_of("app", busy=[1])),
               Reply("c", status_of("app", busy=[0, 0])), Reply("d", error="d: unreachable")]
    assert query.pick_host(replies, "app") == "c"


def test_ties_go_to_a_ready_container_then_the_first():
    cold = Reply("cold", status_of("app", busy=[]))
    warm = Reply("warm", status_of("app", busy=[0]))
    assert query.pick_host([cold, warm], "app") == "warm"
    assert query.pick_host([warm, Reply("warm2", status_of("app", busy=[0]))], "app") == "warm"
    assert query.pick_host([cold, Reply("cold2", status_of("app"))], "app") == "cold"
    starting = Reply("starting", status_of("app", busy=[0], states=["starting"]))
    assert query.pick_host([starting, warm], "app") == "warm"


def test_hosts_still_tied_take_turns_and_the_turn_counts_per_app(tmp_path, monkeypatch):
    idle = [Reply(h, status_of("app", busy=[0])) for h in ("a", "b", "c")]
    assert [query.pick_host(idle, "app", turn) for turn in range(4)] == ["a", "b", "c", "a"]
    busy_a = [Reply("a", status_of("app", busy=[1])), *idle[1:]]
    assert [query.pick_host(busy_a, "app", turn) for turn in range(3)] == ["b", "c", "b"]  # least busy first
    cold_b = [idle[0], Reply("b", status_of("app")), idle[2]]
    assert [query.pick_host(cold_b, "app", turn) for turn in range(2)] == ["a", "c"]  # a warm one before a cold
    monkeypatch.setenv("BEAMCTL_CACHE_DIR", str(tmp_path))
    assert [query.next_turn("app") for _ in range(3)] == [0, 1, 2] and query.next_turn("other") == 0
    assert query.next_turn("../../etc/passwd") == 0 and not (tmp_path.parent / "etc").exists()


def test_no_host_serving_means_no_pick():
    stopped = Reply("a", status_of("app", active=None))
    other = Reply("b", status_of("other", busy=[0]))
    assert query.pick_host([stopped, other, Reply("c", error="down")], "app") is None


def test_a_call_the_agent_fails_names_the_host_that_failed_it():
    from beamctl.apps import call
    from beamctl.protocol.errors import AgentFailed

    down = FakeHost("h1", fail={"status": "no agent is running on this host"})
    failing = FakeHost("h2", answers={"status": {"ok": True, "result": status_of("app", busy=[0])}},
                       fail={"call": "the agent failed in call: ConnectionError: docker.sock"})
    chosen: list[str] = []
    unanswered: list[str] = []
    with pytest.raises(AgentFailed) as e:
        call([down, failing], "app", {}, chosen.append, unanswered.append)
    assert chosen == ["h2"]
    assert e.value.message == "h2: the agent failed in call: ConnectionError: docker.sock"
    assert down.ops() == ["status"] and failing.ops() == ["status", "call"]
    assert unanswered == []  # a host served the app: the one that did not answer is no news


def test_a_call_that_never_reached_its_host_goes_to_another_one_that_was_cut_off_does_not(tmp_path, monkeypatch):
    from beamctl.apps import call
    from beamctl.protocol.errors import AgentStopped
    from beamctl.transport.errors import HostUnreachable

    idle = {"status": {"ok": True, "result": status_of("app", busy=[0])}}
    monkeypatch.setenv("BEAMCTL_CACHE_DIR", str(tmp_path))  # the turn starts at h1
    gone = FakeHost("h1", answers=idle, fail={"call": HostUnreachable("h1", "connection refused")})
    fine = FakeHost("h2", answers={**idle, "call": lambda args: {"ok": True, "result": {
        "task_id": args["task_id"], "status": "succeeded", "result": {"ran": "h2"}}}})
    unanswered: list[str] = []
    task, where = call([gone, fine], "app", {"x": 1}, lambda h: None, unanswered.append)
    assert (where, task["result"]) == ("h2", {"ran": "h2"})
    sent = [args["task_id"] for host in (gone, fine) for op, args in host.asked if op == "call"]
    assert len(sent) == 2 and sent[0] == sent[1] == task["task_id"]  # one task, under one id
    assert len(unanswered) == 1 and "the task goes to another host" in unanswered[0]

    cut = FakeHost("h1", answers=idle, fail={"call": ConnectionResetError("reset by peer")})
    other = FakeHost("h2", answers={"status": {"ok": True, "result": status_of("app", busy=[1])}})  # h1 first
    with pytest.raises(AgentStopped) as e:  # it may have run on h1: never sent again
        call([cut, other], "app", {}, lambda h: None, lambda line: None)
    assert [op for op, _ in other.asked] == ["status"] and "h1" in e.value.message


def test_tasks_merge_newest_first_with_their_host_and_limit():
    a = Reply("a", [{"task_id": "t1", "received": 10}, {"task_id": "t3", "received": 30}])
    b = Reply("b", [{"task_id": "t2", "received": 20}])
    rows = query.merge_tasks([a, b, Reply("c", error="down")], limit=2)
    assert [(t["task_id"], t["host"]) for t in rows] == [("t3", "a"), ("t2", "b")]


def test_logs_merge_by_time_and_keep_each_hosts_order():
    a = Reply("a", [{"ts": 1, "text": "a1"}, {"ts": 3, "text": "a3"}, {"ts": 3, "text": "a3b"}])
    b = Reply("b", [{"ts": 2, "text": "b2"}])
    merged = query.merge_logs([a, b])
    assert [(e["host"], e["text"]) for e in merged] == [("a", "a1"), ("b", "b2"), ("a", "a3"), ("a", "a3b")]
    line = views.host_log_line({**merged[1], "source": "app"}, width=3)
    assert line.startswith("b   ") and line.endswith("b2")


def test_profile_takes_the_first_host_that_has_the_task():
    replies = [Reply("a", error="no task t-1 on this host"), Reply("b", {"task_id": "t-1"}),
               Reply("c", {"task_id": "t-1"})]
    assert query.first_found(replies).host == "b"
    assert query.first_found([Reply("a", error="no task")]) is None


def test_the_exit_code_says_all_some_or_none_answered():
    ok, down = Reply("a", {}), Reply("b", error="down")
    assert each.outcome([ok, ok]) == ExitCode.OK
    assert each.outcome([ok, down]) == ExitCode.PARTIAL == 5
    assert each.outcome([down]) == ExitCode.FAILURE


def test_status_view_prefixes_each_host_and_shows_errors():
    lines = views.host_status([Reply("a", status_of("app", busy=[0])), Reply("b", error="b: unreachable: [x]")])
    assert all(line.startswith("[bold]a[/]") for line in lines[:-1])
    assert "active: v1" in lines[0]
    assert lines[-1].startswith("[bold]b[/]  [red]error:[/]") and "\\[x]" in lines[-1]
    assert each.error_lines([Reply("b", error="down"), Reply("c", error="c: unreachable")]) == \
        ["b: down", "c: unreachable"]


def test_tasks_table_has_a_host_column_only_when_asked():
    t = {"task_id": "t-1", "app": "app", "version": 1, "status": "succeeded", "start": "warm", "total": 0.1,
         "received": 0, "phases": {}, "host": "gpu1"}
    assert "HOST" not in views.tasks_table([t])[0]
    table = views.tasks_table([t], hosts=True)
    assert "HOST" in table[0] and "gpu1" in table[1]


def test_ask_all_keeps_every_hosts_answer_or_error():
    from beamctl.transport.errors import HostUnreachable

    hosts = [FakeHost("a", answers={"status": {"ok": True, "result": 1}}),
             FakeHost("b", fail={"status": HostUnreachable("b", "no SSH banner")}),
             FakeHost("c", answers={"status": {"ok": False, "error": "c was never deployed here", "hint": "deploy"}}),
             FakeHost("d", fail={"status": ConnectionError("reset")})]
    replies = each.ask_all(hosts, "status")
    assert [h.asked for h in hosts] == [[("status", {})]] * 4
    assert replies[0] == Reply("a", 1)
    assert replies[1].error == "b: unreachable: no SSH banner"
    assert replies[2].error == "c was never deployed here (deploy)"
    assert replies[3].error.startswith("d: unreachable")


def test_which_agents(tmp_path, monkeypatch):
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(tmp_path / "hosts.yaml"))
    monkeypatch.chdir(tmp_path)
    assert query.host_entries("app", None, None) is None  # no beam.yaml: the local agent
    d = tmp_path / "hello"
    shutil.copytree(HELLO, d)
    monkeypatch.chdir(d)
    assert query.host_entries("hello", None, None) is None  # ./beam.yaml without hosts: local
    (d / "beam.yaml").write_text((HELLO / "beam.yaml").read_text() + "hosts: [h1, h2]\n")
    assert [e.name for e in query.host_entries("hello", None, None)] == ["h1", "h2"]
    assert query.host_entries("other", None, None) is None  # ./beam.yaml is another app's
    assert [e.name for e in query.host_entries(None, None, d)] == ["h1", "h2"]
    assert [e.name for e in query.host_entries("x", ["h3"], None)] == ["h3"]


# --- two real hosts ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two(fleet):
    return fleet(2)


@pytest.fixture
def app_dir(tmp_path):
    yield from hello_on_two_hosts(tmp_path, "helloq")


@pytest.mark.integration
def test_app_commands_across_two_hosts(cli, two, app_dir, monkeypatch):
    two.apply_env(monkeypatch)
    f = str(app_dir)
    deployed = cli("deploy", "-f", f, "--json")
    assert deployed.code == 0, deployed.err
    version = json.loads(deployed.out)["version"]

    st = cli("status", "helloq", "-f", f, "--json")
    assert st.code == 0, st.err
    hosts = json.loads(st.out)["hosts"]
    assert [h["host"] for h in hosts] == ["testhost-1", "testhost-2"]
    assert [h["status"]["apps"][0]["active_version"] for h in hosts] == [version, version]
    text = cli("status", "helloq", "-f", f)
    assert text.code == 0 and f"testhost-1  helloq  active: v{version}" in text.out  # the output: stdout
    assert f"testhost-2  helloq  active: v{version}" in text.out

    called = cli("call", "helloq", '{"name": "Ada"}', "-f", f, "--json")
    assert called.code == 0, called.err
    task = json.loads(called.out)
    assert task["status"] == "succeeded" and task["host"] in ("testhost-1", "testhost-2")
    assert f"calling helloq on {task['host']}" in called.err

    listed = cli("tasks", "helloq", "-f", f, "--json")
    assert listed.code == 0, listed.err
    assert [(t["task_id"], t["host"]) for t in listed.out and json.loads(listed.out)] == \
        [(task["task_id"], task["host"])]
    table = cli("tasks", "helloq", "-f", f)
    assert "HOST" in table.out and task["host"] in table.out

    prof = cli("profile", task["task_id"], "-f", f, "--json")
    assert prof.code == 0, prof.err
    assert json.loads(prof.out)["host"] == task["host"]
    assert cli("profile", "t-000000000000", "-f", f).code != 0

    logs = cli("logs", "helloq", "--file", f)
    assert logs.code == 0, logs.err
    assert any(line.startswith(task["host"]) for line in logs.out.splitlines())

    one = cli("status", "helloq", "--host", "testhost-2", "--json")
    assert [h["host"] for h in json.loads(one.out)["hosts"]] == ["testhost-2"]

    two[1].pause()
    try:
        partial = cli("status", "helloq", "-f", f)
    finally:
        two[1].unpause()
    assert partial.code == ExitCode.PARTIAL == 5, partial.err
    assert f"testhost-1  helloq  active: v{version}" in partial.out
    assert "testhost-2  error:" in partial.out and "unreachable" in partial.out

    stopped = cli("stop", "helloq", "-f", f)
    assert stopped.code == 0, stopped.err
    assert "testhost-1: stopped helloq" in stopped.err and "testhost-2: stopped helloq" in stopped.err


def test_logs_follow_polls_every_host_from_its_own_last_line(monkeypatch, capsys, tmp_path):
    from beamctl.cli import app_cmds

    class Logs:
        """A host whose agent has new log lines for each poll (`rounds`); records the `since` of each."""

        local = False

        def __init__(self, name, rounds):
            self.name, self.rounds, self.asked = name, rounds, []
            self.closed = False

        def request(self, op, *, timeout=None, since=0.0, **args):
            assert op == "logs" and args["app"] == "app"
            self.asked.append(since)
            batch = self.rounds.pop(0) if self.rounds else []
            return {"ok": True, "result": [{"ts": ts, "source": "app", "text": f"{self.name}{ts}"} for ts in batch]}

        def close(self):
            self.closed = True

    class Done(Exception):
        pass

    sleeps = []

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) > 2:
            raise Done

    # app_cmds' own `time` only: patching the module's sleep would stop every thread's (a background
    # thread of another test counted as a poll and the follow ended early)
    monkeypatch.setattr(app_cmds, "time", SimpleNamespace(sleep=sleep, time=time.time, monotonic=time.monotonic))
    a, b = Logs("a", [[1.0, 3.0], [3.0, 5.0]]), Logs("b", [[2.0], [], [6.0]])
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(tmp_path / "hosts.yaml"))  # none: --host names are targets
    monkeypatch.setattr(query, "hosts_of", lambda entries, ssh=None: [{"a": a, "b": b}[e.name] for e in entries])
    with pytest.raises(Done):
        app_cmds.logs("app", True, None, 0.0, 100, False, ["a", "b"], None)
    texts = [line.split()[-1] for line in capsys.readouterr().out.splitlines()]  # log lines: stdout
    assert texts == ["a1.0", "b2.0", "a3.0", "a5.0", "b6.0"]  # the repeated a3.0 is not shown twice
    assert a.asked == [0.0, 3.0, 5.0] and b.asked == [0.0, 2.0, 2.0]
    assert a.closed and b.closed  # also when following ends by an exception (Ctrl-C)


def test_app_rows_say_where_each_app_runs_and_in_what_state():
    up = {"apps": [{"app": "a", "active_version": 2, "image": "i", "containers": [
        {"state": "ready", "busy": 1}, {"state": "starting", "busy": 0}],
        "versions": [{"version": 2, "checkpoint": {"state": "ready"}}]}]}
    cold = {"apps": [{"app": "a", "active_version": 2, "image": "i", "containers": [], "versions": []},
                     {"app": "b", "active_version": 1, "image": "j", "containers": [{"state": "starting"}]}]}
    rows = query.app_rows([Reply("h2", cold), Reply("h1", up), Reply("h3", error="down")])
    assert [(r["app"], r["host"], r["state"], r["containers"], r["busy"], r["checkpoint"]) for r in rows] == [
        ("a", "h1", "serving", 2, 1, "ready"), ("a", "h2", "scaled to zero", 0, 0, None),
        ("b", "h2", "starting", 1, 0, None)]
