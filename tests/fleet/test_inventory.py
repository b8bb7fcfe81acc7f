"""~/.config/beamctl/hosts.yaml: load, add, remove, and which hosts an app uses."""

from __future__ import annotations

import pytest

from beamctl.config.hosts import parse_host
from beamctl.errors import ExitCode
from beamctl.hosts import inventory
from beamctl.hosts.inventory import Entry, InventoryError


@pytest.fixture
def path(tmp_path):
    return tmp_path / "hosts.yaml"


def test_a_missing_or_empty_file_is_no_hosts(path):
    assert inventory.load(path) == []
    path.write_text("# nothing yet\n")
    assert inventory.load(path) == []


def test_add_and_remove_round_trip(path):
    inventory.add(inventory.make_entry("gpu1", "deploy@10.0.0.5:2222", {"rack": "a"}), path)
    inventory.add(inventory.make_entry("gpu2", "gpu2-alias"), path)
    assert inventory.load(path) == [Entry("gpu1", "deploy@10.0.0.5:2222", {"rack": "a"}),
                                    Entry("gpu2", "gpu2-alias")]
    assert path.read_text() == ("# beamctl hosts (beamctl hosts add/remove edit this file)\n"
                                "- name: gpu1\n  target: deploy@10.0.0.5:2222\n  labels:\n    rack: a\n"
                                "- name: gpu2\n  target: gpu2-alias\n")
    inventory.remove("gpu1", path)
    assert [e.name for e in inventory.load(path)] == ["gpu2"]


def test_a_name_is_added_once(path):
    inventory.add(inventory.make_entry("gpu1", "h1"), path)
    with pytest.raises(InventoryError, match="already in") as e:
        inventory.add(inventory.make_entry("gpu1", "h2"), path)
    assert e.value.hint == "beamctl hosts remove gpu1 first, to change it"


def test_removing_an_unknown_name(path):
    with pytest.raises(InventoryError, match="no host named 'gpu9'"):
        inventory.remove("gpu9", path)


@pytest.mark.parametrize("name, target, labels, message", [
    ("-oProxyCommand=x", "h", None, "name '-oProxyCommand=x' starts with '-'"),
    ("gpu1", "h;id", None, "target 'h;id' contains ';'"),
    ("root@gpu1", "h", None, "must be a plain name like gpu1"),
    ("gpu1:22", "h", None, "must be a plain name like gpu1"),
    ("gpu1", "h", {"-x": "1"}, "label name '-x'"),
    ("gpu1", "h", ["a"], "labels must be a mapping"),
    (None, "h", None, "name and target must both be given"),
])
def test_bad_entries_are_refused_with_the_reason(name, target, labels, message):
    with pytest.raises(InventoryError) as e:
        inventory.make_entry(name, target, labels)
    assert message in e.value.message and e.value.exit_code == ExitCode.CONFIG


def test_a_bad_file_names_the_entry(path):
    path.write_text("- name: gpu1\n  target: h1\n- name: gpu1\n  target: h2\n")
    with pytest.raises(InventoryError, match=r"hosts.yaml: host 2: the name 'gpu1' is used twice"):
        inventory.load(path)
    path.write_text("- name: gpu1\n  target: '$(id)'\n")
    with pytest.raises(InventoryError, match=r"host 1: target '\$\(id\)' contains"):
        inventory.load(path)
    path.write_text("hosts: []\n")
    with pytest.raises(InventoryError, match="must be a list of hosts"):
        inventory.load(path)
    path.write_text("- [unclosed\n")
    with pytest.raises(InventoryError, match="cannot read it"):
        inventory.load(path)


def test_beam_yaml_hosts_win_over_the_inventory(path):
    inventory.add(inventory.make_entry("gpu1", "h1"), path)
    used, source = inventory.which_hosts((parse_host("root@h9:2222"),), path)
    assert (used, source) == ([Entry("root@h9:2222", "root@h9:2222")], "beam.yaml")
    used, source = inventory.which_hosts((), path)
    assert (used, source) == ([Entry("gpu1", "h1")], str(path))


def test_lookup_takes_inventory_names_then_targets(path):
    inventory.add(inventory.make_entry("gpu1", "deploy@h1"), path)
    assert inventory.lookup(["gpu1", "root@h2:22"], path) == [Entry("gpu1", "deploy@h1"),
                                                              Entry("root@h2:22", "root@h2:22")]
    with pytest.raises(InventoryError, match="starts with '-'"):
        inventory.lookup(["-oProxyCommand=x"], path)


def test_the_file_location(monkeypatch, tmp_path):
    monkeypatch.delenv("BEAMCTL_HOSTS_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert inventory.inventory_file() == tmp_path / "xdg" / "beamctl" / "hosts.yaml"
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(tmp_path / "h.yaml"))
    assert inventory.inventory_file() == tmp_path / "h.yaml"
