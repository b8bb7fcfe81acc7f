"""Paths and sizes inside an app's container, as beam.yaml writes them and the agent checks them again
(pure, stdlib only: the agent's own Python environment has no YAML parser, so the rules both sides share
live here, not in config/)."""

from __future__ import annotations

import posixpath

APP_ROOT = "/app"  # where the app's code lives inside the container
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
MAX_INPUT = "48Mi"  # a task's inputs: under the control socket's 64 MiB line with room for JSON's escapes
MAX_MEMORY = "64Ti"  # no host has more; a bigger number is a typo (and overflows the engine's limit)
# Mounting over these would hide the system or the app itself.
RESERVED = ("/", APP_ROOT, "/bin", "/boot", "/etc", "/lib", "/lib64", "/sbin", "/usr", "/var", "/run",
            "/opt/beamctl")
FORBIDDEN_TREES = ("/proc", "/sys", "/dev")


def container_path(path: str) -> str:
    """A mount path or cache_dir as written -> absolute path in the container (`//proc` is `/proc`: POSIX
    lets normpath keep two leading slashes, the kernel does not)."""
    full = path if path.startswith("/") else posixpath.join(APP_ROOT, path)
    return posixpath.normpath("/" + full.lstrip("/"))


def memory_bytes(text: str) -> int:
    """"8Gi" -> 8589934592 (the schema's form: digits and Ki, Mi, Gi or Ti)."""
    return int(text[:-2]) * UNITS[text[-2:]]


def mount_problem(mount: str) -> str | None:
    """Why a mount path is refused (reserved, '..', mount options, NUL), or None."""
    if ":" in mount or "," in mount:
        return f"'{mount}' contains {':' if ':' in mount else ','}, which the engine would read as mount options; " \
               "a mount path is a path only (volumes are always read-write)"
    if "\0" in mount:
        return "a mount path holds a NUL character"
    if ".." in mount.split("/"):
        return f"'{mount}' contains '..'; a mount path must stay inside the container's own paths"
    target = container_path(mount)
    if target in RESERVED or any(target == t or target.startswith(t + "/") for t in FORBIDDEN_TREES):
        return f"'{mount}' would hide {target} in the container; mount the volume somewhere like /data"
    return None
