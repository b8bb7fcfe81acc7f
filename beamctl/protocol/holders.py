"""Whether a deploy lock's holder is provably gone, so that agent/locks.py may take the lock over.

A holder names its process: the kernel's boot id and its pid namespace (where its pid means
something), the pid, and that pid's start time (/proc/PID/stat field 22, so a reused pid is told
apart). Where the agent shares that boot and namespace (a local deploy), the process decides: exited
or replaced = gone, running = alive, whatever the lease. Elsewhere (over SSH, from a container) only
the lease tells: the holder renews the lock every RENEW_S while it works; not renewed for LEASE_S = gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

LEASE_S = 60.0  # a holder not seen for this long is gone: 4 renewals missed (an SSH hiccup is not death)
RENEW_S = 15.0  # how often a holder renews its locks while it works
UNSEEN = -1  # start_time of a pid that runs but whose /proc/PID/stat we may not read (hidepid): alive


@dataclass(frozen=True)
class Machine:
    """Where pids are comparable: the same running kernel (boot id) and the same pid namespace."""

    boot_id: str | None
    pid_ns: str | None


def gone(record: dict[str, Any], here: Machine, start_now: int | None, now: float,
         lease_s: float = LEASE_S) -> str | None:
    """Why the lock's holder is provably gone (a short reason), or None when it may be alive (pure).

    `here`: the judging agent's machine; `start_now`: the start time of the process that has the
    record's pid here now (None: no such process; UNSEEN: one we may not look at); `now`: the agent's clock,
    as `renewed` is."""
    pid = record.get("pid")
    if here.boot_id and here.pid_ns and record.get("boot_id") == here.boot_id \
            and record.get("pid_ns") == here.pid_ns and isinstance(pid, int) and not isinstance(pid, bool):
        if start_now is None:
            return f"pid {pid} has exited"
        if isinstance(record.get("pid_start"), int) and start_now != UNSEEN and record["pid_start"] != start_now:
            return f"pid {pid} is now another process"
        return None
    renewed = record.get("renewed")
    if isinstance(renewed, (int, float)) and not isinstance(renewed, bool) and now - renewed > lease_s:
        return f"no heartbeat for {now - renewed:.0f} s (lease {lease_s:.0f} s)"
    return None


def this_machine() -> Machine:
    return Machine(_read("/proc/sys/kernel/random/boot_id"), _link("/proc/self/ns/pid"))


def this_process() -> dict[str, Any]:
    """The facts a holder puts in its lock record about itself."""
    machine = this_machine()
    return {"boot_id": machine.boot_id, "pid_ns": machine.pid_ns, "pid_start": start_time(os.getpid())}


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot), or None when no process has it (a zombie has ended);
    UNSEEN when it runs but its stat is hidden from us."""
    if pid <= 0:
        return None
    stat = _read(f"/proc/{int(pid)}/stat")
    if stat is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:  # EPERM: it exists, it is not ours
            return UNSEEN
        return UNSEEN
    fields = stat.rpartition(")")[2].split()  # the name (field 2) may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])  # field 22: fields[0] is field 3
    except ValueError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
