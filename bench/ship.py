"""Shipping benchmark: beamctl deploy to 3 test hosts against `docker save | ssh HOST docker load`.

Usage (as root, after ./scripts/setup.sh; builds a >= 1 GB app image from examples/embeddings' packages):
    .venv/bin/python bench/ship.py [--write docs/BENCHMARKS.md]

One run, side by side, on a fresh test fleet of 4 hosts (tests/fleet/hosts.py): host 4 takes the
baseline (OpenSSH, the whole image, uncompressed, as people do it by hand); hosts 1-3 take beamctl:
- first deploy (image new to the hosts): ship wall time (until every host verified the image), bytes;
- code-only redeploy (app.py changed): wall time of `beamctl deploy` until all READY (build included),
  bytes on the wire;
- no-op redeploy: wall time, bytes;
- the client's peak memory while shipping the image to 3 hosts: beamctl's own process, and its whole
  process tree (docker CLI, zstd, ssh) sampled every 0.1 s.
The app is examples/embeddings' packages (torch CPU, transformers: a >= 1 GB image) with a trivial
handler, so on_start is fast and the numbers are about shipping.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from results import write_section  # noqa: E402

BEGIN, END = "<!-- bench/ship.py begin -->", "<!-- bench/ship.py end -->"
HOSTS = ("testhost-1", "testhost-2", "testhost-3")
APP = '''"""Bench app: the embeddings example's packages, a trivial handler (fast on_start)."""


def load_model():
    return {"greeting": "VERSION"}


def handler(context, **inputs):
    return {"message": context.on_start_value["greeting"]}
