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


def follow_gateway(name: str, hosts: list[Any], replies: list[Any], token: str | None = None) -> bool:
    """After stop, rollback or token rotate: when a host's answer says the app has a front door, the door
    routes to the hosts that serve it now, with this token. One line; True when it could not be updated."""
    from beamctl.errors import BeamctlError
    from beamctl.fleet import gateway

    if local(hosts) or not any(r.ok and isinstance(r.result, dict) and r.result.get("gateway") for r in replies):
        return False
    try:
        routed = gateway.update(name, hosts, token)
    except BeamctlError as e:
        console.error(f"gateway: not updated: {e.message}", e.hint)
        return True
    if routed is not None:
        to = ", ".join(s["host"] for s in routed.servers) or "no host (stopped: it answers 503)"
        console.say(console.escape(f"gateway {routed.host}: {name} -> {to}"))
        for line in routed.unexposed:
            console.error(f"gateway: {line}")
    return False


def with_gateway(code: int, failed: bool) -> int:
    from beamctl.errors import ExitCode

    return ExitCode.PARTIAL if failed and code == ExitCode.OK else code
