"""Ship an image to hosts' engines without a registry: only the layers each host lacks, compressed once.

Per host (in parallel), on the connection beamctl holds: the host's id for the tag (the same id:
nothing to send), else the layer lists of every image its engine holds, which say how much of our
chain it already has (layers.present_prefix). Hosts that lack the same layers form one group; per
group one archive is made here: from image.assemble's layer cache when it holds every layer the group
lacks (an app image beamctl assembled: a code change costs no `docker save`, which reads the whole
image at ~20 ms per MB), else `docker save` once with layers.filter_archive leaving out the layers
the group holds; stream.py compresses it once and every host of the group gets the same bytes on its
own stream (bulk.open_sink: OpenSSH where it can, else paramiko) into its agent's loader. On arrival the host's id for the tag must equal ours: the id
is the digest of the config, which names every layer's digest, and the engine checks each layer it
reads against it, so that is the digest check; `docker load` unpacks the whole archive before it
registers anything, so a cut stream leaves nothing half-loaded. A stream that broke is retried once
on a new connection; a load that found a layer missing (pruned meanwhile) is retried with the whole
image.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from beamctl.errors import BeamctlError, EnvironmentProblem
from beamctl.fleet import layers, sources
from beamctl.fleet.stream import CHUNK, AllGone, Fanout, Feeder, Progress, compressor, load_argv
from beamctl.transport import bulk
from beamctl.transport.errors import HostUnreachable, RemoteError, tail
from beamctl.units import human_bytes


@dataclass(frozen=True)
class ShipResult:
    host: str
    action: str  # present | sent
    bytes_sent: int  # compressed bytes on the wire
    seconds: float
    layers_sent: int = 0
    layers_total: int = 0
    via: str = ""  # openssh | paramiko
    attempts: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect_argv(image_ref: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{.Id}}", image_ref]


def held_argv() -> list[str]:
    return ["sh", "-c", layers.HELD_LAYERS_SCRIPT]


def remote_id(conn: Any, label: str, image_ref: str) -> str | None:
    done = conn.run(inspect_argv(image_ref))
    if done.exit != 0:
        if "no such" in done.stderr.lower():
            return None
        raise RemoteError(label, shlex.join(inspect_argv(image_ref)), done.exit, tail(done.stderr))
    return done.stdout.strip() or None


def held_layers(conn: Any, label: str) -> tuple[list[list[str]], frozenset[str]]:
    """The layer lists of the host engine's images, and the layers a cut ship left staged there."""
    done = conn.run(held_argv())
    if done.exit != 0:
        raise RemoteError(label, "docker image inspect (layers)", done.exit, tail(done.stderr))
    return layers.parse_held(done.stdout), layers.parse_staged(done.stdout)


