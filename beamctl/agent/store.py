"""The agent's records in SQLite: app versions, tasks, events. They survive agent restarts.

One connection shared by the agent's threads behind a lock (SQLite serialises writers anyway);
WAL with synchronous=NORMAL: a record is durable against an agent crash, and a task costs
two small writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    app TEXT NOT NULL, version INTEGER NOT NULL, image TEXT NOT NULL, spec TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, created REAL NOT NULL, PRIMARY KEY (app, version));
CREATE TABLE IF NOT EXISTS apps (
    app TEXT PRIMARY KEY, token TEXT NOT NULL, active INTEGER);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, app TEXT NOT NULL, version INTEGER, status TEXT NOT NULL, start TEXT,
    received REAL NOT NULL, finished REAL, phases TEXT, total REAL, result TEXT, error TEXT,
    container TEXT, trace TEXT, queued TEXT);
CREATE INDEX IF NOT EXISTS tasks_app ON tasks (app, received);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL, app TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_app ON events (app, ts);
CREATE TABLE IF NOT EXISTS snapshots (
    app TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT,
    size_bytes INTEGER, capture_s REAL, failures INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (app, version));
"""
SNAPSHOT_FIELDS = ("state", "reason", "size_bytes", "capture_s", "failures")


class Store:
    def __init__(self, path: Path) -> None:
        if not path.exists():  # 0600 from the start; SQLite gives its -wal and -shm the same mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(tasks)")}
            if "trace" not in columns:  # an agent.db from before 0.2.1
                self._db.execute("ALTER TABLE tasks ADD COLUMN trace TEXT")
            if "queued" not in columns:  # before 0.2.3
                self._db.execute("ALTER TABLE tasks ADD COLUMN queued TEXT")
            if "uid" not in {r[1] for r in self._db.execute("PRAGMA table_info(apps)")}:  # before 0.2.3
                self._db.execute("ALTER TABLE apps ADD COLUMN uid INTEGER")

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    # apps and versions
    def token_digest(self, app: str) -> str | None:
        """The app's token's digest (agent/tokens.py); None: the app was never deployed here."""
        rows = self._q("SELECT token FROM apps WHERE app = ?", (app,))
        return rows[0]["token"] if rows else None

    def has_app(self, app: str) -> bool:
        return self.token_digest(app) is not None

    def ensure_app(self, app: str, token_digest: str) -> bool:
        """Record the app with this token digest unless it is known; True when it was new."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO apps (app, token) VALUES (?, ?)", (app, token_digest))
            return cur.rowcount == 1

    def set_token(self, app: str, token_digest: str) -> None:
        self._q("UPDATE apps SET token = ? WHERE app = ?", (token_digest, app))

    def app_uid(self, app: str, candidates: Iterator[int]) -> int:
        """The uid the app's containers run as here: the one it got first, else the first of `candidates`
        no other app holds (kept for good: its volumes are owned by it)."""
        with self._lock:
            row = self._db.execute("SELECT uid FROM apps WHERE app = ?", (app,)).fetchone()
            if row is None:
                raise KeyError(app)
            if row[0] is not None:
                return int(row[0])
            held = {r[0] for r in self._db.execute("SELECT uid FROM apps WHERE uid IS NOT NULL")}
            uid = next((u for u in candidates if u not in held), None)
            if uid is None:
                raise OverflowError("no uid left for another app on this host")
            self._db.execute("UPDATE apps SET uid = ? WHERE app = ?", (uid, app))
            return uid

    def plain_tokens(self) -> list[tuple[str, str]]:
        """(app, token) kept in the clear by an agent before 0.2.2: to be moved out and hashed."""
        return [(r["app"], r["token"]) for r in self._q("SELECT app, token FROM apps") if
                not r["token"].startswith("sha256:")]

    def active_version(self, app: str) -> int | None:
        rows = self._q("SELECT active FROM apps WHERE app = ?", (app,))
        return rows[0]["active"] if rows else None

    def set_active(self, app: str, version: int | None) -> None:
        self._q("UPDATE apps SET active = ? WHERE app = ?", (version, app))

    def apps(self) -> list[str]:
        return [r["app"] for r in self._q("SELECT app FROM apps ORDER BY app")]

    def new_version(self, app: str, image: str, spec: dict[str, Any]) -> int:
        with self._lock:
            cur = self._db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE app = ?", (app,))
            version = cur.fetchone()[0]
            self._db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, 'starting', NULL, ?)",
                             (app, version, image, json.dumps(spec), time.time()))
        return version

    def set_version_state(self, app: str, version: int, state: str, reason: str | None = None) -> None:
        self._q("UPDATE versions SET state = ?, reason = ? WHERE app = ? AND version = ?",
                (state, reason, app, version))

    def version(self, app: str, version: int) -> dict[str, Any] | None:
        rows = self._q("SELECT * FROM versions WHERE app = ? AND version = ?", (app, version))
        return _version(rows[0]) if rows else None

    def versions_in(self, states: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every app's versions in these states."""
        marks = ", ".join("?" for _ in states)
        return [_version(r) for r in self._q(f"SELECT * FROM versions WHERE state IN ({marks})", states)]

    def versions(self, app: str) -> list[dict[str, Any]]:
        return [_version(r) for r in self._q("SELECT * FROM versions WHERE app = ? ORDER BY version", (app,))]

    # snapshots (issue 6): one row per app version that ever had checkpointing
    def snapshot(self, app: str, version: int) -> dict[str, Any] | None:
        rows = self._q("SELECT * FROM snapshots WHERE app = ? AND version = ?", (app, version))
        return dict(rows[0]) if rows else None

    def snapshots(self, app: str) -> dict[int, dict[str, Any]]:
        return {r["version"]: dict(r) for r in self._q("SELECT * FROM snapshots WHERE app = ?", (app,))}

    def snapshots_in(self, state: str) -> list[tuple[str, int]]:
        return [(r["app"], r["version"]) for r in self._q("SELECT app, version FROM snapshots WHERE state = ?",
                                                           (state,))]

    def set_snapshot(self, app: str, version: int, **fields: Any) -> None:
        """Upsert: the fields given change, the others keep their values (a new row: None / 0)."""
        if not fields or set(fields) - set(SNAPSHOT_FIELDS):
            raise ValueError(f"snapshot fields are {SNAPSHOT_FIELDS}, not {sorted(fields)}")
        cols = ["updated", *fields]
        self._q(f"INSERT INTO snapshots (app, version, {', '.join(cols)}) VALUES (?, ?, {', '.join('?' for _ in cols)}) "
                f"ON CONFLICT (app, version) DO UPDATE SET {', '.join(f'{k} = excluded.{k}' for k in cols)}",
                (app, version, time.time(), *fields.values()))

    def delete_snapshot(self, app: str, version: int) -> None:
        self._q("DELETE FROM snapshots WHERE app = ? AND version = ?", (app, version))

    # tasks
    def task_started(self, task_id: str, app: str, received: float) -> None:
        self._q("INSERT INTO tasks (id, app, status, received) VALUES (?, ?, 'running', ?)",
                (task_id, app, received))

    def task_finished(self, task: dict[str, Any]) -> None:
        self._q("UPDATE tasks SET version = ?, status = ?, start = ?, finished = ?, phases = ?, total = ?, "
                "result = ?, error = ?, trace = ?, container = ?, queued = ? WHERE id = ?",
                (task["version"], task["status"], task["start"], task["finished"], json.dumps(task["phases"]),
                 task["total"], json.dumps(task["result"]), task["error"], task.get("trace"), task["container"],
                 task.get("queued"), task["task_id"]))

    def task(self, task_id: str) -> dict[str, Any] | None:
        rows = self._q("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    def tasks(self, app: str | None, limit: int, status: str | None = None) -> list[dict[str, Any]]:
        """Newest first; only `app`'s and only those in `status` when given."""
        where = [c for c, v in (("app = ?", app), ("status = ?", status)) if v]
        args = tuple(v for v in (app, status) if v)
        rows = self._q("SELECT * FROM tasks" + (f" WHERE {' AND '.join(where)}" if where else "")
                       + " ORDER BY received DESC LIMIT ?", (*args, limit))
        return [_task(r) for r in rows]

    def mark_lost(self) -> int:
        """Tasks still 'running' when the agent (re)starts were cut off by its death."""
        with self._lock:
            cur = self._db.execute("UPDATE tasks SET status = 'lost', error = 'the agent stopped while the "
                                   "task ran' WHERE status = 'running'")
            return cur.rowcount

    # events
    def event(self, app: str, message: str, ts: float | None = None) -> None:
        self._q("INSERT INTO events VALUES (?, ?, ?)", (ts or time.time(), app, message))

    def events(self, app: str, since: float = 0.0) -> Iterator[tuple[float, str]]:
        for r in self._q("SELECT ts, message FROM events WHERE app = ? AND ts >= ? ORDER BY ts", (app, since)):
            yield r["ts"], r["message"]


def _version(r: sqlite3.Row) -> dict[str, Any]:
    return {"app": r["app"], "version": r["version"], "image": r["image"], "spec": json.loads(r["spec"]),
            "state": r["state"], "reason": r["reason"], "created": r["created"]}


def _task(r: sqlite3.Row) -> dict[str, Any]:
    return {"task_id": r["id"], "app": r["app"], "version": r["version"], "status": r["status"],
            "start": r["start"], "received": r["received"], "finished": r["finished"],
            "phases": json.loads(r["phases"]) if r["phases"] else None, "total": r["total"],
            "result": json.loads(r["result"]) if r["result"] else None, "error": r["error"],
            "trace": r["trace"], "container": r["container"], "queued": r["queued"]}
