"""agent/resident.py: snapshots held in memory within a budget (LRU), with a fake libc for the policy
and the real mmap + mlock for what the kernel does."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from beamctl.agent.resident import ENV, Resident, budget_from_env


def test_budget_from_env_sizes_default_and_errors() -> None:
    assert budget_from_env({ENV: "0"}) == 0
    assert budget_from_env({ENV: "1048576"}) == 1 << 20
    assert budget_from_env({ENV: "8G"}) == 8 << 30
    assert budget_from_env({ENV: "512MiB"}) == 512 << 20
    assert budget_from_env({ENV: "1.5g"}) == int(1.5 * (1 << 30))
    assert budget_from_env({}, meminfo="MemTotal:       24000000 kB\nMemFree: 1 kB\n") == 24000000 * 1024 // 4
    assert budget_from_env({ENV: " "}, meminfo="nothing\n") == 0
    with pytest.raises(ValueError, match=f"{ENV}='lots' is not a size.*8G"):
        budget_from_env({ENV: "lots"})


class FakeLibc:
    def __init__(self, refuse: str | None = None) -> None:
        self.locked: dict[int, tuple[str, int]] = {}
        self.refuse, self.next = refuse, 1

    def lock(self, path: Path) -> tuple[int, int]:
        if self.refuse and self.refuse in path.name:
            raise OSError(12, f"mlock {path.name}: Cannot allocate memory")
        addr, self.next = self.next, self.next + 1
        self.locked[addr] = (str(path), path.stat().st_size)
        return addr, path.stat().st_size

    def unlock(self, addr: int, size: int) -> None:
        assert self.locked.pop(addr)[1] == size


def snapshot(root: Path, name: str, sizes: dict[str, int]) -> Path:
    folder = root / name
    folder.mkdir()
    for file, size in sizes.items():
        (folder / file).write_bytes(b"x" * size)
    return folder


def test_keeps_within_budget_releasing_least_recently_used(tmp_path: Path) -> None:
    events: list[str] = []
    libc = FakeLibc()
    r = Resident(1000, lambda app, msg: events.append(f"{app}: {msg}"), libc=libc)
    a = snapshot(tmp_path, "a", {"pages-1.img": 300, "core-1.img": 100, "empty.img": 0})
    b = snapshot(tmp_path, "b", {"pages-1.img": 400})
    c = snapshot(tmp_path, "c", {"pages-1.img": 500})
    assert r.keep("app", 1, a) and r.keep("app", 2, b)
    assert r.used() == 800 and len(libc.locked) == 3  # every non-empty file of each
    r.touch("app", 1)  # restored: v2 is now the least recently used
    assert r.keep("app", 3, c)
    assert (r.held("app", 1), r.held("app", 2), r.held("app", 3)) == (True, False, True)
    assert r.used() == 900 == sum(size for _, size in libc.locked.values())
    assert events == ["app: checkpoint of v2 no longer held in memory (room for app v3)"]

    big = snapshot(tmp_path, "big", {"pages-1.img": 1001})
    assert not r.keep("app", 4, big) and r.used() == 900  # bigger than the whole budget: nothing pushed out
    r.release("app", 1)
    r.release("app", 1)  # twice: nothing more
    assert r.used() == 500 and not r.held("app", 1)
    assert r.keep("app", 3, c) and r.used() == 500  # kept again: its old mappings went first


def test_a_refused_lock_holds_nothing_and_says_why(tmp_path: Path) -> None:
    events: list[str] = []
    libc = FakeLibc(refuse="pages-2")
    r = Resident(10_000, lambda app, msg: events.append(msg), libc=libc)
    folder = snapshot(tmp_path, "a", {"pages-1.img": 100, "pages-2.img": 100})
    assert not r.keep("app", 1, folder)
    assert libc.locked == {} and r.used() == 0 and not r.held("app", 1)
    assert events == ["checkpoint of v1 not held in memory: mlock pages-2.img: Cannot allocate memory"]


def test_no_budget_holds_nothing(tmp_path: Path) -> None:
    r = Resident(0, libc=FakeLibc())
    assert not r.keep("app", 1, snapshot(tmp_path, "a", {"pages-1.img": 10}))


def _locked_kb() -> int:
    return int(re.search(r"^VmLck:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


@pytest.mark.skipif(os.geteuid() != 0, reason="locking 8 MiB needs CAP_IPC_LOCK (root)")
def test_the_kernel_locks_the_files_pages_and_lets_them_go(tmp_path: Path) -> None:
    folder = snapshot(tmp_path, "a", {"pages-1.img": 6 << 20, "core-1.img": 2 << 20})
    r = Resident(64 << 20)
    before = _locked_kb()
    assert r.keep("app", 1, folder)
    assert _locked_kb() - before == 8 << 10  # both files, every page
    r.release("app", 1)
    assert _locked_kb() == before
