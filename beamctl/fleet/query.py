"""The app commands across the fleet: which agents to ask, asking them all at once, and the pure parts
that merge their answers (tasks newest first, logs by time) and pick a host for `call`.

Which agents: `--host NAME` (repeatable) if given; else the `hosts:` of the app's beam.yaml, when
`-f FILE` names it or when ./beam.yaml is the app's; else None: the local agent, as before.
One host's failure is its own error line (`Reply.error`) and never hides the others' answers.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from beamctl.errors import BeamctlError, ExitCode

QUERY_TIMEOUT_S = 60.0  # no answer from a host's agent for this long: that host failed
AGENT_STOPPED = "agent_stopped"  # the bridge's answer's data.kind when the agent's socket closed mid-request
CALL_TIMEOUT_S = 3600.0  # a task may run long (and start cold)


class Reply(NamedTuple):
    host: str
    result: Any = None
    error: str | None = None
    stopped: bool = False  # the stream to the agent ended mid-request: it stopped (or the bridge saw it go)


def error_lines(replies: list[Reply]) -> list[str]:
    """One line per host that did not answer: `HOST: error`."""
    return [r.error if r.error.startswith(f"{r.host}:") else f"{r.host}: {r.error}"
            for r in replies if r.error is not None]


class HostAgent:
    """One host's agent through the SSH bridge; connects at the first request."""

    def __init__(self, entry: Any, ssh: Any) -> None:
        self.entry, self.ssh, self.name = entry, ssh, entry.name
        self._transport: Any = None
        self._client: Any = None

    def request(self, op: str, timeout: float = QUERY_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        from beamctl.agent.control import AgentClient
        from beamctl.hosts.install import BRIDGE_ARGV
        from beamctl.transport.ssh import SshTransport

        if self._client is None:
            target = self.ssh.resolve(self.entry.host, self.name)
            self._transport = SshTransport(target, list(BRIDGE_ARGV), self.ssh, read_timeout=timeout)
            self._client = AgentClient(self._transport)
        self._transport.read_timeout = timeout
        return self._client.request(op, **args)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = self._client = None


def _app_config(file: Path | None, name: str | None) -> Any:
    """The beam.yaml that names this app's hosts: `file` when given, else ./beam.yaml if it is `name`'s."""
    from beamctl.config import load

    if file is not None:
        return load(file)[0]
    here = Path("beam.yaml")
    if name is None or not here.is_file():
        return None
    try:
        config = load(here)[0]
    except BeamctlError:
        return None
    return config if config.name == name else None


def host_entries(name: str | None, hosts: list[str] | None, file: Path | None) -> list[Any] | None:
    """The hosts to ask, or None for the local agent only."""
    from beamctl.hosts import inventory

    if hosts:
        return inventory.lookup(list(hosts))
    config = _app_config(file, name)
    if config is None or not config.hosts:
        return None
    return inventory.which_hosts(config.hosts)[0]


def agents_for(name: str | None, hosts: list[str] | None, file: Path | None, ssh: Any = None
               ) -> list[HostAgent] | None:
    entries = host_entries(name, hosts, file)
    if entries is None:
        return None
    from beamctl.transport.ssh import Ssh

    ssh = ssh or Ssh()
    return [HostAgent(e, ssh) for e in entries]


@contextmanager
def agents(name: str | None, hosts: list[str] | None, file: Path | None) -> Iterator[list[HostAgent] | None]:
    found = agents_for(name, hosts, file)
    try:
        yield found
    finally:
        for a in found or []:
            a.close()


def ask_one(agent: Any, op: str, **args: Any) -> Reply:
    """One host's answer as a Reply; its errors (refusal, unreachable, timeout) become `error`."""
    label = agent.name
    try:
        answer = agent.request(op, **args)
    except BeamctlError as e:
        return Reply(label, error=e.message)
    except socket.timeout:
        return Reply(label, error=f"{label}: no answer from the agent in time")
    except (ConnectionError, OSError, EOFError) as e:
        return Reply(label, error=f"{label}: unreachable: the connection broke: {e or type(e).__name__}",
                     stopped=isinstance(e, (ConnectionError, EOFError)))
    except Exception as e:  # noqa: BLE001 - one host's surprise must not hide the others' answers
        return Reply(label, error=f"{label}: internal error: {type(e).__name__}: {e}")
    if answer.get("ok"):
        return Reply(label, answer.get("result"))
    hint = answer.get("hint")
    return Reply(label, error=(answer.get("error") or "the agent failed") + (f" ({hint})" if hint else ""),
                 stopped=(answer.get("data") or {}).get("kind") == AGENT_STOPPED)


def ask_all(agents: list[Any], op: str, **args: Any) -> list[Reply]:
    """Every agent at once; one Reply per agent, in the order given."""
    if not agents:
        return []
    with ThreadPoolExecutor(max_workers=len(agents), thread_name_prefix="ask") as pool:
        return list(pool.map(lambda a: ask_one(a, op, **args), agents))


# --- pure parts ----------------------------------------------------------------------------------------

def outcome(replies: list[Reply]) -> ExitCode:
    """All answered: OK; some: PARTIAL; none: FAILURE."""
    answered = sum(r.error is None for r in replies)
    if replies and answered == len(replies):
        return ExitCode.OK
    return ExitCode.PARTIAL if answered else ExitCode.FAILURE


def merge_tasks(replies: list[Reply], limit: int) -> list[dict[str, Any]]:
    rows = [{**t, "host": r.host} for r in replies if r.error is None for t in r.result or []]
    rows.sort(key=lambda t: t.get("received") or 0, reverse=True)
    return rows[:limit]


def merge_logs(replies: list[Reply]) -> list[dict[str, Any]]:
    rows = [{**e, "host": r.host} for r in replies if r.error is None for e in r.result or []]
    rows.sort(key=lambda e: e.get("ts") or 0)  # stable: one host's lines keep their order
    return rows


def first_found(replies: list[Reply]) -> Reply | None:
    return next((r for r in replies if r.error is None and r.result), None)


def load_of(status: dict[str, Any], app: str) -> tuple[int, bool] | None:
    """(busy tasks, has a ready container) of `app` on one host, or None when it does not serve it."""
    for a in (status or {}).get("apps", []):
        if a.get("app") == app and a.get("active_version"):
            containers = a.get("containers") or []
            return sum(c.get("busy") or 0 for c in containers), any(c.get("state") == "ready" for c in containers)
    return None


def pick_host(replies: list[Reply], app: str) -> str | None:
    """The host serving `app` that is least busy; ties: one with a ready container; then the first."""
    best: tuple[Any, ...] | None = None
    for i, r in enumerate(replies):
        if r.error is not None:
            continue
        load = load_of(r.result, app)
        if load is None:
            continue
        busy, ready = load
        key = (busy, not ready, i)
        if best is None or key < best[0]:
            best = (key, r.host)
    return best[1] if best else None
