"""The front door's HAProxy file, from the apps' routes (pure: agent/gateway.py writes and runs it).

One frontend per port (the apps on it told apart by path; TLS from one folder of certificates, picked by
SNI), one backend per app. The token is checked at the door by its SHA-256 (HAProxy's `sha2` converter):
401 for a wrong one and for an app not routed (names are not disclosed), 503 for a stopped app. Least
connections over the servers whose /health answers; only a connection never made is tried again (no
`retry-on`: a task that reached an agent is never resent); a server marked down has its connections cut,
and their clients get 502 saying so.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SERVER_MAXCONN = 100  # per agent; the agent's own limit is 128 connections (http_api.CONNECTIONS)
# a check every second, every 0.5 s once one failed, each given 1 s: a host that stops answering is out
# of the rotation 2-3.5 s later, and back 1.5-2 s after it answers again
CHECK_INTER_MS, CHECK_FAST_MS, CHECK_TIMEOUT_S, FALL, RISE = 1000, 500, 1, 2, 2
QUEUE_TIMEOUT_S = 30  # a request waits this long for a free server slot, then 503
TASK_TIMEOUT_S = 3600  # as the client's call timeout (hosts/each.CALL_TIMEOUT_S)

ERRORS = {  # the door's own answers, JSON like the agents'
    401: "missing or wrong token (Authorization: Bearer TOKEN; beamctl status shows it)",
    502: "the host running this task failed or stopped answering mid-task; it was not sent to another host "
         "(it may have run there: beamctl tasks shows what each host ran)",
    503: "no host of this app can take a task now (all down, stopped or full); try again",
    504: "no answer from the host in time",
}


@dataclass(frozen=True)
class Door:
    """One app's route through this host's front door."""
    app: str
    port: int
    bind: str  # an address of this host, "" for all
    tls: bool
    digest: str  # hex SHA-256 of the app's endpoint token
    servers: tuple[tuple[str, str], ...]  # (host name, "address:port" of its agent's endpoint)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "servers": [list(s) for s in self.servers]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Door":
        return cls(d["app"], int(d["port"]), d.get("bind") or "", bool(d["tls"]), d["digest"],
                   tuple((str(n), str(a)) for n, a in d.get("servers") or ()))


def _quote(text: str) -> str:
    assert "'" not in text and "\n" not in text
    return f"'{text}'"


def _error(code: int) -> str:
    return f"content-type application/json string {_quote(json.dumps({'error': ERRORS[code]}))}"


def _server_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


def render(all_doors: list[Door], where: Path, user: tuple[str, str] | None) -> str:
    """haproxy.cfg for these doors: one frontend per port (several apps share one, told apart by path),
    one backend per app."""
    lines = ["# written by the beamctl agent (agent/gateway.py); each deploy writes it again", "global",
             f"    stats socket {where / 'admin.sock'} mode 600 level admin expose-fd listeners",
             "    maxconn 4096", f"    chroot {where / 'empty'}"]
    if user:
        lines += [f"    user {user[0]}", f"    group {user[1]}"]
    lines += ["    ssl-default-bind-options ssl-min-ver TLSv1.2", "",
              "defaults", "    mode http", "    timeout connect 3s", "    timeout client 60s",
              f"    timeout server {TASK_TIMEOUT_S}s", f"    timeout queue {QUEUE_TIMEOUT_S}s",
              f"    timeout check {CHECK_TIMEOUT_S}s", "    timeout http-request 30s",
              "    retries 2",  # only a connection that failed before the request went out
              "    option redispatch 1",
              # connections to the agents are kept (HAProxy's `http-reuse safe`): a new one per task halved
              # the door's throughput (bench/gateway.py). One an agent closes while idle leaves the pool
              f"    default-server check inter {CHECK_INTER_MS} fastinter {CHECK_FAST_MS} fall {FALL} rise {RISE}"
              f" maxconn {SERVER_MAXCONN}"
              " on-marked-down shutdown-sessions"]
    lines += [f"    http-error status {code} {_error(code)}" for code in (502, 503, 504)]
    by_port: dict[int, list[Door]] = {}
    for d in all_doors:
        by_port.setdefault(d.port, []).append(d)
    for port, here in sorted(by_port.items()):
        first = here[0]
        bind = f"[{first.bind}]" if ":" in first.bind else first.bind
        tls = f" ssl crt {where / 'certs' / str(port)}/" if first.tls else ""
        lines += ["", f"frontend port_{port}", f"    bind {bind}:{port}{tls}",
                  "    http-request return status 200 content-type application/json "
                  "string '{\"ok\": true}' if { path /health }",
                  "    http-request set-var(txn.token) req.hdr(authorization),"
                  "regsub(\"^[Bb][Ee][Aa][Rr][Ee][Rr] +\",\"\")"]
        for d in here:
            lines.append(f"    acl app_{ident(d.app)} path /apps/{d.app} /apps/{d.app}/")
        known = " or ".join(f"app_{ident(d.app)}" for d in here)
        lines.append(f"    http-request return status 401 {_error(401)} hdr WWW-Authenticate "
                     f"'Bearer realm=\"beamctl\"' unless {known}")
        for d in here:
            lines.append(f"    http-request return status 401 {_error(401)} hdr WWW-Authenticate "
                         f"'Bearer realm=\"beamctl\"' if app_{ident(d.app)} "
                         f"!{{ var(txn.token),sha2(256),hex,lower -m str {d.digest} }}")
        for d in here:
            lines.append(f"    use_backend app_{ident(d.app)} if app_{ident(d.app)}")
    for d in all_doors:
        lines += ["", f"backend app_{ident(d.app)}", "    balance leastconn", "    option httpchk GET /health",
                  "    http-check expect status 200"]
        if not d.servers:
            lines.append(f"    http-request return status 503 content-type application/json string "
                         f"{_quote(json.dumps({'error': f'{d.app} is stopped: beamctl deploy starts it'}))}")
        for name, address in d.servers:
            lines.append(f"    server {ident(name)} {_server_address(address)}")
    return "\n".join(lines) + "\n"


def ident(name: str) -> str:  # an app or host name as an HAProxy identifier (letters, digits, - _ . :)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
