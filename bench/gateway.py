"""The front door (issue 18) against the agents' own endpoints, on the three test hosts, in one run.

    cd bench && ../.venv/bin/python gateway.py [--seconds 8] [--clients 8] [--fleet DIR] [--write ../docs/BENCHMARKS.md]

A no-op app (`handler` returns {}, workers 8) deployed to testhost-1..3 with `gateway: {host: testhost-1,
port: 8443, certificate}` (a certificate made here). The client runs on testhost-1, the gateway host:
the agents answer their gateway's address only, so that is the one place both paths can be measured from
(the same client, the same machine, side by side):
The two paths take turns, four rounds of `--seconds`/4 each, so the machine's noise falls on both.
- latency: one keep-alive connection, tasks one after another: straight to testhost-2's
  agent (plain HTTP), and through the door to testhost-2 alone (TLS on a kept connection, the token checked
  by its digest, a new connection to the agent per task) -> added p50/p99;
- throughput: `--clients` keep-alive clients for `--seconds`: one agent straight (testhost-2), and the door
  over all three hosts;
- a host stopped mid-stream: 4 clients through the door for 16 s from this machine, testhost-3 paused at
  3 s and unpaused at 10 s: when it left the rotation and came back (polled on the gateway host's
  HAProxy), the tasks that failed, and every task id counted on the hosts (none run twice).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results import write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.fleet.hosts import Fleet  # noqa: E402 - the repo root is on the path now

PY = sys.executable
APP = "doorbench"
HOSTS = ("testhost-1", "testhost-2", "testhost-3")
BEGIN, END = "<!-- bench/gateway.py begin -->", "<!-- bench/gateway.py end -->"
CODE = "def handler(**inputs):\n    return {}\n"
PORT = 8443

# Run with python3 on testhost-1: argv mode host port tls(0/1) token seconds clients cafile.
CLIENT = r"""
import http.client, json, ssl, sys, threading, time
mode, host, port, tls, token, seconds, clients, ca = sys.argv[1:9]
port, seconds, clients = int(port), float(seconds), int(clients)
ctx = ssl.create_default_context(cafile=ca) if tls == "1" else None
def conn():
    return (http.client.HTTPSConnection(host, port, timeout=30, context=ctx) if ctx
            else http.client.HTTPConnection(host, port, timeout=30))
lat, errors = [], []
def run():
    c, end = conn(), time.time() + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        try:
            c.request("POST", "/apps/doorbench", body=b"{}", headers={"Authorization": "Bearer " + token})
            r = c.getresponse(); r.read()
            if r.status != 200: errors.append(r.status)
            else: lat.append(time.perf_counter() - t0)
        except Exception as e:
            errors.append(repr(e)); c = conn()
