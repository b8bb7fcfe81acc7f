"""Python packages for the image, resolved and installed on the client as wheels.

Containers here cannot reach PyPI and GPU hosts may be air-gapped, so pip runs on this machine for the
image's Python and platform. Cache layout (shared by every app and build):
  wheels/        every wheel ever resolved, by its own file name; files are only ever added or replaced
  wheels/.sha256/NAME  each wheel's sha256 as first downloaded (and the file's stat when last checked):
                 every use checks the wheel against it (a changed file is refused, never used)
  locks/K.json   what one requirement list resolved to (file, sha256, size, mtime): K hashes the input
  trees/KEY/     the wheels of one `Resolved`, installed (`pip install --target`), ready to COPY
  tmp/           private work folders (pip's download folder); everything lands by rename
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from beamctl.image.pip_text import PackageError, chosen_wheels, explain, read_requirements

__all__ = ["PackageError", "Resolved", "install_tree", "pip_platforms", "read_requirements", "resolve"]

Progress = Callable[[str], None]
DEFAULT_PLATFORM = "manylinux2014_x86_64"  # glibc 2.17; pass BaseImage.platform to get newer wheels
LOCK_FORMAT = 1  # part of every lock key: a change of what locks hold invalidates them all
SIDECAR = ".sha256"  # wheels/.sha256/NAME: the wheel's first download (verified())
# pip settings in the environment that choose another index: an extra index can shadow a package of the
# same name (dependency confusion), and an environment is easy to inherit unseen. Taken only when asked for
# (BEAMCTL_PIP_ENV=1); pip's own config files, and local wheel folders (PIP_FIND_LINKS), are the user's own.
INDEX_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
FIXED_MTIME = 315532800  # 1980-01-01 UTC: tree files get one mtime, so COPY's cache sees content only
STALE_TMP_S = 24 * 3600  # work folders this old belong to a killed build; removed on the next resolve
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing wheels (torch's are >700 MB)


@dataclass(frozen=True)
class Resolved:
    key: str  # sha256 over the sorted (filename, sha256) of the wheels: identifies the package set
    wheels: tuple[Path, ...]  # files in the shared wheel cache


def pip_platforms(platform: str) -> list[str]:
    """pip's --platform values for a target. pip matches tags exactly (it widens only manylinux2014 to
    2010 and 1), so manylinux_2_N_ARCH becomes every glibc from 2.N down to 2.5 plus manylinux2014."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    return [f"manylinux_2_{n}_{m[2]}" for n in range(int(m[1]), 4, -1)] + [f"manylinux2014_{m[2]}"]


def _target(python_version: str, platform: str) -> list[str]:
    argv = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for tag in pip_platforms(platform):
        argv += ["--platform", tag]
    return argv


