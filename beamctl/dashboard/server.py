"""`beamctl dashboard`'s web server: 127.0.0.1 only, every request with the access token the printed URL
carries (as Jupyter does; the page keeps it and sends it as `X-Beamctl-Token`), else 401. The page is one
file (page.html: no build step, no CDN, no library); its data comes from /api/* (data.Board), logs follow
over server-sent events. Stdlib only."""

from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOG_POLL_S = 1.0  # how often a log stream asks the hosts for new lines


def page() -> bytes:
    return resources.files("beamctl.dashboard").joinpath("page.html").read_bytes()


def serve(board: Any, token: str, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start serving in a thread; the caller stops it with .shutdown()."""
    html = page()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            if kind.startswith("text/html"):
                self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                            "script-src 'self' 'unsafe-inline'; img-src 'self' data:")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data: Any, code: int = 200) -> None:
            self._send(code, json.dumps(data).encode())

        def _allowed(self, query: dict[str, list[str]]) -> bool:
            given = self.headers.get("X-Beamctl-Token") or (query.get("token") or [""])[0]
            return hmac.compare_digest(given.encode(), token.encode())

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            if not self._allowed(query):
                return self._json({"error": "open the address beamctl dashboard printed (it carries the token)"}, 401)
            one = lambda key: (query.get(key) or [None])[0]  # noqa: E731
            try:
                if parts.path == "/":
                    return self._send(200, html, "text/html; charset=utf-8")
                if parts.path == "/api/apps":
                    return self._json(board.apps())
                if parts.path == "/api/tasks":
                    return self._json(board.tasks(one("app"), one("status"), one("start")))
                if parts.path.startswith("/api/task/"):
                    got = board.task(parts.path.rsplit("/", 1)[1])
                    return self._json(got if got else {"error": "no host has this task"}, 200 if got else 404)
                if parts.path == "/api/logs":
                    return self._stream_logs(one("app") or board.app or "")
            except Exception as e:  # noqa: BLE001 - one failed page, said on it; the server goes on
                return self._json({"error": f"{type(e).__name__}: {getattr(e, 'message', None) or e}"}, 500)
            return self._json({"error": "not found"}, 404)

        def _stream_logs(self, app: str) -> None:
            """Server-sent events: each new log line as one `data:` event, until the page goes away."""
            if not app:
                return self._json({"error": "which app? ?app=NAME"}, 400)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.close_connection = True
            since = {h.name: time.time() - 300 for h in board.hosts}
            first = True
            while not stopping.is_set():
                got = board.logs(app, since, tail=200 if first else 1000)
                first = False
                out = []
                for e in got["entries"]:
                    since[e["host"]] = max(since.get(e["host"], 0.0), e["ts"])
                    out.append(f"data: {json.dumps(e)}\n\n")
                for err in got["errors"]:
                    out.append(f"event: hosterror\ndata: {json.dumps(err)}\n\n")
                try:
                    self.wfile.write(("".join(out) or ": idle\n\n").encode())
                    self.wfile.flush()
                except OSError:
                    return
                stopping.wait(LOG_POLL_S)

    stopping = threading.Event()

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def shutdown(self) -> None:
            stopping.set()
            super().shutdown()
            self.server_close()

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="dashboard").start()
    return server
