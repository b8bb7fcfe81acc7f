"""Image build speed: `beamctl build` against a plain `docker build`, side by side in one run.

    .venv/bin/python bench/build.py [--runs 3] [--write docs/BENCHMARKS.md]

Per example and repetition, on temporary copies: a full build from empty caches, a no-change rebuild,
a code-only change (a line appended to app.py); wall times around the CLI processes. All images build
FROM a copy of beamctl's base that differs only in a label (a new image id): nothing outside this run
shares their layer chain, so the engine has no cache for them and nobody else's images are touched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from results import write_section  # bench/results.py (scripts run from bench/)

import yaml

REPO = Path(__file__).resolve().parents[1]
BEAMCTL = str(Path(sys.executable).parent / "beamctl")
OWN_BASE = "beamctl/base:bookworm-python3.11"
BASE, PIP_BASE = "beamctl-bench/base:tmp", "beamctl-bench/pip-base:tmp"  # ours, removed at the end
FULL_TARGET = "no slower than docker build"
TARGETS = {"no-change": ("<= 1 s, 0 layers built", 1.0, 0),  # beamctl's: (words, seconds, layers built)
           "code-only": ("<= 5 s, only the code layer built", 5.0, 1)}
SCENARIOS = {"full": "full build, empty caches", "no-change": "no-change rebuild", "code-only": "code-only change"}
APT = ("RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
       "python3-pip && rm -rf /var/lib/apt/lists/*")
TAIL = 'WORKDIR /app\nCOPY app.py /app/\nCMD ["python3", "-c", "import app"]\n'
PIP_DROP = {"PIP_CONFIG_FILE", "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"}
NOTES = """\
Empty caches: beamctl gets a fresh BEAMCTL_CACHE_DIR and pip cache, the baselines `docker build --no-cache`;
pip runs without the machine's config (a local wheel mirror), so both sides download wheels from PyPI. Both
use the engine's legacy builder (the docker 28 client has no buildx here; DOCKER_BUILDKIT=0). Baselines are
hand-written Dockerfiles, same base, same packages. The base has no pip and containers cannot reach PyPI
over TLS, so wheels are downloaded on the host (`pip download` into an empty folder, timed) and pip installs
them in the image. `apt python3-pip` is the literal same-base Dockerfile: it must get pip with apt first.
`base with pip` starts from the base plus python3-pip, built before the runs ({pip_base_s:.0f} s, not counted),
as `python:3.11-slim` would be where a registry is reachable: the stricter comparison. beamctl's times
include its image check (a container importing the handler); the baselines run none. Phases are read
from when beamctl's progress lines and docker build's `Step` lines arrived."""
BEGIN, END = "<!-- bench/build.py: begin -->", "<!-- bench/build.py: end -->"


def baselines(packages: list[str]) -> dict[str, str]:
    """Hand-written Dockerfiles for the same app: name -> Dockerfile (wheels/ from pip download)."""
    if not packages:
        return {"docker build": f"FROM {BASE}\n{TAIL}"}
    pip = ("COPY wheels/ /tmp/wheels/\nRUN pip install --break-system-packages --no-index --find-links "
           f"/tmp/wheels {' '.join(shlex.quote(p) for p in packages)}\n")
    return {"docker build, apt python3-pip": f"FROM {BASE}\n{APT}\n{pip}{TAIL}",
            "docker build, base with pip": f"FROM {PIP_BASE}\n{pip}{TAIL}"}


def timed(argv: list[str], env: dict, merge: bool = False) -> tuple[float, list[tuple[float, str]], str]:
    """Run argv; (wall s, [(s since start, line)] of stderr (or of stdout+stderr), stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.STDOUT if merge else subprocess.PIPE, errors="replace")
    lines = [(time.perf_counter() - start, ln.rstrip()) for ln in (proc.stdout if merge else proc.stderr)]
    out = "" if merge else proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(ln for _, ln in lines[-15:])
        raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode}):\n{tail}\n{out[-500:]}")
    return wall, lines, out


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


def remove_ours(nonce: str, keep: tuple[str, ...] = ()) -> None:
    """Every image of this run (all inherit its base's label), tagged or dangling, except `keep`."""
    label = f"label=dev.beamctl.bench={nonce}"
    refs = [r for r in docker("images", "--filter", label, "--format", "{{.Repository}}:{{.Tag}}").split()
            if r not in keep and "<none>" not in r]
    refs += docker("images", "-q", "--filter", label, "--filter", "dangling=true").split()
    if refs:
        docker("rmi", *refs, check=False)


def env_for(root: Path) -> dict:
    """This process's environment with an empty pip cache, pip reading PyPI only, the legacy builder."""
    env = {k: v for k, v in os.environ.items() if k not in PIP_DROP}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_CACHE_DIR=tempfile.mkdtemp(prefix="pip-", dir=root),
               DOCKER_BUILDKIT="0")
    return env


