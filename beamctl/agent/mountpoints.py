"""The mountpoints a restore needs on the new container's rootfs (issue 20: an OCI hook's mounts).

An OCI prestart hook (NVIDIA's, for `--gpus`: libcuda and friends, nvidia-smi, /dev/nvidia*) mounts into the
container outside config.json, so runc names none of it to CRIU. With `external mnt[]` in runc.conf
(hosts/criu.py) CRIU dumps those bind mounts as external ones and on restore binds them from the same host
paths again, but onto mountpoints that must exist: the hook made them in the captured container's rootfs
(its overlay's upper layer), which the new container does not have ("Can't stat mountpoint"). So at capture
every mountpoint on the rootfs is recorded (MOUNTPOINTS in the snapshot), and before a restore the missing
ones are made in the new container's upper layer, each a file or a folder as the mounted thing was. After the
restore every recorded mountpoint must be mounted again: a hook that runs again during runc's restore (Docker
puts `--gpus`' hook into every start's spec) mounts where CRIU then loses both (measured with a fake hook,
tests/agent/test_hook_mounts.py), and a restore without its libraries is not one to keep.
Mounts under another mount (a tmpfs /dev: its files are in CRIU's images) need nothing here.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MOUNTPOINTS = "mountpoints.json"


@dataclass(frozen=True)
class Mountpoint:
    path: str  # absolute, inside the container
    folder: bool  # a folder was mounted there (else a file: a regular one, a device node, a socket)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def on_rootfs(mountinfo: str) -> list[str]:
    """The mountpoints of mounts whose parent is the root mount ("/"), from /proc/PID/mountinfo's text."""
    rows = [line.split() for line in mountinfo.splitlines() if line.strip()]
    roots = {row[0] for row in rows if len(row) > 4 and _unescape(row[4]) == "/"}
    return sorted({_unescape(row[4]) for row in rows if len(row) > 4 and row[1] in roots and row[0] not in roots})


def mounted(mountinfo: str) -> set[str]:
    return {_unescape(line.split()[4]) for line in mountinfo.splitlines() if len(line.split()) > 4}


def record(pid: int, folder: Path, proc: Path = Path("/proc")) -> list[Mountpoint]:
    """The running container's (pid: its init) mountpoints on the rootfs, written to folder/MOUNTPOINTS."""
    found = []
    for path in on_rootfs((proc / str(pid) / "mountinfo").read_text()):
        try:
            mode = os.stat(f"{proc}/{pid}/root{path}").st_mode
        except OSError:
            continue  # gone (or unreadable) while we looked: nothing CRIU will need either
        found.append(Mountpoint(path, stat.S_ISDIR(mode)))
    (folder / MOUNTPOINTS).write_text(json.dumps({"mountpoints": [[m.path, m.folder] for m in found]}) + "\n")
    os.chmod(folder / MOUNTPOINTS, 0o600)
    return found


def recorded(folder: Path) -> list[Mountpoint]:
    """What record() wrote ([] for a snapshot from before it); ValueError when the file is damaged."""
    try:
        text = (folder / MOUNTPOINTS).read_text()
    except FileNotFoundError:
        return []
    rows = json.loads(text)["mountpoints"]
    out = []
    for path, is_folder in rows:
        if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/") or \
                not isinstance(is_folder, bool):
            raise ValueError(f"bad mountpoint {path!r}")
        out.append(Mountpoint(path, is_folder))
    return out


def make(upper: Path, lowers: list[Path], wanted: list[Mountpoint]) -> list[str]:
    """Each wanted mountpoint that no layer of the new container has, made in its upper layer (an overlay
    folder the engine mounts at start: a folder or file made there shows through). A path whose parent is
    something other than a folder in a layer (a symlink: /lib -> usr/lib) is left alone: making a folder
    there would hide it, and CRIU says what it misses. The paths made."""
    layers = [upper, *lowers]
    made = []
    for m in wanted:
        rel = m.path.strip("/")
        if not rel or any(os.path.lexists(layer / rel) for layer in layers):
            continue
        parts = rel.split("/")
        if not all(_folder_or_absent(layers, "/".join(parts[:i])) for i in range(1, len(parts))):
            continue
        target = upper / rel
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if m.folder:
            target.mkdir(mode=0o755, exist_ok=True)
        else:
            target.touch(mode=0o644, exist_ok=True)
        made.append(m.path)
    return made


def _folder_or_absent(layers: list[Path], rel: str) -> bool:
    for layer in layers:  # the topmost layer that has it decides
        path = layer / rel
        if os.path.lexists(path):
            return path.is_dir() and not path.is_symlink()
    return True


def missing(mountinfo: str, wanted: list[Mountpoint]) -> list[str]:
    """The wanted mountpoints that the restored container's mountinfo does not have."""
    have = mounted(mountinfo)
    return [m.path for m in wanted if m.path not in have]


def prepare(info: dict[str, Any], folder: Path) -> list[Mountpoint]:
    """The snapshot's recorded mountpoints, those the new container (the engine's inspect of it, created)
    lacks made in its overlay's upper layer. checkpoint.RestoreFailed when the record is damaged."""
    from beamctl.agent.checkpoint import RestoreFailed

    try:
        wanted = recorded(folder)
    except (ValueError, KeyError, TypeError) as e:  # json's errors are ValueErrors
        raise RestoreFailed(f"damaged: {MOUNTPOINTS} ({e})") from None
    driver = info.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    if wanted and driver.get("Name") in ("overlay2", "overlay") and data.get("UpperDir"):
        make(Path(data["UpperDir"]), [Path(p) for p in (data.get("LowerDir") or "").split(":") if p], wanted)
    return wanted


def lost(pid: int, wanted: list[Mountpoint], proc: Path = Path("/proc")) -> list[str]:
    """The wanted mountpoints the restored container (pid: its init) lacks; all of them when it is gone."""
    if not wanted:
        return []
    try:
        return missing((proc / str(pid) / "mountinfo").read_text(), wanted)
    except OSError:
        return [m.path for m in wanted]
