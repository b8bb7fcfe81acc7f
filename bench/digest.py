"""What snapshot digests cost (issue 13): capture and restore of examples/weights with and without them.

    .venv/bin/python bench/digest.py [--rounds 3] [--captures 3] [--write docs/BENCHMARKS.md]

The agent of this checkout runs in this process (as in bench/coldstart.py). Captures: each a fresh one
(the snapshot deleted, the next cold boot captures), runc checkpoint and the digests timed apart (the
agent's event says both). Restores: four kinds of restored start from zero containers, in rotating
order per round: the snapshot held in memory (verified when it was locked: the check only stats the
files) or not held (the check hashes every file), each with the check and with it skipped. Page cache
warm. Every result must be the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from coldstart import INPUTS, REPO, SETTLE_S, scale_to_zero, sh  # bench/ scripts run from bench/
from results import write_section

KINDS = ("held, checked", "held, unchecked", "not held, checked", "not held, unchecked")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--captures", type=int, default=3)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("criu") is None:
        raise SystemExit("needs root and CRIU (./scripts/setup.sh)")

    import docker

    from beamctl.agent.containers import DockerContainers
    from beamctl.agent.service import Agent
    from beamctl.protocol.spec import spec_from_config
    from beamctl.config import load

    example = REPO / "examples" / "weights"
    inputs = INPUTS["weights"]
    image = json.loads(sh(sys.executable, "-m", "beamctl", "build", "-f", str(example), "--json"))["image"]
    config, _ = load(example / "beam.yaml")
    spec = spec_from_config(config, image)
    data = Path(tempfile.mkdtemp(prefix="beamctl-digest-"))
    events: list[str] = []
    agent = Agent(data, DockerContainers(docker.from_env(timeout=600)), gpus=[], snapshot_ram=4 << 30)
    agent.snapshots.on_event = lambda app, msg: events.append(msg)  # the capture's own timings
    app = spec.app
    try:
        deployed = agent.deploy(spec.to_json(), {}, health_timeout=900)
        if deployed["status"] != "ready":
            raise SystemExit(f"deploy failed: {deployed['reason']}")
        version = deployed["version"]
        pool = agent.pools[app]
        book = agent.snapshots

        captures: list[tuple[float, float]] = []
        for _ in range(args.captures):
            book.delete(app, version)
            scale_to_zero(agent, app)
            time.sleep(SETTLE_S)
            if agent.call(app, inputs)["status"] != "succeeded":
                raise SystemExit("the capturing start failed")
            line = next(e for e in reversed(events) if " ready: " in e)
            runc_s, digest_s = map(float, re.search(r"in ([\d.]+) s.* \+ digests ([\d.]+) s", line).groups())
            captures.append((runc_s, digest_s))
            print(f"capture: runc {runc_s:.3f} s + digests {digest_s:.3f} s", file=sys.stderr)
        size = agent.store.snapshot(app, version)["size_bytes"]
        deadline = time.monotonic() + 120  # the last capture's background hold and hash: done before the rounds
        while (app, version) not in book._hashed and time.monotonic() < deadline:
            time.sleep(0.2)

        checks: dict[str, list[float]] = {k: [] for k in KINDS}
        restores: dict[str, list[float]] = {k: [] for k in KINDS}
        results = set()
        real_verify = pool.snapshots.verify
        for r in range(args.rounds):
            for kind in KINDS[r % 4:] + KINDS[:r % 4]:
                scale_to_zero(agent, app)
                book._forget(app, version)  # neither held nor known verified...
                if kind.startswith("held"):
                    book._hold(app, version)  # ...or held again, and hashed when locked, as after a capture
                    if not book.resident.held(app, version) or (app, version) not in book._hashed:
                        raise SystemExit("the snapshot could not be held in memory (RLIMIT_MEMLOCK?)")
                spent: list[float] = []

                def timed(v: int, spent: list[float] = spent) -> None:
                    t0 = time.perf_counter()
                    real_verify(v)
                    spent.append(time.perf_counter() - t0)

                pool.snapshots.verify = timed if kind.endswith(", checked") else (lambda v: None)
                time.sleep(SETTLE_S)
                task = agent.call(app, inputs)
                if task["status"] != "succeeded" or task["start"] != "restored":
                    raise SystemExit(f"{kind}: {task['status']} {task.get('start')} {task.get('error')}")
                results.add(json.dumps(task["result"], sort_keys=True))
                restores[kind].append(task["phases"]["checkpoint_restore"])
                checks[kind] += spent
                print(f"round {r + 1}: {kind:20} restore {restores[kind][-1]:.3f} s"
                      f"{f', check {spent[0]:.3f} s' if spent else ''}", file=sys.stderr)
        pool.snapshots.verify = real_verify
    finally:
        for live in agent.pools.get(app).drain() if app in agent.pools else []:
            agent.state.retire(app, live)
        agent.containers.forget(app)
        shutil.rmtree(data, ignore_errors=True)

    med = statistics.median
    runc_s, digest_s = med(c[0] for c in captures), med(c[1] for c in captures)
    begin, end = "<!-- bench/digest.py: begin -->", "<!-- bench/digest.py: end -->"
    rows = [f"| {kind} | {med(restores[kind]):.3f} s | "
            f"{f'{med(checks[kind]) * 1000:.1f} ms' if checks[kind] else '-'} |" for kind in KINDS]
    held = med(restores["held, checked"]) / med(restores["held, unchecked"])
    cold = med(restores["not held, checked"]) / med(restores["not held, unchecked"])
    section = "\n".join([
        begin,
        f"Command: `.venv/bin/python bench/digest.py --rounds {args.rounds} --captures {args.captures}"
        f"{' --write ' + str(args.write) if args.write else ''}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, kernel {platform.release()}, CRIU {sh('criu', '--version').split()[1]}).",
        "",
        f"examples/weights ({image}), snapshot {size / 1e9:.2f} GB, page cache warm; medians. Digest: SHA-256 of "
        "64 MiB chunks' SHA-256s, the chunks hashed on every core.",
        "",
        f"- capture ({args.captures}x): runc checkpoint {runc_s:.3f} s + digests {digest_s:.3f} s -> "
        f"**{(runc_s + digest_s) / runc_s:.2f}x** the capture without them ({size / 1e9 / digest_s:.2f} GB/s).",
        "",
        f"| restored start ({args.rounds} rounds) | checkpoint_restore phase | of which the digest check |",
        "|---|---|---|",
        *rows,
        "",
        f"- the check itself, against the median restore without it: held in memory (verified when locked; the "
        f"check stats the files) {med(checks['held, checked']) * 1000:.1f} ms = **"
        f"{med(checks['held, checked']) / med(restores['held, unchecked']):.2%}**; not held (every file hashed) "
        f"{med(checks['not held, checked']) * 1000:.0f} ms = **"
        f"{med(checks['not held, checked']) / med(restores['not held, unchecked']):.0%}** "
        f"({size / 1e9 / med(checks['not held, checked']):.2f} GB/s).",
        f"- whole restores, checked / unchecked (medians, noisy on a shared machine): held {held:.2f}x, not held "
        f"{cold:.2f}x. Results identical: {'yes' if len(results) == 1 else 'NO'}.",
        end,
    ])
    print(section)
    if args.write:
        write_section(args.write, section, begin, end, "Snapshot digests: capture and restore (bench/digest.py)")
    return 0 if len(results) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
