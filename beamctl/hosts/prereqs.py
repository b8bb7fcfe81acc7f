"""What a host needs for beamctl, read from its probe (pure): one Prereq per part, with a fix when missing,
and whether the host can checkpoint (why not, in one phrase). Fixes name only what an installed beamctl
has (its commands) or the host's own package tools; never a file of beamctl's repository.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from beamctl.protocol.criu import MIN_CRIU, criu_too_old, version_parts
from beamctl.hosts.probe import HostFacts

MIN_DOCKER = (20, 10)  # the oldest Engine the agent's calls (checkpoint start, device requests) ran on
DOCKER_FREE_MIN_BYTES = 10 << 30  # a CUDA + torch image is 5-10 GB, and a deploy loads the new one beside the old
GIB = 1 << 30
EXPERIMENTAL_FIX = ('for checkpoints: add "experimental": true to /etc/docker/daemon.json on the host and restart '
                    "Docker (systemctl restart docker)")


@dataclass(frozen=True)
class Prereq:
    name: str  # docker, runc, criu, decompressor, disk, supervisor, nvidia, hugepages
    ok: bool
    found: str  # what the host has, in words
    fix: str | None = None  # one step that makes it right (also for an ok part that could be better)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def criu_problem(version: str | None, error: str | None, check_error: str | None = None) -> str | None:
    """Why this CRIU cannot checkpoint app containers, or None."""
    if version is None:
        return "CRIU is not installed" if error in (None, "not installed") else f"CRIU does not run: {error}"
    return criu_too_old(version) or (f"`criu check` fails: {check_error}" if check_error else None)


def checkpoint_problem(f: HostFacts) -> str | None:
    """Why every start of a checkpoint_enabled app on this host is a cold boot, or None."""
    if f.docker_version is None:
        return f"no Docker Engine ({f.docker_error})"
    if f.runc_version is None and f.runc_error is not None:
        return f"runc: {f.runc_error}"
    if f.docker_experimental is False:
        return "Docker Engine's experimental mode is off (restores use `docker start --checkpoint`)"
    return criu_problem(f.criu_version, f.criu_error, f.criu_check_error)


def prerequisites(f: HostFacts, host: str) -> list[Prereq]:
    """Every part beamctl relies on, in a fixed order; NVIDIA's toolkit only where the host has GPUs."""
    install = f"beamctl hosts install {host}"
    parts = [_docker(f), _runc(f), _criu(f, install), _decompressor(f, install), _disk(f)]
    if f.systemd is not None:
        parts.append(_supervisor(f, install))
    if f.gpus:
        parts.append(_nvidia(f))
        if f.thp is not None:
            parts.append(_hugepages(f))
    return parts


def _docker(f: HostFacts) -> Prereq:
    need = ".".join(map(str, MIN_DOCKER))
    if f.docker_version is None:
        fix = (f"install Docker Engine >= {need} (Debian, Ubuntu: apt-get install docker.io)"
               if f.docker_error == "not installed" else
               "start it (systemctl start docker) and let the SSH user use it (root, or the docker group)")
        return Prereq("docker", False, f"unavailable: {f.docker_error}", fix)
    found = f"{f.docker_version} (data root {f.docker_root})"
    if (version_parts(f.docker_version) or MIN_DOCKER) < MIN_DOCKER:
        return Prereq("docker", False, f"{found}, older than {need}", f"upgrade Docker Engine to >= {need}")
    if f.docker_experimental is False:
        return Prereq("docker", True, f"{found}; experimental mode off: snapshots cannot be restored",
                      EXPERIMENTAL_FIX)
    return Prereq("docker", True, found)


def _runc(f: HostFacts) -> Prereq:
    if f.runc_version is None:
        return Prereq("runc", False, f"unavailable: {f.runc_error or 'not probed'}",
                      "install runc, Docker's runtime (Debian, Ubuntu: apt-get install runc)")
    return Prereq("runc", True, f.runc_version)


