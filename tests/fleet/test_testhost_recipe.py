"""The test-host image's recipe hash follows the CRIU prefix it copies (a new CRIU means new hosts); the
bridge gateway the hosts are reached at is found on an engine that does not report it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.fleet import hosts


def test_recipe_hash_changes_with_the_criu_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "criu"
    (prefix / "usr/sbin").mkdir(parents=True)
    (prefix / "usr/sbin/criu").write_bytes(b"criu 4.1.1")
    (prefix / "PACKAGES").write_text("criu\nlibc6\n")
    monkeypatch.setattr(hosts, "CRIU_PREFIX", prefix)
    old = hosts.recipe_hash()
    assert hosts.recipe_hash() == old
    (prefix / "usr/sbin/criu").write_bytes(b"criu 4.2.1")  # install-criu.sh's upgrade replaces the binary
    new = hosts.recipe_hash()
    assert new != old
    (prefix / "PACKAGES").write_text("criu\nlibc6\nlibnet9\n")
    assert hosts.recipe_hash() not in (old, new)


# `docker network inspect bridge` on a brand-new Debian docker.io 20.10 engine: the subnet, no gateway.
FRESH_ENGINE = {"Name": "bridge", "IPAM": {"Driver": "default", "Options": None,
                                           "Config": [{"Subnet": "172.17.0.0/16"}]},
                "Options": {"com.docker.network.bridge.default_bridge": "true",
                            "com.docker.network.bridge.name": "docker0"}}
DOCKER0 = ("5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\"
           "       valid_lft forever preferred_lft forever\n")


def test_the_gateway_is_the_engines_answer_when_it_has_one() -> None:
    network = {**FRESH_ENGINE, "IPAM": {"Config": [{"Subnet": "10.9.0.0/16", "Gateway": "10.9.0.254"}]}}
    assert hosts.pick_gateway(network, DOCKER0) == ("10.9.0.254", "the engine's IPAM gateway")


def test_without_a_gateway_in_inspect_the_bridge_interfaces_address_is_used() -> None:
    assert hosts.pick_gateway(FRESH_ENGINE, DOCKER0) == ("172.17.0.1", "docker0's own address")


def test_without_the_interface_the_subnets_first_host_is_used() -> None:
    assert hosts.pick_gateway(FRESH_ENGINE, "") == ("172.17.0.1", "the first host of the subnet 172.17.0.0/16")
    network = {**FRESH_ENGINE, "IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.20.0.0/24"}]}}
    assert hosts.pick_gateway(network, "") == ("10.20.0.1", "the first host of the subnet 10.20.0.0/24")


def test_a_bridge_without_any_ipv4_says_what_it_found() -> None:
    with pytest.raises(hosts.FleetError, match="no IPv4 gateway.*fd00::/64"):
        hosts.pick_gateway({"IPAM": {"Config": [{"Subnet": "fd00::/64"}]}, "Options": {}}, "")


@pytest.mark.integration
def test_this_engines_bridge_gateway_is_an_address_of_this_machine() -> None:
    said: list[str] = []
    address = hosts.bridge_gateway(said.append)
    with socket.socket() as s:
        s.bind((address, 0))  # only an address of this machine can be bound
    assert len(said) == 1 and said[0].startswith(f"the bridge gateway is {address} (")
