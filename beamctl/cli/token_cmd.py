"""`token rotate APP`: a new endpoint token for the app on every host of it; the old one stops working."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from beamctl import console
from beamctl.cli import app, reach
from beamctl.cli.config_cmds import JsonOpt
from beamctl.cli.reach import AppFileOpt, HostOpt

token_app = typer.Typer(name="token", no_args_is_help=True, rich_markup_mode=None,
                        help="Apps' endpoint tokens (each host keeps only their digest in its database).")
app.add_typer(token_app, name="token")


@token_app.command()
def rotate(name: str = typer.Argument(..., help="The app."), json: bool = JsonOpt,
           host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt) -> int:
    """A new token for the app, the same on every host of it (printed on stdout; the old one is refused at once)."""
    import secrets

    from beamctl.hosts.each import ask_all

    token = secrets.token_urlsafe(32)  # one for all hosts (the app will have one front door)
    with reach.hosts(name, host, file) as hosts:
        replies = ask_all(hosts, "token_rotate", app=name, token=token)
        done = [r.host for r in replies if r.ok]
        door_failed = reach.follow_gateway(name, hosts, replies, token) if done else False
    if json:
        console.emit_json({"app": name, "token": token if done else None, "hosts": done,
                           "failed": {r.host: r.error for r in replies if not r.ok}})
    elif done:
        console.out(token)
    if done and not reach.local(hosts):
        console.say(console.escape(f"{name}: new token on {', '.join(done)}"))
    reach.report_errors(replies)
    if done and len(done) < len(replies):
        console.error(f"the hosts that did not answer keep the old token: run `beamctl token rotate {name}` again")
    return reach.with_gateway(reach.outcome(replies), door_failed)
