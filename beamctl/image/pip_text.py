"""pip's text: requirements files in; out, which wheels pip chose and what a failure means (in one or
two lines, not pages). Pure functions, tested on captured output (tests/image/test_wheels.py).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from beamctl.errors import BeamctlError

SHOWN_CHARS = 200  # one pip line in a message; "(from versions: ...)" can list hundreds
_CHOSEN = re.compile(r"^\s*(?:Saved|File was already downloaded) (.+\.whl)\s*$")
_NO_VERSION = re.compile(
    r"Could not find a version that satisfies the requirement (.+?) \(from versions: (.*)\)")
_PARENT = re.compile(r"^(.*?) \(from (.+)\)$")
_NETWORK = ("Retrying (Retry(", "connection error:", "NewConnectionError", "Max retries exceeded", "ConnectTimeoutError",
            "ReadTimeoutError", "SSLError", "ProxyError", "Temporary failure in name resolution",
            "Name or service not known", "Network is unreachable", "Connection refused")
_NETWORK_WHY = re.compile(
    r"(Failed to establish a new connection: [^'\")]+|certificate verify failed[^'\")]*|Read timed out[^'\")]*"
    r"|Temporary failure in name resolution|Name or service not known|Network is unreachable"
    r"|Connection refused|ProxyError[^'\")]*)")


class PackageError(BeamctlError):
    """Python packages could not be resolved or installed for the image's Python and platform."""

    def __init__(self, message: str, hint: str | None = None, package: str | None = None,
                 python_version: str | None = None, platform: str | None = None,
                 pip_lines: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.package = package
        self.python_version = python_version
        self.platform = platform
        self.pip_lines = pip_lines


def read_requirements(path: Path | str) -> list[str]:
    """The requirement lines of a requirements file; comments and blank lines dropped, options refused."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PackageError(f"cannot read the requirements file {path}: {getattr(e, 'strerror', e)}",
                           hint="image.requirements is relative to the folder holding beam.yaml") from e
    out: list[str] = []
    for lineno, line in _logical_lines(text):
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        if line.startswith("-") or re.search(r"\s--?[a-z]", line):
            raise PackageError(
                f"{path}:{lineno}: {line!r}: pip options are not supported in the requirements file",
                hint="list plain requirements only (name, extras, version, markers); put index settings "
                     "in pip's own configuration (pip config set global.index-url URL), which beamctl uses")
        out.append(line)
    return out


def _logical_lines(text: str):
    """(first line number, text) with backslash continuations joined, as pip reads them."""
    start, parts = None, []
    for number, line in enumerate(text.splitlines(), 1):
        start = start or number
        if line.endswith("\\") and not line.lstrip().startswith("#"):
            parts.append(line[:-1])
            continue
        yield start, "".join(parts) + line
        start, parts = None, []
    if parts:
        yield start, "".join(parts)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def chosen_wheels(lines: list[str], python_version: str, platform: str) -> list[str]:
    """The wheel files a successful `pip download` chose, checked against its closing line."""
    names: list[str] = []
    for line in lines:
        m = _CHOSEN.match(line)
        if m and os.path.basename(m[1]) not in names:
            names.append(os.path.basename(m[1]))
    done = next((ln.split("Successfully downloaded ", 1)[1].split() for ln in lines
                 if ln.startswith("Successfully downloaded ")), None)
    if done is None or {canonical(n) for n in done} != {canonical(n.split("-")[0]) for n in names}:
        raise PackageError("could not tell from pip's output which wheels it chose (does this pip word it "
                           "differently?)", hint=f"report this, with the output of `{sys.executable} -m pip "
                           "--version`", python_version=python_version, platform=platform)
    return names


def explain(lines: list[str], python_version: str, platform: str, installing: bool = False) -> PackageError:
    """A failed pip run's output -> one PackageError with the one or two lines that matter."""
    target = f"Python {python_version} on {platform}"
    text = "\n".join(lines)
    network = next((ln for ln in reversed(lines) if any(marker in ln for marker in _NETWORK)), None)
    no_version = _NO_VERSION.search(text)
    data = {"python_version": python_version, "platform": platform}
    if "No module named pip" in text:
        return PackageError(f"pip is not installed for {sys.executable}, which resolves the packages",
                            hint=f"{sys.executable} -m ensurepip, or reinstall beamctl in a virtual "
                                 "environment (python3 -m venv makes one with pip)", **data)
    if network is not None and (no_version is None or no_version[2] == "none"):
        why = _NETWORK_WHY.search(network)
        shown = why[1] if why else _short(network)
        return PackageError(f"could not reach the package index to resolve packages for {target}: {shown}",
                            hint="check the network or pip's index settings (pip config list); a build whose "
                                 "packages did not change needs no network", pip_lines=(network,), **data)
    if no_version is not None:
        requirement, versions = no_version[1], no_version[2]
        parent = _PARENT.match(requirement)
        if parent:
            requirement = parent[1]
        package = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        package = package[0] if package else requirement
        needed_by = f" (needed by {parent[2]})" if parent else ""
        shown = _short(f"pip: {no_version[0]}")
        if versions.strip() == "none":
            hint = (f"check the name ({package} on pypi.org); if it is right, {package} publishes no wheel "
                    f"for {target}: pin a version that ships wheels for that platform, or build a wheel "
                    "yourself and add its folder to pip's find-links (pip config set global.find-links DIR)")
        else:
            hint = _short(f"versions with a wheel for {target}: {versions}; relax the pin to one of them")
        return PackageError(f"no wheel of {requirement} for {target}{needed_by}\n  {shown}", hint=hint,
                            package=package, pip_lines=(no_version[0],), **data)
    errors = [ln.strip() for ln in lines if ln.startswith("ERROR:")]
    if "conflicting dependencies" in text or "ResolutionImpossible" in text:
        cause = [ln.strip() for ln in lines[_index(lines, "The conflict is caused by:") + 1:] if ln.strip()][:2]
        shown = [errors[0]] + cause if errors else cause
        return PackageError("the Python packages' requirements conflict:\n  " + "\n  ".join(map(_short, shown)),
                            hint="loosen or change the version pins named above", pip_lines=tuple(shown),
                            **data)
    invalid = next((ln for ln in errors if "Invalid requirement" in ln), None)
    if invalid is not None:
        return PackageError(_short(f"not a pip requirement: {invalid.split(':', 2)[-1].strip()}"),
                            hint="write requirements as pip does: name[extras] version-specifiers ; markers",
                            pip_lines=(invalid,), **data)
    last = errors[-1] if errors else next((ln for ln in reversed(lines) if ln.strip()), "(no output)")
    doing = "install the wheels" if installing else "resolve the packages"
    return PackageError(f"pip could not {doing} for {target}: {_short(last)}", pip_lines=(last,), **data)


def _index(lines: list[str], text: str) -> int:
    return next((i for i, ln in enumerate(lines) if text in ln), len(lines))


def _short(line: str) -> str:
    line = line.strip()
    return line if len(line) <= SHOWN_CHARS else line[: SHOWN_CHARS - 3] + "..."
