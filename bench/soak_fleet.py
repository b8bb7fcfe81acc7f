"""Fault soak on the three test hosts: a steady stream of `beamctl call APP` (which picks a host that answers,
the least busy) to an app deployed with `hosts: [testhost-1, testhost-2, testhost-3]`, while every N seconds
one host, chosen at random (the seed is printed; --seed repeats a run), is taken down for a while:
  stop     `docker stop` of the host's container (sshd, dockerd, the agent and the app's containers go),
           started again after --down seconds
  pause    `docker pause` (every process frozen: TCP connects, no SSH banner), unpaused after --down seconds
  restart  `docker restart` (a reboot: down for as long as the engine takes)
Reports faults, calls made, calls failed (in flight on the faulted host, or on the others: those should not
fail), tasks lost, the time from each host's return to the first call that host served again, and what was
left behind (containers outside a pool, hosts whose agent does not answer).

    cd bench && ../.venv/bin/python soak_fleet.py [--minutes 5] [--every 30] [--seed N] [--fleet DIR]
                                                   [--write ../docs/BENCHMARKS.md]

The fleet is tests/fleet/hosts.py's (two full hosts and a plain one); --fleet DIR reuses one that
`python -m tests.fleet.hosts up 3` started, else one is started here and removed at the end. The CLI and
the agents it installs are this checkout's (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from results import write_section
from soak import Call, Fault, recovery_rows, sh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.fleet.hosts import Fleet, Host, docker  # noqa: E402 - the repo root is on the path now

PY = sys.executable
APP = "soakfleet"
HOSTS = ("testhost-1", "testhost-2", "testhost-3")
FAULTS = ("stop", "pause", "restart")
BEGIN, END = "<!-- bench/soak_fleet.py begin -->", "<!-- bench/soak_fleet.py end -->"
AGENT_WAIT_S = 10  # a host back from a stop or restart whose agent does not answer by then has none
PROBE_S = 180  # a host not serving a pinned call this long after its return: "never"
CALL_TIMEOUT_S = 300  # one CLI call; a paused host holds a call sent to it until it is unpaused
FILES = {
    "beam.yaml": f"name: {APP}\nhandler: app:handler\non_start: app:setup\ncpu: 0.5\nmemory: 256Mi\n"
                 f"keep_warm_seconds: 300\nworkers: 2\nhosts: [{', '.join(HOSTS)}]\n",
    "app.py": '''import hashlib, os, socket

def setup():
    data = os.urandom(1 << 20)
    return {"data": data, "digest": hashlib.sha256(data).hexdigest()}

def handler(context, **inputs):
    state = context.on_start_value
    if hashlib.sha256(state["data"]).hexdigest() != state["digest"]:
        raise RuntimeError("the memory on_start made is not what it was")
    return {"ok": True, "served_by": socket.gethostname()}
''',
}


@dataclass
class HostCall(Call):
    host: str = ""  # the host that served it ("host" in --json), or the one its error names


@dataclass
class HostFault(Fault):
    back: float = 0.0  # when the host was up again (start/unpause/restart returned)
    reinstalled: bool = False  # its agent did not come back by itself: `beamctl hosts install` started it


class FleetSoak:
    def __init__(self, fleet: Fleet, folder: Path, env: dict[str, str]) -> None:
        self.fleet, self.folder, self.env = fleet, folder, env
        self.calls: list[HostCall] = []
        self.lock = threading.Lock()

    def beamctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "beamctl", *args], capture_output=True, text=True, env=self.env,
                              cwd=self.folder, timeout=timeout)

    def call(self) -> HostCall:
        started = time.monotonic()
        try:
            done = self.beamctl("call", APP, "{}", "--json", timeout=CALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return HostCall(started, time.monotonic(), False, f"no answer in {CALL_TIMEOUT_S} s")
        ended = time.monotonic()
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            answer = {}
        ok = done.returncode == 0 and answer.get("status") == "succeeded"
        error = "" if ok else (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]
        named = re.search(r"testhost-\d", error)
        return HostCall(started, ended, ok, error, answer.get("task_id") or "",
                        host=answer.get("host") or (named.group(0) if named else ""))

    def stream(self, stop: threading.Event, pause: float) -> None:
        while not stop.is_set():
            c = self.call()
            with self.lock:
                self.calls.append(c)
            time.sleep(pause)

    def inject(self, fault: HostFault, host: Host, down_s: float) -> None:
        fault.victim = host.name
        fault.at = time.monotonic()
        if fault.kind == "stop":
            host.stop(timeout=2)
            time.sleep(down_s)
            host.start()
        elif fault.kind == "pause":
            host.pause()
            time.sleep(down_s)
            host.unpause()
        elif fault.kind == "restart":
            before = host._ready_lines()
            docker("restart", "-t", "2", host.container, timeout=180)
            host._wait_ready(before)
        else:
            raise ValueError(fault.kind)
        fault.back = time.monotonic()
        fault.note = f"{host.name} down {fault.back - fault.at:.1f} s"
        if fault.kind != "pause" and not self.agent_answers(host.name):
            # a host without systemd (these) has no agent after a reboot: the operator's step, timed in
            fault.reinstalled = True
            done = self.beamctl("hosts", "install", host.name, timeout=300)
            fault.note += f"; no agent after it: `beamctl hosts install {host.name}` exit {done.returncode}"
            if done.returncode != 0:
                fault.note += f" ({(done.stderr.strip().splitlines() or [''])[-1][:200]})"
        probe = self.probe(host.name)
        fault.recovered = probe - fault.back if probe is not None else None

    def probe(self, name: str) -> float | None:
        """When a call pinned to the host (`--host`) first succeeded, or None within PROBE_S. (The stream's
        own calls go where `call` picks: a host back with no ready container loses the ties to the others.)"""
        deadline = time.monotonic() + PROBE_S
        while time.monotonic() < deadline:
            done = self.beamctl("call", APP, "{}", "--host", name, "--json", timeout=CALL_TIMEOUT_S)
            if done.returncode == 0:
                return time.monotonic()
            time.sleep(0.5)
        return None

    def agent_answers(self, name: str, wait_s: float = AGENT_WAIT_S) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            done = self.beamctl("status", APP, "--host", name, "--json", timeout=60)
            if done.returncode == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(1)

    def leftovers(self) -> list[str]:
        """Per host: containers of the app outside its agent's pool; an agent that does not answer."""
        status = json.loads(self.beamctl("status", APP, "--json").stdout or "{}")
        left = []
        for entry in status.get("hosts", []):
            host = next(h for h in self.fleet if h.name == entry["host"])
            if "error" in entry:
                left.append(f"{host.name}: its agent does not answer ({entry['error'][:160]})")
                continue
            apps = entry["status"].get("apps") or [{}]
            pool = {c["id"] for c in apps[0].get("containers", [])}
            found = host.exec(["docker", "ps", "-aq", "--filter", f"label=dev.beamctl.app={APP}"],
                              check=False).stdout.split()
            left += [f"{host.name}: container {c} (not in the pool)" for c in found if c[:12] not in pool]
        return left


