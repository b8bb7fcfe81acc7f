"""A burst against an app with the autoscaler, restored scale-out beside cold scale-out, in one run (issue 17).

    .venv/bin/python bench/autoscale.py [--tasks 32] [--max 4] [--task-s 1.0] [--write docs/BENCHMARKS.md]

The agent of this checkout runs in this process (a temporary data dir; the real Docker Engine, runc and
CRIU). One app (its on_start fills 64 MiB and waits 2 s, a stand-in for loading a model), deployed twice:
with checkpoint_enabled (scale-out restores its snapshot) and without (scale-out boots cold). Each burst
starts from zero containers: `--tasks` tasks of `--task-s` seconds (a sleep) at once, autoscaler
{max_containers: --max, tasks_per_container: 1}. Reported per burst: the whole burst, the first result,
each task's time from its call to its result (p50, p99), and when each container became READY after the
burst began. Then one restored start alone (one task from zero): the scale-out latency target compares
each scaled-out container's READY against it.

Targets (issue 17): the restored burst within (tasks / max x task-s + one restored start) x 1.2; each
scale-out container READY within 1.2x a single restored start.

A restore is CPU work (CRIU copies the process's memory back, runc, containerd, dockerd): the CPU seconds of
a single restored start are measured (the host's busy time over it, /proc/stat), and the latency is measured
twice: with --max restores at once and with as many as the host has cores (--tasks scaled to the same waves),
so the report says what the cores allow beside what the design adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results import write_section  # bench/results.py (scripts run from bench/)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CODE = """\
import os, time

STATE = {}


def setup():
    STATE["weights"] = bytearray(os.urandom(64 << 20))  # a model's load, in miniature
    time.sleep(2.0)


def handler(n, seconds):
    time.sleep(seconds)
    return {"n": n, "weights": len(STATE["weights"])}
