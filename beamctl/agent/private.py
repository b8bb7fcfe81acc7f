"""The agent's data folder is root's alone (or the user's whose agent it is): the folder 0700, every file
the agent writes 0600. `secure` tightens a folder an older agent left readable (0644 database, logs, ...)
once at start; `write` / `append` create files 0600 from the first byte."""

from __future__ import annotations

import os
import threading
from pathlib import Path

FILE_MODE, DIR_MODE = 0o600, 0o700
OPEN_TO_VOLUMES = "volumes"  # below volumes/APP/ each volume folder belongs to the app's containers


def secure(data_dir: Path) -> None:
    """The data folder 0700, and everything in it not others' to read (volume folders' insides excepted:
    they are the app's, behind 0700 parents)."""
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(data_dir, DIR_MODE)
    for root, dirs, files in os.walk(data_dir):
        here = Path(root)
        rel = here.relative_to(data_dir).parts
        if rel[:1] == (OPEN_TO_VOLUMES,) and len(rel) >= 2:
            dirs[:] = []  # volumes/APP: its own mode is set below; what the app keeps inside is its own
            continue
        for d in dirs:
            _chmod(here / d, DIR_MODE)
        for f in files:
            path = here / f
            if not path.is_socket():
                _chmod(path, FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    try:
        if not path.is_symlink() and (path.stat().st_mode & 0o777) & ~mode:
            os.chmod(path, mode & path.stat().st_mode if path.is_dir() else mode)
    except OSError:
        pass


def write(path: Path, data: str | bytes) -> None:
    """`data` into `path` atomically, 0600 from the start."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)


def append(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)
