"""A cache of schema verdicts: documents (by hash of schema + data) already seen to be valid.

jsonschema costs ~80 ms to import, more than the rest of `beamctl validate`; a document
that passed the schema once passes it again, so only its hash is looked up. Only valid
verdicts are stored, as empty files; any error here just means "not cached".
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("BEAMCTL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "beamctl"


def _entry(key: str) -> Path:
    return cache_dir() / "schema-valid" / key[:2] / key


def known_valid(key: str) -> bool:
    return _entry(key).is_file()


def remember_valid(key: str) -> None:
    path = _entry(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        pass  # a read-only home only costs speed
