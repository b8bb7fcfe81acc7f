"""SSH targets as written in beam.yaml: `user@host:port`, `host`, `[::1]:22`, or an ~/.ssh/config alias.

A target reaches ssh as an argument, so anything that could be read as an option or as
shell is refused here, before any connection is made.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_USER = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})"
_V6 = r"\[[0-9A-Fa-f:.%]+\]"
_TARGET = re.compile(rf"^(?:(?P<user>{_USER})@)?(?P<host>{_NAME}|{_V6})(?::(?P<port>\d{{1,5}}))?$")


@dataclass(frozen=True)
class Host:
    target: str  # as written
    hostname: str  # a name, an address, or an ~/.ssh/config alias
    user: str | None = None
    port: int | None = None


def parse_host(target: str) -> Host:
    """Parse one target, or raise ValueError with a message that says what to fix."""
    if target.startswith("-"):
        raise ValueError(f"'{target}' starts with '-', so ssh would read it as an option; "
                         "write user@host or a name from ~/.ssh/config")
    if any(c.isspace() for c in target):
        raise ValueError(f"'{target}' contains whitespace; a host is one word like user@host:22")
    bad = sorted({c for c in target if not (c.isalnum() or c in "_.-@:[]%")})
    if bad:
        raise ValueError(f"'{target}' contains {' '.join(repr(c) for c in bad)}; a host may hold only "
                         "letters, digits and . - _ @ : (and [ ] around an IPv6 address)")
    m = _TARGET.match(target)
    if not m:
        raise ValueError(f"'{target}' is not a host; write user@host, user@host:port, [ipv6]:port "
                         "or a name from ~/.ssh/config")
    if m["host"].startswith("["):
        try:
            ipaddress.IPv6Address(m["host"].strip("[]").split("%")[0])
        except ValueError:
            raise ValueError(f"'{target}': {m['host']} is not an IPv6 address; brackets hold only one") from None
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"'{target}': port {port} is out of range (1-65535)")
    return Host(target, m["host"].strip("[]"), m["user"], port)
