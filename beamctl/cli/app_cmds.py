"""Commands about deployed apps: deploy, call, tasks, profile, logs, status, stop (rollback and unlock:
release_cmds.py)."""

from __future__ import annotations

import json as _json
import sys
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli.config_cmds import FileOpt, JsonOpt
from beamctl.errors import ExitCode, UsageError

HEALTH_TIMEOUT_S = 300  # on_start of big models; --health-timeout overrides
FOLLOW_POLL_S = 0.5


@app.command()
def deploy(file: Path = FileOpt, json: bool = JsonOpt,
           health_timeout: Optional[float] = typer.Option(
               None, min=1, help="Seconds to wait for READY (default: beam.yaml's rollout.health_timeout, 300)."),
           lock_wait: float = typer.Option(
               0, min=0, help="Seconds to wait for another deploy of the app to finish (default: refuse).")) -> int:
    """Build the app, start the new version, wait until READY, then retire the old one (on every host)."""
    from beamctl import apps
    from beamctl.config import load

    config, warnings = load(file)
    for w in warnings:
        console.line(w.render())
    from beamctl.cli.progress import reporter

    with reporter() as progress:
        result = apps.deploy(config, progress, health_timeout, lock_wait)
    if config.hosts:
        return _deployed_to_hosts(result, json)
    host = result["hosts"][0]
    if json:
        console.emit_json({**result, "hosts": [{k: h.get(k) for k in ("host", "status", "reason", "checkpoint")}
                                               for h in result["hosts"]]})
    if host["status"] == "ready":
        console.say(f"[bold green]deployed[/] {result['app']} v{result['version']} ({result['image']}); "
                    f"endpoint {host['endpoint']} (token: beamctl status {result['app']})")
        if host.get("checkpoint"):
            from beamctl.cli import views

            console.line(f"  {views.snapshot(host['checkpoint'])}")
        return ExitCode.OK
    for line in host["log_tail"]:
        console.line(f"  | {line}")
    serving = f"v{host['serving']} keeps serving" if host["serving"] else "nothing was serving before"
    console.error(f"v{result['version']} of {result['app']} did not start: {host['reason']} ({serving})")
    return ExitCode.FAILURE


def _deployed_to_hosts(result: dict[str, Any], json: bool) -> int:
    """Per-host lines (and the failing containers' last log lines); OK, PARTIAL or FAILURE."""
    from beamctl.fleet.rollout import outcome

    hosts = result["hosts"]
    if json:
        console.emit_json({**result, "hosts": [{k: h.get(k) for k in ("host", "status", "reason", "version", "ship",
                                                                       "checkpoint", "cold_boot")} for h in hosts]})
    for h in hosts:
        name = console.escape(h["host"])
        if h["status"] == "ready":
            console.say(f"[bold green]ready[/]  {name}: {result['app']} v{h['version']} ({result['image']}); "
                        f"endpoint {h.get('endpoint')}")
            if h.get("checkpoint"):
                from beamctl.cli import views

                console.line(f"       {h['host']}: {views.snapshot(h['checkpoint'])}")
            continue
        for line in h.get("log_tail") or []:
            console.line(f"  {h['host']} | {line}")
        serving = f"; v{h['serving']} keeps serving" if h.get("serving") else ""
        console.error(f"{h['host']}: {result['app']} not deployed: {h['reason']}{serving}")
    code = outcome(hosts)
    ready = sum(h["status"] == "ready" for h in hosts)
    if code == ExitCode.PARTIAL:
        console.error(f"partial deploy: {ready} of {len(hosts)} hosts run the new version")
    return code


HostOpt = typer.Option(None, "--host", help="Ask this host's agent (repeatable); default: the app's hosts.")
AppFileOpt = typer.Option(None, "-f", "--file", help="The app's beam.yaml (or its folder): ask its hosts.")


def _fleet(name: str | None, host: list[str] | None, file: Path | None) -> Any:
    from beamctl.fleet import query

    return query.agents(name, host, file)


