"""The host agent's costs: warm tasks through its endpoint against the runtime directly, cold starts
against their profiles, and the memory of agent and runtime, side by side in one run.

    .venv/bin/python bench/agent.py [--tasks 2000] [--seconds 5] [--threads 8] [--cold 5]
                                    [--write docs/BENCHMARKS.md]

A private agent (a temporary data dir, HTTP on a free loopback port) serves two temporary apps:
bench-noop (handler returns {}, 4 workers, never scaled to zero) and bench-weights (examples/weights
with keep_warm_seconds: 1). Warm latency alternates the two paths call by call; throughput alternates
them in half-length rounds; every client is a keep-alive http.client connection of this process.
Everything started is removed at the end: agent, containers, data dir, the two apps' images (and a
dependencies image that the run built for them).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results import write_section  # bench/results.py (scripts run from bench/)

REPO = Path(__file__).resolve().parents[1]
PY, BEAMCTL = sys.executable, str(Path(sys.executable).parent / "beamctl")
PHASES = ("queue", "image_load", "container_start", "imports", "application_start", "task_run", "other")
MEMORY_TASKS = 10_000
APPS = ("bench-noop", "bench-weights")  # images beamctl/<app>:* belong to this script (removed at the end)
DEPS = "beamctl/deps"  # shared dependencies images: only those this run made are removed
NOOP = {"beam.yaml": "name: bench-noop\nhandler: app:handler\ncpu: 2\nmemory: 256Mi\nworkers: 4\n"
                     "keep_warm_seconds: 86400\n", "app.py": "def handler(**inputs):\n    return {}\n"}
BARE = "import time; time.sleep(3600)"
YES = {True: "yes", False: "no"}
BEGIN, END = "<!-- bench/agent.py: begin -->", "<!-- bench/agent.py: end -->"


def sh(*argv: str, env: dict | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def inspect(container: str, field: str) -> str:
    return sh("docker", "inspect", "-f", "{{" + field + "}}", container).strip()


def address(container: str) -> str:
    """The container's IP: its own, or its network sandbox's (NetworkMode container:ID, agent/sandboxes.py)."""
    mode = inspect(container, ".HostConfig.NetworkMode")
    return inspect(mode.split(":", 1)[1] if mode.startswith("container:") else container,
                   ".NetworkSettings.IPAddress")


def images(repo: str) -> dict[str, str]:
    """{repo:tag: short image id} of one repository."""
    lines = sh("docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", repo).splitlines()
    return dict(line.split() for line in lines if line.strip())


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


class Bench:
    """A private agent and what it runs; cleanup() removes all of it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="agent-bench."))
        self.data = self.root / "agent"
        self.env = dict(os.environ, BEAMCTL_AGENT_DIR=str(self.data))
        self.containers: list[str] = []  # started here, outside the agent (the bare baseline)
        self.agent: subprocess.Popen | None = None
        self.agent_id = self.image = ""
        self.deps_before = images(DEPS)

    def start_agent(self) -> None:
        self.data.mkdir()
        log = (self.root / "agent.log").open("ab")
        self.agent = subprocess.Popen([PY, "-m", "beamctl.agent", "--data-dir", str(self.data), "--http",
                                       "127.0.0.1:0"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                      start_new_session=True, cwd="/")
        deadline = time.monotonic() + 30
        while not (self.data / "agent.json").exists():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the agent did not start: {(self.root / 'agent.log').read_text()[-800:]}")
            time.sleep(0.05)
        self.agent_id = (self.data / "agent-id").read_text().strip()

    def deploy(self, name: str, files: dict[str, str]) -> dict:
        folder = self.root / name
        folder.mkdir()
        for fname, text in files.items():
            (folder / fname).write_text(text)
        result = json.loads(sh(BEAMCTL, "deploy", "-f", str(folder), "--json", env=self.env))
        self.image = result["image"]
        if result["hosts"][0]["status"] != "ready":
            raise SystemExit(f"deploy of {name} failed: {result['hosts'][0]['reason']}")
        app = json.loads(sh(BEAMCTL, "status", name, "--json", env=self.env))["apps"][0]
        host, _, port = app["endpoint"].removeprefix("http://").partition("/")[0].rpartition(":")
        return {"host": host, "port": int(port), "path": f"/apps/{name}", "token": app["token"]}

    def app_containers(self, name: str) -> list[str]:
        return sh("docker", "ps", "-aq", "--no-trunc", "--filter", f"label=dev.beamctl.agent={self.agent_id}",
                  "--filter", f"label=dev.beamctl.app={name}").split()

    def cleanup(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(10)
        ours = sh("docker", "ps", "-aq", "--filter", f"label=dev.beamctl.agent={self.agent_id}").split() \
            if self.agent_id else []
        if ours or self.containers:
            subprocess.run(["docker", "rm", "-f", *ours, *self.containers], capture_output=True)
        # every tag of this script's apps (a failed deploy's too), then the dependencies images that
        # appeared during the run and that those were built on
        apps = [ref for app in APPS for ref in images(f"beamctl/{app}")]
        layers = {i for ref in apps for i in sh("docker", "history", "-q", ref).split()}
        deps = [ref for ref, i in images(DEPS).items() if ref not in self.deps_before and i in layers]
        if apps or deps:
            subprocess.run(["docker", "rmi", *apps, *deps], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


class Client:
    """One keep-alive connection: the agent's endpoint (with the token) or the runtime's /tasks."""

    def __init__(self, host: str, port: int, path: str, token: str | None = None, key: str | None = None) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=600)
        self.path, self.token, self.n = path, token, 0
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
                        **({"X-Beamctl-Key": key} if key else {})}  # the runtime answers only the agent's key

    def call(self, inputs: dict | None = None) -> dict:
        self.n += 1
        doc = (inputs or {}) if self.token else {"task_id": f"direct-{id(self)}-{self.n}", "inputs": inputs or {}}
        self.conn.request("POST", self.path, body=json.dumps(doc).encode(), headers=self.headers)
        response = self.conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200 or answer.get("status") != "succeeded":
            raise RuntimeError(f"{self.path}: {response.status} {answer}")
        return answer


def in_threads(clients: list[Client], fn) -> None:
    """fn(client) in one thread per client, released together; stops on the first failure."""
    barrier, errors = threading.Barrier(len(clients)), []

    def run(c: Client) -> None:
        barrier.wait()
        try:
            fn(c)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"a client failed: {errors[0]}")


