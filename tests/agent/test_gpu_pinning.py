"""GPUs are pinned per version: an app gets GPUs no other app holds (agent/gpus.py assign/taken, the agent's
check_placement and deploy records, create_args' device ids)."""

from __future__ import annotations

import pytest

from beamctl.agent import gpus
from beamctl.protocol import gpus as rules
from beamctl.agent.container_args import create_args
from beamctl.agent.containers import _gpus
from beamctl.agent.service import Agent
from beamctl.protocol.errors import AgentError
from beamctl.protocol.spec import AppSpec

H100 = [rules.Gpu(0, "NVIDIA H100 80GB HBM3", "H100", 81559, "580.1"),
        rules.Gpu(1, "NVIDIA H100 80GB HBM3", "H100", 81559, "580.1"),
        rules.Gpu(2, "NVIDIA A100-SXM4-80GB", "A100-80", 81920, "580.1")]


def test_assign_takes_free_gpus_of_the_first_kind_that_has_enough():
    assert rules.assign(("H100",), H100, {}) == ("H100", (0,))
    assert rules.assign(("H100",), H100, {0: "chat"}) == ("H100", (1,))
    assert rules.assign(("H100:2", "A100-80"), H100, {0: "chat"}) == ("A100-80", (2,))
    assert rules.assign((), H100, {0: "chat"}) == ("", ())


def test_busy_gpus_are_refused_naming_who_holds_them():
    why = rules.assign(("H100:2",), H100, {1: "chat"})
    assert why == "not enough free GPUs here for H100:2: in use by other apps: GPU 1 (H100): chat"
    assert rules.assign(("T4",), H100, {}) .startswith("this host has NVIDIA H100 80GB HBM3")
    assert rules.placement(("H100:2",), H100) == ("H100", 2)  # the host has them (busy or not)


def test_taken_counts_other_apps_starting_or_active_versions_only():
    rows = [{"app": "chat", "state": "active", "spec": {"gpu_devices": [0]}},
            {"app": "chat", "state": "retired", "spec": {"gpu_devices": [1]}},
            {"app": "embed", "state": "starting", "spec": {"gpu_devices": [2]}},
            {"app": "old", "state": "active", "spec": {"gpu_count": 1}}]  # from before pinning: no devices
    assert gpus.taken(rows, exclude=None) == {0: "chat", 2: "embed"}
    assert gpus.taken(rows, exclude="chat") == {2: "embed"}


def test_the_agent_places_around_other_apps_and_gives_an_app_its_own_back(tmp_path):
    agent = Agent(tmp_path, containers=None, gpus=H100)
    agent.store.new_version("chat", "img", {"gpu": ["H100"], "gpu_count": 1, "gpu_devices": [0]})  # starting
    assert agent.check_placement(["H100"], app="embed") == {"gpu": "H100", "devices": [1]}
    assert agent.check_placement(["H100"], app="chat") == {"gpu": "H100", "devices": [0]}
    with pytest.raises(AgentError) as e:
        agent.check_placement(["H100:2"], app="embed")
    assert "GPU 0 (H100): chat" in e.value.message


def test_a_pinned_version_asks_the_engine_for_exactly_those_gpus(tmp_path):
    spec = AppSpec.from_json({"app": "chat", "image": "img", "gpu": ["H100"]})
    args = create_args(spec, 1, "agent", tmp_path, {}, gpu_count=1, gpu_devices=[1])
    assert args["gpus"] == ["1"]
    (request,) = _gpus(args["gpus"])
    assert (request["DeviceIDs"], request["Count"], request["Capabilities"]) == (["1"], 0, [["gpu"]])
    assert create_args(spec, 1, "agent", tmp_path, {}, gpu_count=2)["gpus"] == 2  # recorded before pinning


def test_a_rollback_to_gpus_another_app_took_meanwhile_is_refused(tmp_path):
    class Images:
        def has_image(self, ref):
            return True

    agent = Agent(tmp_path, containers=Images(), gpus=H100)
    spec = {"app": "chat", "image": "img", "gpu": ["H100"], "gpu_count": 1}
    old = agent.store.new_version("chat", "img", {**spec, "gpu_devices": [0]})
    agent.store.set_version_state("chat", old, "retired")
    now = agent.store.new_version("chat", "img2", {**spec, "gpu_devices": [1]})
    agent.store.set_version_state("chat", now, "active")
    agent.store.ensure_app("chat", "token")
    agent.store.set_active("chat", now)
    agent.store.new_version("embed", "e", {"app": "embed", "image": "e", "gpu_devices": [0]})  # took GPU 0
    with pytest.raises(AgentError) as e:
        agent.rollback("chat", old)
    assert e.value.message == f"v{old} used GPU(s) 0, now held by embed"


def test_a_pinned_container_asks_for_its_gpus_by_uuid_when_the_driver_names_them(tmp_path):
    """Indices follow the PCI order at boot; a UUID is the GPU itself (issue 20, item 6)."""
    with_uuids = [rules.Gpu(g.index, g.name, g.canonical, g.memory_mib, g.driver, f"GPU-{g.index}abc") for g in H100]
    agent = Agent(tmp_path, containers=None, gpus=with_uuids)
    spec = {"app": "chat", "image": "img", "gpu": ["H100"], "gpu_count": 1, "gpu_devices": [1]}
    v = agent.store.new_version("chat", "img", spec)
    agent.store.ensure_app("chat", "token")
    args = agent.state.create_args("chat", v)
    assert args["gpus"] == ["GPU-1abc"]
    (request,) = _gpus(args["gpus"])
    assert request["DeviceIDs"] == ["GPU-1abc"]
    old = Agent(tmp_path / "old", containers=None, gpus=H100)  # a driver that names none: indices
    v = old.store.new_version("chat", "img", spec)
    old.store.ensure_app("chat", "token")
    assert old.state.create_args("chat", v)["gpus"] == ["1"]
