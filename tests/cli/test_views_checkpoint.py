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


def test_a_deploy_s_snapshot_state_is_one_plain_line():
    assert views.snapshot({"state": "ready", "size_bytes": 2_000_000, "capture_s": 0.4}) == \
        "snapshot: ready, 2.0 MB (captured in 0.40 s)"
    old = "CRIU 4.1.1 < 4.2 (4.1 cannot checkpoint TCP sockets on kernels >= 6.16)"
    assert views.snapshot({"state": "checkpoint_failed", "reason": old}) == f"snapshot: failed ({old})"
    long = "checkpoint of abc failed: " + "x" * 300 + "\n(00.1) Error (criu/sk-inet.c:1): more log"
    assert views.snapshot({"state": "checkpoint_failed", "reason": long}) == \
        f"snapshot: failed ({long[:157]}...)"
    assert views.snapshot({"state": "capturing", "reason": None}) == "snapshot: capturing"
    assert views.snapshot({"state": "incompatible", "reason": "kernel changed"}) == \
        "snapshot: outdated, captured again at the next cold boot (kernel changed)"


def test_a_failed_or_lost_task_says_why_under_its_row_and_its_profile_has_no_none():
    died = {"task_id": "t-2", "app": "w", "version": 2, "start": "warm", "status": "failed", "total": 0.45,
            "received": 0, "phases": {"task_run": 0.4},
            "error": "container abc of v2 died during the task: killed: out of memory (limit 128Mi)"}
    lost = {"task_id": "t-3", "app": "w", "version": None, "start": None, "status": "lost", "total": None,
            "received": 0, "phases": None, "error": "the agent stopped while the task ran"}
    ok = {**died, "task_id": "t-4", "status": "succeeded", "error": None}
    table = views.tasks_table([died, lost, ok])
    assert table[2] == "  [red]└ container abc of v2 died during the task: killed: out of memory (limit 128Mi)[/]"
    assert table[4] == "  [red]└ the agent stopped while the task ran[/]"
    assert len(table) == 6  # header, 3 rows, 2 reasons
    assert views.profile(lost, [])[0] == "[bold]t-3[/]  w v-  lost, total -"
    assert views.profile(died, [])[-1] == \
        "  [red]error:[/] container abc of v2 died during the task: killed: out of memory (limit 128Mi)"
