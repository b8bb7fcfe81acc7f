"""Deploy locks on a host: one JSON file per app, `DATA/locks/<app>.json` (dir 0700, file 0600).

A lock is taken by creating the file: its content is written in full to a private temp name first and
then hard-linked to the final name, which fails when that exists. So taking it is atomic (across
threads and processes) and nobody ever reads a half-written lock. It holds who took it, from where and
when, for which image and operation, and a token; only the token's bearer releases it (`release`),
anyone may `break_` it (the explicit `beamctl unlock`). The token is never shown to others.
No engine calls, no agent state: the lock outlives an agent restart, as a deploy in flight does.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TOKEN_RE = re.compile(r"^[0-9a-f]{16,64}$")
OPS = ("deploy", "rollback")
TEXT_MAX = 300  # who and image are shown to others; anything longer is cut


def acquire(directory: Path, app: str, holder: dict[str, Any]) -> dict[str, Any]:
    """{"acquired": True, "token"} or {"acquired": False, "holder": {...}} (the holder without its token).

    `holder`: who, pid, at, image, op (others are dropped); a `token` (hex) in it is used as the lock's
    token, so a client that is cut off mid-request can still release what it may have taken."""
    path = _path(directory, app)
    record = _clean(holder)
    token = holder.get("token") if isinstance(holder.get("token"), str) and TOKEN_RE.match(holder["token"]) \
        else secrets.token_hex(16)
    record["token"] = token
    data = json.dumps(record).encode()
    for _ in range(5):  # the lock may be released between our failed link and our read of it
        tmp = path.with_name(f".{app}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
            return {"acquired": True, "token": token}
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        held = read(directory, app)
        if held is not None:
            return {"acquired": False, "holder": held}
    return {"acquired": False, "holder": read(directory, app) or {"who": "unknown (the lock changed hands "
                                                                         "while we looked)"}}


def release(directory: Path, app: str, token: str) -> bool:
    """Remove the lock if `token` is its token: True. Someone else's lock (or none): False, nothing changed."""
    path = _path(directory, app)
    with _guard(directory):
        record = _load(path)
        if record is None or not isinstance(token, str) or not secrets.compare_digest(
                str(record.get("token", "")), token):
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
