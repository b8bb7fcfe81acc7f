"""`hosts install`'s CRIU step: a host without a CRIU >= 4.2 gets this machine's CRIU prefix, as the agent's
wheels go (a tar on stdin: hosts may be air-gapped), and runc's CRIU is configured as on this machine.

The prefix (BEAMCTL_CRIU_PREFIX, default /opt/beamctl/criu) is self-contained: CRIU, its libraries and
its own dynamic loader, run through a wrapper with --library-path (~17 MB, x86_64). On the host it lands
at PREFIX with the wrapper at WRAPPER: unpacked into a temporary folder beside PREFIX and moved into
place whole, so a broken stream leaves the old prefix (or none), never half of one. A host whose own
CRIU is >= 4.2 keeps it. Then `criu check`, and `network-lock` in RUNC_CONF when the file has no choice
yet: nftables where a trial dump works (in process: 70-85 ms less per capture and restore than CRIU's
default, which runs iptables-restore), else iptables written down, so the trial is not repeated.
`libdir` in RUNC_CONF names an empty folder, so CRIU loads no plugin: a host's CRIU with NVIDIA's CUDA
plugin would restore and unlock a GPU container's processes itself, behind the agent's back (the agent
does those steps: agent/gpu_snapshots.py). `external mnt[]` makes CRIU take the bind mounts that config.json
does not list (the NVIDIA prestart hook's: libcuda, /dev/nvidia*; runc names only config.json's) as external
ones, bound from the same host paths on restore, instead of failing the dump ("doesn't have a proper root
mount"; agent/mountpoints.py has the rest). Nothing here fails an agent install: a host without a usable
CRIU gets the agent and boots cold.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from beamctl.protocol.criu import MIN_CRIU, criu_too_old
from beamctl.hosts.prereqs import criu_problem
from beamctl.units import human_bytes

PREFIX = "/opt/beamctl/criu"  # on the host, as on this machine
WRAPPER = "/usr/local/bin/criu"  # early on PATH: runc (through dockerd) finds `criu` there
RUNC_CONF = "/etc/criu/runc.conf"  # runc hands CRIU these options
PREFIX_ENV = "BEAMCTL_CRIU_PREFIX"
ARCH = "x86_64"  # the prefix's libraries are x86_64-linux-gnu
STEP_TIMEOUT_S = 120  # unpack 17 MB, criu check, one trial dump
NEED = ".".join(map(str, MIN_CRIU))

# Appended to install.PROBE: what the host's CRIU is (criu, criucheck, lock lines).
PROBE = r"""PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"
c=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
if [ -n "$c" ]; then echo "criu $c"; if criu check >/dev/null 2>&1; then echo "criucheck ok"; else echo "criucheck failed"; fi; fi
l=$(sed -n 's/^[[:space:]]*network-lock[[:space:]]*//p' /etc/criu/runc.conf 2>/dev/null | head -n1)
[ -n "$l" ] && echo "lock $l"
true"""

# $1 carry|configure, $2 prefix, $3 wrapper, $4 runc.conf; stdin: the prefix as a tar when carrying.
# Prints `version V`, `check ok|failed: WHY`, `lock L`.
SCRIPT = r"""set -eu
P=$2; W=$3; C=$4; umask 022
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"
rm -rf "$P".new.* 2>/dev/null || true  # left by a run killed in the middle of the stream
K=criu
if [ "$1" = carry ]; then
    mkdir -p "$(dirname "$P")" "$(dirname "$W")"
    t=$(mktemp -d "$P.new.XXXXXX")
    trap 'rm -rf "$t"' EXIT
    trap 'exit 1' HUP INT TERM PIPE
    tar -x -C "$t" -f -
    L=$t/usr/lib/x86_64-linux-gnu
    v=$("$L/ld-linux-x86-64.so.2" --library-path "$L" "$t/usr/sbin/criu" --version 2>&1 | sed -n 's/^Version: *//p' | head -n1)
    [ -n "$v" ] || { echo "the carried CRIU does not run on this host" >&2; exit 3; }
    rm -rf "$P.old"; [ -e "$P" ] && mv "$P" "$P.old"
    mv "$t" "$P"; chmod 755 "$P"; rm -rf "$P.old"
    L=$P/usr/lib/x86_64-linux-gnu
    printf '#!/bin/sh\n# beamctl hosts install: CRIU %s, carried from the client into a private prefix\nexec "%s/ld-linux-x86-64.so.2" --library-path "%s" "%s/usr/sbin/criu" "$@"\n' \
        "$v" "$L" "$L" "$P" >"$W.tmp"
    chmod 755 "$W.tmp"; mv "$W.tmp" "$W"; K=$W
fi
echo "version $("$K" --version 2>&1 | sed -n 's/^Version: *//p' | head -n1)"
if out=$("$K" check 2>&1); then echo "check ok"; else
    echo "check failed: $(printf '%s\n' "$out" | grep -v RLIMIT_NOFILE | tail -n 1)"; exit 0; fi
if ! { [ -f "$C" ] && grep -qE '^[[:space:]]*network-lock' "$C"; }; then
    d=$(mktemp -d /tmp/beamctl-criu-lock.XXXXXX)
    setsid unshare --net sleep 30 </dev/null >/dev/null 2>&1 &
    pid=$!; sleep 0.2; lock=iptables
    "$K" dump -t "$pid" -D "$d" --leave-running --network-lock nftables -o dump.log >/dev/null 2>&1 && lock=nftables
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$d"
    mkdir -p "$(dirname "$C")"
    printf '# beamctl hosts install: network-lock %s (nftables when a trial dump with it works)\nnetwork-lock %s\n' \
        "$lock" "$lock" >>"$C"
