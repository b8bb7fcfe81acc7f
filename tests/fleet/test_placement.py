"""GPU-aware placement across hosts (fleet/placement.py), on inventories read from real nvidia-smi
outputs (samples/README.md) through the agent's own parser; `gather` over fake hosts (hosts/fake.py)."""

from __future__ import annotations

import socket
from pathlib import Path
import pytest

from beamctl.protocol import gpus
from beamctl.protocol.gpus import Gpu
from beamctl.errors import ExitCode
from beamctl.hosts.fake import FakeAgent, FakeHost
from beamctl.transport.errors import HostUnreachable
from beamctl.fleet.placement import (HostGpus, NoGpuPlacement, Placement, describe_gpus, fleet_summary,
                                     gather, gpus_from_about, place)

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> tuple[Gpu, ...]:
    return tuple(gpus.parse((SAMPLES / name).read_text()))


A100S, H100S, H200 = sample("nvidia-smi-4xA100-80.csv"), sample("nvidia-smi-8xH100.csv"), sample("nvidia-smi-H200.csv")
RTX = tuple(Gpu(i, "NVIDIA GeForce RTX 4090", "RTX4090", 24564, "570.1") for i in range(2))


# --- the agent's parser on the real outputs ------------------------------------------------------------

def test_agent_parser_reads_the_recorded_nvidia_smi_outputs():
    assert A100S == tuple(Gpu(i, "NVIDIA A100-SXM4-80GB", "A100-80", 81920, "535.129.03") for i in range(4))
    assert [g.index for g in H100S] == list(range(8))
    assert {(g.name, g.canonical, g.memory_mib, g.driver) for g in H100S} == {
        ("NVIDIA H100 80GB HBM3", "H100", 81559, "550.54.15")}
    assert H200 == (Gpu(0, "NVIDIA H200", "H200", 143771, "580.65.06"),)


@pytest.mark.parametrize("name", ["nvidia-smi-no-driver.txt", "nvidia-smi-no-devices.txt"])
def test_agent_parser_finds_no_gpu_in_nvidia_smi_messages(name):
    assert gpus.parse((SAMPLES / name).read_text()) == []


def test_agent_parser_keeps_a_board_without_a_memory_total():
    # unified-memory parts (GB10) print [N/A]; this used to stop the agent at start-up
    assert gpus.parse("0, NVIDIA GB10, [N/A], 580.95.05\n") == [Gpu(0, "NVIDIA GB10", None, None, "580.95.05")]


# --- place (pure) --------------------------------------------------------------------------------------

def test_each_host_uses_its_first_placeable_preference():
    fleet = {"a100": HostGpus(A100S), "h100": HostGpus(H100S), "rtx": HostGpus(RTX, refusal="this host has "
             "NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 4090; the app asks for H100 or A100-80")}
    result = place(("H100", "A100-80"), fleet)
    assert result.chosen == {"a100": "A100-80", "h100": "H100"}
    assert result.hosts == ("a100", "h100")
    assert result.skipped == {"rtx": "this host has NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 4090; the app "
                                     "asks for H100 or A100-80"}
    assert place(("A100-80", "H100"), fleet).chosen == {"a100": "A100-80", "h100": "H100"}


def test_counts_are_part_of_the_preference():
    fleet = {"h200": HostGpus(H200), "h100": HostGpus(H100S)}
    # one H200 is not two; the h200 agent said yes all the same (a newer rule?): its answer is trusted and
    # the first preference is named
    assert place(("H200:2", "H100:4"), fleet).chosen == {"h200": "H200:2", "h100": "H100:4"}
    assert place(("H100:9", "H100:8"), {"h100": HostGpus(H100S)}).chosen == {"h100": "H100:8"}


def test_the_agents_own_choice_wins():
    # the agent knows which GPUs are free: its H100s are busy, an A100 is not
    fleet = {"mixed": HostGpus(H100S[:1] + A100S[:1], choice="A100-80")}
    assert place(("H100", "A100-80"), fleet).chosen == {"mixed": "A100-80"}


def test_a_host_whose_gpu_is_busy_is_skipped_with_the_agents_reason():
    busy = "all 8 H100 are in use (app llm v3 holds them)"
    fleet = {"h100": HostGpus(H100S, refusal=busy), "a100": HostGpus(A100S)}
    result = place(("H100", "A100-80"), fleet)
    assert result == Placement({"a100": "A100-80"}, {"h100": busy})


