"""`python -m beamctl.agent.load_image`: the host's side of an image ship (beamctl/fleet/ship.py).

stdin is a zstd-compressed `docker save`-format archive; it is decompressed here, in the agent's own
Python (the `zstandard` wheel that `hosts install` puts in the agent's venv), and passed into
`docker load`. A host needs no zstd binary: only what beamctl installs on it, besides Docker and Python.

Layers that arrived whole are kept (staging.py, root-only): each layer tar is also written to a file
named by its digest, hashed on the way, and renamed into place only once whole. A stream that is cut
(Ctrl-C on the client, the network went away) loads nothing (`docker load` unpacks everything before it
registers anything, and is stopped here) but keeps those layers: the client's next survey lists them
(`--staged`) and leaves them out of the next stream, and this loader puts them back into the archive
where the manifest names them, after checking each one's digest again (a damaged one is dropped and the
load fails on the missing layer; the client then resends the whole image). Once a load succeeds, the
layers it used are removed; ones no deploy came back for are removed after STAGED_KEEP_S. A stream is
whole only when its zstd frame ended: a cut that falls between two tar members is still a cut. Staging
is best effort: a full disk there stops staging, not the load.

A failure says which step failed on one stderr line, `STEP_PREFIX<step>: <reason>`, followed by the last
lines docker printed, and exits non-zero; the client names the host and shows them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import IO, Any, BinaryIO

from beamctl.agent.staging import Staging, say, unlink
from beamctl.protocol.layout import STAGED_DIR

CHUNK = 1 << 20
LOAD_ARGV = ("docker", "load")
EXIT_NO_CODEC = 3
EXIT_BAD_STREAM = 4
EXIT_NO_DOCKER = 5
EXIT_CUT = 6
TAIL_LINES = 8




class Unpacked:
    """stdin, decompressed, as a file to read; `whole` once every zstd frame in it ended."""

    def __init__(self, src: BinaryIO, zstandard: Any) -> None:
        self.src, self.zstd = src, zstandard
        self.obj = zstandard.ZstdDecompressor().decompressobj()
        self.buf = bytearray()
        self.eof = False
        self.started = False  # a frame has begun (and not ended)
        self.frames = 0  # frames that ended

    @property
    def whole(self) -> bool:
        """Everything read, and it was whole frames (at least one)."""
        return self.eof and self.frames > 0 and not self.started and not self.buf

    def _more(self) -> None:
        raw = self.src.read(CHUNK)
        if not raw:
            self.eof = True
            return
        while raw:
            self.started = True
            self.buf += self.obj.decompress(raw)
            if not self.obj.eof:
                return
            raw = self.obj.unused_data  # the next frame (a stream may hold several)
            self.obj = self.zstd.ZstdDecompressor().decompressobj()
            self.started, self.frames = False, self.frames + 1

    def read(self, n: int = -1) -> bytes:
        while not self.eof and (n < 0 or len(self.buf) < n):
            self._more()
        n = len(self.buf) if n < 0 else min(n, len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def drain(self) -> None:
        while not self.eof:
            self._more()
            self.buf.clear()


class _Tee:
    """A layer tar on its way into `docker load`, also written (and hashed) into a staging part file."""

    def __init__(self, src: IO[bytes], part: Path | None) -> None:
        self.src, self.part = src, part
        self.hash = hashlib.sha256()
        self.out: IO[bytes] | None = None
        if part is not None:
            try:
                self.out = open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
            except OSError:
                self.out = None

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.hash.update(data)
        if self.out is not None and data:
            try:
                self.out.write(data)
            except OSError:  # the disk filled: this layer is not kept, the load goes on
                self.drop()
        return data

    def drop(self) -> None:
        if self.out is not None:
            try:
                self.out.close()
            except OSError:
                pass
            self.out = None
        if self.part is not None:
            unlink(self.part)

    def keep(self, staging: Staging) -> str:
        """Close the part; named by its digest when whole. Returns the digest."""
        digest = "sha256:" + self.hash.hexdigest()
        if self.out is None:
            return digest
        try:
            self.out.close()
            self.out = None
            final = staging.path(digest)
            if final is not None and self.part is not None:
                os.replace(self.part, final)
        except OSError:
            self.drop()
        return digest


def _is_layer(name: str) -> bool:
    folder, _, leaf = name.partition("/")
    return leaf == "layer.tar" and "/" not in folder


def _is_config(name: str) -> bool:
    return "/" not in name and name.endswith(".json") and name != "manifest.json"


def _fill(manifest: bytes, configs: dict[str, bytes], received: set[str], staging: Staging,
          tout: tarfile.TarFile) -> set[str]:
    """Staged layers where the manifest names a tar the stream left out; the diffIDs used."""
    used: set[str] = set()
    try:
        entries = json.loads(manifest)
    except ValueError:
        return used
    for entry in entries if isinstance(entries, list) else []:
        try:
            diff_ids = json.loads(configs[entry["Config"]])["rootfs"]["diff_ids"]
            paths = list(entry["Layers"])
        except (KeyError, TypeError, ValueError):
            continue
        for path, diff_id in zip(paths, diff_ids):
            if path in received or not isinstance(path, str):
                continue
            staged = staging.verified(diff_id)
            if staged is None:
                continue  # the engine holds it (or the load says it is missing)
            with staged.open("rb") as f:
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = os.fstat(f.fileno()).st_size, 0o644, 0
                tout.addfile(info, f)
            received.add(path)
            used.add(diff_id)
    return used


class _Cut(Exception):
    """The stream ended before its zstd frame did."""


def load(stream: BinaryIO, argv: tuple[str, ...] = LOAD_ARGV, staging_dir: Path | None = Path(STAGED_DIR)) -> int:
    """Decompress `stream` into `docker load`, keeping whole layers; the exit status for this program."""
    try:
        import zstandard
    except ImportError:
        say("decompress", "the agent's Python has no zstandard package (an agent older than this beamctl)")
        return EXIT_NO_CODEC
    staging = Staging(staging_dir)
    staging.prune()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        say("docker load", f"cannot run {argv[0]}: {e.strerror or e}")
        return EXIT_NO_DOCKER
    assert proc.stdin is not None
    kept: set[str] = set()
    problem, code = None, EXIT_BAD_STREAM
    try:
        _pass(Unpacked(stream, zstandard), proc.stdin, staging, kept)
    except _Cut:
        problem, code = _cut(kept, staging), EXIT_CUT
    except zstandard.ZstdError as e:
        problem = ("decompress", f"the stream is not valid zstd: {e}")
    except tarfile.TarError as e:
        problem = ("receive", f"the stream is not an image archive: {e}")
    except BrokenPipeError:
        pass  # docker load stopped reading: its own status and words say why
    if problem is not None:
        proc.kill()  # before it could read an end: nothing is registered
        proc.communicate()
        say(*problem)
        return code
    out, err = proc.communicate()  # closes its stdin (a broken pipe there is ignored)
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()[-TAIL_LINES:]
        say("docker load", f"exited with {proc.returncode}")
        sys.stderr.write("".join(f"{line}\n" for line in lines))
        return proc.returncode
    staging.remove(kept)
    sys.stdout.write(out.decode(errors="replace"))
    return 0


def _pass(unpacked: Unpacked, sink: IO[bytes], staging: Staging, kept: set[str]) -> None:
    """The archive from `unpacked` into `sink` (docker load's stdin), staging each layer (into `kept`),
    with the staged layers the manifest names put back; _Cut when the stream ended early (the archive's
    end is then never written: the caller stops docker load first)."""
    received: set[str] = set()
    configs: dict[str, bytes] = {}
    manifest: bytes | None = None
    part = None if staging.root is None else staging.root / f".{os.getpid()}.part"
    tout = tarfile.open(fileobj=sink, mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT)
    try:
        tin = tarfile.open(fileobj=unpacked, mode="r|", bufsize=CHUNK)
        for member in tin:
            src = tin.extractfile(member) if member.isfile() else None
            if src is not None and _is_layer(member.name):
                tee = _Tee(src, part)
                try:
                    tout.addfile(member, tee)
                except BaseException:
                    tee.drop()
                    raise
                kept.add(tee.keep(staging))
                received.add(member.name)
                continue
            data = src.read() if src is not None else None
            if member.name == "manifest.json" and data is not None:
                manifest = data
                continue  # last, after the staged layers it names
            if data is not None and _is_config(member.name):
                configs[member.name] = data
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    except (tarfile.ReadError, OSError):
        if unpacked.eof and not unpacked.whole:
            raise _Cut() from None
        raise
    unpacked.drain()
    if not unpacked.whole:
        raise _Cut()
    if manifest is not None:
        kept |= _fill(manifest, configs, received, staging, tout)
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mode = len(manifest), 0o644
        tout.addfile(info, io.BytesIO(manifest))
    tout.close()


def _cut(kept: set[str], staging: Staging) -> tuple[str, str]:
    where = f"; {len(kept)} layer{'s' if len(kept) != 1 else ''} that arrived whole kept for the next deploy" \
        if staging.root is not None and kept else ""
    return "receive", f"the stream ended early (the client stopped, or the way to it broke): nothing loaded{where}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m beamctl.agent.load_image")
    p.add_argument("--staging", type=Path, default=Path(STAGED_DIR), help="where whole layers are kept")
    p.add_argument("--staged", action="store_true", help="list the staged layers' diffIDs and exit")
    args = p.parse_args(argv)
    if args.staged:
        sys.stdout.write("".join(f"{d}\n" for d in Staging(args.staging, create=False).held()))
        return 0
    return load(sys.stdin.buffer, staging_dir=args.staging)


if __name__ == "__main__":
    sys.exit(main())
