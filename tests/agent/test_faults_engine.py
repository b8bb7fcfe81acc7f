"""Faults on the real Docker Engine (issue 13): a killed container, an out-of-memory kill, a removed network
sandbox, a burst from zero, the agent killed during a deploy. Each: the next call succeeds within one
start, the task records and logs say what happened, nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.agent.test_agent_engine import LIFE_CODE, LIFE_YAML, Host, agent_pids, docker, gone

pytestmark = pytest.mark.integration
GONE_WAIT_S = 10  # a dead container leaves the pool within this (the engine's die event)



WARM_YAML = LIFE_YAML.replace("keep_warm_seconds: 2", "keep_warm_seconds: 60")


@pytest.fixture(scope="module")
def warm(host: Host) -> str:
    app, folder = host.app("warm", WARM_YAML, LIFE_CODE.format(version=1))
    host.ok("deploy", "-f", str(folder))
    return app


def running_container(host: Host, app: str) -> str:
    containers = host.status(app)["containers"]
    assert len(containers) == 1, containers
    return containers[0]["id"]


def wait_no_containers(host: Host, app: str) -> float:
    started = time.monotonic()
    while host.status(app)["containers"]:
        assert time.monotonic() - started < GONE_WAIT_S, host.status(app)["containers"]
        time.sleep(0.1)
    return time.monotonic() - started


def logs(host: Host, app: str) -> str:
    return host.ok("logs", app, "-n", "500").err + host.ok("logs", app, "-n", "500").out


def test_a_killed_container_leaves_at_once_and_the_next_call_starts_a_new_one(host, warm):
    assert host.call(warm, {"n": 1})["status"] == "succeeded"
    cid = running_container(host, warm)
    docker("kill", cid)
    wait_no_containers(host, warm)  # no call needed: the engine said so
    after = host.call(warm, {"n": 2})
    assert (after["status"], after["start"]) == ("succeeded", "cold"), after
    assert running_container(host, warm) != cid
    text = logs(host, warm)
    assert f"container {cid} of v1 died: killed by SIGKILL (exit code 137)" in text, text[-2000:]
    assert "scaled to zero" not in text


def test_a_removed_network_sandbox_is_replaced(host, warm):
    assert host.call(warm, {"n": 3})["status"] == "succeeded"
    cid = running_container(host, warm)
    mode = docker("inspect", "--format", "{{.HostConfig.NetworkMode}}", cid).strip()
    assert mode.startswith("container:"), mode
    sandbox = mode.removeprefix("container:")
    docker("rm", "-f", sandbox)
    wait_no_containers(host, warm)
    started = time.monotonic()
    after = host.call(warm, {"n": 4})
    assert (after["status"], after["start"]) == ("succeeded", "cold"), after
    assert time.monotonic() - started < 30
    assert f"container {cid} of v1 died: its network sandbox {sandbox[:12]} stopped" in logs(host, warm)
    assert docker("ps", "-aq", "--filter", f"id={cid}").strip() == ""  # the dead container was removed


OOM_YAML = """\
memory: 128Mi
keep_warm_seconds: 60
"""
OOM_CODE = """\
def handler(**inputs):
    if inputs.get("eat"):
        hog = [bytearray(16 << 20) for _ in range(64)]  # 1 GiB, over the 128Mi limit
        return {"ate": len(hog)}
    return {"ok": True}
"""


def test_an_out_of_memory_kill_fails_the_task_with_the_reason_and_the_next_call_succeeds(host):
    app, folder = host.app("oom", OOM_YAML, OOM_CODE)
    host.ok("deploy", "-f", str(folder))
    assert host.call(app, {})["result"] == {"ok": True}
    cid = running_container(host, app)
    run = host.beamctl("call", app, json.dumps({"eat": True}), "--json")
    assert run.code != 0, run.out
    task = json.loads(run.out)
    assert task["status"] == "failed", task
    assert task["error"] == f"container {cid} of v1 died during the task: killed: out of memory (limit 128Mi)", task
    shown = host.ok("tasks", app).out + host.ok("tasks", app).err
    assert "killed: out of memory (limit 128Mi)" in shown, shown
    after = host.call(app, {})
    assert (after["status"], after["start"], after["result"]) == ("succeeded", "cold", {"ok": True})
    assert f"container {cid} of v1 died: killed: out of memory (limit 128Mi)" in logs(host, app)


BURST_YAML = LIFE_YAML + "workers: 1\n"


def test_a_burst_from_zero_starts_one_container(host):
    app, folder = host.app("burst", BURST_YAML, LIFE_CODE.format(version=1))
    host.ok("deploy", "-f", str(folder))
    host.wait_scaled_to_zero(app)
    before = (host.volume(app) / "starts.txt").read_text().splitlines()
    procs = [subprocess.Popen(host.argv("call", app, json.dumps({"n": i}), "--json"), env=host.env(),
                              cwd=host.apps_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(6)]
    results = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    assert [r["status"] for r in results] == ["succeeded"] * 6, results
    started = (host.volume(app) / "starts.txt").read_text().splitlines()[len(before):]
    assert len(started) == 1, started  # on_start ran once: one container served the whole burst
    ids = {r["task_id"] for r in results}
    tasks = [t for t in host.ok("tasks", app, "--json", "-n", "100").json() if t["task_id"] in ids]
    assert len(tasks) == 6 and len({t["container"] for t in tasks}) == 1, tasks  # the others waited for it


SLOW_START = "\n\ndef slow():\n    import time\n    time.sleep(60)\n"


def test_the_agent_killed_during_a_deploy_leaves_no_version_starting(host):
    app, folder = host.app("ghost", LIFE_YAML.replace("app:setup", "app:slow"), LIFE_CODE.format(version=1)
                           + SLOW_START)
    host.ok("status")  # the agent runs
    deploy = subprocess.Popen(host.argv("deploy", "-f", str(folder)), env=host.env(), cwd=host.apps_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:  # until the agent holds a starting version of the app
        status = host.beamctl("status", app, "--json")
        if status.code == 0 and any(v["state"] == "starting" for v in json.loads(status.out)["apps"][0]["versions"]):
            break
        assert time.monotonic() < deadline and deploy.poll() is None, deploy.communicate()
        time.sleep(0.2)
    pid = host.agent_pid()
    os.kill(pid, signal.SIGKILL)
    while not gone(pid):
        time.sleep(0.02)
    _, err = deploy.communicate(timeout=60)
    assert deploy.returncode != 0, err
    versions = host.status(app)["versions"]  # a new agent starts and recovers
    assert [(v["state"], v["reason"]) for v in versions] == [("failed", "the agent stopped during its start")]
    assert agent_pids(host.agent_dir) == [host.agent_pid()]
    assert docker("ps", "-aq", "--filter", f"label=dev.beamctl.app={app}").split() == []  # nothing left
