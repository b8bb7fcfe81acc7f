"""Cold boot against restored start of examples/weights, side by side in one run (issue 6).

    .venv/bin/python bench/coldstart.py [--example weights|embeddings] [--rounds 5] [--captures 3]
                                        [--write docs/BENCHMARKS.md]

The agent of this checkout runs in this process (a temporary data dir; the real Docker Engine, runc and
CRIU), so every start below is of the same version of the same image with the same create arguments.
Each round scales the app to zero, then makes one cold boot (the pool told not to restore: a start
without a usable snapshot) and one restored start, in alternating order, each timed from the call
until its result. Results must be identical; on_start must have run only in the cold boots.

Raw CRIU, for the capture and restore costs: the app's own process without a container (the image's
files exported and chrooted into, the container's environment, the volumes bind-mounted), paused after
on_start like the agent's; `criu dump --leave-running` and `criu restore --restore-detached` + the
runtime's release run by hand, against beamctl's capture (runc checkpoint, key, rename) and restore (a
new container, links, docker start --checkpoint, the release) of the app's container. The page cache is
warm for both sides unless --drop-caches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section  # bench/results.py (scripts run from bench/)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
INPUTS = {"weights": {"seed": 1}, "embeddings": {"texts": ["a restored start", "a cold boot"]}}


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def scale_to_zero(agent, app: str) -> None:
    pool = agent.pools[app]
    agent.reap(time.monotonic() + 1e6)
    deadline = time.monotonic() + 60
    while pool.live and time.monotonic() < deadline:
        time.sleep(0.05)
        agent.reap(time.monotonic() + 1e6)
    if pool.live:
        raise SystemExit("the app did not scale to zero within 60 s")


def drop_caches() -> None:
    """The page cache emptied (weights file, snapshot, image layers alike): a host idle for hours."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


SETTLE_S = 1.0  # after a container of 1 GB goes, the engine and the kernel tidy up for a while


def start(agent, app: str, restore: bool, inputs: dict, cold_cache: bool = False) -> dict:
    """One start from zero: {"wall": seconds from the call to its result, "task": the task record}."""
    scale_to_zero(agent, app)
    if cold_cache:
        drop_caches()
    time.sleep(SETTLE_S)  # both kinds alike: each start begins on a quiet machine
    pool = agent.pools[app]
    saved = pool.snapshots
    if not restore:
        pool.snapshots = None  # no restore, and no capture: a cold boot as without a snapshot
    try:
        t0 = time.perf_counter()
        task = agent.call(app, inputs)
        wall = time.perf_counter() - t0
    finally:
        pool.snapshots = saved
    if task["status"] != "succeeded":
        raise SystemExit(f"task failed: {task['error']}")
    return {"wall": wall, "task": task}


