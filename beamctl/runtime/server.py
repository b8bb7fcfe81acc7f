"""The HTTP API: GET /health and POST /tasks, JSON both ways, HTTP/1.1 keep-alive.

Every response carries Content-Length and goes out in one write (headers and body buffered
together, Nagle off), so a keep-alive client never waits on a delayed ACK.
"""

from __future__ import annotations

import hmac
import json
import socketserver
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional

from .log import complain
from .settings import KEY_HEADER
from .state import CHECKPOINT, READY, Runtime

MAX_BODY_BYTES = 256 * 1024 * 1024  # inputs are JSON: anything bigger belongs in a volume
LISTEN_BACKLOG = 128  # connections the kernel holds while every thread is busy accepting
RELEASE_WAIT_S = 30.0  # POST /checkpoint/release answers once READY (the main thread's few steps)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # one thread per connection; none keeps the process alive
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, port: int, runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__(("0.0.0.0", port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is no news; anything else is a runtime bug: one line and its trace."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            complain(f"HTTP request from {client_address[0]} failed: {type(error).__name__}: {error}",
                     traceback.format_exc().rstrip())

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can wait on DNS for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "beamctl-runtime"
    disable_nagle_algorithm = True
    wbufsize = -1  # buffered: handle_one_request flushes once per response
    server: Server

    def _refused(self) -> bool:
        """A request without the agent's key (when the agent gave one): 403, and the connection closed."""
        key = self.server.runtime.key
        if key is None or hmac.compare_digest(self.headers.get(KEY_HEADER, "").encode(), key.encode()):
            return False
        self._reply(403, {"error": "only the agent may talk to this runtime"}, close=True)
        return True

    def do_GET(self) -> None:
        if self._refused():
            return
        if self.path == "/health":
            self._reply(200, self.server.runtime.health())
        else:
            self._reply(404, {"error": f"no such path: GET {self.path} (try /health)"})

    def do_POST(self) -> None:
        queued = time.monotonic()
        if self._refused():  # the body is never read
            return
        if self.path == "/checkpoint/release":
            self._release()
            return
        if self.path != "/tasks":
            self._reply(404, {"error": f"no such path: POST {self.path} (try /tasks)"}, close=True)
            return
        body = self._body()
        if body is None:
            return
        rt = self.server.runtime
        if rt.state != READY:  # READY also means `tasks` is imported (by serve, after the server started)
            self._reply(503, {"error": "not ready", "state": rt.state})
            return
        from . import tasks  # a dictionary lookup once imported

        try:
            task_id, inputs = tasks.parse(body)
        except tasks.BadRequest as e:
            self._reply(400, {"error": str(e)})
            return
        self._send(200, tasks.run(rt, task_id, inputs, queued))

    def _release(self) -> None:
        """The agent has taken its snapshot (or will not): go on to READY, and answer with /health."""
        body = self._body()
        if body is None:
            return
        rt = self.server.runtime
        if rt.state != CHECKPOINT:
            self._reply(409, {"error": "not paused for a checkpoint", "state": rt.state})
            return
        try:
            restored = bool(json.loads(body or b"{}").get("restored", False))
        except (ValueError, AttributeError):
            self._reply(400, {"error": 'the body must be a JSON object like {"restored": false}'})
            return
        rt.release(restored)
        rt.ready_event.wait(RELEASE_WAIT_S)
        self._reply(200, rt.health())

    def handle_expect_100(self) -> bool:
        ok = super().handle_expect_100()
        self.wfile.flush()  # the client waits for this line before it sends the body
        return ok

    def _body(self) -> Optional[bytes]:
        """The request body, or None after replying with why it cannot be read (and closing)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            self._reply(411, {"error": "send the body with a Content-Length header" +
                              (" (chunked bodies are not read)" if chunked else "")}, close=True)
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self._reply(400, {"error": f"bad Content-Length: {raw!r}"}, close=True)
            return None
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": f"the body is {length} bytes; at most {MAX_BODY_BYTES} are read"},
                        close=True)
            return None
        return self.rfile.read(length)

    def _reply(self, code: int, doc: Dict[str, Any], close: bool = False) -> None:
        self._send(code, json.dumps(doc).encode(), close)

    def _send(self, code: int, body: bytes, close: bool = False) -> None:
        self.send_response_only(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (bad request line, unknown method) as JSON, then close."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            return
        self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]}, close=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: one line per task comes from tasks.run


def start(port: int, runtime: Runtime) -> Server:
    """Listen on 0.0.0.0:port and serve from a daemon thread; returns the server (for shutdown)."""
    server = Server(port, runtime)
    threading.Thread(target=server.serve_forever, name="beamctl-http", daemon=True).start()
    return server
