"""A target (`user@host:port`, `[v6]:port`, an alias) resolved against ~/.ssh/config.

paramiko parses the file but applies none of it; this module applies what beamctl honours:
HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump, ConnectTimeout,
UserKnownHostsFile, GlobalKnownHostsFile, HashKnownHosts, and Include (inlined before parsing),
from ~/.ssh/config then /etc/ssh/ssh_config. A target written with a user or port keeps them
over the files', as with ssh.
"""

from __future__ import annotations

import glob
import getpass
import os
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from beamctl.config.hosts import Host, parse_host
from beamctl.errors import UsageError
from beamctl.transport.errors import SshConfigError

CONNECT_TIMEOUT_S = 10.0  # TCP connect and SSH banner each: a paused host fails in seconds (ConnectTimeout)
MAX_HOPS = 8  # ProxyJump chains longer than this are a loop
MAX_INCLUDE_DEPTH = 16  # as OpenSSH
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
SYSTEM_SSH_CONFIG = Path("/etc/ssh/ssh_config")
_INCLUDE = re.compile(r"^\s*include(?:\s*=\s*|\s+)(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    name: str  # as the user wrote it: an inventory name, an alias or a target (for messages and hints)
    hostname: str  # what is connected to
    port: int
    user: str
    identity_files: tuple[Path, ...] = ()  # IdentityFile lines, in order
    identities_only: bool = False
    jump: Target | None = None  # the hop before this one (ProxyJump), itself resolved
    user_known_hosts: tuple[Path, ...] = ()  # the first is where `hosts trust` writes
    global_known_hosts: tuple[Path, ...] = ()
    connect_timeout: float = CONNECT_TIMEOUT_S
    hash_known_hosts: bool = False

    @property
    def known_as(self) -> str:
        """The name known_hosts files use for this host: `host`, or `[host]:port` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def display(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def config_path() -> Path:
    """~/.ssh/config, or $BEAMCTL_SSH_CONFIG (tests, and users who keep a separate file for beamctl)."""
    explicit = os.environ.get("BEAMCTL_SSH_CONFIG")
    return Path(explicit) if explicit else Path.home() / ".ssh" / "config"


def load_config(path: Path | None = None, system: Path | None = SYSTEM_SSH_CONFIG) -> Any:
    """The user's file, then the system's (first value wins, as with ssh), as a paramiko SSHConfig,
    Include lines inlined; a missing file is an empty one. An explicit file ($BEAMCTL_SSH_CONFIG, or
    `path`) stands alone, as with `ssh -F`."""
    import paramiko

    explicit = path is not None or "BEAMCTL_SSH_CONFIG" in os.environ
    path = path or config_path()
    text = _inline(path, 0, Path.home() / ".ssh")
    if system is not None and not explicit:  # its top lines are for every host, not the user's last block
        text += "Host *\n" + _inline(system, 0, system.parent)
    try:
        return paramiko.SSHConfig.from_text(text)
    except paramiko.ssh_exception.ConfigParseError as e:
        raise SshConfigError(str(path), f"cannot parse: {e}") from None


def _inline(path: Path, depth: int, base: Path) -> str:
    """The file's text with each Include replaced by the files it names (relative to `base`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as e:
        raise SshConfigError(str(path), f"cannot read: {e.strerror}") from None
    if depth > MAX_INCLUDE_DEPTH:
        raise SshConfigError(str(path), f"Include is nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")
    out = []
    for line in text.splitlines():
        m = _INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        for pattern in shlex.split(m[1]):
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):  # ~/.ssh for the user's files, /etc/ssh for the system's
                pattern = str(base / pattern)
            for match in sorted(glob.glob(pattern)):
                out.append(_inline(Path(match), depth + 1, base))
    return "\n".join(out) + "\n"


def parse_target(text: str) -> Host:
    """A target as written on the command line or in ProxyJump (`ssh://` accepted there)."""
    try:
        return parse_host(text.removeprefix("ssh://"))
    except ValueError as e:
        raise UsageError(f"host {e}") from None


def resolve(target: str | Host, config: Any, name: str | None = None) -> Target:
    """Apply the config to one target; ProxyJump hops are resolved the same way, each in turn."""
    host = parse_target(target) if isinstance(target, str) else target
    return _resolve(host, config, name or host.target, depth=0)


def _resolve(host: Host, config: Any, name: str, depth: int, jump_override: str | None = None) -> Target:
    if depth > MAX_HOPS:
        raise SshConfigError(name, f"ProxyJump goes through more than {MAX_HOPS} hosts (a loop?)")
    opts = config.lookup(host.hostname)
    if opts.get("proxycommand"):
        raise SshConfigError(name, "~/.ssh/config gives it a ProxyCommand, which beamctl does not run",
                             "use ProxyJump instead, or give beamctl a Host entry without ProxyCommand")
    port = host.port or _port(opts.get("port", "22"), name)
    jump_spec = jump_override if jump_override is not None else opts.get("proxyjump", "none")
    return Target(
        name=name,
        hostname=opts["hostname"],
        port=port,
        user=host.user or opts.get("user") or getpass.getuser(),
        identity_files=tuple(Path(os.path.expanduser(p)) for p in opts.get("identityfile", [])),
        identities_only=opts.get("identitiesonly", "no").lower() == "yes",
        jump=_jumps(jump_spec, config, name, depth),
        user_known_hosts=_files(opts.get("userknownhostsfile"), str(Path.home() / ".ssh" / "known_hosts")),
        global_known_hosts=_files(opts.get("globalknownhostsfile"), SYSTEM_KNOWN_HOSTS),
        connect_timeout=_timeout(opts.get("connecttimeout"), name),
        hash_known_hosts=opts.get("hashknownhosts", "no").lower() == "yes",
    )


def _jumps(spec: str, config: Any, name: str, depth: int) -> Target | None:
    """`a,b` means: reach b through a, then the target through b (b's own ProxyJump is not used)."""
    if spec.strip().lower() == "none":
        return None
    hops = [h.strip() for h in spec.split(",") if h.strip()]
    previous: Target | None = None
    for i, hop in enumerate(hops):
        try:
            parsed = parse_target(hop)
        except UsageError as e:
            raise SshConfigError(name, f"ProxyJump {e.message}") from None
        override = None if i == 0 else "none"
        resolved = _resolve(parsed, config, hop, depth + 1, jump_override=override)
        previous = resolved if previous is None else _with_jump(resolved, previous)
    return previous


def _with_jump(target: Target, jump: Target) -> Target:
    return replace(target, jump=jump)


def _port(text: str, name: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SshConfigError(name, f"~/.ssh/config gives it Port {text!r}, not a port number")
    return int(text)


def _timeout(text: str | None, name: str) -> float:
    if text is None:
        return CONNECT_TIMEOUT_S
    if not text.isdigit() or int(text) == 0:
        raise SshConfigError(name, f"~/.ssh/config gives it ConnectTimeout {text!r}, not a whole number "
                             "of seconds")
    return float(text)


def _files(value: str | None, default: str) -> tuple[Path, ...]:
    words = shlex.split(value) if value else [default]
    return tuple(Path(os.path.expanduser(w)) for w in words if w.lower() != "none")
