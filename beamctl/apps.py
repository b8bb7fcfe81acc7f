"""What the app commands do, apart from how they look: one core call per command, over the app's hosts
(fleet/query.app_hosts: `[LocalHost]` when the app names none). Each returns typed per-host values
(hosts/each.Reply, fleet/rollout.Deployed); the CLI renders them, the same way for one host and for ten
(this machine alone keeps its host-less lines)."""

from __future__ import annotations

from typing import Any, Callable

from beamctl.config.model import AppConfig
from beamctl.hosts.each import CALL_TIMEOUT_S, QUERY_TIMEOUT_S, Reply, ask, ask_all, error_lines
from beamctl.protocol.errors import AgentFailed


def deploy(config: AppConfig, progress: Callable[[Any], None], health_timeout: float | None = None,
           lock_wait: float = 0.0) -> Any:
    """Build once, hand the image and secrets to every host's agent, wait for READY: rollout.Deployed.
    health_timeout: None takes beam.yaml's rollout.health_timeout."""
    from beamctl import secrets
    from beamctl.fleet import query, rollout
    from beamctl.hosts import placed
    from beamctl.hosts.inventory import which_hosts
    from beamctl.image import build_app
    from beamctl.protocol.spec import spec_from_config

    timeout = health_timeout if health_timeout is not None else config.rollout.health_timeout_s
    secret_values = secrets.gather(config.secrets)  # before anything: fail fast on a missing secret
    entries = which_hosts(config.hosts)[0] if config.hosts else None
    hosts = query.hosts_of(entries)
    try:
        deployed = rollout.rollout(hosts, config.name, tuple(str(g) for g in config.gpu),
                               build=lambda: build_app(config, progress),
                               spec_for=lambda image: spec_from_config(config, image.image).to_json(),
                               secret_values=secret_values, health_timeout=timeout, progress=progress,
                               max_parallel=config.rollout.max_parallel, lock_wait=lock_wait,
                               checkpoints=config.checkpoint_enabled)
        placed.record(config.name, entries)  # the app's commands find it by name from any folder
        if not deployed.interrupted and any(h.status == "ready" for h in deployed.hosts):
            _route(config, deployed, hosts, entries or [], progress)
        return deployed
    finally:
        for h in hosts:
            h.close()


def _route(config: AppConfig, deployed: Any, hosts: list[Any], entries: list[Any],
           progress: Callable[[Any], None]) -> None:
    """The app's front door follows the deploy (and a door it had elsewhere forgets it); a failure is the
    deploy's to report, not to undo. An app on this machine alone has none."""
    from beamctl.errors import BeamctlError
    from beamctl.fleet import gateway

    before = next((h.gateway for h in deployed.hosts if h.gateway), None)
    if not entries or (config.gateway is None and before is None):
        return  # no door now and none before: nothing to ask
    if config.gateway is not None:
        progress(f"{config.gateway.host}: the gateway: routing {config.name} to its hosts")
    try:
        deployed.gateway, deployed.gateway_moved = gateway.follow_deploy(config.name, config.gateway, hosts,
                                                                         entries, progress, before)
    except BeamctlError as e:
        deployed.gateway_error = e


def plan_deploy(config: AppConfig, progress: Callable[[Any], None]) -> tuple[Any, list[Any]]:
    """`deploy --dry-run`: the image built here (cached) and what a deploy would do on each host (plan.py);
    nothing on any host changes. Secrets are checked as a deploy would, their values go nowhere."""
    from beamctl import secrets
    from beamctl.fleet import plan, query
    from beamctl.hosts.inventory import which_hosts
    from beamctl.image import build_app

    secrets.gather(config.secrets)
    hosts = query.hosts_of(which_hosts(config.hosts)[0] if config.hosts else None)
    try:
        image = build_app(config, progress)
        return image, plan.plan(hosts, config.name, tuple(str(g) for g in config.gpu), image)
    finally:
        for h in hosts:
            h.close()


