"""What the real CUDA driver answers where the agent's code (and tests/agent/test_cuda_ckpt.py's FakeDriver)
assume an answer: issue 20 part 2 item 4. Run on a GPU host as root (bench/gpu_device.sh runs it):

    python3 bench/gpu_driver_probe.py [--out FILE]

A small CUDA app (ctypes on libcuda, no torch: it starts in well under a second) allocates and fills 1 GiB
on GPU 0. The probe then records, for that app, for a process with no CUDA context, for a gone pid, for a
forked child of the app (it inherits the app's /dev/nvidia* files, not its context) and for an NVML-only
process: the raw CUresult of each checkpoint call, in and out of order; what beamctl.agent's own functions
(cuda_ckpt, gpu_snapshots, gpus, usage) make of this host; and whether the app's memory is intact after
each suspend/resume. Every answer is written to the JSON as it comes, so a probe cut short still says
what it saw. Exit 0 when every step ran (whatever the driver answered), 1 when a step raised.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beamctl.agent import cuda_ckpt as cc  # noqa: E402
from beamctl.agent import gpu_snapshots, gpus, usage  # noqa: E402

APP = r"""
import ctypes, os, sys, time
lib = ctypes.CDLL("libcuda.so.1")
def ok(rc, what):
    if rc != 0:
        print(f"ERR {what} {rc}", flush=True); sys.exit(3)