def test_a_cpu_app_goes_to_every_answering_host():
    fleet = {"h100": HostGpus(H100S), "cpu": HostGpus(()), "down": HostGpus(error="unreachable: timed out")}
    result = place((), fleet)
    assert result.chosen == {"h100": None, "cpu": None}
    assert result.skipped == {"down": "did not answer: unreachable: timed out"}


def test_none_available_lists_every_hosts_gpus():
    fleet = {"gpu-a": HostGpus(RTX, refusal="this host has NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 4090; "
                               "the app asks for H100 or A100-80"),
             "gpu-b": HostGpus((), refusal="this host has no GPU (nvidia-smi lists none); the app asks for H100 "
                               "or A100-80"),
             "gpu-c": HostGpus(error="unreachable: connection refused"),
             "gpu-d": HostGpus(H100S[:2], refusal="both H100 are in use")}
    with pytest.raises(NoGpuPlacement) as caught:
        place(("H100", "A100-80"), fleet)
    e = caught.value
    assert e.message == (
        "no host has a free H100 or a free A100-80 (preference: H100, A100-80). Fleet: "
        "gpu-a: 2x RTX4090 (24 GiB, driver 570.1); gpu-b: none; gpu-c: did not answer (unreachable: connection "
        "refused); gpu-d: 2x H100 (80 GiB, driver 550.54.15) (refused: both H100 are in use)")
    assert e.hint == ("change gpu: in beam.yaml (a list is an order of preference), or add a host with a free "
                      "H100 (beamctl hosts add)")
    assert e.exit_code == ExitCode.CONFIG
    assert e.prefs == ("H100", "A100-80") and set(e.skipped) == {"gpu-a", "gpu-b", "gpu-c", "gpu-d"}


def test_one_preference_reads_plainly_and_counts_are_said():
    fleet = {"h200": HostGpus(H200, refusal="no")}
    with pytest.raises(NoGpuPlacement, match=r"^no host has a free H200\. Fleet: h200: 1x H200 \(140 GiB, "
                                             r"driver 580\.65\.06\) \(refused: no\)$"):
        place(("H200",), fleet)
    with pytest.raises(NoGpuPlacement, match=r"^no host has 2 free H200\. "):
        place(("H200:2",), fleet)


def test_no_host_answering_is_a_remote_failure():
    fleet = {"a": HostGpus(error="unreachable: no route to host"), "b": HostGpus(error="no answer in time")}
    with pytest.raises(NoGpuPlacement) as caught:
        place(("H100",), fleet)
    assert caught.value.exit_code == ExitCode.REMOTE
    assert caught.value.message == ("no host answered, so none can take the app. Fleet: a: did not answer "
                                    "(unreachable: no route to host); b: did not answer (no answer in time)")
    with pytest.raises(NoGpuPlacement) as caught:
        place((), fleet)  # a CPU app too
    assert caught.value.exit_code == ExitCode.REMOTE


def test_an_empty_fleet_is_refused():
    with pytest.raises(NoGpuPlacement, match="no hosts to place the app on") as caught:
        place((), {})
    assert caught.value.exit_code == ExitCode.CONFIG


def test_gpu_descriptions():
    assert describe_gpus(()) == "none"
    assert describe_gpus(A100S) == "4x A100-80 (80 GiB, driver 535.129.03)"
    mixed = H200 + (Gpu(1, "NVIDIA GB10", None, None, "580.95.05"), Gpu(2, "NVIDIA L4", "L4", 23034, ""))
    assert describe_gpus(mixed) == ("1x H200 (140 GiB, driver 580.65.06), 1x NVIDIA GB10 (driver 580.95.05), "
                                    "1x L4 (22 GiB)")
    assert fleet_summary({"x": HostGpus(RTX), "y": HostGpus(error="gone")}) == (
        "x: 2x RTX4090 (24 GiB, driver 570.1); y: did not answer (gone)")


def test_gpus_from_the_agents_about_answer():
    about = {"version": "0.1", "gpus": [{"name": "NVIDIA H200", "canonical": "H200", "memory_mib": 143771,
                                         "driver": "580.65.06", "index": 0},
                                        {"name": "NVIDIA GB10", "canonical": None, "memory_mib": None,
                                         "driver": "580.95.05", "index": 1}, {"bad": 1}, "junk"]}
    assert gpus_from_about(about) == H200 + (Gpu(1, "NVIDIA GB10", None, None, "580.95.05"),)
    assert gpus_from_about({"version": "0.0.9"}) == () and gpus_from_about(None) == ()


