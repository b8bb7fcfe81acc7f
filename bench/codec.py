"""Codec benchmark: the zstd CLI (what shipping used before) against the zstandard package (what it uses
now: in process on the client, the agent's Python on the host), on the same image archive, in one run.

Usage (after ./scripts/setup.sh; needs the zstd CLI for the comparison only):
    .venv/bin/python bench/codec.py [IMAGE] [--rounds 3] [--write docs/BENCHMARKS.md]

IMAGE (default: the largest image on this engine) is `docker save`d once into memory. Per round, for
each codec: compress at level 3 on all cores (`zstd -q -c -T0` / ZstdCompressor(level=3, threads=-1)),
then decompress (`zstd -d -q -c` / `python -m beamctl.agent.load_image`'s copy_stream). Wall seconds,
best of the rounds, and the ratio zstandard / CLI (below 1 = zstandard faster). Output sizes too.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from results import write_section  # noqa: E402

BEGIN, END = "<!-- bench/codec.py begin -->", "<!-- bench/codec.py end -->"
CHUNK = 1 << 20


def largest_image() -> str:
    out = subprocess.run(["docker", "image", "ls", "--format", "{{.Size}} {{.ID}} {{.Repository}}:{{.Tag}}"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        size, _id, ref = line.split()
        unit = {"GB": 1e9, "MB": 1e6, "kB": 1e3}.get(size[-2:], 1)
        rows.append((float(size.rstrip("GMkB")) * unit, _id if ref.endswith("<none>") else ref))
    return max(rows)[1]


def cli_compress(data: bytes) -> tuple[float, bytes]:
    t = time.perf_counter()
    out = subprocess.run(["zstd", "-q", "-c", "-T0"], input=data, capture_output=True, check=True).stdout
    return time.perf_counter() - t, out


def cli_decompress(data: bytes) -> float:
    t = time.perf_counter()
    subprocess.run(["zstd", "-d", "-q", "-c"], input=data, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def lib_compress(data: bytes) -> tuple[float, bytes]:
    t = time.perf_counter()
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(buf, write_size=CHUNK, closefd=False) as w:
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            w.write(view[i:i + CHUNK])
    return time.perf_counter() - t, buf.getvalue()


def lib_decompress(data: bytes) -> float:
    t = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        zstandard.ZstdDecompressor().copy_stream(io.BytesIO(data), sink, read_size=CHUNK, write_size=CHUNK)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if shutil.which("zstd") is None:
        print("the zstd CLI is needed for the comparison (apt-get install zstd)", file=sys.stderr)
        return 3
    image = args.image or largest_image()
    data = subprocess.run(["docker", "save", image], capture_output=True, check=True).stdout
    best: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for r in range(args.rounds):
        for name, compress, decompress in (("cli", cli_compress, cli_decompress),
                                           ("lib", lib_compress, lib_decompress)):
            seconds, packed = compress(data)
            best[f"{name} compress"] = min(best.get(f"{name} compress", 1e9), seconds)
            best[f"{name} decompress"] = min(best.get(f"{name} decompress", 1e9), decompress(packed))
            sizes[name] = len(packed)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()), file=sys.stderr)
    mb = len(data) / 1e6
    lines = [f"`docker save {image}`: {mb:.0f} MB, {os.cpu_count()} cores, best of {args.rounds} rounds, "
             f"zstd {subprocess.run(['zstd', '-V'], capture_output=True, text=True).stdout.split()[-2]} CLI "
             f"vs zstandard {zstandard.__version__}:", "",
             "| step | zstd CLI | zstandard | zstandard / CLI |", "|---|---|---|---|"]
    for step in ("compress", "decompress"):
        cli, lib = best[f"cli {step}"], best[f"lib {step}"]
        lines.append(f"| {step} (level 3, all cores) | {cli:.2f} s ({mb / cli:.0f} MB/s) | {lib:.2f} s "
                     f"({mb / lib:.0f} MB/s) | {lib / cli:.2f}x |" if step == "compress" else
                     f"| {step} | {cli:.2f} s ({mb / cli:.0f} MB/s) | {lib:.2f} s ({mb / lib:.0f} MB/s) | "
                     f"{lib / cli:.2f}x |")
    lines.append(f"| output | {sizes['cli'] / 1e6:.1f} MB | {sizes['lib'] / 1e6:.1f} MB | "
                 f"{sizes['lib'] / sizes['cli']:.3f}x |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        section = f"{BEGIN}\nCommand: `.venv/bin/python bench/codec.py --write docs/BENCHMARKS.md`\n\n{text}\n{END}"
        write_section(args.write, section, BEGIN, END, "Codec: zstd CLI vs the zstandard package (bench/codec.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
