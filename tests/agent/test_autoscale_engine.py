"""The autoscaler on the real engine, runc and CRIU (issue 17): a burst against an app with snapshots
starts containers up to max_containers at once, each restored from the one snapshot (concurrent restores
of it: sandboxes, ports and CRIU's pids must not collide), never more than the maximum; every task
succeeds once; idle ones stop down to min_containers; `status` shows the split and the states."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request

import pytest

from tests.agent.test_agent_engine import Host, containers_of

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("criu") is None or os.geteuid() != 0,
                                 reason="needs CRIU (scripts/setup.sh) and root")]
BURST = 8
YAML = """\
on_start: app:setup
checkpoint_enabled: true
cpu: 0.1
memory: 256Mi
keep_warm_seconds: 4
autoscaler:
  max_containers: 3
  tasks_per_container: 1
  min_containers: 1
"""
CODE = """\
import os, time

STATE = {}


def setup():
    STATE["boot"] = os.getpid()


def handler(**inputs):
    time.sleep(1.0)
    return {"n": inputs["n"]}
"""


def post(url: str, token: str, n: int) -> dict:
    request = urllib.request.Request(url, data=json.dumps({"n": n}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_a_burst_scales_out_by_restoring_and_back_in_to_min(host: Host):
    app, folder = host.app("scale", YAML, CODE)
    host.ok("deploy", "-f", str(folder))
    status = host.status(app)
    assert status["versions"][0]["checkpoint"]["state"] == "ready", status["versions"][0]
    assert status["scaling"]["max_containers"] == 3 and status["scaling"]["min_containers"] == 1
    url, token = status["endpoint"], status["token"]

    most, stop = [0], threading.Event()

    def watch() -> None:  # the engine's own count, all through the burst
        while not stop.is_set():
            most[0] = max(most[0], len(containers_of(app)))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    answers: list[dict] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda n=n: answers.append(post(url, token, n))) for n in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    took = time.monotonic() - started
    stop.set()
    watcher.join()

    assert sorted(a["result"]["n"] for a in answers) == list(range(BURST))  # each once, all succeeded
    tasks = host.ok("tasks", app, "-n", "50", "--json").json()
    served = {t["container"] for t in tasks}
    assert 2 <= len(served) <= 3 and most[0] <= 3, (served, most)  # scaled out, never past the maximum
    assert "restored" in {t["start"] for t in tasks}, [t["start"] for t in tasks]  # new ones restored
    assert took < BURST * 1.0, took  # serial would be BURST seconds and more
    logs = host.ok("logs", app, "-n", "200").out
    assert "scaling out: container 2 of v1" in logs and "restore" in logs.lower()

    deadline = time.monotonic() + 60  # idle past keep_warm: down to min_containers, not to zero
    while len(host.status(app)["containers"]) > 1:
        assert time.monotonic() < deadline, host.status(app)["containers"]
        time.sleep(0.5)
    time.sleep(5)  # and it stays at one
    (left,) = host.status(app)["containers"]
    assert left["state"] == "ready" and len(containers_of(app)) == 1
    text = host.ok("status", app).out
    assert "containers: 1 of at most 3 (min 1), 1 tasks per container" in text, text
