"""Commands about deployed apps: call, tasks, profile, logs, status, stop (deploy: deploy_cmd.py; rollback and
unlock: release_cmds.py). Each takes its hosts from cli/reach.py."""

from __future__ import annotations

import json as _json
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli.config_cmds import JsonOpt
from beamctl.cli import reach
from beamctl.cli.reach import AppFileOpt, HostOpt
from beamctl.errors import ExitCode, UsageError

FOLLOW_POLL_S = 0.5


@app.command()
def call(name: str = typer.Argument(..., help="The app."),
         inputs: Optional[str] = typer.Argument(None, help="Inputs as a JSON object, or @FILE."),
         json: bool = JsonOpt, host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt,
         gateway: bool = typer.Option(False, "--gateway", help="Through the app's front door (beam.yaml "
                                                               "gateway:), as any other client would."),
         cacert: Optional[Path] = typer.Option(None, "--cacert", help="With --gateway: the CA (or self-signed "
                                               "certificate) to trust for the door's TLS; default: the system's.")
         ) -> int:
    """Run one task and print its result (on the least busy host that serves the app)."""
    from beamctl import apps

    data = _inputs(inputs)
    with reach.hosts(name, host, file) as hosts:
        local = reach.local(hosts)
        if gateway:
            url, token = apps.gateway_address(hosts, name)
            console.say(f"[dim]calling {name} at {console.escape(url)}[/]")
            task, where = apps.call_gateway(url, name, token, data, cacert), None
        else:
            task, where = apps.call(hosts, name, data,
                                    lambda h: console.say(f"[dim]calling {name} on {console.escape(h)}[/]"),
                                    console.error)
    where = None if local else where
    if json:
        console.emit_json({**{k: task[k] for k in ("task_id", "status", "start", "result", "error")},
                           **({"host": where} if where else {})})
    elif task["status"] == "succeeded":
        sys.stdout.write(_json.dumps(task["result"], indent=2) + "\n")
    on = f" on {where}" if where else ""
    if task["status"] == "succeeded":
        console.say(f"[dim]{task['task_id']}{on} {task['start']} {task['total'] * 1000:.1f} ms "
                    f"(beamctl profile {task['task_id']})[/]")
        return ExitCode.OK
    console.error(f"task {task['task_id']}{on} failed: {task['error']}")
    return ExitCode.FAILURE


def _inputs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    source = "inputs"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}")
    try:
        data = _json.loads(text)
    except ValueError as e:
        raise UsageError(f"{source} is not JSON: {e}", hint="""pass an object, like '{"name": "Ada"}'""")
    if not isinstance(data, dict):
        raise UsageError(f"{source} must be a JSON object, not {type(data).__name__}",
                         hint="""like '{"name": "Ada"}'""")
    return data


