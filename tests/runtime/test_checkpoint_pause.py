"""The runtime's side of the checkpoint handshake: with BEAMCTL_CHECKPOINT=1, after on_start it answers
/health CHECKPOINT (tasks get 503) until POST /checkpoint/release, then READY; a missing release does not
keep it from serving for ever."""

from __future__ import annotations

from beamctl.runtime.state import read_clock_offset

APP = """
    def load():
        return {"greeting": "hello"}
    def handler(context, **inputs):
        return context.on_start_value["greeting"]
"""


def test_paused_after_on_start_until_released(serve):
    rt = serve(APP, BEAMCTL_ON_START="app:load", BEAMCTL_CHECKPOINT="1")
    paused = rt.wait_for("CHECKPOINT")
    assert paused["timings"]["on_start_end"] is not None and paused["timings"]["ready"] is None
    status, doc = rt.request("POST", "/tasks", {"task_id": "t-1", "inputs": {}})
    assert status == 503 and doc["state"] == "CHECKPOINT"  # no task runs before the snapshot
    status, health = rt.request("POST", "/checkpoint/release", {"restored": False})
    assert status == 200 and health["state"] == "READY" and health["restored"] is False
    assert health["clock_offset"] == 0.0  # never restored: the host's clock
    assert rt.task()["result"] == "hello"
    status, doc = rt.request("POST", "/checkpoint/release", {"restored": False})
    assert status == 409 and doc["state"] == "READY"
    assert "paused for the agent's checkpoint" in rt.logs()[0]


def test_a_release_says_whether_it_was_restored(serve):
    rt = serve(APP, BEAMCTL_ON_START="app:load", BEAMCTL_CHECKPOINT="1")
    rt.wait_for("CHECKPOINT")
    assert rt.request("POST", "/checkpoint/release", b"not json")[0] == 400
    status, health = rt.request("POST", "/checkpoint/release", {"restored": True})
    assert status == 200 and health["restored"] is True
    assert "restored from a checkpoint" in rt.logs()[0]


RANDOM_APP = """
    import random
    def load():
        random.seed(42)  # as if on_start had drawn numbers: a snapshot would carry this state
        return None
    def handler(context, **inputs):
        return random.random()
"""


def test_a_restored_release_reseeds_the_global_generator(serve):
    import random

    expected = random.Random(42).random()
    plain = serve(RANDOM_APP, BEAMCTL_ON_START="app:load", BEAMCTL_CHECKPOINT="1")
    plain.wait_for("CHECKPOINT")
    plain.request("POST", "/checkpoint/release", {"restored": False})
    assert plain.task()["result"] == expected  # not restored: the app's own seeding stands
    again = serve(RANDOM_APP, BEAMCTL_ON_START="app:load", BEAMCTL_CHECKPOINT="1")
    again.wait_for("CHECKPOINT")
    again.request("POST", "/checkpoint/release", {"restored": True})
    assert again.task()["result"] != expected


def test_no_release_within_the_wait_serves_anyway(serve):
    rt = serve(APP, BEAMCTL_ON_START="app:load", BEAMCTL_CHECKPOINT="1", BEAMCTL_CHECKPOINT_WAIT="0.3")
    rt.wait_for("READY")
    assert "no checkpoint release within 0.3 s: serving without one" in rt.logs()[0]


def test_without_checkpointing_there_is_no_pause(serve):
    rt = serve(APP, BEAMCTL_ON_START="app:load")
    assert rt.wait_for("READY")["restored"] is False
    assert rt.request("POST", "/checkpoint/release", {})[0] == 409


def test_clock_offset_from_timens_offsets(tmp_path):
    f = tmp_path / "timens_offsets"
    f.write_text("monotonic    -45    651000000\nboottime      0         0\n")
    assert abs(read_clock_offset(str(f)) - (-44.349)) < 1e-9
    assert read_clock_offset(str(tmp_path / "absent")) == 0.0
