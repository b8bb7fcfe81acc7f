"""The deploy lock across hosts (fleet/locks.py) with fake agents backed by real lock files, and `unlock`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time

import pytest

from beamctl.agent import control
from beamctl.agent import locks as host_locks
from beamctl.errors import ExitCode
from beamctl.fleet import locks, query
from beamctl.hosts.host import LocalHost
from beamctl.transport.errors import HostUnreachable

ME = {"who": "ada@laptop", "pid": 1, "at": 1_700_000_000.0, "image": "beamctl/app:new", "op": "deploy"}
OTHER = {"who": "bob@desk", "pid": 7, "at": time.time() - 120, "image": "beamctl/app:old", "op": "rollback"}


class Host:
    """A host (hosts/host.py) whose agent's lock ops run over a real lock directory; records every request
    (into a shared log too) and the timeout it was asked with."""

    local = False

    def __init__(self, name, root, log, fail=None):
        self.name, self.dir, self.log, self.fail = name, root / name, log, fail
        self.dir.mkdir()
        self.timeouts = []
        self.closed = False

    def request(self, op, *, timeout=None, **args):
        self.log.append((self.name, op))
        self.timeouts.append(timeout)
        if self.fail is not None:
            raise self.fail
        if op == "lock_acquire":
            return {"ok": True, "result": host_locks.acquire(self.dir, args["app"], args["holder"])}
        if op == "lock_release":
            return {"ok": True, "result": host_locks.release(self.dir, args["app"], args["token"])}
        if op == "lock_renew":
            return {"ok": True, "result": host_locks.renew(self.dir, args["app"], args["token"])}
        if op == "lock_break":
            return {"ok": True, "result": host_locks.break_(self.dir, args["app"])}
        raise AssertionError(op)

    def locked(self, app="app"):
        return host_locks.read(self.dir, app)

    def close(self):
        self.closed = True


@pytest.fixture
def hosts(tmp_path):
    """The hosts by name (given to the code as a list, in no particular order), and the shared log."""
    log = []
    return {n: Host(n, tmp_path, log) for n in ("c", "a", "b")}, log


def every(agents):
    return list(agents.values())


def test_locks_every_host_in_sorted_order_and_releases_at_the_end(hosts):
    agents, log = hosts
    lines = []
    with locks.hold(every(agents), "app", ME, 0, lines.append) as held:
        assert sorted(held) == ["a", "b", "c"] and held.missing == {}
        assert len(set(held.values())) == 1
        assert all(h.locked() == ME for h in agents.values())
        assert [e for e in log if e[1] == "lock_acquire"] == [("a", "lock_acquire"), ("b", "lock_acquire"),
                                                               ("c", "lock_acquire")]
    assert all(h.locked() is None for h in agents.values())
    assert lines == []
    assert [e for e in log if e[1] == "lock_release"] == [("a", "lock_release"), ("b", "lock_release"),
                                                          ("c", "lock_release")]
    assert all(set(h.timeouts) == {locks.LOCK_TIMEOUT_S} for h in agents.values())  # every lock request's


def test_a_held_lock_refuses_with_the_holder_and_gives_back_what_was_taken(hosts):
    agents, log = hosts
    other = {**OTHER, "at": time.time() - 120}  # taken 2 minutes before this test, not before the run
    host_locks.acquire(agents["b"].dir, "app", other)
    with pytest.raises(locks.DeployLocked) as e:
        with locks.hold(every(agents), "app", ME, 0, lambda m: None):
            pytest.fail("must not get the lock")
    assert e.value.exit_code == ExitCode.FAILURE
    assert e.value.host == "b" and e.value.holder == other
    assert e.value.message.startswith("b: app is locked by bob@desk (pid 7) since ")
    assert "2 min ago: rollback of beamctl/app:old" in e.value.message
    assert e.value.hint == ("wait with --lock-wait SECONDS (a dead holder's lock is taken over after 60 s without "
                            "its heartbeat), or if that deploy is dead: beamctl unlock app")
    assert agents["a"].locked() is None  # taken before b refused, given back
    assert agents["c"].locked() is None and ("c", "lock_acquire") not in log  # never asked past b
    assert agents["b"].locked() == other  # someone else's: untouched


def test_waits_and_gets_the_lock_when_the_holder_lets_go(hosts, monkeypatch):
    agents, log = hosts
    monkeypatch.setattr(locks, "POLL_S", 0.01)
    other = host_locks.acquire(agents["c"].dir, "app", OTHER)["token"]
    polls = []

    class Slow(Host):
        def request(self, op, *, timeout=None, **args):
            if op == "lock_acquire":
                polls.append(1)
                if len(polls) == 3:
                    host_locks.release(agents["c"].dir, "app", other)  # the other deploy ends
            return super().request(op, timeout=timeout, **args)

    agents["c"].__class__ = Slow
    lines = []
    with locks.hold(every(agents), "app", ME, 30, lines.append) as held:
        assert sorted(held) == ["a", "b", "c"]
        assert agents["c"].locked() == ME
    assert len(polls) == 3
    assert len(lines) == 1 and lines[0].startswith("waiting up to 30 s for the lock on c held by bob@desk")
    assert all(h.locked() is None for h in agents.values())


def test_waiting_gives_up_after_wait_s(hosts, monkeypatch):
    agents, _ = hosts
    monkeypatch.setattr(locks, "POLL_S", 0.01)
    host_locks.acquire(agents["a"].dir, "app", OTHER)
    start = time.monotonic()
    with pytest.raises(locks.DeployLocked) as e:
        with locks.hold(every(agents), "app", ME, 0.2, lambda m: None):
            pass
    assert 0.2 <= time.monotonic() - start < 2
    assert e.value.message.endswith(("(waited 0.2 s)", "(waited 0.3 s)"))
    assert agents["b"].locked() is None and agents["c"].locked() is None


@pytest.mark.parametrize("exc", [RuntimeError("deploy blew up"), KeyboardInterrupt()])
def test_released_when_the_body_fails_or_is_interrupted(hosts, exc):
    agents, _ = hosts
    with pytest.raises(type(exc)):
        with locks.hold(every(agents), "app", ME, 0, lambda m: None):
            assert agents["b"].locked() == ME
            raise exc
    assert all(h.locked() is None for h in agents.values())


def test_interrupted_while_acquiring_releases_what_may_have_been_taken(hosts):
    agents, _ = hosts

    class CutOff(Host):
        def request(self, op, *, timeout=None, **args):
            answer = super().request(op, timeout=timeout, **args)  # the host took the lock ...
            if op == "lock_acquire":
                raise KeyboardInterrupt  # ... but Ctrl-C came before its answer
            return answer

    agents["b"].__class__ = CutOff
    with pytest.raises(KeyboardInterrupt):
        with locks.hold(every(agents), "app", ME, 0, lambda m: None):
            pytest.fail("not reached")
    assert all(h.locked() is None for h in agents.values())


def test_a_host_that_does_not_answer_is_left_out_not_a_lock_failure(hosts):
    agents, log = hosts
    agents["b"].fail = HostUnreachable("b", "connection refused")
    lines = []
    with locks.hold(every(agents), "app", ME, 0, lines.append) as held:
        assert sorted(held) == ["a", "c"]
        assert held.missing == {"b": "b: unreachable: connection refused"}
    assert agents["a"].locked() is None and agents["c"].locked() is None
    assert log.count(("b", "lock_release")) == 0  # nothing reached it: nothing to release
    assert lines == []


def test_a_host_cut_off_mid_request_is_released_quietly_and_release_failures_never_hide_the_error(hosts):
    agents, log = hosts

    class Flaky(Host):
        def request(self, op, *, timeout=None, **args):
            self.log.append((self.name, op))
            if op == "lock_release":
                raise ConnectionError("reset")
            host_locks.acquire(self.dir, args["app"], args["holder"])
            raise TimeoutError("timed out")

    agents["a"].__class__ = Flaky  # takes the lock, answer lost; every release fails
    lines = []
    with pytest.raises(RuntimeError, match="the real error"):
        with locks.hold(every(agents), "app", ME, 0, lines.append) as held:
            assert sorted(held) == ["b", "c"] and "a" in held.missing
            raise RuntimeError("the real error")
    assert ("a", "lock_release") in log  # tried, since it may hold the lock
    assert lines == []  # quietly: we never knew we held it
    assert agents["b"].locked() is None and agents["c"].locked() is None


def test_a_release_failure_of_a_held_lock_is_a_progress_line(hosts):
    agents, _ = hosts
    lines = []
    with locks.hold(every(agents), "app", ME, 0, lines.append):
        agents["a"].fail = ConnectionError("reset")
    assert lines == ["a: could not release the deploy lock of app (the agent is not answering); "
                     "the next deploy will take it over as stale"]


def test_holder_here_and_describe():
    h = locks.holder_here("app", "beamctl/app:1", "rollback")
    assert set(h) == {"who", "pid", "at", "image", "op", "boot_id", "pid_ns", "pid_start"}
    assert "@" in h["who"] and h["op"] == "rollback" and h["pid_start"] > 0 and h["pid_ns"].startswith("pid:[")
    at = time.mktime((2026, 1, 2, 14, 3, 22, 0, 0, -1))
    assert locks.describe({**OTHER, "at": at}, now=at + 12 * 60) == \
        "bob@desk (pid 7) since 14:03:22, 12 min ago: rollback of beamctl/app:old"
    assert locks.describe({**OTHER, "at": at}, now=at + 3 * 86400).startswith("bob@desk (pid 7) since 2026-01-02 14:03:22")


def test_a_gone_holders_lock_is_taken_over_with_a_line_that_names_it_and_why(hosts):
    agents, _ = hosts
    proc = subprocess.Popen(["true"])
    proc.wait()
    gone = {**locks.holder_here("app", "beamctl/app:old"), "who": "root@vm", "pid": proc.pid}  # this machine
    host_locks.acquire(agents["b"].dir, "app", gone)
    lines = []
    with locks.hold(every(agents), "app", locks.holder_here("app", "beamctl/app:new"), 0, lines.append) as held:
        assert sorted(held) == ["a", "b", "c"]
    assert len(lines) == 1
    assert re.fullmatch(rf"b: took over the deploy lock of app from root@vm \(pid {proc.pid}\) since [0-9:]+, "
                        rf"0 s ago: deploy of beamctl/app:old; its holder is gone: pid {proc.pid} has exited",
                        lines[0]), lines[0]
    assert all(h.locked() is None for h in agents.values())


def test_a_live_holder_elsewhere_keeps_its_lock_by_its_heartbeat(hosts, monkeypatch):
    from beamctl.protocol import holders

    agents, log = hosts
    monkeypatch.setattr(holders, "RENEW_S", 0.02)
    elsewhere = {**ME, "boot_id": "another-machine", "pid_ns": "pid:[1]"}
    with locks.hold(every(agents), "app", elsewhere, 0, lambda m: None):
        record = agents["a"].dir / "locks" / "app.json"
        stale = {**json.loads(record.read_text()), "renewed": time.time() - 3600}
        tampered = record.with_name("tampered.tmp")  # in one rename, as the agent writes: a heartbeat reading
        tampered.write_text(json.dumps(stale))  # a half-written file would take the lock for lost
        os.replace(tampered, record)  # as if unseen for an hour ...
        deadline = time.monotonic() + 10
        while json.loads(record.read_text())["renewed"] == stale["renewed"]:  # ... until the next renewal
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.01)
        with pytest.raises(locks.DeployLocked):
            with locks.hold(every(agents), "app", locks.holder_here("app", "beamctl/app:2"), 0, lambda m: None):
                pass
    assert {op for _, op in log} >= {"lock_renew"}
    assert all(h.locked() is None for h in agents.values())


def test_a_holder_whose_lock_was_taken_over_is_told_once(hosts, monkeypatch):
    from beamctl.protocol import holders

    agents, _ = hosts
    monkeypatch.setattr(holders, "RENEW_S", 0.02)
    lines = []
    with locks.hold([agents["a"]], "app", ME, 0, lines.append):
        host_locks.break_(agents["a"].dir, "app")
        host_locks.acquire(agents["a"].dir, "app", OTHER)
        deadline = time.monotonic() + 10
        while not lines:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
    assert lines == ["a: the deploy lock of app is no longer ours (taken over or removed while no heartbeat "
                     "reached it)"]
    assert agents["a"].locked() == OTHER  # someone else's: not released by us


def test_the_lines_about_locks_word_for_word():
    at = time.mktime((2026, 1, 2, 14, 3, 22, 0, 0, -1))
    holder = {"who": "root@vm", "pid": 9865, "at": at, "image": "beamctl/rt-basic:abc", "op": "deploy"}
    assert locks.took_over_line("local", "rt-basic", {"holder": holder, "reason": "pid 9865 has exited"},
                                now=at + 120) == (
        "local: took over the deploy lock of rt-basic from root@vm (pid 9865) since 14:03:22, 2 min ago: deploy "
        "of beamctl/rt-basic:abc; its holder is gone: pid 9865 has exited")
    assert locks.unreleased_line("local", "rt-basic", ConnectionRefusedError(111, "Connection refused")) == (
        "local: could not release the deploy lock of rt-basic (the agent is not answering); "
        "the next deploy will take it over as stale")
    assert locks.unreleased_line("b", "app", HostUnreachable("b", "connection refused")) == (
        "b: could not release the deploy lock of app (unreachable: connection refused); "
        "the next deploy will take it over as stale")
    assert locks.unreleased_line("b", "app", socket.timeout()) == (
        "b: could not release the deploy lock of app (no answer from the agent in time); "
        "the next deploy will take it over as stale")


def test_break_locks_answers_per_host(hosts):
    agents, _ = hosts
    host_locks.acquire(agents["b"].dir, "app", OTHER)
    agents["c"].fail = ConnectionError("reset")
    replies = locks.break_locks(every(agents), "app")
    assert [r.host for r in replies] == ["a", "b", "c"]
    assert replies[0].result is None and replies[0].error is None
    assert replies[1].result == OTHER and agents["b"].locked() is None
    assert replies[2].error.startswith("c: unreachable")


def test_unlock_cli_across_hosts(hosts, monkeypatch, capsys, tmp_path):
    from beamctl.cli import release_cmds

    agents, _ = hosts
    host_locks.acquire(agents["a"].dir, "app", OTHER)
    agents["c"].fail = ConnectionError("reset")
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(tmp_path / "hosts.yaml"))  # none: --host names are targets
    monkeypatch.setattr(query, "hosts_of", lambda entries, ssh=None: [agents[e.name] for e in entries])
    code = release_cmds.unlock("app", False, ["c", "a", "b"], None)
    err = capsys.readouterr().err
    assert code == ExitCode.PARTIAL
    assert "a: removed the lock held by bob@desk (pid 7) since " in err
    assert "b: no lock on app" in err and "c: unreachable" in err
    assert agents["a"].locked() is None
    assert all(h.closed for h in agents.values())  # the command's hosts are closed when it ends


def test_unlock_cli_on_the_local_agent(tmp_path, monkeypatch, cli):
    from beamctl.agent.service import Agent

    data = tmp_path / "agent"
    data.mkdir()
    monkeypatch.setenv("BEAMCTL_AGENT_DIR", str(data))
    server = control.serve(Agent(data, containers=None, gpus=[]), data / "agent.sock")
    try:
        host_locks.acquire(data, "app", OTHER)
        r = cli("unlock", "app", cwd=tmp_path)
        assert r.code == 0 and "removed the lock held by bob@desk" in r.err and "rollback of beamctl/app:old" in r.err
        assert host_locks.read(data, "app") is None
        r = cli("unlock", "app", "--json", cwd=tmp_path)
        assert r.code == 0 and "no lock on app" in r.err
        assert '"removed": null' in r.out
        here = LocalHost(data)  # a local deploy's
        try:
            with locks.hold([here], "app", ME, 0, lambda m: None) as held:
                assert list(held) == ["local"] and held.missing == {} and host_locks.read(data, "app") == ME
            assert host_locks.read(data, "app") is None
        finally:
            here.close()
    finally:
        server.shutdown()
        server.server_close()
