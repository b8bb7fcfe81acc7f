"""What an agent killed during a capture or a restore leaves behind, found and cleaned at the next agent's
start (snapshots.py): the `runc checkpoint` it started (its own session: it outlives the agent, and a CRIU
still writing into a `.partial` folder would leave one behind), and containerd's unpacked copy of a restore
it never finished. Only ours: runc runs whose image path lies under our snapshots folder; copies that hold
checkpoint.MARKER and link into it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import time
from pathlib import Path

from beamctl.agent.checkpoint import CTRD_TMP, MARKER, thaw


def stop_captures(snapshots_root: Path, wait_s: float = 30.0) -> list[int]:
    """The `runc checkpoint` runs into folders under `snapshots_root` that a dead agent left: they run in their
    own session (run_bounded), so killing the agent does not end them, and a CRIU still writing into a `.partial`
    folder while the new agent removes it leaves a folder behind. Waited for up to wait_s (when done, CRIU has
    thawed the container), then killed with their process group and the container thawed. Their pids."""
    root = str(snapshots_root.resolve()).rstrip("/") + "/"
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if "checkpoint" in args and "--image-path" in args[:-1] and \
                args[args.index("--image-path") + 1].startswith(root):
            found[int(entry)] = args[-1]  # the container id
    deadline = time.monotonic() + wait_s
    while any(_running(pid) for pid in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, container_id in found.items():
        if _running(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            thaw(container_id)
    return sorted(found)


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def remove_unpacked(snapshots_root: Path, pattern: str = CTRD_TMP) -> list[str]:
    """containerd's unpacked copies of restores from snapshots under `snapshots_root` that were never cleaned
    up (restore() does it in its finally: the agent died during the start), removed; their paths. Ours hold a
    MARKER file and links into `snapshots_root`; call it only when no restore of these snapshots runs (at the
    agent's start), since a running start's copy looks the same."""
    root = str(snapshots_root.resolve()).rstrip("/") + "/"
    removed = []
    for folder in glob.glob(pattern):
        try:
            names = os.listdir(folder)
            targets = [os.readlink(os.path.join(folder, n)) for n in names if os.path.islink(os.path.join(folder, n))]
        except OSError:
            continue
        if any(n.startswith(MARKER) for n in names) and \
                any(re.sub(r"^(\.\./)+", "/", t).startswith(root) for t in targets):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
