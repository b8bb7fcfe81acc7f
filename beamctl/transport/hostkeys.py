"""Host keys: known_hosts files are the only source of trust; nothing is ever added on its own.

An unknown key raises HostKeyUnknown (with the key, so `hosts trust` can show and store it);
a key that differs from the known one raises HostKeyChanged. Only `add_known_host`, called
after the user said yes, writes a known_hosts file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import paramiko

from beamctl.transport.errors import HostKeyChanged, HostKeyUnknown
from beamctl.transport.sshconfig import Target


def load_known_hosts(keys: paramiko.HostKeys, target: Target) -> None:
    """The user's and the system's known_hosts for this target, into `keys` (missing files add none)."""
    for path in target.user_known_hosts + target.global_known_hosts:
        try:
            keys.load(str(path))
        except OSError:
            pass


class RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """paramiko calls this for a host with no known key: refuse, carrying what the host offered."""

    def __init__(self, target: Target, jump_for: str | None = None) -> None:
        self.target, self.jump_for = target, jump_for

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyUnknown(self.target.name, hostname, key.get_name(), key.fingerprint, key, self.jump_for)


def changed(target: Target, e: paramiko.BadHostKeyException) -> HostKeyChanged:
    return HostKeyChanged(target.name, target.known_as, e.key.get_name(), e.key.fingerprint,
                          e.expected_key.fingerprint, str(_file_holding(target) or "") or None)


def _file_holding(target: Target) -> Path | None:
    for path in target.user_known_hosts + target.global_known_hosts:
        keys = paramiko.HostKeys()
        try:
            keys.load(str(path))
        except OSError:
            continue
        if keys.lookup(target.known_as) is not None:
            return path
    return None


def add_known_host(target: Target, key: paramiko.PKey) -> Path:
    """Append one line for this host and key to the user's known_hosts (created 0600 in a 0700 dir)."""
    if not target.user_known_hosts:
        raise HostKeyUnknown(target.name, target.known_as, key.get_name(), key.fingerprint, key)
    path = target.user_known_hosts[0]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = paramiko.HostKeys.hash_host(target.known_as) if target.hash_known_hosts else target.known_as
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as f:
        if f.tell() > 0 and not _ends_with_newline(path):
            f.write("\n")
        f.write(line)
    return path


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
