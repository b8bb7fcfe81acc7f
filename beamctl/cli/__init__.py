"""The command line: typer commands (thin) and `main`, the one error boundary.

Commands parse options, call one core function and render what comes back; they return
an ExitCode. Only `main` prints errors and chooses the exit status (DESIGN.md).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from beamctl import __version__, console
from beamctl.errors import BeamctlError, ExitCode

app = typer.Typer(
    name="beamctl",
    help="Serverless-style GPU apps on your own machines: beam.yaml -> image -> hosts, with fast cold starts.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich's help renderer costs ~100 ms of start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"beamctl {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors (also BEAMCTL_DEBUG=1)."),
) -> None:
    """Serverless-style GPU apps on your own machines."""


from beamctl.cli import (  # noqa: E402,F401,I001  (register, in help order)
    config_cmds, build_cmd, deploy_cmd, app_cmds, exec_cmd, release_cmds, apps_cmd, hosts_cmds, secrets_cmd, token_cmd,
    dashboard_cmd)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the only place that turns errors into messages and exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("BEAMCTL_DEBUG") == "1"
    try:
        code = app(args=args, prog_name="beamctl", standalone_mode=False)
    except BeamctlError as e:
        _render(e)
        if debug:
            raise
        return int(e.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        return int(ExitCode.INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - the boundary: no traceback unless asked for
        if _is_click_error(e):
            return _click_error(e)
        if debug:
            raise
        console.error(f"internal error: {type(e).__name__}: {e}", hint="rerun with --debug for the traceback, "
                      "and report it")
        return int(ExitCode.FAILURE)
    return int(code) if isinstance(code, int) else int(ExitCode.OK)


def _render(e: BeamctlError) -> None:
    from beamctl.errors import ConfigError

    if isinstance(e, ConfigError):
        for p in e.problems + e.warnings:
            console.line(p.render())
    for line in getattr(e, "lines", []):
        console.line(f"  {line}")
    console.error(e.message, e.hint)


def _is_click_error(e: Exception) -> bool:
    return type(e).__module__.startswith(("click", "typer"))


def _click_error(e: Exception) -> int:
    """Usage errors (unknown option, missing argument) as click words them, exit 2."""
    show = getattr(e, "show", None)
    if callable(show):
        show()
        return int(getattr(e, "exit_code", ExitCode.CONFIG))
    if type(e).__name__ == "Abort":
        console.error("aborted")
        return int(ExitCode.INTERRUPTED)
    console.error(str(e))
    return int(ExitCode.FAILURE)
