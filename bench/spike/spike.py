"""Checkpoint/restore spike (issue 6): capture and restore paths for a Docker 20.10 + runc + CRIU host,
timed side by side on the same examples/weights container. See docs/checkpoint-spike.md.

    .venv/bin/python bench/spike/spike.py [--image beamctl/weights:TAG] [--runs 3] [--baseline]
                                          [--criu /opt/spike/bin/criu] [--json out.json]

Needs root, dockerd --experimental, runc, and a CRIU that can dump TCP sockets on this kernel
(>= 4.2: 4.1.1 fails on kernels >= 6.16, see the report). `docker start --checkpoint` runs the `criu`
that containerd finds on PATH, so that one must be >= 4.2 too. Containers are made the agent's way
(beamctl.agent.containers.create_args + DockerContainers), named spike-*, and removed at the end.

Paths timed (capture, then restore into a NEW container, until GET /health says READY):
  docker   docker checkpoint create (leave running) | copy into NEWID/checkpoints + docker start --checkpoint
  runc     runc checkpoint --leave-running to DIR    | copy into NEWID/checkpoints + docker start --checkpoint
  link     runc checkpoint to DIR (disk)             | relative symlinks in NEWID/checkpoints + docker start --checkpoint
  shm      runc checkpoint to DIR (tmpfs)            | same, images in /dev/shm
  raw      criu dump / criu restore of a host python process holding the same 1 GiB (for comparison)
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from beamctl.agent.container_args import create_args  # noqa: E402
from beamctl.agent.containers import DockerContainers  # noqa: E402
from beamctl.protocol.spec import AppSpec, VolumeSpec  # noqa: E402

RUNC_ROOT = "/run/docker/runtime-runc/moby"  # dockerd 20.10's runc state for its containers
CONTAINERS = Path("/var/lib/docker/containers")  # docker keeps NEWID/checkpoints/NAME here
TASKS = Path("/var/lib/docker/containerd/daemon/io.containerd.runtime.v2.task/moby")  # shim work dirs
INGEST = Path("/var/lib/docker/containerd/daemon/io.containerd.content.v1.content/ingest")
FREEZER = Path("/sys/fs/cgroup/freezer/docker")
UP = "../" * 32  # a relative link climbs to / whatever directory containerd unpacks it in
DATA = Path("/tmp/spike/data")  # agent-like data dir: volumes/weights/weights holds the weights file
DISK_STORE = Path("/tmp/spike/store")
SHM_STORE = Path("/dev/shm/beamctl-spike")
TASK = {"task_id": "t1", "inputs": {"seed": 1}}
KEEP_LOGS: Path | None = None  # --keep-logs: copies of CRIU's restore logs go here


def now() -> float:
    return time.monotonic()


# ---- the runtime over HTTP ----------------------------------------------------------------------
def call(ip: str, method: str, path: str, body: dict | None = None, timeout: float = 5) -> dict:
    conn = http.client.HTTPConnection(ip, 8000, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_ready(ip: str, deadline_s: float = 120) -> tuple[float, dict]:
    """Poll /health like the agent (5 ms backing off to 25 ms) over one kept-alive connection, which is
    CLOSED before returning: an established connection makes the next CRIU dump fail."""
    end = now() + deadline_s
    pause, conn = 0.005, None
    try:
        while now() < end:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(ip, 8000, timeout=2)
                conn.request("GET", "/health")
                health = json.loads(conn.getresponse().read())
                if health.get("state") == "READY":
                    return now(), health
            except (OSError, http.client.HTTPException, ValueError):
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(pause)
            pause = min(pause * 1.2, 0.025)
    finally:
        if conn is not None:
            conn.close()
    raise RuntimeError(f"{ip}: not READY within {deadline_s} s")


# ---- containers the agent's way -----------------------------------------------------------------
class Engine:
    def __init__(self, image: str) -> None:
        import docker

        self.client = docker.from_env(timeout=300)
        self.api = self.client.api
        self.dc = DockerContainers(self.client)
        self.spec = AppSpec(app="weights", image=image, workers=1, timeout_s=600, keep_warm_s=30, cpu=2,
                            memory_bytes=3 << 30, volumes=(VolumeSpec("weights", "/weights"),),
                            cache_dir="/weights/cache", checkpoint_enabled=True)
        self.made: list[str] = []

    def create(self, label: str) -> str:
        args = create_args(self.spec, 1, "spike", DATA, {})
        args["name"] = f"spike-{label}-{secrets.token_hex(3)}"
        cid = self.dc.create(args)
        self.made.append(cid)
        return cid

    def ip(self, cid: str) -> str:
        return self.api.inspect_container(cid)["NetworkSettings"]["IPAddress"]

    def pid(self, cid: str) -> int:
        return int(self.api.inspect_container(cid)["State"]["Pid"])

    def start_checkpoint(self, cid: str, name: str) -> None:
        res = self.api._post(self.api._url("/containers/{0}/start", cid), params={"checkpoint": name})
        self.api._raise_for_status(res)

    def docker_checkpoint(self, cid: str, name: str) -> None:
        res = self.api._post_json(self.api._url("/containers/{0}/checkpoints", cid),
                                  data={"CheckpointID": name, "Exit": False})
        self.api._raise_for_status(res)

    def remove_all(self) -> None:
        for cid in self.made:
            self.dc.remove(cid)


# ---- watching where the time goes ---------------------------------------------------------------
def tree_bytes(paths: list[str]) -> int:
    total = 0
    for p in paths:
        for root, _, files in os.walk(p):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
    return total


class Watch(threading.Thread):
    """Samples every 50 ms: the source container's freezer state and the bytes in each place the
    engine writes a checkpoint to. summary() -> {name: [first seen growing, last growth]} (s from start)."""

    def __init__(self, frozen_of: str | None, places: dict[str, callable]) -> None:
        super().__init__(daemon=True)
        self.frozen_of, self.places = frozen_of, places
        self.t0, self.samples, self.stop = now(), [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            row = {k: tree_bytes(f()) for k, f in self.places.items()}
            if self.frozen_of:
                try:
                    row["frozen"] = (FREEZER / self.frozen_of / "freezer.state").read_text().strip() != "THAWED"
                except OSError:
                    row["frozen"] = None
            self.samples.append((now() - self.t0, row))
            time.sleep(0.05)

    def summary(self) -> dict:
        self.stop.set()
        self.join()
        out: dict = {}
        for key in self.places:
            prev, first, last, peak = 0, None, None, 0
            for t, row in self.samples:
                if row[key] > prev:
                    first = t if first is None else first
                    last = t
                prev, peak = row[key], max(peak, row[key])
            out[key] = {"grows_from_s": r3(first), "grows_until_s": r3(last), "peak_mb": round(peak / 1e6)}
        if self.frozen_of:
            frozen = [t for t, row in self.samples if row.get("frozen")]
            out["frozen"] = {"from_s": r3(frozen[0]) if frozen else None, "until_s": r3(frozen[-1]) if frozen else None,
                             "samples": len(frozen)}
        return out


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def criu_seconds(log: Path) -> float | None:
    """CRIU's own elapsed time: the stamp of the last line of its log."""
    try:
        stamps = re.findall(r"^\((\d+\.\d+)\)", log.read_text(errors="replace"), re.M)
        return float(stamps[-1]) if stamps else None
    except OSError:
        return None


