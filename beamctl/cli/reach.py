"""What every app command shares: its host options, the hosts it asks (fleet/query.app_hosts), whether that
is this machine alone (printed as always, without host names), and the per-host error lines and exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from beamctl import console

HostOpt = typer.Option(None, "--host", help="Ask this host's agent (repeatable); default: the app's hosts.")
AppFileOpt = typer.Option(None, "-f", "--file", help="The app's beam.yaml (or its folder): ask its hosts.")


def hosts(name: str | None, host: list[str] | None, file: Path | None) -> Any:
    """A context manager giving the command's hosts, closed when it ends."""
    from beamctl.fleet import query

    return query.app_hosts(name, host, file)


def local(targets: list[Any]) -> bool:
    from beamctl.fleet.query import is_local

    return is_local(targets)


def report_errors(replies: list[Any]) -> None:
    from beamctl.hosts.each import error_lines

    for line in error_lines(replies):
        console.error(line)


def outcome(replies: list[Any]) -> int:
    from beamctl.hosts.each import outcome as of

    return of(replies)
