"""`exec` and `shell`: a command in a running container of the app, on this terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from beamctl import console
from beamctl.cli import app, reach
from beamctl.cli.reach import AppFileOpt, HostOpt
from beamctl.errors import UsageError

SHELL = ["sh", "-c", "command -v bash >/dev/null 2>&1 && exec bash || exec sh"]


@app.command("exec")
def exec_(name: str = typer.Argument(..., help="The app."),
          command: Optional[List[str]] = typer.Argument(None, help="The command, after --."),
          host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Run a command in a running container of the app: beamctl exec APP -- CMD [ARGS...].

    Its exit status is beamctl's; stdin is passed in (pipe into it), a terminal when this is one."""
    if not command:
        raise UsageError("exec needs a command: beamctl exec APP -- CMD [ARGS...]", f"or: beamctl shell {name}")
    return _attach(name, list(command), host, file)


@app.command()
def shell(name: str = typer.Argument(..., help="The app."),
          host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """An interactive shell (bash, else sh) in a running container of the app."""
    return _attach(name, SHELL, host, file)


def _attach(name: str, command: list[str], host: list[str] | None, file: Path | None) -> int:
    from beamctl import apps

    tty = sys.stdin.isatty() and sys.stdout.isatty()
    with reach.hosts(name, host, file) as hosts:
        target, container = apps.exec_target(hosts, name)
        where = "" if reach.local(hosts) else f" on {target.name}"
        console.say(f"[dim]{name}: container {console.escape(container)}{console.escape(where)}[/]")
        return target.attach(apps.exec_argv(container, command, tty), tty)
