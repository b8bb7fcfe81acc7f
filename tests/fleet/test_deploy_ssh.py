"""`deploy` to SSH hosts (beamctl/fleet/rollout.py, ship.py): pure parts, the rollout over fake hosts
(hosts/fake.py), then two real test hosts.

The real run: examples/hello with `hosts: [testhost-1, testhost-2]` -> both ready and running; the same
image again -> nothing sent; one host paused and a code change -> exit 5, that host failed as
unreachable, the other ready with the new version.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest

from beamctl.errors import ExitCode
from beamctl.fleet import rollout, ship, stream
from beamctl.hosts.fake import FakeHost
from beamctl.protocol.gpus import Gpu
from beamctl.transport.errors import HostUnreachable
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
    ready, down = rollout.HostDeploy("a", "ready", version=2), rollout.failed("b", "on_start raised")
    assert rollout.outcome([ready, ready]) == ExitCode.OK == 0
    assert rollout.outcome([ready, down]) == ExitCode.PARTIAL == 5
    assert rollout.outcome([ready, rollout.skipped("c", "not deployed")]) == ExitCode.PARTIAL
    assert rollout.outcome([down, down]) == ExitCode.FAILURE
    assert rollout.outcome([]) == ExitCode.FAILURE


def test_the_top_level_version_is_there_only_when_every_host_agrees():
    a = rollout.HostDeploy("a", "ready", version=3)
    assert rollout.Deployed("app", "img", [a, replace(a, host="b")]).version == 3
    assert rollout.Deployed("app", "img", [a, replace(a, host="b", version=2)]).version is None
    assert rollout.Deployed("app", "img", [a, rollout.failed("b", "down")]).version is None


def lock_files(root):
    """A FakeHost's answers to the lock operations, from the agent's own lock files in `root` (agent/locks.py)."""
    from beamctl.agent import locks as agent_locks

    def answer(fn):
        return lambda args: {"ok": True, "result": fn(root, **args)}

    return {"lock_acquire": answer(agent_locks.acquire), "lock_renew": answer(agent_locks.renew),
            "lock_release": answer(agent_locks.release), "lock_break": answer(agent_locks.break_)}


def lock_of(root):
    from beamctl.agent import locks as agent_locks

    return agent_locks.read(root, "app")


H100 = Gpu(0, "NVIDIA H100 80GB HBM3", "H100", 81559, "550.54.15")


@pytest.fixture
def fake_fleet(tmp_path):
    """Three fake hosts a, b, c (hosts/fake.py; deploy locks in real lock files); the ship step and the
    build recorded, not done."""
    hosts = {n: FakeHost(n, answers=lock_files(tmp_path / n)) for n in ("a", "b", "c")}
    calls = SimpleNamespace(ship=[], built=0, ship_fail={}, at_ship={})

    def ship_images(remote, ref, image_id, progress):
        assert (ref, image_id) == ("beamctl/app:1", "sha256:1")
        calls.ship.append(sorted(h.name for h in remote))
        calls.at_ship = {h.name: ([op for op, _ in h.asked], lock_of(tmp_path / h.name)) for h in remote}
        return {h.name: HostUnreachable(h.name, calls.ship_fail[h.name]) if h.name in calls.ship_fail else
                ship.ShipResult(h.name, "sent", 10, 0.1) for h in remote}

    def run(prefs=(), max_parallel=None, lock_wait=0.0):
        def build():
            calls.built += 1
            return SimpleNamespace(image="beamctl/app:1", id="sha256:1")

        return rollout.rollout(list(hosts.values()), "app", prefs, build,
                               lambda image: {"app": "app", "image": image.image}, {}, 5.0, lambda e: None,
                               max_parallel=max_parallel, lock_wait=lock_wait, ship=ship_images)

    return SimpleNamespace(hosts=hosts, calls=calls, run=run, root=tmp_path)


def statuses(result):
    return [(h.host, h.status) for h in result.hosts]


def deployed(fake_fleet):
    return [n for n, h in fake_fleet.hosts.items() if "deploy" in h.ops()]


def test_one_host_failing_never_hides_another(fake_fleet):
    fake_fleet.hosts["b"].fail["install"] = HostUnreachable("b", "no SSH banner")
    fake_fleet.calls.ship_fail["c"] = "the image stream broke after 10 bytes"
    result = fake_fleet.run()
    assert statuses(result) == [("a", "ready"), ("b", "failed"), ("c", "failed")]
    assert result.hosts[1].reason == "b: unreachable: no SSH banner"
    assert isinstance(result.hosts[1].error, HostUnreachable)
    assert "the image stream broke" in result.hosts[2].reason
    assert isinstance(result.hosts[2].error, HostUnreachable)
    assert fake_fleet.calls.ship == [["a", "c"]] and deployed(fake_fleet) == ["a"]
    assert fake_fleet.hosts["b"].asked == []  # its install failed: nothing more asked of it
    assert [h.installs for h in fake_fleet.hosts.values()] == [1, 1, 1]
    assert rollout.outcome(result.hosts) == ExitCode.PARTIAL
    assert result.hosts[0].ship["action"] == "sent"
    assert (result.image, result.version) == ("beamctl/app:1", None)


def test_a_rolling_deploy_stops_after_a_failed_batch(fake_fleet):
    fake_fleet.hosts["a"].agent.start_fails[1] = "on_start raised"
    result = fake_fleet.run(max_parallel=1)
    assert statuses(result) == [("a", "failed"), ("b", "skipped"), ("c", "skipped")]
    assert result.hosts[0].reason == "on_start raised" and result.hosts[0].log_tail[-1] == "on_start raised"
    assert deployed(fake_fleet) == ["a"]
    assert "rollout stopped after a failed" in result.hosts[1].reason
    assert rollout.outcome(result.hosts) == ExitCode.FAILURE
    for name in fake_fleet.hosts:
        assert lock_of(fake_fleet.root / name) is None


def test_all_at_once_deploys_every_host_even_when_one_fails(fake_fleet):
    fake_fleet.hosts["a"].agent.start_fails[1] = "on_start raised"
    result = fake_fleet.run()
    assert statuses(result) == [("a", "failed"), ("b", "ready"), ("c", "ready")]
    assert deployed(fake_fleet) == ["a", "b", "c"]
    assert [h.version for h in result.hosts] == [1, 1, 1] and result.version == 1
    assert rollout.outcome(result.hosts) == ExitCode.PARTIAL


def test_a_host_gone_mid_deploy_fails_alone_and_its_lock_is_released(fake_fleet):
    from beamctl.protocol.errors import AgentStopped

    fake_fleet.hosts["b"].fail["deploy"] = ConnectionError("reset")
    result = fake_fleet.run()
    assert statuses(result) == [("a", "ready"), ("b", "failed"), ("c", "ready")]
    assert result.hosts[1].reason == "b: unreachable: the connection broke: reset"
    assert isinstance(result.hosts[1].error, AgentStopped) and result.hosts[1].error.op == "deploy"
    assert [op for op, _ in fake_fleet.hosts["b"].asked][-1] == "lock_release"
    assert lock_of(fake_fleet.root / "b") is None
    assert rollout.outcome(result.hosts) == ExitCode.PARTIAL


def test_the_lock_is_taken_before_shipping_and_released_after(fake_fleet):
    result = fake_fleet.run()
    assert statuses(result) == [("a", "ready"), ("b", "ready"), ("c", "ready")] and result.version == 1
    for name, host in fake_fleet.hosts.items():
        asked_then, lock_then = fake_fleet.calls.at_ship[name]
        assert asked_then == ["version", "lock_acquire"]  # locked when the ship started, nothing deployed
        assert lock_then is not None and lock_then["image"] == "beamctl/app:1"
        assert [op for op, _ in host.asked] == ["version", "lock_acquire", "status", "deploy", "lock_release"]
        assert lock_of(fake_fleet.root / name) is None
        assert not (fake_fleet.root / name / "locks" / "app.json").exists()


def test_a_held_lock_refuses_the_deploy_before_anything_is_sent(fake_fleet):
    from beamctl.agent import locks as agent_locks
    from beamctl.fleet.locks import DeployLocked

    agent_locks.acquire(fake_fleet.root / "b", "app", {"who": "ada@desk", "pid": 7, "at": 0, "image": "x",
                                                        "op": "deploy", "token": "t"})
    with pytest.raises(DeployLocked) as e:
        fake_fleet.run()
    assert "ada@desk" in e.value.message and "b" in e.value.message
    assert fake_fleet.calls.ship == [] and deployed(fake_fleet) == []
    assert not (fake_fleet.root / "a" / "locks" / "app.json").exists()  # a's lock was given back
    assert lock_of(fake_fleet.root / "b")["who"] == "ada@desk"  # b's holder keeps its lock
    assert "lock_acquire" not in [op for op, _ in fake_fleet.hosts["c"].asked]  # refused at b, before c


def test_a_gpu_app_goes_only_where_the_agents_can_place_it(fake_fleet):
    for name in ("b", "c"):
        fake_fleet.hosts[name].agent.gpus = (H100,)
    result = fake_fleet.run(prefs=("H100",))
    assert statuses(result) == [("a", "skipped"), ("b", "ready"), ("c", "ready")]
    assert result.hosts[0].reason == "this host has no GPU (nvidia-smi lists none); the app asks for H100"
    assert fake_fleet.calls.ship == [["b", "c"]]
    assert [op for op, _ in fake_fleet.hosts["a"].asked] == ["version", "check_placement"]  # no lock, no deploy
    assert deployed(fake_fleet) == ["b", "c"]


def test_no_host_for_the_gpu_fails_before_the_build(fake_fleet):
    from beamctl.fleet.placement import NoGpuPlacement

    with pytest.raises(NoGpuPlacement) as e:
        fake_fleet.run(prefs=("H100",))
    assert "no host has a free H100" in e.value.message
    assert fake_fleet.calls.built == 0 and fake_fleet.calls.ship == []
    for host in fake_fleet.hosts.values():
        assert [op for op, _ in host.asked] == ["version", "check_placement"]


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
    """host -> MB sent, from the ship's lines (beamctl/units.py: B, kB, MB or GB)."""
    scale = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}
    return {m[0]: float(m[1]) * scale[m[2]]
            for m in re.findall(r"(testhost-\d): \d+ of \d+ layers, ([\d.]+) (B|kB|MB|GB) sent", err)}