"""


def yaml(name: str, checkpoint: bool, most: int) -> str:
    return (f"name: {name}\nhandler: app:handler\non_start: app:setup\ncheckpoint_enabled: {str(checkpoint).lower()}\n"
            f"cpu: 0.25\nmemory: 512Mi\nkeep_warm_seconds: 600\n"
            f"autoscaler:\n  max_containers: {most}\n  tasks_per_container: 1\n")


def scale_to_zero(agent, app: str) -> None:
    pool = agent.pools[app]
    deadline = time.monotonic() + 60
    while pool.live and time.monotonic() < deadline:
        agent.reap(time.monotonic() + 1e6)
        time.sleep(0.05)
    if pool.live:
        raise SystemExit("the app did not scale to zero within 60 s")
    time.sleep(1.0)  # the engine tidies up after the containers went


def burst(agent, app: str, tasks: int, task_s: float) -> dict:
    scale_to_zero(agent, app)
    pool = agent.pools[app]
    walls: dict[int, float] = {}
    records: list[dict] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(n: int) -> None:
        task = agent.call(app, {"n": n, "seconds": task_s})
        with lock:
            walls[n] = time.monotonic() - t0
            records.append(task)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(tasks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    total = time.monotonic() - t0
    bad = [r for r in records if r["status"] != "succeeded"]
    if bad or sorted(r["result"]["n"] for r in records) != list(range(tasks)):
        raise SystemExit(f"{len(bad)} tasks failed or ran twice: {bad[:2]}")
    with pool.cond:
        ready = sorted(c.timeline.ready_seen - t0 for c in pool.live if c.timeline.ready_seen)
    kinds = [r["start"] for r in records]
    per_task = sorted(r["total"] for r in records)
    return {"total": total, "first": min(walls.values()), "p50": statistics.median(per_task),
            "p99": per_task[min(len(per_task) - 1, int(len(per_task) * 0.99))], "ready": ready,
            "containers": len({r["container"] for r in records}),
            "kinds": {k: kinds.count(k) for k in sorted(set(kinds))}}


def busy_cpu_s() -> float:
    """CPU seconds the host's cores have been busy (not idle, not waiting on I/O) since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def single_restored(agent, app: str, rounds: int = 3) -> tuple[float, float]:
    """(seconds from a call at zero containers until its container is READY (restored), the CPU seconds the
    host was busy over that call, a task of no time), medians."""
    out, cpu = [], []
    for _ in range(rounds):
        scale_to_zero(agent, app)
        c0, t0 = busy_cpu_s(), time.monotonic()
        task = agent.call(app, {"n": 0, "seconds": 0})
        c1 = busy_cpu_s()
        if task["start"] != "restored":
            raise SystemExit(f"a start from zero was {task['start']}, not restored")
        (live,) = agent.pools[app].live
        out.append(live.timeline.ready_seen - t0)
        cpu.append(c1 - c0)
    return statistics.median(out), statistics.median(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--max", type=int, default=4)
    ap.add_argument("--task-s", type=float, default=1.0)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("criu") is None:
        raise SystemExit("needs root and CRIU (./scripts/setup.sh)")

    import docker

    from beamctl.agent.containers import DockerContainers
    from beamctl.agent.resident import budget_from_env
    from beamctl.agent.service import Agent
    from beamctl.config import load
    from beamctl.protocol.spec import spec_from_config

    work = Path(tempfile.mkdtemp(prefix="beamctl-autoscale-"))
    data = work / "agent"
    agent = Agent(data, DockerContainers(docker.from_env(timeout=600)), gpus=[], snapshot_ram=budget_from_env())
    cores = os.cpu_count() or 1
    apps = {"restored": "bench-scale-snap", "cold": "bench-scale-cold", "per-core": "bench-scale-core"}
    most = {"restored": args.max, "cold": args.max, "per-core": cores}
    results: dict[str, dict] = {}
    try:
        for kind, app in apps.items():
            folder = work / app
            folder.mkdir()
            (folder / "beam.yaml").write_text(yaml(app, kind != "cold", most[kind]))
            (folder / "app.py").write_text(CODE)
            built = subprocess.run([sys.executable, "-m", "beamctl", "build", "-f", str(folder / "beam.yaml"),
                                    "--json"], capture_output=True, text=True)
            if built.returncode != 0:
                raise SystemExit(built.stderr[-800:])
            config, _ = load(folder / "beam.yaml")
            spec = spec_from_config(config, json.loads(built.stdout)["image"])
            deployed = agent.deploy(spec.to_json(), {}, health_timeout=600)
            if deployed["status"] != "ready":
                raise SystemExit(f"deploy of {app} failed: {deployed['reason']}")
        single, restore_cpu = single_restored(agent, apps["restored"])
        core_single, _ = single_restored(agent, apps["per-core"])
        core_tasks = -(-args.tasks // args.max) * cores  # the same waves
        for kind in ("restored", "cold", "per-core", "restored", "cold", "per-core"):  # twice each; the second counts
            for other in apps.values():  # the host's room is the burst's alone (each app reserves CPUs)
                scale_to_zero(agent, other)
            results[kind] = burst(agent, apps[kind], core_tasks if kind == "per-core" else args.tasks, args.task_s)
            print(f"{kind}: {results[kind]}", file=sys.stderr)
    finally:
        for app in apps.values():
            for live in agent.pools[app].drain() if app in agent.pools else []:
                agent.state.retire(app, live)
            agent.containers.forget(app)
        shutil.rmtree(work, ignore_errors=True)

    waves = -(-args.tasks // args.max)
    target = (waves * args.task_s + single) * 1.2
    snap, cold, per_core = results["restored"], results["cold"], results["per-core"]

    def worst(r: dict) -> float:  # the first container is the burst's start from zero; the rest scaled out
        return max(r["ready"][1:]) if len(r["ready"]) > 1 else float("nan")

    def floor(n: int) -> float:  # n restores at once on the cores, each its CPU seconds: the cores' bound
        return max(single, n * restore_cpu / cores)

    def latency(r: dict, n: int, one: float) -> str:
        w = worst(r)
        return (f"| {n} | {one:.2f} s | {w:.2f} s | **{w / one:.2f}x** ({'met' if w <= 1.2 * one else 'NOT met'}) | "
                f"{floor(n) / single:.2f}x |")
    begin, end = "<!-- bench/autoscale.py: begin -->", "<!-- bench/autoscale.py: end -->"

    def row(name: str, r: dict) -> str:
        ready = ", ".join(f"{t:.2f}" for t in r["ready"])
        return (f"| {name} | {r['total']:.2f} s | {r['first']:.2f} s | {r['p50']:.2f} s | {r['p99']:.2f} s | "
                f"{r['containers']} | {ready} | {r['kinds']} |")

    lines = [
        begin,
        f"Command: `.venv/bin/python bench/autoscale.py --tasks {args.tasks} --max {args.max} --task-s {args.task_s:g}"
        f"{' --write ' + str(args.write) if args.write else ''}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, kernel {platform.release()}).",
        "",
        f"{args.tasks} tasks of {args.task_s:g} s at once from zero containers, max_containers {args.max}, "
        "tasks_per_container 1; on_start: 64 MiB and 2 s. Each burst run twice, alternating; the second of each shown.",
        "",
        "| burst | all done | first result | p50 task | p99 task | containers | READY after the burst began (s) | starts |",
        "|---|---|---|---|---|---|---|---|",
        row("restored scale-out", snap),
        row("cold scale-out", cold),
        "",
        f"- a single restored start from zero: {single:.2f} s to READY (median of 3).",
        f"- **restored burst {snap['total']:.2f} s against the target {target:.2f} s** ((⌈{args.tasks}/{args.max}⌉ x "
        f"{args.task_s:g} s + {single:.2f} s) x 1.2): {'met' if snap['total'] <= target else 'NOT met'}; the cold "
        f"burst took {cold['total']:.2f} s (**{cold['total'] / snap['total']:.2f}x** the restored one).",
        "",
        f"Scale-out latency (target: each scaled-out container READY within 1.2x a single restored start). A restored "
        f"start took {restore_cpu:.2f} CPU-seconds of the host's (median of 3; {single:.2f} s wall), so n restores "
        f"at once on {cores} cores need at least n x {restore_cpu:.2f} / {cores} s: the last column. The second "
        f"row is the same burst with max_containers {cores} ({core_tasks} tasks).",
        "",
        "| restores at once | a single restored start | last scaled-out READY after the burst began | ratio | "
        "the cores' bound |",
        "|---|---|---|---|---|",
        latency(snap, args.max, single),
        latency(per_core, cores, core_single),
        end,
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, section, begin, end, "Autoscaling: a burst, restored against cold scale-out "
                      "(bench/autoscale.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
