"""Each app's own user on a host (issue 16): the uid its containers run as, unless its beam.yaml says
run_as_root. One uid per app, from FIRST..LAST, none a user or group the host knows (its passwd and group,
through NSS), kept for good in the store: the app's volume folders and its versions' secret files are
owned by it, so one app's processes cannot read another's data, and no local user's files are the app's.

The range sits below 65536 so that an engine with user-namespace remapping (a 65536-id range) maps it.
`own` makes a folder the uid's (everything in it, once: when its top is someone else's, as a volume an
older agent or a root app wrote); links are changed themselves, never followed.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Iterator

FIRST, LAST = 61000, 64999  # Debian leaves 60000-64999 to be made on demand: none on a usual host


CAP_SYS_RESOURCE = 24
ROOT_FOR_SNAPSHOTS = ("runs as root: this host's agent lacks CAP_SYS_RESOURCE, without which CRIU cannot "
                      "snapshot another user's process (it still has no capabilities, a read-only root and "
                      "no-new-privileges)")


def can_snapshot_others(status: str | None = None) -> bool:
    """Whether CRIU, run by this agent, may snapshot a process of another uid: it reads the process's
    limits (prlimit), which takes CAP_SYS_RESOURCE. Some sandboxed hosts (a VM's container, a CI runner)
    drop it even for root: there an app with snapshots runs as root, and says so. `status`: the text of
    /proc/self/status (read when None)."""
    if status is None:
        try:
            with open("/proc/self/status") as f:
                status = f.read()
        except OSError:
            return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
            except (IndexError, ValueError):
                return False
    return False


def candidates() -> Iterator[int]:
    """The uids an app may get here: the range, less any user or group id the host has."""
    for uid in range(FIRST, LAST + 1):
        if not _known(uid):
            yield uid


def _known(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def own(folder: Path, uid: int) -> None:
    """`folder` and everything in it owned by uid:uid (left as it is when its top already is)."""
    st = os.lstat(folder)
    if (st.st_uid, st.st_gid) == (uid, uid):
        return
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, uid)
    os.lchown(folder, uid, uid)  # the top last: a walk cut off is redone at the next start


def own_file(path: Path, uid: int) -> None:
    """A file the app reads (its version's secrets): the uid's, readable by it alone."""
    os.chown(path, uid, uid, follow_symlinks=False)
    os.chmod(path, 0o400)
