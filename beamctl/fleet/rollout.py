"""`deploy`, to one host or many, in phases: agents -> placement -> (build) -> lock -> ship -> rolling deploy.
This machine is a host like any other: its agent is started, not installed, and it needs no ship.

1. `host.install`: every host's agent installed unless current (in parallel), and CRIU where the host
   lacks a usable one; a host that fails here is a failed result and takes no further part. For a
   checkpoint_enabled app, the hosts left without a usable CRIU are named then (`cold_boots`), with why.
2. `place`: the agents say which hosts can run the app (GPU preference, free GPUs: placement.py);
   none at all is NoGpuPlacement before anything is built or sent.
3. (the caller's `build`, once, here)
4. the deploy lock on every placed host (locks.hold; held for the rest, released on any exit);
5. `ship`: only the layers each remote host lacks, one stream per group of hosts (ship.py);
6. `deploy_rolling`: the agent's `deploy` on each host (start the new version, READY within the
   health timeout, switch, retire the old one), `max_parallel` hosts at a time; when a batch has a
   failure the hosts after it are not touched (the health gate) and keep their version.
One host's failure is its own result and never hides another's success; `outcome` turns the results
into an exit code (all ready: OK, some: PARTIAL, none: FAILURE).

Ctrl-C: before the switch, nothing has changed on any host (the lock is released; layers that reached a
host whole are kept there for the next deploy): `Interrupted` says so. During the switch, a host whose
agent was asked to deploy carries it through on its own (the new version becomes ready and takes over,
or fails its health check and the old one keeps serving); so the first Ctrl-C starts no further batch
and waits for those hosts, whose results are then shown (`Deployed.interrupted`); a second Ctrl-C
leaves at once, naming the hosts that finish on their own.
"""

from __future__ import annotations

import secrets
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from beamctl.errors import BeamctlError, ExitCode, Interrupted
from beamctl.hosts.each import Reply, ask, ask_all, each

Progress = Callable[[Any], None]
SWITCH_POLL_S = 0.2  # how often the wait for a batch looks at Ctrl-C
ANSWER_SLACK_S = 60  # beyond the health timeout, for the agent's own work (image check, records)


@dataclass
class HostDeploy:
    """One host's part of a deploy: the agent's answer (status, reason, ...) or why it had none."""

    host: str
    status: str  # ready | failed | skipped
    reason: str | None = None
    log_tail: list[str] = field(default_factory=list)
    version: int | None = None
    serving: int | None = None
    endpoint: str | None = None
    checkpoint: dict[str, Any] | None = None
    ship: dict[str, Any] | None = None
    cold_boot: str | None = None  # why this host boots the app cold (no usable CRIU there)
    gateway: dict[str, Any] | None = None  # the app's gateway as this host was told ({url, gateway})
    error: BeamctlError | None = None  # what stopped this host (a one-host deploy on this machine raises it)

    def as_json(self, keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: getattr(self, k) for k in keys}


@dataclass
class Deployed:
    app: str
    image: str | None
    hosts: list[HostDeploy]
    interrupted: bool = False  # Ctrl-C during the switch: the started hosts finished, the rest were left
    gateway: Any = None  # fleet/gateway.Routed when beam.yaml has a gateway and it was set
    gateway_error: Any = None  # BeamctlError: the deploy landed, its front door was not updated
    gateway_moved: str | None = None  # what became of the door the app had before elsewhere

    @property
    def version(self) -> int | None:
        """The version every host got, when it is one."""
        versions = {h.version for h in self.hosts}
        return versions.pop() if len(versions) == 1 else None


def failed(host: str, reason: str, error: BeamctlError | None = None) -> HostDeploy:
    return HostDeploy(host, "failed", reason, error=error or BeamctlError(reason))


def failed_reply(r: Reply) -> HostDeploy:
    return failed(r.host, r.error or "failed", r.exc)


def skipped(host: str, reason: str) -> HostDeploy:
    return HostDeploy(host, "skipped", reason, error=BeamctlError(reason))


def cold_boots(installed: list[Reply]) -> dict[str, str]:
    """Hosts whose agent is in place but whose CRIU cannot checkpoint (from the install step): name -> why."""
    return {r.host: r.result.criu.problem for r in installed
            if r.ok and r.result is not None and r.result.criu is not None and r.result.criu.problem is not None}


def cold_boot_lines(cold: dict[str, str]) -> list[str]:
    return [f"{name} will boot cold (no snapshot): {why}" for name, why in cold.items()]