def call(hosts: list[Any], app: str, inputs: dict[str, Any], chosen: Callable[[str], None],
         unanswered: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    """One task on the least busy host that serves the app (the only one, when there is one): (task, host).
    `chosen` hears the host picked; `unanswered`, one line per host that did not answer, when none serves it."""
    from beamctl.fleet import query
    from beamctl.protocol.wire import new_task_id

    replies = ask_all(hosts, "status", app=app) if len(hosts) > 1 else []
    turn = query.next_turn(app) if len(hosts) > 1 else 0
    task_id = new_task_id()  # ours, so that a call cut off by the agent's death can name its task
    while True:
        host = hosts[0]
        if len(hosts) > 1:
            where = query.pick_host(replies, app, turn)
            if where is None:
                for line in error_lines(replies):
                    unanswered(line)
                raise AgentFailed(f"no host serves {app} ({len(hosts)} asked)", hint="run `beamctl deploy` first")
            host = next(h for h in hosts if h.name == where)
        if not host.local:
            chosen(host.name)
        reply = ask(host, "call", timeout=CALL_TIMEOUT_S, app=app, inputs=inputs, task_id=task_id)
        if reply.ok:
            return reply.result, host.name
        if never_sent(reply) and len(hosts) > 1:  # the task never reached that host: another may run it
            unanswered(f"{reply.error}; the task goes to another host")
            replies = [r if r.host != host.name else reply for r in replies]  # that host: out of the pick
            continue
        if reply.stopped or host.local or reply.exc is None:  # it may have run there: never sent again
            raise reply.exc or AgentFailed(reply.error or "the call failed")
        raise AgentFailed(reply.error if (reply.error or "").startswith(f"{host.name}:")  # which host failed it
                          else f"{host.name}: {reply.error}")


def gateway_address(hosts: list[Any], app: str) -> tuple[str, str]:
    """The app's front door (its hosts' word) and its token: (url, token)."""
    from beamctl.errors import BeamctlError
    from beamctl.fleet.gateway import gateway_of
    from beamctl.fleet.rollout import app_token

    replies = ask_all(hosts, "status", app=app)
    where, token = gateway_of(replies, app), app_token(replies, app)
    if where is None or not token:
        errors = error_lines(replies)
        raise BeamctlError(f"{app} has no gateway" + (f" (no answer from: {'; '.join(errors)})" if errors else ""),
                           hint="add gateway: to its beam.yaml and deploy, or call it without --gateway")
    return where["url"], token


def call_gateway(url: str, app: str, token: str, inputs: dict[str, Any], cafile: Any = None,
                 timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """One task through the front door, over HTTPS (or HTTP when the door is plain): the task as the agent
    answers it. The door never sends a task twice; neither does this (no retry)."""
    import http.client
    import json
    import ssl
    import time
    from urllib.parse import urlsplit

    from beamctl.errors import BeamctlError, UsageError

    parts = urlsplit(url)
    body = json.dumps(inputs).encode()
    began = time.monotonic()
    if parts.scheme == "https":
        try:
            context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"--cacert {cafile}: {e}") from None
        conn: Any = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("POST", f"/apps/{app}", body=body, headers={"Authorization": f"Bearer {token}",
                                                                  "Content-Type": "application/json"})
        answer = conn.getresponse()
        raw = answer.read()
    except ssl.SSLCertVerificationError as e:
        raise BeamctlError(f"{url}: its certificate is not trusted: {e.verify_message}",
                           hint="pass the CA (or the self-signed certificate) with --cacert FILE") from None
    except http.client.RemoteDisconnected:  # the door cut it: the host running it went down mid-task
        raise BeamctlError(f"{url}: the connection closed without an answer: the host running the task stopped "
                           "answering mid-task, and the gateway does not send a task twice",
                           hint=f"beamctl tasks {app} shows whether it ran; beamctl status {app}, the rotation") from None
    except (OSError, http.client.HTTPException) as e:
        raise BeamctlError(f"{url}: {e}", hint="beamctl status shows the app's gateway and its rotation") from None
    finally:
        conn.close()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        data = {}
    if answer.status in (200, 500) and "task_id" in data:
        return {"total": time.monotonic() - began, **data}
    raise BeamctlError(f"{url}: {answer.status} {answer.reason}: {data.get('error') or raw[:200]!r}")


def never_sent(reply: Reply) -> bool:
    """The call could not reach the host's agent at all (no SSH connection): the task did not start there,
    so sending it to another host cannot run it twice. A stream that broke after the request went out
    (`stopped`), or no answer in time, may have run it: those are never sent again."""
    from beamctl.transport.errors import HostUnreachable

    return not reply.stopped and isinstance(reply.exc, HostUnreachable)


def find_task(hosts: list[Any], task_id: str, recent: bool) -> tuple[Reply, list[Reply], list[dict[str, Any]]]:
    """The host's reply that has the task (an error Reply when none has), every host's replies, and (when
    `recent`) that host's recent tasks of the app, for comparison."""
    from beamctl.fleet import query

    replies = ask_all(hosts, "task", task_id=task_id)
    found = query.first_found(replies)
    if found is None:
        if len(hosts) == 1:
            return replies[0], replies, []
        return Reply("", error=f"no task {task_id} on any of the {len(hosts)} hosts asked",
                     exc=AgentFailed(f"no task {task_id} on any of the {len(hosts)} hosts asked")), replies, []
    rows: list[dict[str, Any]] = []
    if recent:
        host = next(h for h in hosts if h.name == found.host)
        got = ask(host, "tasks", app=found.result["app"], limit=50)
        rows = got.result if got.ok else []
    return found, replies, rows


def logs(hosts: list[Any], app: str, since: dict[str, float], tail: int, task: str | None) -> list[Reply]:
    """Each host's log entries after its own `since` (host -> time)."""
    from beamctl.hosts.each import parallel

    return parallel(hosts, lambda h: ask(h, "logs", app=app, since=since[h.name], tail=tail, task_id=task))


def exec_target(hosts: list[Any], app: str) -> tuple[Any, str]:
    """Where `exec` runs: (host, container id) of a ready container of the serving version, the least busy,
    on the first host (in the app's order) that has one. Raises when none runs (scaled to zero, stopped)."""
    from beamctl.errors import BeamctlError

    replies = ask_all(hosts, "status", app=app)
    by_name = {h.name: h for h in hosts}
    for r in replies:
        rows = (r.result or {}).get("apps", []) if r.ok else []
        for row in rows:
            ready = [c for c in row.get("containers") or []
                     if c.get("state") == "ready" and c.get("version") == row.get("active_version") and c.get("id")]
            if ready:
                return by_name[r.host], min(ready, key=lambda c: c.get("busy", 0))["id"]
    errors = error_lines(replies)
    if errors and len(errors) == len(replies):
        raise BeamctlError(f"no host answered about {app}: " + "; ".join(errors))
    unasked = f" (no answer from: {'; '.join(errors)})" if errors else ""
    raise BeamctlError(f"no container of {app} is running{unasked}",
                       f"it scaled to zero or was stopped: `beamctl call {app}` starts one (it stays for the idle "
                       "timeout), then run this again")


def exec_argv(container: str, command: list[str], tty: bool) -> list[str]:
    """`docker exec` in the container: stdin kept open (pipe into it), a terminal when this is one."""
    return ["docker", "exec", "-i", *(["-t"] if tty else []), container, *command]


def rollback(hosts: list[Any], app: str, version: int | None, health_timeout: float | None,
             say: Callable[[Any], None]) -> list[Reply]:
    """The app's lock on every host, then each agent's rollback (start the version, READY, switch)."""
    from beamctl.config.schema import field_of
    from beamctl.fleet import locks

    longest = health_timeout or field_of("rollout", "health_timeout")["maximum"]  # the agent waits its own
    with locks.hold(hosts, app, locks.holder_here(app, None, "rollback"), 0, say) as held:
        got = ask_all([h for h in hosts if h.name in held], "rollback", timeout=longest + QUERY_TIMEOUT_S,
                      app=app, version=version, health_timeout=health_timeout)
    answers = {r.host: r for r in got}
    return [answers.get(h.name) or _no_lock(h, held.missing.get(h.name)) for h in hosts]


def _no_lock(host: Any, why: str | None) -> Reply:
    where = "the local agent" if host.local else host.name
    return Reply(host.name, error=f"no deploy lock: {why}", exc=AgentFailed(f"no deploy lock from {where}: {why}"))


def rollback_failures(replies: list[Reply]) -> list[Reply]:
    """A host that answered but whose old version did not start counts as failed (its reason the error)."""
    out = []
    for r in replies:
        if r.error is None and (r.result or {}).get("status") != "ready":
            serving = (r.result or {}).get("serving")
            keeps = f" (v{serving} keeps serving)" if serving else ""
            r = r._replace(error=f"v{(r.result or {}).get('version')} did not start: "
                                 f"{(r.result or {}).get('reason')}{keeps}")
        out.append(r)
    return out
