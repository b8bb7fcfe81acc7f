"""The `hosts check` probe: its output read back into facts, on real outputs (samples/README.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from beamctl.hosts.probe import PROBE_ARGV, Disk, Gpu, parse_probe, sections

SAMPLES = Path(__file__).parent / "samples"
CPU_HOST = (SAMPLES / "probe-cpu-host.txt").read_text()


def with_section(name: str, body: str, rc: int) -> str:
    """The real CPU host's probe output with one section swapped for another real output."""
    pattern = re.compile(rf"(@@beamctl {name}\n).*?(?=\n@@beamctl |\Z)", re.DOTALL)
    return pattern.sub(lambda m: f"{m[1]}{body.rstrip()}\n@@rc {rc}\n", CPU_HOST, count=1)


def test_the_cpu_host_sample():
    f = parse_probe(CPU_HOST)
    assert (f.hostname, f.kernel, f.arch, f.cpus, f.memory_bytes) == ("vm", "6.18.44-fc-v595", "x86_64", 2,
                                                                       24684096 * 1024)
    assert (f.docker_version, f.docker_root, f.docker_error) == ("20.10.24+dfsg1", "/var/lib/docker", None)
    assert (f.gpus, f.gpu_note) == ((), "no nvidia-smi")
    assert (f.criu_version, f.criu_error) == ("4.1.1", None)
    assert f.disks == (Disk("/", 75175760 * 1024, 264212084 * 1024),
                       Disk("/var/lib/docker", 75175760 * 1024, 264212084 * 1024))
    assert (f.agent_installed, f.agent_version, f.agent_note) == (False, None, "not installed")
    assert f.docker_runtimes == ("io.containerd.runc.v2", "io.containerd.runtime.v1.linux", "runc")
    assert (f.criu_check_error, f.runc_version, f.runc_error, f.nvidia_hook) == (None, "1.1.5+ds1", None, None)
    assert (f.zstandard_version, f.zstandard_error) == (None, "no agent Python (the agent is not installed)")
    assert f.problems == []


def test_four_a100s():
    f = parse_probe(with_section("gpus", (SAMPLES / "nvidia-smi-4xA100-80.csv").read_text(), 0))
    assert f.gpus == tuple(Gpu(i, "NVIDIA A100-SXM4-80GB", "A100-80", 81920, "535.129.03") for i in range(4))
    assert f.gpu_note is None


def test_eight_h100s_and_an_h200():
    f = parse_probe(with_section("gpus", (SAMPLES / "nvidia-smi-8xH100.csv").read_text(), 0))
    assert [g.index for g in f.gpus] == list(range(8))
    assert {(g.name, g.canonical, g.memory_mib, g.driver) for g in f.gpus} == {
        ("NVIDIA H100 80GB HBM3", "H100", 81559, "550.54.15")}
    f = parse_probe(with_section("gpus", (SAMPLES / "nvidia-smi-H200.csv").read_text(), 0))
    assert f.gpus == (Gpu(0, "NVIDIA H200", "H200", 143771, "580.65.06"),)


def test_unified_memory_reports_no_total():
    f = parse_probe(with_section("gpus", "0, NVIDIA GB10, [N/A], 580.95.05", 0))
    assert f.gpus == (Gpu(0, "NVIDIA GB10", None, None, "580.95.05"),)


@pytest.mark.parametrize("sample, rc, note", [
    ("nvidia-smi-no-driver.txt", 9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                                    "driver. Make sure that the latest NVIDIA driver is installed and running."),
    ("nvidia-smi-no-devices.txt", 6, "No devices were found"),
])
def test_nvidia_smi_without_gpus_says_why(sample, rc, note):
    f = parse_probe(with_section("gpus", (SAMPLES / sample).read_text(), rc))
    assert (f.gpus, f.gpu_note) == ((), note)


def test_docker_not_running():
    f = parse_probe(with_section("docker", (SAMPLES / "docker-not-running.txt").read_text(), 1))
    assert f.docker_version is None
    assert f.docker_error == ("Cannot connect to the Docker daemon at unix:///tmp/nonexistent.sock. "
                              "Is the docker daemon running?")


def test_runc_s_criu_network_lock():
    assert parse_probe(CPU_HOST).criu_network_lock is None  # no /etc/criu/runc.conf on that host
    f = parse_probe(with_section("criu", "@@lock nftables\nVersion: 4.2.1", 0))
    assert (f.criu_version, f.criu_network_lock) == ("4.2.1", "nftables")


def test_docker_and_criu_not_installed():
    f = parse_probe(with_section("criu", "sh: 6: criu: not found", 127))
    assert (f.criu_version, f.criu_error) == (None, "not installed")
    f = parse_probe(with_section("docker", "sh: 3: docker: not found", 127))
    assert (f.docker_version, f.docker_error) == (None, "not installed")


