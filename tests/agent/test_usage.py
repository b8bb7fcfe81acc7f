"""What a host and its containers use now (beamctl/agent/usage.py): the pure parsers against the shapes the
engine, the kernel and nvidia-smi give, then a real sample from this machine's engine: a container that
spins a core reads as busy, one that sleeps as idle."""

from __future__ import annotations

import subprocess

import pytest

from beamctl.agent import usage
from beamctl.cli.views import container_usage, host_usage


def stats(total: int, system: int, cpus: int = 4, mem: dict | None = None) -> dict:
    return {"cpu_stats": {"cpu_usage": {"total_usage": total}, "system_cpu_usage": system, "online_cpus": cpus},
            "memory_stats": mem or {}}


def test_cpu_is_the_share_of_the_system_between_two_samples_times_the_cores():
    assert usage.cpu_percent(stats(1_000, 10_000), stats(3_000, 14_000)) == 200.0  # two of four cores
    assert usage.cpu_percent(stats(1_000, 10_000), stats(1_000, 10_000)) is None  # no time passed
    assert usage.cpu_percent(stats(1_000, 10_000), {"cpu_stats": {}}) is None
    no_online = {"cpu_stats": {"cpu_usage": {"total_usage": 2_000, "percpu_usage": [1, 1]},
                               "system_cpu_usage": 20_000}}
    assert usage.cpu_percent(stats(1_000, 10_000), no_online) == 20.0


def test_memory_leaves_out_inactive_file_pages_on_cgroup_v1_and_v2():
    v1 = {"usage": 500 << 20, "limit": 2 << 30, "stats": {"total_inactive_file": 100 << 20, "inactive_file": 1}}
    v2 = {"usage": 500 << 20, "limit": 2 << 30, "stats": {"inactive_file": 200 << 20}}
    assert usage.memory({"memory_stats": v1}) == (400 << 20, 2 << 30)
    assert usage.memory({"memory_stats": v2}) == (300 << 20, 2 << 30)
    assert usage.memory({"memory_stats": {"usage": 10, "limit": 99, "stats": {"inactive_file": 50}}}) == (10, 99)
    assert usage.memory({"memory_stats": {}}) is None


