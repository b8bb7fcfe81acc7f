"""The front door's pure parts (no host, no HAProxy): which hosts it routes to and at which address
(fleet/gateway.py), its URL, the inventory's `address`, the servers an agent accepts (agent/door.py) and
the HAProxy file agent/gateway.py writes (the file itself is run by tests/agent/test_gateway_door.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from beamctl.agent import door as agent_door
from beamctl.agent.gateway import Door, render
from beamctl.config.model import GatewayConfig
from beamctl.errors import BeamctlError
from beamctl.fleet import gateway
from beamctl.hosts import inventory
from beamctl.hosts.each import Reply
from beamctl.protocol.errors import AgentError


def entry(name: str, target: str, address: str | None = None) -> inventory.Entry:
    return inventory.Entry(name, target, {}, address)


def test_a_hosts_address_is_the_inventorys_else_its_target_and_never_loopback():
    assert gateway.address_of(entry("gpu1", "root@gpu1", "10.0.0.5")) == "10.0.0.5"
    assert gateway.address_of(entry("gpu2", "root@10.0.0.6:2222")) == "10.0.0.6"
    assert gateway.address_of(entry("gpu3", "root@[fd00::7]:22")) == "fd00::7"
    with pytest.raises(BeamctlError, match="loopback") as e:
        gateway.address_of(entry("gpu4", "root@127.0.0.1:2201"))
    assert "address: 10.0.0.5" in e.value.hint
    with pytest.raises(BeamctlError, match="does not resolve"):
        gateway.address_of(entry("gpu5", "root@no-such-host.invalid"))


def test_the_inventory_keeps_an_address_and_refuses_a_name_for_one(tmp_path):
    path = tmp_path / "hosts.yaml"
    inventory.add(inventory.make_entry("gpu1", "root@h1", {}, "10.0.0.5"), path)
    assert inventory.load(path) == [entry("gpu1", "root@h1", "10.0.0.5")]
    assert inventory.find("gpu1", path).address == "10.0.0.5"
    assert inventory.find("root@h1", path).name == "gpu1"  # by target too (beam.yaml names hosts so)
    assert inventory.find("other", path) == entry("other", "other")
    with pytest.raises(inventory.InventoryError, match="must be an IP address"):
        inventory.make_entry("gpu2", "root@h2", {}, "h2.local")


def test_the_url_is_the_users_or_the_gateways_address_with_a_port_only_when_not_the_default():
    tls = GatewayConfig("gw1", 443, Path("a.pem"), "", None)
    assert gateway.url_of(tls, "10.0.0.2") == "https://10.0.0.2"
    assert gateway.url_of(GatewayConfig("gw1", 8443, Path("a.pem"), "", None), "fd00::2") == "https://[fd00::2]:8443"
    assert gateway.url_of(GatewayConfig("gw1", 80, None, "", None), "10.0.0.2") == "http://10.0.0.2"
    assert gateway.url_of(GatewayConfig("gw1", 443, Path("a.pem"), "", "https://api.example.com/"), "x") == \
        "https://api.example.com"


def test_the_door_routes_to_hosts_that_serve_the_app_or_did_not_answer():
    def row(active):
        return {"apps": [{"app": "a", "active_version": active}]}

    replies = [Reply("h1", row(3)), Reply("h2", row(None)), Reply("h3", error="unreachable"),
               Reply("h4", {"apps": [{"app": "b", "active_version": 1}]})]
    assert gateway.serving(replies, "a") == ["h1", "h3"]  # h3: its health check decides
    told = [Reply("h1", {"apps": [{"app": "a", "gateway": None}]}),
            Reply("h2", {"apps": [{"app": "a", "gateway": {"url": "https://g", "gateway": "gw1"}}]})]
    assert gateway.gateway_of(told, "a") == {"url": "https://g", "gateway": "gw1"}
    assert gateway.gateway_of(told, "b") is None


def test_an_agent_takes_servers_as_names_and_ip_addresses_only():
    assert agent_door.servers([["gpu1", "10.0.0.5:8430"], ["gpu2", "[fd00::1]:8430"]]) == (
        ("gpu1", "10.0.0.5:8430"), ("gpu2", "[fd00::1]:8430"))
    for bad in ([["gpu1", "gpu1.local:8430"]], [["gpu 1", "10.0.0.5:8430"]], [["gpu1", "10.0.0.5:0"]],
                [["gpu1"]], [["gpu1", "10.0.0.5:8430\nbackend x"]]):
        with pytest.raises(AgentError):
            agent_door.servers(bad)


def test_the_haproxy_file_one_frontend_per_port_one_backend_per_app():
    doors = [Door("a", 8443, "", True, "1" * 64, (("gpu1", "127.0.0.1:8430"), ("gpu2", "10.0.0.6:8430"))),
             Door("b", 8443, "", True, "2" * 64, ()),
             Door("c", 8080, "10.0.0.2", False, "3" * 64, (("gpu3", "[fd00::3]:8430"),))]
    text = render(doors, Path("/var/lib/beamctl/gateway"), ("nobody", "nogroup"))
    assert text.count("\nfrontend ") == 2 and text.count("\nbackend ") == 3
    assert "bind :8443 ssl crt /var/lib/beamctl/gateway/certs/8443/" in text
    assert "bind 10.0.0.2:8080\n" in text  # plain HTTP where asked, nothing else
    assert "-m str " + "1" * 64 in text and "-m str " + "2" * 64 in text  # each app checks its own token
    assert "unless app_a or app_b" in text  # an app not routed: 401, as a wrong token
    assert "b is stopped" in text.split("\nbackend app_b\n")[1].split("\nbackend ")[0]  # no server: 503, said why
    assert "server gpu3 [fd00::3]:8430" in text
    assert "retry-on" not in text and "retries 2" in text  # only a connection never made is tried again
    assert "on-marked-down shutdown-sessions" in text and "balance leastconn" in text
    assert "user nobody" in text and "chroot /var/lib/beamctl/gateway/empty" in text


def test_status_says_the_apps_address_and_its_rotation():
    from beamctl.cli import views

    where = {"url": "https://10.0.0.2:8443", "gateway": "gw1"}
    lines = views.gateway_lines("a", where, {"servers": [{"host": "h1", "state": "UP"},
                                                         {"host": "h2", "state": "DOWN"}]}, None)
    assert lines == ["[bold]a[/]  address: https://10.0.0.2:8443/apps/a (gateway gw1)",
                     "  rotation: h1 UP, h2 DOWN"]
    assert "no host (stopped)" in views.gateway_lines("a", where, {"servers": []}, None)[1]
    assert "gateway:[/] timed out" in views.gateway_lines("a", where, None, "timed out")[1]
