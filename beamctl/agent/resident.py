"""Hot snapshots: ready snapshots kept in memory by the agent, within a budget (issue 6).

A restore reads the snapshot's files. From the page cache CRIU copies them into the new process at
memory speed; from disk it waits for the disk (a 1.09 GB snapshot restored 1.9x slower here with the
cache emptied; the H200 host read 9.3 GB at ~1.5 GB/s). The kernel keeps a snapshot in the page cache
only until other work wants the memory. So the agent maps the files of each ready snapshot and locks
them (mlock): those pages stay in memory, and a restore hours later still reads them from RAM.

The budget is BEAMCTL_SNAPSHOT_RAM (bytes, or with a K/M/G/T suffix; 0 turns this off), by default a
quarter of the host's memory. A snapshot that does not fit pushes out the least recently used ones; one
bigger than the whole budget stays on disk only. `status` says which snapshots are in memory. The files
stay on disk either way (an agent restart locks them again, in the background). Locking needs
CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK; where it fails the snapshot is simply not held.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

ENV = "BEAMCTL_SNAPSHOT_RAM"
PROT_READ, MAP_SHARED = 0x1, 0x01
MAP_FAILED = ctypes.c_void_p(-1).value


def budget_from_env(environ: dict[str, str] | None = None, meminfo: str | None = None) -> int:
    """Bytes the agent may hold snapshots in: BEAMCTL_SNAPSHOT_RAM, else a quarter of MemTotal.
    Raises ValueError naming the variable for a value that is not a size."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV, "").strip()
    if raw:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?", raw)
        if not m:
            raise ValueError(f"{ENV}={raw!r} is not a size: write bytes or e.g. 8G, or 0 to keep no snapshot in memory")
        return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))
    text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    total = re.search(r"^MemTotal:\s+(\d+) kB", text, re.M)
    return int(total.group(1)) * 1024 // 4 if total else 0


class _Libc:
    """mmap/mlock/munmap of whole files (the stdlib's mmap object cannot be locked)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mlock.argtypes = libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.libc = libc

    def lock(self, path: Path) -> tuple[int, int]:
        """(address, size) of the file mapped and locked in memory; OSError on failure (nothing kept)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            addr = self.libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
            if addr in (None, MAP_FAILED):
                e = ctypes.get_errno()
                raise OSError(e, f"mmap {path.name}: {os.strerror(e)}")
        finally:
            os.close(fd)
        if self.libc.mlock(ctypes.c_void_p(addr), size) != 0:  # reads the file in, then keeps it
            e = ctypes.get_errno()
            self.libc.munmap(ctypes.c_void_p(addr), size)
            raise OSError(e, f"mlock {path.name}: {os.strerror(e)} (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK)")
        return addr, size

    def unlock(self, addr: int, size: int) -> None:
        self.libc.munmap(ctypes.c_void_p(addr), size)


class Resident:
    """The snapshots held in memory, by key (app, version), least recently used first."""

    def __init__(self, budget_bytes: int, on_event: Callable[[str, str], None] | None = None,
                 libc: Any = None) -> None:
        self.budget = max(0, budget_bytes)
        self.on_event = on_event or (lambda app, msg: None)
        self._libc = libc
        self._lock = threading.Lock()
        self._serial = threading.Lock()  # one keep() at a time: the room made is the room used
        self._held: OrderedDict[tuple[str, int], list[tuple[int, int]]] = OrderedDict()

    def keep(self, app: str, version: int, folder: Path) -> bool:
        """Lock the snapshot's files in memory, making room by releasing least recently used ones. False
        (and nothing held) when it is bigger than the budget or the kernel refuses."""
        with self._serial:
            return self._keep(app, version, folder)

    def _keep(self, app: str, version: int, folder: Path) -> bool:
        sizes = {p: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
        files = [p for p, n in sizes.items() if n > 0]
        size = sum(sizes.values())
        if size == 0 or size > self.budget:
            return False
        self.release(app, version)
        with self._lock:
            while self._held and self.used() + size > self.budget:
                (old_app, old_version), maps = self._held.popitem(last=False)
                self._unmap(maps)
                self.on_event(old_app, f"checkpoint of v{old_version} no longer held in memory (room for "
                                       f"{app} v{version})")
        maps: list[tuple[int, int]] = []
        try:
            for p in files:
                maps.append(self.libc.lock(p))
        except OSError as e:
            self._unmap(maps)
            self.on_event(app, f"checkpoint of v{version} not held in memory: {e.strerror or e}")
            return False
        with self._lock:
            self._held[(app, version)] = maps
        return True

    def touch(self, app: str, version: int) -> None:
        """Restored: most recently used."""
        with self._lock:
            if (app, version) in self._held:
                self._held.move_to_end((app, version))

    def held(self, app: str, version: int) -> bool:
        with self._lock:
            return (app, version) in self._held

    def release(self, app: str, version: int) -> None:
        with self._lock:
            maps = self._held.pop((app, version), None)
        if maps:
            self._unmap(maps)

    def used(self) -> int:
        return sum(size for maps in list(self._held.values()) for _, size in maps)

    @property
    def libc(self) -> Any:
        if self._libc is None:
            self._libc = _Libc()
        return self._libc

    def _unmap(self, maps: list[tuple[int, int]]) -> None:
        for addr, size in maps:
            self.libc.unlock(addr, size)
