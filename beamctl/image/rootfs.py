"""A Debian root file system from debootstrap, trimmed and imported into the engine (base.py's fallback).

Everything happens in a temporary folder that `remove_tree` takes away again, also after a failure or
Ctrl-C; the caller tags the imported image only once it has checked it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

from beamctl.paths import cache_dir
from beamctl.image.base import OWN_PYTHON, BaseImageError

SUITE = "bookworm"  # Debian 12: python3 is 3.11, what OWN_PYTHON promises
MIRROR = "http://deb.debian.org/debian"  # the CDN; plain HTTP is fine (apt checks signatures) and works
SECURITY = "http://deb.debian.org/debian-security"  # before ca-certificates exists, in containers too
INCLUDE = "python3,ca-certificates"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBOOTSTRAP_TIMEOUT_S = 1800  # measured ~50 s; a slow mirror may take many minutes, a hung one not forever
STOP_GRACE_S = 10  # debootstrap's exit trap unmounts /proc in the target; give it time before SIGKILL
LOG_NAME = "base-debootstrap.log"  # the last failed run's output, kept in the cache dir for a look
SOURCES = f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\ndeb {SECURITY} {SUITE}-security main\n"
# Like Debian's own slim images: later apt-get installs (system_packages) skip docs, man pages, locales.
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
Progress = Callable[[str], None]


def debootstrap(root: Path, progress: Progress) -> None:
    """Run debootstrap into `root` (a new folder), passing its phases on to `progress`."""
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{PATH}", "LC_ALL": "C",
           "DEBIAN_FRONTEND": "noninteractive"}
    exe = shutil.which("debootstrap", path=env["PATH"])
    if exe is None:
        raise BaseImageError(f"debootstrap is not installed; it builds beamctl's base image (Debian "
                             f"{SUITE}, Python {OWN_PYTHON}) when no python:{OWN_PYTHON}-slim can be pulled",
                             hint="install debootstrap (Debian, Ubuntu: apt-get install debootstrap), or set "
                                  "image.base_image to an image you have")
    if os.geteuid() != 0:
        raise BaseImageError("building beamctl's base image with debootstrap needs root",
                             hint="run this build once as root, or set image.base_image to an image you "
                                  f"have with Python {OWN_PYTHON}")
    argv = [exe, "--variant=minbase", f"--include={INCLUDE}", SUITE, str(root), MIRROR]
    lines: list[str] = []
    seen: set[str] = set()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env=env, start_new_session=True)
    timed_out = threading.Event()
    watchdog = threading.Timer(DEBOOTSTRAP_TIMEOUT_S, lambda: (timed_out.set(), _stop(proc)))
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            _report(lines[-1], progress, seen)
        rc = proc.wait()
    except BaseException:  # Ctrl-C included: stop the whole process group, then let the caller clean up
        _stop(proc)
        raise
    finally:
        watchdog.cancel()
    if rc != 0:
        log = _keep_log(lines, root)
        errors = [ln for ln in lines if ln.startswith("E:")] or lines[-1:]
        why = f"stopped after {DEBOOTSTRAP_TIMEOUT_S} s" if timed_out.is_set() else f"exit {rc}"
        raise BaseImageError(f"debootstrap failed ({why}): {errors[-1] if errors else 'no output'}",
                             hint=f"its output is in {log}; check that {MIRROR} can be reached")


def _report(line: str, progress: Progress, seen: set[str]) -> None:
    """Pass on debootstrap's phases ("Unpacking the base system..."), not its per-package lines."""
    text = line[3:] if line.startswith("I: ") else ""
    resolved = any(phase.endswith("packages...") for phase in seen)  # index files come before that
    if text.startswith("Retrieving ") and resolved and "Retrieving" not in seen:
        seen.add("Retrieving")
        progress("base: debootstrap: Retrieving packages...")
    elif text.endswith(("packages...", "system...")) or text.startswith("Base system installed"):
        seen.add(text)
        progress(f"base: debootstrap: {text}")


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=STOP_GRACE_S)
            return
        except (ProcessLookupError, PermissionError):
            return
        except subprocess.TimeoutExpired:
            continue


def _keep_log(lines: list[str], root: Path) -> Path:
    log = cache_dir() / LOG_NAME
    text = "\n".join(lines) + "\n"
    inner = root / "debootstrap" / "debootstrap.log"  # debootstrap's own, more detailed log
    if inner.is_file():
        text += f"\n--- {inner.name} ---\n" + inner.read_text(errors="replace")
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
    except OSError:
        pass
    return log


def trim(root: Path) -> None:
    """Drop what a base image need not carry (apt lists and caches, logs, docs, the host's names)."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "var/cache/debconf/*-old", "var/log/*.log", "var/log/apt/*", "usr/share/man/*",
                    "usr/share/info/*", "usr/share/locale/*"):
        for path in root.glob(pattern):
            if path.name in ("partial", "locale.alias"):
                continue
            if path.is_file() or path.is_symlink():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
    for doc in (root / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright":
            shutil.rmtree(doc) if doc.is_dir() and not doc.is_symlink() else doc.unlink()
    (root / "etc/apt/sources.list").write_text(SOURCES)  # apt-get update works in later layers
    (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/dpkg/dpkg.cfg.d/beamctl-slim").write_text(DPKG_EXCLUDES)
    for name in ("etc/resolv.conf", "etc/hostname"):  # debootstrap copies the host's; the engine
        (root / name).unlink(missing_ok=True)  # mounts its own into every container
        (root / name).write_text("")


def size_mb(root: Path) -> int:
    seen, total = set(), 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return round(total / 1e6)


def docker_import(client, root: Path, changes: list[str]) -> str:
    """`tar -C root -c . | docker import` with `changes`; the new image's id (untagged)."""
    with tempfile.TemporaryFile() as err:
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                               stdout=subprocess.PIPE, stderr=err)
        try:
            chunks = iter(lambda: tar.stdout.read(1 << 20), b"")
            answer = client.api.import_image_from_stream(chunks, changes=changes)
        finally:
            tar.stdout.close()  # a tar still writing gets SIGPIPE
            rc = tar.wait()
        err.seek(0)
        tar_err = err.read().decode(errors="replace").strip()
    image_id, problem = None, None
    for line in str(answer).splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        problem = problem or event.get("error")
        if str(event.get("status", "")).startswith("sha256:"):
            image_id = event["status"]
    if rc != 0 or problem or image_id is None:
        if image_id is not None:
            client.images.remove(image_id, force=True)
        why = problem or (tar_err.splitlines()[-1] if rc != 0 and tar_err else f"answer {answer!r:.200}")
        raise BaseImageError(f"docker import of the base image failed: {why}")
    return image_id


def remove_tree(path: Path) -> None:
    """rm -r `path`, unmounting first whatever a killed debootstrap left mounted inside (/proc, /sys)."""
    for mount in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    if _mounts_under(path):
        return  # never delete through a mount into the host's /proc or /sys; leave the folder
    shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        table = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), row.split()[4]) for row in table)
    return [p for p in points if p.startswith(prefix)]
