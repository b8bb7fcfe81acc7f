"""The front door on one machine (agent/gateway.py with Debian's real HAProxy, agent/exposure.py): HAProxy
in front of stub agents' real endpoints (http_api) on loopback. The token checked at the door by its
digest (the file holds none), 401 for an unknown app as for a wrong token, 503 for a stopped app, TLS,
a reload under traffic that fails no request, a refused configuration that changes nothing, a killed
HAProxy started again, a server that stops leaving the rotation, and an agent's gateway listener that
answers its gateway only. The three-host story is tests/fleet/test_gateway.py."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from beamctl.agent import gateway, http_api, tokens
from beamctl.agent.exposure import Exposure
from beamctl.protocol.errors import AgentError
from tests.integration.conftest import need

TOKEN = "d" * 43


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stub:
    """An agent as http_api sees it: one app, `demo`, with TOKEN; counts its tasks."""

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, 0
        self.store = SimpleNamespace(token_digest=lambda app: tokens.digest(TOKEN) if app == "demo" else None)

    def input_limit(self, app):
        return 1 << 20

    def call(self, app, inputs):
        self.calls += 1
        return {"task_id": f"t-{self.calls:012x}", "status": "succeeded", "start": "warm",
                "result": {"on": self.name, **inputs}, "error": None}


@pytest.fixture
def backends():
    servers = []

    def start(n: int = 2):
        for i in range(n):
            stub = Stub(f"h{i + 1}")
            servers.append((stub, http_api.serve(stub, "127.0.0.1", 0)))
        return servers

    yield start
    for _, s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def data_dir(tmp_path):
    need("haproxy")  # /usr/sbin/haproxy also when CI's PATH has no sbin folder
    assert gateway.binary(), "the agent would not find the HAProxy that is installed"
    d = tmp_path / "agent"
    d.mkdir(mode=0o700)
    yield d
    for pid in gateway.pids(d):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "k.pem"),
                    "-out", str(d / "c.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    pem = (d / "c.pem").read_text() + (d / "k.pem").read_text()
    return SimpleNamespace(ca=d / "c.pem", pem=pem)


def door(port: int, servers, app: str = "demo", tls: bool = False, token: str = TOKEN) -> gateway.Door:
    return gateway.Door(app, port, "127.0.0.1", tls, hashlib.sha256(token.encode()).hexdigest(),
                        tuple((stub.name, f"127.0.0.1:{srv.server_address[1]}") for stub, srv in servers))


def post(port: int, token: str | None = TOKEN, app: str = "demo", ca: Path | None = None,
         conn: http.client.HTTPConnection | None = None) -> tuple[int, dict]:
    c = conn or (http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                             context=ssl.create_default_context(cafile=str(ca)))
                 if ca else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    c.request("POST", f"/apps/{app}", body=b'{"x": 1}',
              headers={"Authorization": f"Bearer {token}"} if token else {})
    r = c.getresponse()
    body = json.loads(r.read() or b"{}")
    if conn is None:
        c.close()
    return r.status, body


def wait_for(pred, timeout: float = 10.0, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


def test_the_door_checks_the_token_by_its_digest_and_balances(data_dir, backends, cert):
    servers = backends(2)
    port = free_port()
    gateway.set_door(data_dir, door(port, servers, tls=True), cert.pem)
    wait_for(lambda: all(s["state"] == "UP" for s in gateway.status(data_dir)["apps"][0]["servers"]))
    answers = [post(port, ca=cert.ca) for _ in range(10)]
    assert {code for code, _ in answers} == {200}
    assert {body["result"]["on"] for _, body in answers} == {"h1", "h2"}  # both hosts serve
    assert sum(stub.calls for stub, _ in servers) == 10  # each request ran once
    wrong, none, unknown = post(port, "x" * 43, ca=cert.ca), post(port, None, ca=cert.ca), post(port, app="nope", ca=cert.ca)
    assert wrong[0] == none[0] == unknown[0] == 401
    assert wrong[1] == unknown[1]  # an unknown app looks like a wrong token: names are not disclosed
    assert sum(stub.calls for stub, _ in servers) == 10  # refused at the door: no agent saw them
    folder = gateway.folder(data_dir)
    cfg = (folder / "haproxy.cfg").read_text()
    assert TOKEN not in cfg and hashlib.sha256(TOKEN.encode()).hexdigest() in cfg
    for path in (folder / "haproxy.cfg", folder / "apps" / "demo.json", folder / "certs" / str(port) / "demo.pem"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    with pytest.raises(ssl.SSLError):  # TLS only, with the user's certificate
        post(port, ca=None, conn=http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                                              context=ssl.create_default_context()))


def test_a_stopped_app_answers_503_and_an_update_keeps_the_rest(data_dir, backends):
    servers = backends(1)
    port = free_port()
    gateway.set_door(data_dir, door(port, servers), None)
    gateway.set_door(data_dir, door(port, [], app="other", token="o" * 43), None)
    code, body = post(port, "o" * 43, app="other")
    assert code == 503 and "stopped" in body["error"]
    wait_for(lambda: post(port)[0] == 200)
    assert gateway.remove_door(data_dir, "other") and not gateway.remove_door(data_dir, "other")
    assert post(port, "o" * 43, app="other")[0] == 401
    gateway.remove_door(data_dir, "demo")  # no route left: HAProxy leaves
    wait_for(lambda: not gateway.pids(data_dir))
    with pytest.raises(OSError):
        post(port)


def test_reloads_under_traffic_fail_no_request(data_dir, backends):
    """Five reloads while six keep-alive clients send tasks: every task answered, none run twice. A reload
    closes the old HAProxy's idle keep-alive connections (HAProxy 2.6; 2.7's idle-close-on-response waits
    for the next response): a client that finds its idle connection closed resends on a new one, as HTTP
    clients do: the door closes only idle connections, so that request never arrived."""
    servers = backends(2)
    port = free_port()
    gateway.set_door(data_dir, door(port, servers), None)
    wait_for(lambda: post(port)[0] == 200)
    before = sum(stub.calls for stub, _ in servers)
    results: list = []
    stale: list = []
    stop = threading.Event()

    def client() -> None:
        conn, used = http.client.HTTPConnection("127.0.0.1", port, timeout=10), 0
        while not stop.is_set():
            try:
                results.append(post(port, conn=conn)[0])
                used += 1
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected) as e:
                if used == 0:  # a fresh connection that failed: a real failure
                    results.append(repr(e))
                stale.append(repr(e))
                conn.close()
                conn, used = http.client.HTTPConnection("127.0.0.1", port, timeout=10), 0
            except (OSError, http.client.HTTPException) as e:
                results.append(repr(e))
                conn, used = http.client.HTTPConnection("127.0.0.1", port, timeout=10), 0

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    seen = set(gateway.pids(data_dir))
    for i in range(5):
        time.sleep(0.3)
        order = servers if i % 2 else list(reversed(servers))
        gateway.set_door(data_dir, door(port, order), None)
        seen |= set(gateway.pids(data_dir))
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert len(seen) >= 5  # each change started a new HAProxy that took the sockets over
    failed = [r for r in results if r != 200]
    assert len(results) > 100 and not failed, (len(results), failed[:5])
    assert sum(stub.calls for stub, _ in servers) - before == len(results)  # none ran twice, none lost
    assert len(stale) <= 6 * 5, stale  # at most each client's idle connection, once per reload


def test_a_refused_configuration_changes_nothing(data_dir, backends, cert):
    servers = backends(1)
    port = free_port()
    gateway.set_door(data_dir, door(port, servers, tls=True), cert.pem)
    before = (gateway.folder(data_dir) / "haproxy.cfg").read_text()
    pid = gateway.newest_pid(data_dir)
    with pytest.raises(AgentError, match="HAProxy refused"):
        gateway.set_door(data_dir, door(port, servers, tls=True), "-----BEGIN CERTIFICATE-----\nnot one\n")
    assert (gateway.folder(data_dir) / "haproxy.cfg").read_text() == before
    assert gateway.newest_pid(data_dir) == pid
    assert (gateway.folder(data_dir) / "certs" / str(port) / "demo.pem").read_text() == cert.pem
    assert wait_for(lambda: post(port, ca=cert.ca)[0] == 200)
    other = free_port()
    with pytest.raises(AgentError, match="serves demo with TLS"):  # one port, one way to speak
        gateway.set_door(data_dir, door(port, servers, app="plain"), None)
    assert [d.app for d in gateway.doors(data_dir)] == ["demo"] and other


def test_a_killed_haproxy_is_started_again(data_dir, backends):
    servers = backends(1)
    port = free_port()
    gateway.set_door(data_dir, door(port, servers), None)
    assert not gateway.heal(data_dir)  # running: nothing to do
    for pid in gateway.pids(data_dir):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not gateway.pids(data_dir))
    assert gateway.heal(data_dir)
    assert wait_for(lambda: post(port)[0] == 200)


STUB_AGENT = """
import sys, time
from types import SimpleNamespace
from beamctl.agent import http_api, tokens
class Stub:
    store = SimpleNamespace(token_digest=lambda app: tokens.digest(sys.argv[1]))
    def input_limit(self, app): return 1 << 20
    def call(self, app, inputs):
        return {"task_id": "t-000000000001", "status": "succeeded", "start": "warm", "result": {"on": "h2"}, "error": None}
