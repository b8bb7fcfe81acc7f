"""The queue's autoscaler (agent/pool.py) on fakes of our own Containers interface: bursts start containers
up to max_containers at once, a waiting task takes the first free slot, scale-in stops at min_containers,
housekeeping brings min_containers back, a host without room says why, a failed start does not loop.
The engine tier (real containers, concurrent restores of one snapshot) is test_autoscale_engine.py."""

from __future__ import annotations

import re

import threading
import time

import pytest

from beamctl.agent.pool import Pool, StartFailed
from beamctl.agent.scale import Scale
from tests.agent.test_pool_faults import FakeContainers


def pool_of(containers, scale: Scale, workers: int = 1, room=lambda v, more: None) -> tuple[Pool, list[str]]:
    events: list[str] = []
    pool = Pool("demo", containers, lambda v: {"image": "img", "name": "n"}, workers, 60, events.append,
                lambda live: containers.stop(live.id), scale=scale, room=room)
    pool.version = 1
    return pool, events


def burst(pool: Pool, n: int, hold_s: float, stagger_s: float = 0.0) -> tuple[list[str], list[BaseException]]:
    served: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def task() -> None:
        try:
            live = pool.acquire(timeout=30)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)
            return
        with lock:
            served.append(live.id)
        time.sleep(hold_s)
        pool.release(live)

    threads = []
    for _ in range(n):
        threads.append(threading.Thread(target=task))
        threads[-1].start()
        time.sleep(stagger_s)
    for t in threads:
        t.join(60)
    return served, errors


def until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within 10 s"
        time.sleep(0.01)


def test_wanted_containers_follow_the_queue_within_min_and_max():
    scale = Scale(max_containers=4, tasks_per_container=2, min_containers=1)
    assert [scale.wanted(d, workers=8) for d in (0, 1, 2, 3, 5, 8, 100)] == [1, 1, 1, 2, 3, 4, 4]
    assert Scale().wanted(50, workers=1) == 1  # the default: one container, as before
    assert Scale(max_containers=3).wanted(5, workers=2) == 3  # tasks_per_container omitted: workers
    assert Scale.of({"max_containers": 4, "tasks_per_container": 0}) == Scale(4, 0, 0)
    assert Scale.of({}) == Scale()  # a version recorded before the autoscaler


def test_a_burst_starts_containers_up_to_max_at_once_and_never_more():
    containers = FakeContainers(create_delay=0.2)
    pool, events = pool_of(containers, Scale(max_containers=4, tasks_per_container=1))
    served, errors = burst(pool, 16, hold_s=0.2)
    assert errors == [] and len(served) == 16
    assert len(containers.created) == 4, containers.created
    assert set(served) == set(containers.created)  # every container served: the queue spread over them
    assert events.count("cold start of v1") == 1
    assert sum("scaling out: container" in e for e in events) == 3, events
    assert pool.waiting == 0 and pool.creating == 0


def test_one_container_with_room_for_the_queue_starts_no_other():
    containers = FakeContainers(create_delay=0.05)
    pool, _ = pool_of(containers, Scale(max_containers=4, tasks_per_container=8), workers=8)
    served, errors = burst(pool, 8, hold_s=0.1)
    assert errors == [] and len(containers.created) == 1 and len(set(served)) == 1


def test_a_waiting_task_takes_the_first_free_slot_not_the_container_started_for_it():
    containers = FakeContainers(create_delay=1.0)  # a slow start: the warm one frees first
    pool, _ = pool_of(containers, Scale(max_containers=2, tasks_per_container=1))
    first = pool.acquire(timeout=10)  # one warm container, busy
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=10).id))
    waiter.start()
    until(lambda: pool.waiting == 1 and pool.creating == 1)  # it waits, a second container is being created
    pool.release(first)
    waiter.join(10)
    assert got == [first.id]  # it took the slot that freed, not the starting container
    deadline = time.monotonic() + 10
    while len([c for c in pool.live if c.state == "ready"]) < 2:  # the started one joins the pool anyway
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_scale_in_stops_at_min_containers_and_housekeeping_restarts_them():
    containers = FakeContainers()
    pool, _ = pool_of(containers, Scale(max_containers=3, tasks_per_container=1, min_containers=2))
    served, errors = burst(pool, 9, hold_s=0.2)
    assert errors == [] and len(containers.created) == 3
    gone = pool.idle_out(time.monotonic() + 3600)  # idle far past keep_warm
    assert len(gone) == 1 and len([c for c in pool.live if c.state == "ready"]) == 2
    for live in gone:
        containers.stop(live.id)
    assert pool.idle_out(time.monotonic() + 7200) == []  # min_containers stay however long they idle

    dead = pool.live[0]
    assert pool.lose(dead, "killed")
    pool.keep_min()  # housekeeping's round
    deadline = time.monotonic() + 10
    while len([c for c in pool.live if c.state == "ready"]) < 2:
        assert time.monotonic() < deadline, pool.live
        time.sleep(0.05)
    assert len(containers.created) == 4


