"""`beamctl hosts` commands that need no host: the inventory, and refusals before any connection."""

from __future__ import annotations

import json
from pathlib import Path

GOOD = Path(__file__).parents[1] / "config" / "fixtures" / "good"


def test_add_ls_remove(cli, home):
    added = cli("hosts", "add", "gpu1", "deploy@10.0.0.5:2222", "--label", "rack=a")
    hosts_file = home.root / ".config" / "beamctl" / "hosts.yaml"
    assert (added.code, added.err) == (0, f"added gpu1 (deploy@10.0.0.5:2222) to {hosts_file}\n"
                                          "next: beamctl hosts trust gpu1, then beamctl hosts check gpu1\n")
    assert cli("hosts", "add", "gpu2", "[fe80::1]:22").code == 0
    listed = cli("hosts", "ls")
    assert (listed.code, listed.err) == (0, "gpu1  deploy@10.0.0.5:2222  rack=a\n"
                                            "gpu2  [fe80::1]:22\n"
                                            f"2 hosts in {hosts_file}\n")
    removed = cli("hosts", "remove", "gpu1")
    assert (removed.code, removed.err) == (0, f"removed gpu1 from {hosts_file}\n")
    assert json.loads(cli("hosts", "ls", "--json").out)["inventory"]["hosts"] == [
        {"name": "gpu2", "target": "[fe80::1]:22", "labels": {}}]


def test_ls_with_an_app_says_its_hosts_win(cli, home):
    cli("hosts", "add", "gpu9", "h9")
    result = cli("hosts", "ls", "-f", str(GOOD / "full.yaml"), "--json")
    data = json.loads(result.out)
    assert result.code == 0
    assert data["used"]["source"] == "beam.yaml"
    assert [h["target"] for h in data["used"]["hosts"]] == ["gpu1", "deploy@10.0.0.7:2222", "root@[fe80::1]:22"]
    assert [h["name"] for h in data["inventory"]["hosts"]] == ["gpu9"]
    text = cli("hosts", "ls", "-f", str(GOOD / "full.yaml"))
    assert text.err.endswith("names its own hosts, which win for that app: gpu1, deploy@10.0.0.7:2222, "
                             "root@[fe80::1]:22\n")
    plain = json.loads(cli("hosts", "ls", "-f", str(GOOD / "minimal.yaml"), "--json").out)
    assert plain["used"]["source"].endswith("hosts.yaml") and plain["used"]["hosts"][0]["name"] == "gpu9"


def test_empty_inventory(cli, home):
    result = cli("hosts", "ls")
    assert result.code == 0 and result.err.startswith("no hosts in ")
    checked = cli("hosts", "check")
    assert (checked.code, checked.err) == (2, "error: no hosts to check\n"
                                              "hint: add one with: beamctl hosts add NAME user@host[:port]\n")


def test_injection_is_refused_before_any_connection(cli, home):
    result = cli("hosts", "check", "--", "-oProxyCommand=touch /tmp/pwned")
    assert result.code == 2
    assert result.err.startswith("error: host '-oProxyCommand=touch /tmp/pwned' starts with '-'")
    added = cli("hosts", "add", "gpu1", "host;reboot")
    assert (added.code, added.err) == (2, "error: target 'host;reboot' contains ';'; a host may hold only letters, "
                                          "digits and . - _ @ : (and [ ] around an IPv6 address)\n")
    assert cli("hosts", "add", "gpu1", "h", "--label", "nolabel").code == 2
    assert cli("hosts", "ls", "--json").out.count('"name"') == 0


def test_a_duplicate_name_or_unknown_removal(cli, home):
    cli("hosts", "add", "gpu1", "h1")
    again = cli("hosts", "add", "gpu1", "h2")
    assert again.code == 2 and "a host named 'gpu1' is already in" in again.err
    gone = cli("hosts", "remove", "nope")
    assert gone.code == 2 and "no host named 'nope'" in gone.err


def test_hosts_help_lists_its_commands(cli):
    result = cli("hosts", "--help")
    section = result.out.split("Commands:")[1].splitlines()
    assert [l.split()[0] for l in section if l.startswith("  ")] == ["ls", "check", "trust", "add", "remove",
                                                                        "install"]
