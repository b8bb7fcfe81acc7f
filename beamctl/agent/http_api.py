"""The public endpoint: `POST /apps/NAME` with `Authorization: Bearer TOKEN` runs one task.

200 when the task succeeded, 500 when it failed (the body says why), 401 without the app's
token (also for an app that does not exist: names are not disclosed), 400 for a body that is
not a JSON object, 413 for one over the app's max_input_size, 503 when CONNECTIONS are open already.

Hardened for a port others can reach: the token is checked from the headers before one byte of the
body is read (an unauthenticated client never makes the agent hold its body); the scheme is RFC 6750's
(`Bearer`, any case, then the token: nothing else is accepted); a client that sends nothing for
TIMEOUT_S is dropped (a half-sent request holds a thread that long at most); at most CONNECTIONS
connections at once, the next ones answered 503 and closed at once.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from beamctl.agent.container_args import size_text
from beamctl.mounts import MAX_INPUT, memory_bytes

MAX_BODY_BYTES = memory_bytes(MAX_INPUT)  # a task's inputs; each app's max_input_size is at most this
TIMEOUT_S = 30.0  # per read or write on a connection (a task may run longer: that is not a read)
CONNECTIONS = 128
BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")  # RFC 6750 section 2.1


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (scheme in any case), else None."""
    m = BEARER.match(header or "")
    return m.group(1) if m else None


def serve(agent: Any, host: str, port: int, timeout_s: float = TIMEOUT_S,
          connections: int = CONNECTIONS, allowed: Callable[[str, str | None], bool] | None = None
          ) -> ThreadingHTTPServer:
    """The endpoint on host:port. `allowed(peer address, app or None for /health)`: who may use it (a
    gateway's listener, agent/exposure.py); others get 403 and the connection closes. None: everyone."""
    from beamctl.agent import tokens
    from beamctl.protocol.errors import AgentError

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else a small reply waits ~40 ms for the client's delayed ACK
        wbufsize = -1  # headers and body leave in one write
        timeout = timeout_s  # the socket's: a silent client is dropped

        def log_message(self, *args: Any) -> None:  # tasks are recorded in the store, not here
            pass

        def _send(self, code: int, body: dict[str, Any], close: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="beamctl"')
            if close:
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _refused(self, app: str | None) -> bool:
            if allowed is None or allowed(self.client_address[0], app):
                return False
            self._send(403, {"error": "this address of the agent serves its gateway only"}, close=True)
            return True

        def do_GET(self) -> None:
            if self._refused(None):
                return
            if self.path == "/health":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": "not found; POST /apps/NAME runs a task"})

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._send(400, {"error": "bad Content-Length"}, close=True)
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] != "apps":
                return self._send(404, {"error": "not found; POST /apps/NAME runs a task"}, close=length > 0)
            app = parts[1]
            if self._refused(app):
                return None
            given = bearer(self.headers.get("Authorization"))
            if given is None or not tokens.matches(given, agent.store.token_digest(app)):
                # the body is never read: the connection cannot be reused
                return self._send(401, {"error": "missing or wrong token (Authorization: Bearer TOKEN; "
                                                 "beamctl status shows it)"}, close=length > 0)
            limit = min(MAX_BODY_BYTES, agent.input_limit(app))
            if length > limit or length < 0:
                return self._send(413, {"error": f"the inputs are {length} bytes, more than {app}'s "
                                                 f"max_input_size ({size_text(limit)})"}, close=True)
            body = self.rfile.read(length) if length > 0 else b""
            if len(body) < length:  # the client went away (or timed out) mid-body
                self.close_connection = True
                return None
            try:
                inputs = json.loads(body or b"{}")
            except ValueError:
                return self._send(400, {"error": "the body is not JSON"})
            try:
                task = agent.call(app, inputs)
            except AgentError as e:
                return self._send(400 if e.data.get("kind") == "input" else 503, {"error": e.message})
            answer = {k: task[k] for k in ("task_id", "status", "start", "result", "error")}
            self._send(200 if task["status"] == "succeeded" else 500, answer)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        slots = threading.BoundedSemaphore(connections)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                _busy(request)
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def handle_error(self, request: Any, client_address: Any) -> None:
            """A client (a gateway's health check, too) that reset its connection is no error of ours."""
            import sys

            if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                super().handle_error(request, client_address)

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    if ":" in host:
        Server.address_family = socket.AF_INET6
    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="http").start()
    return server


def _busy(sock: Any) -> None:
    body = b'{"error": "too many connections; try again"}'
    try:
        sock.settimeout(1.0)
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass
