"""weights: on_start loads ~1 GiB of numpy weights from a volume; tasks compute with them.

The reference app for cold-start benchmarks. The weights are made once, on the first start,
and kept on the volume (so later cold starts only read them back into memory).
"""

import os
from pathlib import Path

import numpy as np

VOLUME = Path("/weights")
SIZE_MIB = int(os.environ.get("WEIGHTS_MIB", "1024"))  # 1 GiB by default
COLUMNS = 1024


def _make(path: Path) -> None:
    rows = SIZE_MIB * (1 << 20) // (4 * COLUMNS)
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, COLUMNS))
    step = 16384
    for start in range(0, rows, step):
        out[start:start + step] = rng.standard_normal((min(step, rows - start), COLUMNS), dtype=np.float32)
    out.flush()
    del out
    os.replace(tmp, path)  # a start killed half-way never leaves a half-written file behind


def load_model():
    path = VOLUME / f"weights-{SIZE_MIB}mib.npy"
    if not path.exists():
        _make(path)
    weights = np.load(path)  # read into memory: what a model load does
    return weights


def handler(context, seed=0, **_):
    w = context.on_start_value
    x = np.random.default_rng(int(seed)).standard_normal(COLUMNS, dtype=np.float32)
    y = w[:8192] @ x
    return {"rows": int(w.shape[0]), "checksum": round(float(w[::997].sum(dtype=np.float64)), 3),
            "y": [round(float(v), 4) for v in y[:3]]}
