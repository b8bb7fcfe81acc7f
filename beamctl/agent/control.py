"""The control API: newline-delimited JSON over a Unix socket (mode 0600; no network port).

Request `{"op": "deploy", "args": {...}}`, answer `{"ok": true, "result": ...}` or
`{"ok": false, "error": "...", "hint": "..."}`. The same lines can travel over any byte
stream (the SSH fleet pipes them through `ssh HOST`), so nothing here is Unix-socket specific
but `serve` and `LocalTransport`.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import traceback
from pathlib import Path
from typing import Any

from beamctl.protocol.errors import AgentError
from beamctl.protocol.wire import MAX_LINE_BYTES, OPS


def handle(agent: Any, request: dict[str, Any]) -> dict[str, Any]:
    op, args = request.get("op"), request.get("args") or {}
    if op not in OPS:
        return {"ok": False, "error": f"unknown operation {op!r}", "hint": "is beamctl older than the agent?"}
    try:
        result = (agent.about() if op == "version" else getattr(agent, op)(**args))
    except AgentError as e:
        return {"ok": False, "error": e.message, "hint": e.hint, "data": e.data}
    except TypeError as e:
        return {"ok": False, "error": f"bad arguments for {op}: {e}"}
    except Exception as e:  # noqa: BLE001 - answered, never a dropped connection: a client reads EOF as death
        traceback.print_exc()  # into agent.log
        return {"ok": False, "error": f"the agent failed in {op}: {type(e).__name__}: {e}",
                "hint": "see agent.log in the agent's data dir"}
    return {"ok": True, "result": result}


def serve(agent: Any, path: Path) -> socketserver.ThreadingUnixStreamServer:
    """Listen on `path` in a background thread; returns the server (call .shutdown() to stop)."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                if len(line) > MAX_LINE_BYTES:
                    answer = {"ok": False, "error": "request too large"}
                else:
                    try:
                        answer = handle(agent, json.loads(line))
                    except ValueError:
                        answer = {"ok": False, "error": "the request is not JSON"}
                self.wfile.write(json.dumps(answer).encode() + b"\n")
                self.wfile.flush()

    if path.exists():
        path.unlink()
    old = os.umask(0o177)  # the socket is born 0600: only root (the agent's user) may drive the agent
    try:
        server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    finally:
        os.umask(old)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="control").start()
    return server
