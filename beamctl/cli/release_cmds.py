"""Commands that change which release an app runs outside a deploy: rollback, and unlock (a dead
deploy's lock). Hosts are chosen as for every app command (cli/reach.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli import reach
from beamctl.cli.reach import AppFileOpt, HostOpt
from beamctl.cli.config_cmds import JsonOpt
from beamctl.errors import ExitCode


@app.command()
def rollback(name: str = typer.Argument(..., help="The app."),
             version: Optional[int] = typer.Argument(None, help="The version to bring back; default: the "
                                                                "one before the active one."),
             json: bool = JsonOpt, host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt,
             health_timeout: Optional[float] = typer.Option(
                 None, min=1, help="Seconds to wait for READY (default: the rollout.health_timeout that version "
                                   "was deployed with).")) -> int:
    """Bring an earlier version back (on every host of the app): start it, wait READY, switch; volumes stay."""
    from beamctl import apps

    with reach.hosts(name, host, file) as hosts:
        replies = apps.rollback(hosts, name, version, health_timeout, _say)
        local = reach.local(hosts)
        door_failed = reach.follow_gateway(name, hosts, replies)
    if local and replies[0].exc is not None:
        if json:
            console.emit_json({"app": name, "hosts": [{"host": "local", "status": "refused",
                                                       "error": replies[0].exc.message}]})
        raise replies[0].exc
    return reach.with_gateway(_rolled_back(name, replies, json, local), door_failed)


def _say(event: Any) -> None:
    console.say(f"[dim]{console.escape(str(event))}[/]")


def _rolled_back(name: str, replies: list[Any], json: bool, local: bool) -> int:
    """Per-host lines (the failing containers' last log lines first); OK, PARTIAL or FAILURE."""
    from beamctl.apps import rollback_failures

    checked = rollback_failures(replies)
    if json:
        console.emit_json({"app": name, "hosts": [
            {"host": r.host, "status": "ready" if c.error is None else "failed", "error": c.error,
             "version": (r.result or {}).get("version"), "from": (r.result or {}).get("rolled_back_from")}
            for r, c in zip(replies, checked)]})
    for r, c in zip(replies, checked):
        where = "" if local else f"{console.escape(r.host)}: "
        if c.error is None:
            frm = r.result.get("rolled_back_from")
            console.say(f"{where}[bold green]rolled back[/] {name} "
                        f"{'from v' + str(frm) + ' ' if frm else ''}to v{r.result['version']}")
            continue
        for line in (r.result or {}).get("log_tail") or []:
            console.line(f"  {'' if local else r.host + ' '}| {line}")
    reach.report_errors(checked if not local else [])
    if local and checked[0].error is not None:
        console.error(f"rollback of {name} failed: {checked[0].error}")
    code = reach.outcome(checked)
    if code == ExitCode.PARTIAL:
        ok = sum(c.error is None for c in checked)
        console.error(f"partial rollback: {ok} of {len(checked)} hosts run the earlier version")
    return code


@app.command()
def unlock(name: str = typer.Argument(..., help="The app."), json: bool = JsonOpt,
           host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Break the app's deploy lock (on every host of the app), whoever holds it: for a deploy that died."""
    from beamctl.fleet import locks
    from beamctl.hosts.each import only

    with reach.hosts(name, host, file) as hosts:
        replies = locks.break_locks(hosts, name)
        local = reach.local(hosts)
    if local:
        only(replies)
    if json:
        console.emit_json({"app": name, "hosts": [{"host": r.host, "removed": r.result, "error": r.error}
                                                  for r in replies]})
    for r in replies:
        if r.error is None:
            where = "" if local else f"{console.escape(r.host)}: "
            said = (f"removed the lock held by {console.escape(locks.describe(r.result))}" if r.result
                    else f"no lock on {name}")
            console.say(f"{where}{said}")
    reach.report_errors(replies)
    return reach.outcome(replies)
