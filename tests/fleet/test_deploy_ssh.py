"""`deploy` to SSH hosts (beamctl/fleet/rollout.py, ship.py): pure parts, then two real test hosts.

The real run: examples/hello with `hosts: [testhost-1, testhost-2]` -> both ready and running; the same
image again -> nothing sent; one host paused and a code change -> exit 5, that host failed as
unreachable, the other ready with the new version.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from beamctl.errors import ExitCode
from beamctl.fleet import rollout, ship, stream
from beamctl.transport.remote import command_line
from tests.fleet.conftest import hello_on_two_hosts



# --- pure parts ----------------------------------------------------------------------------------------

def test_ship_commands_are_quoted_lists():
    assert ship.inspect_argv("beamctl/hello:abc") == ["docker", "image", "inspect", "--format", "{{.Id}}",
                                                      "beamctl/hello:abc"]
    assert command_line(ship.inspect_argv("beamctl/hello:abc")) == \
        "docker image inspect --format '{{.Id}}' beamctl/hello:abc"
    assert stream.load_argv() == ["/opt/beamctl/agent/venv/bin/python", "-m", "beamctl.agent.load_image"]
    assert command_line(stream.load_argv()) == "/opt/beamctl/agent/venv/bin/python -m beamctl.agent.load_image"


def test_the_exit_code_says_all_some_or_none():
    ready, down = {"status": "ready"}, {"status": "failed"}
    assert rollout.outcome([ready, ready]) == ExitCode.OK == 0
    assert rollout.outcome([ready, down]) == ExitCode.PARTIAL == 5
    assert rollout.outcome([down, down]) == ExitCode.FAILURE
    assert rollout.outcome([]) == ExitCode.FAILURE


def test_the_top_level_version_is_there_only_when_every_host_agrees():
    a = {"host": "a", "status": "ready", "version": 3}
    assert rollout.summary("app", "img", [a, {**a, "host": "b"}])["version"] == 3
    assert rollout.summary("app", "img", [a, {**a, "host": "b", "version": 2}])["version"] is None
    assert rollout.summary("app", "img", [a, rollout.failed("b", "down")])["version"] is None


class FakeAgent:
    """A host's agent as rollout sees it: version/check_placement answers and a real lock file."""

    def __init__(self, root, name, gpus=(), refuse=None):
        self.root, self.name, self.gpus, self.refuse, self.ops = root / name, name, list(gpus), refuse, []

    def request(self, op, timeout=None, **args):
        from beamctl.agent import locks as agent_locks

        self.ops.append(op)
        if op == "version":
            return {"ok": True, "result": {"version": "1", "gpus": self.gpus}}
        if op == "check_placement":
            return {"ok": False, "error": self.refuse} if self.refuse else {"ok": True, "result": None}
        if op == "lock_acquire":
            return {"ok": True, "result": agent_locks.acquire(self.root, args["app"], args["holder"])}
        if op == "lock_release":
            return {"ok": True, "result": agent_locks.release(self.root, args["app"], args["token"])}
        raise AssertionError(op)

    def close(self):
        pass


@pytest.fixture
def fake_fleet(tmp_path, monkeypatch):
    """Three hosts a, b, c with fake agents; install, ship and the agent's deploy recorded, not done."""
    from beamctl.fleet import query

    agents = {n: FakeAgent(tmp_path, n) for n in ("a", "b", "c")}
    calls = SimpleNamespace(install=[], ship=[], deploy=[], built=0, install_fail={}, ship_fail={}, deploy_fail={})
    monkeypatch.setattr(query, "HostAgent", lambda entry, ssh: agents[entry.name])

    def install_all(ssh, entries, progress):
        calls.install += [e.name for e in entries]
        return {e.name: (rollout.failed(e.name, calls.install_fail[e.name]) if e.name in calls.install_fail
                         else SimpleNamespace(action="current")) for e in entries}

    def ship_images(ssh, hosts, ref, image_id, progress):
        from beamctl.transport.errors import HostUnreachable

        calls.ship.append(sorted(hosts))
        return {h: HostUnreachable(h, calls.ship_fail[h]) if h in calls.ship_fail else
                ship.ShipResult(h, "sent", 10, 0.1) for h in hosts}

    def deploy_request(ssh, entry, spec_json, secret_values, health_timeout, progress):
        calls.deploy.append(entry.name)
        if entry.name in calls.deploy_fail:
            return {**rollout.failed(entry.name, calls.deploy_fail[entry.name]), "serving": 1}
        return {"host": entry.name, "status": "ready", "version": 2, "reason": None}

    monkeypatch.setattr(rollout, "install_all", install_all)
    monkeypatch.setattr(ship, "ship_images", ship_images)
    monkeypatch.setattr(rollout, "deploy_request", deploy_request)

    def run(prefs=(), max_parallel=None, lock_wait=0.0):
        def build():
            calls.built += 1
            return SimpleNamespace(image="beamctl/app:1", id="sha256:1")

        entries = [SimpleNamespace(name=n, host=n) for n in agents]
        return rollout.rollout(entries, "app", prefs, build, lambda image: {"image": image.image}, {}, 5.0,
                               lambda e: None, max_parallel=max_parallel, lock_wait=lock_wait, ssh=object())

    return SimpleNamespace(agents=agents, calls=calls, run=run, root=tmp_path)


def statuses(result):
    return [(h["host"], h["status"]) for h in result["hosts"]]


