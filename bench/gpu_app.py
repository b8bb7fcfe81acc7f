"""The app bench/gpu_snapshot.py cold-starts, snapshots and restores (copied into its work folder and run
there): `python3 app.py torch|cpu WEIGHTS READY RESULT`. Loads the weights (onto cuda:0, or as bytes for the
CPU rehearsal), computes once, writes READY; each SIGUSR1 recomputes into RESULT (compared after a restore)."""

import ctypes, hashlib, json, os, signal, sys, time
mode, weights, ready, result = sys.argv[1:5]
t0 = time.time()

def write(path, obj):  # opened and closed each time: no file of ours stays open across a snapshot
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)

if mode == "torch":
    import torch
    from safetensors.torch import load_file
    t1 = time.time()
    tensors = {}
    for name in sorted(os.listdir(weights)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(weights, name), device="cuda:0"))
    torch.cuda.synchronize()
    t2 = time.time()
    rows = next(iter(tensors.values())).shape[0]
    x = torch.randn(64, rows, generator=torch.Generator(device="cuda:0").manual_seed(0), device="cuda:0",
                    dtype=torch.float16)

    def compute():
        y = x
        for name in sorted(tensors):
            y = (y @ tensors[name])[:, :rows] * (rows ** -0.5)  # keeps the values near 1 in fp16
        c = y.float().contiguous().cpu()
        return hashlib.sha256(ctypes.string_at(c.data_ptr(), c.numel() * 4)).hexdigest(), float(c.double().sum())
else:  # the CPU rehearsal: the same protocol, no torch: the weights' bytes held in memory and hashed
    t1 = time.time()
    blobs = [open(os.path.join(weights, n), "rb").read() for n in sorted(os.listdir(weights)) if n.endswith(".bin")]
    t2 = time.time()

    def compute():
        h = hashlib.sha256()
        for b in blobs:
            h.update(b)
        return h.hexdigest(), float(sum(len(b) for b in blobs))

digest, total = compute()
t3 = time.time()
n = 0

def again(*_):
    global n
    n += 1
    s = time.time()
    d, tot = compute()
    write(result, {"n": n, "digest": d, "sum": tot, "compute_s": time.time() - s, "pid": os.getpid()})

signal.signal(signal.SIGUSR1, again)
write(ready, {"digest": digest, "sum": total, "import_s": t1 - t0, "load_s": t2 - t1, "warmup_s": t3 - t2,
              "pid": os.getpid()})
while True:
    signal.pause()
