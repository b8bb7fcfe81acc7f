"""A problem found in a config file, with its place: FILE:LINE:COL: PATH: message."""

from __future__ import annotations

from dataclasses import dataclass

Path_ = tuple[str | int, ...]  # a place in the document: ("volumes", 1, "mount_path")

ROOT = "(top level)"


def format_path(path: Path_) -> str:
    """("volumes", 1, "mount_path") -> "volumes[1].mount_path" (a key with a control character as Python
    writes it, so a problem stays on one line)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = repr(part) if any(ord(c) < 32 or ord(c) == 127 for c in part) else part
            out += f".{text}" if out else text
    return out or ROOT


@dataclass(frozen=True, order=True)
class Problem:
    line: int  # 1-based; first so that sorting is by place
    column: int  # 1-based
    file: str
    path: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def render(self) -> str:
        kind = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {kind}{self.message}"

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }
