"""The deploy lock across hosts: taken on every host of a deploy (or rollback) before it changes anything,
released when it ends, however it ends (done, failed, Ctrl-C). The lock itself lives on each host
(agent/locks.py, through the agent ops lock_acquire / lock_release / lock_break).

Hosts are locked one after the other in sorted name order, so two deploys to overlapping hosts never
hold one half each and wait for the other: the one that loses on some host gives back what it took,
then waits (`--lock-wait`) or is refused with the holder (DeployLocked). A host that does not answer
is not a lock failure: it is left out of the locked set (with its reason) for the caller to report.
While the body runs, a heartbeat thread renews every lock held (agent/holders.py: the lease), so a
holder that died is told from a live one; a host's agent takes a gone holder's lock over, and says so.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from beamctl.protocol.holders import LEASE_S
from beamctl.errors import BeamctlError, ExitCode

POLL_S = 0.5  # how often a waiting deploy tries again
LOCK_TIMEOUT_S = 30.0  # per lock request, where the agent takes a timeout (HostAgent)


class DeployLocked(BeamctlError):
    """Another deploy or rollback of the app holds the lock on a host."""

    exit_code = ExitCode.FAILURE

    def __init__(self, host: str, app: str, holder: dict[str, Any], waited_s: float = 0.0) -> None:
        waited = f" (waited {waited_s:.{0 if waited_s >= 10 else 1}f} s)" if waited_s else ""
        super().__init__(f"{host}: {app} is locked by {describe(holder)}{waited}",
                         f"wait with --lock-wait SECONDS (a dead holder's lock is taken over after {LEASE_S:.0f} s "
                         f"without its heartbeat), or if that deploy is dead: beamctl unlock {app}")
        self.host, self.app, self.holder = host, app, holder


class Held(dict):
    """host -> token for the hosts locked; `missing`: host -> why no lock was taken there (no answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.missing: dict[str, str] = {}


def holder_here(app: str, image: str | None, op: str = "deploy") -> dict[str, Any]:
    """Who is deploying: user@this-machine, this process (with what tells when it is gone), now, what."""
    from beamctl.protocol.holders import this_process

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid (a container): the uid will do
        user = str(os.getuid())
    return {"who": f"{user}@{socket.gethostname()}", "pid": os.getpid(), "at": time.time(),
            "image": image, "op": op, **this_process()}


def describe(holder: dict[str, Any] | None, now: float | None = None) -> str:
    """`ada@laptop (pid 4242) since 14:03:22, 12 min ago: deploy of beamctl/app:abc` (pure)."""
    holder = holder or {}
    who = holder.get("who") or "someone"
    pid = f" (pid {holder['pid']})" if holder.get("pid") is not None else ""
    at = holder.get("at")
    when = f" since {since(at, now)}" if isinstance(at, (int, float)) else ""
    what = holder.get("op") or "deploy"
    image = f" of {holder['image']}" if holder.get("image") else ""
    return f"{who}{pid}{when}: {what}{image}"


def since(at: float, now: float | None = None) -> str:
    """Local time (with the date when not today) and how long ago."""
    now = time.time() if now is None else now
    stamp = time.localtime(at)
    fmt = "%H:%M:%S" if time.localtime(now)[:3] == stamp[:3] else "%Y-%m-%d %H:%M:%S"
    ago = max(0.0, now - at)
    if ago < 90:
        rel = f"{ago:.0f} s ago"
    elif ago < 5400:
        rel = f"{ago / 60:.0f} min ago"
    else:
        rel = f"{ago / 3600:.1f} h ago"
    return f"{time.strftime(fmt, stamp)}, {rel}"


@contextmanager
def hold(hosts: list[Any], app: str, holder: dict[str, Any], wait_s: float,
         progress: Callable[[Any], None]) -> Iterator[dict[str, str]]:
    """Lock `app` on every one of `hosts` (hosts/host.py) for the `with` body.

    Yields host -> token for the hosts locked (a `Held`: its `.missing` names the hosts that did not
    answer, and why). Another holder on any host: what was taken is given back, then it tries again every
    POLL_S until `wait_s` passed (progress says once whom it waits for), else DeployLocked. Every lock
    taken (or maybe taken: a request cut off) is released on the way out, also on errors and Ctrl-C;
    a release that fails is a progress line, never an exception hiding the real one."""
    agents = {h.name: h for h in hosts}
    held = Held()
    unsure: set[str] = set()  # asked, answer not seen (cut off, timed out): maybe locked
    token = secrets.token_hex(16)  # ours, known before asking: a request cut off can still be undone
    mine = {**holder, "token": token}
    beat = threading.Event()
    try:
        _acquire_all(agents, app, mine, wait_s, progress, held, unsure)
        threading.Thread(target=_heartbeat, args=(agents, app, token, dict(held), beat, progress), daemon=True,
                         name="lock-heartbeat").start()
        yield held
    finally:
        beat.set()
        _release(agents, app, token, sorted(held), progress)
        _release(agents, app, token, sorted(unsure - set(held)), None)


def _acquire_all(agents: dict[str, Any], app: str, holder: dict[str, Any], wait_s: float,
                 progress: Callable[[Any], None], held: Held, unsure: set[str]) -> None:
    start = time.monotonic()
    told = False
    while True:
        held.clear()
        held.missing.clear()
        refused = None
        for name in sorted(agents):
            unsure.add(name)
            try:
                answer = _request(agents[name], "lock_acquire", app=app, holder=holder)
            except BeamctlError as e:  # no session (unreachable, host key, auth): nothing reached the agent
                unsure.discard(name)
                held.missing[name] = e.message
                continue
            except Exception as e:  # noqa: BLE001 - no answer: not a lock failure; the caller reports it
                held.missing[name] = _why(name, e)
                continue
            unsure.discard(name)
            if not answer.get("ok"):
                held.missing[name] = answer.get("error") or "the agent failed"
                continue
            result = answer.get("result") or {}
            if result.get("acquired"):
                held[name] = result.get("token")
                if result.get("took_over"):
                    progress(took_over_line(name, app, result["took_over"]))
                continue
            refused = (name, result.get("holder") or {})
            break
        if refused is None:
            return
        _release(agents, app, holder["token"], sorted(held), progress)
        held.clear()
        waited = time.monotonic() - start
        if waited >= wait_s:
            raise DeployLocked(refused[0], app, refused[1], waited if wait_s > 0 else 0.0)
        if not told:
            progress(f"waiting up to {wait_s:.0f} s for the lock on {refused[0]} held by {describe(refused[1])}")
            told = True
        time.sleep(min(POLL_S, max(0.0, wait_s - waited)))


def took_over_line(host: str, app: str, took_over: dict[str, Any], now: float | None = None) -> str:
    """`local: took over the deploy lock of app from ada@laptop (pid 4242) since ...: deploy of IMAGE;
    its holder is gone: pid 4242 has exited` (pure)."""
    return (f"{host}: took over the deploy lock of {app} from {describe(took_over.get('holder'), now)}; "
            f"its holder is gone: {took_over.get('reason') or 'no reason given'}")


def unreleased_line(host: str, app: str, e: BaseException) -> str:
    """A release that got no answer (the agent died, the host went away): no stack-trace words (pure)."""
    if isinstance(e, BeamctlError):
        why = e.message.removeprefix(f"{host}: ")
    elif isinstance(e, socket.timeout):
        why = "no answer from the agent in time"
    else:
        why = "the agent is not answering"
    return f"{host}: could not release the deploy lock of {app} ({why}); the next deploy will take it over as stale"


def _heartbeat(agents: dict[str, Any], app: str, token: str, held: dict[str, str], stop: threading.Event,
               progress: Callable[[Any], None]) -> None:
    """Renew every held lock each RENEW_S until `stop`; a lock found taken over is said once per host.
    A renewal that gets no answer is skipped: the next one may get through within the lease."""
    from beamctl.protocol.holders import RENEW_S

    lost: set[str] = set()
    while not stop.wait(RENEW_S):
        for name in sorted(set(held) - lost):
            try:
                answer = _request(agents[name], "lock_renew", app=app, token=token)
            except Exception:  # noqa: BLE001 - no answer now; the lease allows for a few
                continue
            if stop.is_set():
                return
            if answer.get("ok") and answer.get("result") is False:
                lost.add(name)
                progress(f"{name}: the deploy lock of {app} is no longer ours (taken over or removed while "
                         f"no heartbeat reached it)")


def _release(agents: dict[str, Any], app: str, token: str, names: Iterable[str],
             progress: Callable[[Any], None] | None) -> None:
    """Best effort, host by host; failures are progress lines (none when `progress` is None)."""
    for name in names:
        try:
            answer = _request(agents[name], "lock_release", app=app, token=token)
        except Exception as e:  # noqa: BLE001 - best effort: the real error (if any) must stay visible
            if progress is not None:
                progress(unreleased_line(name, app, e))
            continue
        if not answer.get("ok") and progress is not None:
            progress(f"{name}: could not release the deploy lock of {app}: {answer.get('error')}")


def _request(agent: Any, op: str, **args: Any) -> dict[str, Any]:
    return agent.request(op, timeout=LOCK_TIMEOUT_S, **args)


def _why(name: str, e: BaseException) -> str:
    if isinstance(e, BeamctlError):
        return e.message
    if isinstance(e, socket.timeout):
        return f"{name}: no answer from the agent in time"
    return f"{name}: unreachable: {type(e).__name__}: {e}"


def break_locks(hosts: list[Any], app: str) -> list[Any]:
    """`beamctl unlock`: remove the app's lock on every host, whoever holds it. One Reply per host (sorted
    by name): result = the holder it had (without token) or None, or error."""
    from beamctl.hosts.each import ask_all

    return ask_all(sorted(hosts, key=lambda h: h.name), "lock_break", app=app)
