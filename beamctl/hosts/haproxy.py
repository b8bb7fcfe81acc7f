"""A gateway host's HAProxy: its own when it has HAProxy >= 2.2 (the door's config needs `http-request
return` and `http-error`), else this machine's, carried as CRIU is (hosts/criu.py): the binary, every
library it links and its own dynamic loader in a tar on stdin (hosts may be air-gapped), unpacked beside
PREFIX, tried, then moved into place whole, run through a wrapper with --library-path.

This machine needs HAProxy for that (Debian: apt-get install haproxy); a gateway host with its own needs
nothing from here.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from beamctl.errors import BeamctlError
from beamctl.transport.errors import RemoteError, tail
from beamctl.units import human_bytes

PREFIX = "/opt/beamctl/haproxy"  # agent/gateway.CARRIED is PREFIX/haproxy
MIN = (2, 2)
STEP_TIMEOUT_S = 120
LOADER = "ld-linux-x86-64.so.2"

WRAPPER = f"""#!/bin/sh
# HAProxy carried by beamctl (beamctl/hosts/haproxy.py): its own libraries and loader.
D={PREFIX}
exec "$D/lib/{LOADER}" --library-path "$D/lib" "$D/haproxy.bin" "$@"
"""

# $1 probe|carry, $2 prefix; stdin: the prefix as a tar when carrying. Prints `own V` / `carried V`.
SCRIPT = r"""set -eu
P=$2; umask 022
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"
v() { "$@" -v 2>/dev/null | sed -n 's/^HA-\{0,1\}Proxy version \([0-9][0-9.]*\).*/\1/p' | head -n1; }
if [ "$1" = carry ]; then
    rm -rf "$P".new.* 2>/dev/null || true
    mkdir -p "$(dirname "$P")"
    t=$(mktemp -d "$P.new.XXXXXX")
    trap 'rm -rf "$t"' EXIT
    trap 'exit 1' HUP INT TERM PIPE
    tar -x -C "$t" -f -
    got=$("$t/lib/ld-linux-x86-64.so.2" --library-path "$t/lib" "$t/haproxy.bin" -v 2>&1 | sed -n 's/^HA-\{0,1\}Proxy version \([0-9][0-9.]*\).*/\1/p' | head -n1)
    [ -n "$got" ] || { echo "the carried HAProxy does not run on this host" >&2; exit 3; }
    rm -rf "$P.old"; [ -e "$P" ] && mv "$P" "$P.old"
    mv "$t" "$P"; chmod 755 "$P"; rm -rf "$P.old"
    trap - EXIT
fi
if command -v haproxy >/dev/null 2>&1; then echo "own $(v haproxy)"; fi
if [ -x "$P/haproxy" ]; then echo "carried $(v "$P/haproxy")"; fi
true"""


def version_of(text: str) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def usable(facts: dict[str, str]) -> str | None:
    """Which HAProxy the host's agent will run ("carried X" first, as agent/gateway.binary picks), or None."""
    for kind in ("carried", "own"):
        v = version_of(facts.get(kind, ""))
        if v and v >= MIN:
            return f"{kind} {facts[kind]}"
    return None


def parse(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        kind, _, version = line.partition(" ")
        if kind in ("own", "carried"):
            out[kind] = version.strip()
    return out


def _local() -> Path:
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(found).is_file():
        raise BeamctlError("the gateway host has no HAProxy >= 2.2, and this machine has none to carry there",
                           hint="apt-get install haproxy (here, or on the gateway host)")
    return Path(found).resolve()


def _libraries(exe: Path) -> list[Path]:
    done = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, timeout=30)
    libs = []
    for line in done.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(Path(m.group(1)))
    if done.returncode != 0 or not any(p.name == LOADER for p in libs):
        raise BeamctlError(f"cannot list {exe}'s libraries (ldd: {done.stderr.strip() or done.returncode})")
    return libs


@lru_cache(maxsize=1)
def _tar(exe: str, stamp: float) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(exe, arcname="haproxy.bin")
        for lib in _libraries(Path(exe)):
            tar.add(str(lib.resolve()), arcname=f"lib/{lib.name}")
        info = tarfile.TarInfo("haproxy")
        data = WRAPPER.encode()
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def prefix_tar() -> bytes:
    exe = _local()
    return _tar(str(exe), exe.stat().st_mtime)


def ensure(host: Any, progress: Callable[[str], None]) -> str:
    """HAProxy usable by the agent of this (SSH) host: which one ("own 2.6.12", "carried 2.6.12")."""
    conn = host.connection()
    probed = conn.run(["sh", "-c", SCRIPT, "sh", "probe", PREFIX], b"", idle_timeout=STEP_TIMEOUT_S)
    if probed.exit != 0:
        raise RemoteError(host.name, "look for HAProxy", probed.exit, tail(probed.stderr))
    facts = parse(probed.stdout)
    found = usable(facts)
    if found:
        return found
    data = prefix_tar()
    have = f"HAProxy {facts['own']}" if facts.get("own") else "no HAProxy"
    progress(f"{host.name}: sending HAProxy ({human_bytes(len(data))}) for the gateway (the host has {have})")
    done = conn.run(["sh", "-c", SCRIPT, "sh", "carry", PREFIX], data, idle_timeout=STEP_TIMEOUT_S)
    found = usable(parse(done.stdout)) if done.exit == 0 else None
    if not found:
        raise RemoteError(host.name, "install HAProxy for the gateway", done.exit, tail(done.stderr))
    return found
