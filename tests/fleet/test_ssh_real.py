"""The trust layer against real OpenSSH sshd instances on loopback, from a private HOME."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from beamctl.protocol.wire import AgentClient
from beamctl.transport.errors import AuthFailed, HostKeyUnknown, HostUnreachable, KeyNeedsPassphrase, RemoteError
from beamctl.transport.ssh import Ssh, SshTransport, run
from tests.fleet.conftest import free_port, keygen

pytestmark = pytest.mark.integration


def box(home, server, name="box", extra=""):
    home.write_config(f"Host {name}\n  HostName {server.address}\n  Port {server.port}\n  User root\n{extra}")


def known_lines(home) -> list[str]:
    return home.known_hosts.read_text().splitlines() if home.known_hosts.exists() else []


def test_an_unknown_host_is_refused_with_its_fingerprint_and_the_trust_command(cli, home, sshd_factory):
    server = sshd_factory()
    box(home, server)
    result = cli("hosts", "check", "box")
    fp = server.fingerprint
    assert result.code == 4, result.err
    assert result.err.splitlines() == [
        "box: refused [HostKeyUnknown]",
        f"  error: box: unknown host key ssh-ed25519 {fp} for {server.known_as}; not connecting",
        "  hint: check that fingerprint with the host's owner (on the host: ssh-keygen -lf "
        "/etc/ssh/ssh_host_*_key.pub), then run: beamctl hosts trust box",
        "1 host: 0 ok, 1 failed (box)",
    ]
    assert known_lines(home) == []  # never added on its own
    with pytest.raises(HostKeyUnknown) as e:
        run("box", ["true"])
    assert (e.value.fingerprint, e.value.key_type, e.value.known_as) == (fp, "ssh-ed25519", server.known_as)


def test_trust_yes_then_check_json(cli, home, sshd_factory):
    server = sshd_factory()
    box(home, server)
    fp = server.fingerprint
    trusted = cli("hosts", "trust", "box", "--yes")
    assert trusted.code == 0, trusted.err
    assert trusted.err == (f"box ({server.known_as}) offers the host key ssh-ed25519 {fp}\n"
                           f"trusted box ({server.known_as}): accepted ssh-ed25519 {fp}; added to {home.known_hosts}\n")
    host_pub = server.host_key.with_suffix(".pub").read_text().split()[:2]
    assert known_lines(home) == [f"{server.known_as} {' '.join(host_pub)}"]
    assert os.stat(home.known_hosts).st_mode & 0o777 == 0o600

    started = time.monotonic()
    checked = cli("hosts", "check", "box", "--json")
    elapsed = time.monotonic() - started
    assert checked.code == 0, checked.err
    [host] = json.loads(checked.out)["hosts"]
    server_version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                    text=True).stdout.strip()
    assert (host["name"], host["reachable"], host["ok"], host["error"]) == ("box", True, True, None)
    assert host["facts"]["docker_version"] == server_version != ""
    assert host["facts"]["criu_version"] and host["facts"]["disks"][0]["path"] == "/"
    assert host["facts"]["agent_installed"] is False and host["facts"]["agent_note"] == "not installed"
    assert elapsed < 10

    again = cli("hosts", "trust", "box")
    assert (again.code, again.err) == (0, f"box ({server.known_as}) is already trusted: ssh-ed25519 {fp}\n")
    assert len(known_lines(home)) == 1


def test_trust_without_a_terminal_and_without_yes_writes_nothing(cli, home, sshd_factory):
    server = sshd_factory()
    box(home, server)
    result = cli("hosts", "trust", "box")
    assert result.code == 2
    assert "error: no terminal to ask whether to trust ssh-ed25519 SHA256:" in result.err
    assert "then: beamctl hosts trust box --yes" in result.err
    assert known_lines(home) == []


def test_a_changed_host_key_is_refused_loudly_until_the_old_one_is_removed(cli, home, sshd_factory):
    server = sshd_factory()
    box(home, server)
    assert cli("hosts", "trust", "box", "--yes").code == 0
    old_fp = server.fingerprint
    server.new_host_key()
    new_fp = server.fingerprint
    assert new_fp != old_fp

    checked = cli("hosts", "check", "box")
    assert checked.code == 4
    assert f"box: HOST KEY CHANGED for {server.known_as}: it now offers ssh-ed25519 {new_fp}, but " \
           f"{home.known_hosts} holds {old_fp}. Someone may be intercepting the connection " \
           "(man-in-the-middle)" in checked.err
    remove = f"ssh-keygen -R '{server.known_as}' -f {home.known_hosts}"
    assert f"hint: only if you know the host's key changed: {remove}, then beamctl hosts trust box" in checked.err

    refused = cli("hosts", "trust", "box", "--yes")  # trust does not paper over a changed key
    assert refused.code == 4 and "HOST KEY CHANGED" in refused.err
    assert len(known_lines(home)) == 1 and old_fp == _fp_of_line(known_lines(home)[0])

    subprocess.run(["ssh-keygen", "-R", server.known_as, "-f", str(home.known_hosts)], check=True,
                   capture_output=True)
    assert cli("hosts", "trust", "box", "--yes").code == 0
    assert cli("hosts", "check", "box").code == 0


def test_trust_several_hosts_at_once_each_fingerprint_shown_one_refusal_never_stops_the_rest(cli, home,
                                                                                            sshd_factory):
    a, b = sshd_factory("a"), sshd_factory("b")
    home.write_config("".join(f"Host {n}\n  HostName {s.address}\n  Port {s.port}\n  User root\n"
                              for n, s in (("a", a), ("b", b))))
    both = cli("hosts", "trust", "a", "b", "--yes")
    assert both.code == 0, both.err
    assert [line.split()[0] for line in both.err.splitlines() if line.startswith(("trusted", "a", "b"))] == [
        "a", "trusted", "b", "trusted"]
    assert a.fingerprint in both.err and b.fingerprint in both.err and len(known_lines(home)) == 2
    b.new_host_key()
    again = cli("hosts", "trust", "a", "b", "--yes")
    assert again.code == 4  # b's changed key: REMOTE, with its fix; a is still said
    assert f"a ({a.known_as}) is already trusted: ssh-ed25519 {a.fingerprint}" in again.err
    assert "error: b: HOST KEY CHANGED" in again.err and "ssh-keygen -R" in again.err
    assert len(known_lines(home)) == 2


def _fp_of_line(line: str) -> str:
    import base64
    import hashlib

    blob = base64.b64decode(line.split()[2])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_proxyjump_goes_through_the_jump_host(cli, home, sshd_factory):
    jump = sshd_factory("jump", address="127.0.0.2")
    target = sshd_factory("target", address="127.0.0.3")
    home.write_config(f"Host bastion\n  HostName {jump.address}\n  Port {jump.port}\n  User root\n"
                      f"Host gpu1\n  HostName {target.address}\n  Port {target.port}\n  User root\n"
                      "  ProxyJump bastion\n")
    first = cli("hosts", "trust", "gpu1", "--yes")  # the jump host must be trusted first
    assert first.code == 4
    assert f"jump host bastion (on the way to gpu1): unknown host key ssh-ed25519 " \
           f"{jump.fingerprint}" in first.err
    assert "beamctl hosts trust bastion" in first.err
    assert cli("hosts", "trust", "bastion", "--yes").code == 0
    assert cli("hosts", "trust", "gpu1", "--yes").code == 0
    assert run("gpu1", ["true"]).exit == 0

    jump.stop()  # the target is still up and reachable directly; through the jump it is not
    down = cli("hosts", "check", "gpu1")
    assert down.code == 4
    assert f"error: bastion: unreachable: {jump.address} refused port {jump.port} (is sshd running there?) " \
           "(jump host for gpu1)" in down.err
    jump.start()
    target.stop()
    gone = cli("hosts", "check", "gpu1")
    assert gone.code == 4
    assert f"gpu1: unreachable: jump host bastion could not reach {target.address} port {target.port}" in gone.err


def test_a_refused_port_fails_at_once(cli, home):
    port = free_port()
    home.write_config(f"Host dead\n  HostName 127.0.0.1\n  Port {port}\n")
    started = time.monotonic()
    result = cli("hosts", "check", "dead")
    assert result.code == 4 and time.monotonic() - started < 3
    assert f"error: dead: unreachable: 127.0.0.1 refused port {port} (is sshd running there?)" in result.err


def test_a_host_that_never_speaks_fails_within_the_timeout(cli, home):
    """What a paused host looks like: the TCP connection opens, no SSH banner ever comes."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    port = silent.getsockname()[1]
    home.write_config(f"Host paused\n  HostName 127.0.0.1\n  Port {port}\n  ConnectTimeout 2\n")
    try:
        started = time.monotonic()
        result = cli("hosts", "check", "paused")
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert result.code == 4
    assert f"error: paused: unreachable: no SSH banner from 127.0.0.1 port {port} within 2 s (a paused or " \
           "overloaded host, or not an SSH server)" in result.err
    assert 1.5 < elapsed < 6


