"""The stream to the hosts' loaders: compressed once here (zstandard, all cores), fanned out on bounded
queues (a slow host slows its group by at most QUEUE_CHUNKS MiB), into each host's
`python -m beamctl.agent.load_image` (the agent's venv decompresses into `docker load`); a failed load
is named by its step (the loader says which on stderr), never "unreachable" for a host that answered.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from beamctl.errors import BeamctlError
from beamctl.protocol.layout import LOAD_ARGV, LOAD_STEP_PREFIX as STEP_PREFIX, PYTHON as AGENT_PYTHON
from beamctl.transport.errors import RemoteEnded, RemoteError, tail
from beamctl.units import human_bytes

CHUNK = 1 << 20
QUEUE_CHUNKS = 16  # per host: at most this many MiB wait for a slow host
LOAD_TIMEOUT_S = 600.0  # after the last byte: the host's docker load must end within this
PROGRESS_EVERY_S = 0.5
ZSTD_LEVEL = 3  # zstd's own default: ~3x smaller images at hundreds of MB/s
Progress = Callable[[Any], None]


@dataclass(frozen=True)
class ShipProgress:
    """Bytes on the wire to one host so far (an event for progress bars)."""

    host: str
    sent: int
    done: bool = False

    def __str__(self) -> str:
        return f"{self.host}: {human_bytes(self.sent)} sent{' (done)' if self.done else ''}"


def load_argv() -> list[str]:
    """The remote side of the stream: the agent's Python decompresses into `docker load`."""
    return list(LOAD_ARGV)


def load_failure(host: str, code: int, stderr: str) -> RemoteError:
    """A failed load on `host`, by the step that failed (beamctl.agent.load_image says it on stderr)."""
    steps = [line[len(STEP_PREFIX):].split(":", 1)[0] for line in stderr.splitlines() if line.startswith(STEP_PREFIX)]
    text = "\n".join(line[len(STEP_PREFIX):] if line.startswith(STEP_PREFIX) else line
                     for line in stderr.strip().splitlines())
    if code == 127 or (not steps and AGENT_PYTHON in stderr):
        return RemoteError(host, "load the image: start the loader", code, tail(text),
                           f"the agent is not installed there ({AGENT_PYTHON} is missing): "
                           f"beamctl hosts install {host}")
    step = steps[-1] if steps else "load"
    hint = f"beamctl hosts install {host} (the agent there is older than this beamctl)" \
        if step == "decompress" and "zstandard" in text else None
    return RemoteError(host, f"load the image: {step}", code, tail(text), hint)


def compressor() -> Any:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)


class AllGone(Exception):
    """Every host of the group failed: stop reading and compressing."""


class Fanout:
    """The compressor's output: each chunk to every live host's queue."""

    def __init__(self, feeders: list[Feeder]) -> None:
        self.feeders = feeders

    def write(self, chunk: bytes) -> int:
        alive = [f for f in self.feeders if f.alive]
        if not alive:
            raise AllGone()
        data = bytes(chunk)
        for f in alive:
            f.put(data)
        return len(chunk)

    def flush(self) -> None:
        pass


class Feeder:
    """One host's side of the fan-out: a bounded queue and a thread writing it into the sink."""

    def __init__(self, state: Any, sink: Any, progress: Progress) -> None:
        self.state, self.sink, self.progress = state, sink, progress
        self.q: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
        self.alive = True
        self._last = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"ship-{state.name}")
        self.thread.start()

    def put(self, chunk: bytes) -> None:
        while self.alive:
            try:
                self.q.put(chunk, timeout=1.0)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.q.put(None)  # the thread reads until this, even after its sink failed
        self.thread.join()

    def cancel(self) -> None:
        """Stop now (Ctrl-C): what is queued is dropped, the stream to the host cut (its loader keeps the
        layers that arrived whole, and loads nothing)."""
        self.alive = False
        self.sink.abort()
        self.close()

    def _run(self) -> None:
        s = self.state
        while True:
            chunk = self.q.get()
            if chunk is None:
                return
            if not self.alive:
                continue  # cancelled: drop it
            try:
                self.sink.write(chunk)
            except BeamctlError as e:
                s.error = load_failure(s.name, e.remote_exit, e.stderr) if isinstance(e, RemoteEnded) else e
                self.alive = False
                self.sink.abort()
                while self.q.get() is not None:  # let the producer go on for the others
                    pass
                return
            s.sent += len(chunk)
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVERY_S:
                self._last = now
                self.progress(ShipProgress(s.name, s.sent))

    def finish(self) -> None:
        s = self.state
        if s.error is not None:
            return
        try:
            code, out, err = self.sink.finish(LOAD_TIMEOUT_S)
        except BeamctlError as e:
            s.error = e
            return
        self.progress(ShipProgress(s.name, s.sent, done=True))
        if code != 0:
            s.error = load_failure(s.name, code, err or out) if code > 0 else \
                RemoteError(s.name, "load the image", None, tail(err or out))
