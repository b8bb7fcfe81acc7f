"""One operation on many hosts, in parallel, with one typed reply per host.

`each(hosts, fn)` runs fn(host) on every host at once and guards it: a host's error (refusal,
unreachable, timeout, a surprise) becomes that host's `Reply.error`, never an exception that hides the
others' answers. `ask(host, op, **args)` is one agent operation as a Reply, `ask_all` that on every
host. Timeouts live here: QUERY_TIMEOUT_S for questions, the caller's for work that takes long.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

from beamctl.errors import BeamctlError, ExitCode
from beamctl.protocol.errors import AgentFailed, AgentStopped, refusal

QUERY_TIMEOUT_S = 60.0  # no answer from a host's agent for this long: that host failed
CALL_TIMEOUT_S = 3600.0  # a task may run long (and start cold)


class Reply(NamedTuple):
    """One host's answer: `result`, or `error` (one line, the host named unless the agent's own words)
    with `exc`, the error as a one-host command raises it."""

    host: str
    result: Any = None
    error: str | None = None
    stopped: bool = False  # the stream to the agent ended mid-request: it stopped (or the bridge saw it go)
    exc: BeamctlError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def attempt(host: Any, fn: Callable[[], Any], op: str = "", args: dict[str, Any] | None = None) -> Reply:
    """fn()'s value as this host's Reply, or its error."""
    name, args = host.name, args or {}
    try:
        return Reply(name, fn())
    except AgentFailed as e:
        text = e.message + (f" ({e.hint})" if e.hint else "")
        return Reply(name, error=text, stopped=e.stopped, exc=_stopped(host, op, args) if e.stopped and op else e)
    except BeamctlError as e:
        return Reply(name, error=e.message, exc=e)
    except socket.timeout:
        text = f"{name}: no answer from the agent in time"
        return Reply(name, error=text, exc=BeamctlError(text))
    except (OSError, EOFError) as e:  # the stream ended (EOF, reset): the agent, or the way to it, went away
        text = f"{name}: unreachable: the connection broke: {e or type(e).__name__}"
        ended = isinstance(e, (ConnectionError, EOFError))
        return Reply(name, error=text, stopped=ended,
                     exc=_stopped(host, op, args) if ended and op else BeamctlError(text))
    except Exception as e:  # noqa: BLE001 - one host's surprise must not hide the others' answers
        text = f"{name}: internal error: {type(e).__name__}: {e}"
        return Reply(name, error=text, exc=BeamctlError(text, "rerun with --debug, and report it"))


def _stopped(host: Any, op: str, args: dict[str, Any]) -> AgentStopped:
    app = args.get("app") or (args.get("spec_json") or {}).get("app")
    return AgentStopped(op, app, args.get("task_id") if op == "call" else None, None if host.local else host.name)


def each(hosts: list[Any], fn: Callable[[Any], Any], workers: int | None = None) -> list[Reply]:
    """fn(host) on every host at once (at most `workers`); one Reply per host, in the order given."""
    return parallel(hosts, lambda h: attempt(h, lambda: fn(h)), workers)


def parallel(hosts: list[Any], fn: Callable[[Any], Reply], workers: int | None = None) -> list[Reply]:
    """fn(host) -> Reply (guarded already) on every host at once, in the order given."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers or len(hosts), len(hosts))),
                            thread_name_prefix="each") as pool:
        return list(pool.map(fn, hosts))


def result_of(answer: dict[str, Any]) -> Any:
    """The agent's result, or AgentFailed with its words."""
    failed = refusal(answer)
    if failed is not None:
        raise failed
    return answer.get("result")


def ask(host: Any, op: str, timeout: float | None = QUERY_TIMEOUT_S, **args: Any) -> Reply:
    """One agent operation on one host, as a Reply."""
    return attempt(host, lambda: result_of(host.request(op, timeout=timeout, **args)), op, args)


def ask_all(hosts: list[Any], op: str, timeout: float | None = QUERY_TIMEOUT_S, **args: Any) -> list[Reply]:
    """One agent operation on every host at once; one Reply per host, in the order given."""
    return parallel(hosts, lambda h: ask(h, op, timeout, **args))


# --- pure parts ----------------------------------------------------------------------------------------

def outcome(replies: list[Reply]) -> ExitCode:
    """All answered: OK; some: PARTIAL; none: FAILURE."""
    answered = sum(r.error is None for r in replies)
    if replies and answered == len(replies):
        return ExitCode.OK
    return ExitCode.PARTIAL if answered else ExitCode.FAILURE


def error_lines(replies: list[Reply]) -> list[str]:
    """One line per host that did not answer: `HOST: error`."""
    return [r.error if r.error.startswith(f"{r.host}:") else f"{r.host}: {r.error}"
            for r in replies if r.error is not None]


def only(replies: list[Reply]) -> Any:
    """The one host's result, or its error raised as such (a command on this machine's agent)."""
    (reply,) = replies
    if reply.exc is not None:
        raise reply.exc
    if reply.error is not None:
        raise BeamctlError(reply.error)
    return reply.result
