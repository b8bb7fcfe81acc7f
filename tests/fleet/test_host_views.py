"""`hosts` text output (pure)."""

from __future__ import annotations

from dataclasses import replace

from beamctl.cli.host_views import check_lines, gpu_text, inventory_lines, summary
from beamctl.hosts.check import HostCheck
from beamctl.hosts.inventory import Entry
from beamctl.hosts.prereqs import Prereq, checkpoint_problem, prerequisites
from beamctl.hosts.probe import Disk, Gpu, HostFacts

FACTS = HostFacts(hostname="gpu1", kernel="6.8.0", arch="x86_64", cpus=64, memory_bytes=512 << 30,
                  docker_version="27.3.1", docker_root="/data/docker",
                  gpus=tuple(Gpu(i, "NVIDIA H100 80GB HBM3", "H100", 81559, "550.54.15") for i in range(2)),
                  criu_version="4.1.1", disks=(Disk("/", 100 << 30, 400 << 30), Disk("/data/docker", 3 << 40, 7 << 40)),
                  agent_note="not installed")


def test_a_host_that_answered():
    assert check_lines(HostCheck("gpu1", "deploy@10.0.0.5", True, 0.42, FACTS)) == [
        "gpu1 (deploy@10.0.0.5): ok in 0.4 s",
        "  system        gpu1, Linux 6.8.0 x86_64, 64 CPUs, 512.0 GiB memory",
        "  gpus          2x H100 (79.6 GiB, driver 550.54.15)",
        "  agent         not installed",
        "  docker        ok       27.3.1 (data root /data/docker)",
        "  runc          MISSING  unavailable: not probed",
        "                         fix: install runc, Docker's runtime (Debian, Ubuntu: apt-get install runc)",
        "  criu          MISSING  checkpoints off: CRIU 4.1.1 < 4.2 (4.1 cannot checkpoint TCP sockets on kernels "
        ">= 6.16)",
        "                         fix: beamctl hosts install gpu1 (it carries CRIU >= 4.2 from this machine)",
        "  decompressor  MISSING  unavailable: not probed",
        "                         fix: beamctl hosts install gpu1",
        "  disk          ok       /data/docker: 3072.0 GiB free of 7168.0 GiB",
        "  nvidia        MISSING  the host has GPUs but no NVIDIA container toolkit",
        "                         fix: install nvidia-container-toolkit (NVIDIA's apt repository), then restart "
        "Docker",
        "  checkpoints   no: CRIU 4.1.1 < 4.2 (4.1 cannot checkpoint TCP sockets on kernels >= 6.16)",
    ]


READY = replace(FACTS, criu_version="4.2.1", criu_network_lock="nftables", runc_version="1.1.5+ds1",
                zstandard_version="0.23.0", nvidia_hook="/usr/bin/nvidia-container-runtime-hook")


def test_a_host_with_everything_can_checkpoint():
    c = HostCheck("gpu1", "gpu1", True, 0.42, READY)
    assert check_lines(c)[4:] == [
        "  docker        ok       27.3.1 (data root /data/docker)",
        "  runc          ok       1.1.5+ds1",
        "  criu          ok       4.2.1, network lock nftables",
        "  decompressor  ok       zstandard 0.23.0 in the agent's Python",
        "  disk          ok       /data/docker: 3072.0 GiB free of 7168.0 GiB",
        "  nvidia        ok       /usr/bin/nvidia-container-runtime-hook",
        "  checkpoints   yes",
    ]
    assert summary([c]) == "1 host: 1 ok"
    assert c.as_json()["checkpoints"] == {"can": True, "why_not": None}
    assert [p["name"] for p in c.as_json()["prerequisites"]] == ["docker", "runc", "criu", "decompressor", "disk",
                                                                 "nvidia"]


def test_criu_states_and_their_fixes():
    def criu(**changes):
        (p,) = [p for p in prerequisites(replace(READY, **changes), "h") if p.name == "criu"]
        return p.ok, p.found, p.fix

    assert criu(criu_version=None, criu_error="not installed") == (
        False, "checkpoints off: CRIU is not installed",
        "beamctl hosts install h (it carries CRIU >= 4.2 from this machine)")
    assert criu(criu_check_error="Error (criu/kerndat.c:1): no userfaultfd") == (
        False, "checkpoints off: `criu check` fails: Error (criu/kerndat.c:1): no userfaultfd",
        "the kernel lacks what CRIU needs: run `criu check --all` on the host for the details")
    assert criu(criu_network_lock=None) == (
        True, "4.2.1, network lock iptables (CRIU default): 70-85 ms more per checkpoint capture and restore",
        "beamctl hosts install h (sets network-lock nftables in /etc/criu/runc.conf where a trial dump works)")
    assert criu(criu_network_lock="iptables")[2] is None  # chosen (a trial dump with nftables failed there)
    assert criu(criu_version="5.0", criu_network_lock="skip") == (True, "5.0, network lock skip", None)