def beamctl_phases(lines: list[tuple[float, str]], wall: float) -> dict[str, float]:
    """Where a (human-mode) beamctl build spent its time, from when its progress lines arrived."""
    marks = [(0.0, "start-up, base image")]
    for pattern, name in ((r"packages: resolving", "pip download"), (r"packages: installing", "pip install, tar"),
                          (r"context: ", "send context, engine build"),
                          (r"\s*\[(\d+)/\1\] ", "image check, tag"), (r"built ", "exit")):
        marks += [(t, name) for t, ln in lines if re.match(pattern, ln)][-1:]
    ends = [t for t, _ in marks[1:]] + [wall]
    return {name: end - t for (t, name), end in zip(marks, ends)}


def build_steps(lines: list[tuple[float, str]], wall: float) -> tuple[dict[str, float], int]:
    """docker build's legacy output -> ({step: seconds}, layers built)."""
    steps, built, step = {}, 0, None  # step: [instruction, started, writes a layer]
    for t, line in [*lines, (wall, "Successfully built")]:
        m = re.match(r"Step \d+/\d+ : (.*)", line)
        if (m or line.startswith("Successfully built")) and step:
            steps[step[0][:44]], built = t - step[1], built + step[2]
            step = None
        if m:
            step = [m[1], t, m[1].split()[0] in ("RUN", "COPY", "ADD")]
        elif step and line.strip() == "---> Using cache":
            step[2] = False
    return steps, built


def one_rep(app: str, rep: int, root: Path, res: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"{app}-{rep}-", dir=root))
    src, cfg = tmp / app, tmp / app / "beam.yaml"
    shutil.copytree(REPO / "examples" / app, src)
    doc = yaml.safe_load(cfg.read_text())
    doc["image"] = {**(doc.get("image") or {}), "base_image": BASE}  # beam.yaml is not in the image
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    packages = doc["image"].get("python_packages") or []
    ctxs = {tool: tmp / f"baseline{i}" for i, tool in enumerate(baselines(packages))}
    for tool, dockerfile in baselines(packages).items():
        shutil.copytree(src, ctxs[tool], ignore=lambda folder, names: [n for n in names if n != "app.py"])
        (ctxs[tool] / "Dockerfile").write_text(dockerfile)

    def record(scenario: str, tool: str, wall: float, built: int, problem: str = "", **extra) -> None:
        for k, v in dict(extra, wall=wall, built=built, problem=problem).items():
            res[(app, scenario, tool)][k].append(v)

    def baseline(tool: str, scenario: str) -> None:
        env, ctx, parts, wall = env_for(tmp), ctxs[tool], {}, 0.0
        if scenario == "full" and packages:  # wheels into an empty folder, timed as part of the build
            shutil.rmtree(ctx / "wheels", ignore_errors=True)
            wall = parts["pip download"] = timed(
                [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
                 "--platform", "manylinux2014_x86_64", "-d", str(ctx / "wheels"), *packages], env)[0]
        tag = f"beamctl-bench/{app}-{ctx.name}:{rep}-{scenario}"
        argv = ["docker", "build", "-t", tag, *(["--no-cache"] if scenario == "full" else []), str(ctx)]
        dwall, lines, _ = timed(argv, env, merge=True)
        steps, built = build_steps(lines, dwall)
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag)) / 1e6
        record(scenario, tool, wall + dwall, built, parts={**parts, **steps}, mb=size)

    env = {**env_for(tmp), "BEAMCTL_CACHE_DIR": str(tmp / "beamctl-cache")}
    build = [BEAMCTL, "build", "-f", str(cfg)]
    for tool in (["beamctl", *ctxs] if rep % 2 == 0 else [*ctxs, "beamctl"]):  # alternate who goes first
        if tool != "beamctl":
            baseline(tool, "full")
            continue
        wall, lines, _ = timed(build, env)
        m = re.search(r"built (\S+) \(([\d.]+) MB, (\d+) layers built, (\d+) cached", lines[-1][1])
        first = m[1]
        record("full", "beamctl", wall, int(m[3]), "" if m[4] == "0" else "layers from the engine's cache",
               parts=beamctl_phases(lines, wall), mb=float(m[2]))
    wall, _, out = timed(build + ["--json"], env)
    j = json.loads(out)
    record("no-change", "beamctl", wall, j["layers_built"], "" if j["reused"] and j["image"] == first else "not reused")
    for tool in ctxs:
        baseline(tool, "no-change")
    for path in [src / "app.py", *(c / "app.py" for c in ctxs.values())]:
        with path.open("a") as f:
            f.write(f"\n# bench/build.py: code-only change {rep}\n")
    wall, _, out = timed(build + ["--json"], env)
    j = json.loads(out)
    before, after = (json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", ref))
                     for ref in (first, j["image"]))  # all but the code layer must be the same layers
    same = len(before) == len(after) and before[:-1] == after[:-1] and before[-1] != after[-1]
    record("code-only", "beamctl", wall, j["layers_built"], "" if same else "layers below the code's changed")
    for tool in ctxs:
        baseline(tool, "code-only")
    remove_ours(root.name, keep=(BASE, PIP_BASE))
    shutil.rmtree(tmp)


