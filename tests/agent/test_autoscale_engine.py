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
import subprocess
import urllib.error
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


def test_a_container_killed_under_load_fails_its_task_with_the_reason_and_is_replaced(host: Host):
    app, folder = host.app("scale-kill", YAML.replace("min_containers: 1", "min_containers: 2"),
                           CODE.replace("time.sleep(1.0)", "time.sleep(inputs.get('s', 1.0))"))
    host.ok("deploy", "-f", str(folder))
    status = host.status(app)
    url, token = status["endpoint"], status["token"]
    deadline = time.monotonic() + 60
    while len([c for c in host.status(app)["containers"] if c["state"] == "ready"]) < 2:  # min_containers
        assert time.monotonic() < deadline, host.status(app)["containers"]
        time.sleep(0.3)

    answers: list[dict] = []
    slow = [threading.Thread(target=lambda n=n: answers.append(post_s(url, token, n, 6.0))) for n in range(2)]
    for t in slow:
        t.start()
    deadline = time.monotonic() + 30
    while sum(c["busy"] for c in host.status(app)["containers"]) < 2:  # both containers run a task
        assert time.monotonic() < deadline
        time.sleep(0.1)
    victim = host.status(app)["containers"][0]["id"]
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    for t in slow:
        t.join(120)
    failed = [a for a in answers if a["status"] != "succeeded"]
    assert len(failed) == 1 and "killed by SIGKILL" in failed[0]["error"], answers
    assert [a["result"]["n"] for a in answers if a["status"] == "succeeded"] in ([0], [1])

    deadline = time.monotonic() + 60  # housekeeping replaces it: min_containers again
    while len([c for c in host.status(app)["containers"] if c["state"] == "ready"]) < 2:
        assert time.monotonic() < deadline, host.status(app)["containers"]
        time.sleep(0.3)
    assert victim not in {c["id"] for c in host.status(app)["containers"]}
    assert post_s(url, token, 7, 0.1)["result"] == {"n": 7}


def post_s(url: str, token: str, n: int, seconds: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps({"n": n, "s": seconds}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())
