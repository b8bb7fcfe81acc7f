"""Where this client deployed each app: `apps.json` beside the inventory (hosts.yaml), written after every
deploy, so that the app commands find an app's hosts by its name from any folder. An app deployed to this
machine has no entry (its commands ask the local agent); a damaged file reads as empty, never an error."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from beamctl.hosts.inventory import Entry, inventory_file


def record_file() -> Path:
    return inventory_file().parent / "apps.json"


def _read(path: Path) -> dict[str, list[dict[str, str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hosts_of_app(app: str, path: Path | None = None) -> list[Entry] | None:
    """The hosts `app` was last deployed to from here, or None (never, or to this machine)."""
    rows = _read(path or record_file()).get(app)
    if not isinstance(rows, list) or not rows:
        return None
    return [Entry(str(r["name"]), str(r["target"])) for r in rows if isinstance(r, dict) and "name" in r
            and "target" in r] or None


def known_hosts(path: Path | None = None) -> list[Entry]:
    """Every host any app was deployed to from here, then the inventory's, each once (by name)."""
    from beamctl.hosts import inventory

    seen: dict[str, Entry] = {}
    for app in sorted(_read(path or record_file())):
        for e in hosts_of_app(app, path) or []:
            seen.setdefault(e.name, e)
    try:
        for e in inventory.load():
            seen.setdefault(e.name, e)
    except inventory.InventoryError:
        pass
    return list(seen.values())


def record(app: str, entries: list[Any] | None, path: Path | None = None) -> None:
    """`app` now lives on `entries` (None: on this machine). Best effort: a client that cannot write its
    config still deployed; the commands then need -f or --host."""
    path = path or record_file()
    data = _read(path)
    if entries:
        data[app] = [{"name": e.name, "target": e.target} for e in entries]
    elif data.pop(app, None) is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:
        pass