def test_every_part_s_fix():
    docker_down = replace(READY, docker_version=None, docker_error="Cannot connect to the Docker daemon")
    assert prerequisites(docker_down, "h")[0] == Prereq(
        "docker", False, "unavailable: Cannot connect to the Docker daemon",
        "start it (systemctl start docker) and let the SSH user use it (root, or the docker group)")
    assert checkpoint_problem(docker_down) == "no Docker Engine (Cannot connect to the Docker daemon)"
    old = prerequisites(replace(READY, docker_version="19.03.15"), "h")[0]
    assert (old.ok, old.fix) == (False, "upgrade Docker Engine to >= 20.10")
    full = prerequisites(replace(READY, disks=(Disk("/data/docker", 3 << 30, 7 << 40),)), "h")[4]
    assert full == Prereq("disk", False, "/data/docker: 3.0 GiB free of 7168.0 GiB, less than 10 GiB",
                          "free space under /data/docker (docker image prune -a removes unused images)")
    cpu_only = prerequisites(replace(READY, gpus=(), nvidia_hook=None), "h")
    assert [p.name for p in cpu_only] == ["docker", "runc", "criu", "decompressor", "disk"]
    no_zstd = replace(READY, zstandard_version=None, zstandard_error="the agent's Python has no zstandard module")
    assert prerequisites(no_zstd, "h")[3] == Prereq(
        "decompressor", False, "unavailable: the agent's Python has no zstandard module", "beamctl hosts install h")
    no_runc = replace(READY, runc_version=None, runc_error="not installed")
    assert checkpoint_problem(no_runc) == "runc: not installed"
    no_systemd = prerequisites(replace(READY, gpus=(), systemd=False), "h")[-1]
    assert no_systemd == Prereq("supervisor", True, "no systemd: the agent runs under a restart loop that a reboot "
                                "ends", "after every reboot: beamctl hosts install h (it starts the agent; containers "
                                "and volumes stay)")
    assert prerequisites(replace(READY, gpus=(), systemd=True), "h")[-1].fix is None


def test_a_gpu_host_hears_about_transparent_huge_pages():
    def line(**changes):
        return [p for p in prerequisites(replace(READY, **changes), "h") if p.name == "hugepages"]

    assert line() == [] and line(thp="madvise", gpus=()) == []  # not probed; a CPU host: no advice
    (advice,) = line(thp="madvise")
    assert advice.ok and advice.found.startswith("transparent huge pages: madvise; with always, a GPU snapshot's")
    assert advice.found.endswith(": measure") and "echo madvise puts it back" in advice.fix
    assert advice.fix.startswith("to try it: echo always > /sys/kernel/mm/transparent_hugepage/enabled")
    assert line(thp="always") == [Prereq("hugepages", True, "transparent huge pages: always")]
    text = "\n@@beamctl system\ngpu1 6.1.0 x86_64\n@@systemd yes\n@@thp always [madvise] never\n@@rc 0\n"
    from beamctl.hosts.probe import parse_probe
    assert parse_probe(text).thp == "madvise"
    assert parse_probe(text.replace("@@thp always [madvise] never", "@@thp ")).thp is None


def test_the_probe_says_whether_the_host_runs_systemd():
    from beamctl.hosts.probe import parse_probe

    text = "\n@@beamctl system\ngpu1 6.1.0 x86_64\n8\n@@systemd no\n@@rc 0\n"
    assert parse_probe(text).systemd is False
    assert parse_probe(text.replace("@@systemd no", "@@systemd yes")).systemd is True
    assert parse_probe("\n@@beamctl system\ngpu1 6.1.0 x86_64\n@@rc 0\n").systemd is None


def test_no_view_holds_markup_or_a_repository_script():
    for facts in (FACTS, READY, replace(READY, criu_network_lock=None)):
        text = "\n".join(check_lines(HostCheck("gpu1", "gpu1", True, 0.1, facts)))
        assert "[/" not in text and "[yellow" not in text and "scripts/" not in text and ".sh" not in text


def test_a_host_that_refused():
    c = HostCheck("gpu2", "gpu2", False, 0.1, error="gpu2: unknown host key ...", hint="run: beamctl hosts trust gpu2",
                  kind="HostKeyUnknown")
    assert check_lines(c) == ["gpu2: refused [HostKeyUnknown]", "  error: gpu2: unknown host key ...",
                              "  hint: run: beamctl hosts trust gpu2"]
    down = HostCheck("gpu3", "gpu3", False, 10.0, error="gpu3: unreachable: ...", kind="HostUnreachable")
    assert check_lines(down)[0] == "gpu3: unreachable [HostUnreachable]"
    assert summary([HostCheck("gpu1", "t", True, 0.4, FACTS), c, down]) == \
        "3 hosts: 1 ok, 2 failed (gpu2, gpu3); missing prerequisites: gpu1 (runc, criu, decompressor, nvidia)"


def test_gpus_and_their_absence():
    assert gpu_text(HostFacts(gpu_note="no nvidia-smi")) == "none: CPU-only (no nvidia-smi)"
    mixed = HostFacts(gpus=(Gpu(0, "NVIDIA H200", "H200", 143771, "580.65.06"),
                            Gpu(1, "Odd Board", None, None, "580.65.06")))
    assert gpu_text(mixed) == "1x H200 (140.4 GiB, driver 580.65.06), 1x Odd Board (? memory, driver 580.65.06)"


def test_inventory_columns():
    assert inventory_lines([Entry("gpu1", "deploy@10.0.0.5", {"rack": "a"}), Entry("g2", "alias")]) == [
        "gpu1  deploy@10.0.0.5  rack=a", "g2    alias"]


def test_an_engine_without_experimental_mode_cannot_restore_and_says_the_fix():
    plain = replace(READY, docker_experimental=False)
    assert checkpoint_problem(plain) == \
        "Docker Engine's experimental mode is off (restores use `docker start --checkpoint`)"
    docker = prerequisites(plain, "h")[0]
    assert docker.ok and docker.found.endswith("; experimental mode off: snapshots cannot be restored")
    assert docker.fix == ('for checkpoints: add "experimental": true to /etc/docker/daemon.json on the host and '
                          "restart Docker (systemctl restart docker)")
    assert checkpoint_problem(replace(READY, docker_experimental=None)) is None  # not reported: not judged

