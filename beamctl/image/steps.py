"""Reading the engine's build output: steps, cache hits, and what a failure means. Pure."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the engine paints a RUN step's stderr red, in pieces
_NOISE = ("Removing intermediate container", " ---> Running in ", " ---> ")
_LAYER_INSTRUCTIONS = ("RUN", "COPY", "ADD")  # the steps that write files; the rest is metadata
TAIL_LINES = 40  # output kept for explaining a failure


@dataclass(frozen=True)
class Step:
    index: int
    total: int
    instruction: str
    cached: bool
    writes_layer: bool


@dataclass
class BuildLog:
    on_step: Callable[[Step], None]
    built: int = 0
    cached: int = 0
    image_id: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    _open: tuple[int, int, str] | None = None
    _hit: bool = False
    _partial: str = ""  # the engine may cut a line across two chunks of the stream

    def feed(self, text: str) -> None:
        text = self._partial + _ANSI.sub("", text)
        lines = text.split("\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.rstrip()
            if not line:
                continue
            m = _STEP.match(line)
            if m:
                self.finish()
                self._open, self._hit = (int(m[1]), int(m[2]), m[3]), False
            elif line.strip() == "---> Using cache":
                self._hit = True
            else:
                self.tail.append(line)

    def finish(self) -> None:
        """Close the step in progress (at the next step, at the end, or on failure)."""
        if self._partial:
            rest, self._partial = self._partial, ""
            self.feed(rest + "\n")
        if self._open is None:
            return
        index, total, instruction = self._open
        writes = instruction.split(" ", 1)[0].upper() in _LAYER_INSTRUCTIONS
        if writes:
            if self._hit:
                self.cached += 1
            else:
                self.built += 1
        self.on_step(Step(index, total, instruction, self._hit, writes))
        self._open = None


def explain_failure(error: str, tail: "deque[str] | list[str]") -> tuple[str, str | None]:
    """The engine's error and the output before it -> (one clear message, a hint)."""
    text = "\n".join(tail)
    if "no space left on device" in (error + text).lower():
        return ("the disk is full: the build ran out of space (no space left on device)",
                "free space with `docker system prune` or `beamctl build --prune`, then build again")
    missing = re.search(r"E: Unable to locate package (\S+)", text)
    if missing:
        return (f"apt cannot find the package '{missing[1]}' (image.system_packages): "
                f"E: Unable to locate package {missing[1]}",
                "check the Debian package name (https://packages.debian.org) and fix beam.yaml")
    failed = re.search(r"The command '/bin/sh -c (.*)' returned a non-zero code: (\d+)", error, re.S)
    if failed:
        output = [l for l in tail if not l.startswith(_NOISE)][-6:]
        shown = "\n  ".join(output) if output else "(no output)"
        return (f"the build command `{failed[1][:200]}` failed with exit code {failed[2]}; its last output:"
                f"\n  {shown}", "fix the command in image.commands (or the package names) and build again")
    return f"the image build failed: {error.strip()[:500]}", None
