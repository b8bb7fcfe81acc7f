"""Deploy locks on a host (agent/locks.py) and the agent ops over them."""

from __future__ import annotations

import json
import threading

import pytest

from beamctl.agent import control, locks

WHO = {"who": "ada@laptop", "pid": 42, "at": 1_700_000_000.0, "image": "beamctl/app:abc", "op": "deploy"}


def test_acquire_writes_a_private_file_and_a_second_is_refused_with_the_holder(tmp_path):
    got = locks.acquire(tmp_path, "app", WHO)
    assert got["acquired"] is True and len(got["token"]) == 32
    path = tmp_path / "locks" / "app.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "locks").stat().st_mode & 0o777) == "0o700"
    assert json.loads(path.read_text()) == {**WHO, "token": got["token"]}
    again = locks.acquire(tmp_path, "app", {**WHO, "who": "bob@desk"})
    assert again == {"acquired": False, "holder": WHO}  # the holder's token is never shown
    assert locks.read(tmp_path, "app") == WHO
    assert locks.acquire(tmp_path, "other", WHO)["acquired"] is True  # per app
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["app.json", "other.json"]  # no temp files


def test_only_the_token_releases_and_a_gone_lock_is_fine(tmp_path):
    token = locks.acquire(tmp_path, "app", WHO)["token"]
    assert locks.release(tmp_path, "app", "0" * 32) is False
    assert locks.release(tmp_path, "app", None) is False
    assert locks.read(tmp_path, "app") == WHO
    assert locks.release(tmp_path, "app", token) is True
    assert locks.read(tmp_path, "app") is None
    assert locks.release(tmp_path, "app", token) is False  # already gone: no error
    assert locks.acquire(tmp_path, "app", WHO)["acquired"] is True


def test_break_removes_whoever_holds_it(tmp_path):
    assert locks.break_(tmp_path, "app") is None
    token = locks.acquire(tmp_path, "app", WHO)["token"]
    assert locks.break_(tmp_path, "app") == WHO
    assert locks.read(tmp_path, "app") is None
    new = locks.acquire(tmp_path, "app", {**WHO, "who": "bob@desk"})["token"]
    assert locks.release(tmp_path, "app", token) is False  # the broken holder cannot remove the new lock
    assert locks.read(tmp_path, "app")["who"] == "bob@desk"
    assert locks.release(tmp_path, "app", new) is True


def test_a_token_chosen_by_the_client_is_used(tmp_path):
    assert locks.acquire(tmp_path, "app", {**WHO, "token": "ab" * 16}) == {"acquired": True, "token": "ab" * 16}
    bad = locks.acquire(tmp_path, "b", {**WHO, "token": "../x"})["token"]  # not hex: a fresh one
    assert bad != "../x" and len(bad) == 32


def test_racing_threads_exactly_one_wins(tmp_path):
    for round_ in range(20):
        app = f"app{round_}"
        barrier = threading.Barrier(8)
        results = []

        def race(i):
            barrier.wait()
            results.append((i, locks.acquire(tmp_path, app, {**WHO, "pid": i})))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [(i, r) for i, r in results if r["acquired"]]
        assert len(winners) == 1, results
        winner = winners[0][0]
        assert all(r["holder"]["pid"] == winner for _, r in results if not r["acquired"])
        assert json.loads((tmp_path / "locks" / f"{app}.json").read_text())["pid"] == winner


def test_bad_names_and_holders_are_refused(tmp_path):
    for name in ("../etc", "App", "-x", "", "a" * 64, "a/b", "a.json"):
        with pytest.raises(ValueError):
            locks.acquire(tmp_path, name, WHO)
    with pytest.raises(ValueError):
        locks.acquire(tmp_path, "app", "me")
    assert not (tmp_path / "locks" / "app.json").exists()
    odd = locks.acquire(tmp_path, "app", {"who": 3, "op": "rm", "extra": "x" * 10, "image": "i" * 1000})
    assert odd["acquired"]
    assert locks.read(tmp_path, "app") == {"who": None, "pid": None, "at": None, "image": "i" * 300, "op": None}


def test_an_unreadable_lock_still_counts_and_can_be_broken(tmp_path):
    locks.acquire(tmp_path, "app", WHO)
    (tmp_path / "locks" / "app.json").write_text("{half")
    refused = locks.acquire(tmp_path, "app", WHO)
    assert refused["acquired"] is False and "unreadable" in refused["holder"]["who"]
    assert locks.release(tmp_path, "app", "0" * 32) is False
    assert "unreadable" in locks.break_(tmp_path, "app")["who"]
    assert locks.acquire(tmp_path, "app", WHO)["acquired"]


def test_agent_ops_through_the_control_protocol(tmp_path):
    from beamctl.agent.service import Agent

    agent = Agent(tmp_path, containers=None, gpus=[])
    ask = lambda op, **args: control.handle(agent, {"op": op, "args": args})  # noqa: E731
    got = ask("lock_acquire", app="app", holder=WHO)["result"]
    assert got["acquired"]
    assert ask("lock_acquire", app="app", holder=WHO)["result"] == {"acquired": False, "holder": WHO}
    assert ask("lock_release", app="app", token="f" * 32) == {"ok": True, "result": False}
    bad = ask("lock_acquire", app="../x", holder=WHO)
    assert bad["ok"] is False and "not an app name" in bad["error"] and bad["data"] == {"kind": "input"}
    agent.store.ensure_app("app", "tok")
    agent.store.ensure_app("free", "tok2")
    status = {a["app"]: a for a in ask("status")["result"]["apps"]}
    assert status["app"]["lock"] == WHO and status["free"]["lock"] is None
    assert ask("lock_break", app="app")["result"] == WHO
    assert ask("lock_release", app="app", token=got["token"])["result"] is False
    assert ask("lock_acquire", app="app", holder=WHO)["result"]["acquired"]
