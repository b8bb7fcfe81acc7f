"""`hosts install`: put this beamctl's agent on a host over SSH, idempotently, without network there.

On the host: /opt/beamctl/agent/venv (python3 -m venv --without-pip: a plain Debian python3 has no
ensurepip) with beamctl (--no-deps), the docker SDK's and zstandard's wheels, installed by pip run from
its own wheel, all sent from the client (hosts may be air-gapped); the agent runs under systemd when the host
has it (beamctl-agent.service), else under a tiny restart loop started with setsid. Two remote commands
(fixed sh scripts; arguments quoted, wheels as a tar on stdin), then `version` through the bridge.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import beamctl
from beamctl.hosts import criu
from beamctl.protocol.layout import AGENT_ARGV, DATA_DIR, PYTHON, ROOT
from beamctl.transport.errors import RemoteError, SshError, tail
from beamctl.units import human_bytes

UNIT = "beamctl-agent.service"
RUNTIME_REQUIREMENTS = ("docker>=7", "zstandard>=0.22")  # what the agent imports besides beamctl, stdlib
INSTALLER = "pip"  # its wheel is sent too and run from the wheel: hosts need no python3-venv/ensurepip
START_WAIT_S = 30
MAX_PARALLEL = 16
Progress = Callable[[str], None]

PROBE = r"""echo "uid $(id -u)"; echo "arch $(uname -m)"
echo "python $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
[ -d /run/systemd/system ] && echo "systemd yes"
v=$("$1" -m beamctl.agent --version 2>/dev/null) && echo "agent ${v##* }"
pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$2/agent.json" 2>/dev/null)
[ -n "$pid" ] && grep -q beamctl.agent "/proc/$pid/cmdline" 2>/dev/null && echo "running $pid"
true"""

UNIT_TEXT = f"""[Unit]
Description=beamctl agent (apps, containers, tasks on this host)
After=docker.service network-online.target
Wants=docker.service

[Service]
ExecStart={" ".join(AGENT_ARGV)}
Restart=always
RestartSec=2
KillMode=process

[Install]
WantedBy=multi-user.target
"""

SUPERVISOR = f"""#!/bin/sh
# beamctl agent supervisor (hosts without systemd): restarts the agent whenever it exits.
echo $$ >{DATA_DIR}/supervisor.pid
while :; do
    {" ".join(AGENT_ARGV)}
    echo "beamctl-agent exited with $?; restarting in 2 s"
    sleep 2
done
"""

# The supervisor a previous install started, stopped. Its pid file may be from before a reboot (or a restart of
# a host container), when the pid may name any process now (this very shell, its sshd session): only a process
# running supervise.sh is killed.
STOP_SUPERVISOR = r"""p=$(cat "$D/supervisor.pid" 2>/dev/null || true)
if [ -n "$p" ] && grep -q supervise.sh "/proc/$p/cmdline" 2>/dev/null; then kill "$p" 2>/dev/null || true; fi
rm -f "$D/supervisor.pid"
"""

# $1 mode (systemd|background), $2 wheel file name or "" (start only), $3 unit text, $4 supervisor text.
# stdin: a tar of the wheels when $2 is set. Containers keep running over a restart: the agent adopts them.
INSTALL = rf"""set -eu
R={ROOT}; D={DATA_DIR}; umask 022; mkdir -p "$R" "$D"
if [ -n "$2" ]; then
    rm -rf "$R/incoming"; mkdir -p "$R/incoming"; tar -x -C "$R/incoming" -f -
    [ -x "$R/venv/bin/python" ] || python3 -m venv --without-pip "$R/venv" >&2
    W=$(ls "$R"/incoming/deps/{INSTALLER}-*.whl | head -n 1)  # pip, run from its wheel
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$R/venv/bin/python" "$W/pip" install -q --no-index --find-links "$R/incoming/deps" {" ".join(RUNTIME_REQUIREMENTS)} {INSTALLER} >&2
    "$R/venv/bin/python" "$W/pip" install -q --no-index --no-deps --force-reinstall "$R/incoming/$2" >&2
    rm -rf "$R/incoming"
fi
[ "$1" = systemd ] && systemctl stop {UNIT} 2>/dev/null || true
{STOP_SUPERVISOR}pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$D/agent.json" 2>/dev/null || true)
if [ -n "$pid" ] && grep -q beamctl.agent "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"; i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
fi
rm -f "$D/agent.json"
if [ "$1" = systemd ]; then
    printf '%s' "$3" >/etc/systemd/system/{UNIT}
    systemctl daemon-reload && systemctl enable {UNIT} >&2 && systemctl restart {UNIT}
else
    printf '%s' "$4" >"$R/supervise.sh"; chmod 755 "$R/supervise.sh"
    setsid nohup "$R/supervise.sh" >>"$D/agent.log" 2>&1 </dev/null &
fi
i=0
until [ -s "$D/agent.json" ]; do
    i=$((i + 1)); [ $i -gt {START_WAIT_S * 10} ] && {{ echo "the agent did not start:" >&2; tail -n 5 "$D/agent.log" >&2; exit 1; }}
    sleep 0.1
done
echo started"""


@dataclass(frozen=True)
class InstallResult:
    host: str
    action: str  # installed | upgraded | current | started (current, but was not running) | failed
    version: str | None
    bytes_sent: int = 0
    seconds: float = 0.0
    pid: int | None = None  # the agent's, as it answered through the bridge
    error: str | None = None
    hint: str | None = None
    criu: criu.CriuResult | None = None  # the host's CRIU after the install (None: not reached)
    supervisor: str | None = None  # systemd | background (a restart loop: a reboot ends it)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "criu": self.criu.as_json() if self.criu else None}


def parse_probe(stdout: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        facts[key] = value.strip()
    return facts


def probe_argv() -> list[str]:
    return ["sh", "-c", PROBE + "\n" + criu.PROBE, "sh", PYTHON, DATA_DIR]


def install_argv(mode: str, wheel: str) -> list[str]:
    return ["sh", "-c", INSTALL, "sh", mode, wheel, UNIT_TEXT, SUPERVISOR]


def agent_wheel(cache: Path) -> Path:
    """This beamctl as a wheel (pure Python: zipped here, no build backend), once per content."""
    pkg = Path(beamctl.__file__).resolve().parent
    files = sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix not in (".pyc", ".pyo"))
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(pkg.parent)}\0".encode() + p.read_bytes() + b"\0")
    name = f"beamctl-{beamctl.__version__}-py3-none-any.whl"
    dest = cache / "agent-wheels" / h.hexdigest()[:16] / name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    info = f"beamctl-{beamctl.__version__}.dist-info"
    entries = [(str(p.relative_to(pkg.parent)), p.read_bytes()) for p in files]
    entries += [(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: beamctl\nVersion: {beamctl.__version__}\n"
                 .encode()), (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: beamctl\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")]
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in entries] + [f"{info}/RECORD,,"]
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in entries + [(f"{info}/RECORD", ("\n".join(record) + "\n").encode())]:
            z.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), d, zipfile.ZIP_DEFLATED)
    os.replace(tmp, dest)
    return dest


def payload(wheel: Path, deps: list[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(wheel, arcname=wheel.name)
        for d in deps:
            tar.add(d, arcname=f"deps/{d.name}")
    return buf.getvalue()


def install_agent(host: Any, progress: Progress, force: bool = False) -> InstallResult:
    """Install, upgrade or just check the agent on one host (hosts/host.SshHost: its shared connection);
    raises BeamctlError when it cannot."""
    from beamctl.image import wheels
    from beamctl.paths import cache_dir

    start, label, version = time.monotonic(), host.name, beamctl.__version__
    conn = host.connection()
    probed = conn.run(probe_argv())
    if probed.exit != 0:
        raise RemoteError(label, "probe for the agent", probed.exit, tail(probed.stderr))
    facts = parse_probe(probed.stdout)
    if facts.get("uid") != "0":
        raise SshError(f"{label}: installing the agent needs root on the host (uid {facts.get('uid')})",
                       "connect as root (User root in ~/.ssh/config, or root@host in the inventory)")
    if not facts.get("python"):
        raise SshError(f"{label}: no python3 on the host", "install python3 there (Debian: apt-get install python3)")
    old, running = facts.get("agent"), "running" in facts
    criu_state = criu.criu_step(conn, label, facts, progress)  # before a (re)start: the agent sees it
    mode = "systemd" if "systemd" in facts else "background"
    sent, send = 0, force or old != version
    if not send and running:
        action = "current"
        progress(f"{label}: agent {version} is current; nothing sent")
    else:
        wheel_name = ""
        if send:
            cache = cache_dir()
            deps = wheels.resolve([*RUNTIME_REQUIREMENTS, INSTALLER], facts["python"], cache, progress,
                                  platform=f"manylinux2014_{facts.get('arch') or 'x86_64'}")
            wheel = agent_wheel(cache)
            data = payload(wheel, list(deps.wheels))
            progress(f"{label}: sending agent {version} ({human_bytes(len(data))}), starting it ({mode})")
            wheel_name, sent = wheel.name, len(data)
        else:
            data = b""
            progress(f"{label}: agent {version} is installed but not running; starting it ({mode})")
        done = conn.run(install_argv(mode, wheel_name), data, idle_timeout=START_WAIT_S + 60)
        if done.exit != 0:
            raise RemoteError(label, "install the agent", done.exit, tail(done.stderr))
        action = "started" if not send else "upgraded" if old else "installed"
    answer = host.request("version", timeout=START_WAIT_S + 60)
    got = (answer.get("result") or {}).get("version") if answer.get("ok") else None
    if got != version:
        raise SshError(f"{label}: the agent does not answer as {version} through the bridge: "
                       f"{answer.get('error') or got}", f"see {DATA_DIR}/agent.log on the host")
    return InstallResult(label, action, version, sent + criu_state.bytes_sent, time.monotonic() - start,
                         answer["result"].get("pid"), criu=criu_state, supervisor=mode)


def install_hosts(hosts: list[Any], progress: Progress, force: bool = False) -> list[InstallResult]:
    """Every host at once; one result per host, in the order asked (a failure is a result too)."""
    from beamctl.hosts.each import each

    started = time.monotonic()
    replies = each(hosts, lambda h: install_agent(h, progress, force), workers=MAX_PARALLEL)
    return [r.result if r.ok else InstallResult(r.host, "failed", None, seconds=time.monotonic() - started,
                                                error=r.exc.message if r.exc else r.error,
                                                hint=r.exc.hint if r.exc else None)
            for r in replies]