def test_a_connect_that_never_completes_fails_within_the_timeout(cli, home):
    """SYNs dropped (a host that is off, a firewall): a listener whose backlog is full does the same."""
    full = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = full.getsockname()[1]
    first = socket.create_connection(("127.0.0.1", port))  # fills the queue; later SYNs are dropped
    home.write_config(f"Host off\n  HostName 127.0.0.1\n  Port {port}\n  ConnectTimeout 2\n")
    try:
        started = time.monotonic()
        result = cli("hosts", "check", "off")
        elapsed = time.monotonic() - started
    finally:
        first.close()
        full.close()
    assert result.code == 4
    assert f"error: off: unreachable: no answer from 127.0.0.1 port {port} within 2 s" in result.err
    assert 1.5 < elapsed < 4


def test_a_paused_sshd_fails_within_the_default_timeout(home, sshd_factory):
    server = sshd_factory()
    box(home, server)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(HostUnreachable, match=r"no SSH banner .* within 10 s"):
            Ssh().connect("box")
        assert 9 < time.monotonic() - started < 14
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_a_passphrase_key_without_a_terminal_says_so(cli, home, sshd_factory):
    keygen(home.key, passphrase="correct horse")
    server = sshd_factory()
    box(home, server)
    assert cli("hosts", "trust", "box", "--yes").code == 0  # no key is needed to look at the host's
    result = cli("hosts", "check", "box")
    assert result.code == 4
    assert f"error: box: the key {home.key} is protected by a passphrase and there is no terminal to ask " \
           "for it" in result.err
    assert f"hint: load it into ssh-agent once (eval $(ssh-agent); ssh-add {home.key}), or run beamctl " \
           "from a terminal" in result.err
    with pytest.raises(KeyNeedsPassphrase):
        run("box", ["true"])
    asked = []
    ssh = Ssh(prompt=lambda q: asked.append(q) or "correct horse")
    assert [run("box", ["echo", "in"], ssh=ssh).stdout for _ in range(2)] == ["in\n", "in\n"]
    assert asked == [f"Enter passphrase for key {home.key}: "]  # once per session


def test_keys_from_ssh_agent(home, sshd_factory, tmp_path, monkeypatch):
    server = sshd_factory()
    box(home, server)
    trust_directly("box")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.02)
        subprocess.run(["ssh-add", "-q", str(home.key)], env=dict(os.environ, SSH_AUTH_SOCK=str(sock)),
                       check=True, capture_output=True)
        home.key.rename(tmp_path / "moved-away")  # only the agent holds it now
        with pytest.raises(AuthFailed, match=r"tried no keys"):
            run("box", ["true"])
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        assert run("box", ["echo", "agent"]).stdout == "agent\n"
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def trust_directly(name: str) -> None:
    """What `hosts trust NAME --yes` does, through the API."""
    from beamctl.transport import hostkeys
    from beamctl.transport.ssh import scan_host_key

    target, key, known = scan_host_key(Ssh(), name)
    assert not known
    hostkeys.add_known_host(target, key)


def test_a_key_the_host_does_not_accept(cli, home, sshd_factory, tmp_path):
    other = keygen(tmp_path / "other")
    keygen(home.key)
    server = sshd_factory(client_pub=other)
    box(home, server)
    assert cli("hosts", "trust", "box", "--yes").code == 0
    result = cli("hosts", "check", "box")
    assert result.code == 4
    assert f"error: box: root was refused: tried {home.key} (ssh-ed25519 " in result.err
    assert "hint: add your public key to ~root/.ssh/authorized_keys on the host" in result.err


