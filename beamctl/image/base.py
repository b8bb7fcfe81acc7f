"""The image every app image starts FROM: the user's own, python:X-slim, or beamctl's Debian base.

No override: python:X-slim if it is here, else beamctl/base (3.11 only) if it is here, else pull
python:X-slim, else build beamctl/base with debootstrap (once). Local images come first so that a
rebuild never waits on a registry that cannot be reached. The Python of an image is asked of the image
itself (a throwaway container) once per image id and remembered in the cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker
import requests

from beamctl.paths import cache_dir
from beamctl.errors import BeamctlError

Progress = Callable[[str], None]

OWN_REPO, OWN_TAG = "beamctl/base", "bookworm-python3.11"
OWN_BASE = f"{OWN_REPO}:{OWN_TAG}"
OWN_PYTHON = "3.11"  # Debian bookworm's python3 (3.11.2); the only Python the debootstrap base offers
OWN_PYTHON_EXE = "/usr/bin/python3"
PULL_STALL_S = 20  # no word from the engine for this long = no registry (its own dial timeout is 30 s)
PROBE_TIMEOUT_S = 60  # one `python3 -c` in a throwaway container; a cold first start takes ~1 s
PROBE = """import os, platform, sys
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or "-"
except (ValueError, OSError):
    libc = "-"
print("%d.%d" % sys.version_info[:2], sys.executable, libc, platform.machine(), sep="|")
"""  # libc from confstr: the C library that runs, not the one python3 was linked against
PROBE_CACHE = "base-python.json"  # {image id: [major.minor, interpreter path, wheel platform]}


@dataclass(frozen=True)
class BaseImage:
    ref: str  # what goes into FROM
    id: str  # the engine's image id, "sha256:..."
    python: str  # "3.11": major.minor of the image's python3
    python_exe: str  # the interpreter's path in the image, e.g. "/usr/local/bin/python3"
    platform: str = "manylinux2014_x86_64"  # wheels that run here: manylinux_<its glibc>_<arch>


class BaseImageError(BeamctlError):
    """No usable base image; `ref` names the image concerned, when there is one."""

    def __init__(self, message: str, hint: str | None = None, ref: str | None = None) -> None:
        super().__init__(message, hint)
        self.ref = ref


def resolve_base(client: docker.DockerClient, python_version: str, base_image: str | None,
                 progress: Progress) -> BaseImage:
    """The base image for `python_version`: `base_image` when given, else the default (module doc)."""
    try:
        if base_image:
            return _override(client, base_image, python_version, progress)
        return _default(client, python_version, progress)
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise BaseImageError(f"Docker Engine: {engine_message(e)}") from e


def _override(client, ref: str, want: str, progress: Progress) -> BaseImage:
    image = _local(client, ref)
    if image is None:
        progress(f"base: {ref} is not here; pulling it")
        reason = pull(client, ref, progress)
        if reason:
            raise BaseImageError(
                f"base image {ref} is not here and could not be pulled: {reason}",
                hint=f"load it first (docker load -i FILE, or docker pull {ref} where a registry is "
                     "reachable), or drop image.base_image to use the default base", ref=ref)
        image = client.images.get(ref)
    python, exe, platform = _python_of(client, ref, image)
    if python != want:
        raise BaseImageError(f"base image {ref} has Python {python}, but image.python_version is {want}",
                             hint=f'set image.python_version to "{python}", or image.base_image to an '
                                  f"image with Python {want}", ref=ref)
    return BaseImage(ref, image.id, python, exe, platform)


def _default(client, want: str, progress: Progress) -> BaseImage:
    slim = f"python:{want}-slim"
    image = _local(client, slim)
    if image is None and want == OWN_PYTHON and (own := _local(client, OWN_BASE)) is not None:
        return BaseImage(OWN_BASE, own.id, *_python_of(client, OWN_BASE, own))
    if image is None:
        progress(f"base: pulling {slim}")
        reason = pull(client, slim, progress)
        if reason is None:
            image = client.images.get(slim)
        elif want != OWN_PYTHON:
            raise BaseImageError(
                f"no base image with Python {want}: {slim} is not here and could not be pulled "
                f"({reason}), and beamctl's own Debian base has Python {OWN_PYTHON} only",
                hint=f"set image.base_image to an image you have with Python {want} (docker load it "
                     f'first), or set image.python_version to "{OWN_PYTHON}"', ref=slim)
        else:
            progress(f"base: {slim} could not be pulled ({reason})")
            own = _build_own(client, progress)
            return BaseImage(OWN_BASE, own.id, *_python_of(client, OWN_BASE, own))
    return BaseImage(slim, image.id, *_python_of(client, slim, image))


def _local(client, ref: str):
    """The image called `ref` in the engine, or None."""
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:  # an invalid reference ("Foo Bar") is a 400, not a 404
        raise BaseImageError(f"base image {ref!r}: {engine_message(e)}", ref=ref) from e


def pull(client, ref: str, progress: Progress, stall_s: float = PULL_STALL_S) -> str | None:
    """Pull `ref`; None when done, else why not. Gives up after `stall_s` without word from the engine.

    The SDK's pull has no timeout at all (timeout=None), so it runs in a daemon thread that is left
    behind when it stalls; a pull that makes progress may take as long as it needs.
    """
    events: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            for event in client.api.pull(ref, stream=True, decode=True):
                events.put(("event", event))
            events.put(("done", None))
        except Exception as e:  # noqa: BLE001 - handed over to the waiting thread
            events.put(("error", e))

    threading.Thread(target=run, name=f"beamctl pull {ref}", daemon=True).start()
    shown = set()
    while True:
        try:
            kind, value = events.get(timeout=stall_s)
        except queue.Empty:
            return f"no answer from the registry within {stall_s:g} s"
        if kind == "done":
            return None
        if kind == "error":
            return engine_message(value)
        if value.get("error"):
            return str(value["error"])
        status = value.get("status", "")
        if "id" not in value and status and status not in shown:  # skip the per-layer chatter
            shown.add(status)
            progress(f"base: {ref}: {status}")


def _python_of(client, ref: str, image) -> tuple[str, str, str]:
    """(major.minor, interpreter path, wheel platform) of the image's Python, asked once per image id."""
    path = cache_dir() / PROBE_CACHE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(image.id), list) and len(known[image.id]) == 3:
        return tuple(known[image.id])
    for exe in ("python3", "python"):
        out = _run_throwaway(client, image.id, exe)
        if out is not None:
            break
    else:
        raise BaseImageError(f"base image {ref} has no python3 (or python) on its PATH",
                             hint="pick an image with Python installed", ref=ref)
    try:
        version, executable, libc, machine = out.split("|")
    except ValueError:
        raise BaseImageError(f"base image {ref}: could not read its Python from {out!r}", ref=ref) from None
    if not libc.startswith("glibc "):
        raise BaseImageError(f"base image {ref} has no glibc (musl? Alpine?): manylinux wheels do not run "
                             "there", hint="pick a Debian- or Ubuntu-based image", ref=ref)
    platform = "manylinux_{}_{}_{}".format(*libc.split()[1].split(".")[:2], machine)
    known[image.id] = [version, executable, platform]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a container run next time
    return version, executable, platform


