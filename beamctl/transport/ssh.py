"""SSH to a host, the way ~/.ssh/config and known_hosts say.

`Ssh` is one session's way to hosts (config, keys asked for once, timeouts); `Ssh.connect`
gives a `Connection` (remote.py: run, check, exec) through ProxyJump hops, each a client whose
direct-tcpip channel is the next one's socket. `run(host, argv)` is the one-command shorthand,
`SshTransport` the stream AgentClient uses, `scan_host_key` what `hosts trust` looks at.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import paramiko

from beamctl.config.hosts import Host
from beamctl.protocol.wire import Stream
from beamctl.transport import hostkeys
from beamctl.transport.errors import HostKeyUnknown, HostUnreachable
from beamctl.transport.keys import KeyAuth, KeyRing, Prompt
from beamctl.transport.remote import Completed, Connection, command_line
from beamctl.transport.sshconfig import Target, load_config, resolve

# paramiko logs a paused host's banner timeout as ERROR with a traceback; with no handler of ours, Python
# would print that on stderr. Our errors say what happened; its records stay available to handlers users add.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

HANDSHAKE_TIMEOUTS = 2  # banner, then key exchange: each up to the connect timeout
AUTH_TIMEOUT_S = 30.0  # the host's answer to one key; prompting happens before, outside it
KEEPALIVE_S = 15  # kept-open agent streams survive NAT and idle firewalls


class _NoAuth:
    """For `hosts trust`: stop after the host key check; nothing is offered to the host."""

    def authenticate(self, transport: paramiko.Transport) -> list[Any]:
        return []


class Ssh:
    """Config, keys and timeouts for a session's connections; safe to share between threads."""

    def __init__(self, config_path: Path | None = None, prompt: Prompt | None = None,
                 use_agent: bool = True) -> None:
        self.config_path = config_path
        self.keys = KeyRing(prompt, use_agent)
        self._config: Any = None
        self._lock = threading.Lock()

    def resolve(self, target: str | Host | Target, name: str | None = None) -> Target:
        if isinstance(target, Target):
            return target
        with self._lock:
            if self._config is None:
                self._config = load_config(self.config_path)
        return resolve(target, self._config, name)

    def connect(self, target: str | Host | Target, name: str | None = None,
                authenticate: bool = True) -> Connection:
        """A connection to the target; `authenticate=False` stops after the host key check."""
        final = self.resolve(target, name)
        chain = [final]
        while chain[0].jump is not None:
            chain.insert(0, chain[0].jump)
        clients: list[paramiko.SSHClient] = []
        try:
            for i, t in enumerate(chain):
                sock = _channel_through(clients[-1], chain[i - 1], t) if clients else None
                last = t is final
                clients.append(self._client(t, sock, None if last else final.name, authenticate or not last))
        except BaseException:
            for c in reversed(clients):
                c.close()
            raise
        return Connection(final, clients)

    def _client(self, t: Target, sock: Any, jump_for: str | None, authenticate: bool) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        hostkeys.load_known_hosts(client.get_host_keys(), t)
        client.set_missing_host_key_policy(hostkeys.RefuseUnknown(t, jump_for))
        where = f" (jump host for {jump_for})" if jump_for else ""
        try:
            sock = sock or _tcp(t, where)
            client.connect(t.hostname, t.port, username=t.user, sock=sock,
                           timeout=HANDSHAKE_TIMEOUTS * t.connect_timeout, banner_timeout=t.connect_timeout,
                           auth_timeout=AUTH_TIMEOUT_S, channel_timeout=t.connect_timeout,
                           auth_strategy=KeyAuth(self.keys, t) if authenticate else _NoAuth())
        except paramiko.BadHostKeyException as e:
            client.close()
            raise hostkeys.changed(t, e) from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            client.close()
            raise HostUnreachable(t.name, _ssh_failure(e, t) + where) from None
        except BaseException:
            client.close()
            raise
        client.get_transport().set_keepalive(KEEPALIVE_S)
        return client