def raw_criu(image: str, env: dict[str, str], binds: dict[str, str], work: Path, rounds: int, inputs: dict,
             cold_cache: bool = False) -> dict[str, list]:
    """The app's own process without a container: the image's files (exported, chroot), the container's
    environment and volumes (bind mounts), paused after on_start; then `criu dump --leave-running` and,
    after the original is gone, `criu restore --restore-detached` by hand, released, and one task run."""
    import ctypes
    import http.client
    import socket

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the restored process is ours to reap
    rootfs = work / "rootfs"
    rootfs.mkdir()
    cid = sh("docker", "create", image).strip()
    try:
        subprocess.run(f"docker export {cid} | tar -x -C {rootfs}", shell=True, check=True)
    finally:
        sh("docker", "rm", cid)
    config = json.loads(sh("docker", "inspect", image))[0]["Config"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    full_env = {**dict(e.split("=", 1) for e in config["Env"]), **env, "BEAMCTL_PORT": str(port)}
    argv = ["chroot", str(rootfs), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in full_env.items()),
            *config["Entrypoint"], "serve"]

    secrets = binds.get("/run/beamctl/secrets.json")  # the runtime answers only the agent's key
    key = json.loads(Path(secrets).read_text()).get("BEAMCTL_RUNTIME_KEY") if secrets else None

    def ask(method: str, path: str, body: dict | None = None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:  # a new connection each time, closed: CRIU refuses a process with one open
            conn.request(method, path, json.dumps(body) if body is not None else None,
                         {"Content-Type": "application/json", **({"X-Beamctl-Key": key} if key else {})})
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    out: dict[str, list] = {"dump": [], "restore": [], "size": [], "results": []}
    mounted = []
    try:
        for inside, outside in binds.items():
            target = rootfs / inside.lstrip("/")
            if Path(outside).is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:  # a file (the version's secrets): the mount point is a file too
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            sh("mount", "--bind", outside, str(target))
            mounted.append(target)
        for i in range(rounds):
            images = work / f"raw-{i}"
            images.mkdir(mode=0o700)
            log = open(work / f"raw-{i}.log", "w")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + 300
            while True:
                try:
                    if ask("GET", "/health")["state"] == "CHECKPOINT":
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the raw process did not pause: {(work / f'raw-{i}.log').read_text()[-800:]}")
                time.sleep(0.05)
            time.sleep(0.2)  # the server's side of our last connection closes
            t0 = time.perf_counter()
            sh("criu", "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log", "--leave-running")
            out["dump"].append(time.perf_counter() - t0)
            out["size"].append(sum(p.stat().st_size for p in images.iterdir() if p.suffix == ".img"))
            proc.kill()
            proc.wait()
            pidfile = images / "restored.pid"
            if cold_cache:
                drop_caches()
            t0 = time.perf_counter()
            sh("criu", "restore", "-D", str(images), "-o", "restore.log", "--restore-detached",
               "--pidfile", str(pidfile))
            ask("POST", "/checkpoint/release", {"restored": True})  # READY: counted, as beamctl's is
            out["restore"].append(time.perf_counter() - t0)
            restored = int(pidfile.read_text())
            out["results"].append(ask("POST", "/tasks", {"task_id": f"raw-{i}", "inputs": inputs}).get("result"))
            os.kill(restored, signal.SIGKILL)
            os.waitpid(restored, 0)
            shutil.rmtree(images)
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], capture_output=True)
        if not any(os.path.ismount(t) for t in mounted):
            shutil.rmtree(rootfs, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--example", choices=sorted(INPUTS), default="weights")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--captures", type=int, default=3)
    ap.add_argument("--drop-caches", action="store_true",
                    help="empty the page cache before every start (both kinds): disk reads included")
    ap.add_argument("--snapshot-ram", type=int, default=None, metavar="BYTES",
                    help="the agent's budget for snapshots held in memory (default: as the agent, "
                         "BEAMCTL_SNAPSHOT_RAM or a quarter of RAM; 0: none held)")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("criu") is None:
        raise SystemExit("needs root and CRIU (./scripts/setup.sh)")

    import docker

    from beamctl.agent.containers import DockerContainers
    from beamctl.agent.resident import budget_from_env
    from beamctl.agent.service import Agent
    from beamctl.protocol.spec import spec_from_config
    from beamctl.config import load

    example = REPO / "examples" / args.example
    inputs = INPUTS[args.example]
    ram = budget_from_env() if args.snapshot_ram is None else args.snapshot_ram
    tag = args.example + (" drop-caches" if args.drop_caches else "") + (" not-held" if ram == 0 else "")
    begin, end = f"<!-- bench/coldstart.py {tag}: begin -->", f"<!-- bench/coldstart.py {tag}: end -->"
    image = json.loads(sh(sys.executable, "-m", "beamctl", "build", "-f", str(example), "--json"))["image"]
    config, _ = load(example / "beam.yaml")
    spec = spec_from_config(config, image)
    data = Path(tempfile.mkdtemp(prefix="beamctl-coldstart-"))
    agent = Agent(data, DockerContainers(docker.from_env(timeout=600)), gpus=[], snapshot_ram=ram)
    app = spec.app
    try:
        t0 = time.perf_counter()
        deployed = agent.deploy(spec.to_json(), {}, health_timeout=900)
        if deployed["status"] != "ready":
            raise SystemExit(f"deploy failed: {deployed['reason']}")
        version = deployed["version"]
        print(f"deployed {image} v{version} in {time.perf_counter() - t0:.1f} s (weights made on the volume)",
              file=sys.stderr)

        captures, capture_phase = [], []
        for _ in range(args.captures):  # a fresh capture each: the snapshot goes, the next cold boot captures
            agent.snapshots.delete(app, version)
            got = start(agent, app, True, inputs)
            snap = agent.store.snapshot(app, version)
            if snap["state"] != "ready":
                raise SystemExit(f"capture failed: {snap['reason']}")
            captures.append(snap["capture_s"])
            capture_phase.append(got["task"]["phases"].get("checkpoint_capture", 0.0))
        size = agent.store.snapshot(app, version)["size_bytes"]
        deadline = time.monotonic() + 120  # the agent locks a new snapshot in memory in the background
        while ram and not agent.snapshots.resident.held(app, version) and time.monotonic() < deadline:
            time.sleep(0.2)
        held = agent.snapshots.resident.held(app, version)
        print(f"snapshot {size} bytes, held in memory: {held}", file=sys.stderr)

        runs: dict[str, list[dict]] = {"cold": [], "restored": []}
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for restore in order:
                got = start(agent, app, restore, inputs, args.drop_caches)
                kind = got["task"]["start"]
                if kind != ("restored" if restore else "cold"):
                    raise SystemExit(f"asked for a {'restored' if restore else 'cold'} start, got {kind}")
                runs[kind].append(got)
                print(f"round {r + 1}: {kind:8} {got['wall']:.3f} s", file=sys.stderr)
        results = {json.dumps(g["task"]["result"], sort_keys=True) for k in runs for g in runs[k]}
        logs = "\n".join(line["text"] if isinstance(line, dict) else str(line)
                         for line in agent.logs(app, tail=100000))
        on_start_runs = logs.count("on_start complete")
        restored_lines = logs.count("restored from a checkpoint")
        scale_to_zero(agent, app)
        create = agent.state.create_args(app, version)
        binds = {bind["bind"]: outside for outside, bind in create["volumes"].items()}
        raw = raw_criu(image, create["environment"], binds, data, max(args.captures, args.rounds), inputs,
                       args.drop_caches)
    finally:
        for live in agent.pools.get(app).drain() if app in agent.pools else []:
            agent.state.retire(app, live)
        agent.containers.forget(app)  # its network sandboxes
        shutil.rmtree(data, ignore_errors=True)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    cold = med([g["wall"] for g in runs["cold"]])
    fast = med([g["wall"] for g in runs["restored"]])
    restore_phase = med([g["task"]["phases"]["checkpoint_restore"] for g in runs["restored"]])
    app_start = med([g["task"]["phases"]["application_start"] for g in runs["cold"]])
    imports = med([g["task"]["phases"]["imports"] for g in runs["cold"]])
    boot = med([g["task"]["phases"]["container_start"] for g in runs["cold"]])
    same = len(results) == 1
    raw_same = {json.dumps(r, sort_keys=True) for r in raw["results"]} == results
    expected_on_start = 1 + args.captures + args.rounds  # deploy, capture boots, the cold boots
    lines = [
        begin,
        f"Command: `.venv/bin/python bench/coldstart.py --example {args.example} --rounds {args.rounds} --captures {args.captures}"
        f"{' --drop-caches' if args.drop_caches else ''}"
        f"{' --snapshot-ram ' + str(args.snapshot_ram) if args.snapshot_ram is not None else ''}"
        f"{' --write ' + str(args.write) if args.write else ''}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, kernel {platform.release()}, CRIU {sh('criu', '--version').split()[1]}).",
        "",
        f"examples/{args.example} ({image}), snapshot {size / 1e9:.2f} GB; {args.rounds} rounds, each one cold boot and "
        "one restored start from zero containers, alternating which goes first; medians; from the call until "
        f"the result, each {SETTLE_S:g} s after the last container went; page cache " + ("emptied before every start" if args.drop_caches else "warm (nothing dropped)") +
        f"; snapshot held in memory by the agent: {'yes' if held else 'no'} (budget {ram / 2**30:.1f} GiB).",
        "",
        "| start | median | min | max | of which |",
        "|---|---|---|---|---|",
        f"| cold boot | {cold:.3f} s | {min(g['wall'] for g in runs['cold']):.3f} s | "
        f"{max(g['wall'] for g in runs['cold']):.3f} s | container start {boot:.3f} s, imports {imports:.3f} s, "
        f"on_start {app_start:.3f} s |",
        f"| restored | {fast:.3f} s | {min(g['wall'] for g in runs['restored']):.3f} s | "
        f"{max(g['wall'] for g in runs['restored']):.3f} s | checkpoint restore {restore_phase:.3f} s |",
        "",
        f"- **restored start {cold / fast:.2f}x faster than a cold boot** (target 5x: "
        f"{'met' if cold / fast >= 5 else 'NOT met'}).",
        f"- results identical across all {2 * args.rounds} starts: {'yes' if same else 'NO'}; on_start ran "
        f"{on_start_runs} times (expected {expected_on_start}: deploy, {args.captures} capture boots, "
        f"{args.rounds} cold boots), {restored_lines} starts were restored.",
        f"- capture through beamctl (runc checkpoint, key, rename): median {med(captures):.3f} s "
        f"(the task's checkpoint_capture phase {med(capture_phase):.3f} s); raw `criu dump --leave-running` of the "
        f"same app process outside a container ({raw['size'][0] / 1e9:.2f} GB): {med(raw['dump']):.3f} s -> "
        f"**{med(captures) / med(raw['dump']):.2f}x** (target <= 1.5x).",
        f"- restore through beamctl (new container, links, docker start --checkpoint, release): median "
        f"{restore_phase:.3f} s; raw `criu restore --restore-detached` of that process + release: "
        f"{med(raw['restore']):.3f} s -> **{restore_phase / med(raw['restore']):.2f}x** (target <= 1.5x); "
        f"the raw restores' results equal the app's: {'yes' if raw_same else 'NO'}.",
        end,
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, section, begin, end,
                      f"Cold start of examples/{tag}: restored from a checkpoint (bench/coldstart.py)")
    ok = same and raw_same and on_start_runs == expected_on_start
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