def test_agent_versions():
    f = parse_probe(with_section("agent", "beamctl-agent 0.4.0", 0))
    assert (f.agent_installed, f.agent_version) == (True, "0.4.0")
    f = parse_probe(with_section("agent", (SAMPLES / "agent-without-version-flag.txt").read_text(), 2))
    assert (f.agent_installed, f.agent_version) == (True, None)
    assert f.agent_note == ("does not report its version (beamctl-agent: error: unrecognized arguments: "
                            "--version)")


def test_garbage_is_a_problem_not_a_crash():
    f = parse_probe(with_section("gpus", "0, half a line", 0))
    assert f.gpus == () and f.problems == ["gpus: cannot read the output (2 fields, not index, name, memory, "
                                           "driver[, uuid])"]
    assert parse_probe("").problems == [f"no {n} section" for n in ("system", "docker", "gpus", "criu",
                                                                     "criu_check", "runc", "nvidia", "disk",
                                                                     "agent", "unzstd")]


def test_an_engine_of_the_old_format_has_no_runtime_list():
    f = parse_probe(with_section("docker", "@@20.10.24+dfsg1|/var/lib/docker", 0))
    assert (f.docker_version, f.docker_root, f.docker_runtimes) == ("20.10.24+dfsg1", "/var/lib/docker", None)


def test_the_engines_experimental_mode_is_read():
    line = "@@20.10.24+dfsg1|/var/lib/docker|runc,|{}"
    assert parse_probe(with_section("docker", line.format("true"), 0)).docker_experimental is True
    assert parse_probe(with_section("docker", line.format("false"), 0)).docker_experimental is False
    assert parse_probe(with_section("docker", "@@20.10.24+dfsg1|/var/lib/docker|runc,", 0)).docker_experimental is None


def test_criu_check_runc_nvidia_and_the_decompressor():
    f = parse_probe(with_section("criu_check", "Error (criu/cr-check.c:1234): Kernel doesn't support PTRACE_O_SUSPEND_SECCOMP", 1))
    assert f.criu_check_error == "Error (criu/cr-check.c:1234): Kernel doesn't support PTRACE_O_SUSPEND_SECCOMP"
    assert parse_probe(with_section("criu_check", "", 0)).criu_check_error is None
    assert parse_probe(with_section("runc", "sh: 1: runc: not found", 127)).runc_error == "not installed"
    f = parse_probe(with_section("nvidia", "/usr/bin/nvidia-container-runtime-hook", 0))
    assert f.nvidia_hook == "/usr/bin/nvidia-container-runtime-hook"
    assert parse_probe(with_section("unzstd", "0.23.0", 0)).zstandard_version == "0.23.0"
    f = parse_probe(with_section("unzstd", "ModuleNotFoundError: No module named 'zstandard'", 1))
    assert f.zstandard_error == "the agent's Python has no zstandard module"


def test_sections_carry_their_exit_status():
    assert sections("@@beamctl a\nx\n@@rc 3\n@@beamctl b\ny\n") == {"a": (["x"], 3), "b": (["y"], None)}


def test_the_probe_is_one_fixed_command():
    assert PROBE_ARGV[:2] == ("sh", "-c") and len(PROBE_ARGV) == 3


@pytest.mark.integration
def test_the_probe_runs_here_and_reads_back(tmp_path):
    """The script itself, in a POSIX sh, against this machine's Docker Engine and CRIU."""
    assert shutil.which("docker"), "docker is not installed: run ./scripts/setup.sh"
    out = subprocess.run(list(PROBE_ARGV), capture_output=True, text=True, cwd=tmp_path, timeout=60).stdout
    f = parse_probe(out)
    server = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                            text=True).stdout.strip()
    assert f.docker_version == server and f.docker_root
    assert f.problems == [] and [d.path for d in f.disks] == ["/", f.docker_root]
    assert all(d.free_bytes > 0 for d in f.disks)
    conf = Path("/etc/criu/runc.conf")  # scripts/setup.sh sets nftables where CRIU's trial dump works
    want = next((ln.split()[1] for ln in (conf.read_text().splitlines() if conf.exists() else [])
                 if ln.strip().startswith("network-lock") and len(ln.split()) > 1), None)
    assert f.criu_network_lock == want
    assert f.runc_version and f.runc_error is None and "runc" in (f.docker_runtimes or ())
    assert f.criu_version and f.criu_check_error is None  # `criu check` passes here (scripts/setup.sh)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    assert f.thp == (thp.read_text().split("[", 1)[1].split("]", 1)[0] if thp.exists() else None)
