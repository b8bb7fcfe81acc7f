"""The front door on a gateway host (beam.yaml `gateway:`): one HAProxy for every app that names this host,
configured from what deploys told this agent, reloaded without dropping a connection.

Each app is one record, DATA/gateway/apps/APP.json (its port, bind address, its token's SHA-256, its
servers: the agents' endpoints of the hosts that serve it), plus its certificate, DATA/gateway/certs/PORT/
APP.pem (0600: HAProxy reads it as root, before it drops to nobody). `render` turns all records into one
haproxy.cfg (pure; tests read it); `apply` checks the new file with `haproxy -c` before it replaces the
old one (a refused file changes nothing) and reloads: a new HAProxy takes the listening sockets from the
old one over its admin socket (`-x`, `expose-fd listeners`) and tells it to finish its connections and
leave (`-sf`), so no connection is refused or cut. HAProxy runs detached (`-D`) and outlives the agent,
as containers do; housekeeping starts it again when it died (`heal`). What the file says: haproxy_conf.py.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from beamctl.agent import private
from beamctl.agent.haproxy_conf import Door, ident, render
from beamctl.protocol.errors import AgentError

__all__ = ["Door", "render", "set_door", "remove_door", "apply", "start", "heal", "status", "doors", "pids"]

FOLDER = "gateway"
CARRIED = "/opt/beamctl/haproxy/haproxy"  # hosts/haproxy.py puts it there on a host without HAProxy
START_TIMEOUT_S = 20
SBIN = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")


def folder(data_dir: Path) -> Path:
    return data_dir / FOLDER


def doors(data_dir: Path) -> list[Door]:
    out = []
    for path in sorted((folder(data_dir) / "apps").glob("*.json")):
        try:
            out.append(Door.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged record: that app has no route until its next deploy says it again
    return out


def binary() -> str | None:
    """HAProxy: the one hosts/haproxy.py carried here, else the host's own."""
    if os.access(CARRIED, os.X_OK):
        return CARRIED
    found = shutil.which("haproxy")  # Debian puts it in /usr/sbin, which a service's PATH may lack
    return found or next((p for p in SBIN if os.access(p, os.X_OK)), None)


def _user() -> tuple[str, str] | None:
    try:
        pwd.getpwnam("nobody")
        return ("nobody", next(g for g in ("nogroup", "nobody") if _group(g)))
    except (KeyError, StopIteration):
        return None


def _group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def pids(data_dir: Path) -> list[int]:
    """The running HAProxy processes of this front door (new and those finishing old connections)."""
    cfg = str(folder(data_dir) / "haproxy.cfg").encode()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cfg in argv and any(b"haproxy" in a for a in argv[:4]):
                out.append(int(entry.name))
    return sorted(out)


