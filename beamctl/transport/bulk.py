"""The bulk stream to a host: OpenSSH's client where it can do exactly what paramiko would, else paramiko.

paramiko moves ~150 MiB/s here and shares the GIL with everything else in this process; OpenSSH's
`ssh` moves ~660 MiB/s in its own process (../shared/FIELD-NOTES.md). So image bytes go through
`ssh` when it is installed and can reach the host with the SAME trust beamctl applies: the resolved
target's HostName/Port/User, the same identity files, the same known_hosts files, host keys checked
strictly (never added), no prompts (BatchMode), nothing from other config files (`-F /dev/null`).
A target behind ProxyJump, a key that needs a passphrase (BatchMode cannot ask) or a failed probe
falls back to a paramiko channel on the connection beamctl already holds.

$BEAMCTL_BULK = auto (default) | openssh | paramiko picks it explicitly (benchmarks, tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Protocol

from beamctl.transport.errors import HostUnreachable, RemoteEnded
from beamctl.transport.remote import command_line, read_into
from beamctl.transport.sshconfig import Target

DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")
PROBE_TIMEOUT_S = 20.0
ENDED_WAIT_S = 5.0  # after a write failed: how long the remote command may take to report its end
_probed: dict[tuple[Any, ...], bool] = {}
_probe_lock = threading.Lock()


class Sink(Protocol):
    """One remote command fed a stream: write() chunks, then finish() -> (exit status, stdout, stderr).

    write() raises RemoteEnded when the command ended on the host before the stream did (the host
    answered: its status and stderr say why), HostUnreachable when the way to the host broke."""

    via: str

    def write(self, data: bytes) -> None: ...
    def finish(self, timeout: float) -> tuple[int, str, str]: ...
    def abort(self) -> None: ...


def mode() -> str:
    value = os.environ.get("BEAMCTL_BULK", "auto").strip().lower()
    return value if value in ("auto", "openssh", "paramiko") else "auto"


def openssh_argv(target: Target, remote: list[str], identity_files: list[Path] | None = None,
                 tty: bool = False) -> list[str] | None:
    """`ssh` with every option from the resolved target, or None when OpenSSH cannot be told the same.
    `tty`: a terminal on the host for an interactive command (`beamctl shell`)."""
    exe = shutil.which("ssh")
    if exe is None or target.jump is not None:
        return None
    keys = identity_files if identity_files is not None else _identity_files(target)
    known = " ".join(_quote_path(p) for p in target.user_known_hosts) or "/dev/null"
    global_known = " ".join(_quote_path(p) for p in target.global_known_hosts) or "/dev/null"
    argv = [exe, "-F", "/dev/null", "-t" if tty else "-T", "-e", "none", "-x", "-a",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no",
            "-o", "CheckHostIP=no", "-o", f"UserKnownHostsFile={known}",
            "-o", f"GlobalKnownHostsFile={global_known}",
            "-o", f"ConnectTimeout={max(1, int(target.connect_timeout))}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ClearAllForwardings=yes",
            "-o", "PermitLocalCommand=no", "-o", "LogLevel=ERROR",
            "-p", str(target.port), "-l", target.user]
    for key in keys:
        argv += ["-i", str(key)]
    if target.identities_only:
        argv += ["-o", "IdentitiesOnly=yes"]
    return argv + ["--", target.hostname, command_line(remote)]


def _identity_files(target: Target) -> list[Path]:
    if target.identity_files:
        return list(target.identity_files)
    ssh_dir = Path.home() / ".ssh"
    return [ssh_dir / n for n in DEFAULT_KEY_FILES if (ssh_dir / n).is_file()]


def _quote_path(p: Path) -> str:
    text = str(p)
    return f'"{text}"' if " " in text else text


def usable(target: Target) -> bool:
    """Can OpenSSH reach this target non-interactively with our trust? Probed once per target."""
    argv = openssh_argv(target, ["true"])
    if argv is None:
        return False
    key = tuple(argv)
    with _probe_lock:
        if key in _probed:
            return _probed[key]
    try:
        ok = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=PROBE_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    with _probe_lock:
        _probed[key] = ok
    return ok


def open_sink(conn: Any, target: Target, remote: list[str]) -> Sink:
    """A sink running `remote` on the host: OpenSSH when allowed and usable, else a paramiko channel."""
    chosen = mode()
    if chosen != "paramiko":
        if chosen == "openssh" or usable(target):
            argv = openssh_argv(target, remote)
            if argv is not None:
                return ProcessSink(target.name, argv)
    return ChannelSink(target.name, conn.exec(remote))


class ProcessSink:
    via = "openssh"

    def __init__(self, label: str, argv: list[str]) -> None:
        self.label = label
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        except OSError as e:
            raise HostUnreachable(label, f"could not start ssh: {e}") from None
        self._out, self._err = bytearray(), bytearray()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [threading.Thread(target=_drain_file, args=(f, b), daemon=True)
                         for f, b in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for r in self._readers:
            r.start()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, ValueError, OSError) as e:
            try:
                code = self.proc.wait(ENDED_WAIT_S)
            except subprocess.TimeoutExpired:
                code = None
            for r in self._readers:
                r.join(1.0)
            if code is not None and 0 <= code != 255:  # 255: ssh's own failure; < 0: we stopped ssh
                raise RemoteEnded(self.label, code, self._out.decode(errors="replace"),
                                  self._err.decode(errors="replace")) from None
            raise HostUnreachable(self.label, f"the ssh stream closed: {self._why(e)}") from None

    def finish(self, timeout: float) -> tuple[int, str, str]:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.abort()
            raise HostUnreachable(self.label, f"no end of the remote load within {timeout:g} s") from None
        for r in self._readers:
            r.join(5)
        err = self._err.decode(errors="replace")
        if code == 255:  # ssh's own failure, not the remote command's
            raise HostUnreachable(self.label, f"ssh failed: {err.strip() or 'exit 255'}")
        return code, self._out.decode(errors="replace"), err

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def _why(self, e: BaseException) -> str:
        if self.proc.poll() is not None:
            return self._err.decode(errors="replace").strip() or f"ssh exited {self.proc.returncode}"
        return str(e) or type(e).__name__


class ChannelSink:
    via = "paramiko"

    def __init__(self, label: str, chan: Any, idle_timeout: float = 300.0) -> None:
        self.label, self.chan = label, chan
        self._aborted = False
        chan.settimeout(idle_timeout)
        self._out, self._err = bytearray(), bytearray()
        self._readers = [threading.Thread(target=read_into, args=(f, b), daemon=True)
                         for f, b in ((chan.recv_stderr, self._err), (chan.recv, self._out))]
        for r in self._readers:
            r.start()

    def write(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except OSError as e:
            if not self._aborted and self.chan.status_event.wait(ENDED_WAIT_S):
                for r in self._readers:
                    r.join(1.0)
                raise RemoteEnded(self.label, self.chan.recv_exit_status(), self._out.decode(errors="replace"),
                                  self._err.decode(errors="replace")) from None
            raise HostUnreachable(self.label, f"the SSH channel broke: {e or type(e).__name__}") from None

    def finish(self, timeout: float) -> tuple[int, str, str]:
        try:
            self.chan.shutdown_write()
            for r in self._readers:
                r.join(timeout)
            if not self.chan.status_event.wait(timeout):
                raise HostUnreachable(self.label, f"no end of the remote load within {timeout:g} s")
            code = self.chan.recv_exit_status()
        except OSError as e:
            raise HostUnreachable(self.label, f"the SSH channel broke: {e or type(e).__name__}") from None
        finally:
            self.chan.close()
        return code, self._out.decode(errors="replace"), self._err.decode(errors="replace")

    def abort(self) -> None:
        self._aborted = True
        self.chan.close()


def _drain_file(f: Any, buf: bytearray) -> None:
    while True:
        chunk = f.read1(1 << 16) if hasattr(f, "read1") else f.read(1 << 16)
        if not chunk:
            return
        buf.extend(chunk)
