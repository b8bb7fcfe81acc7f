"""The public endpoint (beamctl/agent/http_api.py) as a client on loopback sees it: the token is checked
before the body is read, RFC 6750's scheme and nothing else, silent clients dropped after the timeout,
connections over the cap answered 503. A stub agent behind it: the store's token digest and `call`."""

from __future__ import annotations

import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from beamctl.agent import http_api, tokens

TOKEN = "t" * 43


class Agent:
    def __init__(self) -> None:
        self.calls: list = []
        self.store = SimpleNamespace(token_digest=lambda app: tokens.digest(TOKEN) if app == "demo" else None)

    def input_limit(self, app):
        return 1000 if app == "demo" else 32 << 20

    def call(self, app, inputs):
        self.calls.append((app, inputs))
        return {"task_id": "t-1", "status": "succeeded", "start": "warm", "result": inputs, "error": None}


@pytest.fixture
def serve():
    servers = []

    def start(timeout_s: float = 1.0, connections: int = 8):
        agent = Agent()
        servers.append(http_api.serve(agent, "127.0.0.1", 0, timeout_s=timeout_s, connections=connections))
        return agent, servers[-1].server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def endpoint(serve):
    return serve()


def request(port: int, head: str, body: bytes = b"", wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head.encode() + body)
        return _read_reply(s)


def _read_reply(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(rest) < length:
        rest += s.recv(65536)
    return head + b"\r\n\r\n" + rest


def post(auth: str | None, body: bytes = b'{"x": 1}', app: str = "demo") -> str:
    lines = [f"POST /apps/{app} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    return "\r\n".join(lines) + "\r\n\r\n"


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_the_bearer_scheme_in_any_case_and_nothing_else(endpoint):
    agent, port = endpoint
    for auth in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}"):
        assert status_of(request(port, post(auth), b'{"x": 1}')) == 200, auth
    for auth in (TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer{TOKEN}", "Bearer ", None):
        reply = request(port, post(auth), b'{"x": 1}')
        assert status_of(reply) == 401 and b'WWW-Authenticate: Bearer realm="beamctl"' in reply, auth
    assert status_of(request(port, post(f"Bearer {TOKEN}", app="other"), b'{"x": 1}')) == 401
    assert len(agent.calls) == 3


def test_a_wrong_token_is_refused_before_the_body_is_read(endpoint):
    agent, port = endpoint
    head = post("Bearer wrong", b"x" * (30 << 20))  # announces 30 MB, sends none of it
    started = time.monotonic()
    reply = request(port, head, b"")
    assert status_of(reply) == 401 and time.monotonic() - started < 0.9  # before the read timeout
    assert b"Connection: close" in reply and agent.calls == []
    big = request(port, post(f"Bearer {TOKEN}", b"x" * 1001), b"")  # authorised, over the app's limit: unread
    assert status_of(big) == 413 and b"more than demo's max_input_size (1000 bytes)" in big
    assert agent.calls == []
    body = b'{"x": "' + b"y" * 991 + b'"}'  # exactly the limit
    assert status_of(request(port, post(f"Bearer {TOKEN}", body), body)) == 200


def test_silent_and_half_sent_clients_are_dropped_after_the_timeout(endpoint):
    _, port = endpoint
    base = threading.active_count()
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
    for i, s in enumerate(stalled):
        s.sendall(b"POST /apps/demo HTTP/1.1\r\nContent-" if i % 2 else b"")  # half a header, or nothing
    time.sleep(0.3)
    assert threading.active_count() <= base + 6  # one thread per connection, no more
    started = time.monotonic()
    for s in stalled:
        assert s.recv(1024) == b""  # the server closed it (no answer to a request it never got)
    assert time.monotonic() - started < 4  # 1 s timeout each, in parallel; the client waits up to 5 s
    for s in stalled:
        s.close()
    deadline = time.monotonic() + 3
    while threading.active_count() > base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= base


def test_connections_over_the_cap_get_503_at_once(serve):
    _, port = serve(timeout_s=10.0)  # the held ones stay held however slow this machine is
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    time.sleep(0.3)
    try:
        started = time.monotonic()
        reply = request(port, post(f"Bearer {TOKEN}"), b'{"x": 1}')
        assert status_of(reply) == 503 and time.monotonic() - started < 0.9
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"].startswith("too many connections")
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)  # closed: room again
    assert status_of(request(port, post(f"Bearer {TOKEN}"), b'{"x": 1}')) == 200
