"""A cache of schema verdicts: documents already seen to pass the schema.

jsonschema costs ~80 ms to import, more than the rest of `beamctl validate`; a document
that passed the schema once passes it again. An entry is named by a checksum of its key
and holds the whole key (schema fingerprint + canonical JSON of the data), which is
compared in full, so a checksum collision can never pass an unchecked document. Only
valid verdicts are stored; any error here just means "not cached".
"""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

from beamctl.paths import cache_dir


def _entry(key: str) -> Path:
    data = key.encode()
    name = f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}{len(data):x}"
    return cache_dir() / "schema-valid" / name[:2] / name


def known_valid(key: str) -> bool:
    try:
        return _entry(key).read_text(encoding="utf-8") == key
    except (OSError, UnicodeDecodeError):
        return False


def remember_valid(key: str) -> None:
    path = _entry(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(key, encoding="utf-8")
        tmp.replace(path)  # readers never see half an entry
    except OSError:
        pass  # a read-only home only costs speed