def pages_read_seconds(log: Path) -> float | None:
    """Time the restorer spent reading pages: from 'Switched to the restorer' to the last 'returned'."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    sw = re.search(r"^\((\d+\.\d+)\).*Switched to the restorer", text, re.M)
    ret = re.findall(r"^\((\d+\.\d+)\).*`- returned \d+", text, re.M)
    return round(float(ret[-1]) - float(sw.group(1)), 3) if sw and ret else None


def huge_mb(pid: int) -> dict:
    """Rss and AnonHugePages (THP) of a process, MB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "AnonHugePages"):
            out[key] = round(int(rest.split()[0]) / 1024)
    return out


def cached_mb(path: Path) -> int | None:
    """How much of a file is in the page cache (util-linux fincore)."""
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                       capture_output=True, text=True)
    return round(int(r.stdout.split()[0]) / 1e6) if r.returncode == 0 and r.stdout.strip() else None


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache (written back first): a cold cache for that file only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def ctrd_dirs() -> set[str]:
    return set(glob.glob("/tmp/ctrd-checkpoint*"))


# ---- capture ------------------------------------------------------------------------------------
def runc_checkpoint(cid: str, dest: Path, criu: str | None, extra: tuple[str, ...] = ()) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    work = dest.with_name(dest.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    dest.mkdir(parents=True, mode=0o700)
    argv = ["runc", *(["--criu", criu] if criu else []), "--root", RUNC_ROOT, "checkpoint",
            "--image-path", str(dest), "--work-path", str(work), "--leave-running", *extra, cid]
    t0 = now()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = now() - t0
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()[-300:]
        tail = [line for line in (work / "dump.log").read_text(errors="replace").splitlines() if "Error" in line][-3:] \
            if (work / "dump.log").exists() else []
        return {"ok": False, "wall_s": round(wall, 3), "error": err, "criu_errors": tail}
    return {"ok": True, "wall_s": round(wall, 3), "criu_s": criu_seconds(work / "dump.log"),
            "image_mb": round(tree_bytes([str(dest)]) / 1e6), "argv": " ".join(argv[:-1]) + " ID"}


# ---- restore into a new container ---------------------------------------------------------------
def prepare(cid: str, name: str, images: Path, how: str) -> float:
    dest = CONTAINERS / cid / "checkpoints" / name
    dest.parent.mkdir(mode=0o700, exist_ok=True)
    t0 = now()
    if how == "copy":
        shutil.copytree(images, dest)
    else:  # relative links: CRIU opens pagemap/pages after entering the container's mount namespace,
        dest.mkdir(mode=0o700)  # where an absolute link to a host path does not resolve
        for f in sorted(images.iterdir()):
            os.symlink(UP.rstrip("/") + str(f.resolve()), dest / f.name)
    return now() - t0


def restore(eng: Engine, label: str, images: Path, how: str, reference: dict, watch: bool = False,
            cold_cache: bool = False) -> dict:
    if cold_cache:
        evict(images / "pages-1.img")
    pages_cached = cached_mb(images / "pages-1.img")
    before = ctrd_dirs()
    w = None
    if watch:
        w = Watch(None, {"ingest": lambda: [str(INGEST)],
                         "ctrd_tmp": lambda: sorted(ctrd_dirs() - before)})
        w.start()
    t0 = now()
    cid = eng.create(label)
    t_created = now()
    prep = prepare(cid, "snap", images, how)
    t_prepared = now()
    eng.start_checkpoint(cid, "snap")
    t_started = now()
    ip = eng.ip(cid)
    t_ready, health = wait_ready(ip)
    t_post = now()
    out = call(ip, "POST", "/tasks", TASK)
    t_result = now()
    phases = w.summary() if w else None
    log = TASKS / cid / "restore.log"
    if KEEP_LOGS:
        KEEP_LOGS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, KEEP_LOGS / f"restore-{label}-{cid[:8]}.log")
    pid = eng.pid(cid)
    offsets = Path(f"/proc/{pid}/timens_offsets").read_text().split()
    offset_s = float(offsets[1]) + float(offsets[2]) / 1e9  # "monotonic SECS NSECS"
    # The runtime's clock vs ours: the task's 'queued' stamp in our clock is between t_ready and t_result.
    queued = out["timings"]["queued"]
    res = {
        "how": how, "pages_cached_mb": pages_cached, "create_s": r3(t_created - t0), "prepare_s": r3(prep), "start_call_s": r3(t_started - t_prepared),
        "ready_s": r3(t_ready - t0), "first_result_s": r3(t_result - t0),
        "criu_restore_s": criu_seconds(log), "criu_pages_read_s": pages_read_seconds(log),
        "ip": ip, "result_matches": out.get("result") == reference, "served_at_restore": health.get("served"),
        "timens_monotonic_offset_s": round(offset_s, 3), "memory_mb": huge_mb(pid),
        "runtime_clock_minus_host_s": round(queued - (t_post + t_result) / 2, 3),
        "new_ctrd_tmp_dirs": sorted(ctrd_dirs() - before), "phases": phases,
    }
    logs = eng.api.logs(cid).decode(errors="replace").strip().splitlines()
    t = now()
    eng.dc.stop(cid)
    res["stop_s"] = r3(now() - t)
    state = eng.api.inspect_container(cid)["State"]
    res["after_stop"] = f"{state['Status']} exit {state['ExitCode']}"
    res["log_lines"] = logs[-3:]
    eng.dc.remove(cid)
    for d in res["new_ctrd_tmp_dirs"]:  # containerd 1.6 leaves its unpacked copy behind: ours to remove
        shutil.rmtree(d, ignore_errors=True)
    return res


