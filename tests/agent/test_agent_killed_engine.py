"""The agent killed (kill -9, by the pid in DATA/agent.json) mid-deploy and mid-call, on the real engine
through the real CLI (issue 13, items 3 and 6): the deploy lock it leaves is taken over by the rerun
(a live holder's is not), and a call cut off names its task, which `tasks` then shows `lost`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_agent_engine import Host, gone

pytestmark = pytest.mark.integration
WAIT_S = 90  # a deploy (image reused) reaching on_start, a call reaching its handler, on a loaded machine

YAML = """\
on_start: app:setup
keep_warm_seconds: 60
volumes:
  - name: data
    mount_path: /data
"""
CODE = """\
import os, time


def setup():  # while /data/hold exists (the test makes it), on_start waits: a deploy held mid-start
    if os.path.exists("/data/hold"):
        open("/data/waiting", "w").close()
        deadline = time.time() + 120
        while os.path.exists("/data/hold") and time.time() < deadline:
            time.sleep(0.05)


def handler(**inputs):
    if inputs.get("block"):  # a task that runs until the test has killed the agent
        open("/data/running", "w").close()
        time.sleep(120)
    return {"ok": True}
"""



@pytest.fixture(scope="module")
def app(host: Host) -> tuple[str, Path]:
    name, folder = host.app("fault", YAML, CODE)
    host.ok("build", "-f", str(folder))  # every deploy below reuses it: they reach on_start in seconds
    return name, folder


def start(host: Host, *args: str) -> subprocess.Popen:
    return subprocess.Popen(host.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=host.env(), cwd=host.apps_dir)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{path.name} never appeared (exit {proc.returncode}):\n{err}")
        time.sleep(0.05)


def kill_agent(host: Host) -> int:
    pid = host.agent_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return pid


def test_a_dead_deploys_lock_is_taken_over_by_the_rerun_and_a_live_ones_is_not(host, app):
    name, folder = app
    data = host.volume(name)
    data.mkdir(parents=True, exist_ok=True)
    (data / "hold").touch()
    first = start(host, "deploy", "-f", str(folder))
    wait_for(data / "waiting", first)  # the first deploy holds the lock and waits for on_start

    refused = host.beamctl("deploy", "-f", str(folder))
    assert refused.code == 1, refused.err
    assert f"error: local: {name} is locked by " in refused.err and f"(pid {first.pid}) since " in refused.err
    assert "took over" not in refused.err

    kill_agent(host)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 3, err
    assert err.splitlines()[-3:] == [
        f"local: could not release the deploy lock of {name} (the agent is not answering); the next deploy "
        f"will take it over as stale",
        f"error: the agent stopped during the deploy of {name}",
        "hint: deploy again: the agent starts again, and takes this deploy's lock over as stale"]
    assert "internal error" not in err and "Error" not in err

    (data / "hold").unlink()
    rerun = host.ok("deploy", "-f", str(folder))
    took = [line for line in rerun.err.splitlines() if "took over" in line]
    assert len(took) == 1 and re.fullmatch(
        rf"local: took over the deploy lock of {name} from \S+ \(pid {first.pid}\) since [0-9:]+, \d+ s ago: "
        rf"deploy of beamctl/{name}:\w+; its holder is gone: pid {first.pid} has exited", took[0]), took
    assert host.status(name)["lock"] is None  # released at the end, as always


def test_a_call_cut_off_by_the_agents_death_names_its_task_which_shows_lost(host, app):
    name, folder = app
    data = host.volume(name)
    (data / "hold").unlink(missing_ok=True)
    host.ok("deploy", "-f", str(folder))  # unchanged after the test above: quick
    call = start(host, "call", name, json.dumps({"block": True}))
    wait_for(data / "running", call)

    kill_agent(host)
    task = lost_task(host, name, call)
    assert task["status"] == "lost"
    assert task["error"] == "the agent stopped while the task ran"


def lost_task(host: Host, name: str, call: subprocess.Popen) -> dict[str, Any]:
    """The call cut off by the agent's death: it names its task (exit 3); that task's record, as `tasks` shows
    it once the agent is back."""
    out, err = call.communicate(timeout=60)
    assert call.returncode == 3 and out == "", err
    found = re.fullmatch(rf"error: the agent stopped during task (t-[0-9a-f]{{12}}) of {name}; it will show as "
                         rf"lost in: beamctl tasks {name}\n", err)
    assert found, err
    tasks = {t["task_id"]: t for t in host.ok("tasks", name, "--json").json()}  # starts the agent again
    return tasks[found.group(1)]
