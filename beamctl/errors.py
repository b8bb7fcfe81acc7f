"""The project's error types and its one exit-code table.

Everything below the CLI raises these; only `beamctl.cli.main` turns them into
a message on stderr and an exit code (DESIGN.md, "Exit codes").
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from beamctl.config.problems import Problem


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # an operation failed, or an internal error (rerun with --debug)
    CONFIG = 2  # beam.yaml or the command line is wrong; nothing was changed
    ENVIRONMENT = 3  # a part beamctl needs (Docker Engine, debootstrap, ...) is missing or not running
    REMOTE = 4  # a host could not be reached or refused (its host key, our key, a command on it)
    PARTIAL = 5  # some hosts got the new version, some did not
    INTERRUPTED = 130  # Ctrl-C; whatever was half-done has been rolled back


class BeamctlError(Exception):
    """A failure with a message for the user (and maybe a hint)."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class Interrupted(BeamctlError):
    """Ctrl-C in the middle of work on hosts: `lines` say where each host was left."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str, lines: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.lines = lines or []


class ConfigError(BeamctlError):
    """beam.yaml has problems; `problems` holds every one of them, with its place."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        n = len(problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in the configuration")
        self.problems = problems
        self.warnings = warnings or []


class UsageError(BeamctlError):
    """A command was given arguments that cannot work (a path that exists, ...)."""

    exit_code = ExitCode.CONFIG


class EnvironmentProblem(BeamctlError):
    """A part beamctl drives is missing or not running; the hint says how to start it."""

    exit_code = ExitCode.ENVIRONMENT
