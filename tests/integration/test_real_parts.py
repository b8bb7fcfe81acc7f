"""The set-up script's promises, checked against the real things: Docker Engine, CRIU, sshd."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.integration.conftest import need

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)


def test_docker_engine_answers_with_experimental_features():
    proc = run(need("docker"), "info", "--format", "{{.ServerVersion}} {{.ExperimentalBuild}} {{.Driver}}")
    assert proc.returncode == 0, proc.stderr
    version, experimental, driver = proc.stdout.split()
    assert experimental == "true" and driver == "overlay2" and version


def test_criu_is_version_4_and_checks_out():
    criu = need("criu")
    version = run(criu, "--version")
    assert int(re.search(r"Version: (\d+)\.", version.stdout).group(1)) >= 4
    check = run(criu, "check")
    assert "Looks good" in check.stdout + check.stderr


def test_criu_dumps_and_restores_a_real_process(tmp_path):
    """A process with 64 MiB in memory is dumped (and killed), restored, and carries on where it was."""
    criu = need("criu")
    out = tmp_path / "out.txt"
    script = ("import os, sys, time\n"
              "blob = bytearray(os.urandom(1 << 20)) * 64\n"
              "digest = hash(bytes(blob))\n"
              f"open({str(tmp_path / 'ready')!r} + '.tmp', 'w').write(str(digest))\n"
              f"os.replace({str(tmp_path / 'ready')!r} + '.tmp', {str(tmp_path / 'ready')!r})\n"
              "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
              f"open({str(out)!r} + '.tmp', 'w').write(str(hash(bytes(blob))))\n"
              f"os.replace({str(out)!r} + '.tmp', {str(out)!r})\n")
    images = tmp_path / "images"
    images.mkdir()
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", script, str(go)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    dump = run(criu, "dump", "-t", str(proc.pid), "-D", str(images), "--shell-job", "-o", "dump.log")
    assert dump.returncode == 0, (images / "dump.log").read_text()[-2000:]
    assert proc.wait(timeout=10) != 0  # the dumped process is gone
    size = sum(f.stat().st_size for f in images.iterdir())
    assert size > 64 << 20  # the memory is in the images
    go.touch()
    restore = run(criu, "restore", "-D", str(images), "--shell-job", "-d", "-o", "restore.log")
    assert restore.returncode == 0, (images / "restore.log").read_text()[-2000:]
    while not out.exists():
        assert time.monotonic() < deadline + 30
        time.sleep(0.05)
    assert out.read_text() == (tmp_path / "ready").read_text()  # same memory after restore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sshd_runs_on_loopback_and_host_keys_are_verified(tmp_path):
    sshd, ssh, keygen = need("sshd"), need("ssh"), need("ssh-keygen")
    for name in ("host", "client"):
        assert run(keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)).returncode == 0
    (tmp_path / "authorized_keys").write_text((tmp_path / "client.pub").read_text())
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\n"
                      f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nStrictModes no\n"
                      f"PidFile {tmp_path / 'sshd.pid'}\nPasswordAuthentication no\nUsePAM no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while run(sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"
                  ).returncode != 0:
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.1)
        base = [ssh, "-p", str(port), "-i", str(tmp_path / "client"), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}"]
        (tmp_path / "known_hosts").write_text("")
        refused = run(*base, "root@127.0.0.1", "echo", "in")
        assert refused.returncode != 0 and "Host key verification failed" in refused.stderr
        host_key = (tmp_path / "host.pub").read_text().split()[:2]
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
        ok = run(*base, "root@127.0.0.1", "echo", "in")
        assert (ok.returncode, ok.stdout) == (0, "in\n"), ok.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_wheel_ships_the_schema(tmp_path):
    proc = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO),
               timeout=300, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("beamctl-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("beamctl/schemas/beam.schema.json")
    assert shipped == (REPO / "schemas" / "beam.schema.json").read_bytes()
