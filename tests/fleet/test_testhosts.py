"""The test fleet itself (tests/fleet/hosts.py): three hosts that beamctl reaches over real SSH.

Trust comes only from the known_hosts file the fixture wrote from each host's own key file; these
tests check that nothing is ever added to it.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hosts(fleet):
    return fleet(3)


@pytest.fixture
def fleet_env(hosts, monkeypatch):
    hosts.apply_env(monkeypatch)
    return hosts


def check(cli) -> tuple[int, dict, float]:
    started = time.monotonic()
    result = cli("hosts", "check", "--json")
    elapsed = time.monotonic() - started
    return result.code, {h["name"]: h for h in json.loads(result.out)["hosts"]}, elapsed


def test_check_reports_each_host_over_ssh(cli, fleet_env):
    fleet = fleet_env
    trusted = fleet.known_hosts.read_bytes()
    for h in fleet:  # the fixture's trust is each host's own key file, nothing learned over the network
        assert f"{h.known_as} {h.host_key}\n".encode() in trusted
        assert h.exec(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[:2] == h.host_key.split()
    engine = fleet[0].exec(["docker", "version", "--format", "{{.Server.Version}}"]).stdout.strip()

    code, found, elapsed = check(cli)

    assert code == 0, found
    assert list(found) == [h.name for h in fleet]
    for h in fleet:
        r = found[h.name]
        assert (r["reachable"], r["ok"], r["error"]) == (True, True, None), r
        facts = r["facts"]
        assert facts["hostname"] == h.name  # the answer came from that host
        assert facts["docker_version"] == engine != "" and facts["docker_root"] == "/var/lib/docker"
        prereqs = {p["name"]: p for p in r["prerequisites"]}
        assert list(prereqs) == ["docker", "runc", "criu", "decompressor", "disk", "supervisor"], prereqs
        assert prereqs["supervisor"]["found"].startswith("no systemd")  # test hosts are containers: a restart loop
        assert not prereqs["decompressor"]["ok"]  # no agent yet: `hosts install` brings it
        assert prereqs["decompressor"]["fix"] == f"beamctl hosts install {h.name}"
        if h.kind == "full":
            assert int(facts["criu_version"].split(".")[0]) >= 4, facts["criu_version"]
            assert facts["criu_network_lock"] == "nftables"  # the hosts' /etc/criu/runc.conf (hosts.RUNC_CONF)
            assert r["checkpoints"] == {"can": True, "why_not": None}
        else:  # the plain host: no CRIU until `hosts install` carries it
            assert facts["criu_version"] is None
            assert r["checkpoints"] == {"can": False, "why_not": "CRIU is not installed"}, r["checkpoints"]
            assert prereqs["criu"]["fix"].startswith(f"beamctl hosts install {h.name} (it carries CRIU")
        assert (facts["gpus"], facts["gpu_note"]) == ([], "no nvidia-smi")  # CPU-only
        assert [d["path"] for d in facts["disks"]] == ["/", "/var/lib/docker"]
        assert all(d["free_bytes"] > 0 for d in facts["disks"])
        assert (facts["agent_installed"], facts["problems"]) == (False, [])
    assert elapsed < 10
    assert fleet.known_hosts.read_bytes() == trusted  # never auto-added


def test_a_paused_host_is_unreachable_within_the_timeout_and_the_others_are_fine(cli, fleet_env):
    fleet = fleet_env
    paused = fleet[1]
    paused.pause()
    try:
        code, found, elapsed = check(cli)
    finally:
        paused.unpause()
    assert code == 4
    r = found[paused.name]
    assert (r["reachable"], r["ok"], r["kind"]) == (False, False, "HostUnreachable"), r
    banner = f"no SSH banner from {paused.address} port {paused.port} within {fleet.connect_timeout} s"
    assert banner in r["error"]
    assert all(found[h.name]["ok"] for h in fleet if h is not paused)
    assert fleet.connect_timeout - 0.5 < elapsed < 2 * fleet.connect_timeout + 3

    code, found, _ = check(cli)  # unpaused, it answers again
    assert code == 0 and found[paused.name]["ok"]


def test_a_stopped_host_refuses_at_once_and_comes_back_with_the_same_address_and_key(cli, fleet_env):
    fleet = fleet_env
    host = fleet[2]
    before, trusted = (host.target, host.host_key), fleet.known_hosts.read_bytes()
    host.stop(timeout=5)
    try:
        code, found, elapsed = check(cli)
    finally:
        host.start()
    assert code == 4
    r = found[host.name]
    assert (r["reachable"], r["kind"]) == (False, "HostUnreachable"), r
    assert f"{host.address} refused port {host.port}" in r["error"]
    assert all(found[h.name]["ok"] for h in fleet if h is not host)
    assert elapsed < 5

    assert (host.target, host.host_key) == before  # a restart is a reboot, not a reinstall
    assert fleet.known_hosts.read_bytes() == trusted
    code, found, _ = check(cli)
    assert code == 0 and found[host.name]["facts"]["hostname"] == host.name


def test_openssh_uses_the_same_files_and_refuses_an_unknown_host(hosts, tmp_path):
    host = hosts[0]
    done = subprocess.run(host.ssh_argv(["docker", "version", "--format", "{{.Server.Version}}"]),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip().startswith("20.10"), done.stderr

    empty = tmp_path / "known_hosts"
    empty.touch()
    refused = subprocess.run(["ssh", "-F", str(hosts.ssh_config), "-o", f"UserKnownHostsFile={empty}",
                              host.name, "true"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
    assert empty.read_text() == ""


def test_criu_check_passes_inside_a_host(hosts):
    done = hosts[0].exec(["criu", "check"], check=False)
    assert "Looks good" in done.stdout + done.stderr, done.stdout + done.stderr