def report(res: dict, runs: int, pip_base_s: float, code: str) -> str:
    med = statistics.median
    versions = docker("version", "--format", "Docker client {{.Client.Version}}, engine {{.Server.Version}}")
    lines = [BEGIN, "", f"Command: `.venv/bin/python bench/build.py {shlex.join(sys.argv[1:])}`",
             f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {versions} (legacy builder on both sides), "
             f"{time.strftime('%Y-%m-%d')}; median of {runs} runs, beamctl and baselines interleaved; beamctl at "
             f"{code}.", "", "| example | scenario | tool | median s (range) | layers built | image MB | target | "
             "met | beamctl / this |", "|---|---|---|---|---|---|---|---|---|"]
    for (app, scenario, tool), r in res.items():
        wall, ours = med(r["wall"]), med(res[(app, scenario, "beamctl")]["wall"])
        built = "/".join(sorted({str(b) for b in r["built"]}))
        built += "".join(f" ({p}!)" for p in sorted(set(r["problem"]) - {""}))
        target = met = ratio = ""
        if tool == "beamctl" and scenario in TARGETS:
            target, limit, layers_wanted = TARGETS[scenario]
            good = wall <= limit and set(r["built"]) == {layers_wanted} and not any(r["problem"])
            met = "yes" if good else "no"
        elif tool != "beamctl":
            ratio = f"{ours / wall:.2f}"
            if scenario == "full":
                target, met = FULL_TARGET, "yes" if ours <= wall else "no"
        cells = [app, SCENARIOS[scenario], tool, f"{wall:.2f} ({min(r['wall']):.1f}-{max(r['wall']):.1f})",
                 built, f"{med(r['mb']):.0f}" if r["mb"] else "", target, met, ratio]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Where the full builds' time goes (median s):", ""]
    for (app, scenario, tool), r in res.items():
        if scenario == "full":
            names = dict.fromkeys(n for p in r["parts"] for n in p)
            parts = {n: med([p.get(n, 0.0) for p in r["parts"]]) for n in names}
            big = [f"{n} {s:.1f}" for n, s in parts.items() if s >= 0.3]
            rest = sum(s for s in parts.values() if s < 0.3)
            lines.append(f"- {app}, {tool}: " + "; ".join(big + [f"other {rest:.1f}"]).replace("|", "\\|"))
    return "\n".join(lines + ["", NOTES.format(pip_base_s=pip_base_s), "", END])


def write(path: Path, section: str) -> None:
    write_section(path, section, BEGIN, END, "Image build")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--write", type=Path, help="update this Markdown file's image build section")
    ap.add_argument("--examples", nargs="+", default=["vectors", "hello"])
    args = ap.parse_args()
    if not docker("images", "-q", OWN_BASE):
        raise SystemExit(f"{OWN_BASE} is missing: run `beamctl build` once to make it")
    root = Path(tempfile.mkdtemp(prefix="beamctl-bench-build-"))
    res: dict = defaultdict(lambda: defaultdict(list))
    code = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "-s", "beamctl") else "")
    try:  # beamctl as it is now, since others may edit the tree meanwhile (beamctl/runtime goes into images)
        shutil.copytree(REPO / "beamctl", root / "src" / "beamctl", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "src")], check=True)
        os.environ["PYTHONPATH"] = str(root / "src")  # ahead of the editable install's path entry
        env = env_for(root)
        for ref, dockerfile in ((BASE, f"FROM {OWN_BASE}\nLABEL dev.beamctl.bench={root.name}\n"),
                                (PIP_BASE, f"FROM {BASE}\n{APT}\n")):
            (root / "Dockerfile").write_text(dockerfile)
            pip_base_s = timed(["docker", "build", "-q", "-t", ref, str(root)], env, merge=True)[0]
        for rep in range(args.runs):
            for app in args.examples:
                print(f"run {rep + 1}/{args.runs}: {app}", file=sys.stderr)
                one_rep(app, rep, root, res)
    finally:
        remove_ours(root.name)
        shutil.rmtree(root, ignore_errors=True)
    section = report(res, args.runs, pip_base_s, code)
    print(section)
    if args.write:
        write(args.write, section)


if __name__ == "__main__":
    main()
