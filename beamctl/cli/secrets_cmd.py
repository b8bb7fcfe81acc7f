"""`secrets set|ls|rm`: the values of apps' `secrets:` in the user's secrets file (0600), so nobody edits it by
hand. A value is read from stdin or asked without echo: never from argv, never printed."""

from __future__ import annotations

import sys

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli.config_cmds import JsonOpt
from beamctl.errors import ExitCode, UsageError

secrets_app = typer.Typer(name="secrets", no_args_is_help=True, rich_markup_mode=None,
                          help="Values of apps' secrets, in ~/.config/beamctl/secrets.env ($BEAMCTL_SECRETS_FILE).")
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("set")
def set_secret(name: str = typer.Argument(..., help="The secret's name, as beam.yaml's secrets: list it.")) -> int:
    """Set a secret's value: piped on stdin (`printf %s "$TOKEN" | beamctl secrets set HF_TOKEN`), or typed."""
    from beamctl import secrets

    if sys.stdin is not None and not sys.stdin.isatty():
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    else:
        value = console.ask_secret(f"value of {name} (not shown): ")
        if value is None:
            raise UsageError(f"no value for {name}: pipe it on stdin or run this in a terminal")
    if not value:
        raise UsageError(f"the value of {name} is empty", hint=f"beamctl secrets rm {name} removes it")
    path = secrets.set_value(name, value)
    console.say(f"set {name} in {console.escape(str(path))} ({len(value)} characters)")
    return ExitCode.OK


@secrets_app.command("ls")
def list_secrets(json: bool = JsonOpt) -> int:
    """The names in the secrets file (never their values); those the environment sets too are marked."""
    import os

    from beamctl import secrets

    found = secrets.names()
    if json:
        console.emit_json({"file": str(secrets.secrets_file()),
                           "secrets": [{"name": n, "environment_wins": n in os.environ} for n in found]})
        return ExitCode.OK
    if not found:
        console.say(f"no secrets in {console.escape(str(secrets.secrets_file()))}")
    for n in found:
        console.out(n + ("  (the environment's value wins)" if n in os.environ else ""))
    return ExitCode.OK


@secrets_app.command("rm")
def remove_secret(name: str = typer.Argument(...)) -> int:
    """Remove a secret's value (removing one the file does not hold is done too)."""
    from beamctl import secrets

    where = console.escape(str(secrets.secrets_file()))
    console.say(f"removed {name} from {where}" if secrets.remove(name) else f"no secret {name} in {where}")
    return ExitCode.OK
