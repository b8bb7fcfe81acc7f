"""Deploy locks on a host: one JSON file per app, `DATA/locks/<app>.json` (dir 0700, file 0600).

A lock is taken by creating the file: its content is written in full to a private temp name first and
then hard-linked to the final name, which fails when that exists. So taking it is atomic (across
threads and processes) and nobody ever reads a half-written lock. It holds who took it, from where and
when, for which image and operation, and a token; only the token's bearer releases it (`release`),
anyone may `break_` it (the explicit `beamctl unlock`). The token is never shown to others.
A lock whose holder is provably gone (agent/holders.py: its process ended here, or no `renew` within
the lease) is taken over by the next `acquire`, under the same guard as release, so one taker wins.
No engine calls, no agent state: the lock outlives an agent restart, as a deploy in flight does.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from beamctl.protocol import holders

APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TOKEN_RE = re.compile(r"^[0-9a-f]{16,64}$")
OPS = ("deploy", "rollback")
TEXT_MAX = 300  # who and image are shown to others; anything longer is cut


def acquire(directory: Path, app: str, holder: dict[str, Any]) -> dict[str, Any]:
    """{"acquired": True, "token"} (+ "took_over": {"holder", "reason"} when a gone holder's lock was
    replaced) or {"acquired": False, "holder": {...}} (the holder without its token).

    `holder`: who, pid, at, image, op and the facts of agent/holders.py (others are dropped); a `token`
    (hex) in it is used as the lock's token, so a client that is cut off mid-request can still release
    what it may have taken."""
    path = _path(directory, app)
    record = {**_clean(holder), **_facts(holder)}
    token = holder.get("token") if isinstance(holder.get("token"), str) and TOKEN_RE.match(holder["token"]) \
        else secrets.token_hex(16)
    record.update(token=token, renewed=time.time())  # `renewed`: the agent's clock, as the lease's
    tmp = _write_private(path, record)
    try:
        for _ in range(5):  # the lock may be released or taken over between our failed link and our read
            try:
                os.link(tmp, path)
                return {"acquired": True, "token": token}
            except FileExistsError:
                pass
            held = _load(path)
            if held is None:
                if path.exists():
                    break  # unreadable: it still counts (read() says so); `beamctl unlock` removes it
                continue
            reason = _gone(held)
            if reason is None:
                return {"acquired": False, "holder": _clean(held)}
            if _take_over(directory, path, tmp, held):
                return {"acquired": True, "token": token, "took_over": {"holder": _clean(held), "reason": reason}}
    finally:
        tmp.unlink(missing_ok=True)
    return {"acquired": False, "holder": read(directory, app) or {"who": "unknown (the lock changed hands "
                                                                         "while we looked)"}}


def renew(directory: Path, app: str, token: str) -> bool:
    """The holder's heartbeat: stamp `renewed` now if `token` holds the lock (True); else False."""
    path = _path(directory, app)
    with _guard(directory):
        record = _load(path)
        if not _matches(record, token):
            return False
        tmp = _write_private(path, {**record, "renewed": time.time()})
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        return True


def _take_over(directory: Path, path: Path, tmp: Path, stale: dict[str, Any]) -> bool:
    """Replace the lock judged gone by ours (`tmp`), atomically: under the guard (as renew, release and
    break), only if it is still that very record, and by a rename, so the file never goes missing and no
    plain acquire (a link, which fails while it exists) slips in between."""
    with _guard(directory):
        if _load(path) != stale:
            return False  # renewed, released or taken meanwhile: looked at again
        os.replace(tmp, path)
        return True


def _gone(record: dict[str, Any]) -> str | None:
    here = holders.this_machine()
    pid = record.get("pid")
    same = record.get("boot_id") == here.boot_id and record.get("pid_ns") == here.pid_ns
    start_now = holders.start_time(pid) if same and isinstance(pid, int) and pid > 0 else None
    return holders.gone(record, here, start_now, time.time())


def _write_private(path: Path, record: dict[str, Any]) -> Path:
    """`record` in full in a 0600 temp file beside `path` (for a link or a rename)."""
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(record).encode())
        f.flush()
        os.fsync(f.fileno())
    return tmp


def release(directory: Path, app: str, token: str) -> bool:
    """Remove the lock if `token` is its token: True. Someone else's lock (or none): False, nothing changed."""
    path = _path(directory, app)
    with _guard(directory):
        if not _matches(_load(path), token):
            return False
        path.unlink(missing_ok=True)
        return True


def break_(directory: Path, app: str) -> dict[str, Any] | None:
    """Remove the lock whoever holds it; the holder it had (without its token), or None when there was none."""
    path = _path(directory, app)
    with _guard(directory):
        held = read(directory, app)
        path.unlink(missing_ok=True)
        return held


def read(directory: Path, app: str) -> dict[str, Any] | None:
    """The holder (without its token), or None when the app is not locked."""
    path = _path(directory, app)
    if not path.exists():
        return None
    record = _load(path)
    if record is None:
        if not path.exists():
            return None
        return {"who": f"unknown (unreadable lock file {path})", "pid": None, "at": None, "image": None,
                "op": None}
    return _clean(record)


def _path(directory: Path, app: str) -> Path:
    if not isinstance(app, str) or not APP_RE.match(app):
        raise ValueError(f"not an app name: {app!r}")
    locks = Path(directory) / "locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    if locks.stat().st_mode & 0o777 != 0o700:
        os.chmod(locks, 0o700)
    return locks / f"{app}.json"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _matches(record: dict[str, Any] | None, token: Any) -> bool:
    return record is not None and isinstance(token, str) and secrets.compare_digest(
        str(record.get("token", "")).encode(), token.encode())


def _facts(holder: dict[str, Any]) -> dict[str, Any]:
    """What tells whether the holder is gone (agent/holders.py); never shown to others."""
    def text(key: str) -> str | None:
        value = holder.get(key)
        return value[:100] if isinstance(value, str) else None

    start = holder.get("pid_start")
    return {"boot_id": text("boot_id"), "pid_ns": text("pid_ns"),
            "pid_start": start if isinstance(start, int) and not isinstance(start, bool) else None}


def _clean(holder: Any) -> dict[str, Any]:
    """Only the known fields, with their types; never the token."""
    if not isinstance(holder, dict):
        raise ValueError("a lock holder is an object: who, pid, at, image, op")

    def text(key: str) -> str | None:
        value = holder.get(key)
        return value[:TEXT_MAX] if isinstance(value, str) else None

    def number(key: str) -> float | int | None:
        value = holder.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    op = holder.get("op")
    return {"who": text("who"), "pid": number("pid"), "at": number("at"), "image": text("image"),
            "op": op if op in OPS else None}


@contextmanager
def _guard(directory: Path) -> Iterator[None]:
    """Release and break read-then-remove under one flock, so they never remove a lock taken in between."""
    fd = os.open(Path(directory) / "locks" / ".guard", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
