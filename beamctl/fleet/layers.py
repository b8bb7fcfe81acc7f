"""Which layers a host lacks, and an image archive that carries only those (pure but for a spool file).

An image is a chain of layers, each named by its diffID (the digest of its uncompressed tar); the
engine keys stored layers by chainID (a digest of the chain up to that layer). A host that holds
some image whose layers start like ours holds that prefix of our chain, so it lacks a suffix:
`present_prefix` says how long the prefix is.

`docker load` reads the archive's manifest, and for each layer whose chain the engine already
holds it never opens that layer's tar (Docker 20.10 and later: checked on this machine's engine).
So an archive from `docker save` with the held layers' tars left out loads like the whole one,
and the engine checks every tar it does open against the config's diffIDs: the digest check on
arrival. `filter_archive` makes that archive from `docker save`'s stream, in one pass:

- `docker save` (legacy format) names each layer's folder by a v1 id, not by its diffID, and writes
  the manifest that maps one to the other last. A folder's `json` (which comes before its
  `layer.tar`) names its parent folder; the root layer has none. So a folder's place in the chain is
  known when its parent's is, or when an earlier save taught us its id (`V1Ids`, a small cache:
  a v1 id is itself a digest over the chainID, so the mapping never goes stale).
- A layer tar whose place is still unknown is copied to a spool file while it is hashed; its
  digest then says where it belongs. Memory stays at one buffer whatever the layer size.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable

from beamctl.protocol.layout import STAGED_ARGV

BUFFER = 1 << 20
SPOOL_IN_MEMORY = 8 << 20  # small unknown layers never touch the disk
MAX_CACHED_IDS = 20000


def chain_ids(diff_ids: list[str]) -> list[str]:
    """chainID(0) = diffID(0); chainID(n) = sha256(chainID(n-1) + " " + diffID(n)), as the engine does."""
    chains: list[str] = []
    for d in diff_ids:
        chains.append(d if not chains else "sha256:" + hashlib.sha256(f"{chains[-1]} {d}".encode()).hexdigest())
    return chains


def present_prefix(ours: list[str], held: Iterable[list[str]]) -> int:
    """How many of our layers (from the bottom) the host holds, given the diffID lists of its images."""
    best = 0
    for layers in held:
        n = 0
        for a, b in zip(ours, layers):
            if a != b:
                break
            n += 1
        best = max(best, n)
    return best


def parse_held(text: str) -> list[list[str]]:
    """The host's answer to HELD_LAYERS_SCRIPT: one JSON list of diffIDs per line (bad lines ignored)."""
    held = []
    for line in text.splitlines():
        try:
            layers = json.loads(line)
        except ValueError:
            continue
        if isinstance(layers, list) and all(isinstance(x, str) for x in layers):
            held.append(layers)
    return held


# Fixed text (nothing from the user in it): every image's layer list on the host's engine, one per line;
# then, when the engine answered, the layers a cut ship left staged there, one `staged DIFFID` per line.
HELD_LAYERS_SCRIPT = ("ids=$(docker image ls -aq --no-trunc | sort -u); { [ -z \"$ids\" ] || "
                      "docker image inspect --format '{{json .RootFS.Layers}}' $ids; } && "
                      f"{{ {shlex.join(STAGED_ARGV)} 2>/dev/null | sed 's/^/staged /'; true; }}")


def parse_staged(text: str) -> frozenset[str]:
    """The staged layers in the host's answer to HELD_LAYERS_SCRIPT."""
    return frozenset(line.split(" ", 1)[1] for line in text.splitlines()
                     if line.startswith("staged sha256:") and len(line) == len("staged sha256:") + 64)


