"""What the host and each app container use now: CPU, memory, GPU (the `status` answer's `host` and each
container's `usage`).

CPU is a rate, so it is two samples apart (the engine's one-shot stats per container and the kernel's
/proc/stat for the host). `Sampler` keeps the numbers fresh in the background (every PERIOD_S, from when
`status` first asked), so a `status` (and every multi-host `call`, which asks it) never waits for them;
the first ask, and the first ask for a container not sampled yet, samples twice WINDOW_S apart. Memory is what the kernel would not give back
without swapping (the engine's usage less inactive file pages, as `docker stats` counts it; the host's
MemTotal less MemAvailable). GPUs come from nvidia-smi when the host has one: each GPU's utilisation
and memory, and each container's GPU memory by the processes nvidia-smi names (a process belongs to the
container whose id its cgroup path holds). Every part is best effort: what cannot be read is absent,
never an error in `status`. The parsers are pure; `sample` reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Any

WINDOW_S = 0.2
PERIOD_S = 5.0  # the background sampler's period: CPU is the average over it
KEEP_ASKED_S = 60.0  # a container no status asked for this long is no longer sampled
GPU_QUERY = "--query-gpu=index,utilization.gpu,memory.used,memory.total"
APPS_QUERY = "--query-compute-apps=pid,used_memory"
MIB = 1 << 20


def cpu_percent(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """A container's CPU use between two engine stats (100 = one core busy), as `docker stats` counts it."""
    try:
        used = b["cpu_stats"]["cpu_usage"]["total_usage"] - a["cpu_stats"]["cpu_usage"]["total_usage"]
        system = b["cpu_stats"]["system_cpu_usage"] - a["cpu_stats"]["system_cpu_usage"]
        cpus = b["cpu_stats"].get("online_cpus") or len(b["cpu_stats"]["cpu_usage"].get("percpu_usage") or []) or 1
    except (KeyError, TypeError):
        return None
    if system <= 0 or used < 0:
        return None
    return round(used / system * cpus * 100.0, 1)


def memory(stats: dict[str, Any]) -> tuple[int, int] | None:
    """(bytes used, limit) from engine stats: usage less inactive file pages (cgroup v1 or v2)."""
    mem = stats.get("memory_stats") or {}
    usage, limit = mem.get("usage"), mem.get("limit")
    if not isinstance(usage, int) or not isinstance(limit, int):
        return None
    inner = mem.get("stats") or {}
    inactive = inner.get("total_inactive_file", inner.get("inactive_file", 0))
    return max(0, usage - inactive if isinstance(inactive, int) and inactive < usage else usage), limit


def proc_cpu(text: str) -> tuple[int, int] | None:
    """(busy, total) jiffies from /proc/stat's first line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            try:
                values = [int(x) for x in line.split()[1:]]
            except ValueError:
                return None
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            return sum(values[:8]) - idle, sum(values[:8])
    return None


def host_cpu_percent(a: tuple[int, int] | None, b: tuple[int, int] | None, cpus: int) -> float | None:
    """The host's CPU use between two /proc/stat samples (100 per core: 800 = 8 cores busy)."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]) * cpus * 100.0, 1)


def meminfo(text: str) -> tuple[int, int] | None:
    """(bytes used, total) from /proc/meminfo: MemTotal less MemAvailable."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    if "MemTotal" not in values or "MemAvailable" not in values:
        return None
    return values["MemTotal"] - values["MemAvailable"], values["MemTotal"]


def gpus(text: str) -> list[dict[str, Any]]:
    """nvidia-smi GPU_QUERY lines (csv, noheader, nounits) -> [{index, util_pct, mem_used, mem_total}]."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            index, util, used, total = int(parts[0]), float(parts[1]), int(parts[2]) * MIB, int(parts[3]) * MIB
        except ValueError:
            continue  # "[N/A]" or a message
        out.append({"index": index, "util_pct": util, "mem_used": used, "mem_total": total})
    return out


def gpu_processes(text: str) -> dict[int, int]:
    """nvidia-smi APPS_QUERY lines -> pid: GPU memory bytes (summed over GPUs)."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = out.get(int(parts[0]), 0) + int(parts[1]) * MIB
    return out


def owner(cgroup_text: str, ids: list[str]) -> str | None:
    """The container (of full ids) whose id the process's /proc/PID/cgroup paths hold."""
    for cid in ids:
        if cid in cgroup_text:
            return cid
    return None


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _stats(api: Any, cid: str) -> dict[str, Any] | None:
    try:
        return api.stats(cid, stream=False, one_shot=True)
    except Exception:  # noqa: BLE001 - gone meanwhile, or an engine without one-shot stats: no numbers
        return None


