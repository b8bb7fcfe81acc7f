"""Sessions to hosts for the `hosts` commands, and `hosts trust`: the key a host offers now, and adding it to
known_hosts only after the user said yes (nothing here ever trusts on its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from beamctl.transport import hostkeys
from beamctl.transport.ssh import Ssh, scan_host_key


def session(prompt: Callable[[str], str | None]) -> Ssh:
    """One SSH session for a command: a key's passphrase is asked through `prompt` (once per key)."""
    return Ssh(prompt=prompt)


@dataclass(frozen=True)
class Offer:
    target: Any  # the resolved Target (known_as: how known_hosts names it)
    key: Any  # the host's public key (paramiko PKey)
    known: bool  # already trusted

    @property
    def text(self) -> str:
        return f"{self.key.get_name()} {self.key.fingerprint}"


def offer(ssh: Ssh, host: Any, name: str) -> Offer:
    """What the host offers as its key (no key of ours is offered to it); a changed key raises."""
    target, key, known = scan_host_key(ssh, host, name)
    return Offer(target, key, known)


def accept(offer: Offer) -> Path:
    """Add the offered key to the user's known_hosts; the file written."""
    return hostkeys.add_known_host(offer.target, offer.key)
