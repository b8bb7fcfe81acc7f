"""Commands about the config file: init, validate, schema."""

from __future__ import annotations

from pathlib import Path

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.errors import ExitCode, UsageError

FileOpt = typer.Option(Path("beam.yaml"), "-f", "--file", help="The beam.yaml to use (or its folder).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


@app.command()
def init(
    folder: Path = typer.Argument(Path("."), help="Folder for the new app (created if missing)."),
    name: str = typer.Option(None, "--name", help="App name; default: from the folder's name."),
    force: bool = typer.Option(False, "--force", help="Overwrite beam.yaml and app.py if they exist."),
) -> int:
    """Write a commented beam.yaml, an app.py that validate as they are, and the schema for editors."""
    from beamctl.scaffold import init_app

    done = init_app(folder, name, force)
    created = done.files + ([done.schema.path] if done.schema.state == "created" else [])
    console.say(f"[green]created[/] {', '.join(console.escape(str(p)) for p in created)}")
    if done.schema.state != "created":
        console.say(_schema_note(done.schema))
    console.say(f"next: beamctl validate -f {console.escape(str(done.files[0]))}")
    return ExitCode.OK


def _schema_note(written) -> str:  # type: ignore[no-untyped-def]
    path = console.escape(str(written.path))
    if written.state == "created":
        return f"[green]created[/] {path}"
    if written.state == "refreshed":
        return f"[green]refreshed[/] {path} (it differed from this beamctl's schema)"
    return f"{path} is up to date"


@app.command()
def validate(file: Path = FileOpt, json: bool = JsonOpt) -> int:
    """Check beam.yaml against the schema and the named checks; report every problem with its line."""
    from beamctl.config import validate_file

    report = validate_file(file, display=str(file))
    if json:
        console.emit_json(report.as_json())
    else:
        for p in report.errors + report.warnings:
            console.line(p.render())
        console.say(_summary(report))
    return ExitCode.OK if report.ok else ExitCode.CONFIG


def _summary(report) -> str:  # type: ignore[no-untyped-def]
    n_err, n_warn = len(report.errors), len(report.warnings)
    warn = f", {n_warn} warning{'s' * (n_warn != 1)}" if n_warn else ""
    if n_err:
        return f"[bold red]{report.file}: {n_err} error{'s' * (n_err != 1)}{warn}[/]"
    cfg = report.config
    gpu = " or ".join(str(g) for g in cfg.gpu) or "CPU only"
    where = ", ".join(h.target for h in cfg.hosts) or "this machine"
    return f"[green]{report.file} is valid[/]{warn}: app [bold]{cfg.name}[/], {gpu}, deploys to {where}"


@app.command()
def schema(
    markdown: bool = typer.Option(False, "--markdown", help="Print the reference table instead."),
    write: bool = typer.Option(False, "--write", help="Write the schema to PATH instead of printing it."),
    path: Path = typer.Argument(None, metavar="PATH", show_default=False, help="With --write: the file to write, or an app "
                                "folder (FOLDER/.beamctl/beam.schema.json, where init puts it; default: .)."),
) -> int:
    """Print beam.yaml's JSON Schema (for editors and other tools), or --write it where beam.yaml's
    modeline points."""
    if path is not None and not write:
        raise UsageError(f"{path}: a PATH is only taken with --write", hint="beamctl schema --write PATH")
    if write and markdown:
        raise UsageError("--write writes the JSON Schema; --markdown prints the reference: pick one")
    if write:
        from beamctl.scaffold import schema_target, write_schema

        console.say(_schema_note(write_schema(schema_target(path or Path(".")))))
    elif markdown:
        from beamctl.config.reference import render_markdown

        typer.echo(render_markdown(), nl=False)
    else:
        from beamctl.config.schema import SCHEMA_PATH

        typer.echo(SCHEMA_PATH.read_text(encoding="utf-8"), nl=False)
    return ExitCode.OK
