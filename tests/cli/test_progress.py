"""cli/progress.py: what long work prints when stderr is not a terminal (CI logs, pipes)."""

from __future__ import annotations

from beamctl.cli import progress
from beamctl.fleet.stream import ShipProgress


def test_ship_progress_is_a_line_per_host_at_most_every_few_seconds_then_the_last(capsys, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    with progress.reporter() as say:  # pytest's stderr is not a terminal: plain lines
        say(ShipProgress("gpu1", 1_000_000))
        say(ShipProgress("gpu2", 1_000_000))
        clock[0] += 1
        say(ShipProgress("gpu1", 2_000_000))  # too soon for gpu1: dropped
        clock[0] += progress.LOG_EVERY_S
        say(ShipProgress("gpu1", 9_000_000))
        say(ShipProgress("gpu1", 9_500_000, done=True))  # the last one always shows
        say("gpu1: 5 of 5 layers, 9.5 MB sent; id verified")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["gpu1: 1.0 MB sent", "gpu2: 1.0 MB sent", "gpu1: 9.0 MB sent", "gpu1: 9.5 MB sent (done)",
                     "gpu1: 5 of 5 layers, 9.5 MB sent; id verified"]


def test_text_with_brackets_is_printed_as_written(capsys):
    with progress.reporter() as say:
        say("image beamctl/app:[x] sent")
    assert capsys.readouterr().err == "image beamctl/app:[x] sent\n"
