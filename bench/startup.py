"""Start-up cost of the CLI, against bare Python start-up, measured side by side in one run.

    .venv/bin/python bench/startup.py [--runs 10] [--write docs/BENCHMARKS.md]

Runs are interleaved (pass, --help, validate, pass, ...) so that machine noise hits all
three alike; the medians and their differences from bare Python are reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section  # bench/results.py (scripts run from bench/)

REPO = Path(__file__).resolve().parents[1]
GOALS_MS = {"beamctl --help": 120, "beamctl validate (file seen before)": 200,
            "beamctl validate (new file)": 200}  # over bare Python (issue 2)
FRESH = "fresh"  # marker: run with an empty verdict cache (a file beamctl has not validated yet)
BEGIN, END = "<!-- bench/startup.py: begin -->", "<!-- bench/startup.py: end -->"


def commands() -> dict[str, list[str]]:
    py = sys.executable
    validate = [py, "-m", "beamctl", "validate", "-f", str(REPO / "beam.yaml")]
    return {
        "python -c pass": [py, "-c", "pass"],
        "beamctl --help": [py, "-m", "beamctl", "--help"],
        "beamctl validate (new file)": [FRESH, *validate],
        "beamctl validate (file seen before)": validate,
    }


def _run(argv: list[str], cache: str) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, BEAMCTL_CACHE_DIR=cache)
    fresh = tempfile.TemporaryDirectory(prefix="beamctl-bench-") if argv[0] == FRESH else None
    if fresh is not None:
        argv, env["BEAMCTL_CACHE_DIR"] = argv[1:], fresh.name
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, env=env)
    elapsed = time.perf_counter() - start
    if fresh is not None:
        fresh.cleanup()
    return elapsed, proc


def measure(runs: int) -> dict[str, list[float]]:
    cmds = commands()
    with tempfile.TemporaryDirectory(prefix="beamctl-bench-") as cache:
        for argv in cmds.values():  # warm the page cache, .pyc files and the verdict cache; not timed
            _run(argv, cache)
        return _timed(cmds, cache, runs)


def _timed(cmds: dict[str, list[str]], cache: str, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            elapsed, proc = _run(argv, cache)
            times[name].append(elapsed)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed: {proc.stderr.decode()[-500:]}")
    return times


def report(times: dict[str, list[float]], runs: int) -> str:
    base = statistics.median(times["python -c pass"]) * 1000
    lines = [BEGIN, "", f"Command: `.venv/bin/python bench/startup.py --runs {runs} --write docs/BENCHMARKS.md`",
             f"Machine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}; median of {runs} interleaved runs.", "",
             "| command | median ms | over bare Python | goal (over bare) | met |", "|---|---|---|---|---|"]
    for name, samples in times.items():
        med = statistics.median(samples) * 1000
        over = med - base
        goal = GOALS_MS.get(name)
        met = "" if goal is None else ("yes" if over <= goal else "no")
        lines.append(f"| `{name}` | {med:.0f} | {'' if goal is None else f'+{over:.0f}'} | "
                     f"{'' if goal is None else f'+{goal}'} | {met} |")
    return "\n".join(lines + ["", END])


def write(path: Path, section: str) -> None:
    write_section(path, section, BEGIN, END, "CLI start-up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--write", type=Path, help="update this Markdown file's start-up section")
    args = ap.parse_args()
    section = report(measure(args.runs), args.runs)
    print(section)
    if args.write:
        write(args.write, section)


if __name__ == "__main__":
    main()
