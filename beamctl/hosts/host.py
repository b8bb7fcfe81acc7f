"""A host is a value: its name and how to reach its agent. `LocalHost` is this machine (its agent started
on first use; images built here are already in its engine); `SshHost` is a machine over SSH, resolved
once and reached through one connection that every phase of a command shares (the agent's bridge,
installs, layer surveys, image streams). Both answer `request(op, timeout=..., **args)` with the agent's
raw answer; `each.py` turns answers into typed per-host replies."""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

from beamctl.protocol.layout import BRIDGE_ARGV
from beamctl.protocol.wire import AgentClient

Progress = Callable[[Any], None]


class Host(Protocol):
    name: str
    local: bool  # the image built here is already in its engine: nothing to ship

    def request(self, op: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]: ...

    def install(self, progress: Progress, force: bool = False) -> Any: ...

    def attach(self, argv: list[str], tty: bool) -> int: ...

    def close(self) -> None: ...


class LocalHost:
    """This machine's agent, over its Unix socket; started when it is not running."""

    name = "local"
    local = True

    def __init__(self, data_dir: Any = None) -> None:
        self.data_dir = data_dir
        self._client: AgentClient | None = None
        self._lock = threading.Lock()

    def _agent(self) -> AgentClient:
        from beamctl.transport.local import local_agent

        with self._lock:
            if self._client is None:
                self._client = local_agent(autostart=True, data_dir=self.data_dir)
            return self._client

    def request(self, op: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        return self._agent().request(op, timeout=timeout, **args)

    def install(self, progress: Progress, force: bool = False) -> None:
        """Nothing to install here: the agent runs from this beamctl; started if it is not running."""
        self._agent()

    def attach(self, argv: list[str], tty: bool) -> int:
        """argv here, on this terminal (stdin, stdout, stderr); its exit status."""
        return _attached(argv, self.name)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None


class SshHost:
    """A host over SSH: `entry` is the inventory's (name, target); `ssh` the command's Ssh."""

    local = False

    def __init__(self, name: str, target: Any, ssh: Any) -> None:
        self.name, self.spec, self.ssh = name, target, ssh
        self._target: Any = None
        self._conn: Any = None
        self._client: AgentClient | None = None
        self._lock = threading.Lock()

    @property
    def target(self) -> Any:
        """The resolved ssh target (~/.ssh/config applied once)."""
        with self._lock:
            if self._target is None:
                self._target = self.ssh.resolve(self.spec, self.name)
            return self._target

    def connection(self, fresh: bool = False) -> Any:
        """The one SSH connection of this command to the host; a new one when it broke (or `fresh`)."""
        target = self.target
        with self._lock:
            if fresh or self._conn is None or not self._conn.active:
                if self._client is not None:
                    self._client.close()  # its kept stream ran over the old connection
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                self._conn = self.ssh.connect(target)
            return self._conn

    def request(self, op: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        from beamctl.transport.ssh import SshTransport

        with self._lock:
            if self._client is None:
                self._client = AgentClient(SshTransport(self.name, list(BRIDGE_ARGV), self.ssh,
                                                        connection=self.connection))
            client = self._client
        return client.request(op, timeout=timeout, **args)

    def install(self, progress: Progress, force: bool = False) -> Any:
        """The agent installed, upgraded or checked (hosts/install.py): its InstallResult."""
        from beamctl.hosts.install import install_agent

        return install_agent(self, progress, force)

    def attach(self, argv: list[str], tty: bool) -> int:
        """argv on the host, on this terminal (a remote terminal when `tty`): OpenSSH with the same trust
        and options as every other connection; its exit status (255: ssh itself failed, and said why)."""
        from beamctl.errors import EnvironmentProblem
        from beamctl.transport.bulk import openssh_argv

        ssh = openssh_argv(self.target, argv, tty=tty)
        if ssh is None:
            raise EnvironmentProblem(f"{self.name}: an interactive command needs OpenSSH's ssh here, and a host "
                                     "reached without a ProxyJump", "install openssh-client, or run it on the "
                                     "host itself")
        return _attached(ssh, self.name)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._conn is not None:
                self._conn.close()
            self._client = self._conn = None


def _attached(argv: list[str], name: str) -> int:
    import subprocess

    from beamctl.errors import EnvironmentProblem

    try:
        return subprocess.run(argv).returncode
    except FileNotFoundError:
        raise EnvironmentProblem(f"{name}: {argv[0]} is not installed") from None


def ssh_hosts(entries: list[Any], ssh: Any = None) -> list[SshHost]:
    """Inventory entries (name, host) as hosts sharing one Ssh."""
    from beamctl.transport.ssh import Ssh

    ssh = ssh or Ssh()
    return [SshHost(e.name, e.host, ssh) for e in entries]