def test_min_containers_start_with_no_task_at_all():
    containers = FakeContainers()
    pool, _ = pool_of(containers, Scale(max_containers=2, min_containers=2))
    pool.keep_min()
    deadline = time.monotonic() + 10
    while len([c for c in pool.live if c.state == "ready"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pool.keep_min()
    time.sleep(0.2)
    assert len(containers.created) == 2


def test_a_host_without_room_runs_the_first_container_and_says_why_not_more():
    containers = FakeContainers()
    asked = []

    def room(version, creating):
        asked.append(creating)
        return "the host's 2 CPUs are taken"

    pool, events = pool_of(containers, Scale(max_containers=4, tasks_per_container=1), room=room)
    served, errors = burst(pool, 6, hold_s=0.1)
    assert errors == [] and len(containers.created) == 1 and len(served) == 6
    assert pool.blocked == "the host's 2 CPUs are taken"
    said = [e for e in events if e.startswith("cannot start container")]  # said once; which number it names
    assert len(said) == 1 and re.fullmatch(r"cannot start container [23] of v1: the host's 2 CPUs are taken",
                                           said[0]), said  # depends on whether the first was still starting


def test_a_failed_start_beside_a_serving_container_does_not_loop():
    class Flaky(FakeContainers):
        def create(self, args):
            if self.created:  # every container after the first fails to create
                self.created.append("refused")
                raise RuntimeError("engine says no")
            return super().create(args)

    containers = Flaky()
    pool, events = pool_of(containers, Scale(max_containers=3, tasks_per_container=1))
    served, errors = burst(pool, 10, hold_s=0.05)
    assert errors == [] and len(served) == 10  # the one container served them all
    assert 1 <= containers.created.count("refused") <= 4, containers.created  # no crash loop of creates
    assert any("FAILED: could not create a container: RuntimeError: engine says no" in e for e in events)


def test_a_failed_first_start_fails_the_waiting_tasks_with_its_reason():
    class Refusing(FakeContainers):
        def create(self, args):
            raise RuntimeError("no such image")

    pool, _ = pool_of(Refusing(), Scale(max_containers=2, tasks_per_container=1))
    served, errors = burst(pool, 3, hold_s=0.0)
    assert served == [] and len(errors) == 3
    assert all(isinstance(e, StartFailed) and "no such image" in e.reason for e in errors), errors


def test_a_task_that_waited_hears_why_no_other_container_started_and_its_profile_says_so():
    from beamctl.cli.views import profile

    containers = FakeContainers()
    pool, _ = pool_of(containers, Scale(max_containers=2, tasks_per_container=1),
                      room=lambda v, more: "no free H100 GPU for another container (0 free of 8)")
    first = pool.acquire(timeout=10)
    heard: list[str] = []
    waiter = threading.Thread(target=lambda: pool.release(pool.acquire(timeout=10, waited_for=heard)))
    waiter.start()
    until(lambda: pool.waiting == 1 and pool.blocked is not None)
    pool.release(first)
    waiter.join(10)
    assert heard == ["no free H100 GPU for another container (0 free of 8)"]
    task = {"task_id": "t-000000000001", "app": "demo", "version": 1, "start": "warm", "status": "succeeded",
            "total": 0.5, "phases": {"queue": 0.3, "task_run": 0.2, "other": 0.0},
            "queued": f"no other container could start: {heard[0]}"}
    lines = profile(task, [])
    at = next(i for i, line in enumerate(lines) if "queue" in line.lower())
    assert "no other container could start: no free H100 GPU" in lines[at + 1]
