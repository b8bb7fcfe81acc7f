"""Which hosts an app command asks, and the pure parts that merge their answers (tasks newest first,
logs by time) and pick a host for `call`.

Which hosts: `--host NAME` (repeatable) if given; else the `hosts:` of the app's beam.yaml, when
`-f FILE` names it or when ./beam.yaml is the app's; else this machine (`[LocalHost]`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from beamctl.errors import BeamctlError
from beamctl.hosts.each import Reply
from beamctl.hosts.host import LocalHost, ssh_hosts


def _app_config(file: Path | None, name: str | None) -> Any:
    """The beam.yaml that names this app's hosts: `file` when given, else ./beam.yaml if it is `name`'s."""
    from beamctl.config import load

    if file is not None:
        return load(file)[0]
    here = Path("beam.yaml")
    if name is None or not here.is_file():
        return None
    try:
        config = load(here)[0]
    except BeamctlError:
        return None
    return config if config.name == name else None


def host_entries(name: str | None, hosts: list[str] | None, file: Path | None) -> list[Any] | None:
    """The inventory entries to ask, or None for this machine's agent only."""
    from beamctl.hosts import inventory

    if hosts:
        return inventory.lookup(list(hosts))
    config = _app_config(file, name)
    if config is None or not config.hosts:
        return None
    return inventory.which_hosts(config.hosts)[0]


def hosts_of(entries: list[Any] | None, ssh: Any = None) -> list[Any]:
    """Inventory entries as hosts (hosts/host.py), or this machine for None: where every app command gets
    its hosts (the unit tier puts fake hosts here: hosts/fake.py)."""
    return [LocalHost()] if entries is None else ssh_hosts(entries, ssh)


def app_hosts_for(name: str | None, hosts: list[str] | None, file: Path | None, ssh: Any = None) -> list[Any]:
    return hosts_of(host_entries(name, hosts, file), ssh)


@contextmanager
def app_hosts(name: str | None, hosts: list[str] | None, file: Path | None) -> Iterator[list[Any]]:
    """The hosts of one command, closed (their connections) when it ends."""
    found = app_hosts_for(name, hosts, file)
    try:
        yield found
    finally:
        for h in found:
            h.close()


def is_local(hosts: list[Any]) -> bool:
    """This machine only: the commands print as they always did for it (no host names)."""
    return len(hosts) == 1 and hosts[0].local


# --- pure parts ----------------------------------------------------------------------------------------

def merge_tasks(replies: list[Reply], limit: int) -> list[dict[str, Any]]:
    rows = [{**t, "host": r.host} for r in replies if r.error is None for t in r.result or []]
    rows.sort(key=lambda t: t.get("received") or 0, reverse=True)
    return rows[:limit]


def merge_logs(replies: list[Reply]) -> list[dict[str, Any]]:
    rows = [{**e, "host": r.host} for r in replies if r.error is None for e in r.result or []]
    rows.sort(key=lambda e: e.get("ts") or 0)  # stable: one host's lines keep their order
    return rows


def first_found(replies: list[Reply]) -> Reply | None:
    return next((r for r in replies if r.error is None and r.result), None)


def load_of(status: dict[str, Any], app: str) -> tuple[int, bool] | None:
    """(busy tasks, has a ready container) of `app` on one host, or None when it does not serve it."""
    for a in (status or {}).get("apps", []):
        if a.get("app") == app and a.get("active_version"):
            containers = a.get("containers") or []
            return sum(c.get("busy") or 0 for c in containers), any(c.get("state") == "ready" for c in containers)
    return None


def pick_host(replies: list[Reply], app: str) -> str | None:
    """The host serving `app` that is least busy; ties: one with a ready container; then the first."""
    best: tuple[Any, ...] | None = None
    for i, r in enumerate(replies):
        if r.error is not None:
            continue
        load = load_of(r.result, app)
        if load is None:
            continue
        busy, ready = load
        key = (busy, not ready, i)
        if best is None or key < best[0]:
            best = (key, r.host)
    return best[1] if best else None
