"""One container of one app version as the pool holds it: its state, and its kept-alive HTTP connections
to the runtime inside it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from beamctl.agent.profile import ContainerTimeline
from beamctl.protocol.spec import KEY_HEADER


class StartFailed(Exception):
    def __init__(self, reason: str, log_tail: list[str]) -> None:
        super().__init__(reason)
        self.reason, self.log_tail = reason, log_tail


@dataclass
class Live:
    """One container of one version."""

    id: str
    version: int
    timeline: ContainerTimeline
    address: str = ""  # the runtime's "host:port"
    state: str = "starting"  # starting | ready | failed | stopping | dead
    busy: int = 0
    death: str | None = None  # why it died (death_reason), once it did
    last_used: float = 0.0
    failure: StartFailed | None = None
    args_hash: str = ""  # of its create arguments (name aside): a snapshot's key holds the same
    key: str | None = None  # the runtime's key (its version's): sent with every request
    restoring: bool = False  # starting from its version's snapshot (status says "restoring")
    gpus: tuple[str, ...] = ()  # the GPU device ids it was given
    spare: bool = False  # a GPU app's container on GPUs other than its version's pinned ones: no snapshot
    restore_from: tuple[Any, float] | None = None  # (snapshot folder, restore timeout): created to restore it
    _conns: list[http.client.HTTPConnection] = field(default_factory=list)
    _in_use: set[http.client.HTTPConnection] = field(default_factory=set)
    _conn_lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, method: str, path: str, body: dict | None, timeout: float) -> tuple[int, dict]:
        """One HTTP exchange with the runtime over a kept-alive connection."""
        with self._conn_lock:
            conn = self._conns.pop() if self._conns else http.client.HTTPConnection(self.address)
            self._in_use.add(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            if self.key:
                headers[KEY_HEADER] = self.key
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            payload = json.loads(response.read() or b"{}")
        except Exception:
            conn.close()
            raise
        finally:
            with self._conn_lock:
                self._in_use.discard(conn)
        with self._conn_lock:
            self._conns.append(conn)
        return response.status, payload

    def abort(self) -> None:
        """Requests in flight fail now (the container is gone: they would wait for their timeout)."""
        with self._conn_lock:
            socks = [c.sock for c in self._in_use if c.sock is not None]
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._conn_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
