"""`beamctl build`: beam.yaml -> a content-addressed image on the local engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from beamctl import console
from beamctl.cli import app
from beamctl.cli.config_cmds import FileOpt, JsonOpt
from beamctl.errors import ExitCode
from beamctl.units import human_bytes


@app.command()
def build(
    file: Path = FileOpt,
    json: bool = JsonOpt,
    prune: bool = typer.Option(False, "--prune", help="Remove older images of this app, keeping --keep."),
    keep: int = typer.Option(3, "--keep", min=1, help="Images per app kept by --prune (this one included)."),
) -> int:
    """Build the app's container image (reused when nothing changed)."""
    from beamctl.config import load
    from beamctl.image import build_app
    from beamctl.image.steps import Step

    config, warnings = load(file)
    for w in warnings:
        console.line(w.render())

    def progress(event: Any) -> None:  # to stderr, also with --json: stdout carries only the JSON
        if isinstance(event, Step):
            state = "[dim]cached[/]" if event.cached else "[green]built[/]" if event.writes_layer else "done"
            console.say(f"  [{event.index}/{event.total}] {console.escape(event.instruction[:100])}  {state}")
        else:
            console.say(f"[dim]{console.escape(str(event))}[/]")

    result = build_app(config, progress, keep if prune else None)
    if json:
        console.emit_json(result.as_json())
    else:
        verb = "reused" if result.reused else "built"
        console.say(f"[bold green]{verb}[/] {result.image} ({human_bytes(result.size_bytes)}, "
                    f"{result.layers_built} layers built, {result.layers_cached} cached, {result.seconds:.1f} s)")
        for ref in result.pruned:
            console.say(f"[dim]pruned {ref}[/]")
    return ExitCode.OK