def _criu(f: HostFacts, install: str) -> Prereq:
    problem = criu_problem(f.criu_version, f.criu_error, f.criu_check_error)
    if problem is not None:
        fix = ("the kernel lacks what CRIU needs: run `criu check --all` on the host for the details"
               if f.criu_check_error and not criu_too_old(f.criu_version) else
               f"{install} (it carries CRIU >= {'.'.join(map(str, MIN_CRIU))} from this machine)")
        return Prereq("criu", False, f"checkpoints off: {problem}", fix)
    lock = f.criu_network_lock
    if lock in ("nftables", "skip"):
        return Prereq("criu", True, f"{f.criu_version}, network lock {lock}")
    found = (f"{f.criu_version}, network lock {lock or 'iptables (CRIU default)'}: 70-85 ms more per "
             f"checkpoint capture and restore")
    return Prereq("criu", True, found, None if lock else
                  f"{install} (sets network-lock nftables in /etc/criu/runc.conf where a trial dump works)")


def _decompressor(f: HostFacts, install: str) -> Prereq:
    if f.zstandard_version is None:
        return Prereq("decompressor", False, f"unavailable: {f.zstandard_error or 'not probed'}", install)
    return Prereq("decompressor", True, f"zstandard {f.zstandard_version} in the agent's Python")


def _supervisor(f: HostFacts, install: str) -> Prereq:
    if f.systemd is False:
        return Prereq("supervisor", True, "no systemd: the agent runs under a restart loop that a reboot ends",
                      f"after every reboot: {install} (it starts the agent; containers and volumes stay)")
    return Prereq("supervisor", True, "systemd: the agent starts again after a reboot")


def _disk(f: HostFacts) -> Prereq:
    where = f.docker_root or "/"
    disk = next((d for d in f.disks if d.path == where), None) or next((d for d in f.disks if d.path == "/"), None)
    if disk is None:
        return Prereq("disk", False, f"{where}: free space unknown", "check `df -h` there")
    found = f"{disk.path}: {disk.free_bytes / GIB:.1f} GiB free of {disk.size_bytes / GIB:.1f} GiB"
    if disk.free_bytes < DOCKER_FREE_MIN_BYTES:
        return Prereq("disk", False, f"{found}, less than {DOCKER_FREE_MIN_BYTES // GIB} GiB",
                      f"free space under {disk.path} (docker image prune -a removes unused images)")
    return Prereq("disk", True, found)


THP_FIX = ("to try it: echo always > /sys/kernel/mm/transparent_hugepage/enabled, then compare a restored "
           "start's profile (beamctl profile); echo madvise puts it back")


def _hugepages(f: HostFacts) -> Prereq:
    """Advice, never missing. CRIU writes a restored process's memory one page fault at a time: on an H200
    a 10.9 GB GPU snapshot's CRIU restore ran 1.5x faster with THP `always`, while on a 2-core VM a 0.6 GB
    restore ran 3-7x slower with it (docs/BENCHMARKS.md). It depends on the host and is host-wide, so
    beamctl shows it and leaves it."""
    if f.thp == "always":
        return Prereq("hugepages", True, "transparent huge pages: always")
    return Prereq("hugepages", True, f"transparent huge pages: {f.thp}; with always, a GPU snapshot's restore ran "
                  "1.5x faster on an H200 (and a small one 3-7x slower on a 2-core VM): measure", THP_FIX)


def _nvidia(f: HostFacts) -> Prereq:
    if f.nvidia_hook or "nvidia" in (f.docker_runtimes or ()):
        return Prereq("nvidia", True, f.nvidia_hook or "nvidia runtime in Docker")
    return Prereq("nvidia", False, "the host has GPUs but no NVIDIA container toolkit",
                  "install nvidia-container-toolkit (NVIDIA's apt repository), then restart Docker")