ts = [threading.Thread(target=run) for _ in range(clients)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"n": len(lat), "errors": errors[:5], "n_errors": len(errors), "lat": sorted(lat)}))
"""


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--fleet", type=Path, help="the folder of a running test fleet (else one is started)")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gateway_bench."))
    fleet = Fleet.load(args.fleet) if args.fleet else Fleet.start(3, root / "fleet", plain=1)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(fleet.env)
    os.environ.update(fleet.env)
    gw = fleet.hosts[0]
    folder = root / "app"
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(CODE)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "k.pem"),
                    "-out", str(folder / "c.pem"), "-days", "2", "-subj", f"/CN={gw.ip}",
                    "-addext", f"subjectAltName=IP:{gw.ip}"], check=True, capture_output=True)
    (folder / "door.pem").write_text((folder / "c.pem").read_text() + (folder / "k.pem").read_text())
    (folder / "beam.yaml").write_text(f"name: {APP}\nhandler: app:handler\ncpu: 0.5\nmemory: 256Mi\nworkers: 8\n"
                                      f"keep_warm_seconds: 600\nhosts: [{', '.join(HOSTS)}]\n"
                                      f"gateway: {{host: testhost-1, port: {PORT}, certificate: door.pem}}\n")

    def beamctl(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "beamctl", *argv], capture_output=True, text=True, env=env, cwd=folder,
                              timeout=timeout)

    try:
        deployed = beamctl("deploy", "--json")
        if deployed.returncode != 0:
            raise SystemExit(f"deploy failed: {deployed.stderr[-2000:]}")
        status = json.loads(beamctl("status", APP, "--json").stdout)
        token = status["hosts"][0]["status"]["apps"][0]["token"]
        gw.exec(["sh", "-c", "cat > /tmp/door-ca.pem"], input=(folder / "c.pem").read_text())
        h2 = fleet.hosts[1].ip
        for h in HOSTS:  # every host warm: a container up before anything is timed
            beamctl("call", APP, "--host", h)

        def client(mode: str, host: str, port: int, tls: bool, seconds: float, clients: int) -> dict:
            done = gw.exec(["python3", "-c", CLIENT, mode, host, str(port), "1" if tls else "0", token,
                            str(seconds), str(clients), "/tmp/door-ca.pem"], timeout=seconds + 120)
            return json.loads(done.stdout)

        # latency: the door routed to testhost-2 alone for this part, then to all three again
        only_h2 = [["testhost-2", f"{h2}:8430"]]
        all_three = json.loads(deployed.stdout)["gateway"]["servers"]
        answer = gw_update(fleet, only_h2)
        assert [s["host"] for s in answer] == ["testhost-2"], answer
        time.sleep(2.5)  # its health check: UP
        client("warm", gw.ip, PORT, True, 1, 1)
        rounds = 4  # the two paths take turns, so the machine's noise falls on both alike
        direct, door = merged([]), merged([])
        for _ in range(rounds):
            direct = merged([direct, client("direct", h2, 8430, False, args.seconds / rounds, 1)])
            door = merged([door, client("door", gw.ip, PORT, True, args.seconds / rounds, 1)])
        gw_update(fleet, [[s["host"], s["address"]] for s in all_three])
        time.sleep(2.5)
        one_agent, door_all = merged([]), merged([])
        for _ in range(rounds):
            one_agent = merged([one_agent, client("direct", h2, 8430, False, args.seconds / rounds, args.clients)])
            door_all = merged([door_all, client("door", gw.ip, PORT, True, args.seconds / rounds, args.clients)])
        failover = stopped_mid_stream(fleet, folder / "c.pem", token, beamctl)
    finally:
        beamctl("stop", APP)
        if not args.fleet:
            fleet.down()
    p50d, p50g = statistics.median(direct["lat"]), statistics.median(door["lat"])
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on this machine ({os.cpu_count()} cores): "
        f"`cd bench && ../.venv/bin/python gateway.py --seconds {args.seconds:g} --clients {args.clients}`; "
        "HAProxy 2.6 (Debian bookworm, carried to testhost-1), the client on testhost-1.",
        "",
        "| path | tasks | p50 | p99 | errors |",
        "|---|---:|---:|---:|---:|",
        f"| agent straight (testhost-2, HTTP, 1 client) | {direct['n']} | {p50d * 1000:.2f} ms | "
        f"{pct(direct['lat'], 99) * 1000:.2f} ms | {direct['n_errors']} |",
        f"| through the door (TLS, to testhost-2, 1 client) | {door['n']} | {p50g * 1000:.2f} ms | "
        f"{pct(door['lat'], 99) * 1000:.2f} ms | {door['n_errors']} |",
        "",
        f"Added latency per task: **{(p50g - p50d) * 1000:.2f} ms p50** (target <= 1 ms), "
        f"{(pct(door['lat'], 99) - pct(direct['lat'], 99)) * 1000:.2f} ms p99.",
        "",
        f"Throughput, {args.clients} keep-alive clients for {args.seconds:g} s: one agent straight "
        f"{one_agent['n'] / args.seconds:.0f} tasks/s ({one_agent['n_errors']} errors); the door over three hosts "
        f"{door_all['n'] / args.seconds:.0f} tasks/s ({door_all['n_errors']} errors): "
        f"**{door_all['n'] / max(1, one_agent['n']):.2f}x** one agent (target >= 1x). The three hosts, HAProxy and "
        "the client share this machine's cores: here the ratio is the door's cost against one agent, not the "
        "capacity three real hosts add.",
        "",
        f"A host stopped mid-stream (4 clients from this machine, a new TLS connection per task, testhost-3 "
        f"paused at 3 s, unpaused at 10 s): out of the rotation **{failover['out_s']:.1f} s** after it stopped, "
        f"back **{failover['back_s']:.1f} s** after it returned; {failover['ok']} tasks answered, "
        f"{len(failover['failed'])} failed ({failover['failed_kinds'] or 'none'}), all sent before it left; "
        f"tasks recorded on the hosts: {failover['ran']} (answered + failed = {failover['ok'] + len(failover['failed'])}), "
        f"task ids unique: {failover['unique']}; none run twice.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, f"{BEGIN}\n{text}\n{END}", BEGIN, END,
                      "The front door: added latency, throughput, a host stopped (bench/gateway.py)")
    return 0


def merged(runs: list[dict]) -> dict:
    return {"n": sum(r["n"] for r in runs), "n_errors": sum(r["n_errors"] for r in runs),
            "lat": sorted(x for r in runs for x in r["lat"])}


def gw_update(fleet: Fleet, servers: list[list[str]]) -> list[dict]:
    from beamctl.fleet.query import hosts_of
    from beamctl.hosts.inventory import find

    host = hosts_of([find("testhost-1")])[0]
    try:
        answer = host.request("gateway_update", app=APP, servers=servers, timeout=60)
    finally:
        host.close()
    if not answer.get("ok"):
        raise SystemExit(f"gateway_update: {answer}")
    return next(a for a in answer["result"]["apps"] if a["app"] == APP)["servers"]


def stopped_mid_stream(fleet: Fleet, ca: Path, token: str, beamctl) -> dict:
    import http.client
    import ssl

    from beamctl.fleet.query import hosts_of
    from beamctl.hosts.inventory import find

    gw = fleet.hosts[0]
    got: list = []
    began = time.time()
    end = began + 16

    def one() -> None:
        while time.time() < end:
            sent = time.time()
            try:
                c = http.client.HTTPSConnection(gw.ip, PORT, timeout=30, context=ssl.create_default_context(cafile=str(ca)))
                c.request("POST", f"/apps/{APP}", body=b"{}", headers={"Authorization": f"Bearer {token}"})
                r = c.getresponse()
                body = json.loads(r.read() or b"{}")
                c.close()
                got.append((sent, r.status, body))
            except (OSError, http.client.HTTPException) as e:
                got.append((sent, type(e).__name__, {}))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    rotation = hosts_of([find("testhost-1")])[0]

    def state() -> str:
        answer = rotation.request("gateway_status", timeout=20)
        route = next(a for a in answer["result"]["apps"] if a["app"] == APP)
        return next(s["state"] for s in route["servers"] if s["host"] == "testhost-3")

    try:
        time.sleep(3)
        fleet.hosts[2].pause()
        paused = time.time()
        while state() != "DOWN":
            time.sleep(0.05)
        out_s = time.time() - paused
        time.sleep(max(0.0, began + 10 - time.time()))
        fleet.hosts[2].unpause()
        back = time.time()
        while not state().startswith("UP"):
            time.sleep(0.05)
        back_s = time.time() - back
    finally:
        rotation.close()
    for t in threads:
        t.join()
    failed = [(t, c) for t, c, _ in got if c != 200]
    ok_ids = [b["task_id"] for _, c, b in got if c == 200]
    ran = []
    for h in HOSTS:
        rows = json.loads(beamctl("tasks", APP, "--host", h, "-n", "100000", "--json").stdout)
        ran += [r["task_id"] for r in rows if r["received"] >= began]
    kinds = ", ".join(sorted({str(c) for _, c in failed}))
    return {"out_s": out_s, "back_s": back_s, "ok": len(ok_ids), "failed": failed, "failed_kinds": kinds,
            "ran": len(ran), "unique": len(ran) == len(set(ran)) and len(ok_ids) == len(set(ok_ids)),
            "before_out": all(t < paused + out_s for t, _ in failed)}


if __name__ == "__main__":
    sys.exit(main())
