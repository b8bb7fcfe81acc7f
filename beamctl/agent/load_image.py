"""`python -m beamctl.agent.load_image`: the host's side of an image ship (beamctl/fleet/ship.py).

stdin is a zstd-compressed `docker save` archive; it is decompressed here, in the agent's own Python
(the `zstandard` wheel that `hosts install` puts in the agent's venv), into `docker load`. A host needs
no zstd binary: only what beamctl installs on it, besides Docker and Python.

A failure says which step failed on one stderr line, `STEP_PREFIX<step>: <reason>`, followed by the last
lines docker printed, and exits non-zero; the client names the host and shows them.
"""

from __future__ import annotations

import subprocess
import sys
from typing import BinaryIO

from beamctl.protocol.layout import LOAD_STEP_PREFIX as STEP_PREFIX

CHUNK = 1 << 20
LOAD_ARGV = ("docker", "load")
EXIT_NO_CODEC = 3
EXIT_BAD_STREAM = 4
EXIT_NO_DOCKER = 5
TAIL_LINES = 8


def say(step: str, reason: str) -> None:
    sys.stderr.write(f"{STEP_PREFIX}{step}: {reason}\n")
    sys.stderr.flush()


def load(stream: BinaryIO, argv: tuple[str, ...] = LOAD_ARGV) -> int:
    """Decompress `stream` into `docker load`; the exit status for this program."""
    try:
        import zstandard
    except ImportError:
        say("decompress", "the agent's Python has no zstandard package (an agent older than this beamctl)")
        return EXIT_NO_CODEC
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        say("docker load", f"cannot run {argv[0]}: {e.strerror or e}")
        return EXIT_NO_DOCKER
    assert proc.stdin is not None
    problem = None
    try:
        zstandard.ZstdDecompressor().copy_stream(stream, proc.stdin, read_size=CHUNK, write_size=CHUNK)
    except zstandard.ZstdError as e:
        problem = ("decompress", f"the stream is not valid zstd: {e}")
    except BrokenPipeError:
        pass  # docker load stopped reading: its own status and words say why
    out, err = proc.communicate()  # closes its stdin (a broken pipe there is ignored)
    if problem is not None:
        say(*problem)
        return EXIT_BAD_STREAM
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()[-TAIL_LINES:]
        say("docker load", f"exited with {proc.returncode}")
        sys.stderr.write("".join(f"{line}\n" for line in lines))
        return proc.returncode
    sys.stdout.write(out.decode(errors="replace"))
    return 0


def main() -> int:
    return load(sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main())