def _report_errors(replies: list[Any]) -> None:
    from beamctl.cli import views

    for line in views.host_errors(replies):
        console.error(line)


@app.command()
def call(name: str = typer.Argument(..., help="The app."),
         inputs: Optional[str] = typer.Argument(None, help="Inputs as a JSON object, or @FILE."),
         json: bool = JsonOpt, host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Run one task and print its result (on the least busy host that serves the app)."""
    from beamctl import apps

    data = _inputs(inputs)
    with _fleet(name, host, file) as agents:
        if agents is None:
            task, where = apps.call(name, data), None
        else:
            task, where = _call_fleet(agents, name, data)
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


def _call_fleet(agents: list[Any], name: str, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from beamctl.agent.control import new_task_id
    from beamctl.apps import AgentFailed, AgentStopped
    from beamctl.fleet import query

    replies = query.ask_all(agents, "status", app=name)
    where = query.pick_host(replies, name)
    if where is None:
        _report_errors(replies)
        raise AgentFailed(f"no host serves {name} ({len(agents)} asked)", hint="run `beamctl deploy` first")
    console.say(f"[dim]calling {name} on {console.escape(where)}[/]")
    agent = next(a for a in agents if a.name == where)
    task_id = new_task_id()  # ours, so that a call cut off by the agent's death can name its task
    reply = query.ask_one(agent, "call", timeout=query.CALL_TIMEOUT_S, app=name, inputs=data, task_id=task_id)
    if reply.stopped:
        raise AgentStopped("call", name, task_id, where)
    if reply.error is not None:  # which host failed it (the agent's own words do not say)
        raise AgentFailed(reply.error if reply.error.startswith(f"{where}:") else f"{where}: {reply.error}")
    return reply.result, where


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
          limit: int = typer.Option(20, "-n", help="How many, newest first."),
          host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Recent tasks: status, cold or warm, durations."""
    from beamctl import apps
    from beamctl.cli import views
    from beamctl.fleet import query

    with _fleet(name, host, file) as agents:
        if agents is None:
            rows, replies = apps.request("tasks", app=name, limit=limit), None
        else:
            replies = query.ask_all(agents, "tasks", app=name, limit=limit)
            rows = query.merge_tasks(replies, limit)
    if json:
        console.emit_json(rows)
    else:
        for line in views.tasks_table(rows, hosts=replies is not None):
            console.line(line)
    if replies is None:
        return ExitCode.OK
    _report_errors(replies)
    return query.outcome(replies)


@app.command()
def profile(task_id: str = typer.Argument(..., help="A task id from `beamctl call` or `beamctl tasks`."),
            json: bool = JsonOpt, host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Where a task's time went: queue, image load, container start, on_start, run."""
    from beamctl import apps
    from beamctl.cli import views
    from beamctl.fleet import query

    with _fleet(None, host, file) as agents:
        if agents is None:
            task, where = apps.request("task", task_id=task_id), None
            recent_rows = None if json else apps.request("tasks", app=task["app"], limit=50)
        else:
            replies = query.ask_all(agents, "task", task_id=task_id)
            found = query.first_found(replies)
            if found is None:
                _report_errors(replies)
                raise apps.AgentFailed(f"no task {task_id} on any of the {len(agents)} hosts asked")
            task, where = found.result, found.host
            agent = next(a for a in agents if a.name == where)
            recent = None if json else query.ask_one(agent, "tasks", app=task["app"], limit=50)
            recent_rows = recent.result if recent and recent.error is None else []
    if json:
        console.emit_json({"task_id": task["task_id"], "app": task["app"], "start": task["start"],
                           "phases": task["phases"], "total": task["total"], **({"host": where} if where else {})})
        return ExitCode.OK
    kind = "restored" if task["start"] == "restored" else "cold"  # compared with starts of its own kind
    recent = [t["total"] for t in recent_rows or [] if t["start"] == kind and t["total"]]
    if where:
        console.say(f"host: [bold]{console.escape(where)}[/]")
    for line in views.profile(task, recent):
        console.say(line)
    return ExitCode.OK


@app.command()
def logs(name: str = typer.Argument(...), follow: bool = typer.Option(False, "-f", "--follow"),
         task: Optional[str] = typer.Option(None, "--task", help="Only lines about this task."),
         since: float = typer.Option(0, "--since", help="Only the last SECONDS."),
         lines: int = typer.Option(100, "-n", help="How many lines."),
         host: Optional[List[str]] = HostOpt,
         file: Optional[Path] = typer.Option(None, "--file", help="The app's beam.yaml (or its folder): "
                                                                  "its hosts' logs.")) -> int:
    """The app's output with the agent's events (cold starts, scale to zero) between."""
    from beamctl import apps
    from beamctl.cli import views

    start = time.time() - since if since else 0.0
    with _fleet(name, host, file) as agents:
        if agents is not None:
            return _logs_fleet(agents, name, follow, task, start, lines)
        entries = apps.request("logs", app=name, since=start, tail=lines, task_id=task)
        while True:
            for e in entries:
                console.line(views.log_line(e))
            if not follow:
                return ExitCode.OK
            start = entries[-1]["ts"] if entries else start
            time.sleep(FOLLOW_POLL_S)
            entries = apps.request("logs", app=name, since=start, tail=10_000, task_id=task)


def _logs_fleet(agents: list[Any], name: str, follow: bool, task: str | None, start: float, lines: int) -> int:
    """Every host's lines merged by time, each prefixed by its host; -f polls each agent."""
    from beamctl.cli import views
    from beamctl.fleet import query

    width = max(len(a.name) for a in agents)
    since = {a.name: start for a in agents}
    replies = query.ask_all(agents, "logs", app=name, since=start, tail=lines, task_id=task)
    _report_errors(replies)
    while True:
        for e in query.merge_logs(replies):
            console.line(views.host_log_line(e, width))
            since[e["host"]] = max(since[e["host"]], e["ts"])
        if not follow:
            return query.outcome(replies)
        time.sleep(FOLLOW_POLL_S)
        with ThreadPoolExecutor(max_workers=len(agents)) as pool:
            replies = list(pool.map(lambda a: query.ask_one(a, "logs", app=name, since=since[a.name],
                                                            tail=10_000, task_id=task), agents))
        replies = [r._replace(result=[e for e in r.result or [] if e["ts"] > since[r.host]]) for r in replies]


@app.command()
def status(name: Optional[str] = typer.Argument(None), json: bool = JsonOpt,
           host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """Deployed apps: active version, containers, endpoint and token, recent versions."""
    from beamctl import apps
    from beamctl.cli import views
    from beamctl.fleet import query

    with _fleet(name, host, file) as agents:
        if agents is None:
            data = apps.request("status", app=name)
            if json:
                console.emit_json(data)
            else:
                for line in views.status(data):
                    console.say(line)
            return ExitCode.OK
        replies = query.ask_all(agents, "status", app=name)
    if json:
        console.emit_json({"hosts": [{"host": r.host, **({"status": r.result} if r.error is None
                                                         else {"error": r.error})} for r in replies]})
    else:
        for line in views.host_status(replies):
            console.say(line)
    return query.outcome(replies)


@app.command()
def stop(name: str = typer.Argument(...), host: Optional[List[str]] = HostOpt,
         file: Optional[Path] = AppFileOpt) -> int:
    """Stop the app's containers (on every host of the app); its volumes and records stay."""
    from beamctl import apps
    from beamctl.fleet import query

    with _fleet(name, host, file) as agents:
        if agents is None:
            result = apps.request("stop", app=name)
            console.say(f"stopped {result['app']} v{result['stopped_version']} (volumes kept)")
            return ExitCode.OK
        replies = query.ask_all(agents, "stop", app=name)
    for r in replies:
        if r.error is None:
            console.say(f"{console.escape(r.host)}: stopped {name} v{r.result['stopped_version']} (volumes kept)")
    _report_errors(replies)
    return query.outcome(replies)
