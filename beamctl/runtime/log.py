"""The runtime's two log streams: one stdout line per event, details (tracebacks) on stderr.

Each message is one write, so lines from concurrent tasks never interleave mid-line.
"""

from __future__ import annotations

import sys

PREFIX = "beamctl-runtime: "


def say(line: str) -> None:
    sys.stdout.write(f"{PREFIX}{line}\n")
    sys.stdout.flush()


def complain(line: str, trace: str = "") -> None:
    sys.stderr.write(f"{PREFIX}{line}\n{trace}\n" if trace else f"{PREFIX}{line}\n")
    sys.stderr.flush()