# --- gather (fake hosts) -------------------------------------------------------------------------------

NO_FIT_HINT = "deploy to a host with a free GPU of that kind, or change gpu in beam.yaml"  # the fake agent's


def test_gather_asks_every_agent_and_keeps_each_hosts_failure_to_itself():
    hosts = [FakeHost("h100", FakeAgent(gpus=H100S)), FakeHost("rtx", FakeAgent(gpus=RTX)),
             FakeHost("busy", FakeAgent(gpus=A100S), answers={"check_placement": {
                 "ok": False, "error": "all A100 in use", "hint": "wait for llm to stop", "data": {}}}),
             FakeHost("down", fail={"version": HostUnreachable("down", "connection refused")}),
             FakeHost("slow", fail={"version": socket.timeout()}),
             FakeHost("broke", FakeAgent(gpus=H200), fail={"check_placement": EOFError("closed")}),
             FakeHost("odd", fail={"version": RuntimeError("boom")})]
    fleet = gather(hosts, ("H100", "A100-80"))
    assert list(fleet) == [h.name for h in hosts]
    assert fleet["h100"] == HostGpus(H100S, choice="H100")  # the agent names the preference it would use
    assert fleet["rtx"] == HostGpus(RTX, refusal="this host has NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 4090; "
                                                 "the app asks for H100 or A100-80", hint=NO_FIT_HINT)
    assert fleet["busy"] == HostGpus(A100S, refusal="all A100 in use", hint="wait for llm to stop")
    assert fleet["down"] == HostGpus(error="unreachable: connection refused")
    assert fleet["slow"] == HostGpus(error="no answer from the agent in time")
    assert fleet["broke"] == HostGpus(H200, error="unreachable: the connection broke: closed")
    assert fleet["odd"] == HostGpus(error="internal error: RuntimeError: boom")
    assert hosts[0].asked == [("version", {}), ("check_placement", {"gpu": ["H100", "A100-80"]})]
    assert hosts[3].ops() == ["version"]  # no answer to `version`: nothing more asked
    result = place(("H100", "A100-80"), fleet)
    assert result.chosen == {"h100": "H100"} and list(result.skipped) == ["rtx", "busy", "down", "slow", "broke",
                                                                           "odd"]


def test_gather_names_the_app_to_the_agents_placement_check():
    host = FakeHost("a100", FakeAgent(gpus=A100S))
    fleet = gather([host], ("H100", "A100-80"), app="llm")
    assert host.asked == [("version", {}), ("check_placement", {"gpu": ["H100", "A100-80"], "app": "llm"})]
    assert fleet == {"a100": HostGpus(A100S, choice="A100-80")}


def test_gather_for_a_cpu_app_asks_only_for_the_gpus():
    hosts = [FakeHost("a", FakeAgent(gpus=RTX)), FakeHost("b")]
    fleet = gather(hosts, ())
    assert fleet == {"a": HostGpus(RTX), "b": HostGpus(())}
    assert hosts[0].asked == [("version", {})] and hosts[1].asked == [("version", {})]
    assert place((), fleet).chosen == {"a": None, "b": None}


def test_gather_reads_the_agents_choice_and_its_failed_version_answer():
    chooser = FakeHost("c", FakeAgent(gpus=A100S + H100S),
                       answers={"check_placement": {"ok": True, "result": {"gpu": "A100-80", "count": 1}}})
    silent = FakeHost("s", FakeAgent(gpus=A100S), answers={"check_placement": {"ok": True, "result": None}})
    broken = FakeHost("x", answers={"version": {"ok": False, "error": "unknown operation 'version'"}})
    fleet = gather([chooser, silent, broken], ("H100", "A100-80"))
    assert fleet["c"] == HostGpus(A100S + H100S, choice="A100-80")
    assert fleet["s"] == HostGpus(A100S)  # a yes that names no preference: place picks the first that fits
    assert fleet["x"] == HostGpus(error="unknown operation 'version'")
    assert broken.ops() == ["version"]
    assert place(("H100", "A100-80"), fleet).chosen == {"c": "A100-80", "s": "A100-80"}
    assert gather([], ("H100",)) == {}
