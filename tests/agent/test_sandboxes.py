"""agent/sandboxes.py through DockerContainers, on the real engine: app containers join network
namespaces made ahead, which outlive them and are taken by the app's next containers."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from beamctl.agent import sandboxes as sb
from beamctl.agent.container_args import LABEL_AGENT, LABEL_APP, LABEL_VERSION
from beamctl.agent.containers import DockerContainers
from tests.agent.test_checkpoint import get_text

IMAGE = "beamctl/base:bookworm-python3.11"
SERVER = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["WHO"].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""

pytestmark = pytest.mark.integration


class Host:
    def __init__(self) -> None:
        docker = pytest.importorskip("docker")
        try:
            self.client = docker.from_env(timeout=120)
            self.client.api.inspect_image(IMAGE)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"no Docker engine or no {IMAGE}: {e}")
        self.api = self.client.api
        self.agent = "sbtest-" + secrets.token_hex(4)
        self.dc = DockerContainers(self.client)

    def args(self, app: str, who: str, image: str = IMAGE, **extra: object) -> dict:
        return {"image": image, "command": ["python3", "-c", SERVER], "name": f"{self.agent}-{who}",
                "environment": {"WHO": who}, "labels": {LABEL_APP: app, LABEL_VERSION: "1", LABEL_AGENT: self.agent},
                "volumes": {}, "nano_cpus": int(1e9), "mem_limit": 256 << 20, **extra}

    def run(self, app: str, who: str, dc: DockerContainers | None = None, **extra: object) -> str:
        dc = dc or self.dc
        cid = dc.create(self.args(app, who, **extra))
        dc.start(cid)
        return cid

    def get(self, address: str) -> str:
        return get_text(address)

    def network_of(self, cid: str) -> str:
        return self.api.inspect_container(cid)["HostConfig"]["NetworkMode"]

    def sandboxes(self, app: str) -> set[str]:
        rows = self.api.containers(all=True, filters={"label": [f"{LABEL_AGENT}={self.agent}",
                                                                 f"{sb.LABEL_SANDBOX}={app}"]})
        return {r["Id"] for r in rows}

    def cleanup(self) -> None:
        for r in self.api.containers(all=True, filters={"label": f"{LABEL_AGENT}={self.agent}"}):
            self.api.remove_container(r["Id"], force=True)


@pytest.fixture
def host():
    h = Host()
    yield h
    h.cleanup()


def test_containers_join_their_own_sandbox_which_outlives_them_and_is_reused(host: Host) -> None:
    a, b = host.run("web", "a"), host.run("web", "b")
    modes = {host.network_of(a), host.network_of(b)}
    assert len(modes) == 2 and all(m.startswith("container:") for m in modes)  # one sandbox each
    sandboxes = host.sandboxes("web")
    assert {m.removeprefix("container:") for m in modes} == sandboxes
    assert host.get(host.dc.address(a)) == "a" and host.get(host.dc.address(b)) == "b"
    assert host.dc.address(a) != host.dc.address(b)
    # the sandboxes do not count as the app's containers (filters by the app's label, list())
    assert host.api.containers(all=True, filters={"label": f"{LABEL_APP}=web"}) != []
    assert {c.id for c in host.dc.list(host.agent)} == {a, b}

    host.dc.stop(a)
    host.dc.remove(a)
    host.dc.stop(b)
    host.dc.remove(b)
    assert host.sandboxes("web") == sandboxes  # kept, running, for the next starts
    c = host.run("web", "c")
    assert host.network_of(c).removeprefix("container:") in sandboxes
    assert host.get(host.dc.address(c)) == "c"  # the port is free again in a reused namespace
    assert host.sandboxes("other") == set()

    host.dc.forget("web")  # the app stopped: its spares go; the one in use stays until its container goes
    assert host.sandboxes("web") == {host.network_of(c).removeprefix("container:")}


def test_a_dead_spare_is_replaced_and_spares_are_bounded(host: Host) -> None:
    first = host.run("web", "a")
    old = host.network_of(first).removeprefix("container:")
    host.dc.remove(first)
    host.api.kill(old)
    second = host.run("web", "b")
    assert host.network_of(second).removeprefix("container:") != old
    assert host.get(host.dc.address(second)) == "b"
    assert old not in host.sandboxes("web")  # discarded when found dead

    extra = [host.run("web", f"x{i}") for i in range(sb.SPARES)]
    for cid in [second, *extra]:
        host.dc.remove(cid)
    assert len(host.sandboxes("web")) == sb.SPARES


def test_a_new_agent_takes_stock_of_sandboxes_in_use_and_spare(host: Host) -> None:
    kept = host.run("web", "kept")
    gone = host.run("web", "gone")
    spare = host.network_of(gone).removeprefix("container:")
    host.dc.remove(gone)

    restarted = DockerContainers(host.client)  # the agent restarted: nothing in memory
    assert [c.id for c in restarted.list(host.agent)] == [kept]
    assert host.get(restarted.address(kept)) == "kept"
    again = host.run("web", "again", dc=restarted)
    assert host.network_of(again) == f"container:{spare}"
    restarted.remove(kept)  # its sandbox becomes a spare of the new agent
    assert len(host.sandboxes("web")) == 2
    restarted.forget("web")
    assert host.sandboxes("web") == {spare}


def test_an_image_that_cannot_hold_a_sandbox_gets_docker_s_network(host: Host, tmp_path: Path) -> None:
    tag = f"beamctl-sbtest/noentry:{host.agent}"
    (tmp_path / "Dockerfile").write_text(f'FROM {IMAGE}\nENTRYPOINT ["/no/such/interpreter"]\n')
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True, capture_output=True)
    try:
        cid = host.dc.create(host.args("odd", "odd", image=tag, entrypoint=["python3"], command=["-c", SERVER]))
        host.dc.start(cid)
        assert not host.network_of(cid).startswith("container:")
        assert host.get(host.dc.address(cid)) == "odd"
        assert host.sandboxes("odd") == set()  # the failed sandbox was not left behind
        host.dc.remove(cid)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
