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

from beamctl.agent import door
from beamctl.protocol.errors import AgentError
from beamctl.protocol.wire import MAX_LINE_BYTES, OPS


def handle(agent: Any, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request is a JSON object: {\"op\": ..., \"args\": {...}}",
                "data": {"kind": "input"}}
    op, args = request.get("op"), request.get("args") or {}
    if op not in OPS:
        return {"ok": False, "error": f"unknown operation {op!r}", "hint": "is beamctl older than the agent?"}
    why = door.args_problem(args)
    if why is not None:
        return {"ok": False, "error": f"bad arguments for {op}: {why}", "data": {"kind": "input"}}
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
            while True:
                line = self.rfile.readline(MAX_LINE_BYTES + 1)  # never more than one request in memory
                if not line:
                    return
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    self._answer({"ok": False, "error": f"request larger than {MAX_LINE_BYTES >> 20} MiB"})
                    return  # the rest of it cannot be told from a next request: the connection ends
                try:
                    answer = handle(agent, json.loads(line))
                except ValueError:
                    answer = {"ok": False, "error": "the request is not JSON"}
                self._answer(answer)

        def _answer(self, answer: dict[str, Any]) -> None:
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
