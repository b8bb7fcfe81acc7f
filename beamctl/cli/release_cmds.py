"""Commands that change which release an app runs outside a deploy: rollback, and unlock (a dead
deploy's lock). The fleet helpers are app_cmds' (`app_cmds._fleet`), so both kinds choose hosts alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli import app_cmds
from beamctl.cli.app_cmds import AppFileOpt, HostOpt
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
    from beamctl.config.schema import field_of
    from beamctl.fleet import locks, query

    holder = locks.holder_here(name, None, "rollback")
    longest = health_timeout or field_of("rollout", "health_timeout")["maximum"]  # the agent waits its own
    with app_cmds._fleet(name, host, file) as agents:
        if agents is None:
            try:
                with locks.hold({"local": apps._agent(autostart=True)}, name, holder, 0, _say) as held:
                    if "local" not in held:
                        raise apps.AgentFailed(f"no deploy lock from the local agent: {held.missing['local']}")
                    replies = [query.Reply("local", apps.request("rollback", app=name, version=version,
                                                                 health_timeout=health_timeout))]
            except apps.AgentFailed as e:
                if json:
                    console.emit_json({"app": name, "hosts": [{"host": "local", "status": "refused",
                                                               "error": e.message}]})
                raise
        else:
            with locks.hold({a.name: a for a in agents}, name, holder, 0, _say) as held:
                got = query.ask_all([a for a in agents if a.name in held], "rollback",
                                    timeout=longest + query.QUERY_TIMEOUT_S, app=name, version=version,
                                    health_timeout=health_timeout)
            answers = {r.host: r for r in got}
            replies = [answers.get(a.name) or query.Reply(a.name, error=f"no deploy lock: {held.missing.get(a.name)}")
                       for a in agents]
    return _rolled_back(name, replies, json, local=agents is None)


def _say(event: Any) -> None:
    console.say(f"[dim]{console.escape(str(event))}[/]")


def rollback_replies(replies: list[Any]) -> list[Any]:
    """A host that answered but whose old version did not start counts as failed (its reason the error)."""
    out = []
    for r in replies:
        if r.error is None and (r.result or {}).get("status") != "ready":
            serving = (r.result or {}).get("serving")
            keeps = f" (v{serving} keeps serving)" if serving else ""
            r = r._replace(error=f"v{(r.result or {}).get('version')} did not start: "
                                 f"{(r.result or {}).get('reason')}{keeps}")
        out.append(r)
    return out


def _rolled_back(name: str, replies: list[Any], json: bool, local: bool) -> int:
    """Per-host lines (the failing containers' last log lines first); OK, PARTIAL or FAILURE."""
    from beamctl.fleet import query

    checked = rollback_replies(replies)
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
    app_cmds._report_errors(checked if not local else [])
    if local and checked[0].error is not None:
        console.error(f"rollback of {name} failed: {checked[0].error}")
    code = query.outcome(checked)
    if code == ExitCode.PARTIAL:
        ok = sum(c.error is None for c in checked)
        console.error(f"partial rollback: {ok} of {len(checked)} hosts run the earlier version")
    return code


@app.command()
def unlock(name: str = typer.Argument(..., help="The app."), json: bool = JsonOpt,
           host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Break the app's deploy lock (on every host of the app), whoever holds it: for a deploy that died."""
    from beamctl import apps
    from beamctl.fleet import locks, query

    with app_cmds._fleet(name, host, file) as agents:
        if agents is None:
            replies = [query.Reply("local", apps.request("lock_break", app=name))]
        else:
            replies = locks.break_locks(agents, name)
    if json:
        console.emit_json({"app": name, "hosts": [{"host": r.host, "removed": r.result, "error": r.error}
                                                  for r in replies]})
    for r in replies:
        if r.error is None:
            where = "" if agents is None else f"{console.escape(r.host)}: "
            said = (f"removed the lock held by {console.escape(locks.describe(r.result))}" if r.result
                    else f"no lock on {name}")
            console.say(f"{where}{said}")
    app_cmds._report_errors(replies)
    return query.outcome(replies)
