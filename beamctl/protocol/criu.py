"""Which CRIU can checkpoint an app container: the rule the agent applies before a capture and the
client applies when it checks or installs a host."""

from __future__ import annotations

import re

# 4.1 cannot dump a TCP socket on kernels >= 6.16 (SO_PASSCRED limited to unix/netlink sockets; criu #2705,
# fixed in 4.2), and every app container holds one (the runtime listens on :8000)
MIN_CRIU = (4, 2)


def version_parts(version: str | None) -> tuple[int, ...] | None:
    """"4.2.1" -> (4, 2, 1); None when it does not start with numbers."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return tuple(int(p) for p in m.groups() if p is not None) if m else None


def criu_too_old(version: str | None) -> str | None:
    """Why this CRIU cannot checkpoint an app container, or None (unknown versions are given a chance)."""
    parts = version_parts(version)
    if parts is None or parts[:2] >= MIN_CRIU:
        return None
    need = ".".join(map(str, MIN_CRIU))
    return f"CRIU {version} < {need} ({parts[0]}.{parts[1]} cannot checkpoint TCP sockets on kernels >= 6.16)"
