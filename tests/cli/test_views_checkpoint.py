"""How checkpoints and restored starts read on a terminal (cli/views.py, pure)."""

from __future__ import annotations

from beamctl.cli import views


def test_checkpoint_states_in_one_phrase():
    assert views.checkpoint({"state": "ready", "size_bytes": 1_090_000_000, "capture_s": 0.913}) == \
        "[green]ready[/], 1.09 GB (captured in 0.91 s)"
    assert views.checkpoint({"state": "ready", "size_bytes": 11_800_000, "capture_s": None}) == "[green]ready[/], 11.8 MB"
    assert views.checkpoint({"state": "checkpoint_failed", "reason": "Connected TCP socket [x]"}) == \
        "[red]checkpoint_failed[/]: Connected TCP socket \\[x]"  # markup in a reason is escaped
    assert views.checkpoint({"state": "incompatible", "reason": "kernel changed"}) == \
        "[yellow]incompatible[/]: kernel changed"
    assert views.checkpoint({"state": "capturing", "reason": None}) == "[yellow]capturing[/]"


def test_status_shows_each_versions_checkpoint():
    data = {"apps": [{"app": "w", "active_version": 2, "image": "beamctl/w:2", "endpoint": None, "token": "t",
                      "containers": [], "versions": [
                          {"version": 1, "state": "retired", "reason": None, "image": "beamctl/w:1", "checkpoint": None},
                          {"version": 2, "state": "active", "reason": None, "image": "beamctl/w:2",
                           "checkpoint": {"state": "ready", "size_bytes": 2_000_000, "capture_s": 0.4}}]}]}
    lines = views.status(data)
    assert lines[-1] == "      checkpoint: [green]ready[/], 2.0 MB (captured in 0.40 s)"
    assert sum("checkpoint:" in line for line in lines) == 1  # none for the retired version


def test_a_restored_profile_and_its_peers():
    task = {"task_id": "t-1", "app": "w", "version": 2, "start": "restored", "status": "succeeded", "total": 0.5,
            "phases": {"queue": 0.0, "image_load": 0.02, "checkpoint_restore": 0.46, "task_run": 0.01, "other": 0.01}}
    lines = views.profile(task, [0.5, 0.7])
    assert "[bold]restored[/] start" in lines[0]
    assert any(line.strip().startswith("checkpoint restore") for line in lines)
    assert not any("application start" in line for line in lines)
    assert lines[-1] == "  recent restored starts of w: 2, average total 600.0 ms"
    table = views.tasks_table([{**task, "received": 0}])
    assert table[1].split()[4] == "restored"
