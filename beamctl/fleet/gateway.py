"""The app's front door (beam.yaml `gateway:`), from the client: which host runs it, which hosts it sends to
and at what address, and the calls that make it so (agent/gateway.py does the HAProxy side there).

`route` after a deploy: the gateway host gets the agent (if it is not one of the app's hosts) and HAProxy
(hosts/haproxy.py); every host that serves the app (an active version, or no answer now: the door's
health checks decide) opens its endpoint on its private address to the gateway's address only
(agent/exposure.py); the gateway then routes to those. The gateway host itself is reached on loopback.
`update` after a stop, a rollback or a token rotation: the same door, new servers or token, found
through what the app's hosts were told (their status' `gateway`).

Addresses: a host's inventory `address:`, else its SSH target's host name, resolved here. A loopback
address would send the gateway to itself: refused, with the fix.
"""

from __future__ import annotations

import ipaddress
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from beamctl.errors import BeamctlError
from beamctl.hosts.each import Reply, ask, ask_all

DEFAULT_AGENT_PORT = 8430


@dataclass(frozen=True)
class Routed:
    """What the door on `host` does for the app after a route or update."""
    host: str
    url: str
    servers: list[dict[str, Any]] = field(default_factory=list)  # host, address, state
    haproxy: str | None = None  # "own 2.6.12" / "carried 2.6.12"; None when not looked at
    unexposed: list[str] = field(default_factory=list)  # "host: why" for hosts left out

    def as_json(self) -> dict[str, Any]:
        return {"host": self.host, "url": self.url, "servers": self.servers, "haproxy": self.haproxy,
                "unexposed": self.unexposed}


@contextmanager
def gateway_host(name: str, hosts: list[Any], open_host: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """The gateway's Host: one of the app's `hosts` when it is one, else one opened (and closed) here."""
    from beamctl.fleet.query import hosts_of
    from beamctl.hosts.inventory import find

    entry = find(name)
    found = next((h for h in hosts if h.name in (entry.name, entry.target)), None)
    if found is not None:
        yield found
        return
    host = (open_host or (lambda e: hosts_of([e])[0]))(entry)
    try:
        yield host
    finally:
        host.close()


def address_of(entry: Any, host: Any = None) -> str:
    """The IP address other hosts reach this one at: the inventory's `address`, else its target resolved."""
    if getattr(entry, "address", None):
        return entry.address
    name = getattr(getattr(host, "target", None), "hostname", None) if host is not None else None
    name = name or entry.target.rpartition("@")[2].rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0])
        except (OSError, IndexError, ValueError):
            raise BeamctlError(f"{entry.name}: cannot tell its address for the gateway ({name} does not resolve)",
                               hint=f"set it: `address: 10.0.0.5` under {entry.name} in the hosts inventory") from None
    if ip.is_loopback:
        raise BeamctlError(f"{entry.name}: its address is {ip} (loopback), which the gateway cannot reach",
                           hint=f"set its private address: `address: 10.0.0.5` under {entry.name} in the hosts "
                                "inventory (beamctl hosts add NAME TARGET --address IP)")
    return str(ip)


def agent_port(status: dict[str, Any] | None) -> int:
    endpoint = ((status or {}).get("agent") or {}).get("endpoint") or ""
    port = urlsplit(endpoint).port if endpoint else None
    return port or DEFAULT_AGENT_PORT


def url_of(config: Any, address: str) -> str:
    if config.url:
        return config.url.rstrip("/")
    host = f"[{address}]" if ":" in address else address
    scheme, default = ("https", 443) if config.tls else ("http", 80)
    return f"{scheme}://{host}" + ("" if config.port == default else f":{config.port}")


def serving(replies: list[Reply], app: str) -> list[str]:
    """Hosts to route to: those with an active version of the app, and those that did not answer now
    (the door's health checks keep them out while they are down)."""
    out = []
    for r in replies:
        rows = (r.result or {}).get("apps", []) if r.ok else None
        if rows is None or any(a.get("app") == app and a.get("active_version") is not None for a in rows):
            out.append(r.host)
    return out


def follow_deploy(app: str, config: Any, hosts: list[Any], entries: list[Any], progress: Callable[[str], None],
                  before: dict[str, Any] | None, open_host: Callable[[Any], Any] | None = None
                  ) -> tuple[Routed | None, str | None]:
    """After a deploy: the door of beam.yaml's `gateway` routes to the app's hosts, and a door the app had
    before elsewhere (its hosts remember which) no longer routes it; with no `gateway`, that old door
    forgets the app and the hosts forget it. `before`: the gateway the hosts had (their deploy answers).
    (the new door or None, what was said about the old one)"""
    from beamctl.hosts.inventory import find

    routed = route(app, config, hosts, entries, progress, open_host) if config is not None else None
    if before is None:
        return routed, None
    old = find(before["gateway"])
    if config is not None and config.host in (old.name, old.target):
        return routed, None
    with gateway_host(before["gateway"], hosts, open_host) as old_host:
        gone = ask(old_host, "gateway_remove", app=app)
    if config is None:
        ask_all(hosts, "gateway_unexpose", app=app)
    said = (f"{before['gateway']} no longer routes {app}" if gone.ok else
            f"{before['gateway']} still routes {app}: {gone.error} (beamctl stop {app} there, or deploy again)")
    return routed, said


