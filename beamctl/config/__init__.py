"""beam.yaml: parse -> schema -> named checks -> frozen model. See DESIGN.md, "Config pipeline".

`validate_file` collects every problem and never raises for a bad file; `load` is what
the other commands use: it returns an AppConfig or raises ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from beamctl.config.model import AppConfig
from beamctl.config.problems import Problem
from beamctl.errors import ConfigError, UsageError

DEFAULT_FILE = "beam.yaml"


@dataclass
class Report:
    file: Path
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    config: AppConfig | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "errors": [p.as_json() for p in self.errors],
                "warnings": [p.as_json() for p in self.warnings]}


def _read(path: Path) -> bytes:
    from beamctl.config.parse import MAX_BYTES

    if path.is_dir():
        path = path / DEFAULT_FILE
    try:
        with path.open("rb") as f:
            return f.read(MAX_BYTES + 1)  # never read more than the limit plus one byte
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", hint="run `beamctl init` to create one, or pass -f FILE")
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror})")


def validate_file(path: Path, display: str | None = None) -> Report:
    """Run the whole pipeline over one file and report every problem it finds."""
    from beamctl.config import checks, model, parse, schema

    path = path / DEFAULT_FILE if path.is_dir() else path
    raw = _read(path)
    doc, problems = parse.parse(raw, display or str(path))
    report = Report(path)
    if not problems:
        app_dir = path.resolve().parent
        problems = schema.check(doc) + checks.run_checks(doc, app_dir)
    report.errors = sorted(p for p in problems if p.severity == "error")
    report.warnings = sorted(p for p in problems if p.severity == "warning")
    if report.ok:
        report.config = model.build(doc.data, schema.load_schema(), path.resolve())
    return report


def load(path: Path) -> tuple[AppConfig, list[Problem]]:
    """The config other commands run on, with its warnings; ConfigError when it has problems."""
    report = validate_file(path)
    if report.config is None:
        raise ConfigError(report.errors, report.warnings)
    return report.config, report.warnings
