"""Which hosts an app command asks, and the pure parts that merge their answers (tasks newest first,
logs by time) and pick a host for `call`.

Which hosts: `--host NAME` (repeatable) if given; else the `hosts:` of the app's beam.yaml, when
`-f FILE` names it or when ./beam.yaml is the app's; else this machine (`[LocalHost]`).
"""

from __future__ import annotations

import re
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
    """The inventory entries to ask, or None for this machine's agent only: --host; else the app's
    beam.yaml (-f, or ./beam.yaml when it is the app's); else where this client last deployed the app;
    else, for a command about no app in particular (no name), every host known here."""
    from beamctl.hosts import inventory, placed

    if hosts:
        return inventory.lookup(list(hosts))
    config = _app_config(file, name)
    if config is not None:
        return inventory.which_hosts(config.hosts)[0] if config.hosts else None
    if name is not None:
        return placed.hosts_of_app(name)
    return placed.known_hosts() or None


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


def pick_host(replies: list[Reply], app: str, turn: int = 0) -> str | None:
    """The host serving `app` that is least busy; ties: one with a ready container; hosts still tied take
    turns (`turn`: this client's count of calls to the app), so calls made at once spread out."""
    loads = [((load[0], not load[1]), r.host) for r in replies if r.error is None
             for load in [load_of(r.result, app)] if load is not None]
    if not loads:
        return None
    best = min(key for key, _ in loads)
    tied = [host for key, host in loads if key == best]
    return tied[turn % len(tied)]


def next_turn(app: str) -> int:
    """This client's next turn for `app` (a counter in the cache, taken under a lock: commands run at
    once get different turns); 0 when the cache cannot be written."""
    import fcntl

    from beamctl.paths import cache_dir

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", app):  # an app name (the schema's), never a path
        return 0
    path = cache_dir() / "turns" / app
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read().strip()
            turn = int(text) + 1 if text.isdigit() else 0
            f.seek(0)
            f.truncate()
            f.write(str(turn))
            return turn
    except OSError:
        return 0


def app_rows(replies: list[Reply]) -> list[dict[str, Any]]:
    """`beamctl apps`: one row per app per host that answered, by app then host (pure)."""
    rows = []
    for r in replies:
        for a in (r.result or {}).get("apps", []) if r.error is None else []:
            containers = a.get("containers") or []
            active = a.get("active_version")
            snap = next((v.get("checkpoint") for v in a.get("versions") or [] if v.get("version") == active), None)
            state = ("stopped" if not active else "serving" if any(c.get("state") == "ready" for c in containers)
                     else "starting" if containers else "scaled to zero")
            rows.append({"app": a.get("app"), "host": r.host, "version": active, "state": state,
                         "containers": len(containers), "busy": sum(c.get("busy") or 0 for c in containers),
                         "image": a.get("image"), "checkpoint": (snap or {}).get("state")})
    return sorted(rows, key=lambda row: (row["app"] or "", row["host"]))