def attribute(calls: list[HostCall], faults: list[HostFault]) -> tuple[list[HostCall], list[HostCall]]:
    """Failed calls: (in flight on a faulted host while it was down or coming back, the others)."""
    on_fault, others = [], []
    for c in (c for c in calls if not c.ok):
        hit = any(c.host == f.victim and f.at - 0.5 <= c.ended
                  and c.started <= f.back + (f.recovered or PROBE_S) + 0.5 for f in faults)
        (on_fault if hit else others).append(c)
    return on_fault, others


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--every", type=float, default=30, help="seconds from one fault's start to the next")
    parser.add_argument("--down", type=float, default=10, help="seconds a stopped or paused host stays down")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.3, help="each caller's pause between calls")
    parser.add_argument("--fleet", type=Path, help="the folder of a running test fleet (else one is started)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    print(f"soak_fleet: seed {seed}", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="soak_fleet."))
    fleet = Fleet.load(args.fleet) if args.fleet else Fleet.start(3, root / "fleet", plain=1)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(fleet.env, PYTHONPATH=str(REPO), BEAMCTL_SECRETS_FILE=str(root / "no-secrets.env"))
    folder = root / APP
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    soak = FleetSoak(fleet, folder, env)
    faults: list[HostFault] = []
    try:
        deployed = soak.beamctl("deploy", "-f", str(folder / "beam.yaml"), timeout=1800)
        if deployed.returncode != 0:
            raise SystemExit(f"deploy failed: {deployed.stderr[-2000:]}")
        stop = threading.Event()
        callers = [threading.Thread(target=soak.stream, args=(stop, args.pause), daemon=True)
                   for _ in range(args.threads)]
        for t in callers:
            t.start()
        began = time.monotonic()
        end = began + args.minutes * 60
        next_at = began + args.every
        while next_at + args.down < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            fault = HostFault(rng.choice(FAULTS))
            soak.inject(fault, rng.choice(list(fleet)), args.down)
            print(f"soak_fleet: {time.strftime('%H:%M:%S')} {fault.kind}: {fault.note}", file=sys.stderr)
            faults.append(fault)
            next_at = max(next_at + args.every, time.monotonic() + 5)
        time.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        for t in callers:
            t.join(CALL_TIMEOUT_S + 10)
        left = soak.leftovers()
        tasks = json.loads(soak.beamctl("tasks", APP, "--json", "-n", "100000").stdout or "[]")
    finally:
        soak.beamctl("stop", APP)
        if not args.fleet:
            fleet.down()
        for ref in sh("docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"beamctl/{APP}").split():
            sh("docker", "rmi", ref, check=False)
        subprocess.run(["rm", "-rf", str(root)])

    # what happened ------------------------------------------------------------------------------------
    calls = sorted(soak.calls, key=lambda c: c.started)
    on_fault, others = attribute(calls, faults)
    failed = on_fault + others
    lost = [t for t in tasks if t.get("status") == "lost"]
    slow = sorted(c.ended - c.started for c in calls if c.ok)
    served = {h: sum(c.ok and c.host == h for c in calls) for h in HOSTS}
    lines = [f"seed {seed}, {args.minutes:g} min, a host fault every {args.every:g} s (down {args.down:g} s), "
             f"{args.threads} callers (pause {args.pause:g} s), {os.cpu_count()} cores", "",
             f"- faults injected: {len(faults)} ({', '.join(f'{k} {sum(f.kind == k for f in faults)}' for k in FAULTS)}"
             f"); on {', '.join(f'{h} {sum(f.victim == h for f in faults)}' for h in HOSTS)}",
             f"- calls: {len(calls)} (served: {', '.join(f'{h} {n}' for h, n in served.items())}), "
             f"failed: {len(failed)} (in flight on the faulted host: {len(on_fault)}; others: {len(others)})",
             f"- a successful call took: median {slow[len(slow) // 2]:.2f} s, max {slow[-1]:.2f} s" if slow else
             "- no call succeeded",
             f"- tasks lost (cut off by a host's death): {len(lost)}",
             f"- hosts back from a stop or restart without their agent (`beamctl hosts install` started it): "
             f"{sum(f.reinstalled for f in faults)} of {sum(f.kind != 'pause' for f in faults)}",
             f"- left behind at the end: {', '.join(left) if left else 'nothing'}", "",
             "Recovered: from the host's return (started, unpaused, restarted) to the first success of a call"
             " pinned to it (`call --host`; after the `hosts install` where one was needed).", "",
             "| fault | n | recovered: median | max |", "|---|---|---|---|", *recovery_rows(faults, FAULTS)]
    if on_fault:
        lines += ["", "Failures in flight on the faulted host (first 5):", *[f"- {c.error}" for c in on_fault[:5]]]
    if others:
        lines += ["", "Failures of calls not on a faulted host (first 5):", *[f"- {c.error}" for c in others[:5]]]
    text = "\n".join(lines)
    print(text)
    if args.write:
        section = f"{BEGIN}\nCommand: `cd bench && ../.venv/bin/python soak_fleet.py --minutes {args.minutes:g} " \
                  f"--every {args.every:g} --write ../docs/BENCHMARKS.md`\n\n{text}\n{END}"
        write_section(args.write, section, BEGIN, END, "Fault soak on three hosts (bench/soak_fleet.py)")
    return 0 if not left and not others else 1


if __name__ == "__main__":
    sys.exit(main())
