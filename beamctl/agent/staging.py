"""Layers a cut image ship left whole on this host (load_image.py keeps them): one `<hex>.tar` per diffID in
STAGED_DIR (0700; files 0600), `.part` while one arrives. Each is checked against its name when used; the
ones no deploy came back for go after STAGED_KEEP_S."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

from beamctl.protocol.layout import LOAD_STEP_PREFIX as STEP_PREFIX

CHUNK = 1 << 20
STAGED_KEEP_S = 3 * 86400  # staged layers no deploy came back for
STAGED_NAME = re.compile(r"^([0-9a-f]{64})\.tar$")


def say(step: str, reason: str) -> None:
    sys.stderr.write(f"{STEP_PREFIX}{step}: {reason}\n")
    sys.stderr.flush()


class Staging:
    """The folder of layers that arrived whole: `<hex>.tar` per diffID, `.part` while arriving."""

    def __init__(self, root: Path | None, create: bool = True) -> None:
        self.root = root
        if root is None or not create:
            return
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root, 0o700)
        except OSError:
            self.root = None  # no staging, still a load

    def path(self, diff_id: str) -> Path | None:
        return None if self.root is None else self.root / f"{diff_id.removeprefix('sha256:')}.tar"

    def held(self) -> list[str]:
        """diffIDs staged here (names only: each is checked when used)."""
        if self.root is None:
            return []
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        return [f"sha256:{m.group(1)}" for m in map(STAGED_NAME.match, names) if m]

    def prune(self, now: float | None = None) -> None:
        """Drop staged layers older than STAGED_KEEP_S, and parts a dead loader left an hour ago."""
        if self.root is None:
            return
        now = time.time() if now is None else now
        for entry in _entries(self.root):
            keep = STAGED_KEEP_S if STAGED_NAME.match(entry.name) else 3600
            try:
                if now - entry.stat().st_mtime > keep:
                    os.unlink(entry.path)
            except OSError:
                pass

    def verified(self, diff_id: str) -> Path | None:
        """The staged file for diff_id when its content still has that digest; a damaged one is removed."""
        path = self.path(diff_id)
        if path is None or not path.is_file():
            return None
        h = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except OSError:
            return None
        if "sha256:" + h.hexdigest() == diff_id:
            return path
        say("staged", f"{path.name} is damaged (its digest is not its name): removed, not used")
        unlink(path)
        return None

    def remove(self, diff_ids: set[str]) -> None:
        for d in diff_ids:
            path = self.path(d)
            if path is not None:
                unlink(path)


def _entries(root: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(root) as it:
            return list(it)
    except OSError:
        return []


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
