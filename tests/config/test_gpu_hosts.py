from __future__ import annotations

import pytest

from beamctl.config.gpu import CANONICAL, GpuChoice, GpuNameError, canonical_name, parse_choice
from beamctl.config.hosts import Host, parse_host


@pytest.mark.parametrize("raw, expected", [
    ("h100", "H100"), ("nvidia h100", "H100"), ("NVIDIA H100 80GB HBM3", "H100"), ("H100 PCIe", "H100"),
    ("A100-SXM4-40GB", "A100-40"), ("NVIDIA A100 80GB PCIe", "A100-80"), ("Tesla T4", "T4"),
    ("NVIDIA GeForce RTX 4090", "RTX4090"), ("rtx5090", "RTX5090"), ("l40s", "L40S"), ("NVIDIA A10G", "A10G"),
    ("NVIDIA L4", "L4"), ("b200", "B200"), ("h200", "H200"), ("L40", None), ("A100", None), ("K80", None),
])
def test_device_and_user_names_map_to_canonical(raw, expected):
    assert canonical_name(raw) == expected


def test_every_canonical_name_maps_to_itself():
    assert [canonical_name(c) for c in CANONICAL] == list(CANONICAL)


@pytest.mark.parametrize("raw, expected", [
    ("H100:2", GpuChoice("H100", 2)), ("t4", GpuChoice("T4", 1)), ("none", None), ("CPU", None),
])
def test_choices(raw, expected):
    assert parse_choice(raw) == expected


@pytest.mark.parametrize("raw, message", [
    ("H100:9", "'H100:9': the GPU count must be between 1 and 8, not 9 (omit `gpu`, or write `gpu: none`, "
               "for a CPU-only app)"),
    ("H100:two", "'H100:two': the count after ':' must be a whole number, like H100:2"),
    ("A100:1", "'A100' is ambiguous: write A100-40 or A100-80 (the memory size in GB)"),
    ("Quadro", "unknown GPU type 'Quadro'. Known types: " + ", ".join(CANONICAL)),
])
def test_bad_choices_say_why(raw, message):
    with pytest.raises(GpuNameError) as e:
        parse_choice(raw)
    assert str(e.value) == message


@pytest.mark.parametrize("target, host", [
    ("gpu1", Host("gpu1", "gpu1")),
    ("ubuntu@10.0.0.2", Host("ubuntu@10.0.0.2", "10.0.0.2", "ubuntu")),
    ("deploy@box.example.com:2222", Host("deploy@box.example.com:2222", "box.example.com", "deploy", 2222)),
    ("[::1]:22", Host("[::1]:22", "::1", None, 22)),
])
def test_hosts_parse(target, host):
    assert parse_host(target) == host


@pytest.mark.parametrize("target", [
    "-oProxyCommand=sh", "-J", "a b", "h;id", "h`id`", "$(id)@h", "h|x", "u@h:0", "u@h:65536", "@h", "h:",
    "u@@h", "h\n",
])
def test_dangerous_or_malformed_hosts_are_refused(target):
    with pytest.raises(ValueError):
        parse_host(target)
