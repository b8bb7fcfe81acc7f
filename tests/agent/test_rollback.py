"""`rollback`: picking the version to bring back (pure), and the CLI's per-host lines and exit code (fakes)."""

from __future__ import annotations

import pytest

from beamctl.agent.versions import rollback_target
from beamctl.cli import app_cmds, release_cmds
from beamctl.errors import ExitCode


def rows(*states: str) -> list[dict]:
    return [{"version": i + 1, "state": s} for i, s in enumerate(states)]


def test_default_target_is_the_newest_retired_version_before_the_active_one():
    assert rollback_target("a", rows("retired", "retired", "active"), 3, None) == 2
    assert rollback_target("a", rows("retired", "failed", "active"), 3, None) == 1  # never a failed one
    assert rollback_target("a", rows("stopped", "active"), 2, None) == 1
    # after one rollback (v3 rolled back, v2 serving) the next goes further back, not forward
    assert rollback_target("a", rows("retired", "active", "rolled_back"), 2, None) == 1


def test_no_earlier_version_is_a_clear_refusal():
    assert rollback_target("a", rows("active"), 1, None) == "no earlier version of a to roll back to"
    assert rollback_target("a", rows("failed", "active"), 2, None) == "no earlier version of a to roll back to"
    assert rollback_target("a", rows("active", "rolled_back"), 1, None) == "no earlier version of a to roll back to"
    assert "name the version" in rollback_target("a", rows("retired", "stopped"), None, None)


def test_named_version():
    assert rollback_target("a", rows("active", "rolled_back"), 1, 2) == 2  # forward again
    assert rollback_target("a", rows("retired", "stopped"), None, 2) == 2
    assert rollback_target("a", rows("active"), 1, 1) == "v1 of a is already serving"
    assert rollback_target("a", rows("active"), 1, 7) == "a has no version 7 here"
    assert "never served" in rollback_target("a", rows("active", "failed"), 1, 2)


class Fake:
    def __init__(self, name, answer):
        self.name, self.answer, self.asked = name, answer, []

    def request(self, op, timeout=None, **args):
        if op == "lock_acquire":  # the rollback holds the app's deploy lock on every host
            return {"ok": True, "result": {"acquired": True, "token": args["holder"]["token"]}}
        if op == "lock_release":
            return {"ok": True, "result": True}
        self.asked.append((op, args))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


READY = {"ok": True, "result": {"app": "app", "version": 1, "status": "ready", "reason": None,
                                "serving": 1, "rolled_back_from": 2}}
FAILED = {"ok": True, "result": {"app": "app", "version": 1, "status": "failed", "reason": "boom",
                                 "log_tail": ["Traceback", "ValueError: boom"], "serving": 2,
                                 "rolled_back_from": 2}}
REFUSED = {"ok": False, "error": "no earlier version of app to roll back to", "hint": None}


def test_cli_partial_when_some_hosts_failed(monkeypatch, capsys):
    from contextlib import contextmanager

    hosts = [Fake("a", READY), Fake("b", FAILED), Fake("c", REFUSED), Fake("d", ConnectionError("reset"))]

    @contextmanager
    def fleet(name, host, file):
        yield hosts

    monkeypatch.setattr(app_cmds, "_fleet", fleet)
    code = release_cmds.rollback("app", None, False, ["a", "b", "c", "d"], None, 30.0)
    err = capsys.readouterr().err
    assert code == ExitCode.PARTIAL == 5
    assert "a: rolled back app from v2 to v1" in err
    assert "b: v1 did not start: boom (v2 keeps serving)" in err and "  b | ValueError: boom" in err
    assert "c: no earlier version of app to roll back to" in err
    assert "d: unreachable" in err
    assert "partial rollback: 1 of 4 hosts" in err
    assert all(h.asked == [("rollback", {"app": "app", "version": None, "health_timeout": 30.0})]
               for h in hosts[:3])


def test_cli_failure_when_all_hosts_failed(monkeypatch, capsys):
    from contextlib import contextmanager

    @contextmanager
    def fleet(name, host, file):
        yield [Fake("b", FAILED), Fake("c", REFUSED)]

    monkeypatch.setattr(app_cmds, "_fleet", fleet)
    assert release_cmds.rollback("app", 1, False, None, None, 30.0) == ExitCode.FAILURE

    @contextmanager
    def all_ok(name, host, file):
        yield [Fake("a", READY), Fake("e", READY)]

    monkeypatch.setattr(app_cmds, "_fleet", all_ok)
    assert release_cmds.rollback("app", 1, False, None, None, 30.0) == ExitCode.OK


def test_a_rollback_is_refused_while_a_deploy_holds_the_lock(monkeypatch):
    from contextlib import contextmanager

    from beamctl.fleet.locks import DeployLocked

    class Locked(Fake):
        def request(self, op, timeout=None, **args):
            if op == "lock_acquire":
                return {"ok": True, "result": {"acquired": False, "holder": {
                    "who": "ada@desk", "pid": 9, "at": 0, "image": "beamctl/app:new", "op": "deploy"}}}
            return super().request(op, timeout, **args)

    hosts = [Fake("a", READY), Locked("b", READY)]

    @contextmanager
    def fleet(name, host, file):
        yield hosts

    monkeypatch.setattr(app_cmds, "_fleet", fleet)
    with pytest.raises(DeployLocked) as e:
        release_cmds.rollback("app", None, False, ["a", "b"], None, 30.0)
    assert "b: app is locked by ada@desk" in e.value.message
    assert hosts[0].asked == [] and hosts[1].asked == []  # nothing rolled back anywhere