fi
if ! grep -qE '^[[:space:]]*libdir' "$C" 2>/dev/null; then  # one owner of a GPU container's CUDA steps
    N=$(dirname "$P")/criu-no-plugins; mkdir -p "$N" "$(dirname "$C")"
    printf '# beamctl hosts install: no CRIU plugins: the agent drives the CUDA steps (agent/gpu_snapshots.py)\nlibdir %s\n' \
        "$N" >>"$C"
fi
if ! grep -qE '^[[:space:]]*external[[:space:]]+mnt\[\]' "$C" 2>/dev/null; then  # an OCI hook's mounts (NVIDIA's)
    printf '# beamctl hosts install: mounts outside config.json (an OCI hook'"'"'s) are external: bound from the host again on restore\nexternal mnt[]\n' >>"$C"
fi
echo "lock $(sed -n 's/^[[:space:]]*network-lock[[:space:]]*//p' "$C" | head -n1)"
"""


@dataclass(frozen=True)
class CriuResult:
    state: str  # present (the host's own) | installed (carried from here) | missing (none to carry) | failed
    version: str | None = None
    network_lock: str | None = None
    bytes_sent: int = 0
    problem: str | None = None  # why checkpoints are off on this host (None: it can checkpoint)
    hint: str | None = None

    @property
    def can_checkpoint(self) -> bool:
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "can_checkpoint": self.can_checkpoint}


def client_prefix(env: Any = os.environ) -> Path | None:
    """This machine's CRIU prefix to carry, when it has one."""
    prefix = Path(env.get(PREFIX_ENV) or PREFIX)
    return prefix if (prefix / "usr/sbin/criu").is_file() else None


def plan(facts: dict[str, str], prefix: Path | None) -> str:
    """keep (the host's CRIU works and runc.conf chooses a lock) | configure | carry | none (pure)."""
    version = facts.get("criu")
    if version and not criu_too_old(version):
        return "keep" if facts.get("lock") or facts.get("criucheck") != "ok" else "configure"
    return "carry" if prefix is not None and facts.get("arch") == ARCH else "none"


def missing(facts: dict[str, str], prefix: Path | None, host: str, env: Any = os.environ) -> CriuResult:
    """The result for a host that keeps no usable CRIU (plan `none`): why, and what would fix it."""
    problem = criu_problem(facts.get("criu"), None)
    if prefix is not None:  # only the architecture stops it
        hint = f"the CRIU here is for {ARCH}, the host is {facts.get('arch') or 'unknown'}"
    else:
        hint = f"this machine has no CRIU to carry ({env.get(PREFIX_ENV) or PREFIX} has no usr/sbin/criu)"
    hint += (f": install CRIU >= {NEED} on {host} with its package manager where it offers one, then "
             f"`beamctl hosts check {host}`; until then checkpoint_enabled apps boot cold there")
    return CriuResult("missing", facts.get("criu"), facts.get("lock"), problem=problem, hint=hint)


def kept(facts: dict[str, str]) -> CriuResult:
    check = None if facts.get("criucheck") == "ok" else "see `criu check` on the host"
    return CriuResult("present", facts.get("criu"), facts.get("lock"),
                      problem=criu_problem(facts.get("criu"), None, check))


def parse_step(stdout: str, state: str, sent: int) -> CriuResult:
    """SCRIPT's output -> the host's CRIU as it is now."""
    said = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        said[key] = value.strip()
    version, check = said.get("version") or None, said.get("check", "")
    failed = check.removeprefix("failed:").strip() or "no answer" if check != "ok" else None
    return CriuResult(state, version, said.get("lock") or None, sent, criu_problem(version, None, failed))


def argv(mode: str) -> list[str]:
    return ["sh", "-c", SCRIPT, "sh", mode, PREFIX, WRAPPER, RUNC_CONF]


@lru_cache(maxsize=2)
def _tar(prefix: str, stamp: float) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for item in sorted(Path(prefix).iterdir()):
            tar.add(item, arcname=item.name)
    return buf.getvalue()


def prefix_tar(prefix: Path) -> bytes:
    """The prefix as a tar (links kept), built once per process and change of its criu."""
    return _tar(str(prefix), (prefix / "usr/sbin/criu").stat().st_mtime)


def criu_step(conn: Any, label: str, facts: dict[str, str], progress: Callable[[str], None],
              env: Any = os.environ) -> CriuResult:
    """Make the host's CRIU usable if this machine can; its state either way. Raises BeamctlError only
    when the connection itself fails."""
    prefix = client_prefix(env)
    step = plan(facts, prefix)
    if step == "keep":
        return kept(facts)
    if step == "none":
        return missing(facts, prefix, label, env)
    data, state = b"", "present"
    if step == "carry":
        data, state = prefix_tar(prefix), "installed"  # type: ignore[arg-type]
        found = f"CRIU {facts['criu']}" if facts.get("criu") else "no CRIU"
        progress(f"{label}: sending CRIU ({human_bytes(len(data))}) for checkpoints (the host has {found})")
    done = conn.run(argv(step), data, idle_timeout=STEP_TIMEOUT_S)
    if done.exit != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.exit}"])[-1]
        return CriuResult("failed", facts.get("criu"), facts.get("lock"), len(data),
                          problem=f"installing CRIU failed: {why}",
                          hint=f"checkpoint_enabled apps boot cold on {label}; `beamctl hosts install {label}` "
                               f"tries again")
    return parse_step(done.stdout, state, len(data))
