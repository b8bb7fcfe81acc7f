"""docs/BENCHMARKS.md keeps one marked section per benchmark script; each run replaces its own."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, begin: str, end: str, heading: str) -> None:
    """Replace the text between `begin` and `end` (both inside `section`), or append it under `heading`."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    path.write_text(text)
