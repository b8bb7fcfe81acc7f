"""The host inventory that apps share: ~/.config/beamctl/hosts.yaml ($BEAMCTL_HOSTS_FILE overrides).

    - name: gpu1
      target: deploy@10.0.0.5:22     # or an ~/.ssh/config alias
      labels: {rack: a}              # optional, text to text
      address: 10.0.0.5              # optional: where other hosts (an app's gateway) reach this one

A beam.yaml with `hosts:` uses those and not this file (`which_hosts`). Names and targets
pass config.hosts.parse_host, so none can be read as an ssh option or as shell.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from beamctl.config.hosts import Host, parse_host
from beamctl.errors import BeamctlError, ExitCode

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class InventoryError(BeamctlError):
    exit_code = ExitCode.CONFIG


@dataclass(frozen=True)
class Entry:
    name: str
    target: str
    labels: dict[str, str] = field(default_factory=dict)
    address: str | None = None  # its private address, for a gateway; None: its target's, resolved

    @property
    def host(self) -> Host:
        return parse_host(self.target)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "labels": dict(self.labels),
                **({"address": self.address} if self.address else {})}


def inventory_file() -> Path:
    explicit = os.environ.get("BEAMCTL_HOSTS_FILE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "beamctl" / "hosts.yaml"


def load(path: Path | None = None) -> list[Entry]:
    path = path or inventory_file()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InventoryError(f"{path}: cannot read it: {_first_line(e)}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise InventoryError(f"{path}: must be a list of hosts (- name: gpu1, target: user@host)")
    entries: list[Entry] = []
    for i, item in enumerate(data):
        where = f"{path}: host {i + 1}"
        if not isinstance(item, dict) or set(item) - {"name", "target", "labels", "address"}:
            raise InventoryError(f"{where}: must be a mapping with name, target and (optionally) labels, address")
        try:
            entry = make_entry(item.get("name"), item.get("target"), item.get("labels") or {}, item.get("address"))
        except InventoryError as e:
            raise InventoryError(f"{where}: {e.message}") from None
        if any(e.name == entry.name for e in entries):
            raise InventoryError(f"{where}: the name {entry.name!r} is used twice")
        entries.append(entry)
    return entries


def make_entry(name: Any, target: Any, labels: Any = None, address: Any = None) -> Entry:
    """One checked entry; InventoryError says what is wrong with which part."""
    if not isinstance(name, str) or not isinstance(target, str):
        raise InventoryError("name and target must both be given, as text")
    try:
        parsed = parse_host(name)
    except ValueError as e:
        raise InventoryError(f"name {e}") from None
    if parsed.user or parsed.port or parsed.hostname != name:
        raise InventoryError(f"name '{name}' must be a plain name like gpu1 (the user and port go in the target)")
    try:
        parse_host(target)
    except ValueError as e:
        raise InventoryError(f"target {e}") from None
    labels = labels or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                               for k, v in labels.items()):
        raise InventoryError("labels must be a mapping of names to text, like {rack: a}")
    bad = [k for k in labels if not _LABEL.match(k)]
    if bad:
        raise InventoryError(f"label name {bad[0]!r} must be letters, digits and . _ - (at most 63)")
    if address is not None:
        try:
            address = str(ipaddress.ip_address(str(address)))
        except ValueError:
            raise InventoryError(f"address {address!r} must be an IP address (where other hosts reach this one)") from None
    return Entry(name, target, {k: str(v) for k, v in labels.items()}, address)


def save(entries: list[Entry], path: Path | None = None) -> Path:
    path = path or inventory_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [{"name": e.name, "target": e.target, **({"labels": e.labels} if e.labels else {}),
             **({"address": e.address} if e.address else {})} for e in entries]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# beamctl hosts (beamctl hosts add/remove edit this file)\n"
                   + yaml.safe_dump(data, sort_keys=False, default_flow_style=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def add(entry: Entry, path: Path | None = None) -> Path:
    entries = load(path)
    if any(e.name == entry.name for e in entries):
        raise InventoryError(f"a host named {entry.name!r} is already in {path or inventory_file()}",
                             hint=f"beamctl hosts remove {entry.name} first, to change it")
    return save(entries + [entry], path)


def remove(name: str, path: Path | None = None) -> Path:
    entries = load(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        raise InventoryError(f"no host named {name!r} in {path or inventory_file()}",
                             hint="beamctl hosts ls shows the names")
    return save(kept, path)


def which_hosts(config_hosts: tuple[Host, ...] | None, path: Path | None = None) -> tuple[list[Entry], str]:
    """The hosts an app uses and where they came from: beam.yaml's `hosts:` when it has any, else the
    inventory. beam.yaml hosts are named by their target."""
    if config_hosts:
        return [Entry(h.target, h.target) for h in config_hosts], "beam.yaml"
    return load(path), str(path or inventory_file())


def find(word: str, path: Path | None = None) -> Entry:
    """One host by inventory name, else by target (an entry whose target it is), else the word as a target."""
    entries = load(path)
    return (next((e for e in entries if e.name == word), None) or next((e for e in entries if e.target == word), None)
            or lookup([word], path)[0])


def lookup(words: list[str], path: Path | None = None) -> list[Entry]:
    """Hosts named on the command line: inventory names, else targets or ~/.ssh/config aliases."""
    entries = {e.name: e for e in load(path)}
    picked = []
    for word in words:
        if word in entries:
            picked.append(entries[word])
            continue
        try:
            parse_host(word)
        except ValueError as e:
            raise InventoryError(f"host {e}") from None
        picked.append(Entry(word, word))
    return picked


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
