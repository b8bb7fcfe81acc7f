"""The host's side of an image ship (beamctl.agent.load_image) and how the client names its failures.

The loader decompresses in the agent's own Python (zstandard) into `docker load`; a host needs no zstd
binary. A failure names its step; a command that ended while the stream was still being written is the
command's failure (exit status, stderr), never "unreachable".
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest
import zstandard

from beamctl.agent import load_image
from beamctl.errors import ExitCode
from beamctl.fleet import stream
from beamctl.transport import bulk
from beamctl.transport.errors import HostUnreachable, RemoteEnded

PY = "/opt/beamctl/agent/venv/bin/python"


def packed(data: bytes) -> io.BytesIO:
    return io.BytesIO(zstandard.ZstdCompressor(level=3).compress(data))


def run_loader(stream: io.BytesIO, loader: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """load_image.load with a stand-in for `docker load` (a Python one-liner: what it read, its status)."""
    code = load_image.load(stream, (sys.executable, "-c", loader))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_loader_decompresses_into_the_load_and_passes_its_output(capsys):
    data = b"layer" * 300_000
    code, out, err = run_loader(packed(data), "import sys; print('Loaded image:', len(sys.stdin.buffer.read()))",
                                capsys)
    assert (code, out, err) == (0, f"Loaded image: {len(data)}\n", "")


def test_a_stream_that_is_not_zstd_is_the_decompress_step(capsys):
    code, out, err = run_loader(io.BytesIO(b"PK\x03\x04 this is no zstd frame" * 100),
                                "import sys; sys.stdin.buffer.read()", capsys)
    assert code == load_image.EXIT_BAD_STREAM and out == ""
    assert err.startswith("beamctl-load: decompress: the stream is not valid zstd: ")


def test_a_failed_load_says_its_step_and_its_last_lines(capsys):
    loader = ("import sys; sys.stdin.buffer.read(); "
              "print('\\n'.join(f'line {i}' for i in range(20)), file=sys.stderr); sys.exit(1)")
    code, out, err = run_loader(packed(b"x" * 1000), loader, capsys)
    assert code == 1
    assert err.splitlines() == ["beamctl-load: docker load: exited with 1", *[f"line {i}" for i in range(12, 20)]]


def test_a_missing_docker_is_said(capsys):
    code = load_image.load(packed(b"x"), ("/nonexistent/docker", "load"))
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
        done = subprocess.run([sys.executable, "-m", "beamctl.agent.load_image"],
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
