"""A volume folder as its own mount, `nosuid,nodev`, before a container binds it: a setuid file or a device
node an app leaves in its volume then gives nobody anything, in the container or on the host (the engine's
bind of the folder keeps the mount's flags). The engine's own volume options cannot do it (Docker 20.10's
local driver ignores nosuid on a bind), so the agent mounts: `mount --bind DIR DIR`, then a remount with
the flags. A mount does not outlive a reboot: every container create seals again (a look at
/proc/self/mountinfo when it already is). Without the right to mount (an agent run as a user), the folder
stays as it is, behind its 0700 parents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = ("nosuid", "nodev")


def sealed(path: Path, mountinfo: str | None = None) -> bool:
    """Is `path` a mount point whose own options include nosuid and nodev?"""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
    text = mountinfo
    target = str(path)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 5 and _unescape(parts[4]) == target:
            options = set(parts[5].split(","))
            if all(f in options for f in FLAGS):
                return True
    return False


def seal(path: Path) -> str | None:
    """Make `path` a nosuid,nodev mount unless it is one; None when it is, else why not."""
    if sealed(path):
        return None
    exe = shutil.which("mount")
    if exe is None:
        return "no mount command on this host"
    for argv in ([exe, "--bind", str(path), str(path)],
                 [exe, "-o", "remount,bind," + ",".join(FLAGS), str(path)]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            return (done.stderr.strip() or f"mount exited {done.returncode}").splitlines()[-1]
    return None if sealed(path) else "the mount did not take its flags"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
