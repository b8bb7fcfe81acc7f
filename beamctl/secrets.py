"""Secret values for an app's `secrets:` names: from the environment, else the user's secrets file.

The file (default ~/.config/beamctl/secrets.env, `NAME=value` lines) must be private (mode 0600):
a file others can read is refused, not used. Values are handed to the agent as data and never
printed, logged or put in argv.
"""

from __future__ import annotations

import os
import threading
import re
import stat
from pathlib import Path
from typing import Callable

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


NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # beam.yaml's secrets: pattern


def names() -> list[str]:
    """The names the secrets file holds (never their values)."""
    return sorted(_read_file(secrets_file()))


def set_value(name: str, value: str) -> Path:
    """Write NAME=value into the secrets file (0600, its folder 0700), replacing an earlier value."""
    _check_name(name)
    if "\n" in value or "\r" in value or "\0" in value:
        raise SecretError(f"the value of {name} holds a line break or NUL: one line only")
    return _rewrite(lambda lines: [ln for ln in lines if _name_of(ln) != name] + [f"{name}={value}"])


def remove(name: str) -> bool:
    """Drop NAME from the secrets file; False when it held none."""
    _check_name(name)
    if name not in _read_file(secrets_file()):
        return False
    _rewrite(lambda lines: [ln for ln in lines if _name_of(ln) != name])
    return True


def _check_name(name: str) -> None:
    if not NAME.match(name):
        raise SecretError(f"{name!r} is not a secret name", hint="letters, digits and _, not starting with a digit")


def _name_of(line: str) -> str | None:
    text = line.strip()
    return text.partition("=")[0].strip() if text and not text.startswith("#") and "=" in text else None


def _rewrite(change: Callable[[list[str]], list[str]]) -> Path:
    """Comments and other names kept; written whole to a private temporary file, then renamed over."""
    path = secrets_file()
    _read_file(path)  # a file others can read is refused here too
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in change(lines)))
    os.replace(tmp, path)
    return path
