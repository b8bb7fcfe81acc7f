"""`deploy`: build once, then every host of the app (this machine when it names none): one line per host,
or this machine's one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli.config_cmds import FileOpt, JsonOpt
from beamctl.errors import ExitCode
from beamctl.units import human_bytes


@app.command()
def deploy(file: Path = FileOpt, json: bool = JsonOpt,
           health_timeout: Optional[float] = typer.Option(
               None, min=1, help="Seconds to wait for READY (default: beam.yaml's rollout.health_timeout, 300)."),
           lock_wait: float = typer.Option(
               0, min=0, help="Seconds to wait for another deploy of the app to finish (default: refuse)."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Build here, then say what the deploy would do on "
                                                                 "each host; change nothing there.")) -> int:
    """Build the app, start the new version, wait until READY, then retire the old one (on every host)."""
    from beamctl import apps
    from beamctl.config import load

    config, warnings = load(file)
    for w in warnings:
        console.line(w.render())
    from beamctl.cli.progress import reporter

    if dry_run:
        with reporter() as progress:
            image, plans = apps.plan_deploy(config, progress)
        return _planned(config.name, image, plans, json)
    with reporter() as progress:
        result = apps.deploy(config, progress, health_timeout, lock_wait)
    if not config.hosts:
        return _deployed_here(result, json)
    return _deployed_to_hosts(result, json)


def _planned(app_name: str, image: Any, plans: list[Any], json: bool) -> int:
    """The dry run's plan: one line per host (stdout), nothing changed anywhere."""
    if json:
        console.emit_json({"app": app_name, "image": image.image, "hosts": [p.as_json() for p in plans]})
        return ExitCode.OK
    console.out(f"{app_name}: {image.image} (dry run: nothing was changed on any host)")
    for p in plans:
        size = f" ({human_bytes(p.bytes_missing)} before compression)" if p.bytes_missing is not None else ""
        layers = ("" if p.layers_missing is None else
                  f"; layers to send: {p.layers_missing} of {p.layers_total}{size}" if p.layers_missing else
                  "; nothing to send")
        snap = f"; v{p.serving} checkpoint: {p.checkpoint}" if p.checkpoint else ""
        console.out(f"{p.host}: {p.action}; agent {p.agent}{layers}{snap}")
    return ExitCode.OK


def _deployed_here(result: Any, json: bool) -> int:
    """This machine's deploy: one line, or the container's last log lines and why it did not start."""
    host = result.hosts[0]
    if host.status == "failed" and host.error is not None:
        raise host.error
    if json:
        console.emit_json({"app": result.app, "version": result.version, "image": result.image,
                           "hosts": [host.as_json(("host", "status", "reason", "checkpoint"))]})
    if host.status == "ready":
        console.say(f"[bold green]deployed[/] {result.app} v{result.version} ({result.image}); "
                    f"endpoint {host.endpoint} (token: beamctl status {result.app})")
        if host.checkpoint:
            from beamctl.cli import views

            console.line(f"  {views.snapshot(host.checkpoint)}")
        return _interrupted(1, 1) if result.interrupted else ExitCode.OK
    for line in host.log_tail:
        console.line(f"  | {line}")
    serving = f"v{host.serving} keeps serving" if host.serving else "nothing was serving before"
    console.error(f"v{result.version} of {result.app} did not start: {host.reason} ({serving})")
    return ExitCode.FAILURE


def _gateway_lines(result: Any) -> bool:
    """The front door's line (its address and the hosts it routes to); True when it was not updated."""
    g = result.gateway
    if g is not None:
        to = ", ".join(s["host"] for s in g.servers) or "no host"
        via = f"; HAProxy: {g.haproxy}" if g.haproxy else ""
        console.say(f"[bold green]gateway[/] {console.escape(g.host)}: {g.url}/apps/{result.app} -> {to}{via}")
        for line in g.unexposed:
            console.error(f"gateway: {line}")
    if result.gateway_moved:
        console.say(f"gateway: {console.escape(result.gateway_moved)}")
    if result.gateway_error is not None:
        console.error(f"gateway: not updated: {result.gateway_error.message}", result.gateway_error.hint)
        return True
    return False


def _interrupted(ready: int, total: int) -> int:
    """Ctrl-C came during the switch: what was started finished (shown above), nothing more was."""
    rest = f"; the other {total - ready} keep their version" if ready < total else ""
    console.error(f"interrupted (Ctrl-C): the switch that had started finished; {ready} of {total} "
                  f"host{'s' if total != 1 else ''} run the new version{rest}")
    return ExitCode.INTERRUPTED


def _deployed_to_hosts(result: Any, json: bool) -> int:
    """Per-host lines (and the failing containers' last log lines); OK, PARTIAL or FAILURE."""
    from beamctl.fleet.rollout import outcome

    hosts = result.hosts
    if json:
        console.emit_json({"app": result.app, "version": result.version, "image": result.image,
                           "hosts": [h.as_json(("host", "status", "reason", "version", "ship", "checkpoint",
                                                "cold_boot")) for h in hosts],
                           **({"gateway": result.gateway.as_json()} if result.gateway else {}),
                           **({"gateway_error": result.gateway_error.message} if result.gateway_error else {})})
    for h in hosts:
        name = console.escape(h.host)
        if h.status == "ready":
            console.say(f"[bold green]ready[/]  {name}: {result.app} v{h.version} ({result.image}); "
                        f"endpoint {h.endpoint}")
            if h.checkpoint:
                from beamctl.cli import views

                console.line(f"       {h.host}: {views.snapshot(h.checkpoint)}")
            continue
        for line in h.log_tail:
            console.line(f"  {h.host} | {line}")
        serving = f"; v{h.serving} keeps serving" if h.serving else ""
        console.error(f"{h.host}: {result.app} not deployed: {h.reason}{serving}",
                      h.error.hint if h.error is not None else None)  # the fix (a host key's, a lock's)
    code = outcome(hosts)
    if _gateway_lines(result) and code == ExitCode.OK:
        code = ExitCode.PARTIAL  # the hosts run it; its front door does not route to them
    ready = sum(h.status == "ready" for h in hosts)
    if result.interrupted:
        return _interrupted(ready, len(hosts))
    if code == ExitCode.PARTIAL:
        console.error(f"partial deploy: {ready} of {len(hosts)} hosts run the new version")
    return code
