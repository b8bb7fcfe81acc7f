"""The build context: the app's files (after ignore rules), hashed and written as a tar stream.

Tar headers are normalised (mtime 0, root owner, 0644/0755), so the same files always give
the same bytes and the same cache keys in the engine.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

from beamctl.image.ignore import Ignore

LARGE_CONTEXT_BYTES = 200 << 20  # above this the user is told to add a .beamignore


@dataclass(frozen=True)
class ContextFile:
    arcname: str  # path inside the context tar, '/'-separated
    path: Path  # where it is on this machine
    size: int
    executable: bool


@dataclass(frozen=True)
class AppFiles:
    files: tuple[ContextFile, ...]
    total_bytes: int
    secrets_skipped: tuple[str, ...]  # relative paths left out because they look like credentials
    links_skipped: tuple[str, ...]  # symlinks that point outside the app folder


def collect(app_dir: Path, ignore: Ignore, prefix: str = "app/") -> AppFiles:
    """Every file under `app_dir` that the rules keep, in a stable order."""
    app_dir = app_dir.resolve()
    files: list[ContextFile] = []
    secrets: list[str] = []
    links: list[str] = []
    for root, dirs, names in os.walk(app_dir, followlinks=False):
        rel_root = Path(root).relative_to(app_dir).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        keep_dirs = []
        for d in sorted(dirs):
            rel = rel_root + d
            if (Path(root) / d).is_symlink():
                links.append(rel)
            elif ignore.is_secret(rel):
                secrets.append(rel)
            elif not ignore.excluded(rel) or ignore.has_negations:
                keep_dirs.append(d)
        dirs[:] = keep_dirs
        for name in sorted(names):
            rel = rel_root + name
            full = Path(root) / name
            if ignore.is_secret(rel):
                secrets.append(rel)
                continue
            if ignore.excluded(rel):
                continue
            if full.is_symlink():
                target = full.resolve()
                if not target.is_file() or not target.is_relative_to(app_dir):
                    links.append(rel)
                    continue
                if ignore.is_secret(target.relative_to(app_dir).as_posix()):  # a link to .env is .env
                    secrets.append(rel)
                    continue
            st = full.stat()
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append(ContextFile(prefix + rel, full, st.st_size, bool(st.st_mode & 0o111)))
    return AppFiles(tuple(files), sum(f.size for f in files), tuple(secrets), tuple(links))


def tree_files(root: Path, prefix: str) -> tuple[ContextFile, ...]:
    """All regular files of a folder we made ourselves (installed packages, the runtime)."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        st = path.stat()
        out.append(ContextFile(prefix + path.relative_to(root).as_posix(), path, st.st_size,
                               bool(st.st_mode & 0o111)))
    return tuple(out)


def digest(files: Iterable[ContextFile]) -> str:
    """sha256 over names, modes and contents."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.arcname}\0{int(f.executable)}\0{f.size}\0".encode())
        with f.path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _info(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(out: BinaryIO, dockerfile: str, files: Iterable[ContextFile]) -> int:
    """Write the context (Dockerfile first) to `out`; returns the bytes of file content written."""
    written = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        data = dockerfile.encode()
        tar.addfile(_info("Dockerfile", len(data), 0o644), io.BytesIO(data))
        for f in files:
            with f.path.open("rb") as fh:
                tar.addfile(_info(f.arcname, f.size, 0o755 if f.executable else 0o644), fh)
            written += f.size
    return written
