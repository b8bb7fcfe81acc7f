"""`hosts` text output (pure)."""

from __future__ import annotations

from beamctl.cli.host_views import check_lines, gpu_text, inventory_lines, summary
from beamctl.fleet.check import HostCheck
from beamctl.fleet.inventory import Entry
from beamctl.fleet.probe import Disk, Gpu, HostFacts

FACTS = HostFacts(hostname="gpu1", kernel="6.8.0", arch="x86_64", cpus=64, memory_bytes=512 << 30,
                  docker_version="27.3.1", docker_root="/data/docker",
                  gpus=tuple(Gpu(i, "NVIDIA H100 80GB HBM3", "H100", 81559, "550.54.15") for i in range(2)),
                  criu_version="4.1.1", disks=(Disk("/", 100 << 30, 400 << 30), Disk("/data/docker", 3 << 40, 7 << 40)),
                  agent_note="not installed")


def test_a_host_that_answered():
    assert check_lines(HostCheck("gpu1", "deploy@10.0.0.5", True, 0.42, FACTS)) == [
        "gpu1 (deploy@10.0.0.5): ok in 0.4 s",
        "  system  gpu1, Linux 6.8.0 x86_64, 64 CPUs, 512.0 GiB memory",
        "  docker  27.3.1 (data root /data/docker)",
        "  gpus    2x H100 (79.6 GiB, driver 550.54.15)",
        "  criu    4.1.1 [yellow](checkpoints need CRIU >= 4.2: scripts/install-criu.sh)[/]",
        "  disk    / 100.0 GiB free of 400.0 GiB; /data/docker 3072.0 GiB free of 7168.0 GiB",
        "  agent   not installed",
    ]


def test_criu_versions():
    from beamctl.cli.host_views import criu_text

    assert criu_text("4.2.1", "nftables") == "4.2.1, network lock nftables"
    assert criu_text("5.0", "skip") == "5.0, network lock skip" and criu_text("weird", None) == "weird"
    assert "need CRIU >= 4.2" in criu_text("3.17.1", "nftables")
    default = criu_text("4.2.1", None)  # no runc.conf choice: CRIU's iptables lock, slower
    assert default.startswith("4.2.1 [yellow](network lock iptables") and "install-criu.sh" in default
    assert "network lock iptables:" in criu_text("4.2.1", "iptables")


def test_a_host_that_refused():
    c = HostCheck("gpu2", "gpu2", False, 0.1, error="gpu2: unknown host key ...", hint="run: beamctl hosts trust gpu2",
                  kind="HostKeyUnknown")
    assert check_lines(c) == ["gpu2: refused [HostKeyUnknown]", "  error: gpu2: unknown host key ...",
                              "  hint: run: beamctl hosts trust gpu2"]
    down = HostCheck("gpu3", "gpu3", False, 10.0, error="gpu3: unreachable: ...", kind="HostUnreachable")
    assert check_lines(down)[0] == "gpu3: unreachable [HostUnreachable]"
    assert summary([HostCheck("gpu1", "t", True, 0.4, FACTS), c, down]) == "3 hosts: 1 ok, 2 failed (gpu2, gpu3)"


def test_gpus_and_their_absence():
    assert gpu_text(HostFacts(gpu_note="no nvidia-smi")) == "none: CPU-only (no nvidia-smi)"
    mixed = HostFacts(gpus=(Gpu(0, "NVIDIA H200", "H200", 143771, "580.65.06"),
                            Gpu(1, "Odd Board", None, None, "580.65.06")))
    assert gpu_text(mixed) == "1x H200 (140.4 GiB, driver 580.65.06), 1x Odd Board (? memory, driver 580.65.06)"


def test_inventory_columns():
    assert inventory_lines([Entry("gpu1", "deploy@10.0.0.5", {"rack": "a"}), Entry("g2", "alias")]) == [
        "gpu1  deploy@10.0.0.5  rack=a", "g2    alias"]