def test_one_host_failing_never_hides_another(fake_fleet):
    fake_fleet.calls.install_fail["b"] = "b: unreachable: no SSH banner"
    fake_fleet.calls.ship_fail["c"] = "the image stream broke after 10 bytes"
    result = fake_fleet.run()
    assert statuses(result) == [("a", "ready"), ("b", "failed"), ("c", "failed")]
    assert result["hosts"][1]["reason"] == "b: unreachable: no SSH banner"
    assert "the image stream broke" in result["hosts"][2]["reason"]
    assert fake_fleet.calls.ship == [["a", "c"]] and fake_fleet.calls.deploy == ["a"]
    assert rollout.outcome(result["hosts"]) == ExitCode.PARTIAL
    assert result["hosts"][0]["ship"]["action"] == "sent"


def test_a_rolling_deploy_stops_after_a_failed_batch(fake_fleet):
    fake_fleet.calls.deploy_fail["a"] = "on_start raised"
    result = fake_fleet.run(max_parallel=1)
    assert statuses(result) == [("a", "failed"), ("b", "skipped"), ("c", "skipped")]
    assert fake_fleet.calls.deploy == ["a"]
    assert "rollout stopped after a failed" in result["hosts"][1]["reason"]
    assert rollout.outcome(result["hosts"]) == ExitCode.FAILURE


def test_all_at_once_deploys_every_host_even_when_one_fails(fake_fleet):
    fake_fleet.calls.deploy_fail["a"] = "on_start raised"
    result = fake_fleet.run()
    assert statuses(result) == [("a", "failed"), ("b", "ready"), ("c", "ready")]


def test_the_lock_is_taken_before_shipping_and_released_after(fake_fleet):
    fake_fleet.run()
    for agent in fake_fleet.agents.values():
        assert agent.ops == ["version", "lock_acquire", "lock_release"]
        assert not (agent.root / "locks" / "app.json").exists()


def test_a_held_lock_refuses_the_deploy_before_anything_is_sent(fake_fleet):
    from beamctl.agent import locks as agent_locks
    from beamctl.fleet.locks import DeployLocked

    agent_locks.acquire(fake_fleet.root / "b", "app", {"who": "ada@desk", "pid": 7, "at": 0, "image": "x",
                                                        "op": "deploy", "token": "t"})
    with pytest.raises(DeployLocked) as e:
        fake_fleet.run()
    assert "ada@desk" in e.value.message and "b" in e.value.message
    assert fake_fleet.calls.ship == [] and fake_fleet.calls.deploy == []
    assert not (fake_fleet.root / "a" / "locks" / "app.json").exists()  # a's lock was given back


def test_a_gpu_app_goes_only_where_the_agents_can_place_it(fake_fleet):
    fake_fleet.agents["a"].refuse = "this host has no H100 (it has: none)"
    result = fake_fleet.run(prefs=("H100",))
    assert statuses(result) == [("a", "skipped"), ("b", "ready"), ("c", "ready")]
    assert fake_fleet.calls.ship == [["b", "c"]]


def test_no_host_for_the_gpu_fails_before_the_build(fake_fleet):
    from beamctl.fleet.placement import NoGpuPlacement

    for agent in fake_fleet.agents.values():
        agent.refuse = "this host has no H100 (it has: none)"
    with pytest.raises(NoGpuPlacement):
        fake_fleet.run(prefs=("H100",))
    assert fake_fleet.calls.built == 0 and fake_fleet.calls.ship == []


# --- two real hosts ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two(fleet):
    return fleet(2)


@pytest.fixture
def app_dir(tmp_path):
    yield from hello_on_two_hosts(tmp_path, "hellossh")


def deploy(cli, app_dir):
    result = cli("deploy", "-f", str(app_dir), "--json")
    data = json.loads(result.out) if result.out.strip() else None
    return result, data


def sent_bytes(err: str) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(r"(testhost-\d): \d+ of \d+ layers, ([\d.]+) MB sent", err)}


def running_images(host) -> list[str]:
    out = host.exec(["docker", "ps", "--filter", "label=dev.beamctl.app=hellossh", "--format", "{{.Image}}"])
    return out.stdout.split()


@pytest.mark.integration
def test_deploy_to_two_hosts_then_nothing_sent_then_partial(cli, two, app_dir, monkeypatch):
    two.apply_env(monkeypatch)
    first, data = deploy(cli, app_dir)
    assert first.code == 0, first.err
    assert [(h["host"], h["status"]) for h in data["hosts"]] == [("testhost-1", "ready"), ("testhost-2", "ready")]
    assert data["version"] == data["hosts"][0]["version"] and data["version"] is not None
    sent = sent_bytes(first.err)
    assert set(sent) == {"testhost-1", "testhost-2"} and all(mb > 1 for mb in sent.values()), first.err
    image = data["image"]
    for host in two:
        assert running_images(host) == [image]

    again, data2 = deploy(cli, app_dir)
    assert again.code == 0, again.err
    assert data2["image"] == image and sent_bytes(again.err) == {}
    for name in ("testhost-1", "testhost-2"):
        assert f"{name}: {image} is present; nothing sent" in again.err
        assert f"{name}: agent" in again.err and "is current; nothing sent" in again.err

    (app_dir / "app.py").write_text((app_dir / "app.py").read_text().replace('"hello"', '"hi"'))
    two[1].pause()
    try:
        partial, data3 = deploy(cli, app_dir)
    finally:
        two[1].unpause()
    assert partial.code == ExitCode.PARTIAL == 5, partial.err
    one, down = data3["hosts"]
    assert (one["host"], one["status"]) == ("testhost-1", "ready") and one["version"] > data["version"]
    assert (down["host"], down["status"], down["version"]) == ("testhost-2", "failed", None)
    assert "unreachable" in down["reason"]
    assert data3["image"] != image and data3["version"] is None
    assert "partial deploy: 1 of 2 hosts" in partial.err
    assert data3["image"] in running_images(two[0])
    assert running_images(two[1]) == [image]  # the paused host keeps serving its old version