def newest_pid(data_dir: Path) -> int | None:
    try:
        pid = int((folder(data_dir) / "haproxy.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid in pids(data_dir) else None


def set_door(data_dir: Path, door: Door, pem: str | None) -> None:
    """Record one app's route (and its certificate), then apply all routes."""
    where = folder(data_dir)
    where.mkdir(mode=private.DIR_MODE, exist_ok=True)
    for sub in ("apps", "empty", "certs"):
        (where / sub).mkdir(mode=private.DIR_MODE, parents=True, exist_ok=True)
    cert = where / "certs" / str(door.port) / f"{door.app}.pem"
    old = {d.app: d for d in doors(data_dir)}
    clash = next((d for d in old.values() if d.port == door.port and d.app != door.app
                  and (d.tls != door.tls or d.bind != door.bind)), None)
    if clash:
        raise AgentError(f"port {door.port} here serves {clash.app} "
                         f"{'with TLS' if clash.tls else 'as plain HTTP'} on {clash.bind or 'every address'}; "
                         f"{door.app} asks for {'TLS' if door.tls else 'plain HTTP'} on {door.bind or 'every address'}",
                         hint="give the app another gateway port")
    record = where / "apps" / f"{door.app}.json"
    before = record.read_text() if record.exists() else None
    before_pem = cert.read_text() if cert.exists() else None
    if door.tls and pem is not None:  # None: the certificate it has (an update of token or servers)
        cert.parent.mkdir(mode=private.DIR_MODE, exist_ok=True)
        private.write(cert, pem)
    private.write(record, json.dumps(door.as_json()))
    try:
        apply(data_dir)
    except AgentError:  # the old route stays, whole
        _restore(record, before)
        _restore(cert, before_pem)
        raise
    if old.get(door.app) and old[door.app].port != door.port:  # moved: its old certificate goes
        (where / "certs" / str(old[door.app].port) / f"{door.app}.pem").unlink(missing_ok=True)


def _restore(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
    else:
        private.write(path, text)


def remove_door(data_dir: Path, app: str) -> bool:
    where = folder(data_dir)
    record = where / "apps" / f"{app}.json"
    if not record.exists():
        return False
    gone = Door.from_json(json.loads(record.read_text()))
    record.unlink()
    (where / "certs" / str(gone.port) / f"{app}.pem").unlink(missing_ok=True)
    apply(data_dir)
    return True


def apply(data_dir: Path) -> dict[str, Any]:
    """Write haproxy.cfg for the recorded routes and (re)start HAProxy on it; with no route, stop it.
    Raises AgentError, the old file and process untouched, when HAProxy refuses the new file."""
    where = folder(data_dir)
    all_doors = doors(data_dir)
    cfg = where / "haproxy.cfg"
    if not all_doors:
        for pid in pids(data_dir):
            _signal(pid, signal.SIGUSR1)  # a graceful stop: connections finish
        cfg.unlink(missing_ok=True)
        return {"running": False}
    exe = binary()
    if exe is None:
        raise AgentError("no HAProxy on this host", hint="`beamctl deploy` carries one here from a client that has "
                                                        "it (apt-get install haproxy there)")
    for d in all_doors:
        if d.tls:  # an empty certificate folder would be refused; each app's pem is there
            (where / "certs" / str(d.port)).mkdir(mode=private.DIR_MODE, parents=True, exist_ok=True)
    new = where / "haproxy.cfg.new"
    private.write(new, render(all_doors, where, _user()))
    check = subprocess.run([exe, "-c", "-q", "-f", str(new)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        new.unlink(missing_ok=True)
        raise AgentError("HAProxy refused the front door's configuration: " + _tail(check.stdout + check.stderr))
    os.replace(new, cfg)
    return start(data_dir, exe)


def start(data_dir: Path, exe: str | None = None) -> dict[str, Any]:
    """Start HAProxy on haproxy.cfg, taking over the running one's sockets and connections if there is one."""
    exe = exe or binary()
    where = folder(data_dir)
    if exe is None:
        raise AgentError("no HAProxy on this host")
    old = pids(data_dir)
    argv = [exe, "-D", "-f", str(where / "haproxy.cfg"), "-p", str(where / "haproxy.pid")]
    if old:
        if (where / "admin.sock").exists():
            argv += ["-x", str(where / "admin.sock")]
        argv += ["-sf", *map(str, old)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=str(where),
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AgentError("HAProxy did not start: " + _tail(done.stdout + done.stderr))
    for name in ("haproxy.pid",):  # HAProxy writes it 0644; the agent's files are root's alone
        try:
            os.chmod(where / name, private.FILE_MODE)
        except OSError:
            pass
    return {"running": True, "pid": newest_pid(data_dir), "replaced": old}


def heal(data_dir: Path) -> bool:
    """Start HAProxy again when routes are recorded and none runs (killed, host rebooted). True if started."""
    if not (folder(data_dir) / "haproxy.cfg").exists() or pids(data_dir):
        return False
    start(data_dir)
    return True


def servers_state(data_dir: Path) -> dict[str, dict[str, str]]:
    """app -> server name -> HAProxy's word for it (UP, DOWN, "UP 1/2", MAINT, no check), from `show stat`."""
    sock = folder(data_dir) / "admin.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"show stat\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError:
        return {}
    rows = b"".join(chunks).decode(errors="replace").splitlines()
    if not rows:
        return {}
    head = rows[0].lstrip("# ").split(",")
    out: dict[str, dict[str, str]] = {}
    for row in rows[1:]:
        cols = dict(zip(head, row.split(",")))
        px, sv = cols.get("pxname", ""), cols.get("svname", "")
        if px.startswith("app_") and sv not in ("FRONTEND", "BACKEND", ""):
            out.setdefault(px[4:], {})[sv] = cols.get("status", "")
    return out


def status(data_dir: Path) -> dict[str, Any]:
    state = servers_state(data_dir)
    return {"running": bool(pids(data_dir)), "pid": newest_pid(data_dir),
            "apps": [{"app": d.app, "port": d.port, "tls": d.tls, "bind": d.bind,
                      "servers": [{"host": n, "address": a, "state": state.get(ident(d.app), {}).get(ident(n), "unknown")}
                                  for n, a in d.servers]} for d in doors(data_dir)]}


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if "[NOTICE]" not in ln][-lines:]
    return " | ".join(kept) or "(no output)"