def place(hosts: list[Any], prefs: tuple[str, ...], app: str | None = None) -> Any:
    """Which of these hosts run the app (placement.Placement); raises NoGpuPlacement when none can, or,
    for this machine alone, its agent's own refusal."""
    from beamctl.fleet import placement
    from beamctl.protocol.errors import AgentFailed

    fleet = placement.gather(hosts, prefs, app)
    try:
        return placement.place(prefs, fleet)
    except placement.NoGpuPlacement:
        said = fleet.get(hosts[0].name) if len(hosts) == 1 and hosts[0].local else None
        if said is not None and said.refusal is not None:
            raise AgentFailed(said.refusal, said.hint) from None
        raise


def app_token(replies: list[Reply], app: str) -> str | None:
    """The endpoint token the app keeps on all its hosts: the one most of them have now (ties: the first
    host's), or None when no host has one yet (pure; `replies`: each host's status of the app)."""
    held = [a.get("token") for r in replies if r.ok for a in (r.result or {}).get("apps", [])
            if a.get("app") == app and a.get("token")]
    return max(held, key=held.count) if held else None


def deploy_one(host: Any, spec_json: dict[str, Any], secret_values: dict[str, str], health_timeout: float,
               progress: Progress, token: str | None = None) -> Reply:
    """The agent's `deploy` on one host (the image is there): a Reply whose result is a HostDeploy."""
    if not host.local:
        progress(f"{host.name}: starting the new version")
    got = ask(host, "deploy", timeout=health_timeout + ANSWER_SLACK_S, spec_json=spec_json,
              secret_values=secret_values, health_timeout=health_timeout, **({"token": token} if token else {}))
    if not got.ok:
        return got
    r = got.result
    return got._replace(result=HostDeploy(host.name, r["status"], r.get("reason"), r.get("log_tail", []),
                                          r.get("version"), r.get("serving"), r.get("endpoint"), r.get("checkpoint"),
                                          gateway=r.get("gateway")))


def deploy_rolling(hosts: list[Any], spec_json: dict[str, Any], secret_values: dict[str, str],
                   health_timeout: float, progress: Progress, max_parallel: int | None = None,
                   token: str | None = None) -> tuple[list[HostDeploy], bool]:
    """`max_parallel` hosts at a time (default all); after a batch with a failure, the rest are left alone.
    Returns the results and whether Ctrl-C stopped the rollout (after the batch it came in finished)."""
    batch = max(1, max_parallel or len(hosts) or 1)
    results: list[HostDeploy] = []
    interrupted = False
    for i in range(0, len(hosts), batch):
        group = hosts[i:i + batch]
        if interrupted:
            results += [skipped(h.name, "not started: the deploy was interrupted (Ctrl-C) before this host's "
                                        "turn; it keeps its version") for h in group]
            continue
        if any(r.status != "ready" for r in results):
            bad = ", ".join(r.host for r in results if r.status != "ready")
            results += [skipped(h.name, f"not deployed: the rollout stopped after {bad} failed "
                                        "(it keeps its version; fix and deploy again)") for h in group]
            continue
        done, interrupted = switch(group, lambda h: deploy_one(h, spec_json, secret_values, health_timeout,
                                                               progress, token), progress, results, hosts[i + batch:])
        results += [r.result if r.ok else failed_reply(r) for r in done]
    return results, interrupted


def switch(group: list[Any], fn: Callable[[Any], Reply], progress: Progress, before: list[HostDeploy],
           after: list[Any]) -> tuple[list[Reply], bool]:
    """fn(host) on every host of the batch at once (threads that never hold the process up at exit).
    Ctrl-C is counted here, not raised wherever it lands: the first waits for the batch (each host's
    agent finishes what it was asked either way) and says so; a second raises Interrupted naming where
    each host was left."""
    replies: dict[str, Reply] = {}
    lock, wake = threading.Lock(), threading.Event()
    presses: list[int] = []

    def run(host: Any) -> None:
        reply = fn(host)
        with lock:
            replies[host.name] = reply
        wake.set()

    def pressed(signum: int, frame: Any) -> None:
        presses.append(signum)
        wake.set()

    old = _catch_sigint(pressed)
    try:
        for h in group:
            threading.Thread(target=run, args=(h,), daemon=True, name=f"deploy-{h.name}").start()
        said = False
        while True:
            wake.wait(SWITCH_POLL_S)
            wake.clear()
            with lock:
                busy = [h.name for h in group if h.name not in replies]
            if not busy:
                break
            if len(presses) > 1:
                raise left_switching(busy, before, after)
            if presses and not said:
                said = True
                untouched = f"; {', '.join(h.name for h in after)} will not be started" if after else ""
                one = len(busy) == 1
                progress(f"interrupted: {', '.join(busy)} {'is' if one else 'are'} switching to the new version and "
                         f"will finish (or keep the old one if the new fails its health check); waiting for "
                         f"{'it' if one else 'them'}{untouched}. Ctrl-C again to leave now")
    finally:
        _restore_sigint(old)
    return [replies[h.name] for h in group], bool(presses)