class V1Ids:
    """v1 folder id -> chainID, learned from earlier archives' manifests; a JSON file, shared by threads."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._ids: dict[str, str] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text())
                self._ids = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
            except (OSError, ValueError, AttributeError):
                self._ids = {}

    def get(self, v1: str) -> str | None:
        with self._lock:
            return self._ids.get(v1)

    def learn(self, pairs: dict[str, str]) -> None:
        with self._lock:
            new = {k: v for k, v in pairs.items() if self._ids.get(k) != v}
            if not new:
                return
            self._ids.update(new)
            if len(self._ids) > MAX_CACHED_IDS:  # oldest first (dicts keep insertion order)
                self._ids = dict(list(self._ids.items())[-MAX_CACHED_IDS:])
            if self.path is not None:
                _write_atomic(self.path, json.dumps(self._ids))


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".v1ids.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache: losing it costs a spool next time, nothing more


@dataclass
class FilterStats:
    layers_sent: int = 0
    layers_skipped: int = 0
    bytes_in: int = 0  # the archive docker save produced
    bytes_out: int = 0  # the archive we wrote (before compression)
    spooled: int = 0  # layers whose place was found by hashing them
    learned: dict[str, str] = field(default_factory=dict)


def filter_archive(src: IO[bytes], dst: IO[bytes], diff_ids: list[str], keep_from: int,
                   v1ids: V1Ids | None = None, leave_out: frozenset[str] = frozenset()) -> FilterStats:
    """Copy `docker save`'s tar from src to dst, leaving out the tars of layers below `keep_from` and
    those in `leave_out` (diffIDs the host kept from a cut ship: its loader puts them back).

    keep_from = 0 copies everything (the whole image); len(diff_ids) leaves out every layer tar
    (the host holds them all and only needs the config and the tag)."""
    chains = chain_ids(diff_ids)

    def needed(i: int) -> bool:
        return i >= keep_from and diff_ids[i] not in leave_out

    place_of_chain = {c: i for i, c in enumerate(chains)}
    v1ids = v1ids or V1Ids(None)
    stats = FilterStats()
    parents: dict[str, str | None] = {}
    places: dict[str, int] = {}
    counting_src = _Counting(src)
    counting_dst = _Counting(dst)

    def place(v1: str) -> int | None:
        if v1 in places:
            return places[v1]
        known = v1ids.get(v1)
        if known is not None and known in place_of_chain:
            places[v1] = place_of_chain[known]
            return places[v1]
        if v1 in parents:
            parent = parents[v1]
            if parent is None:
                places[v1] = 0
                return 0
            up = place(parent)
            if up is not None:
                places[v1] = up + 1
                return up + 1
        return None

    with tarfile.open(fileobj=counting_src, mode="r|", bufsize=BUFFER) as tin, \
            tarfile.open(fileobj=counting_dst, mode="w|", bufsize=BUFFER, format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            folder, _, leaf = member.name.partition("/")
            if member.isfile() and leaf == "layer.tar" and "/" not in folder:
                if keep_from <= 0 and not leave_out:
                    tout.addfile(member, tin.extractfile(member))
                    stats.layers_sent += 1
                    continue
                where = place(folder)
                if where is not None:
                    if not needed(where):
                        stats.layers_skipped += 1
                    else:
                        tout.addfile(member, tin.extractfile(member))
                        stats.layers_sent += 1
                    continue
                stats.spooled += 1
                with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
                    digest = _copy_hashing(tin.extractfile(member), spool)
                    at = [i for i, d in enumerate(diff_ids) if d == digest]
                    if len(at) == 1:
                        places[folder] = at[0]
                    if at and not any(needed(i) for i in at):
                        stats.layers_skipped += 1
                        continue
                    spool.seek(0)
                    tout.addfile(member, spool)
                    stats.layers_sent += 1
                continue
            data = tin.extractfile(member).read() if member.isfile() else None
            if data is not None and leaf == "json" and "/" not in folder:
                parents[folder] = _parent_of(data)
            if data is not None and member.name == "manifest.json":
                stats.learned = _learn(data, chains)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    stats.bytes_in, stats.bytes_out = counting_src.count, counting_dst.count
    if stats.learned:
        v1ids.learn(stats.learned)
    return stats


def _parent_of(data: bytes) -> str | None:
    try:
        parent = json.loads(data).get("parent")
    except (ValueError, AttributeError):
        return None
    return parent if isinstance(parent, str) and parent else None


def _learn(manifest: bytes, chains: list[str]) -> dict[str, str]:
    try:
        layers = json.loads(manifest)[0]["Layers"]
    except (ValueError, LookupError, TypeError):
        return {}
    if not isinstance(layers, list) or len(layers) != len(chains):
        return {}
    return {str(p).split("/")[0]: c for p, c in zip(layers, chains) if isinstance(p, str)}


def _copy_hashing(src: IO[bytes] | None, dst: IO[bytes]) -> str:
    h = hashlib.sha256()
    while src is not None:
        chunk = src.read(BUFFER)
        if not chunk:
            break
        h.update(chunk)
        dst.write(chunk)
    return "sha256:" + h.hexdigest()


class _Counting:
    """A file object that counts what passes through it (read for the source, write for the sink)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.count = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        return data

    def write(self, data: Any) -> int:
        self.f.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.f, "flush", None)
        if flush:
            flush()
