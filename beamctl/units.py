"""Sizes as people read them, the same in every message: 512 B, 5.2 kB, 44.1 MB, 1.54 GB (powers of 1000,
like the byte counts docker and ssh print). beam.yaml's own sizes (256Mi) are config/model.py's."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{int(n)} B"