def route(app: str, config: Any, hosts: list[Any], entries: list[Any], progress: Callable[[str], None],
          open_host: Callable[[Any], Any] | None = None) -> Routed:
    """Point the app's front door at the hosts that serve it (after a deploy)."""
    from beamctl.fleet.rollout import app_token
    from beamctl.hosts import haproxy
    from beamctl.hosts.inventory import find

    with gateway_host(config.host, hosts, open_host) as gw_host:
        if gw_host not in hosts and not gw_host.local:
            progress(f"{gw_host.name}: the gateway host: checking its agent")
            gw_host.install(progress)
        which = haproxy.ensure(gw_host, progress) if hasattr(gw_host, "connection") else None
        gw_address = address_of(find(config.host), gw_host) if not gw_host.local else "127.0.0.1"
        url = url_of(config, gw_address)
        statuses = {r.host: r for r in ask_all(hosts, "status", app=app)}
        token = app_token(list(statuses.values()), app)
        if token is None:
            raise BeamctlError(f"no host of {app} told its endpoint token; the gateway was left as it was")
        servers, unexposed = _expose(app, hosts, entries, statuses, gw_host, gw_address, url, config.host)
        pem = config.certificate.read_text() if config.tls else None
        reply = ask(gw_host, "gateway_serve", app=app, port=config.port, tls=config.tls, token=token,
                    servers=servers, bind=config.bind, pem=pem)
        if not reply.ok:
            raise reply.exc or BeamctlError(f"{gw_host.name}: {reply.error}")
        return Routed(gw_host.name, url, _servers_of(reply.result, app), which, unexposed)


def _expose(app: str, hosts: list[Any], entries: list[Any], statuses: dict[str, Reply], gw_host: Any,
            gw_address: str, url: str, gw_name: str) -> tuple[list[list[str]], list[str]]:
    by_name = {e.name: e for e in entries}
    to_route = set(serving(list(statuses.values()), app))
    servers, unexposed, asks = [], [], []
    for h in hosts:
        if h.name not in to_route:
            continue
        port = agent_port(statuses[h.name].result if statuses[h.name].ok else None)
        if h.name == gw_host.name or h.local:
            servers.append([h.name, f"127.0.0.1:{port}"])
            continue
        entry = by_name.get(h.name)
        try:
            address = address_of(entry if entry is not None and entry.address else _entry_of(h), h)
        except BeamctlError as e:
            unexposed.append(f"{h.name}: {e.message}")
            continue
        asks.append((h, f"{address}:{port}"))
    replies = _ask_each(app, asks, gw_address, url, gw_name)
    for (h, listen), r in zip(asks, replies):
        if r.ok or not statuses[h.name].ok:
            servers.append([h.name, listen])  # a host that does not answer now: its health check decides
        else:
            unexposed.append(f"{h.name}: {r.error}")
    return servers, unexposed


def _ask_each(app: str, asks: list[tuple[Any, str]], gw_address: str, url: str, gw_name: str) -> list[Reply]:
    from beamctl.hosts.each import parallel

    listen = {h.name: l for h, l in asks}
    return parallel([h for h, _ in asks], lambda h: ask(h, "gateway_expose", app=app, listen=listen[h.name],
                                                        allow=[gw_address], url=url, gateway=gw_name))


def _entry_of(host: Any) -> Any:
    from beamctl.hosts.inventory import find

    return find(host.name)


def _servers_of(status: dict[str, Any] | None, app: str) -> list[dict[str, Any]]:
    return next((a["servers"] for a in (status or {}).get("apps", []) if a.get("app") == app), [])


def gateway_of(replies: list[Reply], app: str) -> dict[str, Any] | None:
    """{"url", "gateway"} as the app's hosts were told at its last deploy with a gateway, or None."""
    for r in replies:
        for a in (r.result or {}).get("apps", []) if r.ok else []:
            if a.get("app") == app and a.get("gateway"):
                return a["gateway"]
    return None


def door(app: str, where: dict[str, Any], hosts: list[Any], open_host: Callable[[Any], Any] | None = None
         ) -> dict[str, Any] | None:
    """The gateway host's word on the app's route: {app, port, tls, servers: [{host, address, state}]}."""
    with gateway_host(where["gateway"], hosts, open_host) as gw_host:
        reply = ask(gw_host, "gateway_status")
    if not reply.ok:
        raise reply.exc or BeamctlError(reply.error or "no answer")
    return next((a for a in (reply.result or {}).get("apps", []) if a.get("app") == app), None)


def update(app: str, hosts: list[Any], token: str | None = None, open_host: Callable[[Any], Any] | None = None
           ) -> Routed | None:
    """After a stop, rollback or token rotation: the door gets the hosts that serve now and the new token
    (None: the one it has). None when the app has no gateway."""
    replies = ask_all(hosts, "status", app=app)
    where = gateway_of(replies, app)
    if where is None:
        return None
    with gateway_host(where["gateway"], hosts, open_host) as gw_host:
        current = ask(gw_host, "gateway_status")
        route_now = next((a for a in (current.result or {}).get("apps", []) if a.get("app") == app), None) \
            if current.ok else None
        if route_now is None:
            raise BeamctlError(f"the gateway {gw_host.name} did not answer about {app}: "
                               f"{current.error or 'it does not route it'}")
        names = set(serving(replies, app))
        servers = [[s["host"], s["address"]] for s in route_now["servers"] if s["host"] in names]
        missing = sorted(names - {s["host"] for s in route_now["servers"]})
        reply = ask(gw_host, "gateway_update", app=app, token=token, servers=servers)
    if not reply.ok:
        raise reply.exc or BeamctlError(f"{gw_host.name}: {reply.error}")
    return Routed(gw_host.name, where.get("url") or "", _servers_of(reply.result, app), None,
                  [f"{n}: not routed yet; the next deploy adds it" for n in missing])