server = http_api.serve(Stub(), "127.0.0.1", 0)
print(server.server_address[1], flush=True)
time.sleep(3600)
"""


def test_an_agent_killed_leaves_the_rotation_and_only_a_task_in_flight_fails(data_dir, backends):
    import sys

    servers = backends(1)
    agent = subprocess.Popen([sys.executable, "-c", STUB_AGENT, TOKEN], stdout=subprocess.PIPE, text=True)
    try:
        port2 = int(agent.stdout.readline())
        port = free_port()
        h2 = SimpleNamespace(name="h2"), SimpleNamespace(server_address=("127.0.0.1", port2))
        gateway.set_door(data_dir, door(port, [*servers, h2]), None)
        wait_for(lambda: all(s["state"] == "UP" for s in gateway.status(data_dir)["apps"][0]["servers"]))
        codes, on = [], set()
        for _ in range(40):  # kept connections to both agents
            code, body = post(port)
            codes.append(code)
            on.add(body["result"]["on"])
        assert on == {"h1", "h2"} and set(codes) == {200}
        agent.kill()  # the kernel closes its connections, kept and listening
        agent.wait()
        began = time.monotonic()
        while time.monotonic() - began < 4:
            codes.append(post(port)[0])
        state = {s["host"]: s["state"] for s in gateway.status(data_dir)["apps"][0]["servers"]}
        assert state["h1"].startswith("UP") and state["h2"].startswith("DOWN"), state
        assert codes.count(200) >= len(codes) - 1 and set(codes) <= {200, 502}, codes  # at most the one in flight
    finally:
        agent.kill()


def test_the_gateway_listener_answers_its_gateway_only(tmp_path):
    stub = Stub("h1")
    exposure = Exposure(tmp_path)
    exposure.serve = lambda h, p, allowed: http_api.serve(stub, h, p, allowed=allowed)
    port = free_port()
    stub.store.has_app = lambda app: True
    exposure.expose("demo", f"127.0.0.1:{port}", ["127.0.0.2"], "https://gw:8443", "gw1")
    try:
        def from_(source: str) -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
                s.sendall(f"POST /apps/demo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                          "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode())
                return int(s.recv(65536).split()[1])

        assert from_("127.0.0.1") == 403 and stub.calls == 0  # this machine is not the gateway
        assert from_("127.0.0.2") == 200 and stub.calls == 1
        again = Exposure(tmp_path)  # a restarted agent reads where it listens, and for whom
        assert again.record == exposure.record and again.allowed("127.0.0.2", "demo")
        assert not again.allowed("127.0.0.2", "other") and not again.allowed("127.0.0.3", None)
        assert (tmp_path / "exposed.json").stat().st_mode & 0o777 == 0o600
        with pytest.raises(AgentError, match="not ADDRESS:PORT"):
            exposure.expose("demo", "gw:8430", ["127.0.0.2"], "https://gw:8443", "gw1")
        assert exposure.forget("demo") and exposure.server is None
    finally:
        if exposure.server is not None:
            exposure.server.shutdown()
            exposure.server.server_close()