def hammer(make, threads: int, seconds: float) -> tuple[int, float]:
    """(tasks done, seconds) by `threads` keep-alive clients calling in a loop for `seconds`."""
    clients = [make() for _ in range(threads)]
    for c in clients:
        c.call()  # connected outside the timed window
    start = time.perf_counter()

    def loop(c: Client) -> None:
        while time.perf_counter() < start + seconds:
            c.call()

    in_threads(clients, loop)
    return sum(c.n - 1 for c in clients), time.perf_counter() - start


def runtime_key(b: Bench, app: str) -> str | None:
    """The key the app's serving runtime wants from the agent (its newest version's, in the agent's folder)."""
    files = sorted((b.data / "secrets").glob(f"{app}-v*.json"), key=lambda p: int(p.stem.rsplit("-v", 1)[1]))
    return json.loads(files[-1].read_text()).get("BEAMCTL_RUNTIME_KEY") if files else None


def pct(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50": q[49] * 1000, "p90": q[89] * 1000, "p99": q[98] * 1000}


def warm(b: Bench, args: argparse.Namespace, res: dict) -> None:
    ep = b.deploy("bench-noop", NOOP)
    (cid,) = b.app_containers("bench-noop")
    ip, runtime_pid, agent_pid = address(cid), int(inspect(cid, ".State.Pid")), \
        b.agent.pid
    via_agent = lambda: Client(ep["host"], ep["port"], ep["path"], ep["token"])  # noqa: E731
    key = runtime_key(b, "bench-noop")
    direct = lambda: Client(ip, 8000, "/tasks", key=key)  # noqa: E731
    snap = lambda: {"agent": cpu_s(agent_pid), "runtime": cpu_s(runtime_pid), "client": sum(os.times()[:2])}  # noqa
    res["load"] = [os.getloadavg()[0]]
    # memory at rest: the agent after deploy; the runtime against a bare python3 in the same image
    b.containers.append(sh("docker", "run", "-d", "--rm", "--entrypoint", "/usr/bin/python3", b.image, "-c", BARE)
                        .strip())
    time.sleep(2)
    pids = {"agent": agent_pid, "runtime": runtime_pid, "bare": int(inspect(b.containers[-1], ".State.Pid"))}
    mem = res["memory"] = {k: [rss_mib(pid)] for k, pid in pids.items()}
    a, d = via_agent(), direct()
    for _ in range(args.warmup):
        a.call(), d.call()
    lat: dict[str, list[float]] = {"agent": [], "direct": []}
    before = snap()
    for i in range(args.tasks):  # alternate which path goes first, so drifts hit both alike
        for path, c in ((("agent", a), ("direct", d)) if i % 2 else (("direct", d), ("agent", a))):
            start = time.perf_counter()
            c.call()
            lat[path].append(time.perf_counter() - start)
    res["latency"] = {k: pct(v) for k, v in lat.items()}
    res["latency_cpu_ms"] = {k: (v - before[k]) * 1000 / (args.tasks * (1 if k == "agent" else 2))
                             for k, v in snap().items()}
    done, spent, cpu = {"agent": 0, "direct": 0}, {"agent": 0.0, "direct": 0.0}, {"agent": {}, "direct": {}}
    for _ in range(2):  # two rounds, each path half the time in each
        for path, make in (("agent", via_agent), ("direct", direct)):
            t0, (n, secs) = snap(), hammer(make, args.threads, args.seconds / 2)
            done[path], spent[path] = done[path] + n, spent[path] + secs
            cpu[path] = {k: cpu[path].get(k, 0) + v - t0[k] for k, v in snap().items()}
    res["throughput"] = {p: done[p] / spent[p] for p in done}
    res["throughput_cpu_ms"] = {p: {k: v * 1000 / done[p] for k, v in cpu[p].items()} for p in done}
    # memory after MEMORY_TASKS more warm tasks through the agent, read half-way too (a trend, not a point)
    clients, per = [via_agent() for _ in range(args.threads)], MEMORY_TASKS // 2 // args.threads
    for _ in range(2):
        in_threads(clients, lambda c: [c.call() for _ in range(per)])
        time.sleep(1)
        for k, pid in pids.items():
            mem[k].append(rss_mib(pid))
    conn = http.client.HTTPConnection(ip, 8000, timeout=10)
    conn.request("GET", "/health", headers={"X-Beamctl-Key": key} if key else {})
    n = per * 2 * args.threads
    res["served"] = {"runtime": json.loads(conn.getresponse().read())["served"], "memory_tasks": n,
                     "agent": n + done["agent"] + args.threads * 2 + args.tasks + args.warmup}


def cold(b: Bench, args: argparse.Namespace, res: dict) -> None:
    src = REPO / "examples" / "weights"
    yaml_text = (src / "beam.yaml").read_text().replace("name: weights", "name: bench-weights")
    yaml_text = yaml_text.replace("keep_warm_seconds: 30", "keep_warm_seconds: 1")
    yaml_text = yaml_text.replace("checkpoint_enabled: true", "checkpoint_enabled: false")  # cold boots here;
    # restores: bench/coldstart.py
    t0 = time.perf_counter()
    ep = b.deploy("bench-weights", {"beam.yaml": yaml_text, "app.py": (src / "app.py").read_text()})
    res["weights_deploy_s"] = time.perf_counter() - t0
    client, rows = Client(ep["host"], ep["port"], ep["path"], ep["token"]), []
    for i in range(args.cold):
        deadline = time.monotonic() + 60
        while b.app_containers("bench-weights"):  # scaled to zero: the container is gone, not only idle
            if time.monotonic() > deadline:
                raise SystemExit("bench-weights did not scale to zero within 60 s")
            time.sleep(0.2)
        time.sleep(0.5)
        start = time.perf_counter()
        answer = client.call({"seed": i})
        watch = time.perf_counter() - start
        prof = json.loads(sh(BEAMCTL, "profile", answer["task_id"], "--json", env=b.env))
        if prof["start"] != "cold":
            raise SystemExit(f"call {i + 1} was {prof['start']}, not cold")
        rows.append({"watch": watch, "total": prof["total"], **prof["phases"]})
    res["cold"] = rows
    res["load"].append(os.getloadavg()[0])


def report(res: dict, argv: list[str], args: argparse.Namespace) -> str:
    lat, thr, mem, served = res["latency"], res["throughput"], res["memory"], res["served"]
    engine = sh("docker", "version", "--format", "{{.Server.Version}}").strip()
    over = lat["agent"]["p50"] - lat["direct"]["p50"]
    out = [BEGIN, "", "Command: `" + " ".join([".venv/bin/python bench/agent.py", *argv]) + "`",
           f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, Docker engine "
           f"{engine}, {time.strftime('%Y-%m-%d')}. Agent, containers and this client share the CPUs, and the "
           f"machine is shared: 1-minute load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at "
           "the end.", "",
           f"Warm tasks (no-op handler, 4 workers): {args.tasks} sequential calls per path, the paths alternating; "
           f"throughput: {args.threads} client threads, {args.seconds:g} s per path in two alternating rounds.", "",
           "| measure | via agent | runtime direct | agent - direct | target | met |", "|---|---|---|---|---|---|"]
    for q in ("p50", "p90", "p99"):
        target, met = ("<= +2 ms", YES[over <= 2]) if q == "p50" else ("", "")
        out.append(f"| latency {q}, ms | {lat['agent'][q]:.2f} | {lat['direct'][q]:.2f} | "
                   f"{lat['agent'][q] - lat['direct'][q]:+.2f} | {target} | {met} |")
    out.append(f"| throughput, tasks/s | {thr['agent']:.0f} | {thr['direct']:.0f} | "
               f"x{thr['agent'] / thr['direct']:.2f} | >= 500 via agent | {YES[thr['agent'] >= 500]} |")
    tc, lc = res["throughput_cpu_ms"], res["latency_cpu_ms"]
    for who in ("agent", "runtime", "client"):
        out.append(f"| CPU ms per task at throughput: {who} | {tc['agent'][who]:.2f} | {tc['direct'][who]:.2f} | "
                   f"{tc['agent'][who] - tc['direct'][who]:+.2f} |  |  |")
    out += ["", f"CPU per sequential call, ms: agent {lc['agent']:.2f} (per call through it); runtime "
            f"{lc['runtime']:.2f} and this client {lc['client']:.2f} (per call, both paths together).", ""]
    rows = res["cold"]
    ratios = [r["total"] / r["watch"] for r in rows]
    worst = max(abs(x - 1) for x in ratios)
    out += [f"Cold starts of examples/weights (~1 GiB from a volume; keep_warm_seconds: 1): {len(rows)} calls, "
            "each once the app had scaled to zero, timed around the HTTP call. The deploy "
            f"({res['weights_deploy_s']:.1f} s) wrote the weights file, so it is in the page cache for every call: "
            "these are warm-cache cold starts.", "",
            "| call | stopwatch s | profile total s | total / stopwatch | " + " | ".join(PHASES) + " |",
            "|---" * (4 + len(PHASES)) + "|"]
    med = {k: statistics.median(r[k] for r in rows) for k in ("watch", "total", *PHASES)}
    for i, r in [*enumerate(rows, 1), ("median", {**med, "ratio": statistics.median(ratios)})]:
        out.append(f"| {i} | {r['watch']:.3f} | {r['total']:.3f} | {r.get('ratio', r['total'] / r['watch']):.3f} | "
                   + " | ".join(f"{r[p]:.3f}" for p in PHASES) + " |")
    out += ["", "| target | measured | met |", "|---|---|---|",
            f"| profile total within 5% of the stopwatch, every call | worst {worst * 100:.1f}% off | "
            f"{YES[worst <= 0.05]} |", "",
            f"Memory (VmRSS; runtime: the container's main process; bare: `python3 -c \"{BARE}\"` in the same "
            f"image): after deploy, then after {served['memory_tasks']:,} more warm tasks through the agent "
            f"({served['agent']:,} through it in all; the runtime served {served['runtime']:,}).", "",
            f"| process | after deploy MiB | +{served['memory_tasks'] // 2:,} tasks | +{served['memory_tasks']:,} "
            "tasks | growth MiB (2nd half) | target | met |", "|---" * 7 + "|"]
    mem["runtime - bare"] = [r - b for r, b in zip(mem["runtime"], mem["bare"])]
    targets = {"agent": ("<= 60 MiB after deploy, growth <= 5 MiB", lambda v: v[0] <= 60 and v[2] - v[0] <= 5),
               "runtime": ("growth <= 5 MiB", lambda v: v[2] - v[0] <= 5), "bare": ("", None),
               "runtime - bare": ("<= 25 MiB", lambda v: max(v) <= 25)}
    for k, (target, ok) in targets.items():
        v = mem[k]
        out.append(f"| {'bare python3' if k == 'bare' else k} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.1f} | "
                   f"{v[2] - v[0]:+.1f} ({v[2] - v[1]:+.1f}) | {target} | {YES[ok(v)] if ok else ''} |")
    return "\n".join(out + ["", END])


def write(path: Path, section: str) -> None:
    write_section(path, section, BEGIN, END, "Agent: warm overhead, cold starts, memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2000, help="sequential warm calls per path")
    ap.add_argument("--warmup", type=int, default=300, help="untimed warm calls per path first")
    ap.add_argument("--threads", type=int, default=8, help="client threads for throughput")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput time per path")
    ap.add_argument("--cold", type=int, default=5, help="cold calls of examples/weights (3 to 5)")
    ap.add_argument("--write", type=Path, help="update this Markdown file's agent section")
    args = ap.parse_args()
    b, res = Bench(), {}
    try:
        b.start_agent()
        warm(b, args, res)
        cold(b, args, res)
    finally:
        b.cleanup()
    section = report(res, sys.argv[1:], args)
    print(section)
    if args.write:
        write(args.write, section)


if __name__ == "__main__":
    main()
