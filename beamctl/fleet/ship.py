"""Ship an image to a host's engine without a registry: ask first, then stream it zstd-compressed.

`ship_image` asks the host's engine for the image id (`docker image inspect`); the same id there
means nothing is sent. Otherwise `docker save REF | zstd` runs here and its output goes, as data
on the SSH channel's stdin, into `sh -c 'zstd -d -q | docker load'` on the host; the host's id is
then compared with ours (the id is the digest of the image's config, which names every layer's
digest, so an equal id is the digest check on arrival).

Not yet: sending only the layers the host lacks (issue 5's goal). `docker load` wants every layer
tar of the image in the archive, so a layer-diff needs a different way in (an archive whose missing
layers are rebuilt on the host from its own store, or the engine's registry protocol); until then a
missing image is sent whole, compressed. The bulk path is paramiko (~150 MiB/s here); OpenSSH's
client for the bulk stream is also later.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from beamctl.errors import EnvironmentProblem
from beamctl.fleet.errors import HostUnreachable, RemoteError, tail

CHUNK = 1 << 20
LOAD_IDLE_TIMEOUT_S = 300.0  # no progress on the channel for this long: the host is gone
LOAD_SCRIPT = "zstd -d -q | docker load"  # a cut or corrupt stream fails the load; the id check follows
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ShipResult:
    host: str
    action: str  # present | sent
    bytes_sent: int  # compressed bytes on the wire
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect_argv(image_ref: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{.Id}}", image_ref]


def load_argv() -> list[str]:
    """The remote side of the stream: decompress, then load (the exit status is docker load's)."""
    return ["sh", "-c", LOAD_SCRIPT]


def save_commands(image_ref: str) -> tuple[list[str], list[str]]:
    """The local side: `docker save REF`, piped into zstd on all cores."""
    return ["docker", "save", image_ref], ["zstd", "-q", "-c", "-T0"]


def remote_id(conn: Any, label: str, image_ref: str) -> str | None:
    done = conn.run(inspect_argv(image_ref))
    if done.exit != 0:
        if "no such" in done.stderr.lower():
            return None
        raise RemoteError(label, shlex.join(inspect_argv(image_ref)), done.exit, tail(done.stderr))
    return done.stdout.strip() or None


def ship_image(ssh: Any, host: Any, image_ref: str, image_id: str, progress: Progress,
               name: str | None = None) -> ShipResult:
    """Make the host's engine hold `image_ref` with id `image_id`; raises SshError when it cannot."""
    start = time.monotonic()
    target = ssh.resolve(host, name)
    label = name or target.name
    with ssh.connect(target) as conn:
        if remote_id(conn, label, image_ref) == image_id:
            progress(f"{label}: {image_ref} is present; nothing sent")
            return ShipResult(label, "present", 0, time.monotonic() - start)
        progress(f"{label}: sending {image_ref} (whole image, zstd)")
        sent = _stream(conn, label, image_ref)
        got = remote_id(conn, label, image_ref)
        if got != image_id:
            raise RemoteError(label, "docker load", None,
                              f"the image arrived as {got or 'nothing'}, not {image_id}: nothing is used")
    seconds = time.monotonic() - start
    progress(f"{label}: sent {sent / 1e6:.1f} MB in {seconds:.1f} s; id verified")
    return ShipResult(label, "sent", sent, seconds)


def _stream(conn: Any, label: str, image_ref: str) -> int:
    """`docker save | zstd` here into the channel; the bytes sent."""
    save_argv, zstd_argv = save_commands(image_ref)
    try:
        save = subprocess.Popen(save_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise EnvironmentProblem("the docker CLI is not installed here", "run ./scripts/setup.sh") from None
    try:
        zstd = subprocess.Popen(zstd_argv, stdin=save.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        save.kill()
        save.wait()
        raise EnvironmentProblem("zstd is not installed here", "apt-get install zstd "
                                 "(./scripts/setup.sh does)") from None
    assert save.stdout is not None and zstd.stdout is not None
    save.stdout.close()  # zstd holds it now; save gets SIGPIPE if zstd dies
    chan = conn.exec(load_argv())
    chan.settimeout(LOAD_IDLE_TIMEOUT_S)
    out, err = bytearray(), bytearray()
    readers = [threading.Thread(target=_drain, args=(f, b), daemon=True)
               for f, b in ((chan.recv_stderr, err), (chan.recv, out))]
    for r in readers:
        r.start()
    sent = 0
    try:
        while True:
            chunk = zstd.stdout.read(CHUNK)
            if not chunk:
                break
            chan.sendall(chunk)
            sent += len(chunk)
        chan.shutdown_write()
        for r in readers:
            r.join(LOAD_IDLE_TIMEOUT_S)
        status = chan.recv_exit_status()
    except OSError as e:  # socket.timeout included; a dropped connection
        raise HostUnreachable(label, f"the image stream broke after {sent} bytes: {e or type(e).__name__}"
                              ) from None
    finally:
        chan.close()
        for p in (zstd, save):
            if p.poll() is None:
                p.kill()
            p.wait()
    if save.returncode != 0:
        raise EnvironmentProblem(f"docker save {image_ref} failed: "
                                 f"{tail(save.stderr.read().decode(errors='replace')) if save.stderr else ''}")
    if zstd.returncode != 0:
        raise EnvironmentProblem("zstd failed while compressing the image")
    if status != 0:
        raise RemoteError(label, "zstd -d -q | docker load", status if status >= 0 else None,
                          tail(err.decode(errors="replace") or out.decode(errors="replace")))
    return sent


def _drain(recv: Any, buf: bytearray) -> None:
    while True:
        try:
            chunk = recv(1 << 16)
        except OSError:
            return
        if not chunk:
            return
        buf.extend(chunk)
