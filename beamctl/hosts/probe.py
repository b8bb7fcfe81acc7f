"""What `hosts check` asks a host, in one remote command, and how the answer is read (pure).

PROBE_ARGV is a fixed POSIX sh script (no user data in it) that prints marked sections;
`parse_probe` turns its output into HostFacts. Tests feed it real outputs.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from beamctl.protocol.gpus import Gpu, parse as parse_gpus
from beamctl.protocol.layout import PYTHON as AGENT_PYTHON, VERSION_ARGV as AGENT_VERSION_ARGV


_SCRIPT = r"""PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"
s() { printf '\n@@beamctl %s\n' "$1"; }
s system; uname -nrm; nproc 2>/dev/null; grep -m1 '^MemTotal:' /proc/meminfo 2>/dev/null
[ -d /run/systemd/system ] && echo "@@systemd yes" || echo "@@systemd no"
echo "@@thp $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
s docker; out=$(docker info --format '@@{{.ServerVersion}}|{{.DockerRootDir}}|{{range $k, $v := .Runtimes}}{{$k}},{{end}}|{{.ExperimentalBuild}}' 2>&1); rc=$?
printf '%s\n@@rc %s\n' "$out" "$rc"
root=$(printf '%s\n' "$out" | sed -n 's/^@@[^|]*|\([^|]*\).*/\1/p' | head -n1)
s gpus; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader,nounits 2>&1
echo "@@rc $?"
s criu; sed -n 's/^[[:space:]]*network-lock[[:space:]]*/@@lock /p' /etc/criu/runc.conf 2>/dev/null | head -n1
criu --version 2>&1; echo "@@rc $?"
s criu_check; if command -v criu >/dev/null 2>&1; then out=$(criu check 2>&1); rc=$?
printf '%s\n' "$out" | grep -v RLIMIT_NOFILE | tail -n 3; echo "@@rc $rc"; fi
s runc; out=$(runc --version 2>&1); rc=$?; printf '%s\n' "$out" | head -n 1; echo "@@rc $rc"
s nvidia; command -v nvidia-container-runtime-hook nvidia-container-runtime nvidia-ctk 2>/dev/null; echo "@@rc 0"
s disk; echo "@@path /"; [ -n "$root" ] && echo "@@path $root"; df -Pk / ${root:+"$root"} 2>&1; echo "@@rc $?"
s agent; AGENT 2>&1; echo "@@rc $?"
s unzstd; out=$(PYTHON -c 'import zstandard; print(zstandard.__version__)' 2>&1); rc=$?
printf '%s\n' "$out" | tail -n 1; echo "@@rc $rc"
"""
PROBE_ARGV = ("sh", "-c", _SCRIPT.replace("AGENT", " ".join(AGENT_VERSION_ARGV)).replace("PYTHON", AGENT_PYTHON))
SECTIONS = ("system", "docker", "gpus", "criu", "criu_check", "runc", "nvidia", "disk", "agent", "unzstd")
_SECTION = re.compile(r"^@@beamctl (\w+)$", re.MULTILINE)
_NOT_FOUND = re.compile(r"not found|No such file|No module named", re.IGNORECASE)


@dataclass(frozen=True)
class Disk:
    path: str  # as asked: / or the docker data root
    free_bytes: int
    size_bytes: int


@dataclass(frozen=True)
class HostFacts:
    hostname: str = ""
    kernel: str = ""
    arch: str = ""
    cpus: int | None = None
    memory_bytes: int | None = None
    docker_version: str | None = None
    docker_root: str | None = None
    docker_error: str | None = None
    docker_runtimes: tuple[str, ...] | None = None  # as `docker info` lists them (None: not asked)
    systemd: bool | None = None  # runs the agent's unit (back after a reboot); None: not probed
    docker_experimental: bool | None = None  # restores use `docker start --checkpoint`: experimental only
    thp: str | None = None  # transparent huge pages: always, madvise or never (None: the kernel has none)
    gpus: tuple[Gpu, ...] = ()
    gpu_note: str | None = None  # why there are none: no nvidia-smi, or what it said
    criu_version: str | None = None
    criu_error: str | None = None
    criu_network_lock: str | None = None  # /etc/criu/runc.conf's network-lock (None: CRIU's default, iptables)
    criu_check_error: str | None = None  # `criu check`'s last words when it did not pass
    runc_version: str | None = None
    runc_error: str | None = None
    nvidia_hook: str | None = None  # the NVIDIA container toolkit's program, as found on PATH
    zstandard_version: str | None = None  # in the agent's Python: it decompresses the image stream
    zstandard_error: str | None = None
    disks: tuple[Disk, ...] = ()
    agent_installed: bool = False
    agent_version: str | None = None
    agent_note: str | None = None
    problems: list[str] = field(default_factory=list)  # sections that could not be read

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def sections(output: str) -> dict[str, tuple[list[str], int | None]]:
    """`@@beamctl NAME` sections -> (lines, exit status from the `@@rc N` line, if any)."""
    parts = _SECTION.split(output)
    found: dict[str, tuple[list[str], int | None]] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        lines, rc = [], None
        for line in body.strip("\n").splitlines():
            if line.startswith("@@rc "):
                rc = int(line[5:]) if line[5:].strip().isdigit() else None
            else:
                lines.append(line)
        found[name] = (lines, rc)
    return found


def parse_probe(output: str) -> HostFacts:
    got = sections(output)
    facts: dict[str, Any] = {"problems": [f"no {n} section" for n in SECTIONS if n not in got]}
    readers = {"system": _system, "docker": _docker, "gpus": _gpus, "criu": _criu, "criu_check": _criu_check,
               "runc": _runc, "nvidia": _nvidia, "disk": _disk, "agent": _agent, "unzstd": _unzstd}
    for name, reader in readers.items():
        if name in got:
            try:
                facts.update(reader(*got[name]))
            except (ValueError, IndexError) as e:
                facts["problems"].append(f"{name}: cannot read the output ({e})")
    return HostFacts(**facts)


def _system(lines: list[str], rc: int | None) -> dict[str, Any]:
    host, kernel, arch = (lines[0].split() + ["", "", ""])[:3] if lines else ("", "", "")
    out: dict[str, Any] = {"hostname": host, "kernel": kernel, "arch": arch}
    for line in lines[1:]:
        if line.strip().isdigit():
            out["cpus"] = int(line)
        elif line.startswith("MemTotal:"):
            out["memory_bytes"] = int(line.split()[1]) * 1024
        elif line.startswith("@@systemd "):
            out["systemd"] = line.split()[1] == "yes"
        elif line.startswith("@@thp ") and "[" in line:  # "always [madvise] never": the chosen one
            out["thp"] = line.split("[", 1)[1].split("]", 1)[0]
    return out


def _docker(lines: list[str], rc: int | None) -> dict[str, Any]:
    for line in lines:
        if line.startswith("@@") and "|" in line and rc == 0:
            version, root, *rest = line[2:].split("|")
            runtimes = tuple(r for r in rest[0].split(",") if r) if rest else None
            experimental = rest[1] == "true" if len(rest) > 1 else None
            return {"docker_version": version, "docker_root": root, "docker_runtimes": runtimes,
                    "docker_experimental": experimental}
    reason = _last(lines) or f"exit status {rc}"
    return {"docker_error": "not installed" if _NOT_FOUND.search(reason) and "docker" in reason else reason}


def _gpus(lines: list[str], rc: int | None) -> dict[str, Any]:
    text = "\n".join(lines)
    if rc == 127 or (rc != 0 and _NOT_FOUND.search(text) and "nvidia-smi" in text):
        return {"gpu_note": "no nvidia-smi"}
    if rc != 0 or "No devices were found" in text:
        return {"gpu_note": _last(lines) or f"nvidia-smi exit status {rc}"}
    gpus = parse_gpus("\n".join(lines), strict=True)
    return {"gpus": tuple(gpus), "gpu_note": None if gpus else "nvidia-smi lists no GPUs"}


def _criu(lines: list[str], rc: int | None) -> dict[str, Any]:
    lock = next((line.split(None, 1)[1].strip() for line in lines if line.startswith("@@lock ")
                 and len(line.split()) > 1), None)
    lines = [line for line in lines if not line.startswith("@@lock")]
    if rc == 0:
        m = re.search(r"Version:\s*(\S+)", "\n".join(lines))
        return {"criu_version": m[1] if m else _last(lines), "criu_network_lock": lock}
    reason = _last(lines)
    return {"criu_error": "not installed" if rc == 127 or _NOT_FOUND.search(reason) else reason}


def _criu_check(lines: list[str], rc: int | None) -> dict[str, Any]:
    if rc is None or rc == 0:  # not run (no criu), or passed ("Looks good.")
        return {}
    return {"criu_check_error": _last(lines) or f"exit status {rc}"}


def _runc(lines: list[str], rc: int | None) -> dict[str, Any]:
    if rc == 0:
        m = re.search(r"runc version\s+(\S+)", "\n".join(lines))
        return {"runc_version": m[1] if m else _last(lines)}
    reason = _last(lines)
    return {"runc_error": "not installed" if rc == 127 or _NOT_FOUND.search(reason) else reason}


def _nvidia(lines: list[str], rc: int | None) -> dict[str, Any]:
    return {"nvidia_hook": _last(lines) or None}


def _unzstd(lines: list[str], rc: int | None) -> dict[str, Any]:
    if rc == 0:
        return {"zstandard_version": _last(lines)}
    text = "\n".join(lines)
    if "No module named" in text:
        return {"zstandard_error": "the agent's Python has no zstandard module"}
    if rc == 127 or _NOT_FOUND.search(text):
        return {"zstandard_error": "no agent Python (the agent is not installed)"}
    return {"zstandard_error": _last(lines) or f"exit status {rc}"}


def _disk(lines: list[str], rc: int | None) -> dict[str, Any]:
    paths = [line[len("@@path "):] for line in lines if line.startswith("@@path ")]
    table = [line.split() for line in lines if len(line.split()) >= 6 and line.split()[1].isdigit()]
    disks = tuple(Disk(p, int(row[3]) * 1024, int(row[1]) * 1024) for p, row in zip(paths, table))
    return {"disks": disks}


def _agent(lines: list[str], rc: int | None) -> dict[str, Any]:
    if rc == 0:
        return {"agent_installed": True, "agent_version": _last(lines).split()[-1] if _last(lines) else None}
    reason = _last(lines)
    if rc == 127 or _NOT_FOUND.search("\n".join(lines)):
        return {"agent_note": "not installed"}
    return {"agent_installed": True, "agent_note": f"does not report its version ({reason})"}


def _last(lines: list[str]) -> str:
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""