def running_ids(host) -> str:
    out = host.exec(["docker", "ps", "--filter", "label=dev.beamctl.app=hellossh", "--format", "{{.ID}}"])
    (one,) = out.stdout.split()
    return one


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

    # exec: a real command in the running container on the host asked for, over OpenSSH; its status is ours
    done = subprocess.run([sys.executable, "-m", "beamctl", "exec", "hellossh", "--host", "testhost-2", "--",
                           "sh", "-c", "read x; echo got $x | tee /tmp/exec-marker; exit 3"],
                          input="piped\n", capture_output=True, text=True, timeout=60)
    container = running_ids(two[1])
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["got", "piped"]
    assert f"hellossh: container {container[:12]} on testhost-2" in done.stderr
    assert two[1].exec(["docker", "exec", container, "cat", "/tmp/exec-marker"]).stdout == "got piped\n"

    listed = cli("hosts", "ls", "--usage", "--json")  # each host's own numbers, asked of its agent
    assert listed.code == 0, listed.err
    used = json.loads(listed.out)["usage"]
    assert set(used) == {"testhost-1", "testhost-2"}
    assert all(0 < u["mem_used"] < u["mem_total"] and u["cpus"] >= 1 for u in used.values()), used

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


# --- a send cut short (Ctrl-C, the network) -------------------------------------------------------------

