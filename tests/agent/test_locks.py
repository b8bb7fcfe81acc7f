"""Deploy locks on a host (agent/locks.py) and the agent ops over them."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from beamctl.protocol.wire import AgentClient
from beamctl.transport.local import LocalTransport
from beamctl.agent import control, locks
from beamctl.protocol import holders

WHO = {"who": "ada@laptop", "pid": 42, "at": 1_700_000_000.0, "image": "beamctl/app:abc", "op": "deploy"}


def test_acquire_writes_a_private_file_and_a_second_is_refused_with_the_holder(tmp_path):
    got = locks.acquire(tmp_path, "app", WHO)
    assert got["acquired"] is True and len(got["token"]) == 32
    path = tmp_path / "locks" / "app.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "locks").stat().st_mode & 0o777) == "0o700"
    stored = json.loads(path.read_text())
    assert stored == {**WHO, "token": got["token"], "boot_id": None, "pid_ns": None, "pid_start": None,
                      "renewed": stored["renewed"]}
    assert abs(stored["renewed"] - time.time()) < 5  # the agent's clock, not the holder's `at`
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

    no_engine = SimpleNamespace(usage=lambda ids: ({}, {}))  # status asks what containers use: none run
    agent = Agent(tmp_path, containers=no_engine, gpus=[])
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


# a holder that is provably gone (agent/holders.py) ---------------------------------------------------

def _ended_pid() -> int:
    """The pid of a process of ours that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _mine(**extra):
    return {**WHO, "pid": os.getpid(), **holders.this_process(), **extra}


def test_a_lock_whose_process_ended_on_this_machine_is_taken_over_and_says_whom_and_why(tmp_path):
    dead = _ended_pid()
    locks.acquire(tmp_path, "app", _mine(pid=dead, who="root@vm"))
    got = locks.acquire(tmp_path, "app", _mine(who="bob@desk"))
    assert got["acquired"] is True
    assert got["took_over"] == {"holder": {**WHO, "who": "root@vm", "pid": dead},
                                "reason": f"pid {dead} has exited"}
    assert locks.read(tmp_path, "app")["who"] == "bob@desk"
    assert locks.release(tmp_path, "app", got["token"]) is True


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path):
    me = _mine()
    locks.acquire(tmp_path, "app", {**me, "pid_start": me["pid_start"] - 1})  # "our" pid, an older process
    got = locks.acquire(tmp_path, "app", _mine(who="bob@desk"))
    assert got["took_over"]["reason"] == f"pid {os.getpid()} is now another process"


def test_a_live_holder_on_this_machine_is_respected_however_old_its_heartbeat(tmp_path):
    locks.acquire(tmp_path, "app", _mine())
    _age(tmp_path, "app", 3600)
    again = locks.acquire(tmp_path, "app", _mine(who="bob@desk"))
    assert again == {"acquired": False, "holder": {**WHO, "pid": os.getpid()}}


def test_elsewhere_only_the_lease_tells_and_renew_keeps_it(tmp_path):
    token = locks.acquire(tmp_path, "app", {**WHO, "boot_id": "another-machine", "pid_ns": "pid:[1]"})["token"]
    _age(tmp_path, "app", holders.LEASE_S - 5)
    assert locks.acquire(tmp_path, "app", _mine())["acquired"] is False  # within the lease
    _age(tmp_path, "app", holders.LEASE_S + 5)
    assert locks.renew(tmp_path, "app", "0" * 32) is False  # not the holder's token: nothing renewed
    assert locks.renew(tmp_path, "app", token) is True  # the heartbeat
    assert locks.acquire(tmp_path, "app", _mine())["acquired"] is False
    _age(tmp_path, "app", holders.LEASE_S + 5)
    got = locks.acquire(tmp_path, "app", _mine(who="bob@desk"))
    assert got["took_over"] == {"holder": WHO, "reason": f"no heartbeat for {holders.LEASE_S + 5:.0f} s "
                                                         f"(lease {holders.LEASE_S:.0f} s)"}
    assert locks.renew(tmp_path, "app", token) is False  # the old holder learns it lost the lock
    assert locks.release(tmp_path, "app", token) is False and locks.read(tmp_path, "app")["who"] == "bob@desk"
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == [".guard", "app.json"]  # no temp files


def test_two_takeovers_at_once_exactly_one_wins(tmp_path):
    dead = _ended_pid()
    for round_ in range(20):
        app = f"app{round_}"
        locks.acquire(tmp_path, app, _mine(pid=dead, who="root@vm"))
        barrier = threading.Barrier(2)
        results = []

        def take(i):
            barrier.wait()
            results.append((i, locks.acquire(tmp_path, app, _mine(who=f"taker{i}"))))

        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [(i, r) for i, r in results if r["acquired"]]
        assert len(winners) == 1, results
        assert winners[0][1]["took_over"]["holder"]["who"] == "root@vm"
        loser = next(r for _, r in results if not r["acquired"])
        assert loser["holder"]["who"] == f"taker{winners[0][0]}"  # refused by the (live) winner
        assert locks.read(tmp_path, app)["who"] == f"taker{winners[0][0]}"


def _age(directory, app, seconds):
    """As if the holder last renewed `seconds` ago."""
    path = directory / "locks" / f"{app}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "renewed": time.time() - seconds}))


def test_a_heartbeat_during_a_long_request_goes_over_a_stream_of_its_own(tmp_path):
    """One AgentClient, two threads: the deploy's request waits on the kept stream, the renewal is answered."""
    release = threading.Event()

    class Slow:
        def status(self):
            release.wait(10)
            return "slow done"

        def lock_renew(self, app, token):
            return True

    server = control.serve(Slow(), tmp_path / "agent.sock")
    try:
        client = AgentClient(LocalTransport(tmp_path / "agent.sock", timeout=10))
        answers = []
        slow = threading.Thread(target=lambda: answers.append(client.request("status")))
        slow.start()
        time.sleep(0.2)  # the slow request is in flight
        assert client.request("lock_renew", app="app", token="t") == {"ok": True, "result": True}
        assert answers == []
        release.set()
        slow.join(10)
        assert answers == [{"ok": True, "result": "slow done"}]
        assert client.request("lock_renew", app="app", token="t")["ok"]  # the kept stream again
    finally:
        server.shutdown()
        server.server_close()