# ---- raw CRIU on a host process -----------------------------------------------------------------
RAW_APP = r"""
import os, socket, sys, time
w = bytearray(open(sys.argv[1], 'rb').read())          # ~1 GiB of anonymous memory, like np.load
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 0)); s.listen(8)                    # a listening TCP socket, like the runtime's
open(sys.argv[2], 'w').write(str(sum(w[::4096])))
while True: time.sleep(3600)
"""


def reap(pid: int) -> None:
    """Wait for a restored process to be gone: it was re-parented to us (child subreaper), so reap it."""
    for _ in range(500):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not Path(f"/proc/{pid}").exists():
                return
        time.sleep(0.01)


def raw_criu(criu: str, weights: Path, store: Path, runs: int) -> dict:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: restored tasks come to us
    store.mkdir(parents=True, exist_ok=True)
    ready = store / "ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", RAW_APP, str(weights), str(ready)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready.exists():
        time.sleep(0.05)
    images = store / "raw"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    t0 = now()
    subprocess.run([criu, "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log", "-v4"], check=True,
                   capture_output=True)  # without --leave-running: the process ends, its PID is free again
    dump_wall = now() - t0
    proc.wait()
    out = {"dump_wall_s": r3(dump_wall), "dump_criu_s": criu_seconds(images / "dump.log"),
           "image_mb": round(tree_bytes([str(images)]) / 1e6), "restores": []}
    for i in range(runs):
        t0 = now()
        r = subprocess.run([criu, "restore", "-d", "-D", str(images), "-o", f"restore{i}.log", "-v4"],
                           capture_output=True, text=True)
        wall = now() - t0
        out["restores"].append({"wall_s": r3(wall), "ok": r.returncode == 0,
                                "criu_s": criu_seconds(images / f"restore{i}.log"),
                                "pages_read_s": pages_read_seconds(images / f"restore{i}.log")})
        if r.returncode == 0:
            os.kill(proc.pid, signal.SIGKILL)  # same PID as before (restored); free it for the next run
            reap(proc.pid)
    shutil.rmtree(images, ignore_errors=True)
    return out