LAYER_MB = 6


@pytest.fixture
def three_layer_image(tmp_path):
    """A local image of three layers of random bytes (no host holds any of them): (ref, id)."""
    import os

    import docker

    ref = "beamctl-test/cutship:1"
    for name in "abc":
        (tmp_path / name).write_bytes(os.urandom(LAYER_MB << 20))
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\nCOPY b /b\nCOPY c /c\n")
    client = docker.from_env()
    image, _ = client.images.build(path=str(tmp_path), tag=ref, rm=True)
    yield ref, image.id
    client.images.remove(ref, force=True)
    client.close()


def staged_on(host) -> list[str]:
    from beamctl.protocol.layout import STAGED_ARGV

    return host.exec(list(STAGED_ARGV)).stdout.split()


@pytest.mark.integration
def test_a_cut_send_keeps_the_whole_layers_there_and_the_next_sends_only_the_rest(two, three_layer_image,
                                                                                  monkeypatch):
    import time

    from beamctl.fleet import query
    from beamctl.hosts.inventory import lookup

    two.apply_env(monkeypatch)
    ref, image_id = three_layer_image
    (host,) = query.hosts_of(lookup(["testhost-1"]))
    lines: list = []
    real_write = stream.Fanout.write

    def cut(self, chunk):  # Ctrl-C once 10 MB are out: the first layer (6 MB) is there whole
        if sum(f.state.sent for f in self.feeders) >= 10 << 20:
            time.sleep(0.5)  # what was written reaches the host
            raise KeyboardInterrupt
        while any(f.q.qsize() > 1 for f in self.feeders):  # what is counted is what was written
            time.sleep(0.01)
        return real_write(self, chunk)

    try:
        host.install(lambda _: None)
        monkeypatch.setattr(stream.Fanout, "write", cut)
        with pytest.raises(KeyboardInterrupt):
            ship.ship_images([host], ref, image_id, lines.append)
        monkeypatch.setattr(stream.Fanout, "write", real_write)
        kept: list[str] = []
        for _ in range(50):  # the host's loader sees the stream end and keeps what is whole
            before, kept = kept, staged_on(two[0])
            if kept and kept == before:
                break
            time.sleep(0.3)
        assert 1 <= len(kept) <= 2, kept
        assert two[0].exec(["docker", "image", "inspect", ref], check=False).returncode != 0  # nothing loaded

        got = ship.ship_images([host], ref, image_id, lines.append)["testhost-1"]
        assert got.action == "sent" and got.layers_sent == 3 - len(kept), (got, lines)
        assert got.bytes_sent < (3 - len(kept) + 0.5) * (LAYER_MB << 20)
        assert any(f"{len(kept)} kept there from a cut send" in str(line) for line in lines), lines
        assert two[0].exec(["docker", "image", "inspect", "--format", "{{.Id}}", ref]).stdout.strip() == image_id
        assert staged_on(two[0]) == []  # used, so removed
    finally:
        two[0].exec(["docker", "image", "rm", "-f", ref], check=False)
        host.close()
