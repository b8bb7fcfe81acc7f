"""GPU app snapshot vs cold start, on one GPU host, with the project's own code (process_snapshot + cuda_ckpt).

    python bench/gpu_snapshot.py [--out FILE] [--work DIR] [--tensors 8] [--tensor-mib 1024] [--criu criu]
    python bench/gpu_snapshot.py --dry-run        # prerequisites and the plan; needs no GPU
    python bench/gpu_snapshot.py --cpu-rehearsal  # the whole sequence with a torch-free CPU stand-in app

Steps: (a) write N x 1 GiB random fp16 safetensors once (reused when present); (b) drop the page cache;
(c) cold-start the app (import torch, load the weights onto cuda:0, warm-up matmuls, checksum -> ready file),
once with a cold and once with a warm page cache; (d) snapshot the second: CUDA lock + checkpoint, CRIU dump to
disk (the app dies); (e) restore it four ways: from disk with a dropped cache, held in memory as the agent
holds ready snapshots (resident.py: files mlock'ed, then the cache dropped), from a copy on tmpfs (/dev/shm),
from disk after warm(); each time SIGUSR1 makes the app recompute, and its checksum must equal the cold
start's; (f) print and write JSON (--out, default $OUT/gpu_snapshot.json): every phase's seconds, the
snapshot's size, and each restored start's speed-up over the cold starts. Written after every step, so a
run cut short still leaves what it measured. About 2-4 minutes on an H200 host (FIELD-NOTES.md numbers).

Needs: root (CRIU, drop_caches), CRIU on PATH or --criu, torch + safetensors in this Python
(pip install --no-index --find-links WHEELS torch safetensors), one NVIDIA GPU, driver >= 570.
Exit: 0 done; 1 a step failed (the JSON says which); 2 prerequisites missing; 3 no usable GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beamctl.agent import cuda_ckpt, gpu_snapshots, usage  # noqa: E402
import process_snapshot as ps  # noqa: E402  bench/process_snapshot.py (scripts run from bench/)
from beamctl.agent.resident import Resident  # noqa: E402

ROWS = 16384  # every weight is ROWS x cols fp16; the app multiplies a 64 x ROWS input through all of them
GIB = 1 << 30
PR_SET_CHILD_SUBREAPER = 36
VARIANTS = ("disk_cold", "held", "tmpfs", "disk_warm")  # held: as the agent keeps a snapshot (resident.py)
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")



class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "cpu" if args.cpu_rehearsal else "torch"
        self.work = Path(args.work)
        self.weights = self.work / ("weights" if self.mode == "torch" else "weights-cpu")
        self.images = self.work / "snapshot"
        self.shm = Path(args.shm) / "beamctl-gpu-snapshot"
        self.out = Path(args.out)
        self.cuda = None
        self.started = time.monotonic()
        self.thp_before = THP.read_text().split("[", 1)[1].split("]")[0] if args.thp_ab else ""
        self.live: dict[int, subprocess.Popen | None] = {}  # app processes to kill however the run ends
        self.res: dict = {"mode": self.mode, "config": {"tensors": args.tensors, "tensor_mib": args.tensor_mib,
                                                        "work": str(self.work), "criu": args.criu},
                          "host": host_facts(), "steps": {}, "restores": {}, "errors": []}

    # -- the sequence ---------------------------------------------------------------------------
    def run(self) -> int:
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # restored apps become our children
        if self.mode == "torch":
            self.cuda = cuda_ckpt.load()
            self.res["host"]["cuda_driver_api"] = self.cuda.driver_version()
        try:
            self.prepare_weights()
            cold = self.cold_start("cold_cache", drop=True)
            self.stop(cold["proc"].pid, cold["proc"])
            app = self.cold_start("warm_cache", drop=False)
            self.reference = app["ready"]["digest"]
            same = cold["ready"]["digest"] == self.reference
            self.res["steps"]["cold_starts_agree"] = same
            self.snapshot(app)
            for variant, key, thp in self.plan_restores():
                if self.left() < 60:
                    self.res["restores"][key] = {"skipped": f"under 60 s of the {self.args.budget_s} s budget left"}
                    continue
                if thp:
                    THP.write_text(thp + "\n")
                self.restore(variant, key)
                if thp:
                    self.res["restores"][key]["thp"] = thp
            self.summarise()
            ok = all(r.get("output_identical") for r in self.res["restores"].values() if "skipped" not in r)
            return 0 if ok and not self.res["errors"] else 1
        except Exception as e:  # record, and end cleanly: the JSON tells what was measured up to here
            self.res["errors"].append(f"{type(e).__name__}: {e}")
            say(f"FAILED: {type(e).__name__}: {e}")
            return 1
        finally:
            if self.thp_before:
                THP.write_text(self.thp_before + "\n")
            for pid, proc in list(self.live.items()):
                self.stop(pid, proc)
            shutil.rmtree(self.shm, ignore_errors=True)
            self.save()

    def plan_restores(self) -> list[tuple[str, str, str | None]]:
        """(variant, result key, THP setting or None): each variant once, or with --thp-ab N the agent's
        way (held) N times under each of the kernel's transparent huge page settings, alternating."""
        if not self.args.thp_ab:
            return [(v, v, None) for v in VARIANTS]
        return [("held", f"held_thp-{thp}_{i + 1}", thp)
                for i in range(self.args.thp_ab) for thp in ("madvise", "always")]

    def prepare_weights(self) -> None:
        want = {"tensors": self.args.tensors, "tensor_mib": self.args.tensor_mib, "mode": self.mode}
        marker = self.weights / "weights.json"
        if marker.exists() and json.loads(marker.read_text()) == want:
            self.res["steps"]["write_weights_s"] = 0.0
            say(f"weights present in {self.weights}")
            return
        shutil.rmtree(self.weights, ignore_errors=True)
        self.weights.mkdir(parents=True)
        t = time.monotonic()
        if self.mode == "torch":
            cols = self.args.tensor_mib * (1 << 20) // 2 // ROWS
            subprocess.run([sys.executable, str(REPO / "bench" / "gpu_prepare.py"), str(self.weights), str(self.args.tensors), str(ROWS),
                            str(cols)], check=True, timeout=max(self.left(), 1))
        else:
            for i in range(self.args.tensors):
                (self.weights / f"w{i:02d}.bin").write_bytes(os.urandom(self.args.tensor_mib << 20))
        os.sync()
        marker.write_text(json.dumps(want))
        self.res["steps"]["write_weights_s"] = time.monotonic() - t
        self.res["steps"]["weights_bytes"] = sum(p.stat().st_size for p in self.weights.iterdir())
        say(f"wrote {self.res['steps']['weights_bytes'] / 1e9:.1f} GB of weights in "
            f"{self.res['steps']['write_weights_s']:.1f} s")

    def cold_start(self, name: str, *, drop: bool) -> dict:
        dropped = drop_caches() if drop else False
        for f in ("ready", "result", "app.log"):
            (self.work / f).unlink(missing_ok=True)
        env = dict(os.environ)
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # a one-GPU app (cuda_ckpt.gpu_refusal)
        t = time.monotonic()
        with open(os.devnull) as stdin, open(self.work / "app.log", "w") as log:
            proc = subprocess.Popen([sys.executable, str(self.work / "app.py"), self.mode, str(self.weights),
                                     str(self.work / "ready"), str(self.work / "result")], stdin=stdin, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=self.work)
        self.live[proc.pid] = proc
        ready = self.wait_json(self.work / "ready", proc, timeout=120)
        seconds = time.monotonic() - t
        self.res["steps"][f"cold_start_{name}"] = {"seconds": seconds, "page_cache_dropped": dropped,
                                                  **{k: ready[k] for k in ("import_s", "load_s", "warmup_s")}}
        say(f"cold start ({name.replace('_', ' ')}): {seconds:.2f} s (import {ready['import_s']:.2f}, "
            f"weights {ready['load_s']:.2f}, warm-up {ready['warmup_s']:.2f})")
        self.save()
        return {"proc": proc, "ready": ready}

    def snapshot(self, app: dict) -> None:
        proc = app["proc"]
        gpu = sorted(cuda_ckpt.cuda_processes(self.cuda, proc.pid)) if self.cuda else []  # as the driver says
        if self.cuda and not gpu:
            raise RuntimeError(f"the app (pid {proc.pid}) has no /dev/nvidia* open: nothing for the driver to checkpoint")
        shutil.rmtree(self.images, ignore_errors=True)
        gpu_bytes = gpu_snapshots.device_memory(proc.pid, usage._smi) if self.cuda else None  # what CUDA moves
        d = ps.dump(proc.pid, self.images, criu=self.args.criu, timeout_s=max(self.left(), 1), cuda=self.cuda,
                    cuda_pids=gpu)
        proc.wait(timeout=30)  # CRIU killed it; reaped, so its PID is free for the restores
        self.live.pop(proc.pid, None)
        self.log_size = (self.work / "app.log").stat().st_size
        self.res["steps"]["snapshot"] = {"seconds": d.seconds, "size_bytes": d.size_bytes, "cuda_pids": d.cuda_pids,
                                         "gpu_memory_bytes": gpu_bytes, **d.breakdown}
        say(f"snapshot: {d.seconds:.2f} s, {d.size_bytes / 1e9:.2f} GB ("
            + ", ".join(f"{k} {v:.2f}" for k, v in d.breakdown.items()) + ")")
        self.save()

    def restore(self, variant: str, key: str) -> None:
        images, prep, held = self.images, {}, None
        if variant == "disk_cold":
            prep["page_cache_dropped"] = drop_caches()
        elif variant == "held":  # the agent's way: the snapshot's files locked in memory, then the cache dropped
            held = Resident(1 << 50)
            t = time.monotonic()
            prep["held"] = held.keep("gpu", 1, self.images)
            prep["hold_s"] = time.monotonic() - t
            prep["page_cache_dropped"] = drop_caches()
        elif variant == "disk_warm":
            drop_caches()
            n, s = ps.warm(self.images)
            prep.update(warm_s=s, warm_bytes=n)
        else:
            t = time.monotonic()
            shutil.rmtree(self.shm, ignore_errors=True)
            shutil.copytree(self.images, self.shm)
            prep["copy_to_tmpfs_s"] = time.monotonic() - t
            prep["page_cache_dropped"] = drop_caches()  # tmpfs pages stay: only the snapshot's disk copy goes
            images = self.shm
        with open(self.work / "app.log", "r+") as log:  # CRIU checks open files' sizes: undo what a run added
            log.truncate(self.log_size)
        (self.work / "result").unlink(missing_ok=True)
        try:
            r = ps.restore(images, criu=self.args.criu, timeout_s=max(self.left(), 1), cuda=self.cuda)
        finally:
            if held is not None:
                held.release("gpu", 1)
        self.live[r.pid] = None
        t = time.monotonic()
        os.kill(r.pid, signal.SIGUSR1)
        got = self.wait_json(self.work / "result", None, timeout=60, pid=r.pid)
        first = time.monotonic() - t
        total = r.seconds + first
        out = {**r.breakdown, "restore_s": r.seconds,
               "first_result_s": first, "restored_start_s": total, "output_identical": got["digest"] == self.reference,
               "compute_s": got["compute_s"], **prep}
        self.res["restores"][key] = out
        say(f"restore {key}: {total:.2f} s to the first result (" + ", ".join(
            f"{k} {v:.2f}" for k, v in r.breakdown.items()) + f", result {first:.2f}); output "
            + ("identical" if out["output_identical"] else "DIFFERENT"))
        self.stop(r.pid, None)
        self.save()

    def summarise(self) -> None:
        steps = self.res["steps"]
        cold = steps["cold_start_cold_cache"]["seconds"]
        warm = steps["cold_start_warm_cache"]["seconds"]
        for variant, r in self.res["restores"].items():
            if "restored_start_s" in r:
                r["speedup_vs_cold_cache"] = cold / r["restored_start_s"]
                r["speedup_vs_warm_cache"] = warm / r["restored_start_s"]
                say(f"{variant}: {r['speedup_vs_cold_cache']:.2f}x faster than a cold start with a cold cache "
                    f"({cold:.2f} s), {r['speedup_vs_warm_cache']:.2f}x with a warm cache ({warm:.2f} s)")

    # -- helpers --------------------------------------------------------------------------------
    def wait_json(self, path: Path, proc: subprocess.Popen | None, *, timeout: float, pid: int | None = None) -> dict:
        deadline = time.monotonic() + min(timeout, max(self.left(), 1))
        while time.monotonic() < deadline:
            if path.exists():
                return json.loads(path.read_text())
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the app exited ({proc.returncode}) before writing {path.name}: {self.log_tail()}")
            if pid is not None and not Path(f"/proc/{pid}").exists():
                raise RuntimeError(f"the restored app {pid} ended before writing {path.name}: {self.log_tail()}")
            time.sleep(0.005)
        raise RuntimeError(f"no {path.name} from the app within {timeout:.0f} s: {self.log_tail()}")

    def stop(self, pid: int, proc: subprocess.Popen | None) -> None:
        self.live.pop(pid, None)
        if self.cuda is not None and Path(f"/proc/{pid}").exists():
            # lock + checkpoint first: SIGKILL of a restored CUDA process holding its GPU can hang the
            # driver and the host (NVIDIA/cuda-checkpoint#53, driver 595)
            cuda_ckpt.quiesce(self.cuda, sorted(cuda_ckpt.cuda_processes(self.cuda, pid)), 5000)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if proc is not None:
            proc.wait()
        else:
            try:
                os.waitpid(pid, 0)  # ours as subreaper: the PID is free again for the next restore
            except ChildProcessError:
                while Path(f"/proc/{pid}").exists():
                    time.sleep(0.01)

    def log_tail(self) -> str:
        try:
            return " | ".join((self.work / "app.log").read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no app.log)"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def save(self) -> None:
        self.res["elapsed_s"] = time.monotonic() - self.started
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.res, indent=1))