def _tcp(t: Target, where: str) -> socket.socket:
    try:
        return socket.create_connection((t.hostname, t.port), timeout=t.connect_timeout)
    except socket.timeout:
        reason = f"no answer from {t.hostname} port {t.port} within {t.connect_timeout:g} s"
    except ConnectionRefusedError:
        reason = f"{t.hostname} refused port {t.port} (is sshd running there?)"
    except socket.gaierror:
        reason = f"cannot resolve {t.hostname!r}"
    except OSError as e:
        reason = f"{t.hostname} port {t.port}: {e.strerror or e}"
    raise HostUnreachable(t.name, reason + where, "check HostName and Port in ~/.ssh/config, and that the "
                          "host is up")


def _channel_through(client: paramiko.SSHClient, jump: Target, t: Target) -> paramiko.Channel:
    try:
        return client.get_transport().open_channel("direct-tcpip", (t.hostname, t.port), ("127.0.0.1", 0),
                                                   timeout=t.connect_timeout)
    except paramiko.ChannelException as e:
        reason = f"jump host {jump.name} could not reach {t.hostname} port {t.port}: {e.text}"
    except (paramiko.SSHException, EOFError, OSError) as e:
        reason = f"jump host {jump.name} did not open a channel to {t.hostname} port {t.port}: {e}"
    raise HostUnreachable(t.name, reason)


def _ssh_failure(e: BaseException, t: Target) -> str:
    text = str(e)
    if "banner" in text.lower():
        return f"no SSH banner from {t.hostname} port {t.port} within {t.connect_timeout:g} s " \
               "(a paused or overloaded host, or not an SSH server)"
    if isinstance(e, (EOFError, ConnectionResetError)):
        return f"{t.hostname} closed the connection during the SSH handshake"
    if isinstance(e, socket.timeout) or "timed out" in text.lower() or "no existing session" in text.lower():
        limit = HANDSHAKE_TIMEOUTS * t.connect_timeout
        return f"the SSH handshake with {t.hostname} port {t.port} did not finish within {limit:g} s"
    return f"SSH with {t.hostname} port {t.port} failed: {text or type(e).__name__}"


def run(host: str | Host | Target, argv: list[str], stdin: bytes = b"", ssh: Ssh | None = None
        ) -> Completed:
    """One command on one host: connect, run, close."""
    with (ssh or Ssh()).connect(host) as conn:
        return conn.run(argv, stdin)


class SshTransport:
    """A transport for AgentClient: `open()` starts `argv` on the host and returns its stream. Over its own
    connection, or over the one `connection()` gives (a host's shared connection, owned by the host)."""

    def __init__(self, host: str | Host | Target, argv: list[str], ssh: Ssh | None = None,
                 read_timeout: float | None = None, connection: Callable[[], Connection] | None = None) -> None:
        command_line(argv)  # refuse a bad command now, not at the first request
        self.host, self.argv, self.ssh = host, list(argv), ssh or Ssh()
        self.read_timeout = read_timeout  # no answer for this long: the host is gone (keepalive can't tell)
        self._shared = connection
        self._conn: Connection | None = None

    def open(self) -> Stream:
        if self._shared is not None:
            conn = self._shared()
        else:
            if self._conn is None or not self._conn.active:
                self.close()
                self._conn = self.ssh.connect(self.host)
            conn = self._conn
        chan = conn.exec(self.argv)
        chan.settimeout(self.read_timeout)
        return Stream(chan.makefile("rb"), chan.makefile("wb"),
                      lambda t: chan.settimeout(t if t is not None else self.read_timeout))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def scan_host_key(ssh: Ssh, target: str | Host | Target, name: str | None = None
                  ) -> tuple[Target, Any, bool]:
    """What the host offers as its key, and whether it is already trusted; offers no key of ours to it.

    A changed key raises HostKeyChanged; an unknown jump host raises HostKeyUnknown (trust it first).
    """
    resolved = ssh.resolve(target, name)
    try:
        with ssh.connect(resolved, authenticate=False) as conn:
            return resolved, conn.server_key, True
    except HostKeyUnknown as e:
        if e.jump_for is not None:
            raise
        return resolved, e.key, False


__all__ = ["Completed", "Connection", "Ssh", "SshTransport", "command_line", "run", "scan_host_key"]
