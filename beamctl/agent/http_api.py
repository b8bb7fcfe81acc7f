"""The public endpoint: `POST /apps/NAME` with `Authorization: Bearer TOKEN` runs one task.

200 when the task succeeded, 500 when it failed (the body says why), 401 without the app's
token (also for an app that does not exist: names are not disclosed), 400 for a body that is
not a JSON object.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY_BYTES = 32 << 20  # a task's inputs


def serve(agent: Any, host: str, port: int) -> ThreadingHTTPServer:
    from beamctl.agent import tokens
    from beamctl.protocol.errors import AgentError

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else a small reply waits ~40 ms for the client's delayed ACK
        wbufsize = -1  # headers and body leave in one write

        def log_message(self, *args: Any) -> None:  # tasks are recorded in the store, not here
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": "not found; POST /apps/NAME runs a task"})

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                return self._send(400, {"error": "bad Content-Length"})
            if length > MAX_BODY_BYTES:  # not read: the connection cannot be reused
                self.close_connection = True
                return self._send(413, {"error": f"inputs larger than {MAX_BODY_BYTES >> 20} MiB"})
            body = self.rfile.read(length) if length > 0 else b""
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] != "apps":
                return self._send(404, {"error": "not found; POST /apps/NAME runs a task"})
            app = parts[1]
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not tokens.matches(given, agent.store.token_digest(app)):
                return self._send(401, {"error": "missing or wrong token (beamctl status shows it)"})
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="http").start()
    return server
