"""The pool's fault handling on fakes of our own Containers interface (the engine tier is
test_faults_engine.py): one start at a time from zero, a dead container leaves at once, and how a
container's death is told."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from beamctl.agent.container_args import death_reason, size_text
from beamctl.agent.pool import Pool, StartFailed
from beamctl.agent.housekeeping import STARTING_AT_DEATH
from beamctl.agent.service import Agent
from beamctl.agent.store import Store


class Runtime(BaseHTTPRequestHandler):
    """A stand-in runtime: READY at once, echoes a task's inputs."""

    def do_GET(self) -> None:  # noqa: N802
        self._send({"state": "READY", "timings": {}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send({"status": "succeeded", "result": body["inputs"], "timings": {}})

    def _send(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class FakeContainers:
    """Containers (agent/containers.py) whose "containers" are HTTP servers on loopback."""

    def __init__(self, create_delay: float = 0.0) -> None:
        self.create_delay = create_delay
        self.created: list[str] = []
        self.servers: dict[str, ThreadingHTTPServer] = {}
        self.dead: dict[str, str] = {}

    def has_image(self, ref: str) -> bool:
        return True

    def usage(self, ids: list[str]) -> tuple[dict, dict]:
        return {}, {}  # no numbers from a fake engine

    def create(self, args: dict) -> str:
        time.sleep(self.create_delay)  # the engine takes its time: other tasks arrive meanwhile
        cid = f"c{len(self.created):063d}"
        self.created.append(cid)
        return cid

    def start(self, cid: str) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers[cid] = server
        return f"127.0.0.1:{server.server_address[1]}"

    def kill(self, cid: str, why: str) -> None:
        self.dead[cid] = why
        server = self.servers.pop(cid)
        server.shutdown()
        server.server_close()

    def exit_code(self, cid: str) -> int | None:
        return 137 if cid in self.dead else None

    def death(self, cid: str) -> str | None:
        return self.dead.get(cid)

    def stop(self, cid: str) -> None:
        if cid in self.servers:
            self.kill(cid, "stopped")

    def remove(self, cid: str) -> None:
        pass

    def logs(self, cid: str, tail: int | None = None) -> list:
        return []

    def list(self, agent_id: str) -> list:
        return []

    def forget(self, app: str) -> None:
        pass


def pool_of(containers: FakeContainers, workers: int = 1) -> tuple[Pool, list[str]]:
    events: list[str] = []
    pool = Pool("demo", containers, lambda v: {"image": "img", "name": "n"}, workers, 60, events.append,
                lambda live: containers.stop(live.id))
    pool.version = 1
    return pool, events


def test_a_burst_from_zero_starts_one_container_and_the_tasks_wait_for_it():
    containers = FakeContainers(create_delay=0.3)
    pool, events = pool_of(containers, workers=1)
    served: list[str] = []

    def task() -> None:
        live = pool.acquire(timeout=30)
        served.append(live.id)
        time.sleep(0.01)
        pool.release(live)

    threads = [threading.Thread(target=task) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(containers.created) == 1, containers.created
    assert served == containers.created * 8
    assert events.count("cold start of v1") == 1


def test_a_dead_container_leaves_the_pool_and_the_next_task_starts_another():
    containers = FakeContainers()
    pool, _ = pool_of(containers)
    first = pool.acquire(timeout=10)
    pool.release(first)
    containers.kill(first.id, "killed by SIGKILL (exit code 137)")
    assert pool.lose(first, "killed by SIGKILL (exit code 137)") is True
    assert pool.lose(first, "again") is False  # told once: retired once
    assert (first.state, first.death, pool.live) == ("dead", "killed by SIGKILL (exit code 137)", [])
    second = pool.acquire(timeout=10)
    assert second.id != first.id and len(containers.created) == 2
    assert second.request("POST", "/tasks", {"inputs": {"n": 1}}, timeout=5) == \
        (200, {"status": "succeeded", "result": {"n": 1}, "timings": {}})


def test_a_failed_create_fails_the_task_and_lets_the_next_one_try():
    containers = FakeContainers()
    calls = {"n": 0}
    real_create = containers.create

    def create(args: dict) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("no space left on device")
        return real_create(args)

    containers.create = create  # type: ignore[method-assign]
    pool, _ = pool_of(containers)
    with pytest.raises(StartFailed, match="could not create a container: RuntimeError: no space left on device"):
        pool.acquire(timeout=10)
    assert pool.acquire(timeout=10).id == containers.created[0]  # not wedged by the first failure


# --- why a container died (the engine's inspect) ------------------------------------------------------

def inspect(running: bool = False, code: int = 0, oom: bool = False, memory: int = 0, error: str = "") -> dict:
    return {"State": {"Running": running, "ExitCode": code, "OOMKilled": oom, "Error": error},
            "HostConfig": {"Memory": memory}}


def test_death_reasons():
    assert death_reason(inspect(running=True)) is None
    assert death_reason(inspect(code=137, oom=True, memory=256 << 20)) == "killed: out of memory (limit 256Mi)"
    assert death_reason(inspect(code=137, oom=True)) == "killed: out of memory"
    assert death_reason(inspect(code=137)) == "killed by SIGKILL (exit code 137)"
    assert death_reason(inspect(code=143)) == "killed by SIGTERM (exit code 143)"
    assert death_reason(inspect(code=1)) == "exited with code 1"
    assert death_reason(inspect(code=0)) == "exited with code 0"
    assert death_reason(inspect(code=128 + 77)) == "killed by signal 77 (exit code 205)"
    assert death_reason(inspect(code=127, error="exec: no such file")) == "exited with code 127: exec: no such file"
    assert [size_text(n) for n in (256 << 20, 1 << 30, 1536 << 20, 3 << 10, 1000)] == \
        ["256Mi", "1Gi", "1536Mi", "3Ki", "1000 bytes"]


# --- the agent's side -------------------------------------------------------------------------------

def test_versions_starting_when_the_agent_died_are_failed_at_its_start_and_free_their_gpus(tmp_path: Path):
    store = Store(tmp_path / "agent.db")
    store.ensure_app("demo", "tok")
    v1 = store.new_version("demo", "img", {"workers": 1, "keep_warm_s": 60, "gpu_devices": [0]})
    agent = Agent(tmp_path, FakeContainers(), gpus=[])
    agent.recover()
    row = agent.store.version("demo", v1)
    assert (row["state"], row["reason"]) == ("failed", STARTING_AT_DEATH)
    assert agent.state.taken(None) == {}


def serving_agent(tmp_path: Path) -> tuple[Agent, FakeContainers, int]:
    """An agent on fakes serving app "demo" (v1), one call made: (agent, containers, version)."""
    containers = FakeContainers()
    agent = Agent(tmp_path, containers, gpus=[])
    agent.store.ensure_app("demo", "tok")
    version = agent.store.new_version("demo", "img", {"workers": 1, "keep_warm_s": 60, "timeout_s": 5})
    agent.store.set_active("demo", version)
    agent.state.pool("demo").make_args = lambda v: {"image": "img", "name": "n"}
    assert agent.call("demo", {"n": 1})["status"] == "succeeded"
    return agent, containers, version


def test_a_container_that_died_during_a_task_fails_it_with_the_reason_and_the_next_task_succeeds(tmp_path):
    agent, containers, version = serving_agent(tmp_path)
    pool = agent.state.pool("demo")
    cid = containers.created[0]
    containers.kill(cid, "killed: out of memory (limit 256Mi)")
    failed = agent.call("demo", {"n": 2})
    assert (failed["status"], failed["error"]) == (
        "failed", f"container {cid[:12]} of v{version} died during the task: killed: out of memory (limit 256Mi)")
    assert pool.live == []
    again = agent.call("demo", {"n": 3})
    assert again["status"] == "succeeded" and again["result"] == {"n": 3} and len(containers.created) == 2
    events = [message for _, message in agent.store.events("demo", 0)]
    assert f"container {cid[:12]} of v{version} died: killed: out of memory (limit 256Mi)" in events
    assert not any("scaled to zero" in e for e in events)


def test_an_engine_die_event_takes_the_container_out_before_any_task_hits_it(tmp_path):
    agent, containers, version = serving_agent(tmp_path)
    cid = containers.created[0]
    containers.kill(cid, "killed by SIGKILL (exit code 137)")
    assert agent.container_died(cid, "killed by SIGKILL (exit code 137)") is True
    assert agent.container_died(cid, "killed by SIGKILL (exit code 137)") is False
    assert agent.status("demo")["apps"][0]["containers"] == []
    assert agent.call("demo", {"n": 2})["status"] == "succeeded"  # no task pays for the death


def test_a_failed_request_while_the_engine_does_not_answer_either_is_said_and_the_container_leaves(tmp_path):
    agent, containers, version = serving_agent(tmp_path)
    cid = containers.created[0]
    containers.kill(cid, "")

    def engine_down(container_id: str) -> str | None:
        raise ConnectionError("docker.sock refused")

    containers.death = engine_down  # type: ignore[method-assign]
    failed = agent.call("demo", {"n": 2})
    assert failed["error"] == (f"container {cid[:12]} of v{version} died during the task: it stopped answering, "
                               "and so did the Docker Engine (ConnectionError: docker.sock refused)")
    assert agent.status("demo")["apps"][0]["containers"] == []


def test_a_deploy_with_the_apps_fleet_token_replaces_this_hosts_only_once_it_is_ready(tmp_path):
    from beamctl.agent import tokens

    agent = Agent(tmp_path, FakeContainers(), gpus=[])
    spec = {"app": "demo", "image": "img", "workers": 1, "keep_warm_s": 60, "timeout_s": 5}
    first = agent.deploy(spec, {}, health_timeout=10)
    assert first["status"] == "ready"
    here, fleet = first["token"], "f" * 43
    with pytest.raises(Exception) as e:
        agent.deploy({**spec, "image": "img2"}, {}, health_timeout=10, token="short")
    assert "at least 32 characters" in str(e.value)
    assert tokens.matches(here, agent.store.token_digest("demo"))

    again = agent.deploy({**spec, "image": "img3"}, {}, health_timeout=10, token=fleet)
    assert again["token"] == fleet and tokens.matches(fleet, agent.store.token_digest("demo"))
    assert not tokens.matches(here, agent.store.token_digest("demo"))
    said = [e["text"] for e in agent.logs("demo") if "one of all its hosts" in e["text"]]
    assert len(said) == 1
    same = agent.deploy({**spec, "image": "img4"}, {}, health_timeout=10, token=fleet)
    assert same["token"] == fleet and len([e for e in agent.logs("demo") if "one of all its hosts" in e["text"]]) == 1