ok(lib.cuInit(0), "cuInit")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
ok(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ok(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
ok(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
SIZE = 1 << 30
ok(lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(SIZE)), "cuMemAlloc")
ok(lib.cuMemsetD8_v2(ctypes.c_uint64(ptr.value), ctypes.c_ubyte(0x5A), ctypes.c_size_t(SIZE)), "cuMemsetD8")
ok(lib.cuCtxSynchronize(), "cuCtxSynchronize")
print("READY", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "check":
        buf = (ctypes.c_ubyte * (1 << 20))()
        good = True
        for off in (0, SIZE - (1 << 20)):
            rc = lib.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(ptr.value + off), ctypes.c_size_t(1 << 20))
            if rc != 0:
                print(f"CHECK rc={rc}", flush=True); break
            good = good and all(b == 0x5A for b in bytes(buf)[:4096]) and bytes(buf).count(0x5A) == (1 << 20)
        else:
            print("CHECK ok" if good else "CHECK bad", flush=True)
    elif cmd == "fork":
        child = os.fork()
        if child == 0:
            time.sleep(600); os._exit(0)
        print(f"CHILD {child}", flush=True)
"""

INIT_ONLY_APP = r"""
import ctypes, time
print(f"INIT {ctypes.CDLL('libcuda.so.1').cuInit(0)}", flush=True)
time.sleep(600)
"""

FAULTS = r"""
import ctypes, mmap, sys, time
size, huge = int(sys.argv[1]), sys.argv[2] == "huge"
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if huge:
    m.madvise(mmap.MADV_HUGEPAGE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
t = time.monotonic()
ctypes.memset(addr, 1, size)
print(size / (time.monotonic() - t) / 1e9)
"""

NVML_APP = r"""
import ctypes, sys, time
lib = ctypes.CDLL("libnvidia-ml.so.1")
rc = lib.nvmlInit_v2()
print(f"NVML {rc}", flush=True)
time.sleep(600)
"""


class Probe:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.res: dict = {"steps": {}, "errors": []}
        self.procs: list[subprocess.Popen] = []

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.res, indent=1, default=str))

    def step(self, name: str, fn) -> object:
        t = time.monotonic()
        try:
            value = fn()
        except Exception as e:  # the answer is the finding
            value = {"raised": f"{type(e).__name__}: {e}"}
        self.res["steps"][name] = {"value": value, "s": round(time.monotonic() - t, 4)}
        print(f"[probe] {name}: {json.dumps(value, default=str)[:400]}", flush=True)
        self.save()
        return value

    def spawn(self, code: str, first: str) -> tuple[subprocess.Popen, str]:
        p = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.procs.append(p)
        line = p.stdout.readline().strip()
        if not line.startswith(first):
            raise RuntimeError(f"the helper said {line!r}, not {first}")
        return p, line

    def ask(self, app: subprocess.Popen, cmd: str) -> str:
        app.stdin.write(cmd + "\n")
        app.stdin.flush()
        return app.stdout.readline().strip()


def raw(cuda: cc.CudaCheckpoint, call: str, pid: int) -> dict:
    """The driver's own answer to one call (its CUresult, named), the state before and after."""
    args = {"Lock": cc.LockArgs(timeoutMs=2000), "Checkpoint": cc.CheckpointArgs(), "Restore": cc.RestoreArgs(),
            "Unlock": cc.UnlockArgs()}[call]
    before = state(cuda, pid)
    rc = getattr(cuda.lib, f"cuCheckpointProcess{call}")(pid, ctypes.pointer(args))
    return {"rc": rc, "name": cuda.error_name(rc) if rc else "CUDA_SUCCESS", "before": before,
            "after": state(cuda, pid)}


def state(cuda: cc.CudaCheckpoint, pid: int) -> str:
    s = ctypes.c_int(-1)
    rc = cuda.lib.cuCheckpointProcessGetState(pid, ctypes.pointer(s))
    return cc.STATES.get(s.value, f"state-{s.value}") if rc == 0 else f"error {rc} {cuda.error_name(rc)}"


def restore_thread(cuda: cc.CudaCheckpoint, pid: int) -> str:
    tid = ctypes.c_int(-1)
    rc = cuda.lib.cuCheckpointProcessGetRestoreThreadId(pid, ctypes.pointer(tid))
    return f"tid {tid.value}" if rc == 0 else f"error {rc} {cuda.error_name(rc)}"


def run(p: Probe) -> None:
    cuda = cc.load()
    s = p.step
    s("driver_api", cuda.driver_version)
    s("thp", lambda: Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip())
    for kind in ("plain", "huge"):  # one thread touching 8 GiB of new anonymous memory: what CRIU's restore does
        s(f"page_fault_fill_gb_per_s_{kind}", lambda kind=kind: float(subprocess.run(
            [sys.executable, "-c", FAULTS, str(8 << 30), kind], capture_output=True, text=True, check=True,
            timeout=60).stdout))
    s("inventory", lambda: [dataclasses.asdict(g) for g in gpus.inventory()])
    s("device_rules", gpus.host_device_rules)
    app, _ = p.spawn(APP, "READY")
    pid = app.pid
    p.res["app_pid"] = pid
    sleeper = subprocess.Popen(["sleep", "600"])
    p.procs.append(sleeper)
    nvml, said = p.spawn(NVML_APP, "NVML")
    s("nvml_helper", lambda: said)
    s("state_of_cuda_app", lambda: state(cuda, pid))
    s("state_of_plain_process", lambda: state(cuda, sleeper.pid))
    s("state_of_gone_pid", lambda: state(cuda, 4194000))
    s("state_of_nvml_only_process", lambda: state(cuda, nvml.pid))
    init_only, said = p.spawn(INIT_ONLY_APP, "INIT")
    s("cuinit_only_helper", lambda: said)
    s("state_of_cuinit_only_process", lambda: state(cuda, init_only.pid))
    s("cuinit_only_holds_dev_nvidia", lambda: cc.gpu_holders([init_only.pid]))
    s("cuda_processes_of_cuinit_only", lambda: cc.cuda_processes(cuda, init_only.pid))
    s("restore_thread_of_nvml_only_process", lambda: restore_thread(cuda, nvml.pid))
    s("nvml_only_lock", lambda: raw(cuda, "Lock", nvml.pid))
    s("nvml_only_checkpoint", lambda: raw(cuda, "Checkpoint", nvml.pid))
    s("nvml_only_holders_after_checkpoint", lambda: cc.gpu_holders([nvml.pid]))
    s("nvml_only_restore", lambda: raw(cuda, "Restore", nvml.pid))
    s("nvml_only_unlock", lambda: raw(cuda, "Unlock", nvml.pid))
    s("cuinit_only_lock", lambda: raw(cuda, "Lock", init_only.pid))
    s("cuinit_only_checkpoint", lambda: raw(cuda, "Checkpoint", init_only.pid))
    s("cuinit_only_holders_after_checkpoint", lambda: cc.gpu_holders([init_only.pid]))
    s("cuinit_only_restore", lambda: raw(cuda, "Restore", init_only.pid))
    s("cuinit_only_unlock", lambda: raw(cuda, "Unlock", init_only.pid))
    s("nvml_only_holds_dev_nvidia", lambda: cc.gpu_holders([nvml.pid]))
    s("restore_thread_of_running_app", lambda: restore_thread(cuda, pid))
    s("restore_thread_of_plain_process", lambda: restore_thread(cuda, sleeper.pid))
    s("smi_apps", lambda: usage.gpu_processes(usage._smi(usage.APPS_QUERY) or ""))
    s("device_memory_of_app", lambda: gpu_snapshots.device_memory(pid, usage._smi))
    s("free_query", lambda: usage._smi(gpu_snapshots.FREE_QUERY))
    # out of order, from running
    for call in ("Checkpoint", "Restore", "Unlock"):
        s(f"{call.lower()}_while_running", lambda call=call: raw(cuda, call, pid))
    s("lock", lambda: raw(cuda, "Lock", pid))
    s("lock_again", lambda: raw(cuda, "Lock", pid))
    s("restore_while_locked", lambda: raw(cuda, "Restore", pid))
    s("checkpoint", lambda: raw(cuda, "Checkpoint", pid))
    s("holders_after_checkpoint", lambda: cc.gpu_holders(cc.process_tree(pid)))
    s("smi_apps_after_checkpoint", lambda: usage.gpu_processes(usage._smi(usage.APPS_QUERY) or ""))
    s("restore_thread_while_checkpointed", lambda: restore_thread(cuda, pid))
    s("checkpoint_again", lambda: raw(cuda, "Checkpoint", pid))
    s("lock_while_checkpointed", lambda: raw(cuda, "Lock", pid))
    s("unlock_while_checkpointed", lambda: raw(cuda, "Unlock", pid))
    s("restore", lambda: raw(cuda, "Restore", pid))
    s("unlock", lambda: raw(cuda, "Unlock", pid))
    s("memory_intact_after_cycle", lambda: p.ask(app, "check"))
    # the agent's own steps on a live process
    s("cuda_processes", lambda: cc.cuda_processes(cuda, pid))
    s("capture_leave_running", lambda: gpu_snapshots.capture(
        cuda, pid, lambda: {"states": {q: state(cuda, q) for q in cc.process_tree(pid)},
                            "holders": cc.gpu_holders(cc.process_tree(pid))}))
    s("state_after_capture", lambda: state(cuda, pid))
    s("memory_intact_after_capture", lambda: p.ask(app, "check"))
    s("suspend", lambda: cc.suspend(cuda, [pid], 5000))
    s("after_restore", lambda: gpu_snapshots.after_restore(cuda, pid))
    s("memory_intact_after_resume", lambda: p.ask(app, "check"))
    child = int(s("fork_child", lambda: p.ask(app, "fork")).split()[1])
    s("state_of_forked_child", lambda: state(cuda, child))
    s("forked_child_holds_dev_nvidia", lambda: cc.gpu_holders([child]))
    s("cuda_processes_with_child", lambda: cc.cuda_processes(cuda, pid))
    s("capture_with_child", lambda: gpu_snapshots.capture(cuda, pid, lambda: "captured"))
    s("state_after_refused_capture", lambda: state(cuda, pid))
    os.kill(child, signal.SIGKILL)
    s("memory_intact_after_refused_capture", lambda: p.ask(app, "check"))
    # item 4: lock + checkpoint before SIGKILL (cuda-checkpoint#53), then the GPU memory must come back
    s("quiesce", lambda: cc.quiesce(cuda, [pid], 5000))
    s("state_after_quiesce", lambda: state(cuda, pid))
    app.kill()
    app.wait(timeout=30)
    time.sleep(1)
    s("smi_apps_after_kill", lambda: usage.gpu_processes(usage._smi(usage.APPS_QUERY) or ""))
    s("state_of_killed_pid", lambda: state(cuda, pid))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ["OUT"]) / "driver_probe.json" if os.environ.get("OUT") else Path("driver_probe.json")
    ap.add_argument("--out", default=str(default))
    p = Probe(Path(ap.parse_args().out))
    try:
        run(p)
    except Exception as e:
        p.res["errors"].append(traceback.format_exc())
        print(f"[probe] FAILED: {type(e).__name__}: {e}", flush=True)
    finally:
        for proc in p.procs:
            proc.kill()
        p.save()
    return 1 if p.res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
