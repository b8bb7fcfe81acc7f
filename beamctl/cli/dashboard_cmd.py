"""`dashboard`: the tasks table, each task's cold-start waterfall, apps and live logs in a local web page,
over the hosts the app commands would reach (dashboard/)."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import List, Optional

import typer

from beamctl import console
from beamctl.cli import app, reach
from beamctl.cli.reach import AppFileOpt, HostOpt
from beamctl.errors import ExitCode, UsageError

DEFAULT_PORT = 8465


@app.command()
def dashboard(name: Optional[str] = typer.Argument(None, help="Only this app (default: every app on the hosts)."),
              host: Optional[List[str]] = HostOpt, file: Optional[Path] = AppFileOpt,
              port: int = typer.Option(DEFAULT_PORT, "--port", min=0, max=65535,
                                       help="Port on 127.0.0.1 (0: any free one)."),
              open_: bool = typer.Option(False, "--open", help="Open it in the browser.")) -> int:
    """A local web page: tasks, each task's cold-start waterfall, apps, live logs (Ctrl-C stops it)."""
    from beamctl.dashboard.data import Board
    from beamctl.dashboard.server import serve

    token = secrets.token_urlsafe(24)
    with reach.hosts(name, host, file) as hosts:
        try:
            server = serve(Board(hosts, name), token, port)
        except OSError as e:
            raise UsageError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}",
                             hint="pick another with --port N (0: any free one)") from None
        url = f"http://127.0.0.1:{server.server_address[1]}/?token={token}"
        console.out(url)
        where = ", ".join(h.name for h in hosts) if not reach.local(hosts) else "this machine"
        console.say(f"[dim]dashboard of {console.escape(where)}; only this machine can open it, with the token "
                    "in the address; Ctrl-C stops it[/]")
        if open_:
            import webbrowser

            webbrowser.open(url)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
    return ExitCode.OK