@app.command()
def tasks(name: Optional[str] = typer.Argument(None, help="Only this app."), json: bool = JsonOpt,
          limit: int = typer.Option(20, "-n", min=1, help="How many, newest first."),
          failed: bool = typer.Option(False, "--failed", help="Only failed tasks (`beamctl profile ID` shows "
                                                              "where each failed)."),
          host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Recent tasks: status, cold or warm, durations."""
    from beamctl.cli import views
    from beamctl.fleet import query
    from beamctl.hosts.each import ask_all, only

    with reach.hosts(name, host, file) as hosts:
        replies = ask_all(hosts, "tasks", app=name, limit=limit, **({"status": "failed"} if failed else {}))
        local = reach.local(hosts)
    rows = only(replies) if local else query.merge_tasks(replies, limit)
    if json:
        console.emit_json(rows)
    else:
        for line in views.tasks_table(rows, hosts=not local):
            console.out(line)
    reach.report_errors(replies)
    return reach.outcome(replies)


@app.command()
def profile(task_id: str = typer.Argument(..., help="A task id from `beamctl call` or `beamctl tasks`."),
            json: bool = JsonOpt, host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt,
            svg: Optional[Path] = typer.Option(None, "--svg", help="Also write its waterfall to this SVG file."),
            html: Optional[Path] = typer.Option(None, "--html", help="Also write its waterfall as a web page.")) -> int:
    """Where a task's time went: queue, image load, container start, on_start, run."""
    from beamctl import apps
    from beamctl.cli import views
    from beamctl.protocol.errors import AgentFailed

    with reach.hosts(None, host, file) as hosts:
        found, replies, recent_rows = apps.find_task(hosts, task_id, recent=not json or bool(svg or html))
        local = reach.local(hosts)
    if not found.ok:
        if not local:
            reach.report_errors(replies)
        raise found.exc or AgentFailed(found.error or f"no task {task_id}")
    task, where = found.result, None if local else found.host
    if svg or html:
        _waterfall_files(task, recent_rows, svg, html)
    if json:
        console.emit_json({"task_id": task["task_id"], "app": task["app"], "status": task.get("status"),
                           "start": task["start"], "phases": task["phases"], "total": task["total"],
                           "error": task.get("error"), "trace": task.get("trace"),
                           **({"host": where} if where else {})})
        return ExitCode.OK
    kind = "restored" if task["start"] == "restored" else "cold"  # compared with starts of its own kind
    recent = [t["total"] for t in recent_rows if t["start"] == kind and t["total"]]
    if where:
        console.show(f"host: [bold]{console.escape(where)}[/]")
    for line in views.profile(task, recent):
        console.show(line)
    return ExitCode.OK


def _waterfall_files(task: dict[str, Any], recent: list[dict[str, Any]], svg: Path | None, html: Path | None) -> None:
    from beamctl import waterfall

    medians = waterfall.medians(recent)
    for path, text in ((svg, waterfall.svg(task, medians) if svg else ""),
                       (html, waterfall.html(task, medians) if html else "")):
        if path is None:
            continue
        try:
            path.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
        console.say(f"[dim]wrote {console.escape(str(path))}[/]")


@app.command()
def logs(name: str = typer.Argument(...), follow: bool = typer.Option(False, "-f", "--follow"),
         task: Optional[str] = typer.Option(None, "--task", help="Only lines about this task."),
         since: float = typer.Option(0, "--since", help="Only the last SECONDS."),
         lines: int = typer.Option(100, "-n", min=1, help="How many lines, the last ones (of all hosts together)."),
         json: bool = typer.Option(False, "--json", help="One JSON object per line (JSON lines) on stdout."),
         host: Optional[List[str]] = HostOpt,
         file: Optional[Path] = typer.Option(None, "--file", help="The app's beam.yaml (or its folder): "
                                                                  "its hosts' logs.")) -> int:
    """The app's output with the agent's events (cold starts, scale to zero) between."""
    from beamctl import apps
    from beamctl.cli import views
    from beamctl.fleet import query
    from beamctl.hosts.each import only

    start = time.time() - since if since else 0.0
    with reach.hosts(name, host, file) as hosts:
        local = reach.local(hosts)
        width = max(len(h.name) for h in hosts)
        seen = {h.name: start for h in hosts}
        replies = apps.logs(hosts, name, seen, lines, task)
        if local:
            only(replies)
        reach.report_errors(replies)
        entries = query.merge_logs(replies)[-lines:]  # each host sent its last N: these are the last N of all
        while True:
            for e in entries:
                if json:
                    console.out(_json.dumps(e if not local else {k: v for k, v in e.items() if k != "host"}))
                else:
                    console.out(views.log_line(e) if local else views.host_log_line(e, width))
                seen[e["host"]] = max(seen[e["host"]], e["ts"])
            if not follow:
                return reach.outcome(replies)
            time.sleep(FOLLOW_POLL_S)
            replies = apps.logs(hosts, name, seen, 10_000, task)
            if local:
                only(replies)
            replies = [r._replace(result=[e for e in r.result or [] if e["ts"] > seen[r.host]]) for r in replies]
            entries = query.merge_logs(replies)


@app.command()
def status(name: Optional[str] = typer.Argument(None), json: bool = JsonOpt,
           host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Deployed apps: active version, containers, endpoint and token, recent versions."""
    from beamctl.cli import views
    from beamctl.hosts.each import ask_all, only

    with reach.hosts(name, host, file) as hosts:
        replies = ask_all(hosts, "status", app=name)
        local = reach.local(hosts)
        door = _door(name, replies, hosts) if name and not local else None
    if local:
        data = only(replies)
        if json:
            console.emit_json(data)
        else:
            for line in views.status(data):
                console.show(line)
        return ExitCode.OK
    if json:
        console.emit_json({"hosts": [{"host": r.host, **({"status": r.result} if r.error is None
                                                         else {"error": r.error})} for r in replies],
                           **({"gateway": door} if door else {})})
    else:
        if door:
            for line in views.gateway_lines(name, door["where"], door.get("door"), door.get("error")):  # type: ignore[arg-type]
                console.show(line)
        for line in views.host_status(replies):
            console.show(line)
    return reach.outcome(replies)


def _door(app: str, replies: list[Any], hosts: list[Any]) -> dict[str, Any] | None:
    """The app's gateway as its hosts know it, and the door's rotation as the gateway host tells it."""
    from beamctl.fleet import gateway

    where = gateway.gateway_of(replies, app)
    if where is None:
        return None
    try:
        door = gateway.door(app, where, hosts)
    except Exception as e:  # noqa: BLE001 - status still shows the hosts; the gateway's error is one line
        return {"where": where, "error": getattr(e, "message", None) or str(e)}
    return {"where": where, "door": door}


@app.command()
def stop(name: str = typer.Argument(...), host: Optional[List[str]] = HostOpt,
         file: Optional[Path] = AppFileOpt) -> int:
    """Stop the app's containers (on every host of the app); its volumes and records stay."""
    from beamctl.cli import views
    from beamctl.hosts.each import ask_all, only

    with reach.hosts(name, host, file) as hosts:
        replies = ask_all(hosts, "stop", app=name)
        local = reach.local(hosts)
        if local:
            console.say(views.stopped(name, only(replies)))
            return ExitCode.OK
        for r in replies:
            if r.error is None:
                console.say(f"{console.escape(r.host)}: {views.stopped(name, r.result)}")
        reach.report_errors(replies)
        door_failed = reach.follow_gateway(name, hosts, replies)
    return reach.with_gateway(reach.outcome(replies), door_failed)
