"""The host's side of an image ship (beamctl.agent.load_image) and how the client names its failures.

The loader decompresses in the agent's own Python (zstandard) into `docker load`; a host needs no zstd
binary. A failure names its step; a command that ended while the stream was still being written is the
command's failure (exit status, stderr), never "unreachable".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from beamctl.agent import load_image, staging
from beamctl.errors import ExitCode
from beamctl.fleet import stream
from beamctl.transport import bulk
from beamctl.transport.errors import HostUnreachable, RemoteEnded

PY = "/opt/beamctl/agent/venv/bin/python"
CONFIG = "c" * 64 + ".json"


def image_archive(blobs: list[bytes], leave_out: tuple[int, ...] = ()) -> tuple[bytes, list[str]]:
    """A docker-save-shaped archive of layers `blobs` (folders v0, v1, ...), without the tars of
    `leave_out`; and the diffIDs."""
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add(CONFIG, json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
        for i, blob in enumerate(blobs):
            if i not in leave_out:
                add(f"v{i}/layer.tar", blob)
        add("manifest.json", json.dumps([{"Config": CONFIG, "RepoTags": ["app:1"],
                                          "Layers": [f"v{i}/layer.tar" for i in range(len(blobs))]}]).encode())
    return out.getvalue(), diff_ids


def packed(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


BLOBS = [os.urandom(200_000) for _ in range(3)]  # random: the compressed stream is as long as the layers


class Loader:
    """load_image.load with a stand-in for `docker load` that copies what it read to a file and prints
    `Loaded image: app:1` only once it read to the end; a private staging folder."""

    def __init__(self, tmp: Path) -> None:
        self.staging, self.got, self.done = tmp / "incoming", tmp / "got.tar", tmp / "load-finished"
        self.argv = ("sh", "-c", f"cat > {self.got} && touch {self.done} && echo 'Loaded image: app:1'")

    def __call__(self, data: bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        self.done.unlink(missing_ok=True)
        code = load_image.load(io.BytesIO(data), self.argv, self.staging)
        out, err = capsys.readouterr()
        return code, out, err

    def staged(self) -> list[str]:
        return sorted(os.listdir(self.staging))

    def loaded(self) -> dict[str, bytes]:
        with tarfile.open(self.got) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.fixture
def loader(tmp_path) -> Loader:
    return Loader(tmp_path)


def names_of(diff_ids: list[str]) -> list[str]:
    return sorted(d.removeprefix("sha256:") + ".tar" for d in diff_ids)


def test_the_loader_passes_the_archive_into_the_load_and_keeps_nothing_after(loader, capsys):
    data, _ = image_archive(BLOBS)
    code, out, err = loader(packed(data), capsys)
    assert (code, out, err) == (0, "Loaded image: app:1\n", "")
    got = loader.loaded()
    assert [got[f"v{i}/layer.tar"] for i in range(3)] == BLOBS and list(got)[-1] == "manifest.json"
    assert loader.staged() == []  # loaded: nothing left behind
    assert stat.S_IMODE(os.stat(loader.staging).st_mode) == 0o700


@pytest.mark.parametrize("keep", [0.55, 0.9])
def test_a_cut_stream_loads_nothing_and_keeps_the_layers_that_arrived_whole(loader, capsys, keep):
    data, diff_ids = image_archive(BLOBS)
    z = packed(data)
    code, out, err = loader(z[:int(len(z) * keep)], capsys)
    whole = 1 if keep < 0.66 else 2
    assert code == load_image.EXIT_CUT and out == "" and not loader.done.exists()  # the load never finished
    assert err == ("beamctl-load: receive: the stream ended early (the client stopped, or the way to it broke): "
                   f"nothing loaded; {whole} layer{'s' if whole > 1 else ''} that arrived whole kept for the "
                   "next deploy\n")
    assert loader.staged() == names_of(diff_ids[:whole])  # no part file left
    for name in loader.staged():
        assert stat.S_IMODE(os.stat(loader.staging / name).st_mode) == 0o600


def test_a_stream_missing_only_its_last_bytes_is_still_a_cut(loader, capsys):
    data, diff_ids = image_archive(BLOBS)
    z = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    code, _, err = loader(z[:-4], capsys)  # all but the frame's checksum: every tar member is there
    assert code == load_image.EXIT_CUT and not loader.done.exists() and "ended early" in err
    assert loader.staged() == names_of(diff_ids)


def test_the_next_stream_leaves_kept_layers_out_and_the_loader_puts_them_back(loader, capsys):
    data, diff_ids = image_archive(BLOBS)
    z = packed(data)
    loader(z[:int(len(z) * 0.9)], capsys)
    assert loader.staged() == names_of(diff_ids[:2])
    rest, _ = image_archive(BLOBS, leave_out=(0, 1))
    code, out, _ = loader(packed(rest), capsys)
    assert (code, out) == (0, "Loaded image: app:1\n")
    got = loader.loaded()
    assert [got[f"v{i}/layer.tar"] for i in range(3)] == BLOBS and list(got)[-1] == "manifest.json"
    assert loader.staged() == []  # used, so removed


def test_a_damaged_kept_layer_is_dropped_never_loaded(loader, capsys):
    data, diff_ids = image_archive(BLOBS)
    z = packed(data)
    loader(z[:int(len(z) * 0.9)], capsys)
    damaged = loader.staging / names_of(diff_ids[:1])[0]
    blob = damaged.read_bytes()
    damaged.write_bytes(bytes([blob[0] ^ 0xFF]) + blob[1:])
    rest, _ = image_archive(BLOBS, leave_out=(0, 1))
    code, _, err = loader(packed(rest), capsys)
    assert f"beamctl-load: staged: {damaged.name} is damaged (its digest is not its name): removed, not used" in err
    got = loader.loaded()
    assert "v0/layer.tar" not in got and got["v1/layer.tar"] == BLOBS[1]  # docker load then names the gap
    assert not damaged.exists()


def test_old_kept_layers_are_removed_and_the_survey_lists_the_rest(loader, capsys):
    data, diff_ids = image_archive(BLOBS)
    z = packed(data)
    loader(z[:int(len(z) * 0.9)], capsys)
    old = loader.staging / names_of(diff_ids[:1])[0]
    os.utime(old, (time.time() - staging.STAGED_KEEP_S - 60,) * 2)
    (loader.staging / "notes.txt").write_text("not a layer")
    staging.Staging(loader.staging).prune()
    assert not old.exists()
    assert staging.Staging(loader.staging, create=False).held() == [d for d in diff_ids[:2] if d in
                                                                       {"sha256:" + n[:-4] for n in loader.staged()}]
    listed = subprocess.run([sys.executable, "-m", "beamctl.agent.load_image", "--staging", str(loader.staging),
                             "--staged"], capture_output=True, text=True, check=True).stdout
    assert listed.split() == staging.Staging(loader.staging).held() and len(listed.split()) == 1


def test_a_full_disk_stops_the_keeping_not_the_load(loader, capsys, tmp_path):
    loader.staging.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(loader.staging)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        data, _ = image_archive(BLOBS)
        code, out, err = loader(packed(data), capsys)  # the second layer does not fit
        assert (code, out, err) == (0, "Loaded image: app:1\n", "")
        assert [loader.loaded()[f"v{i}/layer.tar"] for i in range(3)] == BLOBS
        assert loader.staged() == []
    finally:
        subprocess.run(["umount", str(loader.staging)], check=True)


def test_a_stream_that_is_not_zstd_is_the_decompress_step(loader, capsys):
    code, out, err = loader(b"PK\x03\x04 this is no zstd frame" * 100, capsys)
    assert code == load_image.EXIT_BAD_STREAM and out == "" and not loader.done.exists()
    assert err.startswith("beamctl-load: decompress: the stream is not valid zstd: ")


def test_a_stream_that_is_no_archive_is_the_receive_step(loader, capsys):
    code, out, err = loader(packed(b"layer" * 300_000), capsys)
    assert code == load_image.EXIT_BAD_STREAM and out == "" and not loader.done.exists()
    assert err.startswith("beamctl-load: receive: the stream is not an image archive: ")


def test_a_failed_load_says_its_step_and_its_last_lines(capsys, tmp_path):
    loader = ("import sys; sys.stdin.buffer.read(); "
              "print('\\n'.join(f'line {i}' for i in range(20)), file=sys.stderr); sys.exit(1)")
    code = load_image.load(io.BytesIO(packed(image_archive(BLOBS)[0])), (sys.executable, "-c", loader),
                           tmp_path / "incoming")
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == ["beamctl-load: docker load: exited with 1", *[f"line {i}" for i in range(12, 20)]]


def test_a_missing_docker_is_said(capsys, tmp_path):
    code = load_image.load(io.BytesIO(packed(b"x")), ("/nonexistent/docker", "load"), tmp_path / "incoming")
    assert code == load_image.EXIT_NO_DOCKER
    assert capsys.readouterr().err == "beamctl-load: docker load: cannot run /nonexistent/docker: " \
                                      "No such file or directory\n"


# --- the client's words for a failed load ----------------------------------------------------------------

def test_a_host_without_the_agent_is_told_to_install_it():
    e = stream.load_failure("gpu-1", 127, f"bash: line 1: {PY}: No such file or directory\n")
    assert e.message == f"gpu-1: `load the image: start the loader` exited with 127: " \
                        f"bash: line 1: {PY}: No such file or directory"
    assert e.hint == f"the agent is not installed there ({PY} is missing): beamctl hosts install gpu-1"


def test_an_old_agent_without_zstandard_is_told_to_upgrade():
    e = stream.load_failure("gpu-1", 3, "beamctl-load: decompress: the agent's Python has no zstandard package "
                                      "(an agent older than this beamctl)\n")
    assert e.message == "gpu-1: `load the image: decompress` exited with 3: decompress: the agent's Python has " \
                        "no zstandard package (an agent older than this beamctl)"
    assert e.hint == "beamctl hosts install gpu-1 (the agent there is older than this beamctl)"


def test_docker_loads_own_words_come_with_the_step():
    stderr = ("beamctl-load: docker load: exited with 1\n"
              "write /var/lib/docker/tmp/docker-import-1/abc/layer.tar: no space left on device\n")
    e = stream.load_failure("gpu-2", 1, stderr)
    assert e.message == "gpu-2: `load the image: docker load` exited with 1: docker load: exited with 1\n" \
                        "write /var/lib/docker/tmp/docker-import-1/abc/layer.tar: no space left on device"
    assert e.hint is None


# --- a command that ends while its stream is written -----------------------------------------------------

def test_a_command_that_ended_early_is_its_failure_not_an_unreachable_host():
    sink = bulk.ProcessSink("gpu-1", ["sh", "-c", "head -c 10 >/dev/null; echo 'sh: 1: zstd: not found' >&2; "
                                                  "exit 127"])
    with pytest.raises(RemoteEnded) as e:
        for _ in range(1000):
            sink.write(b"x" * 65536)
    assert (e.value.host, e.value.remote_exit, e.value.stderr) == ("gpu-1", 127, "sh: 1: zstd: not found\n")
    assert e.value.exit_code == ExitCode.REMOTE  # beamctl's own exit code, never the remote command's
    assert not isinstance(e.value, HostUnreachable)
    assert "unreachable" not in e.value.message


def test_ssh_itself_failing_is_still_unreachable():
    sink = bulk.ProcessSink("gpu-1", ["sh", "-c", "echo 'ssh: connect to host x port 22: Connection refused' >&2;"
                                                  " exit 255"])
    with pytest.raises(HostUnreachable, match="the ssh stream closed: ssh: connect to host x port 22"):
        for _ in range(1000):
            sink.write(b"x" * 65536)


# --- real docker load --------------------------------------------------------------------------------------

@pytest.mark.integration
def test_the_loader_loads_a_real_image_into_the_engine(tmp_path):
    ref = "beamctl-test/load-image:one"
    content = io.BytesIO()
    with tarfile.open(fileobj=content, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    subprocess.run(["docker", "import", "-", ref], input=content.getvalue(), check=True, capture_output=True)
    try:
        saved = subprocess.run(["docker", "save", ref], check=True, capture_output=True).stdout
        image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], check=True,
                                  capture_output=True, text=True).stdout.strip()
        subprocess.run(["docker", "image", "rm", ref], check=True, capture_output=True)
        done = subprocess.run([sys.executable, "-m", "beamctl.agent.load_image", "--staging",
                               str(tmp_path / "incoming")],
                              input=zstandard.ZstdCompressor().compress(saved), capture_output=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().startswith(f"Loaded image: {ref}")
        got = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                             text=True).stdout.strip()
        assert got == image_id
    finally:
        subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True)


def test_a_stream_we_cut_ourselves_is_unreachable_not_the_commands_failure():
    sink = bulk.ProcessSink("gpu-1", ["sh", "-c", "exec cat >/dev/null"])
    sink.write(b"x" * 1000)
    sink.abort()  # as a test or Ctrl-C cuts it: ssh is killed here, the remote status is unknown
    with pytest.raises(HostUnreachable):
        sink.write(b"x" * 65536)
