"""`rollback`: picking the version to bring back (pure), and the CLI's per-host lines and exit code (fakes)."""

from __future__ import annotations

import pytest

from beamctl.agent.versions import rollback_target
from beamctl.cli import release_cmds
from beamctl.errors import ExitCode
from beamctl.fleet import query
from beamctl.hosts.fake import FakeAgent, FakeHost


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


def serve(monkeypatch, tmp_path, hosts):
    """The app's hosts, as the CLI gets them (query.hosts_of) from the --host names it was given."""
    by_name = {h.name: h for h in hosts}
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(tmp_path / "hosts.yaml"))  # none: --host names are targets
    monkeypatch.setattr(query, "hosts_of", lambda entries, ssh=None: [by_name[e.name] for e in entries])
    return hosts


def asked(host):
    """What the host was asked besides the deploy lock."""
    return [(op, args) for op, args in host.asked if not op.startswith("lock_")]


READY = {"ok": True, "result": {"app": "app", "version": 1, "status": "ready", "reason": None,
                                "serving": 1, "rolled_back_from": 2}}
FAILED = {"ok": True, "result": {"app": "app", "version": 1, "status": "failed", "reason": "boom",
                                 "log_tail": ["Traceback", "ValueError: boom"], "serving": 2,
                                 "rolled_back_from": 2}}
REFUSED = {"ok": False, "error": "no earlier version of app to roll back to", "hint": None}


def answering(name, answer):
    return FakeHost(name, answers={"rollback": answer})


def test_cli_partial_when_some_hosts_failed(monkeypatch, capsys, tmp_path):
    hosts = serve(monkeypatch, tmp_path, [answering("a", READY), answering("b", FAILED), answering("c", REFUSED),
                                          FakeHost("d", fail={"rollback": ConnectionError("reset")})])
    code = release_cmds.rollback("app", None, False, ["a", "b", "c", "d"], None, 30.0)
    err = capsys.readouterr().err
    assert code == ExitCode.PARTIAL == 5
    assert "a: rolled back app from v2 to v1" in err
    assert "b: v1 did not start: boom (v2 keeps serving)" in err and "  b | ValueError: boom" in err
    assert "c: no earlier version of app to roll back to" in err
    assert "d: unreachable" in err
    assert "partial rollback: 1 of 4 hosts" in err
    assert all(asked(h) == [("rollback", {"app": "app", "version": None, "health_timeout": 30.0})]
               for h in hosts)
    # the rollback held the app's deploy lock on every host, and gave it back on every one
    assert all([op for op, _ in h.asked if op.startswith("lock_")] == ["lock_acquire", "lock_release"]
               for h in hosts)
    assert all(h.agent.locks == {} for h in hosts)
    assert all(h.closed for h in hosts)


def test_cli_failure_when_all_hosts_failed(monkeypatch, capsys, tmp_path):
    serve(monkeypatch, tmp_path, [answering("b", FAILED), answering("c", REFUSED)])
    assert release_cmds.rollback("app", 1, False, ["b", "c"], None, 30.0) == ExitCode.FAILURE
    assert "partial rollback" not in capsys.readouterr().err

    ok = serve(monkeypatch, tmp_path, [answering("a", READY), answering("e", READY)])
    assert release_cmds.rollback("app", 1, False, ["a", "e"], None, 30.0) == ExitCode.OK
    assert all(asked(h) == [("rollback", {"app": "app", "version": 1, "health_timeout": 30.0})] for h in ok)


def test_a_rollback_is_refused_while_a_deploy_holds_the_lock(monkeypatch, tmp_path):
    from beamctl.fleet.locks import DeployLocked

    deploying = {"who": "ada@desk", "pid": 9, "at": 0, "image": "beamctl/app:new", "op": "deploy"}
    busy = FakeAgent()
    busy.locks["app"] = {**deploying, "token": "theirs"}  # a deploy of app holds b's lock
    hosts = serve(monkeypatch, tmp_path, [answering("a", READY), FakeHost("b", busy, answers={"rollback": READY})])
    with pytest.raises(DeployLocked) as e:
        release_cmds.rollback("app", None, False, ["a", "b"], None, 30.0)
    assert "b: app is locked by ada@desk" in e.value.message
    assert e.value.holder == deploying
    assert asked(hosts[0]) == [] and asked(hosts[1]) == []  # nothing rolled back anywhere
    assert hosts[0].agent.locks == {}  # a's lock, taken before b refused, given back
    assert busy.locks["app"]["token"] == "theirs"  # the deploy's: untouched


def test_old_versions_secret_values_go_and_such_a_version_is_not_rolled_back_to(tmp_path):
    from types import SimpleNamespace

    from beamctl.agent import deployments
    from beamctl.agent.service import Agent
    from beamctl.protocol.errors import AgentError

    engine = SimpleNamespace(usage=lambda ids: ({}, {}), has_image=lambda ref: True)
    agent = Agent(tmp_path, containers=engine, gpus=[])
    agent.store.ensure_app("demo", "sha256:" + "0" * 64)
    spec = {"app": "demo", "image": "beamctl/demo:1", "secret_names": ["KEY"], "runtime_api": 2}
    for v in range(1, 9):
        assert agent.store.new_version("demo", "beamctl/demo:1", spec) == v
        agent.store.set_version_state("demo", v, "retired")
    agent.store.set_active("demo", 2)  # a rollback brought v2 back: its values stay whatever its age
    secrets = tmp_path / "secrets"
    for name in [*(f"demo-v{v}.json" for v in range(1, 9)), "demo-v2-v1.json"]:  # the last: app "demo-v2"'s
        (secrets / name).write_text("{}")
    agent._deployments._prune_secrets("demo", 8)
    assert sorted(p.name for p in secrets.iterdir()) == ["demo-v2-v1.json", "demo-v2.json", "demo-v4.json",
                                                         "demo-v5.json", "demo-v6.json", "demo-v7.json",
                                                         "demo-v8.json"]
    assert deployments.KEEP_SECRETS == 5
    with pytest.raises(AgentError, match="v1's secret values are no longer kept here"):
        agent.rollback("demo", 1)
