"""The control API: newline-delimited JSON over a Unix socket (mode 0600; no network port).

Request `{"op": "deploy", "args": {...}}`, answer `{"ok": true, "result": ...}` or
`{"ok": false, "error": "...", "hint": "..."}`. The same lines can travel over any byte
stream (the SSH fleet pipes them through `ssh HOST`), so nothing here is Unix-socket specific
but `serve` and `LocalTransport`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import socketserver
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

MAX_LINE_BYTES = 64 << 20  # one request (a deploy with its secrets, a call with its inputs)
OPS = ("version", "check_placement", "deploy", "rollback", "call", "task", "tasks", "status", "logs", "stop",
       "lock_acquire", "lock_renew", "lock_release", "lock_break")

TASK_ID_RE = re.compile(r"^t-[0-9a-f]{12}$")  # `call` takes the client's, so it can name a task cut off


def new_task_id() -> str:
    return "t-" + secrets.token_hex(6)


def handle(agent: Any, request: dict[str, Any]) -> dict[str, Any]:
    from beamctl.agent.state import AgentError

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


class LocalTransport:
    """A connection to the agent on this machine."""

    def __init__(self, socket_path: Path, timeout: float | None = None) -> None:
        self.socket_path, self.timeout = socket_path, timeout

    def open(self) -> tuple[Any, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        return sock.makefile("rb"), sock.makefile("wb")


class AgentClient:
    """Requests to one agent over one kept-open stream; a request made while another thread's is in
    flight (a lock heartbeat during a deploy) goes over a stream of its own, closed after its answer."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._io: tuple[Any, Any] | None = None
        self._busy = threading.Lock()

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        if not self._busy.acquire(blocking=False):
            reader, writer = self.transport.open()
            try:
                return _exchange(reader, writer, op, args)
            finally:
                for f in (writer, reader):
                    _close(f)
        try:
            if self._io is None:
                self._io = self.transport.open()
            try:
                return _exchange(*self._io, op, args)
            except (OSError, ValueError):
                self._io = None
                raise
        finally:
            self._busy.release()


def _exchange(reader: Any, writer: Any, op: str, args: dict[str, Any]) -> dict[str, Any]:
    writer.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
    writer.flush()
    line = reader.readline()
    if not line:
        raise ConnectionError("the agent closed the connection")
    return json.loads(line)


def _close(f: Any) -> None:
    try:
        f.close()
    except OSError:
        pass


def answer_or_raise(answer: dict[str, Any], make_error: Callable[[str, str | None], Exception]) -> Any:
    if answer.get("ok"):
        return answer.get("result")
    raise make_error(answer.get("error", "the agent failed"), answer.get("hint"))