def test_the_hosts_cpu_and_memory_from_proc():
    a = usage.proc_cpu("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    b = usage.proc_cpu("cpu  200 0 200 1400 200 0 0 0 0 0\n")
    assert (a, b) == ((200, 1000), (400, 2000))
    assert usage.host_cpu_percent(a, b, 8) == 160.0  # 20% of the time busy, over 8 cores
    assert usage.host_cpu_percent(a, a, 8) is None and usage.proc_cpu("garbage") is None
    text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n"
    assert usage.meminfo(text) == (4_000_000 * 1024, 16_000_000 * 1024)
    assert usage.meminfo("MemTotal: 1 kB\n") is None


def test_gpus_and_their_processes_from_nvidia_smi():
    listed = "0, 45, 30720, 143771\n1, [N/A], 0, 143771\nNo devices were found\n"
    assert usage.gpus(listed) == [{"index": 0, "util_pct": 45.0, "mem_used": 30720 << 20,
                                   "mem_total": 143771 << 20}]
    assert usage.gpu_processes("4242, 20480\n4242, 1024\n77, [N/A]\n") == {4242: 21504 << 20}
    cid = "a" * 64
    assert usage.owner(f"0::/system.slice/docker-{cid}.scope\n", ["b" * 64, cid]) == cid
    assert usage.owner("0::/user.slice\n", [cid]) is None


def test_the_words_for_what_is_used():
    assert container_usage({"cpu_pct": 12.5, "mem_used": 312_000_000, "mem_limit": 2_100_000_000,
                            "gpu_mem": 20_100_000_000}) == "cpu 12.5%, mem 312.0 MB of 2.10 GB, gpu mem 20.10 GB"
    assert container_usage({"cpu_pct": None, "mem_used": None}) == "" and container_usage(None) == ""
    host = {"cpus": 16, "cpu_pct": 140.0, "load1": 1.52, "mem_used": 10_200_000_000, "mem_total": 128_000_000_000,
            "gpus": [{"index": 0, "util_pct": 45.0, "mem_used": 30_100_000_000, "mem_total": 141_000_000_000}]}
    assert host_usage(host) == ("cpu 140% of 16 cores (load 1.52), mem 10.20 GB of 128.00 GB; "
                               "gpu0 45% 30.10 GB of 141.00 GB")
    assert host_usage({}) == "" and host_usage(None) == ""


@pytest.mark.integration
def test_a_real_sample_tells_a_spinning_container_from_a_sleeping_one():
    import docker

    from beamctl.image.base import resolve_base

    client = docker.from_env()
    engine_image = resolve_base(client, "3.11", None, lambda _: None).id  # built once on a new machine
    spin = client.containers.run(engine_image, ["sh", "-c", "while :; do :; done"], detach=True, remove=True)
    rest = client.containers.run(engine_image, ["sleep", "60"], detach=True, remove=True)
    try:
        host, per = usage.sample(client.api, [spin.id, rest.id[:12]])
        assert per[spin.id]["cpu_pct"] > 50, per  # a core, give or take a noisy machine
        assert per[rest.id[:12]]["cpu_pct"] < 20, per
        assert all(0 < p["mem_used"] < p["mem_limit"] for p in per.values())
        assert host["cpus"] >= 1 and host["cpu_pct"] > 0 and 0 < host["mem_used"] < host["mem_total"]
        assert "gpus" not in host or isinstance(host["gpus"], list)
    finally:
        for c in (spin, rest):
            subprocess.run(["docker", "rm", "-f", c.id], capture_output=True)
        client.close()


class CountingEngine:
    """Engine stats whose counters grow by the same amount per call: 25% of one core, 300 MiB."""

    def __init__(self) -> None:
        self.calls = 0

    def stats(self, cid, stream=False, one_shot=True):
        if cid == "gone":
            raise LookupError("no such container")
        self.calls += 1
        n = self.calls
        return {"id": cid, "cpu_stats": {"cpu_usage": {"total_usage": n * 250}, "system_cpu_usage": n * 1000,
                                         "online_cpus": 1},
                "memory_stats": {"usage": 300 << 20, "limit": 1 << 30, "stats": {}}}


def test_the_sampler_answers_from_its_latest_numbers_without_waiting():
    import time as _time

    engine = CountingEngine()
    sampler = usage.Sampler(engine, period_s=0.05)
    first = sampler.get(["c1"])[1]["c1"]  # the first ask samples (twice, WINDOW_S apart)
    assert first == {"cpu_pct": 25.0, "mem_used": 300 << 20, "mem_limit": 1 << 30}
    _time.sleep(0.3)  # the thread took over
    seen = engine.calls
    started = _time.monotonic()
    host, per = sampler.get(["c1"])
    assert _time.monotonic() - started < usage.WINDOW_S / 2 and seen > 2  # no wait; sampled meanwhile
    assert per == {"c1": {"cpu_pct": 25.0, "mem_used": 300 << 20, "mem_limit": 1 << 30}} and host["cpus"] >= 1

    # a container no status asked for before (a new app's): sampled at its first ask, then kept fresh
    per = sampler.get(["c1", "c2", "gone"])[1]
    assert per["c2"] == {"cpu_pct": 25.0, "mem_used": 300 << 20, "mem_limit": 1 << 30} and "gone" not in per
    _time.sleep(0.3)
    started = _time.monotonic()
    per = sampler.get(["c1", "c2", "gone"])[1]  # the gone one is not sampled again at each ask
    assert _time.monotonic() - started < usage.WINDOW_S / 2
    assert set(per) == {"c1", "c2"} and per["c2"]["cpu_pct"] == 25.0
    sampler.close()
    _time.sleep(0.2)
    assert not sampler._thread.is_alive()
