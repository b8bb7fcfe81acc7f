"""Writes the random fp16 safetensors weights for bench/gpu_snapshot.py:
`python3 gpu_prepare.py FOLDER COUNT ROWS COLS` (on the GPU when there is one)."""

import json, os, sys, torch
from safetensors.torch import save_file
folder, count, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dev = "cuda:0" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=dev).manual_seed(1234)
for i in range(count):
    t = torch.randn(rows, cols, generator=g, device=dev, dtype=torch.float16).cpu()
    save_file({f"w{i:02d}": t}, os.path.join(folder, f"w{i:02d}.safetensors"))
    del t