def _run_throwaway(client, image_id: str, exe: str) -> str | None:
    """stdout of `exe -c PROBE` in a new container (removed after), or None when `exe` is missing."""
    container = client.containers.create(image_id, entrypoint=[exe], command=["-c", PROBE],
                                          network_disabled=True, labels={"beamctl.role": "probe"})
    try:
        try:
            container.start()
        except docker.errors.APIError as e:  # 20.10 reports a missing executable at start
            if "executable file not found" in str(e) or "no such file" in str(e).lower():
                return None
            raise
        status = container.wait(timeout=PROBE_TIMEOUT_S).get("StatusCode")
        if status == 127:  # the shell form's "not found"
            return None
        out = container.logs(stdout=True, stderr=False).decode(errors="replace").strip()
        if status != 0:
            err = container.logs(stdout=False, stderr=True).decode(errors="replace").strip()
            raise BaseImageError(f"`{exe} -c ...` in the base image exited with {status}: "
                                 f"{err.splitlines()[-1] if err else out}")
        return out
    finally:
        container.remove(force=True)


def _build_own(client, progress: Progress):
    """beamctl/base, built once; a second beamctl wanting it at the same time waits, then reuses it."""
    lock_path = cache_dir() / "base-build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"base: waiting for another beamctl that is building {OWN_BASE}")
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        return _local(client, OWN_BASE) or _build_locked(client, progress)


def _build_locked(client, progress: Progress):
    """Build, check and tag beamctl/base from Debian packages; the tag appears only when all went well."""
    from beamctl.image import rootfs  # only on this rare path (and rootfs imports this module)

    progress(f"base: building {OWN_BASE} with debootstrap (about a minute, once)")
    work = Path(tempfile.mkdtemp(prefix="beamctl-base-"))
    image_id = None
    try:
        root = work / "rootfs"
        rootfs.debootstrap(root, progress)
        rootfs.trim(root)
        progress(f"base: importing the root file system ({rootfs.size_mb(root)} MB) into Docker")
        changes = [f"ENV PATH={rootfs.PATH}", "ENV LANG=C.UTF-8", f"LABEL beamctl.python={OWN_PYTHON}",
                   f"LABEL beamctl.python_exe={OWN_PYTHON_EXE}", 'CMD ["python3"]']
        image_id = rootfs.docker_import(client, root, changes)
        version = _python_of(client, OWN_BASE, client.images.get(image_id))[0]
        if version != OWN_PYTHON:
            raise BaseImageError(f"the freshly built base has Python {version}, not {OWN_PYTHON}")
        client.api.tag(image_id, OWN_REPO, OWN_TAG)
        image_id = None  # tagged: keep it
        progress(f"base: built {OWN_BASE}")
        return client.images.get(OWN_BASE)
    except OSError as e:  # disk full, a read-only /tmp, ...
        raise BaseImageError(f"building {OWN_BASE} failed: {e}") from e
    finally:
        if image_id is not None:  # imported but not good: no half-made base is left behind
            try:
                client.images.remove(image_id, force=True)
            except docker.errors.DockerException:
                pass
        rootfs.remove_tree(work)


def engine_message(e: BaseException) -> str:
    """The engine's own words from a docker SDK error, without the HTTP wrapping."""
    explanation = getattr(e, "explanation", None)
    if explanation:
        return str(explanation.decode() if isinstance(explanation, bytes) else explanation)
    return str(e) or type(e).__name__
