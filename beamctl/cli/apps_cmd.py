"""`apps`: every app on the hosts known here (this machine when none is known), with its version, state
and where it runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli import reach
from beamctl.cli.reach import HostOpt
from beamctl.cli.config_cmds import JsonOpt


@app.command("apps")
def apps_list(json: bool = JsonOpt, host: Optional[List[str]] = HostOpt,
              file: Optional[Path] = typer.Option(None, "-f", "--file", help="Only this beam.yaml's hosts.")) -> int:
    """Every app on the hosts known here: version, state, containers, checkpoint, host."""
    from beamctl.cli import views
    from beamctl.fleet import query
    from beamctl.hosts.each import ask_all

    with reach.hosts(None, host, file) as hosts:
        replies = ask_all(hosts, "status")
    rows = query.app_rows(replies)
    if json:
        console.emit_json(rows)
    else:
        for line in views.apps_table(rows):
            console.out(line)
    reach.report_errors(replies)
    return reach.outcome(replies)
