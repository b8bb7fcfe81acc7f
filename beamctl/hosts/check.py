"""`hosts check`: every host probed at once (one connection and one command each), results as values.

One host's failure never hides another's facts: each HostCheck carries facts or an error.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from beamctl.errors import BeamctlError
from beamctl.hosts.inventory import Entry
from beamctl.hosts.prereqs import Prereq, checkpoint_problem, prerequisites
from beamctl.hosts.probe import PROBE_ARGV, HostFacts, parse_probe
from beamctl.transport.ssh import Ssh

MAX_PARALLEL = 16  # connections at once; each is mostly waiting on the network
PROBE_IDLE_TIMEOUT_S = 30.0  # a wedged docker daemon makes `docker info` hang; don't wait longer


@dataclass(frozen=True)
class HostCheck:
    name: str
    target: str
    reachable: bool
    seconds: float  # connect + probe, wall time
    facts: HostFacts | None = None
    error: str | None = None  # why not, when not reachable (or the probe failed)
    hint: str | None = None
    kind: str | None = None  # the error's class: HostUnreachable, HostKeyUnknown, AuthFailed, ...

    @property
    def ok(self) -> bool:
        return self.facts is not None and self.error is None

    @property
    def prerequisites(self) -> list[Prereq]:
        return prerequisites(self.facts, self.name) if self.facts else []

    @property
    def checkpoint_problem(self) -> str | None:
        """Why this host cannot checkpoint (None: it can, or it was not probed)."""
        return checkpoint_problem(self.facts) if self.facts else None

    def as_json(self) -> dict[str, Any]:
        checkpoints = None if not self.ok else {"can": self.checkpoint_problem is None,
                                                "why_not": self.checkpoint_problem}
        return {"name": self.name, "target": self.target, "reachable": self.reachable, "ok": self.ok,
                "seconds": round(self.seconds, 3), "error": self.error, "hint": self.hint, "kind": self.kind,
                "checkpoints": checkpoints, "prerequisites": [p.as_json() for p in self.prerequisites],
                "facts": self.facts.as_json() if self.facts else None}


def check_host(entry: Entry, ssh: Ssh) -> HostCheck:
    start = time.monotonic()
    reachable = False
    try:
        with ssh.connect(entry.host, name=entry.name) as conn:
            reachable = True
            done = conn.run(list(PROBE_ARGV), idle_timeout=PROBE_IDLE_TIMEOUT_S)
    except BeamctlError as e:
        return HostCheck(entry.name, entry.target, reachable, time.monotonic() - start, error=e.message,
                         hint=e.hint, kind=type(e).__name__)
    except Exception as e:  # noqa: BLE001 - one host's surprise must not hide the others' results
        return HostCheck(entry.name, entry.target, reachable, time.monotonic() - start,
                         error=f"internal error: {type(e).__name__}: {e}", hint="report it",
                         kind="InternalError")
    facts = parse_probe(done.stdout)
    error = None if "@@beamctl" in done.stdout else f"the probe printed nothing readable (exit {done.exit})"
    return HostCheck(entry.name, entry.target, True, time.monotonic() - start, facts=facts, error=error,
                     kind="ProbeFailed" if error else None)


def check_hosts(entries: list[Entry], ssh: Ssh) -> list[HostCheck]:
    """All hosts in parallel; results in the order asked."""
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(entries)), thread_name_prefix="check") as pool:
        return list(pool.map(lambda e: check_host(e, ssh), entries))
