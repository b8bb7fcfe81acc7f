from __future__ import annotations

import pytest

from beamctl.agent.profile import PHASES, ContainerTimeline, phases

TIMELINE = ContainerTimeline(create_start=10.0, create_end=10.05, process_start=10.4, imports_done=10.6,
                             on_start_start=10.6, on_start_end=12.6, ready_seen=12.61)


def test_cold_task_phases_add_up_to_the_total():
    kind, p = phases(received=9.99, done=12.7, task_start=12.62, task_end=12.68, timeline=TIMELINE)
    assert kind == "cold"
    assert p == pytest.approx({"queue": 0.01, "image_load": 0.05, "container_start": 0.35, "imports": 0.2,
                               "application_start": 2.0, "task_run": 0.06, "other": 0.04}, abs=1e-6)
    assert sum(p.values()) == pytest.approx(12.7 - 9.99)
    assert list(p) == list(PHASES)


def test_warm_task_has_no_cold_phases():
    kind, p = phases(received=20.0, done=20.011, task_start=20.001, task_end=20.01, timeline=TIMELINE)
    assert kind == "warm"
    assert (p["image_load"], p["container_start"], p["imports"], p["application_start"]) == (0, 0, 0, 0)
    assert p["queue"] == pytest.approx(0.001) and p["task_run"] == pytest.approx(0.009)
    assert sum(p.values()) == pytest.approx(0.011)


def test_a_task_joining_a_start_in_progress_counts_only_what_is_left():
    kind, p = phases(received=11.6, done=12.7, task_start=12.62, task_end=12.68, timeline=TIMELINE)
    assert kind == "cold"
    assert (p["queue"], p["image_load"], p["container_start"], p["imports"]) == (0, 0, 0, 0)
    assert p["application_start"] == pytest.approx(1.0)  # from its arrival to the end of on_start
    assert sum(p.values()) == pytest.approx(1.1)


def test_a_task_that_never_reached_a_container():
    kind, p = phases(received=5.0, done=5.5, task_start=5.5, task_end=5.5, timeline=None)
    assert kind == "warm" and p["queue"] == pytest.approx(0.5) and sum(p.values()) == pytest.approx(0.5)


def test_a_restored_start_shows_checkpoint_restore_in_place_of_the_boot():
    from beamctl.agent.profile import RESTORED_PHASES

    restored = ContainerTimeline(create_start=10.0, create_end=10.02, ready_seen=10.5, restore_start=10.02,
                                 restore_end=10.5)
    kind, p = phases(received=9.99, done=10.56, task_start=10.51, task_end=10.55, timeline=restored)
    assert kind == "restored" and list(p) == list(RESTORED_PHASES)
    assert p == pytest.approx({"queue": 0.01, "image_load": 0.02, "checkpoint_restore": 0.48, "task_run": 0.04,
                               "other": 0.02}, abs=1e-6)
    warm = phases(received=11.0, done=11.01, task_start=11.0, task_end=11.01, timeline=restored)
    assert warm[0] == "warm"  # later tasks on a restored container are warm


def test_a_cold_start_that_captured_has_a_capture_phase():
    captured = ContainerTimeline(10.0, 10.05, 10.4, 10.6, 10.6, 12.6, ready_seen=13.61, capture_start=12.6,
                                 capture_end=13.6)
    kind, p = phases(received=9.99, done=13.7, task_start=13.62, task_end=13.68, timeline=captured)
    assert kind == "cold" and p["checkpoint_capture"] == pytest.approx(1.0)
    assert sum(p.values()) == pytest.approx(13.7 - 9.99)