def resolve(requirements: Sequence[str], python_version: str, cache_dir: Path, progress: Progress,
            platform: str = DEFAULT_PLATFORM) -> Resolved:
    """The wheels for `requirements` (and their dependencies), in the shared cache; pip runs only when
    this exact list, Python and platform has no valid lock."""
    requirements = list(requirements)
    if not requirements:
        return Resolved(_key([]), ())
    wheels = Path(cache_dir) / "wheels"
    lock_input = json.dumps([LOCK_FORMAT, requirements, python_version, platform])
    lock = Path(cache_dir) / "locks" / f"{hashlib.sha256(lock_input.encode()).hexdigest()}.json"
    hit = _from_lock(lock, wheels)
    if hit is not None:
        progress(f"packages: {len(hit.wheels)} wheels as locked (unchanged requirements)")
        return hit
    progress(f"packages: resolving {len(requirements)} requirement(s) for Python {python_version} on "
             f"{platform} with pip")
    for folder in (wheels, lock.parent, Path(cache_dir) / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    _sweep(Path(cache_dir) / "tmp")
    work = Path(tempfile.mkdtemp(prefix="resolve-", dir=Path(cache_dir) / "tmp"))
    log = work.with_suffix(".log")
    try:
        for cached in wheels.glob("*.whl"):  # pip takes these as "already downloaded": no transfer
            verified(cached)  # only what was first downloaded
            _link(cached, work / cached.name)
        argv = [sys.executable, "-m", "pip", "download", *_target(python_version, platform), "--dest",
                str(work), "--log", str(log), "--progress-bar", "off", "--no-input", "--", *requirements]
        lines = _run_pip(argv, python_version, platform, progress, log)
        entries = []
        for name in chosen_wheels(lines, python_version, platform):
            digest = _sha256(work / name)
            _publish(work / name, wheels / name, digest)
            st = (wheels / name).stat()
            entries.append({"file": name, "sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    finally:
        shutil.rmtree(work, ignore_errors=True)
        log.unlink(missing_ok=True)
    _write_json(lock, {"requirements": requirements, "python": python_version, "platform": platform,
                       "wheels": entries})
    progress(f"packages: resolved to {len(entries)} wheels")
    return _resolved(entries, wheels)


def install_tree(resolved: Resolved, python_version: str, cache_dir: Path, progress: Progress,
                 platform: str = DEFAULT_PLATFORM) -> Path:
    """`resolved` installed into `<cache>/trees/<key>` (made once, then reused) for the build to COPY."""
    trees = Path(cache_dir) / "trees"
    final = trees / resolved.key
    if final.is_dir():
        return final
    gone = [w.name for w in resolved.wheels if not w.is_file()]
    if gone:
        raise PackageError(f"{gone[0]} has gone from the wheel cache", hint="build again: the packages "
                           "will be resolved anew", python_version=python_version, platform=platform)
    for folder in (trees, Path(cache_dir) / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    _sweep(trees, f"{'?' * 64}.tmp-*")
    progress(f"packages: installing {len(resolved.wheels)} wheels (once for this set)")
    tmp = Path(tempfile.mkdtemp(prefix=f"{resolved.key}.tmp-", dir=trees))
    links = Path(tempfile.mkdtemp(prefix="install-", dir=Path(cache_dir) / "tmp"))
    try:
        if resolved.wheels:
            for wheel in resolved.wheels:  # only this set is visible to pip: nothing else can be picked
                verified(wheel)
                _link(wheel, links / wheel.name)
            pins = [f"{w.name.split('-')[0]}=={w.name.split('-')[1]}" for w in resolved.wheels]
            # Pins from a private folder, not file paths: a path would leave a direct_url.json naming
            # this machine's cache in every dist-info.
            log = links / "pip.log"
            _run_pip([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(links),
                      "--target", str(tmp), *_target(python_version, platform), "--no-deps", "--no-compile",
                      "--no-warn-script-location", "--log", str(log), "--progress-bar", "off", "--no-input",
                      "--", *pins], python_version, platform, progress, log, installing=True)
        _portable_scripts(tmp / "bin")
        _normalize(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # else another build made the same tree first: use theirs
                raise
        os.utime(final, (FIXED_MTIME, FIXED_MTIME))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(links, ignore_errors=True)
    return final


def _run_pip(argv: list[str], python_version: str, platform: str, progress: Progress, log: Path,
             installing: bool = False) -> list[str]:
    """Run pip, pass its downloads on to `progress`; its output lines, or PackageError on failure.

    pip's debug log (--log) is read only on failure: an index that cannot be reached shows there alone
    when pip does not retry ("Could not fetch URL ...: connection error").
    """
    # Our parsing needs pip's normal verbosity; --target must not meet a user-level `user = true`.
    env = {**pip_environment(os.environ), "PIP_QUIET": "0", "PIP_USER": "0", "PIP_REQUIRE_VIRTUALENV": "0",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    lines: list[str] = []
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", env=env) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.lstrip().startswith("Downloading "):
                progress(f"packages: {line.strip()[:160]}")
    if proc.returncode != 0:
        try:
            fetch = [ln for ln in log.read_text(errors="replace").splitlines() if "Could not fetch URL" in ln]
        except OSError:
            fetch = []
        raise explain(lines + fetch, python_version, platform, installing=installing)
    return lines


def pip_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment pip runs in; PackageError when it names another index and BEAMCTL_PIP_ENV=1 is not
    set (refused, not dropped: a build must not quietly use other packages than the user thinks)."""
    index = sorted(k for k in INDEX_SETTINGS if environ.get(k))
    if index and environ.get("BEAMCTL_PIP_ENV") != "1":
        raise PackageError(f"{', '.join(index)} is set in the environment: beamctl does not take another package "
                           "index from the environment unasked (an extra index can shadow a package)",
                           hint="unset it (pip's config file may name the index instead), or set BEAMCTL_PIP_ENV=1 "
                                "to use it")
    return dict(environ)


def _from_lock(lock: Path, wheels: Path) -> Resolved | None:
    """The locked set when every wheel is still in the cache as locked and first downloaded (verified), else
    None; a wheel that changed since its first download raises PackageError."""
    try:
        entries = json.loads(lock.read_text())["wheels"]
        for e in entries:
            if verified(wheels / e["file"]) != e["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _resolved(entries, wheels)


def verified(wheel: Path) -> str:
    """The wheel's sha256, checked against the one recorded at its first download (re-hashed only when
    its size, inode, mtime or ctime moved since the last check: ctime cannot be set back by a user).
    Raises PackageError when the file is not what was first downloaded; OSError when it is gone."""
    record = wheel.parent / SIDECAR / wheel.name
    st = wheel.stat()
    seen = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    try:
        first = json.loads(record.read_text())
    except (OSError, ValueError):
        first = None
    if isinstance(first, dict) and first.get("stat") == seen and isinstance(first.get("sha256"), str):
        return first["sha256"]
    digest = _sha256(wheel)
    if isinstance(first, dict) and first.get("sha256") not in (None, digest):
        raise PackageError(f"the cached wheel {wheel} is not the file first downloaded (sha256 "
                           f"{first['sha256'][:12]}..., now {digest[:12]}...): it is not used",
                           hint=f"if it was replaced on purpose (another index), remove it and its record: "
                                f"rm {wheel} {record}")
    record.parent.mkdir(exist_ok=True)
    _write_json(record, {"sha256": digest, "stat": seen})
    return digest


def _resolved(entries: list[dict], wheels: Path) -> Resolved:
    return Resolved(_key([(e["file"], e["sha256"]) for e in entries]), tuple(wheels / e["file"] for e in entries))


def _publish(src: Path, dest: Path, digest: str) -> None:
    """Put a resolved wheel into the shared cache (its first download recorded), leaving an identical cached
    file be; a download that differs from a name's first download is refused (verified())."""
    if src.stat().st_ino == (dest.stat().st_ino if dest.exists() else None):
        verified(dest)
        return
    if dest.exists():
        if verified(dest) != digest:
            raise PackageError(f"pip downloaded {dest.name} with sha256 {digest[:12]}..., not the "
                               f"{verified(dest)[:12]}... first downloaded under that name: not used",
                               hint=f"if the index changed on purpose, remove the cached wheel and its record: "
                                    f"rm {dest} {dest.parent / SIDECAR / dest.name}")
        return
    os.replace(src, dest)  # atomic
    verified(dest)


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        os.symlink(src.resolve(), dest)  # a cache on a file system without hard links


def _key(entries: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for name, sha in sorted(entries):
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _portable_scripts(bin_dir: Path) -> None:
    """Entry-point scripts name this machine's interpreter; make them run the image's python3 instead."""
    for script in bin_dir.iterdir() if bin_dir.is_dir() else ():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(b"#!/bin/sh\n'''exec' "):  # pip's form for long interpreter paths
            rest = data.split(b"\n", 3)[3]
        elif data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            rest = data.split(b"\n", 1)[1] if b"\n" in data else b""
        else:
            continue
        script.write_bytes(b"#!/usr/bin/env python3\n" + rest)


def _normalize(root: Path) -> None:
    """One mtime and umask-free modes throughout, so the same wheels make byte-identical COPY input."""
    for folder, dirs, files in os.walk(root, topdown=False):  # children first: their dir's mtime last
        for name, is_dir in [(f, False) for f in files] + [(d, True) for d in dirs]:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = is_dir or os.stat(path).st_mode & 0o111
                os.chmod(path, 0o755 if executable else 0o644)
            os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.chmod(root, 0o755)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def _sweep(folder: Path, pattern: str = "*") -> None:
    """Remove work folders left behind by builds that were killed (not merely running) long ago."""
    cutoff = time.time() - STALE_TMP_S
    for path in folder.glob(pattern):
        try:
            if path.lstat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