def cold_boot(eng: Engine, image: str, weights: Path, cold_cache: bool) -> dict:
    """The agent's way: image check, create, start, poll /health to READY, first task."""
    if cold_cache and weights.exists():
        evict(weights)
    t0 = now()
    eng.dc.has_image(image)
    cid = eng.create("cold")
    ip = eng.dc.start(cid).split(":")[0]
    t_ready, health = wait_ready(ip, 600)
    t_post = now()
    out = call(ip, "POST", "/tasks", TASK)
    t_res = now()
    tm = health["timings"]
    eng.dc.stop(cid)
    eng.dc.remove(cid)
    return {"ready_s": r3(t_ready - t0), "first_result_s": r3(t_res - t0),
            "on_start_s": r3(tm["on_start_end"] - tm["on_start_start"]),
            "runtime_clock_minus_host_s": r3(out["timings"]["queued"] - (t_post + t_res) / 2),
            "result": out["result"]}


# ---- main ---------------------------------------------------------------------------------------
def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=None, help="built examples/weights image (default: build it)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", action="store_true", help="also time docker checkpoint create/start (slow)")
    ap.add_argument("--copy", action="store_true", help="also time runc images copied (not linked)")
    ap.add_argument("--criu", default=None, help="criu binary for runc/raw (default: criu on PATH)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cold-cache", action="store_true",
                    help="evict the weights file before each cold boot and the disk snapshot before each restore")
    ap.add_argument("--keep-logs", default=None, help="copy CRIU restore logs into this folder")
    args = ap.parse_args()
    global KEEP_LOGS
    KEEP_LOGS = Path(args.keep_logs) if args.keep_logs else None
    criu = args.criu or shutil.which("criu")
    image = args.image or json.loads(subprocess.run(
        [str(REPO / ".venv/bin/beamctl"), "build", "-f", str(REPO / "examples/weights"), "--json"],
        capture_output=True, text=True, check=True).stdout)["image"]
    weights = DATA / "volumes/weights/weights/weights-1024mib.npy"
    report: dict = {"image": image, "cold_cache": args.cold_cache,
                    "thp": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip(), "criu": subprocess.run([criu, "--version"], capture_output=True,
                                                          text=True).stdout.split("\n")[0],
                    "criu_on_path": subprocess.run(["criu", "--version"], capture_output=True,
                                                   text=True).stdout.split("\n")[0]}
    for what, line in (("--criu", report["criu"]), ("criu on PATH (containerd's restore)", report["criu_on_path"])):
        found = re.search(r"Version: (\d+)\.(\d+)", line)
        if not found or (int(found.group(1)), int(found.group(2))) < (4, 2):
            raise SystemExit(f"{what} is {line or 'missing'}: CRIU < 4.2 cannot dump TCP sockets on kernels >= 6.16 "
                             "(SO_PASSCRED/SO_PASSSEC); install 4.2.1 with BEAMCTL_CRIU_SUITE=forky "
                             "scripts/install-criu.sh (see docs/checkpoint-spike.md)")
    eng = Engine(image)
    try:
        # one cold boot first: it makes the weights file if missing, and gives the reference result
        reference = cold_boot(eng, image, weights, False)["result"]
        cold: list[dict] = []

        # the original: READY after on_start, no task yet, agent connections closed
        orig = eng.create("orig")
        ip = eng.dc.start(orig).split(":")[0]
        wait_ready(ip, 600)
        report["original_memory_mb"] = huge_mb(eng.pid(orig))
        report["original_ip"] = ip

        # an open keep-alive connection makes the dump fail: show it once
        conn = http.client.HTTPConnection(ip, 8000, timeout=5)
        conn.request("GET", "/health")
        conn.getresponse().read()
        report["dump_with_open_connection"] = runc_checkpoint(orig, DISK_STORE / "conn", criu)
        conn.close()
        time.sleep(0.2)
        shutil.rmtree(DISK_STORE / "conn", ignore_errors=True)
        shutil.rmtree(DISK_STORE / "conn.work", ignore_errors=True)

        caps: dict = {}
        for label, dest in (("runc_disk", DISK_STORE / "snap"), ("runc_shm", SHM_STORE / "snap")):
            rows = [runc_checkpoint(orig, dest, criu) for _ in range(args.runs)]
            caps[label] = {"runs": rows, "median_wall_s": med(rows, "wall_s"), "median_criu_s": med(rows, "criu_s")}
            print(f"capture {label}:", json.dumps(caps[label]), flush=True)
        if args.baseline:
            w = Watch(orig, {"ctd_tmp": lambda: glob.glob("/tmp/ctd-checkpoint*"), "ingest": lambda: [str(INGEST)],
                             "dest": lambda: [str(CONTAINERS / orig / "checkpoints" / "base")]})
            w.start()
            t0 = now()
            eng.docker_checkpoint(orig, "base")
            caps["docker"] = {"wall_s": r3(now() - t0), "phases": w.summary()}
            print("capture docker:", json.dumps(caps["docker"]), flush=True)
        report["capture"] = caps

        # the original still serves after the captures (leave-running): its answer is the reference
        out = call(ip, "POST", "/tasks", TASK)
        report["original_after_capture_matches_cold"] = out["result"] == reference

        # side by side, interleaved (the machine is shared and noisy): cold boot, restore from disk, from tmpfs
        rest: dict = {"link_disk": [], "link_shm": []}
        for i in range(args.runs):
            row = cold_boot(eng, image, weights, args.cold_cache)
            row["result_matches"] = row.pop("result") == reference
            cold.append(row)
            rest["link_disk"].append(restore(eng, "link-disk", DISK_STORE / "snap", "link", reference,
                                             cold_cache=args.cold_cache))
            rest["link_shm"].append(restore(eng, "link-shm", SHM_STORE / "snap", "link", reference))
            print(f"run {i}: cold {cold[-1]['first_result_s']}  disk {rest['link_disk'][-1]['first_result_s']}"
                  f"  shm {rest['link_shm'][-1]['first_result_s']}", flush=True)
        report["cold_boot"] = {"runs": cold, "median_first_result_s": med(cold, "first_result_s"),
                               "median_ready_s": med(cold, "ready_s")}
        if args.copy:
            rest["copy_runc"] = [restore(eng, "copy-runc", DISK_STORE / "snap", "copy", reference, watch=True)]
        if args.baseline:
            rest["copy_docker"] = [restore(eng, "copy-docker", CONTAINERS / orig / "checkpoints" / "base", "copy",
                                           reference, watch=True)]
        rest = {label: {"runs": rows, "median_ready_s": med(rows, "ready_s"),
                        "median_first_result_s": med(rows, "first_result_s"),
                        "median_criu_restore_s": med(rows, "criu_restore_s")} for label, rows in rest.items()}
        report["restore"] = rest
        eng.dc.stop(orig)
        eng.dc.remove(orig)
        after = restore(eng, "after-rm", SHM_STORE / "snap", "link", reference)
        report["restore_after_original_removed"] = {k: after[k] for k in ("ready_s", "result_matches", "ip")}
        print("restore after the original was removed:", report["restore_after_original_removed"], flush=True)

        # raw CRIU, same memory, same store kinds
        report["raw_criu"] = {"disk": raw_criu(criu, weights, DISK_STORE, args.runs),
                              "shm": raw_criu(criu, weights, SHM_STORE, args.runs)}
        print("raw criu:", json.dumps(report["raw_criu"]), flush=True)
    finally:
        eng.remove_all()
        shutil.rmtree(DISK_STORE, ignore_errors=True)
        shutil.rmtree(SHM_STORE, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    cb = report["cold_boot"]["median_first_result_s"]
    print("\nsummary (medians, seconds; first result = from the call until POST /tasks answered)")
    print(f"  cold boot                      ready {report['cold_boot']['median_ready_s']}  first result {cb}")
    for k, v in report["capture"].items():
        print(f"  capture {k:22} wall {v.get('median_wall_s', v.get('wall_s'))}  criu {v.get('median_criu_s')}")
    for k, v in report["restore"].items():
        fr = v["median_first_result_s"]
        print(f"  restore {k:22} ready {v['median_ready_s']}  first result {fr}  criu {v['median_criu_restore_s']}"
              f"  speed-up vs cold {round(cb / fr, 1) if fr else None}x")
    for k, v in report["raw_criu"].items():
        rs = [r["wall_s"] for r in v["restores"] if r["ok"]]
        print(f"  raw criu {k:21} dump {v['dump_wall_s']}  restore {round(statistics.median(rs), 3) if rs else None}")


if __name__ == "__main__":
    main()
