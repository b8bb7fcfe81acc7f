"""Fault soak: a steady stream of calls to one checkpointed app while a fault is injected every N seconds,
chosen at random (the seed is printed; --seed repeats a run). Reports faults injected, calls made, calls
failed (and how many of those were in flight on the faulted part), tasks lost, the time from each fault
to the first call after it that succeeded, and what was left behind.

    .venv/bin/python bench/soak.py [--minutes 10] [--every 20] [--seed N] [--write docs/BENCHMARKS.md]

A private agent (temporary data dir, HTTP on a fixed free loopback port) runs one app whose on_start fills
8 MiB with random bytes and keeps their digest; every call re-hashes them, so a wrongly restored memory is
a failed call, not a silent one. This script is the agent's supervisor too: a killed agent is started again
after 2 s (systemd's RestartSec in `hosts install`'s unit). Faults:
  container_kill   `docker kill` of the app's running container
  sandbox_remove   `docker rm -f` of the network sandbox the container runs in
  agent_kill       kill -9 of the agent (restarted 2 s later)
  oom              a call that allocates 1 GiB under a 128 MiB limit (that call fails: it is the fault)
  snapshot_damage  64 bytes flipped in the middle of the snapshot's largest pages-*.img, then the container
                   killed, so the next start must restore (or refuse the damaged snapshot)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from results import write_section  # bench/results.py (scripts run from bench/)

PY = sys.executable
BEAMCTL = str(Path(sys.executable).parent / "beamctl")
APP = "soak"
FAULTS = ("container_kill", "sandbox_remove", "agent_kill", "oom", "snapshot_damage")
BEGIN, END = "<!-- bench/soak.py begin -->", "<!-- bench/soak.py end -->"
RESTART_S = 2.0
FILES = {
    "beam.yaml": f"name: {APP}\nhandler: app:handler\non_start: app:setup\ncpu: 1\nmemory: 128Mi\n"
                 "keep_warm_seconds: 300\nworkers: 2\ncheckpoint_enabled: true\n",
    "app.py": '''import hashlib, os

def setup():
    data = bytearray(os.urandom(8 << 20))
    return {"data": data, "digest": hashlib.sha256(data).hexdigest()}

def handler(context, **inputs):
    if inputs.get("eat"):
        hog = [bytearray(16 << 20) for _ in range(64)]
        return {"ate": len(hog)}
    state = context.on_start_value
    if hashlib.sha256(state["data"]).hexdigest() != state["digest"]:
        raise RuntimeError("the memory on_start made is not what it was")
    return {"ok": True}
''',
}


def sh(*argv: str, env: dict | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {done.stderr.strip()[-1500:]}")
    return done.stdout


@dataclass
class Call:
    started: float
    ended: float
    ok: bool
    error: str = ""
    task_id: str = ""
    container: str = ""  # the one that served it (12 hex digits; from the task records after the run)


@dataclass
class Fault:
    kind: str
    at: float = 0.0  # when the destructive step happened
    victim: str = ""  # the container it took down (recovery: the first success served by another)
    recovered: float | None = None
    note: str = ""


@dataclass
class Soak:
    root: Path
    port: int
    env: dict[str, str]
    token: str = ""
    agent: subprocess.Popen | None = None
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> Path:
        return self.root / "agent"

    def start_agent(self) -> None:
        log = (self.root / "agent.log").open("ab")
        (self.data / "agent.json").unlink(missing_ok=True)
        self.agent = subprocess.Popen([PY, "-m", "beamctl.agent", "--data-dir", str(self.data), "--http",
                                       f"127.0.0.1:{self.port}"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                      start_new_session=True, cwd="/")
        deadline = time.monotonic() + 30
        while not (self.data / "agent.json").exists():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the agent did not start: {(self.root / 'agent.log').read_text()[-800:]}")
            time.sleep(0.05)

    def status(self) -> dict:
        return json.loads(sh(BEAMCTL, "status", APP, "--json", env=self.env))["apps"][0]

    def container(self) -> str | None:
        try:
            found = [c for c in self.status()["containers"] if c["state"] == "ready"]
        except (SystemExit, KeyError, IndexError, json.JSONDecodeError):
            return None
        return found[0]["id"] if found else None

    def call(self, inputs: dict, timeout: float = 120) -> Call:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            conn.request("POST", f"/apps/{APP}", body=json.dumps(inputs).encode(),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            answer = json.loads(response.read() or b"{}")
            conn.close()
            ok = response.status == 200 and answer.get("status") == "succeeded"
            error = "" if ok else str(answer.get("error") or answer)[:300]
        except (OSError, http.client.HTTPException, ValueError) as e:
            ok, error, answer = False, f"{type(e).__name__}: {e}", {}
        return Call(started, time.monotonic(), ok, error, answer.get("task_id") or "")

    # faults ---------------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        """Do the fault; stamps fault.at just before its destructive step, fault.victim, fault.note."""
        kind, cid = fault.kind, self.container()
        if kind == "snapshot_damage" and not self.pages():
            sh(BEAMCTL, "deploy", "-f", str(self.root / APP), env=self.env)  # unchanged: recaptures
            cid = self.container()
        fault.victim, fault.at = cid or "", time.monotonic()
        if kind == "container_kill":
            if cid is None:
                fault.note = "no container running"
                return
            sh("docker", "kill", cid, check=False)
            fault.note = cid
        elif kind == "sandbox_remove":
            if cid is None:
                fault.note = "no container running"
                return
            mode = sh("docker", "inspect", "--format", "{{.HostConfig.NetworkMode}}", cid, check=False).strip()
            fault.at = time.monotonic()
            sh("docker", "rm", "-f", mode.removeprefix("container:"), check=False)
            fault.note = mode.removeprefix("container:")[:12] if mode.startswith("container:") else f"no sandbox ({mode})"
        elif kind == "agent_kill":
            assert self.agent is not None
            fault.victim = ""  # the containers live on: any success after the restart counts
            os.kill(self.agent.pid, signal.SIGKILL)
            self.agent.wait()
            time.sleep(RESTART_S)
            self.start_agent()
            fault.note = f"restarted as pid {self.agent.pid}"
        elif kind == "oom":
            call = self.call({"eat": True})
            fault.note = "the call failed as it should" if not call.ok else "the call did not fail"
        elif kind == "snapshot_damage":
            pages = self.pages()
            if not pages or cid is None:
                fault.note = "no snapshot" if not pages else "no container running"
                return
            target, middle = pages[-1], pages[-1].stat().st_size // 2
            with target.open("r+b") as f:
                f.seek(middle)
                chunk = f.read(64)
                f.seek(middle)
                f.write(bytes(b ^ 0xFF for b in chunk))
            sh("docker", "kill", cid, check=False)
            fault.note = f"{target.name} at {middle}, then {cid} killed"
        else:
            raise ValueError(kind)

    def pages(self) -> list[Path]:
        return sorted(self.data.glob(f"snapshots/{APP}/v*/**/pages-*.img"), key=lambda p: p.stat().st_size)

    # the stream of calls --------------------------------------------------------------------------
    def stream(self, stop: threading.Event, pause: float) -> None:
        while not stop.is_set():
            c = self.call({})
            with self.lock:
                self.calls.append(c)
            time.sleep(pause)

    def leftovers(self) -> list[str]:
        agent_id = (self.data / "agent-id").read_text().strip()
        ours = sh("docker", "ps", "-aq", "--no-trunc", "--filter", f"label=dev.beamctl.agent={agent_id}",
                  "--filter", f"label=dev.beamctl.app={APP}").split()
        serving = {c["id"] for c in self.status()["containers"]}
        left = [f"container {c[:12]} (not in the pool)" for c in ours if c[:12] not in serving]
        left += [f"folder {p}" for p in self.data.glob("snapshots/**/*.partial")]
        criu = sh("pgrep", "-x", "criu", check=False).split()
        left += [f"criu process {pid}" for pid in criu]
        return left


def recovery_rows(faults: list[Fault], kinds: tuple[str, ...]) -> list[str]:
    """One table row per fault kind that happened: how many, median and max time to recover."""
    rows = []
    for kind in kinds:
        times = [f.recovered for f in faults if f.kind == kind and f.recovered is not None]
        never = sum(1 for f in faults if f.kind == kind and f.recovered is None)
        if times or never:
            rows.append(f"| {kind} | {len(times) + never} | {statistics.median(times):.2f} s | {max(times):.2f} s"
                        f"{f' ({never} never)' if never else ''} |" if times else f"| {kind} | {never} | never | - |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=20, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2, help="each caller's pause between calls")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    print(f"soak: seed {seed}", file=sys.stderr)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(tempfile.mkdtemp(prefix="soak."))
    soak = Soak(root, port, dict(os.environ, BEAMCTL_AGENT_DIR=str(root / "agent"),
                                 BEAMCTL_AGENT_HTTP=f"127.0.0.1:{port}"))
    soak.data.mkdir()
    soak.start_agent()
    folder = root / APP
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    faults: list[Fault] = []
    try:
        sh(BEAMCTL, "deploy", "-f", str(folder), env=soak.env)
        soak.token = soak.status()["token"]
        stop = threading.Event()
        callers = [threading.Thread(target=soak.stream, args=(stop, args.pause), daemon=True)
                   for _ in range(args.threads)]
        for t in callers:
            t.start()
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() + args.every < end:
            time.sleep(args.every)
            fault = Fault(rng.choice(FAULTS))
            soak.inject(fault)
            print(f"soak: {time.strftime('%H:%M:%S')} {fault.kind}: {fault.note}", file=sys.stderr)
            faults.append(fault)
        time.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        for t in callers:
            t.join(180)
        left = soak.leftovers()
        tasks = json.loads(sh(BEAMCTL, "tasks", APP, "--json", "-n", "100000", env=soak.env))
    finally:
        if soak.agent is not None and soak.agent.poll() is None:
            soak.agent.send_signal(signal.SIGTERM)
            soak.agent.wait(15)
        agent_id = (soak.data / "agent-id").read_text().strip() if (soak.data / "agent-id").exists() else ""
        if agent_id:
            ours = sh("docker", "ps", "-aq", "--filter", f"label=dev.beamctl.agent={agent_id}").split()
            if ours:
                sh("docker", "rm", "-f", *ours, check=False)
        for ref in sh("docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"beamctl/{APP}").split():
            sh("docker", "rmi", ref, check=False)
        subprocess.run(["rm", "-rf", str(root)])

    # what happened -----------------------------------------------------------------------------------
    calls = sorted(soak.calls, key=lambda c: c.started)
    served_by = {t["task_id"]: t.get("container") or "" for t in tasks}
    for c in calls:
        c.container = served_by.get(c.task_id, "")
    for f in faults:
        after = next((c for c in calls if c.started >= f.at and c.ok and c.container != f.victim), None)
        f.recovered = after.ended - f.at if after else None
    windows = [(f.at - 0.5, f.at + (f.recovered or 0) + 0.5) for f in faults]
    failed = [c for c in calls if not c.ok]
    on_fault = [c for c in failed if any(a <= c.ended and c.started <= b for a, b in windows)]
    lost = [t for t in tasks if t["status"] == "lost"]
    lines = [f"seed {seed}, {args.minutes:g} min, a fault every {args.every:g} s, {args.threads} callers "
             f"(pause {args.pause:g} s), {os.cpu_count()} cores", "",
             f"- faults injected: {len(faults)} ({', '.join(f'{k} {sum(f.kind == k for f in faults)}' for k in FAULTS)})",
             f"- calls: {len(calls)}, failed: {len(failed)} (in flight on a fault: {len(on_fault)}; "
             f"others: {len(failed) - len(on_fault)})",
             f"- tasks lost (cut off by the agent's death): {len(lost)}",
             f"- left behind at the end: {', '.join(left) if left else 'nothing'}", "",
             "Recovered: from the fault to the first call after it that succeeded on another container (for"
             f" agent_kill: any container; it includes the {RESTART_S:g} s restart delay).", "",
             "| fault | n | recovered: median | max |", "|---|---|---|---|"]
    lines += recovery_rows(faults, FAULTS)
    others = [c.error for c in failed if c not in on_fault][:5]
    if others:
        lines += ["", "Failures outside a fault's window (first 5):", *[f"- {e}" for e in others]]
    text = "\n".join(lines)
    print(text)
    if args.write:
        section = f"{BEGIN}\nCommand: `.venv/bin/python bench/soak.py --minutes {args.minutes:g} --every {args.every:g}" \
                  f" --write docs/BENCHMARKS.md`\n\n{text}\n{END}"
        write_section(args.write, section, BEGIN, END, "Fault soak (bench/soak.py)")
    return 0 if not left and len(failed) == len(on_fault) else 1


if __name__ == "__main__":
    sys.exit(main())