def say(text: str) -> None:
    print(f"[gpu_snapshot] {text}", flush=True)


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False when this machine does not let us."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def host_facts() -> dict:
    facts = {"kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        try:
            facts["gpus"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


def checks(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(missing prerequisites, GPU problems, notes)."""
    missing, gpu, notes = [], [], []
    if not args.cpu_rehearsal:
        for mod in ("torch", "safetensors"):
            if importlib.util.find_spec(mod) is None:
                missing.append(f"Python module {mod} is not installed in {sys.executable}: "
                               f"pip install --no-index --find-links WHEEL_DIR torch safetensors")
        if args.tensor_mib < 512:
            missing.append(f"--tensor-mib {args.tensor_mib}: each weight must be at least 512 MiB ({ROWS} x {ROWS} fp16)")
    criu = shutil.which(args.criu)
    if criu is None:
        missing.append(f"CRIU not found as {args.criu!r}: put the project's CRIU wrapper on PATH or pass --criu PATH")
    else:
        notes.append(f"CRIU: {criu}")
    if os.geteuid() != 0:
        missing.append("not root: CRIU and drop_caches need root")
    if not args.cpu_rehearsal:
        gpus = sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))
        if not gpus:
            gpu.append("no NVIDIA GPU here (/dev/nvidia0 missing): run this on the GPU host; --dry-run and "
                       "--cpu-rehearsal work without one")
        else:
            try:
                cuda = cuda_ckpt.load()
                notes.append(f"driver: CUDA API {cuda.driver_version()}, {len(gpus)} GPU(s); the app uses one")
            except cuda_ckpt.CudaCheckpointError as e:
                gpu.append(e.reason)
    need = args.tensors * args.tensor_mib * (1 << 20)
    work = Path(args.work)
    free_disk = shutil.disk_usage(next(p for p in (work, *work.parents) if p.exists())).free
    if free_disk < 2 * need + 4 * GIB:
        missing.append(f"{work}: {free_disk / GIB:.1f} GiB free, need ~{(2 * need + 4 * GIB) / GIB:.1f} "
                       f"(weights + snapshot): pass --work on a bigger disk or fewer --tensors")
    shm = Path(args.shm)
    if shm.is_dir() and shutil.disk_usage(shm).free < need + 4 * GIB:
        notes.append(f"{shm} has under {(need + 4 * GIB) / GIB:.1f} GiB free: the tmpfs restore may fail")
    return missing, gpu, notes


def plan(args: argparse.Namespace) -> list[str]:
    gb = args.tensors * args.tensor_mib / 1024
    app = "CPU stand-in (no torch)" if args.cpu_rehearsal else "torch app on cuda:0"
    return [f"1. weights: {args.tensors} x {args.tensor_mib} MiB ({gb:.1f} GiB) in {args.work} (reused when present)",
            f"2. cold start of the {app}: page cache dropped, then again with it warm",
            "3. snapshot of the second: CUDA lock + checkpoint, CRIU dump to disk" + (" (no CUDA)" * args.cpu_rehearsal),
            f"4. restores: {', '.join(VARIANTS)}; each: SIGUSR1 -> recompute -> checksum == cold start's",
            f"5. JSON -> {args.out}; budget {args.budget_s} s (restores skipped when under 60 s left)"]


def main(argv: list[str] | None = None) -> int:
    default_out = Path(os.environ["OUT"]) / "gpu_snapshot.json" if os.environ.get("OUT") else Path("gpu_snapshot.json")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=str(default_out), help="results JSON (default: $OUT/gpu_snapshot.json)")
    p.add_argument("--work", default="/var/tmp/beamctl-gpu-snapshot", help="weights, snapshot, app files (a disk)")
    p.add_argument("--shm", default="/dev/shm", help="tmpfs for the hot-snapshot restore")
    p.add_argument("--tensors", type=int, default=8, help="number of weight tensors (default 8)")
    p.add_argument("--tensor-mib", type=int, default=1024, help="size of each in MiB (default 1024)")
    p.add_argument("--criu", default=os.environ.get("BEAMCTL_CRIU", "criu"), help="CRIU binary or wrapper")
    p.add_argument("--budget-s", type=int, default=450, help="stop restoring when this is nearly spent")
    p.add_argument("--thp-ab", type=int, default=0, metavar="N",
                   help="instead of the four variants: N held restores under THP madvise and N under always, "
                        "alternating (sets the host's THP; puts it back)")
    p.add_argument("--dry-run", action="store_true", help="check prerequisites, print the plan, run nothing")
    p.add_argument("--cpu-rehearsal", action="store_true",
                   help="run the whole sequence with a CPU stand-in app (no torch, no GPU, no CUDA steps)")
    args = p.parse_args(argv)
    if args.cpu_rehearsal and args.tensor_mib == 1024 and args.tensors == 8:
        args.tensors, args.tensor_mib = 4, 64  # a quick rehearsal unless sizes are given
    missing, gpu, notes = checks(args)
    if args.dry_run:
        for line in plan(args):
            say(line)
        for line in notes:
            say(f"ok: {line}")
        for line in missing + gpu:
            say(f"MISSING: {line}")
        say("ready to run" if not missing and not gpu else "not ready: fix the MISSING lines above")
        return 2 if missing else (3 if gpu else 0)
    if missing:
        for line in missing:
            say(f"MISSING: {line}")
        return 2
    if gpu:
        for line in gpu:
            say(f"NO GPU: {line}")
        return 3
    Path(args.work).mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `timeout` stops us: finally puts THP back, kills apps
    shutil.copy(REPO / "bench" / "gpu_app.py", Path(args.work) / "app.py")
    for line in plan(args):
        say(line)
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