class Sampler:
    """The latest numbers, sampled every PERIOD_S by a daemon thread that starts on the first `get`."""

    def __init__(self, api: Any, period_s: float = PERIOD_S) -> None:
        self.api, self.period_s = api, period_s
        self._lock = threading.Lock()
        self._asked: dict[str, float] = {}  # container id -> when a status last asked for it
        self._raw: tuple[Any, dict[str, Any]] | None = None  # the last raw sample: /proc/stat, engine stats
        self._latest: tuple[dict[str, Any], dict[str, dict[str, Any]]] | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def get(self, ids: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        with self._lock:
            now = time.monotonic()
            new = [cid for cid in ids if cid not in self._asked]
            self._asked = {c: t for c, t in self._asked.items() if now - t < KEEP_ASKED_S} | dict.fromkeys(ids, now)
            latest, fresh = self._latest, self._thread is not None
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="usage")
        if not fresh:  # the first ask: two samples now, then the thread keeps them coming
            host, per = sample(self.api, ids)
            with self._lock:
                self._latest = (host, per)
            self._thread.start()
            return host, per
        host, per = latest if latest is not None else ({}, {})
        missing = [cid for cid in new if cid not in per]
        if missing:  # a container no status asked for yet (a new app, a new container): sampled now, once
            _, more = sample(self.api, missing)
            with self._lock:
                if self._latest is not None:
                    self._latest[1].update(more)
            per = {**per, **more}
        return host, {cid: per[cid] for cid in ids if cid in per}

    def close(self) -> None:
        """The thread ends (within a period)."""
        self._closed.set()

    def _loop(self) -> None:
        while not self._closed.wait(self.period_s):
            with self._lock:
                ids = list(self._asked)  # every container a status asked for lately, not only the last one's
            raw = _raw(self.api, ids)
            with self._lock:
                before, self._raw = self._raw, raw
            if before is not None:
                host, per = _compute(before, raw, ids)
                with self._lock:
                    earlier = self._latest[1] if self._latest is not None else {}
                    for cid, row in per.items():  # new since the last round: its first CPU number stands
                        if row["cpu_pct"] is None and cid in earlier:
                            row["cpu_pct"] = earlier[cid].get("cpu_pct")
                    self._latest = (host, per)


def _raw(api: Any, ids: list[str]) -> tuple[Any, dict[str, Any]]:
    return proc_cpu(read_text("/proc/stat")), {cid: _stats(api, cid) for cid in ids}


def sample(api: Any, ids: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the host's use, container id -> its use) for the containers `ids` (full or short ids), from two
    samples WINDOW_S apart."""
    a = _raw(api, ids)
    time.sleep(WINDOW_S)
    return _compute(a, _raw(api, ids), ids)


def _compute(a: tuple[Any, dict[str, Any]], b: tuple[Any, dict[str, Any]],
             ids: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    cpus = os.cpu_count() or 1
    (host_a, first), (host_b, second) = a, b
    per: dict[str, dict[str, Any]] = {}
    full: dict[str, str] = {}
    for cid in ids:
        x, y = first.get(cid), second.get(cid)
        if y is None:
            continue
        used = memory(y)
        per[cid] = {"cpu_pct": cpu_percent(x, y) if x is not None else None,
                    "mem_used": used[0] if used else None, "mem_limit": used[1] if used else None}
        full[y.get("id") or cid] = cid
    mem = meminfo(read_text("/proc/meminfo"))
    host: dict[str, Any] = {"cpus": cpus, "cpu_pct": host_cpu_percent(host_a, host_b, cpus),
                            "load1": _load1(), "mem_used": mem[0] if mem else None,
                            "mem_total": mem[1] if mem else None}
    listed = _smi(GPU_QUERY)
    if listed is not None:
        host["gpus"] = gpus(listed)
        for pid, used_bytes in gpu_processes(_smi(APPS_QUERY) or "").items():
            cid = owner(read_text(f"/proc/{pid}/cgroup"), list(full))
            if cid is not None:
                row = per[full[cid]]
                row["gpu_mem"] = row.get("gpu_mem", 0) + used_bytes
    return host, per


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
