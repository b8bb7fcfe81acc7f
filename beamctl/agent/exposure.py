"""Where a gateway reaches this agent: a second listener of the apps' endpoint on a private address of this
host (beamctl's hosts inventory: `address:`), open to the gateways of the apps that have one and to nobody
else. The loopback endpoint stays as it is. Kept in DATA/exposed.json, so a restarted agent listens again.

    {"listen": "10.0.0.5:8430", "apps": {"APP": {"allow": ["10.0.0.2"], "url": "https://...", "gateway": "gw1"}}}

A request on that listener from an address no app allows gets 403 and the connection closes; an allowed
gateway may reach `/health` and the apps that allow it only. The token is checked as on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from pathlib import Path
from typing import Any, Callable

from beamctl.agent import private
from beamctl.protocol.errors import AgentError

FILE = "exposed.json"
Serve = Callable[[str, int, Callable[[str, str | None], bool]], Any]  # (host, port, allowed) -> server


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        raise AgentError(f"{listen!r} is not ADDRESS:PORT") from None
    if not sep or not 0 < number < 65536 or ip.is_unspecified or ip.is_multicast:
        raise AgentError(f"{listen!r} is not an address this agent can listen on for a gateway")
    return str(ip), number


class Exposure:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE
        self.lock = threading.Lock()
        self.serve: Serve | None = None  # set by __main__: starts an HTTP listener
        self.server: Any = None
        self.record = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) and isinstance(data.get("apps"), dict) else {"apps": {}}
        except (OSError, ValueError):
            return {"apps": {}}

    def allowed(self, peer: str, app: str | None) -> bool:
        """May `peer` reach `app` (None: /health) on the exposed listener?"""
        apps = self.record.get("apps", {})
        entries = [apps[app]] if app is not None and app in apps else ([] if app is not None else list(apps.values()))
        return any(peer in e.get("allow", ()) for e in entries)

    def expose(self, app: str, listen: str, allow: list[str], url: str, gateway: str) -> dict[str, Any]:
        parse_listen(listen)
        for a in allow:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise AgentError(f"{a!r} is not an IP address") from None
        with self.lock:
            record = {**self.record, "apps": dict(self.record.get("apps", {}))}
            record["listen"] = listen
            record["apps"][app] = {"allow": sorted(set(allow)), "url": url, "gateway": gateway}
            self._listen(listen)
            self.record = record
            private.write(self.path, json.dumps(record))
        return {"listen": listen, "listening": self.server is not None}

    def forget(self, app: str) -> bool:
        with self.lock:
            if app not in self.record.get("apps", {}):
                return False
            apps = {k: v for k, v in self.record["apps"].items() if k != app}
            self.record = {**self.record, "apps": apps}
            private.write(self.path, json.dumps(self.record))
            if not apps and self.server is not None:
                self.server.shutdown()
                self.server.server_close()
                self.server = None
        return True

    def gateway_of(self, app: str) -> dict[str, Any] | None:
        entry = self.record.get("apps", {}).get(app)
        return {"url": entry.get("url"), "gateway": entry.get("gateway")} if entry else None

    def start(self) -> None:
        """At the agent's start: listen where the record says (a failure is said, the loopback still serves)."""
        listen = self.record.get("listen")
        if listen and self.record.get("apps"):
            with self.lock:
                self._listen(listen)

    def _listen(self, listen: str) -> None:
        if self.serve is None:
            return
        host, port = parse_listen(listen)
        if self.server is not None:
            if tuple(self.server.server_address[:2]) == (host, port):
                return
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        try:
            self.server = self.serve(host, port, self.allowed)
        except OSError as e:
            raise AgentError(f"cannot listen on {listen} for the gateway: {e.strerror or e}",
                             hint="set this host's `address:` in the hosts inventory to an address it has") from None
