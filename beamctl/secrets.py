"""Secret values for an app's `secrets:` names: from the environment, else the user's secrets file.

The file (default ~/.config/beamctl/secrets.env, `NAME=value` lines) must be private (mode 0600):
a file others can read is refused, not used. Values are handed to the agent as data and never
printed, logged or put in argv.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from beamctl.errors import BeamctlError, ExitCode


class SecretError(BeamctlError):
    exit_code = ExitCode.CONFIG


def secrets_file() -> Path:
    explicit = os.environ.get("BEAMCTL_SECRETS_FILE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "beamctl" / "secrets.env"


def _read_file(path: Path) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{path} can be read by other users (mode {stat.S_IMODE(mode):o})",
                          hint=f"chmod 600 {path}")
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def gather(names: tuple[str, ...]) -> dict[str, str]:
    if not names:
        return {}
    path = secrets_file()
    from_file = _read_file(path)
    values, missing = {}, []
    for name in names:
        if name in os.environ:
            values[name] = os.environ[name]
        elif name in from_file:
            values[name] = from_file[name]
        else:
            missing.append(name)
    if missing:
        raise SecretError(f"no value for secret {', '.join(missing)}",
                          hint=f"export {missing[0]}=... before deploying, or add `{missing[0]}=...` to {path} "
                               "(mode 0600)")
    return values
