"""Each app's endpoint token: the database keeps only its SHA-256 (`sha256:HEX`), so a copy of agent.db
or of a backup opens nothing; the value itself is in `DATA/tokens/APP` (0600, root's), for `status` to
show to whoever may ask the agent (its socket is 0600 too). A token is checked by its digest in
constant time. Rotation replaces both; the old value stops working at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from beamctl.agent import private

PREFIX = "sha256:"
MIN_LEN = 32  # a rotated token the client chose: at least this many characters of token_urlsafe


def new() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return PREFIX + hashlib.sha256(token.encode()).hexdigest()


def matches(given: str, stored: str | None) -> bool:
    """Is `given` the token whose digest is `stored`? (constant time; no stored token: never)"""
    if not stored or not stored.startswith(PREFIX):
        return False
    return hmac.compare_digest(digest(given).encode(), stored.encode())


def path(data_dir: Path, app: str) -> Path:
    return data_dir / "tokens" / app


def save(data_dir: Path, app: str, token: str) -> None:
    folder = data_dir / "tokens"
    folder.mkdir(mode=private.DIR_MODE, exist_ok=True)
    private.write(path(data_dir, app), token)


def read(data_dir: Path, app: str) -> str | None:
    try:
        return path(data_dir, app).read_text().strip() or None
    except OSError:
        return None


def well_formed(token: str) -> bool:
    """At least MIN_LEN characters of A-Z, a-z, 0-9, - and _ (what `new` makes)."""
    return len(token) >= MIN_LEN and token.replace("-", "").replace("_", "").isalnum() and token.isascii()