def _catch_sigint(handler: Callable[[int, Any], None]) -> Any:
    """Our handler for SIGINT while the batch runs (only the main thread can set one; elsewhere None)."""
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None


def _restore_sigint(old: Any) -> None:
    if old is not None:
        signal.signal(signal.SIGINT, old)


def left_switching(busy: list[str], before: list[HostDeploy], after: list[Any]) -> Interrupted:
    lines = [f"{r.host}: {'ready on v' + str(r.version) if r.status == 'ready' else r.status}" for r in before]
    lines += [f"{name}: was switching: it finishes on its own, or keeps its old version if the new one fails "
              "its health check" for name in busy]
    lines += [f"{h.name}: not started: keeps its version" for h in after]
    return Interrupted("deploy interrupted during the switch", lines,
                       "beamctl status APP shows where each host ended")


def rollout(hosts: list[Any], app: str, prefs: tuple[str, ...], build: Callable[[], Any],
            spec_for: Callable[[Any], dict[str, Any]], secret_values: dict[str, str], health_timeout: float,
            progress: Progress, max_parallel: int | None = None, lock_wait: float = 0.0,
            checkpoints: bool = False, ship: Callable[..., dict[str, Any]] | None = None) -> Deployed:
    """The whole deploy to `hosts` (phases in the module's text); one result per host, in their order.
    `ship(hosts, image_ref, image_id, progress)` sends the image to the remote ones (ship.ship_images)."""
    from beamctl.fleet import locks

    if ship is None:
        from beamctl.fleet.ship import ship_images as ship
    results: dict[str, HostDeploy] = {}
    installed = each(hosts, lambda h: h.install(progress))
    results.update({r.host: failed_reply(r) for r in installed if not r.ok})
    cold = cold_boots(installed) if checkpoints else {}
    for line in cold_boot_lines(cold):
        progress(line)
    live = [h for h in hosts if h.name not in results]
    placed = place(live, prefs, app) if live else None
    if placed is not None:
        results.update({n: skipped(n, why) for n, why in placed.skipped.items()})
        live = [h for h in live if h.name in placed.chosen]
    if not live:
        return Deployed(app, None, [results[h.name] for h in hosts])
    image = build()
    with locks.hold(live, app, locks.holder_here(app, image.image), lock_wait, progress) as held:
        results.update({n: failed(n, f"no deploy lock: {why}") for n, why in held.missing.items()})
        live = [h for h in live if h.name in held]
        progress(f"deploying {image.image} to {_where(live)}")
        remote = [h for h in live if not h.local]
        try:
            shipped = ship(remote, image.image, image.id, progress) if remote else {}
        except KeyboardInterrupt:
            raise Interrupted("deploy interrupted while sending the image: nothing changed on any host",
                              [f"{h.name}: not changed: keeps its version" for h in live],
                              "layers that reached a host whole are kept there: the next deploy sends only "
                              "the rest") from None
        for name, got in shipped.items():
            if isinstance(got, BeamctlError):
                results[name] = failed(name, got.message, got)
        live = [h for h in live if h.name not in results]
        token = None  # one host keeps its own; several get one for all (the one most have, else a new one)
        if len(live) > 1:
            token = app_token(ask_all(live, "status", app=app), app) or secrets.token_urlsafe(32)
        rolled, interrupted = deploy_rolling(live, spec_for(image), secret_values, health_timeout, progress,
                                             max_parallel, token)
        for r in rolled:
            got = shipped.get(r.host)
            r.ship, r.cold_boot = (got.as_json() if got is not None else None), cold.get(r.host)
            results[r.host] = r
    return Deployed(app, image.image, [results[h.name] for h in hosts], interrupted)


def _where(hosts: list[Any]) -> str:
    if len(hosts) == 1 and hosts[0].local:
        return "the local agent"
    return f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}" + (f": {', '.join(h.name for h in hosts)}"
                                                                   if hosts else "")


def outcome(hosts: list[HostDeploy]) -> ExitCode:
    """All ready: OK; some: PARTIAL; none: FAILURE, or REMOTE when no host could be reached or trusted
    (every one failed for that reason: the fix is on the way to the hosts, not in the app)."""
    ready = sum(h.status == "ready" for h in hosts)
    if hosts and ready == len(hosts):
        return ExitCode.OK
    if ready:
        return ExitCode.PARTIAL
    remote = hosts and all(h.error is not None and h.error.exit_code == ExitCode.REMOTE for h in hosts)
    return ExitCode.REMOTE if remote else ExitCode.FAILURE
