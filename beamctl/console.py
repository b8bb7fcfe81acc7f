"""The one console. What a command exists to print (log lines, a tasks table, a status, a profile, its
`--json`) goes to stdout, so it can be piped (`out`, `show`, `emit_json`); progress, hints, warnings and
errors go to stderr (`line`, `say`, `error`). Styled only on a terminal.

Core code never prints; commands call these. rich is imported only when something styled
is drawn, which keeps plain commands fast to start.
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from typing import Any


_TAG = re.compile(r"(?<!\\)\[/?[a-z #0-9_.]*\]")


@cache
def _rich(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def line(text: str = "") -> None:
    """A plain line to stderr, exactly as given (problem lines, which tests compare)."""
    sys.stderr.write(text + "\n")


def say(markup: str) -> None:
    """A styled line to stderr (rich markup); plain text when stderr is not a terminal."""
    if sys.stderr.isatty():
        _rich().print(markup)
    else:  # no rich import for pipes and CI logs: drop the tags, keep the text
        line(_TAG.sub("", markup).replace("\\[", "["))


def out(text: str = "") -> None:
    """A plain line of the command's output to stdout, exactly as given."""
    sys.stdout.write(text + "\n")


def show(markup: str) -> None:
    """A styled line of the command's output to stdout (rich markup); plain text when piped."""
    if sys.stdout.isatty():
        _rich(stderr=False).print(markup)
    else:
        out(_TAG.sub("", markup).replace("\\[", "["))


def error(message: str, hint: str | None = None) -> None:
    say(f"[bold red]error:[/] {escape(message)}")
    if hint:
        say(f"[dim]hint:[/] {escape(hint)}")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def escape(text: str) -> str:
    return text.replace("[", "\\[")


def ask_secret(question: str) -> str | None:
    """A passphrase typed on the terminal (not echoed); None when there is no terminal to ask on."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    import getpass

    try:
        return getpass.getpass(question, stream=sys.stderr)
    except EOFError:
        return None


def confirm(question: str) -> bool | None:
    """Yes or no from the terminal (default no); None when there is no terminal to ask on."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")