def test_commands_keep_their_words_exit_status_and_stdin(home, sshd_factory):
    server = sshd_factory()
    box(home, server, extra="  ConnectTimeout 5\n")
    trust_directly("box")
    ssh = Ssh()
    words = ["a b", "$HOME", "; id", "it's", "`id`", "-oProxyCommand=x", "*"]
    with ssh.connect("box") as conn:
        assert conn.run(["printf", "%s\\n", *words]).stdout.splitlines() == words
        assert conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\n", "err\n")
        assert conn.run(["cat"], stdin=b"secret data, not argv").stdout == "secret data, not argv"
        big = conn.run(["sh", "-c", "head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2"])
        assert (len(big.stdout), len(big.stderr)) == (3000000, 3000000)  # both streams drained at once
        with pytest.raises(RemoteError) as e:
            conn.check(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i >&2; done; exit 7"])
        assert e.value.remote_exit == 7 and e.value.stderr_tail == "\n".join(f"line{i}" for i in range(3, 11))
        with pytest.raises(RemoteError, match="was cut off: no output for 1 s"):
            conn.run(["sleep", "5"], idle_timeout=1)


ECHO_AGENT = ("import json, sys\n"
              "for line in sys.stdin:\n"
              "    req = json.loads(line)\n"
              "    print(json.dumps({'ok': True, 'result': req}), flush=True)\n")


def test_agent_client_over_an_ssh_transport(home, sshd_factory):
    """AgentClient's JSON lines through SshTransport, to a stand-in for the agent's control pipe."""
    server = sshd_factory()
    box(home, server)
    trust_directly("box")
    ssh = Ssh()
    transport = SshTransport("box", [sys.executable, "-c", ECHO_AGENT], ssh=ssh)
    client = AgentClient(transport)
    try:
        assert client.request("status", app="x y; id") == {"ok": True, "result": {"op": "status",
                                                                                    "args": {"app": "x y; id"}}}
        assert client.request("tasks", limit=3)["result"]["args"] == {"limit": 3}
    finally:
        transport.close()


def test_check_runs_hosts_in_parallel_and_one_down_host_hides_nothing(cli, home, sshd_factory):
    a, b = sshd_factory("a"), sshd_factory("b")
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # each costs its full timeout
    dead = free_port()
    home.write_config(f"Host a\n  HostName 127.0.0.1\n  Port {a.port}\n  User root\n"
                      f"Host b\n  HostName 127.0.0.1\n  Port {b.port}\n  User root\n"
                      f"Host slow1\n  HostName 127.0.0.1\n  Port {silent[0].getsockname()[1]}\n  ConnectTimeout 2\n"
                      f"Host slow2\n  HostName 127.0.0.1\n  Port {silent[1].getsockname()[1]}\n  ConnectTimeout 2\n")
    for name, target in (("a", "a"), ("b", "b"), ("dead", f"root@127.0.0.1:{dead}"), ("slow1", "slow1"),
                         ("slow2", "slow2")):
        assert cli("hosts", "add", name, target).code == 0
    for name in ("a", "b"):
        assert cli("hosts", "trust", name, "--yes").code == 0
    try:
        started = time.monotonic()
        result = cli("hosts", "check", "--json")  # every inventory host
        elapsed = time.monotonic() - started
    finally:
        for s in silent:
            s.close()
    assert result.code == 4
    hosts = {h["name"]: h for h in json.loads(result.out)["hosts"]}
    assert list(hosts) == ["a", "b", "dead", "slow1", "slow2"]
    assert hosts["a"]["ok"] and hosts["b"]["ok"]
    assert [hosts[n]["kind"] for n in ("dead", "slow1", "slow2")] == ["HostUnreachable"] * 3
    assert 2 <= elapsed < 3.8  # one timeout, not two after each other


def test_ipv6_loopback_target(cli, home, sshd_factory):
    server = sshd_factory("v6", address="::1")
    target = f"root@[::1]:{server.port}"
    assert cli("hosts", "trust", target, "--yes").code == 0
    assert known_lines(home)[0].startswith(f"[::1]:{server.port} ssh-ed25519 ")
    assert run(target, ["echo", "v6"]).stdout == "v6\n"
