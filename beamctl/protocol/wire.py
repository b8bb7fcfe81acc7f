"""The agent's control protocol, as both sides speak it: newline-delimited JSON over any byte stream
(the agent's Unix socket on its machine, `ssh HOST bridge` from elsewhere).

Request `{"op": "deploy", "args": {...}}`, answer `{"ok": true, "result": ...}` or
`{"ok": false, "error": "...", "hint": "...", "data": {...}}`. A transport is anything with
`open() -> (reader, writer)`; its streams may have `settimeout` (a request's own read timeout).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from typing import Any, Callable, NamedTuple

MAX_LINE_BYTES = 64 << 20  # one request (a deploy with its secrets, a call with its inputs)
OPS = ("version", "check_placement", "deploy", "rollback", "call", "task", "tasks", "status", "logs", "stop",
       "lock_acquire", "lock_renew", "lock_release", "lock_break", "token_rotate",
       "gateway_serve", "gateway_update", "gateway_remove", "gateway_status", "gateway_expose",
       "gateway_unexpose")

TASK_ID_RE = re.compile(r"^t-[0-9a-f]{12}$")  # `call` takes the client's, so it can name a task cut off


def new_task_id() -> str:
    return "t-" + secrets.token_hex(6)


class Stream(NamedTuple):
    """One open stream to an agent: what a transport's `open()` gives."""
    reader: Any
    writer: Any
    settimeout: Callable[[float | None], None]  # no answer within this many seconds: socket.timeout


class AgentClient:
    """Requests to one agent over one kept-open stream; a request made while another thread's is in
    flight (a lock heartbeat during a deploy) goes over a stream of its own, closed after its answer.
    `timeout` is that request's read timeout (None: wait as long as the agent works)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._stream: Stream | None = None
        self._busy = threading.Lock()

    def request(self, op: str, *, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        if not self._busy.acquire(blocking=False):
            stream = self.transport.open()
            try:
                stream.settimeout(timeout)
                return _exchange(stream, op, args)
            finally:
                for f in (stream.writer, stream.reader):
                    _close(f)
        try:
            stream = self._stream
            if stream is not None:
                try:
                    _send(stream, op, args)
                except OSError:  # the kept stream died while idle (its connection went): nothing was sent
                    self.close()
                    stream = None
            if stream is None:
                stream = self._stream = self.transport.open()
                _send(stream, op, args)
            try:
                stream.settimeout(timeout)
                return _answer(stream)
            except (OSError, ValueError):
                self._stream = None
                raise
        finally:
            self._busy.release()

    def close(self) -> None:
        """Close the kept-open stream (the transport's connection is its owner's)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            for f in (stream.writer, stream.reader):
                _close(f)


def _exchange(stream: Stream, op: str, args: dict[str, Any]) -> dict[str, Any]:
    _send(stream, op, args)
    return _answer(stream)


def _send(stream: Stream, op: str, args: dict[str, Any]) -> None:
    stream.writer.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
    stream.writer.flush()


def _answer(stream: Stream) -> dict[str, Any]:
    line = stream.reader.readline()
    if not line:
        raise ConnectionError("the agent closed the connection")
    return json.loads(line)


def _close(f: Any) -> None:
    try:
        f.close()
    except OSError:
        pass