def local_layers(image_ref: str) -> list[str]:
    argv = ["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image_ref]
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise EnvironmentProblem("the docker CLI is not installed here", "install Docker Engine (its docker CLI) on this machine") from None
    if done.returncode != 0:
        raise EnvironmentProblem(f"cannot inspect {image_ref} here: {tail(done.stderr)}")
    return list(json.loads(done.stdout))


def layer_sizes(image_ref: str, image_id: str, diff_ids: list[str]) -> dict[str, int] | None:
    """Each layer's size before compression (diffID -> bytes), from the engine's history of the image;
    None when its entries cannot be matched to the layers for certain."""
    from beamctl.image import layer_cache

    argv = ["docker", "history", "--no-trunc", "--human=false", "--format", "{{.Size}}", image_ref]
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
        sizes = [int(x) for x in done.stdout.split()][::-1] if done.returncode == 0 else []
    except (OSError, ValueError):
        return None
    config = layer_cache.config_bytes(image_id)
    try:
        flags = [not h.get("empty_layer") for h in json.loads(config).get("history") or []] if config else []
    except (ValueError, AttributeError):
        flags = []
    if len(flags) == len(sizes):  # the config says which history entries made a layer
        picks = [n for n, layer in zip(sizes, flags) if layer]
    else:  # only when every layer has bytes is the match certain
        picks = [n for n in sizes if n > 0]
    return dict(zip(diff_ids, picks)) if len(picks) == len(diff_ids) else None


class _Host:
    """One host during a ship: its connection (the host's own, shared), what it lacks, its result or error."""

    def __init__(self, host: Any) -> None:
        self.host, self.name = host, host.name
        self.target: Any = None
        self.conn: Any = None
        self.keep_from = 0
        self.staged: frozenset[str] = frozenset()  # our layers above keep_from the host kept from a cut ship
        self.present = False
        self.result: ShipResult | None = None
        self.error: BeamctlError | None = None
        self.attempts = 0
        self.sent = 0
        self.via = ""
        self.started = time.monotonic()

    def connect(self, fresh: bool) -> None:
        self.target = self.host.target
        self.conn = self.host.connection(fresh=fresh)


def ship_images(hosts: list[Any], image_ref: str, image_id: str, progress: Progress
                ) -> dict[str, ShipResult | BeamctlError]:
    """Every host (hosts/host.SshHost) at once; per host its ShipResult or the error that stopped it."""
    diff_ids = local_layers(image_ref)
    states = [_Host(h) for h in hosts]
    for attempt in (1, 2):
        todo = [s for s in states if s.result is None and (attempt == 1 or _retryable(s))]
        if not todo:
            break
        for s in todo:
            s.error, s.sent = None, 0
        _survey(todo, image_ref, image_id, diff_ids, progress, fresh=attempt > 1)
        for (keep_from, staged), group in _groups([s for s in todo if s.error is None and not s.present]).items():
            _send(group, image_ref, image_id, diff_ids, keep_from, staged, progress)
        for s in todo:
            if s.error is None:
                _verify(s, image_ref, image_id, diff_ids, progress)
    return {s.name: (s.result if s.result is not None else s.error or HostUnreachable(s.name, "not shipped"))
            for s in states}


def _retryable(s: _Host) -> bool:
    """A broken stream (the host, or the way to it, went away) or a layer gone missing: one more try."""
    if isinstance(s.error, HostUnreachable) and s.attempts > 0:
        return True
    if isinstance(s.error, RemoteError) and "layer" in s.error.message.lower() and s.keep_from > 0:
        s.keep_from = -1  # the host's store changed under us: send the whole image
        return True
    if isinstance(s.error, RemoteError) and "layer" in s.error.message.lower() and s.staged:
        s.keep_from = -1  # a staged layer was damaged or gone: send the whole image
        return True
    return False


def _survey(states: list[_Host], image_ref: str, image_id: str, diff_ids: list[str], progress: Progress,
            fresh: bool) -> None:
    def one(s: _Host) -> None:
        try:
            if fresh or s.conn is None:
                s.connect(fresh)
            if remote_id(s.conn, s.name, image_ref) == image_id:
                s.present = True
                s.result = ShipResult(s.name, "present", 0, time.monotonic() - s.started, 0, len(diff_ids))
                progress(f"{s.name}: {image_ref} is present; nothing sent")
                return
            whole = s.keep_from < 0
            held, staged = held_layers(s.conn, s.name)
            s.keep_from = 0 if whole else layers.present_prefix(diff_ids, held)
            s.staged = frozenset() if whole else frozenset(diff_ids[s.keep_from:]) & staged
        except BeamctlError as e:
            s.error = e

    with ThreadPoolExecutor(max_workers=max(1, len(states)), thread_name_prefix="survey") as pool:
        list(pool.map(one, states))


def _groups(states: list[_Host]) -> dict[tuple[int, frozenset[str]], list[_Host]]:
    """Hosts that lack the same layers: one archive for each group."""
    groups: dict[tuple[int, frozenset[str]], list[_Host]] = {}
    for s in states:
        groups.setdefault((s.keep_from, s.staged), []).append(s)
    return groups


def _send(group: list[_Host], image_ref: str, image_id: str, diff_ids: list[str], keep_from: int,
          staged: frozenset[str], progress: Progress) -> None:
    """One archive (cache or `docker save | filter`), compressed once here, the same bytes to every host
    of the group."""
    source = sources.pick(image_ref, image_id, diff_ids, keep_from, staged)
    missing = len(diff_ids) - keep_from - len(staged)
    names = ", ".join(s.name for s in group)
    there = [f"{keep_from} held there"] if keep_from else []
    there += [f"{len(staged)} kept there from a cut send"] if staged else []
    progress(f"{names}: sending {image_ref}: {missing} of {len(diff_ids)} layers "
             f"({'; '.join(there) or 'whole image'}; {source.what})")
    sinks: dict[str, Any] = {}
    for s in group:
        s.attempts += 1
        try:
            sinks[s.name] = bulk.open_sink(s.conn, s.target, load_argv())
            s.via = sinks[s.name].via
        except BeamctlError as e:
            s.error = e
    live = [s for s in group if s.name in sinks]
    if not live:
        return
    feeders = {s.name: Feeder(s, sinks[s.name], progress) for s in live}
    problem, ended = None, False
    try:
        source.start()
        with compressor().stream_writer(Fanout(list(feeders.values())), write_size=CHUNK,
                                         closefd=False) as packed:
            source.write(packed)
        ended = True
        problem = source.failure()
    except AllGone:
        return  # each host's error is recorded
    except FileNotFoundError as e:
        raise EnvironmentProblem(f"{e.filename} is not installed here", "install Docker Engine's CLI") from None
    except Exception as e:  # noqa: BLE001 - the archive could not be read, or was not one
        problem = source.failure() or f"{type(e).__name__}: {e}"
    finally:
        if not ended:  # every host failed, the archive broke, or we were interrupted: stop reading it
            source.stop()
        for f in feeders.values():
            f.close() if ended or problem is not None else f.cancel()
    if problem is not None:
        for sink in sinks.values():
            sink.abort()
        raise EnvironmentProblem(f"reading {image_ref} here failed ({source.what}): {problem}")
    for f in feeders.values():
        f.finish()


def _verify(s: _Host, image_ref: str, image_id: str, diff_ids: list[str], progress: Progress) -> None:
    if s.present:
        return
    try:
        got = remote_id(s.conn, s.name, image_ref)
    except BeamctlError as e:
        s.error = e
        return
    if got != image_id:
        s.error = RemoteError(s.name, "docker load", None,
                              f"the image arrived as {got or 'nothing'}, not {image_id}: nothing is used")
        return
    seconds = time.monotonic() - s.started
    sent_layers = len(diff_ids) - max(s.keep_from, 0) - len(s.staged)
    s.result = ShipResult(s.name, "sent", s.sent, seconds, sent_layers, len(diff_ids), s.via, s.attempts)
    progress(f"{s.name}: {sent_layers} of {len(diff_ids)} layers, {human_bytes(s.sent)} sent in {seconds:.1f} s "
             f"({s.via}); id verified")
