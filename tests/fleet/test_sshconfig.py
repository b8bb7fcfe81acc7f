"""Targets resolved against an ssh config file: what paramiko parses, beamctl applies."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from beamctl.errors import ExitCode, UsageError
from beamctl.transport.errors import SshConfigError
from beamctl.transport.sshconfig import CONNECT_TIMEOUT_S, load_config, resolve


def config(home, text: str):
    home.config.write_text(text)
    return load_config(home.config)


def test_alias_takes_hostname_user_port_and_identity_files(home):
    cfg = config(home, "Host gpu1\n  HostName 10.0.0.5\n  User deploy\n  Port 2222\n"
                       "  IdentityFile ~/.ssh/gpu_key\n  IdentityFile /keys/second\n")
    t = resolve("gpu1", cfg)
    assert (t.name, t.hostname, t.user, t.port) == ("gpu1", "10.0.0.5", "deploy", 2222)
    assert t.identity_files == (home.ssh / "gpu_key", Path("/keys/second"))
    assert t.jump is None
    assert t.known_as == "[10.0.0.5]:2222" and t.display == "deploy@10.0.0.5:2222"


def test_user_and_port_written_in_the_target_win_over_the_file(home):
    cfg = config(home, "Host gpu1\n  HostName 10.0.0.5\n  User deploy\n  Port 2222\n")
    t = resolve("root@gpu1:22", cfg)
    assert (t.hostname, t.user, t.port, t.known_as) == ("10.0.0.5", "root", 22, "10.0.0.5")


def test_a_target_without_config_gets_ssh_defaults(home):
    t = resolve("example.org", config(home, ""))
    assert (t.hostname, t.user, t.port) == ("example.org", getpass.getuser(), 22)
    assert t.identity_files == () and t.connect_timeout == CONNECT_TIMEOUT_S == 10
    assert t.user_known_hosts == (home.ssh / "known_hosts",)
    assert t.global_known_hosts == (Path("/etc/ssh/ssh_known_hosts"),)


def test_a_missing_config_file_is_an_empty_one(home):
    assert resolve("box", load_config(home.ssh / "nope")).hostname == "box"


def test_ipv6_target(home):
    t = resolve("admin@[::1]:2200", config(home, ""))
    assert (t.hostname, t.user, t.port, t.known_as) == ("::1", "admin", 2200, "[::1]:2200")


def test_first_value_wins_and_wildcards_apply(home):
    cfg = config(home, "Host gpu*\n  User ops\n  Port 2200\nHost gpu2\n  User other\nHost *\n  Port 22\n")
    t = resolve("gpu2", cfg)
    assert (t.user, t.port) == ("ops", 2200)


def test_proxyjump_resolves_the_jump_host_through_the_same_file(home):
    cfg = config(home, "Host bastion\n  HostName 192.0.2.1\n  User jumper\n  Port 2022\n"
                       "Host gpu1\n  HostName 10.0.0.5\n  ProxyJump bastion\n")
    t = resolve("gpu1", cfg)
    assert t.jump is not None
    assert (t.jump.name, t.jump.hostname, t.jump.user, t.jump.port) == ("bastion", "192.0.2.1", "jumper", 2022)
    assert t.jump.jump is None


def test_proxyjump_chain_goes_through_each_hop_in_order(home):
    cfg = config(home, "Host a\n  HostName 192.0.2.1\nHost b\n  HostName 192.0.2.2\n  ProxyJump ignored\n"
                       "Host gpu1\n  HostName 10.0.0.5\n  ProxyJump a,ssh://root@b:2022\n")
    t = resolve("gpu1", cfg)
    hops = []
    hop = t.jump
    while hop is not None:
        hops.append((hop.hostname, hop.user, hop.port))
        hop = hop.jump
    assert hops == [("192.0.2.2", "root", 2022), ("192.0.2.1", getpass.getuser(), 22)]


def test_a_jump_hosts_own_proxyjump_is_followed(home):
    cfg = config(home, "Host outer\n  HostName 192.0.2.9\nHost bastion\n  ProxyJump outer\n"
                       "Host gpu1\n  ProxyJump bastion\n")
    t = resolve("gpu1", cfg)
    assert (t.jump.name, t.jump.jump.name, t.jump.jump.hostname) == ("bastion", "outer", "192.0.2.9")


def test_proxyjump_none_means_direct(home):
    cfg = config(home, "Host gpu1\n  ProxyJump none\nHost *\n  ProxyJump bastion\n")
    assert resolve("gpu1", cfg).jump is None


def test_proxyjump_loop_is_refused(home):
    cfg = config(home, "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(SshConfigError, match="more than 8 hosts") as e:
        resolve("a", cfg)
    assert e.value.exit_code == ExitCode.CONFIG


def test_proxyjump_that_could_inject_an_option_is_refused(home):
    cfg = config(home, "Host gpu1\n  ProxyJump -oProxyCommand=touch%20/tmp/x\n")
    with pytest.raises(SshConfigError) as e:
        resolve("gpu1", cfg)
    assert "ProxyJump host '-oProxyCommand=touch%20/tmp/x' starts with '-'" in e.value.message


def test_proxycommand_is_refused_not_ignored(home):
    cfg = config(home, "Host gpu1\n  ProxyCommand nc %h %p\n")
    with pytest.raises(SshConfigError, match="ProxyCommand, which beamctl does not run"):
        resolve("gpu1", cfg)


@pytest.mark.parametrize("bad", ["-oProxyCommand=id", "host;id", "a b", "$(id)", "user@host:99999"])
def test_targets_that_could_inject_are_refused_before_any_lookup(home, bad):
    with pytest.raises(UsageError) as e:
        resolve(bad, config(home, ""))
    assert e.value.exit_code == ExitCode.CONFIG and e.value.message.startswith("host ")


def test_include_is_inlined_relative_to_ssh_dir_with_globs(home):
    (home.ssh / "conf.d").mkdir()
    (home.ssh / "conf.d" / "10-gpu.conf").write_text("Host gpu1\n  HostName 10.0.0.5\n  Port 2201\n")
    (home.ssh / "conf.d" / "20-other.conf").write_text("Host gpu2\n  HostName 10.0.0.6\n")
    cfg = config(home, "Include conf.d/*.conf\nHost *\n  User ops\n")
    assert (resolve("gpu1", cfg).hostname, resolve("gpu1", cfg).port) == ("10.0.0.5", 2201)
    assert (resolve("gpu2", cfg).hostname, resolve("gpu2", cfg).user) == ("10.0.0.6", "ops")


def test_include_loop_is_refused(home):
    (home.ssh / "loop.conf").write_text("Include loop.conf\n")
    with pytest.raises(SshConfigError, match="nested more than 16"):
        config(home, "Include loop.conf\n")


def test_known_hosts_files_timeout_and_hashing_come_from_the_file(home):
    cfg = config(home, "Host gpu1\n  UserKnownHostsFile ~/.ssh/kh1 /etc/kh2\n  GlobalKnownHostsFile none\n"
                       "  ConnectTimeout 3\n  HashKnownHosts yes\n")
    t = resolve("gpu1", cfg)
    assert t.user_known_hosts == (home.ssh / "kh1", Path("/etc/kh2"))
    assert t.global_known_hosts == () and t.connect_timeout == 3.0 and t.hash_known_hosts


def test_bad_port_in_the_file_is_a_config_error(home):
    with pytest.raises(SshConfigError, match="Port 'ssh'"):
        resolve("gpu1", config(home, "Host gpu1\n  Port ssh\n"))


def test_the_config_path_comes_from_beamctl_ssh_config(home, monkeypatch, tmp_path):
    other = tmp_path / "other_config"
    other.write_text("Host gpu1\n  HostName 10.9.9.9\n")
    monkeypatch.setenv("BEAMCTL_SSH_CONFIG", str(other))
    assert resolve("gpu1", load_config()).hostname == "10.9.9.9"


def test_the_system_file_comes_after_the_users(home, monkeypatch, tmp_path):
    monkeypatch.delenv("BEAMCTL_SSH_CONFIG")
    home.config.write_text("Host gpu1\n  User alice\n")
    system = tmp_path / "etc-ssh" / "ssh_config"
    system.parent.mkdir()
    (system.parent / "ssh_config.d").mkdir()
    (system.parent / "ssh_config.d" / "port.conf").write_text("Port 2200\n")
    system.write_text("Include ssh_config.d/*.conf\nHost *\n  User bob\n  HashKnownHosts yes\n")
    t = resolve("gpu1", load_config(system=system))
    assert (t.user, t.port, t.hash_known_hosts) == ("alice", 2200, True)
    assert resolve("gpu2", load_config(system=system)).user == "bob"


def test_an_explicit_file_stands_alone_like_ssh_dash_f(home, tmp_path):
    system = tmp_path / "ssh_config"
    system.write_text("Host *\n  Port 2200\n")
    assert resolve("gpu1", load_config(system=system)).port == 22  # BEAMCTL_SSH_CONFIG is set (home fixture)
