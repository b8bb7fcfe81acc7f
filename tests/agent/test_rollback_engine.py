"""`beamctl rollback` against the real Docker Engine through the real CLI and a local agent."""

from __future__ import annotations

import pytest

from tests.agent.test_agent_engine import Host

pytestmark = pytest.mark.integration

YAML = """\
keep_warm_seconds: 300
volumes:
  - name: data
    mount_path: /data
"""
CODE = """\
def handler(**inputs):
    if inputs.get("note"):
        with open("/data/notes.txt", "a") as f:
            f.write(inputs["note"] + "\\n")
    return {{"v": {version}}}
"""



def states(host: Host, app: str) -> list[tuple[int, str]]:
    return [(v["version"], v["state"]) for v in host.status(app)["versions"]]


def test_rollback_to_the_previous_version_and_forward_again_volumes_untouched(host):
    app, folder = host.app("rb", YAML, CODE.format(version=1))
    host.ok("deploy", "-f", str(folder))
    assert host.call(app, {"note": "from v1"})["result"] == {"v": 1}
    (folder / "app.py").write_text(CODE.format(version=2))
    host.ok("deploy", "-f", str(folder))
    assert host.call(app)["result"] == {"v": 2}

    back = host.ok("rollback", app)
    assert f"rolled back {app} from v2 to v1" in back.err
    assert host.call(app)["result"] == {"v": 1}
    assert host.status(app)["active_version"] == 1
    assert states(host, app) == [(1, "active"), (2, "rolled_back")]

    again = host.ok("rollback", app, "2")
    assert f"rolled back {app} from v1 to v2" in again.err
    assert host.call(app)["result"] == {"v": 2}
    assert host.status(app)["active_version"] == 2
    assert states(host, app) == [(1, "rolled_back"), (2, "active")]

    assert (host.volume(app) / "notes.txt").read_text() == "from v1\n"
    events = host.ok("logs", app, "-n", "200").err + host.ok("logs", app, "-n", "200").out
    assert "rolled back from v2 to v1" in events and "rolled back from v1 to v2" in events


def test_rollback_with_one_version_is_refused_and_it_keeps_serving(host):
    app, folder = host.app("one", "keep_warm_seconds: 300\n", CODE.format(version=1))
    host.ok("deploy", "-f", str(folder))
    refused = host.beamctl("rollback", app)
    assert refused.code != 0
    assert f"no earlier version of {app} to roll back to" in refused.err
    assert host.call(app)["result"] == {"v": 1}
    assert host.status(app)["active_version"] == 1
