"""`hosts install`'s CRIU step (beamctl/hosts/criu.py): the plan and results (pure), the remote script run
here against this machine's real CRIU prefix in a scratch folder, and a test-fleet host whose CRIU is too
old getting a working one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from beamctl.cli.host_views import criu_phrase, install_lines
from beamctl.hosts import criu
from beamctl.hosts.criu import CriuResult
from beamctl.hosts.install import InstallResult, parse_probe

OLD = "CRIU 4.1.1 < 4.2 (4.1 cannot checkpoint TCP sockets on kernels >= 6.16)"
PREFIX = Path("/opt/beamctl/criu")  # scripts/setup.sh puts this machine's there


# --- pure parts ----------------------------------------------------------------------------------------

def test_the_plan_keeps_a_working_criu_and_carries_only_where_it_can():
    here = Path("/p")
    facts = parse_probe("uid 0\narch x86_64\ncriu 4.2.1\ncriucheck ok\nlock nftables\n")
    assert criu.plan(facts, here) == "keep"
    assert criu.plan({**facts, "lock": ""}, here) == "configure"  # no runc.conf choice yet
    assert criu.plan({**facts, "criu": "5.0", "criucheck": "failed"}, None) == "keep"  # its kernel, not its CRIU
    assert criu.plan({**facts, "criu": "4.1.1"}, here) == "carry"
    assert criu.plan({"uid": "0", "arch": "x86_64"}, here) == "carry"  # none at all
    assert criu.plan({**facts, "criu": "4.1.1"}, None) == "none"
    assert criu.plan({**facts, "criu": "4.1.1", "arch": "aarch64"}, here) == "none"


def test_a_host_left_without_criu_is_told_why_and_what_to_do(tmp_path):
    env = {"BEAMCTL_CRIU_PREFIX": str(tmp_path)}
    assert criu.client_prefix(env) is None
    r = criu.missing({"arch": "x86_64", "criu": "4.1.1"}, None, "gpu1", env)
    assert (r.state, r.version, r.problem, r.can_checkpoint) == ("missing", "4.1.1", OLD, False)
    assert r.hint == (f"this machine has no CRIU to carry ({tmp_path} has no usr/sbin/criu): install CRIU >= 4.2 "
                      "on gpu1 with its package manager where it offers one, then `beamctl hosts check gpu1`; "
                      "until then checkpoint_enabled apps boot cold there")
    arm = criu.missing({"arch": "aarch64"}, Path("/p"), "gpu2", env)
    assert arm.problem == "CRIU is not installed" and arm.hint.startswith("the CRIU here is for x86_64, the host "
                                                                          "is aarch64: install CRIU >= 4.2 on gpu2")


def test_the_script_s_answer_is_read_into_one_state():
    r = criu.parse_step("version 4.2.1\ncheck ok\nlock nftables\n", "installed", 17_000_000)
    assert r == CriuResult("installed", "4.2.1", "nftables", 17_000_000, None, None)
    bad = criu.parse_step("version 4.2.1\ncheck failed: Error (criu/kerndat.c:9): no pidfd\n", "installed", 1)
    assert bad.problem == "`criu check` fails: Error (criu/kerndat.c:9): no pidfd" and not bad.can_checkpoint


def test_install_lines_carry_the_checkpoint_state_in_one_line():
    base = dict(host="gpu1", action="installed", version="0.1.0", bytes_sent=21_300_000, seconds=3.24)
    ok = InstallResult(**base, criu=CriuResult("installed", "4.2.1", "nftables", 17_000_000))
    assert install_lines(ok) == ["gpu1: installed 0.1.0 (21.3 MB sent, 3.2 s); checkpoints on: CRIU 4.2.1 installed, "
                                 "network lock nftables"]
    off = InstallResult(**base, criu=CriuResult("missing", "4.1.1", None, problem=OLD, hint="install CRIU ..."))
    assert install_lines(off) == [f"gpu1: installed 0.1.0 (21.3 MB sent, 3.2 s); checkpoints off: {OLD}",
                                  "  hint: install CRIU ..."]
    looped = InstallResult(**base, supervisor="background")  # no systemd: a reboot ends the agent, said
    assert install_lines(looped) == ["gpu1: installed 0.1.0 (21.3 MB sent, 3.2 s)",
                                     "  note: no systemd on gpu1: the agent runs under a restart loop that a reboot "
                                     "ends; after a reboot run: beamctl hosts install gpu1 (containers and volumes stay)"]
    assert install_lines(InstallResult(**base, supervisor="systemd")) == [
        "gpu1: installed 0.1.0 (21.3 MB sent, 3.2 s)"]
    assert criu_phrase(CriuResult("present", "4.2.1", None)) == "checkpoints on: CRIU 4.2.1 present"
    assert off.as_json()["criu"]["can_checkpoint"] is False


def test_the_step_runs_nothing_on_a_host_that_keeps_its_criu():
    class NoRuns:
        def run(self, *a, **k):
            raise AssertionError("no remote command for a host whose CRIU is fine")

    facts = {"arch": "x86_64", "criu": "4.2.1", "criucheck": "ok", "lock": "nftables"}
    assert criu.criu_step(NoRuns(), "h", facts, print) == CriuResult("present", "4.2.1", "nftables")
    none = criu.criu_step(NoRuns(), "h", {**facts, "criu": "4.1.1"}, print, env={"BEAMCTL_CRIU_PREFIX": "/nonexistent"})
    assert (none.state, none.problem) == ("missing", OLD)


# --- the script, here, in a scratch folder ------------------------------------------------------------------

def run_script(tmp_path: Path, data: bytes, mode: str = "carry") -> subprocess.CompletedProcess:
    paths = [str(tmp_path / "opt/criu"), str(tmp_path / "bin/criu"), str(tmp_path / "etc/runc.conf")]
    return subprocess.run(["sh", "-c", criu.SCRIPT, "sh", mode, *paths], input=data, capture_output=True,
                          timeout=120)


needs_prefix = pytest.mark.skipif(not (PREFIX / "usr/sbin/criu").is_file(), reason="no CRIU prefix here")


@pytest.mark.integration
@needs_prefix
def test_the_carried_prefix_runs_checks_and_picks_the_network_lock(tmp_path):
    done = run_script(tmp_path, criu.prefix_tar(PREFIX))
    assert done.returncode == 0, done.stderr
    r = criu.parse_step(done.stdout.decode(), "installed", 0)
    assert r.version and r.version.startswith("4.") and r.can_checkpoint, done.stdout
    assert r.network_lock in ("nftables", "iptables")
    wrapper = tmp_path / "bin/criu"
    assert subprocess.run([str(wrapper), "--version"], capture_output=True, text=True).stdout.startswith("Version: ")
    assert f"network-lock {r.network_lock}\n" in (tmp_path / "etc/runc.conf").read_text()
    again = run_script(tmp_path, criu.prefix_tar(PREFIX))  # a second install replaces it whole; conf untouched
    lines = (tmp_path / "etc/runc.conf").read_text().splitlines()
    assert again.returncode == 0 and [ln for ln in lines if ln.startswith("network-lock")] == [f"network-lock {r.network_lock}"]
    no_plugins = tmp_path / "opt/criu-no-plugins"  # CRIU loads no plugin: the agent owns the CUDA steps
    assert [ln for ln in lines if ln.startswith("libdir")] == [f"libdir {no_plugins}"] and not any(no_plugins.iterdir())
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == ["criu", "criu-no-plugins"]
    assert [ln for ln in lines if ln.startswith("external")] == ["external mnt[]"]  # an OCI hook's mounts, once


@pytest.mark.integration
@needs_prefix
def test_a_broken_stream_leaves_no_half_prefix(tmp_path):
    data = criu.prefix_tar(PREFIX)
    done = run_script(tmp_path, data[: len(data) // 2])
    assert done.returncode != 0
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == []  # no criu, no criu.new.*
    assert not (tmp_path / "bin/criu").exists()


# --- a test-fleet host ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one(fleet):
    return fleet(1)


@pytest.mark.integration
@needs_prefix
def test_a_host_with_a_too_old_criu_gets_a_working_one(cli, one, monkeypatch):
    one.apply_env(monkeypatch)
    host = one[0]
    host.exec(["sh", "-c", "rm -rf /opt/beamctl/criu /etc/criu/runc.conf; "
                           "printf '#!/bin/sh\\necho Version: 4.1.1\\n' >/usr/local/bin/criu"])  # trixie's, say
    before = json.loads(cli("hosts", "check", "--json").out)["hosts"][0]
    assert before["checkpoints"] == {"can": False, "why_not": OLD}

    done = cli("hosts", "install", "--json")
    assert done.code == 0, done.err
    (r,) = json.loads(done.out)["hosts"]
    assert (r["criu"]["state"], r["criu"]["can_checkpoint"], r["criu"]["network_lock"]) == \
        ("installed", True, "nftables")
    assert f"{host.name}: sending CRIU (" in done.err

    after = cli("hosts", "check")
    assert "  checkpoints   yes" in after.err and "  criu          ok       4.2" in after.err, after.err
    assert "network lock nftables" in after.err


def test_deploy_names_the_hosts_that_will_boot_cold_from_what_the_install_learned():
    from beamctl.errors import BeamctlError
    from beamctl.fleet.rollout import cold_boot_lines, cold_boots
    from beamctl.hosts.each import Reply

    ok = InstallResult("a", "current", "0.2.0", criu=CriuResult("present", "4.2.1", "nftables"))
    old = InstallResult("b", "current", "0.2.0", criu=CriuResult("missing", "4.1.1", problem=OLD))
    unknown = InstallResult("c", "current", "0.2.0")  # no CRIU answer: nothing claimed
    down = BeamctlError("d: unreachable: no SSH banner")
    installed = [Reply("a", ok), Reply("b", old), Reply("c", unknown),
                 Reply("d", error=down.message, exc=down),  # the install failed: no claim about its CRIU
                 Reply("local", None)]  # this machine's agent: started, not installed (no InstallResult)
    cold = cold_boots(installed)
    assert cold == {"b": OLD}
    assert cold_boot_lines(cold) == [f"b will boot cold (no snapshot): {OLD}"]


@pytest.fixture
def hello_here(tmp_path):
    from tests.fleet.conftest import hello_on_two_hosts

    gen = hello_on_two_hosts(tmp_path, "hellocold")
    d = next(gen)
    (d / "beam.yaml").write_text((d / "beam.yaml").read_text().replace("hosts: [testhost-1, testhost-2]",
                                                                      "hosts: [testhost-1]"))
    yield d
    next(gen, None)


@pytest.mark.integration
def test_a_host_left_with_an_old_criu_is_named_at_deploy_and_its_result_says_why(cli, one, monkeypatch, tmp_path,
                                                                               hello_here):
    one.apply_env(monkeypatch)
    host = one[0]
    host.exec(["sh", "-c", "rm -rf /opt/beamctl/criu; printf '#!/bin/sh\\necho Version: 4.1.1\\n' "
                           ">/usr/local/bin/criu"])
    (tmp_path / "no-criu").mkdir()
    monkeypatch.setenv("BEAMCTL_CRIU_PREFIX", str(tmp_path / "no-criu"))  # nothing to carry from here

    done = cli("deploy", "-f", str(hello_here))
    assert done.code == 0, done.err
    assert f"testhost-1 will boot cold (no snapshot): {OLD}" in done.err
    assert f"       testhost-1: snapshot: failed ({OLD})" in done.err.splitlines()
    assert "Error (" not in done.err and "criu/" not in done.err  # no CRIU log text
    assert done.err.index("will boot cold") < done.err.index("deploying ")  # said before it starts
