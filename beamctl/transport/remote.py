"""Commands over one SSH connection: argv lists in, (exit, stdout, stderr) or a stream out.

Every word is shlex-quoted for the login shell sshd hands the line to; data (secrets included)
goes on stdin, never in argv. Both output streams are drained at once, so neither can fill up.
"""

from __future__ import annotations

import shlex
import socket
import threading
from typing import Any, NamedTuple

import paramiko

from beamctl.transport.errors import HostUnreachable, RemoteError, tail
from beamctl.transport.sshconfig import Target

COMMAND_IDLE_TIMEOUT_S = 120.0  # no output for this long: the host is gone or the command hangs
READ_CHUNK = 1 << 16


class Completed(NamedTuple):
    exit: int
    stdout: str
    stderr: str


def command_line(argv: list[str] | tuple[str, ...]) -> str:
    """The one string sshd hands to the login shell: every word quoted, so none is shell or option."""
    if isinstance(argv, str) or not argv:
        raise ValueError("a remote command is a non-empty list of words, never one string")
    for word in argv:
        if not isinstance(word, str) or "\0" in word:
            raise ValueError(f"remote command word {word!r} is not text without NUL bytes")
    return " ".join(shlex.quote(w) for w in argv)


class Connection:
    """One authenticated SSH connection (plus its jump hosts); close it, or use `with`."""

    def __init__(self, target: Target, clients: list[paramiko.SSHClient]) -> None:
        self.target, self._clients = target, clients

    @property
    def server_key(self) -> paramiko.PKey:
        return self._clients[-1].get_transport().get_remote_server_key()

    @property
    def active(self) -> bool:
        transport = self._clients[-1].get_transport()
        return transport is not None and transport.is_active()

    def exec(self, argv: list[str]) -> paramiko.Channel:
        """Start a command and hand back its channel (stdin/stdout streams; stderr apart)."""
        line = command_line(argv)
        try:
            chan = self._clients[-1].get_transport().open_session(timeout=self.target.connect_timeout)
            chan.exec_command(line)
        except (paramiko.SSHException, EOFError, OSError) as e:
            reason = f"could not start a command: {e or type(e).__name__}"
            raise HostUnreachable(self.target.name, reason) from None
        return chan

    def run(self, argv: list[str], stdin: bytes = b"",
            idle_timeout: float | None = COMMAND_IDLE_TIMEOUT_S) -> Completed:
        """Run one command to its end: (exit status, stdout, stderr), text decoded as UTF-8."""
        chan = self.exec(argv)
        chan.settimeout(idle_timeout)
        err = bytearray()
        reader = threading.Thread(target=read_into, args=(chan.recv_stderr, err), daemon=True)
        reader.start()
        out = bytearray()
        try:
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            read_into(chan.recv, out, raise_timeout=True)
            reader.join(idle_timeout)
            status = chan.recv_exit_status()  # -1: none came (killed by a signal)
        except socket.timeout:
            raise RemoteError(self.target.name, shlex.join(argv), None,
                              f"no output for {idle_timeout:g} s") from None
        finally:
            chan.close()
        return Completed(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def check(self, argv: list[str], stdin: bytes = b"", idle_timeout: float | None = COMMAND_IDLE_TIMEOUT_S
              ) -> str:
        """Run one command that must succeed; its stdout, or RemoteError with stderr's last lines."""
        done = self.run(argv, stdin, idle_timeout)
        if done.exit != 0:
            raise RemoteError(self.target.name, shlex.join(argv), done.exit, tail(done.stderr))
        return done.stdout

    def close(self) -> None:
        for client in reversed(self._clients):
            client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_into(recv: Any, buf: bytearray, raise_timeout: bool = False) -> None:
    """Read a channel stream to its end into `buf`; a timeout ends it (or is raised), a broken one ends it."""
    while True:
        try:
            chunk = recv(READ_CHUNK)
        except socket.timeout:
            if raise_timeout:
                raise
            return
        except OSError:  # the connection broke: what came is what there is (the exit status tells)
            return
        if not chunk:
            return
        buf.extend(chunk)