'''


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo += [int(k) for k in kids]
        except OSError:
            pass
    return out


def run_sampled(argv: list[str], env: dict) -> tuple[float, str, str, int, int]:
    """(wall s, stdout, stderr, peak RSS of the process KiB, peak RSS of its tree KiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, peak_tree, done = [0], [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(proc.pid))
            peak_tree[0] = max(peak_tree[0], sum(rss_kib(p) for p in tree(proc.pid)))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.monotonic() - start, out, err, peak[0], peak_tree[0]


def baseline(ref: str, ssh_config: Path, host: str) -> tuple[float, int]:
    """`docker save REF | ssh HOST docker load`, bytes counted on the way (a 1 MiB relay)."""
    start = time.monotonic()
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    ssh = subprocess.Popen(["ssh", "-F", str(ssh_config), host, "docker", "load"], stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL)
    n = 0
    assert save.stdout is not None and ssh.stdin is not None
    while chunk := save.stdout.read(1 << 20):
        ssh.stdin.write(chunk)
        n += len(chunk)
    ssh.stdin.close()
    if save.wait() != 0 or ssh.wait() != 0:
        raise SystemExit("the baseline failed")
    return time.monotonic() - start, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    from tests.fleet.hosts import Fleet

    root = Path(tempfile.mkdtemp(prefix="beamctl-bench-ship-"))
    fleet = Fleet.start(4, root / "fleet")
    try:
        env = {**os.environ, **fleet.env, "BEAMCTL_CACHE_DIR": os.environ.get("BEAMCTL_CACHE_DIR", "")}
        if not env["BEAMCTL_CACHE_DIR"]:
            del env["BEAMCTL_CACHE_DIR"]
        app = root / "app"
        shutil.copytree(REPO / "examples" / "embeddings", app)
        (app / "README.md").unlink(missing_ok=True)
        (app / "app.py").write_text(APP.replace("VERSION", "v1"))
        text = (app / "beam.yaml").read_text().replace("name: embeddings", "name: benchship")
        (app / "beam.yaml").write_text(text + f"hosts: [{', '.join(HOSTS)}]\n")
        beamctl = [sys.executable, "-m", "beamctl"]
        built = json.loads(subprocess.run(beamctl + ["build", "-f", str(app), "--json"], env=env, check=True,
                                          capture_output=True, text=True).stdout)
        ref, size = built["image"], built.get("size_bytes") or 0
        print(f"image {ref}: {size / 1e9:.2f} GB", file=sys.stderr)
        # agents first, so the rows below are about images
        subprocess.run(beamctl + ["hosts", "install", *HOSTS], env=env, check=True, capture_output=True)

        base_s, base_bytes = baseline(ref, fleet.ssh_config, "testhost-4")
        print(f"baseline: {base_s:.1f} s, {base_bytes / 1e6:.0f} MB", file=sys.stderr)

        def deploy(label: str) -> dict:
            wall, out, err, peak, peak_tree = run_sampled(beamctl + ["deploy", "-f", str(app), "--json"], env)
            data = json.loads(out)
            ships = [h["ship"] or {} for h in data["hosts"]]
            bad = [h for h in data["hosts"] if h["status"] != "ready"]
            if bad:
                raise SystemExit(f"{label}: not ready: {bad}\n{err[-2000:]}")
            row = {"wall": wall, "bytes": sum(s.get("bytes_sent", 0) for s in ships),
                   "ship_s": max(s.get("seconds", 0.0) for s in ships), "via": {s.get("via") for s in ships},
                   "layers": [f"{s.get('layers_sent')}/{s.get('layers_total')}" for s in ships],
                   "peak_mib": peak / 1024, "peak_tree_mib": peak_tree / 1024}
            print(f"{label}: {row}", file=sys.stderr)
            return row

        first = deploy("first deploy")
        (app / "app.py").write_text(APP.replace("VERSION", "v2"))
        code = deploy("code-only redeploy")
        noop = deploy("no-op redeploy")
    finally:
        fleet.down()
        shutil.rmtree(root, ignore_errors=True)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    ratio = first["ship_s"] / base_s
    lines = [
        BEGIN,
        f"Command: `.venv/bin/python bench/ship.py --write docs/BENCHMARKS.md` (commit {rev}; 2-core VM; the",
        "test hosts are containers on this same machine, each with its own dockerd: all three hosts' `docker load`",
        "share these 2 cores with the client). Image: examples/embeddings' packages with a trivial handler, "
        f"{size / 1e9:.2f} GB.",
        "",
        "| case | wall | bytes on the wire | target | met |",
        "|---|---|---|---|---|",
        f"| baseline: `docker save | ssh testhost-4 docker load` (1 host, OpenSSH) | {base_s:.1f} s | "
        f"{base_bytes / 1e6:.0f} MB | | |",
        f"| first ship to 3 hosts (beamctl; until every host verified the id) | {first['ship_s']:.1f} s "
        f"({ratio:.2f}x baseline) | {first['bytes'] / 1e6:.0f} MB (3 hosts) | <= 1.5x baseline | "
        f"{'yes' if ratio <= 1.5 else 'no'} |",
        f"| first deploy to 3 hosts, all READY (ship + start) | {first['wall']:.1f} s | | | |",
        f"| code-only redeploy to 3 hosts, all READY (build included) | {code['wall']:.1f} s | "
        f"{code['bytes'] / 1e3:.0f} kB ({100 * code['bytes'] / base_bytes:.3f}% of baseline) | < 1% bytes, "
        f"<= 10 s | {'yes' if code['bytes'] < base_bytes / 100 and code['wall'] <= 10 else 'no'} |",
        f"| no-op redeploy | {noop['wall']:.1f} s | {noop['bytes']} B | 0 B, <= 3 s | "
        f"{'yes' if noop['bytes'] == 0 and noop['wall'] <= 3 else 'no'} |",
        "",
        f"Client memory while shipping to 3 hosts (first deploy): beamctl's process peaked at "
        f"{first['peak_mib']:.0f} MiB RSS, its whole process tree (docker CLI, zstd, ssh x3) at "
        f"{first['peak_tree_mib']:.0f} MiB (target < 200 MiB: {'met' if first['peak_mib'] < 200 else 'NOT met'}"
        " for the process; layers are streamed, never held).",
        f"Bulk transport: {', '.join(sorted(v for v in first['via'] if v))}; layers sent per host, first / "
        f"code-only: {first['layers'][0]} / {code['layers'][0]}.",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(args.write, section, BEGIN, END, "Shipping to hosts")


if __name__ == "__main__":
    main()
