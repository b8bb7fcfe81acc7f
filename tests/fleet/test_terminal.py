"""On a terminal beamctl asks: whether to trust a host key, and a key's passphrase (real pty)."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import keygen

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def in_terminal(args: list[str], answers: list[tuple[str, str]], timeout: float = 30) -> tuple[int, str]:
    """Run beamctl with a pty as its terminal; type each answer once its prompt has appeared."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "beamctl", *args])
    out, seen, pending = b"", 0, list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the child is gone
                    break
                if not data:
                    break
                out += data
            if pending and pending[0][0].encode() in out[seen:]:
                seen = len(out)
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
        else:
            raise AssertionError(f"beamctl {' '.join(args)} still running after {timeout} s: {out!r}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert not pending, f"never asked {pending[0][0]!r}: {out!r}"
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n")


def test_trust_asks_and_a_passphrase_is_typed_once(home, sshd_factory):
    keygen(home.key, passphrase="correct horse")
    server = sshd_factory()
    home.write_config(f"Host box\n  HostName {server.address}\n  Port {server.port}\n  User root\n")

    code, out = in_terminal(["hosts", "trust", "box"], [("[y/N]", "n")])
    assert code == 1 and "not trusted; nothing was written" in out
    assert not home.known_hosts.exists()

    code, out = in_terminal(["hosts", "trust", "box"], [("[y/N]", "y")])
    assert code == 0, out
    assert f"box ({server.known_as}) offers the host key ssh-ed25519 {server.fingerprint}" in out
    assert home.known_hosts.read_text().startswith(f"{server.known_as} ssh-ed25519 ")

    code, out = in_terminal(["hosts", "check", "box"], [(f"Enter passphrase for key {home.key}: ", "correct horse")])
    assert code == 0, out
    assert "correct horse" not in out  # not echoed
    assert out.count("Enter passphrase") == 1 and "1 host: 1 ok" in out
