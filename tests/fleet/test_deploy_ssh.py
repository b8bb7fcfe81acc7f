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
from beamctl.fleet import rollout, ship
from beamctl.fleet.remote import command_line
from tests.fleet.conftest import hello_on_two_hosts



# --- pure parts ----------------------------------------------------------------------------------------

def test_ship_commands_are_quoted_lists():
    assert ship.inspect_argv("beamctl/hello:abc") == ["docker", "image", "inspect", "--format", "{{.Id}}",
                                                      "beamctl/hello:abc"]
    assert command_line(ship.inspect_argv("beamctl/hello:abc")) == \
        "docker image inspect --format '{{.Id}}' beamctl/hello:abc"
    assert ship.load_argv() == ["sh", "-c", "zstd -d -q | docker load"]
    assert command_line(ship.load_argv()) == "sh -c 'zstd -d -q | docker load'"
    assert ship.save_commands("beamctl/hello:abc") == (["docker", "save", "beamctl/hello:abc"],
                                                       ["zstd", "-q", "-c", "-T0"])


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


def test_one_host_failing_never_hides_another(monkeypatch):
    def one(ssh, entry, *args):
        if entry.name == "down":
            return rollout.failed("down", "down: unreachable: no SSH banner")
        return {"host": entry.name, "status": "ready", "version": 1}

    monkeypatch.setattr(rollout, "deploy_one", one)
    hosts = rollout.deploy_hosts([SimpleNamespace(name="up"), SimpleNamespace(name="down")], None, {}, {}, 1,
                                 print, ssh=object())
    assert [(h["host"], h["status"]) for h in hosts] == [("up", "ready"), ("down", "failed")]
    assert rollout.outcome(hosts) == ExitCode.PARTIAL


def test_a_host_error_becomes_a_failed_result():
    from beamctl.fleet.errors import HostUnreachable

    class Ssh:
        def resolve(self, host, name):
            raise HostUnreachable(name, "no SSH banner from 10.0.0.1 port 22 within 5 s")

    r = rollout.deploy_one(Ssh(), SimpleNamespace(name="gpu1", host=None), None, {}, {}, 1, print)
    assert (r["host"], r["status"], r["version"]) == ("gpu1", "failed", None)
    assert r["reason"] == "gpu1: unreachable: no SSH banner from 10.0.0.1 port 22 within 5 s"


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
    return {m[0]: float(m[1]) for m in re.findall(r"(testhost-\d): sent ([\d.]+) MB", err)}


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
