"""Each app's own user (agent/app_users.py): the uid range, what a host's users take from it, ownership of a
folder (links changed, never followed), and the capability that decides whether snapshots may run as it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from beamctl.agent import app_users
from beamctl.agent.store import Store


def test_uids_come_from_the_range_less_the_hosts_users_and_stay_the_apps(tmp_path, monkeypatch):
    monkeypatch.setattr(app_users, "_known", lambda uid: uid in (61000, 61002))  # the host's own users
    store = Store(tmp_path / "agent.db")
    for app in ("a", "b", "c"):
        store.ensure_app(app, "sha256:x")
    assert [store.app_uid(app, app_users.candidates()) for app in ("a", "b", "a", "c")] == [61001, 61003, 61001, 61004]
    reopened = Store(tmp_path / "agent.db")  # kept for good: an agent restart changes nothing
    assert reopened.app_uid("b", app_users.candidates()) == 61003
    with pytest.raises(KeyError):
        store.app_uid("never-deployed", app_users.candidates())
    store.ensure_app("d", "sha256:x")
    with pytest.raises(OverflowError):
        store.app_uid("d", iter([61001, 61003]))


def test_a_store_from_before_gets_the_column(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "agent.db")
    db.execute("CREATE TABLE apps (app TEXT PRIMARY KEY, token TEXT NOT NULL, active INTEGER)")
    db.execute("INSERT INTO apps VALUES ('old', 'sha256:x', 1)")
    db.commit()
    db.close()
    assert Store(tmp_path / "agent.db").app_uid("old", iter([61005])) == 61005


def test_own_makes_everything_the_uids_and_follows_no_link(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("not the app's")
    volume = tmp_path / "volume"
    (volume / "deep" / "er").mkdir(parents=True)
    (volume / "deep" / "er" / "file").write_text("x")
    (volume / "link").symlink_to(outside)
    app_users.own(volume, 61234)
    owned = [volume, *volume.rglob("*")]
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in owned} == {(61234, 61234)}
    assert outside.stat().st_uid == os.getuid()  # the link's target is not the app's
    os.chown(volume / "deep" / "er" / "file", 0, 0)
    app_users.own(volume, 61234)  # the top is the uid's already: left as it is (one walk, once)
    assert (volume / "deep" / "er" / "file").stat().st_uid == 0


def test_the_capability_that_lets_criu_snapshot_another_users_process():
    assert app_users.can_snapshot_others("Name:\tx\nCapEff:\t000001ffffffffff\n")
    assert not app_users.can_snapshot_others("CapEff:\t000001fffeffffff\n")  # all but CAP_SYS_RESOURCE
    assert not app_users.can_snapshot_others("CapEff:\tzz\n") and not app_users.can_snapshot_others("")
